"""Process-group and seeded-randomness helpers shared by the trainers (DDPNet policy training, consistency
distillation): one place for torchrun / ``torch.distributed`` plumbing and for the platform-stable seeds that make
every rank draw the same samples.

Entry points: :func:`init_distributed` (join torchrun's group), :func:`dist_state` ((rank, world) for a trainer's
``distributed`` argument), :func:`sample_index` (which dataset item a global sample position reads) and
:func:`seed_mix` (a 63-bit seed from ints / strings). Collectives (:func:`all_mean`, :func:`broadcast_flag`) are
identities when world == 1. No ComfyUI imports.
"""
from __future__ import annotations

import hashlib
import os
from typing import NamedTuple

import torch

__all__ = ["seed_mix", "sample_index", "DistInfo", "init_distributed", "dist_state", "ddp_no_buffer_sync", "all_mean",
           "broadcast_flag"]


# =========================================================================================== randomness
def seed_mix(*parts) -> int:
    """A 63-bit seed from ints/strings (stable across platforms and Python runs)."""
    h = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


_PERM_CACHE: dict = {}


def sample_index(seed: int, n: int, position: int) -> int:
    """Dataset index of global sample ``position``: epoch e = position // n walks a permutation seeded by (seed, e)."""
    epoch, i = divmod(int(position), int(n))
    key = (int(seed), int(n), epoch)
    perm = _PERM_CACHE.get(key)
    if perm is None:
        if len(_PERM_CACHE) > 64:
            _PERM_CACHE.clear()
        g = torch.Generator().manual_seed(seed_mix("order", int(seed), epoch))
        perm = _PERM_CACHE[key] = torch.randperm(int(n), generator=g).tolist()
    return perm[i]


# =========================================================================================== process group
class DistInfo(NamedTuple):
    """rank, world_size, local_rank, device (cuda:LOCAL_RANK with nccl, cpu with gloo, None when not distributed)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device | None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group started by ``torchrun`` (env:// from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or
    describe the one already initialised. backend: nccl when CUDA is available, else gloo. Without torchrun
    (WORLD_SIZE unset or 1) nothing is initialised and (0, 1, 0, None) is returned."""
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        be = dist.get_backend()
        dev = torch.device("cuda", local) if be == "nccl" else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, None)
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    dev = torch.device("cuda", local) if backend == "nccl" else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)


def dist_state(distributed: bool | None) -> tuple[int, int]:
    """(rank, world_size) of the active process group; initialises one from torchrun's env when asked/auto."""
    import torch.distributed as dist

    if distributed is False or not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            init_distributed()
        elif distributed:
            raise ValueError("distributed=True but no process group is initialised; run under torchrun or call "
                             "init_distributed() / torch.distributed.init_process_group() first")
        else:
            return 0, 1
    return dist.get_rank(), dist.get_world_size()


def ddp_no_buffer_sync(ddp_cls) -> dict:
    """DDP kwargs that skip the per-forward buffer broadcast (the buffers never change; newer torch renamed it)."""
    import inspect

    params = inspect.signature(ddp_cls.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def all_mean(x: torch.Tensor, world: int) -> torch.Tensor:
    """Mean of a tensor over ranks (identity when world == 1)."""
    if world == 1:
        return x
    import torch.distributed as dist

    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / world


def broadcast_flag(ok: bool, world: int, device: torch.device) -> bool:
    """Rank 0's ``ok`` on every rank (acts as the barrier after a rank-0 write)."""
    if world == 1:
        return ok
    import torch.distributed as dist

    f = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.broadcast(f, src=0)
    return bool(f.item())
