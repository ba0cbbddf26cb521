"""Leap-flow distillation (VideoScene, Algorithm 1): consistency distillation of a CogVideoX I2V teacher into a student.

Entry point: :func:`distill` (``python -m vscene_engine.train.distill ...``: :func:`main`). The released VideoScene code has
no training code; this is our implementation of the paper's algorithm, on latents. No ComfyUI imports.

Data (:class:`LatentDataset`): one sample = ``render_latents`` x0^r (VAE latents of the coarse 3DGS render) and
``image_latents`` ([first, zeros x (T-2), last] as built by ``leap.encode_conditioning``), both [1, T, C, h, w] float,
scaled by the VAE scaling factor (what the transformer sees); optional ``gt_latents`` (the real video; not used by
Algorithm 1, kept in the format). :func:`encode_sample` / :func:`save_sample` build such files.

One optimiser step (per sample of the global batch; tensors [B, T, C, h, w]):

1. t_{n+1} ~ U{k, ..., T'} (``k`` = skip interval, default 20; ``t_max`` = T', default 900), eps ~ N(0, I);
   x_{t_{n+1}} = sqrt(a_{t_{n+1}}) x0^r + sqrt(1 - a_{t_{n+1}}) eps (``NoiseSchedule.add_noise``).
2. Teacher (the frozen base transformer) one DDIM step (eta 0) from t_{n+1} to t_n = t_{n+1} - k with its x0
   prediction (``NoiseSchedule.x0_from_output``); optional classifier-free guidance ``cfg_scale`` w > 1 on the model
   output with the negative embedding (default w = 1: no CFG, as VideoScene's student has none).
3. Consistency function with the boundary condition f(x, 0) = x (LCM's parameterisation, :func:`boundary_coefs`):
   f(x, t) = c_skip(t) x + c_out(t) x0_hat(x, t), c_skip = s_d^2 / ((t s)^2 + s_d^2), c_out = t s / sqrt((t s)^2 +
   s_d^2), s_d = ``sigma_data`` = 0.5, s = ``timestep_scaling`` = 10.
4. loss = mean over samples of the pseudo-Huber distance d(a, b) = sqrt(||a - b||^2 / numel + c^2) - c (``huber_c``
   c = 0.001) between f_theta(x_{t_{n+1}}, t_{n+1}) (student, with gradient) and stop-grad f_theta-(x_hat_{t_n}, t_n),
   theta- = EMA of theta (decay ``ema`` mu = 0.95, updated after each optimiser step, trainable tensors only; the
   EMA network is the student module run with the EMA tensors via ``torch.func.functional_call``).

Trainable parameters: ``train_params="attention"`` (names containing "attn", as the paper trains the attention layers)
or ``"all"``; the rest is frozen (requires_grad False). The student is a copy of the teacher with bf16/fp16 tensors
cast to fp32 (master weights); ``autocast=True`` runs the forwards under bf16 autocast on CUDA. Memory for
CogVideoX-5B ("attention": 504 tensors, 1.59e9 of 5.57e9 parameters): teacher bf16 11 GB + student fp32 22 GB +
grads 6.3 GB + EMA 6.3 GB + AdamW moments 12.7 GB (~59 GB), plus activations (use ``gradient_checkpointing``).
FSDP (sharding student / EMA / optimiser over GPUs) is not implemented; DDP keeps a full copy per GPU.

Randomness (the reproducibility contract): everything is a pure function of (``seed``, global sample position):
:func:`sample_index` (which sample, a fresh seeded permutation per epoch) and :func:`draw_step_noise` (t_{n+1}, eps).
Global step s (0-based) uses positions s G .. s G + G - 1 with G = world_size x batch_size x grad_accum, so a
checkpoint holds no RNG state, ``resume`` is bit-identical, and 2 DDP ranks x batch 1 see exactly the samples and noise
of 1 process with ``grad_accum=2`` (rank r / micro-batch m / item j gets position s G + (m world + r) batch + j).

Checkpoints (:func:`save_checkpoint` / :func:`read_checkpoint`): ONE safetensors file rewritten atomically at every
save, holding ``student.<name>`` (trainable weights), ``ema.<name>``, ``optim.<name>.<state>`` (Adam moments, step)
and metadata (JSON strings): format, step, config (:meth:`DistillConfig.fingerprint` + data/model fingerprints),
seed, losses (rank-averaged loss of every step so far), trainable names. :func:`export_student` turns one into a
VideoScene-style ``model.safetensors`` (transformer keys; ``cogvideo_load.apply_weights`` / LeapFlowStudent load it).

Distributed: under ``torchrun`` (or with a process group already initialised, see :func:`init_distributed`: nccl on
CUDA, gloo on CPU) the student is wrapped in ``DistributedDataParallel``, each rank takes its share of the global
batch, the logged loss is averaged over ranks, only rank 0 writes checkpoints (the others wait and learn whether
the write succeeded). Failures: a non-finite loss or gradient norm raises ValueError on every rank (nothing is
written for that step); ``progress.check_interrupt()`` is called before every step (raise to stop; the last
checkpoint stays).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

from ..video import leap
from ..core.atomic import atomic_write
from ..core.distributed import (all_mean, broadcast_flag, ddp_no_buffer_sync, dist_state, init_distributed, sample_index,
                          seed_mix)
from ..video.leap import rotary_embedding
from ..video.schedule import add_noise, x0_from_output
from ..core.runtime import Progress, as_progress
from ..video.model import VideoModel

__all__ = ["DistillConfig", "DistillResult", "LatentDataset", "boundary_coefs", "consistency_fn",
           "pseudo_huber", "ddim_step", "draw_step_noise", "select_trainable", "init_distributed",
           "distill", "save_checkpoint", "read_checkpoint", "export_student", "encode_sample", "save_sample", "main",
           "CKPT_FORMAT"]

log = logging.getLogger(__name__)

CKPT_FORMAT = "vscene-leapflow-distill"
CKPT_VERSION = "1"
SAMPLE_KEYS = ("render_latents", "image_latents")
_NO_SAMPLES = "(expected *.safetensors with render_latents, image_latents)"
_OPT_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step")

# =========================================================================================== configuration
@dataclass
class DistillConfig:
    """Hyper-parameters of :func:`distill` (defaults: VideoScene / LCM choices where the paper gives them).

    steps: total optimiser steps (a resumed run continues up to it). lr, optimizer ("adamw" | "adam"), weight_decay,
    betas, adam_eps, grad_clip (max global grad norm; 0 = off). k: skip interval t_{n+1} - t_n. t_max: T', largest
    t_{n+1}. ema: EMA decay mu. train_params: "attention" | "all". batch_size: samples per forward per rank;
    grad_accum: micro-batches per step per rank (global batch = world x batch_size x grad_accum). huber_c,
    sigma_data, timestep_scaling: loss / boundary-condition constants. cfg_scale: teacher CFG w (1 = none).
    seed: all randomness (see module docstring). save_every: checkpoint period in steps (0 = only at the end).
    log_every: log period. gradient_checkpointing: passed to the transformer. autocast: bf16 autocast on CUDA.
    find_unused_parameters: DDP option (not needed for CogVideoX).
    """

    steps: int = 1000
    lr: float = 1e-5
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    k: int = 20
    t_max: int = 900
    ema: float = 0.95
    train_params: str = "attention"
    batch_size: int = 1
    grad_accum: int = 1
    huber_c: float = 1e-3
    sigma_data: float = 0.5
    timestep_scaling: float = 10.0
    cfg_scale: float = 1.0
    seed: int = 0
    save_every: int = 0
    log_every: int = 10
    gradient_checkpointing: bool = False
    autocast: bool = False
    find_unused_parameters: bool = False

    def validate(self, n_train: int = 1000) -> None:
        """Raise ValueError (naming the field and the valid range) for an unusable setting."""
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.optimizer in ("adamw", "adam"), f"optimizer must be 'adamw' or 'adam', got {self.optimizer!r}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}"),
            (1 <= self.k <= self.t_max, f"need 1 <= k <= t_max, got k={self.k}, t_max={self.t_max}"),
            (self.t_max <= n_train - 1, f"t_max must be <= {n_train - 1} (scheduler timesteps), got {self.t_max}"),
            (0.0 <= self.ema < 1.0, f"ema decay must be in [0, 1), got {self.ema}"),
            (self.train_params in ("attention", "all"),
             f"train_params must be 'attention' or 'all', got {self.train_params!r}"),
            (self.batch_size >= 1 and self.grad_accum >= 1,
             f"batch_size and grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}"),
            (self.huber_c > 0, f"huber_c must be > 0, got {self.huber_c}"),
            (self.sigma_data > 0 and self.timestep_scaling > 0, "sigma_data and timestep_scaling must be > 0"),
            (self.cfg_scale >= 1.0, f"cfg_scale must be >= 1 (1 = no guidance), got {self.cfg_scale}"),
            (self.save_every >= 0 and self.log_every >= 0, "save_every and log_every must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    def fingerprint(self, world_size: int) -> dict:
        """The settings that determine the training trajectory (compared on resume). ``steps``, the save/log periods,
        gradient checkpointing and how the global batch is split (ranks x batch x accumulation) are left out."""
        d = dataclasses.asdict(self)
        for key in ("steps", "save_every", "log_every", "gradient_checkpointing", "batch_size", "grad_accum",
                    "find_unused_parameters"):
            d.pop(key)
        d["betas"] = [float(b) for b in self.betas]
        d["global_batch"] = int(world_size) * self.batch_size * self.grad_accum
        return d


@dataclass
class DistillResult:
    """What :func:`distill` returns (on every rank).

    step: last completed step; losses: rank-averaged loss of every step 1..step (resumed history included);
    local_losses: this process's own loss for the steps run in this call; checkpoint: the checkpoint path (or None);
    saved: steps at which THIS process wrote the checkpoint (empty on ranks > 0); student: the trained module
    (unwrapped); ema: {name: tensor} EMA weights of the trainable tensors; trainable: their names; rank, world_size;
    seconds: wall time of this call.
    """

    step: int
    losses: list
    local_losses: list
    checkpoint: Path | None
    saved: list
    student: torch.nn.Module
    ema: dict
    trainable: list
    rank: int = 0
    world_size: int = 1
    seconds: float = 0.0


# =========================================================================================== consistency maths
def boundary_coefs(t: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM boundary-condition coefficients for integer timesteps ``t`` [B] -> (c_skip [B], c_out [B]) float64.

    c_skip = s_d^2 / ((t s)^2 + s_d^2), c_out = t s / sqrt((t s)^2 + s_d^2): c_skip(0) = 1, c_out(0) = 0, so
    f(x, 0) = x exactly; for t >= 20 (s = 10) c_skip < 7e-6 and f is essentially the x0 prediction.
    """
    ts = torch.as_tensor(t, dtype=torch.float64) * float(timestep_scaling)
    sd2 = float(sigma_data) ** 2
    return sd2 / (ts ** 2 + sd2), ts / (ts ** 2 + sd2) ** 0.5


