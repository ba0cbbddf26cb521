"""A 2-process gloo group for the torch.distributed tests (spawned workers import this from tests/)."""
from contextlib import contextmanager

import torch
import torch.distributed as dist


@contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """init_process_group (gloo, file store, one torch thread) ... barrier + destroy_process_group.

    The final barrier makes the ranks leave together: a rank that tears gloo down while its peer still holds the
    connection can make the peer abort ("terminate called without an active exception", seen once in a fresh-clone
    run of test_ddpnet under CPU load). After an error there is no barrier (the peer may never reach it)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def torch_threads(n: int = 1):
    """Run a block with ``n`` torch threads (restored afterwards). The workers of :func:`gloo_group` use one thread,
    so a single-process reference compared with them bit for bit must too: CPU kernels sum in another order with
    another thread count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