def _bview(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] coefficients -> [B, 1, ..., 1] in ``like``'s dtype/device (for [B, T, C, h, w] tensors)."""
    return v.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.ndim - 1)))


def consistency_fn(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, sigma_data: float = 0.5,
                   timestep_scaling: float = 10.0) -> torch.Tensor:
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0; x_t, x0 [B, T, C, h, w], t [B] integer timesteps."""
    c_skip, c_out = boundary_coefs(t, sigma_data, timestep_scaling)
    return _bview(c_skip, x_t) * x_t + _bview(c_out, x0) * x0


def pseudo_huber(a: torch.Tensor, b: torch.Tensor, c: float = 1e-3) -> torch.Tensor:
    """Per-sample pseudo-Huber distance sqrt(||a - b||^2 / numel + c^2) - c: a, b [B, ...] -> [B] (float32)."""
    d2 = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return torch.sqrt(d2 + float(c) ** 2) - float(c)


def ddim_step(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor,
              acp: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from t to t_prev given the x0 prediction; x_t, x0 [B, ...], t, t_prev [B].

    x_prev = sqrt(a_p) x0 + sqrt(1 - a_p) eps_hat, eps_hat = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t), written as in
    ``leap.teacher_sample`` (coefficients in the schedule's precision): x_prev = A x_t + B x0.
    """
    a_t, a_p = acp[t.cpu()], acp[t_prev.cpu()]
    at = ((1 - a_p) / (1 - a_t)) ** 0.5
    bt = a_p ** 0.5 - a_t ** 0.5 * at
    return _bview(at, x_t) * x_t + _bview(bt, x0) * x0


# =========================================================================================== randomness
def draw_step_noise(seed: int, position: int, shape, k: int, t_max: int) -> tuple[int, torch.Tensor]:
    """(t_{n+1} ~ U{k..t_max}, eps ~ N(0, I) of ``shape`` float32 cpu) for global sample ``position``."""
    g = torch.Generator().manual_seed(seed_mix("noise", int(seed), int(position)))
    t = int(torch.randint(int(k), int(t_max) + 1, (1,), generator=g).item())
    return t, torch.randn(tuple(shape), generator=g, dtype=torch.float32)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device):
    """Seed torch's global RNG (dropout, if any) for one step and restore it afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


# =========================================================================================== data
def _as_sample_tensor(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch tensor, got {type(x).__name__}")
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[0] != 1:
        raise ValueError(f"{what} must be [1, T, C, h, w] (or [T, C, h, w]), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must be a float tensor, got {x.dtype}")
    return x


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} contains NaN or inf values; re-encode this sample or remove it from the dataset")


class LatentDataset:
    """Training samples for :func:`distill`: each item is {"render_latents", "image_latents", "gt_latents" (or None):
    [1, T, C, h, w] float32 cpu, "name": str}.

    ``LatentDataset(folder)``: every ``*.safetensors`` in ``folder`` (sorted by name), each with keys
    ``render_latents``, ``image_latents`` [, ``gt_latents``]; shapes are checked from the headers at construction and
    the tensors read (and checked for NaN/inf) when an item is used. ``LatentDataset(list_of_dicts)`` or
    :meth:`from_tensors` hold samples in memory (checked at once). All samples must share one shape; ValueError
    otherwise, or when there is no sample.
    """

    def __init__(self, source):
        self._files: list[Path] | None = None
        self._items: list[dict] | None = None
        if isinstance(source, (str, os.PathLike)):
            self._init_folder(Path(source).expanduser())
        elif isinstance(source, (list, tuple)):
            self._init_items(list(source))
        else:
            raise ValueError(f"LatentDataset needs a folder or a list of samples, got {type(source).__name__}")

    @classmethod
    def from_tensors(cls, render_latents, image_latents, gt_latents=None, names=None) -> "LatentDataset":
        """Build from parallel lists of tensors ([1, T, C, h, w] each)."""
        n = len(render_latents)
        if len(image_latents) != n or (gt_latents is not None and len(gt_latents) != n):
            raise ValueError(f"render_latents, image_latents (and gt_latents) must have the same length, got {n}, "
                             f"{len(image_latents)}" + (f", {len(gt_latents)}" if gt_latents is not None else ""))
        names = list(names) if names is not None else [f"sample_{i:05d}" for i in range(n)]
        return cls([{"render_latents": r, "image_latents": m, "gt_latents": None if gt_latents is None
                     else gt_latents[i], "name": names[i]} for i, (r, m) in enumerate(zip(render_latents,
                                                                                          image_latents))])

    # -------------------------------------------------------------------------------- construction
    def _init_folder(self, folder: Path) -> None:
        files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
        if not files:
            why = "folder does not exist" if not folder.exists() else "no *.safetensors files"
            raise ValueError(f"no training samples in {folder} {_NO_SAMPLES}: {why}")
        shapes = {}
        for p in files:
            shapes[p.name] = self._header_shapes(p)
        self._files = files
        self._check_shapes(shapes)

    @staticmethod
    def _header_shapes(path: Path) -> dict:
        """{key: shape} of the sample keys in one file (header only); ValueError on missing keys / bad files."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                keys = set(fh.keys())
                missing = [k for k in SAMPLE_KEYS if k not in keys]
                if missing:
                    raise ValueError(f"training sample {path} lacks {', '.join(missing)} (it has {sorted(keys)}); "
                                     f"{_NO_SAMPLES[1:-1]}")
                out = {}
                for k in (*SAMPLE_KEYS, "gt_latents"):
                    if k in keys:
                        sl = fh.get_slice(k)
                        if not sl.get_dtype().startswith(("F", "BF")):
                            raise ValueError(f"{path}: {k} must be a float tensor, got {sl.get_dtype()}")
                        out[k] = tuple(int(s) for s in sl.get_shape())
                return out
        except ValueError:
            raise
        except Exception as exc:  # SafetensorError: corrupt / truncated
            raise ValueError(f"cannot read training sample {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                             f"re-write it") from None

    def _init_items(self, items: list) -> None:
        if not items:
            raise ValueError(f"no training samples in the given list {_NO_SAMPLES}")
        shapes, clean = {}, []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or any(k not in it for k in SAMPLE_KEYS):
                raise ValueError(f"sample {i} must be a dict with keys {SAMPLE_KEYS} (+ optional gt_latents)")
            name = str(it.get("name") or f"sample_{i:05d}")
            s = {"name": name}
            for k in (*SAMPLE_KEYS, "gt_latents"):
                if it.get(k) is None:
                    s[k] = None
                    continue
                x = _as_sample_tensor(it[k], f"{name}: {k}").detach().float().cpu()
                _check_finite(x, f"{name}: {k}")
                s[k] = x
            shapes[name] = {k: tuple(s[k].shape) for k in (*SAMPLE_KEYS, "gt_latents") if s[k] is not None}
            clean.append(s)
        if len(shapes) != len(clean):
            raise ValueError("sample names must be unique")
        self._items = clean
        self._check_shapes(shapes)

    def _check_shapes(self, shapes: dict) -> None:
        """All tensors of all samples must share one [1, T, C, h, w] shape."""
        ref_name, ref = None, None
        for name, sh in shapes.items():
            for k, s in sh.items():
                s = (1, *s) if len(s) == 4 else s
                if len(s) != 5 or s[0] != 1:
                    raise ValueError(f"{name}: {k} must be [1, T, C, h, w], got {list(s)}")
                if ref is None:
                    ref_name, ref = f"{name}: {k}", s
                elif s != ref:
                    raise ValueError(f"inconsistent sample shapes: {name}: {k} is {list(s)} but {ref_name} is "
                                     f"{list(ref)}; all samples must share one geometry (encode every render at the "
                                     f"model's frames and size)")
        self.shape = tuple(ref[1:])  # (T, C, h, w)

    # -------------------------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self._files) if self._files is not None else len(self._items)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._files] if self._files is not None else [s["name"] for s in self._items]

    def __getitem__(self, i: int) -> dict:
        if self._items is not None:
            return self._items[i]
        from safetensors.torch import load_file

        path = self._files[i]
        try:
            data = load_file(str(path))
        except Exception as exc:
            raise ValueError(f"cannot read training sample {path} ({type(exc).__name__}: {str(exc)[:200]})") from None
        out = {"name": path.name}
        for k in (*SAMPLE_KEYS, "gt_latents"):
            if k not in data:
                out[k] = None
                continue
            x = _as_sample_tensor(data[k], f"{path}: {k}").float()
            _check_finite(x, f"training sample {path}: {k}")
            out[k] = x
        return out

    def fingerprint(self) -> dict:
        return {"n_samples": len(self), "sample_shape": list(self.shape)}


def save_sample(path, render_latents: torch.Tensor, image_latents: torch.Tensor,
                gt_latents: torch.Tensor | None = None) -> Path:
    """Write one training sample ([1, T, C, h, w] each, scaled latents) as safetensors, atomically."""
    tensors = {"render_latents": render_latents, "image_latents": image_latents}
    if gt_latents is not None:
        tensors["gt_latents"] = gt_latents
    tensors = {k: _as_sample_tensor(v, k).detach().float().cpu().contiguous() for k, v in tensors.items()}
    LatentDataset([dict(tensors, name=Path(path).name)])  # validates shapes / finiteness
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "vscene-latent-sample"}))


def encode_sample(model: VideoModel, first: torch.Tensor, last: torch.Tensor, video: torch.Tensor,
                  gt_video: torch.Tensor | None = None, seed: int = 0, aspect: str = "stretch") -> dict:
    """Encode one training sample with the model's VAE, exactly like the leap sampler prepares its inputs.

    first, last: [H, W, 3]; video (coarse render), gt_video (optional real video): [F, H', W', 3] float 0..1.
    Returns {"render_latents", "image_latents", "gt_latents" (or None)}: [1, T, C, h, w] float32 cpu, scaled.
    """
    from ..video.leap import encode_conditioning, prepare_inputs

    inputs = prepare_inputs(model, first, last, video, aspect)
    cond = encode_conditioning(model, inputs, torch.Generator("cpu").manual_seed(int(seed)))
    gt = None
    if gt_video is not None:
        gin = prepare_inputs(model, first, last, gt_video, aspect)
        gt = encode_conditioning(model, gin, torch.Generator("cpu").manual_seed(int(seed) + 1))["video_latents"]
        gt = gt.float().cpu()
    return {"render_latents": cond["video_latents"].float().cpu(),
            "image_latents": cond["image_latents"].float().cpu(), "gt_latents": gt}


# =========================================================================================== parameters
def select_trainable(module: torch.nn.Module, train_params: str = "attention") -> list[str]:
    """Set requires_grad: True for the selected parameters ("attention": names containing "attn"; "all"), False
    for the rest. Returns the selected names in ``named_parameters`` order; ValueError when nothing matches."""
    if train_params not in ("attention", "all"):
        raise ValueError(f"train_params must be 'attention' or 'all', got {train_params!r}")
    names = []
    for n, p in module.named_parameters():
        on = train_params == "all" or "attn" in n
        p.requires_grad_(on)
        if on:
            names.append(n)
    if not names:
        raise ValueError(f"no parameter of {type(module).__name__} matches train_params={train_params!r} (no name "
                         f"contains 'attn'); use train_params='all'")
    return names


def _fp32_master(module: torch.nn.Module) -> torch.nn.Module:
    """Cast bf16/fp16 parameters and buffers to fp32 (master weights); fp32/fp64 tensors stay as they are."""
    low = (torch.bfloat16, torch.float16)
    with torch.no_grad():
        for p in module.parameters():
            if p.dtype in low:
                p.data = p.data.float()
        for mod in module.modules():
            for k, b in mod._buffers.items():
                if b is not None and b.dtype in low:
                    mod._buffers[k] = b.float()
    return module


def _layout_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(f"{k}:{tuple(v.shape)};".encode())
    return h.hexdigest()[:16]


def _make_optimizer(params: list, cfg: DistillConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=tuple(float(b) for b in cfg.betas), eps=cfg.adam_eps,
               weight_decay=cfg.weight_decay)


# =========================================================================================== checkpoints
def save_checkpoint(path, step: int, names: list[str], student: torch.nn.Module, ema: dict,
                    optimizer: torch.optim.Optimizer, config: dict, losses: list) -> Path:
    """Write the training state (see module docstring) to ``path`` atomically; return ``path``."""
    params = dict(student.named_parameters())
    tensors: dict[str, torch.Tensor] = {}
    for i, n in enumerate(names):
        tensors[f"student.{n}"] = params[n].detach().cpu().contiguous()
        tensors[f"ema.{n}"] = ema[n].detach().cpu().contiguous()
        for key, v in optimizer.state.get(params[n], {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{n}.{key}"] = v.detach().cpu().contiguous()
    meta = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "step": str(int(step)),
            "config": json.dumps(config, sort_keys=True), "seed": str(config.get("seed")),
            "trainable": json.dumps(list(names)), "losses": json.dumps([float(x) for x in losses]),
            "torch": torch.__version__}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_checkpoint(path) -> dict:
    """Read a distillation checkpoint -> {"step", "config", "losses", "trainable", "student": {name: t},
    "ema": {name: t}, "optim": {name: {state: t}}, "meta"}. ValueError for a missing/corrupt/foreign file."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CKPT_FORMAT:
                raise ValueError(f"{path} is not a distillation checkpoint (format {meta.get('format')!r}); for "
                                 f"student weights (model.safetensors) use them for inference, not resume/export")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        names = json.loads(meta["trainable"])
        out = {"step": int(meta["step"]), "config": json.loads(meta["config"]), "losses": json.loads(meta["losses"]),
               "trainable": names, "meta": meta, "student": {}, "ema": {}, "optim": {n: {} for n in names}}
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path} ({type(exc).__name__}: {str(exc)[:200]}); it is corrupt or "
                         f"truncated") from None
    for k, v in tensors.items():
        kind, rest = k.split(".", 1)
        if kind in ("student", "ema"):
            out[kind][rest] = v
        elif kind == "optim":
            n, key = rest.rsplit(".", 1)
            out["optim"].setdefault(n, {})[key] = v
    lost = [n for n in names if n not in out["student"] or n not in out["ema"]]
    if lost:
        raise ValueError(f"checkpoint {path} is incomplete: no student/EMA tensor for {lost[:3]}")
    return out


def _check_resume(ck: dict, config: dict, names: list[str], path) -> None:
    """Same trajectory settings, data and model layout, same trainable tensors; else ValueError listing the diffs."""
    diffs = [f"{k}: checkpoint {ck['config'].get(k)!r} vs now {config.get(k)!r}"
             for k in sorted(set(ck["config"]) | set(config)) if ck["config"].get(k) != config.get(k)]
    if diffs:
        raise ValueError(f"cannot resume from {path}: the settings differ ({'; '.join(diffs)}). Resume with the "
                         f"checkpoint's settings (same data, model, lr, k, t_max, ema, params, seed, global batch) "
                         f"or start a new run with another --out")
    if list(ck["trainable"]) != list(names):
        raise ValueError(f"cannot resume from {path}: it trains {len(ck['trainable'])} tensors, this model "
                         f"selects {len(names)}")


def _restore(ck: dict, names: list[str], student: torch.nn.Module, ema: dict,
             optimizer: torch.optim.Optimizer) -> None:
    """Copy the checkpoint's student/EMA weights and optimiser state into the live objects (bit-exact)."""
    params = dict(student.named_parameters())
    with torch.no_grad():
        for n in names:
            if tuple(ck["student"][n].shape) != tuple(params[n].shape):
                raise ValueError(f"checkpoint tensor {n} has shape {list(ck['student'][n].shape)}, the model "
                                 f"{list(params[n].shape)}")
            params[n].copy_(ck["student"][n])
            ema[n].copy_(ck["ema"][n])
    sd = optimizer.state_dict()
    sd["state"] = {i: dict(ck["optim"].get(n, {})) for i, n in enumerate(names) if ck["optim"].get(n)}
    optimizer.load_state_dict(sd)


def _load_base_transformer(base) -> torch.nn.Module:
    """A transformer module, or a CogVideoX base folder (its transformer is loaded, fp32 on the CPU)."""
    if isinstance(base, torch.nn.Module):
        return base
    from diffusers import CogVideoXTransformer3DModel

    from ..video.loading import inspect_base_folder, load_component

    info = inspect_base_folder(base)
    return load_component(CogVideoXTransformer3DModel, info["transformer"], torch.float32)


_EXPORT_DTYPES = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def export_student(ckpt, out, which: str = "ema", base=None, dtype: str | None = None) -> Path:
    """Checkpoint -> VideoScene-style ``model.safetensors`` (transformer state-dict keys), written atomically.

    which: "ema" (the consistency model theta-, what LCM-style distillation ships) or "student" (theta).
    base: the base transformer (module) or CogVideoX base folder: the file then holds EVERY transformer key (frozen
    ones from the base), like VideoScene's release. Without ``base`` only the trained tensors are written (apply
    them on top of the same base; ``apply_weights`` reports the rest as missing). dtype: None keeps the stored
    dtypes (trained tensors fp32), or "bf16" / "fp16" / "fp32" for every floating tensor.
    """
    if which not in ("ema", "student"):
        raise ValueError(f"which must be 'ema' or 'student', got {which!r}")
    if dtype not in _EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of bf16, fp16, fp32 or None, got {dtype!r}")
    ck = read_checkpoint(ckpt)
    trained = ck[which]
    tensors: dict[str, torch.Tensor] = {}
    if base is not None:
        sd = _load_base_transformer(base).state_dict()
        bad = [n for n in trained if n not in sd or tuple(sd[n].shape) != tuple(trained[n].shape)]
        if bad:
            raise ValueError(f"checkpoint {ckpt} does not fit the base transformer ({len(bad)} tensors missing or "
                             f"of another shape, e.g. {bad[:3]}); export with the base it was trained from")
        tensors = {k: v.detach().cpu() for k, v in sd.items()}
    tensors.update(trained)
    cast = _EXPORT_DTYPES[dtype]
    tensors = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).contiguous().clone()
               for k, v in tensors.items()}
    meta = {"format": "pt", "source": CKPT_FORMAT, "which": which, "step": str(ck["step"]),
            "complete": "true" if base is not None else "false"}
    return atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=meta))


# =========================================================================================== model calls
def _forward_x0(module, x_t: torch.Tensor, image_lat: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,
                rope, acp: torch.Tensor, prediction: str, autocast: bool, params: dict | None = None,
                negative: torch.Tensor | None = None, cfg_scale: float = 1.0) -> torch.Tensor:
    """x0 prediction of one transformer (``params`` replaces named tensors, e.g. the EMA weights).

    x_t, image_lat [B, T, C, h, w] float32; t [B] long; embeds [1, L, D]; returns x0 [B, T, C, h, w] float32.
    With ``negative`` and ``cfg_scale`` > 1: output = u + w (c - u) (classifier-free guidance on the model output).
    """
    dtype = next(module.parameters()).dtype
    B = x_t.shape[0]
    inp = torch.cat([x_t, image_lat], dim=2).to(dtype)
    emb = embeds.to(inp.device, dtype).expand(B, -1, -1)
    ts = t.to(inp.device)
    cfg_on = negative is not None and cfg_scale > 1.0
    if cfg_on:
        inp = torch.cat([inp, inp], 0)
        emb = torch.cat([negative.to(inp.device, dtype).expand(B, -1, -1), emb], 0)
        ts = torch.cat([ts, ts], 0)
    kwargs = dict(hidden_states=inp, encoder_hidden_states=emb, timestep=ts, image_rotary_emb=rope,
                  return_dict=False)
    ctx = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if autocast and inp.device.type == "cuda"
           else contextlib.nullcontext())
    with ctx:
        if params is None:
            out = module(**kwargs)[0]
        else:
            out = torch.func.functional_call(module, params, args=(), kwargs=kwargs, strict=False)[0]
    out = out.float()
    if cfg_on:
        u, c = out.chunk(2)
        out = u + float(cfg_scale) * (c - u)
    return x0_from_output(out, x_t.to(out.dtype), t, acp, prediction)


@dataclass
class _Ctx:
    """Everything one training step needs (built once by :func:`distill`)."""

    cfg: DistillConfig
    teacher: torch.nn.Module
    student: torch.nn.Module          # DDP-wrapped when distributed
    raw: torch.nn.Module              # the unwrapped student
    names: list
    ema: dict
    optimizer: torch.optim.Optimizer
    data: LatentDataset
    acp: torch.Tensor
    prediction: str
    embeds: torch.Tensor
    negative: torch.Tensor | None
    rope: object
    device: torch.device
    rank: int
    world: int
    losses: list = field(default_factory=list)
    local_losses: list = field(default_factory=list)


def _micro_batch(ctx: _Ctx, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Samples of (0-based) ``step``, micro-batch ``micro`` on this rank.

    Returns (x0 [B, T, C, h, w], image_lat [B, T, C, h, w], eps [B, T, C, h, w] on the device, t_{n+1} [B] long cpu).
    """
    cfg = ctx.cfg
    B = cfg.batch_size
    G = ctx.world * B * cfg.grad_accum
    x0s, imgs, epss, ts = [], [], [], []
    for j in range(B):
        pos = step * G + (micro * ctx.world + ctx.rank) * B + j
        s = ctx.data[sample_index(cfg.seed, len(ctx.data), pos)]
        t, eps = draw_step_noise(cfg.seed, pos, s["render_latents"].shape, cfg.k, cfg.t_max)
        x0s.append(s["render_latents"])
        imgs.append(s["image_latents"])
        epss.append(eps)
        ts.append(t)
    dev = ctx.device
    return (torch.cat(x0s).to(dev), torch.cat(imgs).to(dev), torch.cat(epss).to(dev),
            torch.tensor(ts, dtype=torch.long))


def _targets(ctx: _Ctx, x_next: torch.Tensor, img: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    """Teacher DDIM step t_{n+1} -> t_n, then the EMA consistency function there (no gradient)."""
    cfg = ctx.cfg
    t_n = t_next - cfg.k
    with torch.no_grad():
        x0_teacher = _forward_x0(ctx.teacher, x_next, img, t_next, ctx.embeds, ctx.rope, ctx.acp, ctx.prediction,
                                 cfg.autocast, negative=ctx.negative, cfg_scale=cfg.cfg_scale)
        x_n = ddim_step(x_next, x0_teacher, t_next, t_n, ctx.acp)
        x0_ema = _forward_x0(ctx.raw, x_n, img, t_n, ctx.embeds, ctx.rope, ctx.acp, ctx.prediction, cfg.autocast,
                             params=ctx.ema)
        return consistency_fn(x_n, x0_ema, t_n, cfg.sigma_data, cfg.timestep_scaling)


def _nonfinite_error(what: str, step: int, value: float, cfg: DistillConfig, teacher_dtype) -> ValueError:
    return ValueError(
        f"non-finite {what} ({value}) at step {step}; nothing was written for this step. Hints: lower the learning "
        f"rate (lr={cfg.lr:g}) or keep grad_clip on (grad_clip={cfg.grad_clip:g}); use fp32 or bf16, not fp16 "
        f"(teacher dtype {str(teacher_dtype).replace('torch.', '')}, autocast={cfg.autocast}); check the training "
        f"latents for NaN/inf or extreme values (they should be VAE latents x scaling factor, |x| ~ 1)")


def _train_step(ctx: _Ctx, step: int) -> float:
    """One optimiser step (0-based ``step``); returns the rank-averaged loss. Raises ValueError on NaN/inf."""
    cfg = ctx.cfg
    ctx.optimizer.zero_grad(set_to_none=True)
    local, global_ = [], []
    for m in range(cfg.grad_accum):
        x0, img, eps, t_next = _micro_batch(ctx, step, m)
        x_next = add_noise(x0, eps, t_next, ctx.acp)
        target = _targets(ctx, x_next, img, t_next)
        sync = ctx.world == 1 or m == cfg.grad_accum - 1
        with (contextlib.nullcontext() if sync else ctx.student.no_sync()):
            x0_s = _forward_x0(ctx.student, x_next, img, t_next, ctx.embeds, ctx.rope, ctx.acp, ctx.prediction,
                               cfg.autocast)
            pred = consistency_fn(x_next, x0_s, t_next, cfg.sigma_data, cfg.timestep_scaling)
            loss = pseudo_huber(pred, target, cfg.huber_c).mean()
            g = all_mean(loss.detach(), ctx.world)
            if not torch.isfinite(g):
                raise _nonfinite_error("loss", step + 1, float(g), cfg, next(ctx.teacher.parameters()).dtype)
            (loss / cfg.grad_accum).backward()
        local.append(float(loss.detach()))
        global_.append(float(g))
    params = [p for p in ctx.raw.parameters() if p.requires_grad]
    if cfg.grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    if not torch.isfinite(norm):
        raise _nonfinite_error("gradient norm", step + 1, float(norm), cfg, next(ctx.teacher.parameters()).dtype)
    ctx.optimizer.step()
    _update_ema(ctx)
    ctx.local_losses.append(sum(local) / len(local))
    return sum(global_) / len(global_)


def _update_ema(ctx: _Ctx) -> None:
    """theta- <- mu theta- + (1 - mu) theta for the trainable tensors."""
    mu = ctx.cfg.ema
    params = dict(ctx.raw.named_parameters())
    with torch.no_grad():
        for n in ctx.names:
            ctx.ema[n].mul_(mu).add_(params[n].detach(), alpha=1.0 - mu)


# =========================================================================================== entry point
def _check_geometry(model: VideoModel, data: LatentDataset) -> None:
    """Sample latents must fit the transformer (channels; fixed size/frames with learned positional embeddings)."""
    T, C, h, w = data.shape
    tc = model.transformer.config
    if int(tc.in_channels) != 2 * C:
        raise ValueError(f"the samples have {C} latent channels but the transformer takes {tc.in_channels} = 2 x "
                         f"{int(tc.in_channels) // 2}; encode the samples with this model's VAE")
    if getattr(tc, "use_learned_positional_embeddings", False):
        want = ((int(tc.sample_frames) - 1) // int(getattr(tc, "temporal_compression_ratio", 4)) + 1,
                int(tc.sample_height), int(tc.sample_width))
        if (T, h, w) != want:
            raise ValueError(f"the samples are {T} x {h} x {w} latents (T x h x w) but {model.name} only runs at "
                             f"{want[0]} x {want[1]} x {want[2]} (learned positional embeddings); encode the renders "
                             f"at {model.native_frames} frames of {model.native_size[0]}x{model.native_size[1]}")


def _prepare_out(out, resume, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {out} must end in .safetensors")
    if out.is_dir():
        raise ValueError(f"checkpoint path {out} is a folder; give a file path such as {out / 'distill.safetensors'}")
    if out.exists() and resume is None and not overwrite:
        raise ValueError(f"{out} already exists; resume from it (resume={str(out)!r} / --resume) or pass "
                         f"overwrite=True (--overwrite) to start over")
    return out


def distill(model: VideoModel, data, out=None, *, config: DistillConfig | None = None, resume=None,
            student: torch.nn.Module | None = None, overwrite: bool = False, distributed: bool | None = None,
            progress: Progress | None = None, **overrides) -> DistillResult:
    """Leap-flow (consistency) distillation of ``model.transformer`` (the frozen teacher) into a student.

    model: the base :class:`VideoModel` (teacher, scheduler config, prompt embedding, negative embedding for CFG,
    device). data: a :class:`LatentDataset` or a folder of samples. out: checkpoint ``.safetensors`` (None: no
    checkpoint). config / overrides: :class:`DistillConfig` fields (``distill(m, d, out, steps=20, lr=1e-4)``).
    resume: a checkpoint to continue from (same settings, else ValueError); it may be ``out`` itself.
    student: the module to train (default: a deep copy of the teacher, bf16/fp16 tensors cast to fp32; its
    trainable tensors are overwritten on resume; never the teacher itself). distributed: None = auto (an initialised
    process group or torchrun's env), False = off. progress (:class:`~vscene_engine.core.runtime.Progress`):
    ``update(step, total, stage="distill", loss=)`` after every step (every rank, the rank-averaged loss);
    ``check_interrupt()`` before every step (raise to stop; under DDP it must answer alike on every rank, otherwise
    torchrun tears the group down when the raising rank exits).
    Returns a :class:`DistillResult`.
    """
    t_start = time.perf_counter()
    cfg = dataclasses.replace(config or DistillConfig(), **overrides)
    sched = model.schedule
    cfg.validate(sched.num_train_timesteps)
    if cfg.cfg_scale > 1.0 and model.negative_prompt_embeds is None:
        raise ValueError("cfg_scale > 1 needs a negative prompt embedding in the model (negative_prompt_embeds / "
                         "--negative-prompt-embeds); VideoScene's student uses cfg_scale = 1")
    data = data if isinstance(data, LatentDataset) else LatentDataset(data)
    _check_geometry(model, data)
    out = _prepare_out(out, resume, overwrite)
    rank, world = dist_state(distributed)
    device = torch.device(model.device)
    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl" and device.type != "cuda":
            raise ValueError(f"the nccl process group needs the model on CUDA (cuda:LOCAL_RANK), got {device}")

    if student is model.transformer:
        raise ValueError("student must not be the teacher module itself (model.transformer); pass a copy or None")
    raw = student if student is not None else copy.deepcopy(model.transformer)
    raw = _fp32_master(raw).to(device).train()
    names = select_trainable(raw, cfg.train_params)
    if cfg.gradient_checkpointing and hasattr(raw, "enable_gradient_checkpointing"):
        raw.enable_gradient_checkpointing()
    params = dict(raw.named_parameters())
    ema = {n: params[n].detach().clone() for n in names}
    optimizer = _make_optimizer([params[n] for n in names], cfg)
    fingerprint = dict(cfg.fingerprint(world), **data.fingerprint(), model_layout=_layout_digest(raw),
                       prediction_type=sched.prediction_type, schedule=sched.fingerprint())
    start, history = 0, []
    if resume is not None:
        ck = read_checkpoint(resume)
        _check_resume(ck, fingerprint, names, resume)
        _restore(ck, names, raw, ema, optimizer)
        start, history = ck["step"], list(ck["losses"])
        log.info("resumed from %s at step %d", resume, start)

    wrapped = raw
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(raw, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=cfg.find_unused_parameters, **ddp_no_buffer_sync(DDP))
    T, C, h, w = data.shape
    with model.placer.use("transformer", model.transformer) as teacher:
        ctx = _Ctx(cfg=cfg, teacher=teacher, student=wrapped, raw=raw, names=names, ema=ema, optimizer=optimizer,
                   data=data, acp=sched.alphas_cumprod, prediction=sched.prediction_type,
                   embeds=model.prompt_embeds.to(device), rope=rotary_embedding(model, T, h, w, device),
                   negative=(model.negative_prompt_embeds.to(device) if cfg.cfg_scale > 1.0 else None),
                   device=device, rank=rank, world=world, losses=history)
        saved = _run_loop(ctx, start, out, fingerprint, as_progress(progress))
    return DistillResult(step=max(start, cfg.steps), losses=list(ctx.losses), local_losses=list(ctx.local_losses),
                         checkpoint=out, saved=saved, student=raw, ema=ema, trainable=names, rank=rank,
                         world_size=world, seconds=time.perf_counter() - t_start)


def _run_loop(ctx: _Ctx, start: int, out: Path | None, fingerprint: dict, progress: Progress) -> list[int]:
    """Steps start+1 .. cfg.steps with logging, progress, periodic and final checkpoints; returns the saved steps."""
    cfg, saved = ctx.cfg, []
    for s in range(start, cfg.steps):
        progress.check_interrupt()
        with _seeded_global_rng(seed_mix("step", cfg.seed, s), ctx.device):
            loss = _train_step(ctx, s)
        ctx.losses.append(loss)
        step = s + 1
        progress.update(step, cfg.steps, stage="distill", loss=loss)
        if ctx.rank == 0 and cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            log.info("distill step %d/%d loss %.6f", step, cfg.steps, loss)
        if out is not None and ((cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps):
            if _save_collective(ctx, out, step, fingerprint):
                saved.append(step)
    return saved


def _save_collective(ctx: _Ctx, out: Path, step: int, fingerprint: dict) -> bool:
    """Rank 0 writes the checkpoint; every rank learns whether it worked (and raises if not)."""
    err = None
    if ctx.rank == 0:
        try:
            save_checkpoint(out, step, ctx.names, ctx.raw, ctx.ema, ctx.optimizer, fingerprint, ctx.losses)
        except BaseException as exc:  # re-raised below after telling the other ranks
            err = exc
    ok = broadcast_flag(err is None, ctx.world, ctx.device)
    if err is not None:
        raise err
    if not ok:
        raise RuntimeError(f"rank 0 failed to write the checkpoint {out} at step {step} (see rank 0's error)")
    return ctx.rank == 0


# =========================================================================================== command line
def _parser() -> argparse.ArgumentParser:
    d = DistillConfig()
    ap = argparse.ArgumentParser(
        prog="python -m vscene_engine.train.distill",
        description="Leap-flow distillation (VideoScene Algorithm 1): train a consistency student from a CogVideoX "
                    "I2V base on latent samples (render_latents, image_latents). Run under torchrun for DDP.")
    ap.add_argument("--model", required=True, help="CogVideoX I2V base folder (transformer/, vae/, scheduler/)")
    ap.add_argument("--data", required=True, help="folder of *.safetensors samples (render_latents, image_latents)")
    ap.add_argument("--out", required=True, help="checkpoint file (.safetensors), rewritten atomically at each save")
    ap.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    ap.add_argument("--prompt-embeds", default=None, help="fixed prompt embedding (VideoScene prompt_embeds.pt)")
    ap.add_argument("--prompt", default=None, help="prompt (only without --prompt-embeds; needs the folder's T5)")
    ap.add_argument("--negative-prompt-embeds", default=None, help="negative embedding (only for --cfg > 1)")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr:g})")
    ap.add_argument("--k", type=int, default=d.k, help=f"skip interval t_(n+1) - t_n (default {d.k})")
    ap.add_argument("--t-max", type=int, default=d.t_max, help=f"largest t_(n+1), T' (default {d.t_max})")
    ap.add_argument("--ema", type=float, default=d.ema, help=f"EMA decay of the target network (default {d.ema})")
    ap.add_argument("--params", choices=("attention", "all"), default=d.train_params,
                    help="trainable parameters: attention layers (paper) or all")
    ap.add_argument("--cfg", type=float, default=d.cfg_scale, help="teacher classifier-free guidance (default 1)")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help="samples per forward per process")
    ap.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step per process")
    ap.add_argument("--optimizer", choices=("adamw", "adam"), default=d.optimizer)
    ap.add_argument("--weight-decay", type=float, default=d.weight_decay)
    ap.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0 = off)")
    ap.add_argument("--huber-c", type=float, default=d.huber_c, help="pseudo-Huber constant c (default 0.001)")
    ap.add_argument("--timestep-scaling", type=float, default=d.timestep_scaling, help="boundary-condition s (10)")
    ap.add_argument("--sigma-data", type=float, default=d.sigma_data, help="boundary-condition sigma_d (0.5)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--save-every", type=int, default=500, help="checkpoint period in steps (default 500; 0 = end)")
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--resume", nargs="?", const="", default=None,
                    help="continue from a checkpoint (no value: from --out)")
    ap.add_argument("--overwrite", action="store_true", help="start over even if --out exists")
    ap.add_argument("--export", default=None, help="after training write model.safetensors (full transformer keys)")
    ap.add_argument("--export-which", choices=("ema", "student"), default="ema")
    ap.add_argument("--export-dtype", choices=("bf16", "fp16", "fp32"), default=None)
    ap.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK under torchrun / cuda / cpu), cpu, cuda")
    ap.add_argument("--dtype", default="auto", help="teacher weight dtype (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast for the forwards (CUDA)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (saves memory)")
    return ap


def _config_from_args(a) -> DistillConfig:
    return DistillConfig(steps=a.steps, lr=a.lr, k=a.k, t_max=a.t_max, ema=a.ema, train_params=a.params,
                         cfg_scale=a.cfg, batch_size=a.batch_size, grad_accum=a.grad_accum, optimizer=a.optimizer,
                         weight_decay=a.weight_decay, grad_clip=a.grad_clip, huber_c=a.huber_c,
                         timestep_scaling=a.timestep_scaling, sigma_data=a.sigma_data, seed=a.seed,
                         save_every=a.save_every, log_every=a.log_every, autocast=a.autocast,
                         gradient_checkpointing=a.gradient_checkpointing)


class _PrintProgress(Progress):
    """One ``[step/total] loss`` line per step on stderr, from rank 0 only."""

    def __init__(self, rank: int):
        self.rank = rank

    def update(self, done, total, *, stage=None, loss=None, preview=None) -> None:
        if self.rank == 0:
            print(f"[{done}/{total}] loss {loss:.6f}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    """Command line (see :func:`_parser`); returns an exit code (2 with one ``error:`` line for bad input)."""
    import torch.distributed as dist

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    owned = False  # destroy only a process group this call created
    try:
        owned = not (dist.is_available() and dist.is_initialized())
        info = init_distributed()
        from ..video.loading import load_video_model

        device = args.device
        if device == "auto":
            device = info.device or ("cuda" if torch.cuda.is_available() else "cpu")
        cfg = _config_from_args(args)
        cfg.validate()
        data = LatentDataset(args.data)
        resume = None if args.resume is None else (args.resume or args.out)
        _prepare_out(args.out, resume, args.overwrite)  # cheap checks before loading the model
        if resume is not None:
            read_checkpoint(resume)
        model = load_video_model(args.model, prompt_embeds=args.prompt_embeds, prompt=args.prompt,
                                 negative_prompt_embeds=args.negative_prompt_embeds, device=device,
                                 dtype=args.dtype)
        res = distill(model, data, args.out, config=cfg, resume=resume, overwrite=args.overwrite,
                      progress=_PrintProgress(info.rank))
        if info.rank == 0:
            print(f"trained steps {res.step} ({len(res.trainable)} tensors, {res.world_size} process(es), "
                  f"{res.seconds:.1f} s); final loss {res.losses[-1]:.6f}; checkpoint {args.out}")
            if args.export:
                export_student(args.out, args.export, which=args.export_which, base=model.transformer,
                               dtype=args.export_dtype)
                print(f"exported the {args.export_which} weights to {args.export}")
        if info.world_size > 1:
            dist.barrier()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if owned and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
