"""Diffusion² score composition: sample a V x F grid of latents with a video model and a multi-view model.

Entry point: :func:`compose_sample`. One denoising step of the composition is :func:`compose_x0` (what a host's
guider calls when the host's own sampler does the stepping); the weight schedules are :func:`schedule_values` and
:func:`orbit_view_weights`; the EDM noise levels are :func:`sigmas_karras`.

The grid (Diffusion², fudan-zvg/diffusion-square, ``main.py::parallel_denoising_ddp``)::

    x [V, F, C, H, W]      V views ("rows" are videos: one view over F frames)
                           F frames ("columns" are multi-view sets: one frame seen from V views)

    row_fn(x_rows [B, F, C, H, W], level, cond) -> x0 [B, F, C, H, W]   the video model on B views' rows
    col_fn(x_cols [B, V, C, H, W], level, cond) -> x0 [B, V, C, H, W]   the multi-view model on B frames' columns
    ind_fn(x_imgs [B, C, H, W], level, cond)    -> x0 [B, C, H, W]      optional: a single-image model

Denoisers are in x0-prediction form. ``level`` is a Python float sigma for the EDM samplers ("euler", "heun": the
model input is x = x0 + sigma * eps) and a Python int timestep for "ddim" (x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
over ``leap.alphas_cumprod(scheduler_config)``). ``cond`` is the per-row / per-column / per-image conditioning the
caller gave (``row_cond`` / ``col_cond`` / ``ind_cond``) restricted to the B items of the call: a tensor or list with
one entry per view (rows), per frame (columns) or per image (V * F, view-major), or a callable receiving the
LongTensor of indices; None stays None.

Composition (Theorem 3.1 of the paper and the release's use of it). If the images of one row and the images of one
column are conditionally independent given the image where they cross, Bayes gives for each grid image

    grad log p(x_vf | row, col) = grad log p(x_vf | row) + grad log p(x_vf | col) - grad log p(x_vf)

i.e. in x0 form x0 = row + col - ind (``ind_fn`` given: this exact form is used). The release has no single-image
model and replaces grad log p(x_vf) by the convex combination s * row + (1 - s) * col, which leaves

    x0 = (1 - s) * row + s * col          s = the multi-view ("column") weight of the step

(``main.py``: ``denoised = (1 - v3d_scale) * svd + v3d_scale * sv3d`` with ``v3d_scale = ss(i)``). Because the
weights sum to one, the same combination holds for eps and for the score at the same noise level. Optional per-view
weights w_v in [0, 1] scale the video weight: row weight w_v (1 - s), column weight 1 - w_v (1 - s) (the release's
``view_weight``; :func:`orbit_view_weights` rebuilds its 21 constants). ``row_only_from`` = the release's
``svd_only_from``: after that fraction of the steps only the video model is used.

Conditioning (``cond_row`` = the clean latents of one view over all frames, e.g. a reference video; ``cond_col`` =
one frame from all views, e.g. reference multi-view images): replacement ("inpainting") style. Their x0 is set to the
given values and their x to the forward-noised values with the sampler's own initial noise (EDM: value + sigma z;
DDIM: sqrt(a) value + sqrt(1 - a) z), so the final grid holds them exactly. The denoisers still see the noisy known
images inside their rows / columns. Rows or columns that are entirely known are not evaluated.

Memory: rows are evaluated ``batch`` at a time, columns ``col_batch`` at a time, single images ``batch * F`` at a time;
the result does not depend on these sizes. Distributed: with torch.distributed initialised and world size R > 1, the
rows, columns (and images) are split into R contiguous shards, each rank evaluates its shard and the x0 estimates are
all-gathered, so every rank holds the same grid and the result equals the single-process one (the release hard-codes
8 GPUs and fixed intervals; here R is the world size). All ranks must pass the same noise and arguments; tensors
travel on the grid's device (gloo: CPU, nccl: CUDA).

Not reproduced from the release: its two-pass "rollback" (Langevin re-noising) in the first 10 steps, EDM churn,
the frequency-mixing second stage and the manual CFG variants; CFG belongs inside row_fn / col_fn.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .leap import alphas_cumprod, teacher_timesteps
from .runtime import Progress, as_progress

__all__ = ["ComposeResult", "SCHEDULE_KINDS", "SAMPLERS", "schedule_values", "sigmas_karras", "orbit_view_weights",
           "composition_weights", "step_index", "compose_x0", "compose_sample"]

SCHEDULE_KINDS = ("constant", "linear", "cosine", "logistic")
SAMPLERS = ("euler", "heun", "ddim")

Denoiser = Callable[[torch.Tensor, Any, Any], torch.Tensor]


@dataclass
class ComposeResult:
    """samples [V, F, C, H, W] (x0 of the last step, the known entries exactly the given conditioning);
    s [n] the multi-view weight per step; row_weights [n, V] the video-model weight per step and view (0 where the
    step used the exact form); levels: sigmas [n + 1] (EDM, last 0) or timesteps [n] (DDIM); info: sampler, steps,
    row_calls / col_calls / ind_calls (denoiser calls on this rank), world_size, rank, seconds."""

    samples: torch.Tensor
    s: torch.Tensor
    row_weights: torch.Tensor
    levels: list
    info: dict = field(default_factory=dict)


# =========================================================================================== schedules
def _check_unit(name: str, v) -> float:
    v = float(v)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {v}")
    return v


def schedule_values(kind: str, n: int, *, s0: float = 0.6, s1: float | None = None, k: float = 15.0,
                    s_min: float = 0.0, s_max: float = 1.0) -> torch.Tensor:
    """Multi-view weight s for each of the n steps -> float64 [n]; x = i / (n - 1) (0 when n = 1).

    Mirrors ``sgm/util.py::ScaleScheduler.__call__`` of the release (scale = s0, scale_min/max = s_min/s_max,
    scale_k = k), whose default is "constant" 0.6:

    - "constant": s = s0.
    - "linear":   s = s0 + (s1 - s0) x            (the release's "linear" is s_max -> s_min: s0 = s_max, s1 = s_min).
    - "cosine":   s = s_min + (s_max - s_min) (1 + cos(pi x)) / 2           (decreasing, as released).
    - "logistic": s = s_min + (s_max - s_min) (1 - 1 / (1 + exp(-k (x - s0))))
      with s0 the midpoint (fraction of the steps) and k > 0 the steepness: s DECREASES from ~s_max to ~s_min over
      the steps, the sign of the released code (the paper reportedly prints the opposite sign, an increasing s).

    Raises ValueError for an unknown kind, n < 1, s0 / s1 / s_min / s_max outside [0, 1], s_min > s_max, k <= 0.
    """
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"the number of steps must be an integer >= 1, got {n!r}")
    n = int(n)
    x = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
    s0 = _check_unit("s0", s0)
    if kind == "constant":
        return torch.full((n,), s0, dtype=torch.float64)
    if kind == "linear":
        if s1 is None:
            raise ValueError("the linear schedule needs s1 (the multi-view weight of the last step)")
        return s0 + (_check_unit("s1", s1) - s0) * x
    lo, hi = _check_unit("s_min", s_min), _check_unit("s_max", s_max)
    if lo > hi:
        raise ValueError(f"s_min ({lo}) must not exceed s_max ({hi})")
    if kind == "cosine":
        return lo + (hi - lo) * (1 + torch.cos(math.pi * x)) / 2
    k = float(k)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"the logistic steepness k must be a finite number > 0, got {k}")
    return lo + (hi - lo) * (1 - torch.sigmoid(k * (x - s0)))


def sigmas_karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) noise levels -> float64 [n + 1], from sigma_max down to sigma_min, then a final 0
    (k-diffusion ``get_sigmas_karras``; SVD/SV3D use sigma_max 700)."""
    if isinstance(n, bool) or int(n) != n or int(n) < 1:
        raise ValueError(f"the number of steps must be an integer >= 1, got {n!r}")
    lo, hi, rho = float(sigma_min), float(sigma_max), float(rho)
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"need 0 < sigma_min < sigma_max (finite), got sigma_min={lo}, sigma_max={hi}")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho}")
    ramp = torch.linspace(0, 1, int(n), dtype=torch.float64)
    a, b = hi ** (1 / rho), lo ** (1 / rho)
    sig = (a + ramp * (b - a)) ** rho
    return torch.cat([sig, sig.new_zeros(1)])


def orbit_view_weights(n_views: int, floor: float = 0.25) -> torch.Tensor:
    """Per-view video weights of the release for an orbit of ``n_views`` views at azimuths 360 (v + 1) / V degrees
    from the input view -> float64 [V]: w_v = 1 - (1 - floor) (1 - c_v), c_v = (1 + cos(4 pi (v + 1) / V)) / 2.

    V = 21, floor = 0.25 gives the 21 constants of ``main.py::parallel_denoising_ddp`` (``view_weight``): 1 at the
    input view and opposite it, ``floor`` at the sides (more multi-view weight where the video model sees least)."""
    if isinstance(n_views, bool) or int(n_views) != n_views or int(n_views) < 1:
        raise ValueError(f"n_views must be an integer >= 1, got {n_views!r}")
    floor = _check_unit("floor", floor)
    v = torch.arange(int(n_views), dtype=torch.float64)
    c = (1 + torch.cos(4 * math.pi * (v + 1) / int(n_views))) / 2
    return 1 - (1 - floor) * (1 - c)


def composition_weights(s: torch.Tensor, view_weights=None, row_only_from: float | None = None,
                        n_views: int | None = None) -> torch.Tensor:
    """Video-model weight per step and view -> float64 [n, V]: r = w_v (1 - s_i); the multi-view weight is 1 - r.
    With ``row_only_from`` = f, steps with i / (n - 1) > f use the video model only (r = 1), as the release's
    ``svd_only_from``. ``view_weights`` None means w = 1 (then V = ``n_views``, default 1)."""
    s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
    if not bool(((s >= 0) & (s <= 1)).all()):
        raise ValueError(f"multi-view weights s must lie in [0, 1], got min {float(s.min())}, max {float(s.max())}")
    if view_weights is None:
        w = torch.ones(int(n_views or 1), dtype=torch.float64)
    else:
        w = torch.as_tensor(view_weights, dtype=torch.float64).reshape(-1).cpu()
        if n_views is not None and w.numel() != int(n_views):
            raise ValueError(f"view_weights has {w.numel()} entries but the grid has V = {n_views} views")
        if not bool(torch.isfinite(w).all()) or not bool(((w >= 0) & (w <= 1)).all()):
            raise ValueError("view_weights must be finite numbers in [0, 1] (1 = the step's s unchanged)")
    r = w[None, :] * (1 - s[:, None])
    r[_row_only_steps(s.numel(), row_only_from)] = 1.0
    return r


def _row_only_steps(n: int, row_only_from: float | None) -> torch.Tensor:
    """bool [n]: the steps with i / (n - 1) > row_only_from (none when None)."""
    if row_only_from is None:
        return torch.zeros(n, dtype=torch.bool)
    f = float(row_only_from)
    if math.isnan(f):
        raise ValueError("row_only_from must be a number (a fraction of the steps, e.g. 0.8) or None, got NaN")
    return torch.arange(n, dtype=torch.float64) / max(n - 1, 1) > f


def step_index(levels: Sequence[float] | torch.Tensor, level: float) -> int:
    """Index of the step whose level is nearest to ``level`` (for a host sampler that only passes sigma to its
    guider: look the step up in the sigmas the guider was given, then use ``s[index]``). A trailing 0 of an EDM
    sigma list is not a step: a level nearest to it maps to the last step."""
    lv = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    if lv.numel() == 0:
        raise ValueError("step_index needs a non-empty list of levels")
    i = int(torch.argmin((lv - float(level)).abs()))
    if lv.numel() > 1 and float(lv[-1]) == 0.0:
        i = min(i, lv.numel() - 2)
    return i


# =========================================================================================== validation helpers
def _check_grid(x: torch.Tensor, name: str = "grid") -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [V, F, C, H, W], got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{name} must be 5-D [V views, F frames, C, H, W], got shape {tuple(x.shape)}; "
                         "stack one video per view (e.g. torch.stack(videos) of [F, C, H, W] each)")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if min(x.shape) < 1:
        raise ValueError(f"{name} has an empty dimension: {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return int(x.shape[0]), int(x.shape[1])


def _check_batch(v, name: str) -> int:
    if isinstance(v, bool) or int(v) != v or int(v) < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return int(v)


def _take(cond, idx: torch.Tensor, n: int, name: str):
    """The entries ``idx`` of a per-item conditioning (tensor [n, ...], list/tuple of n, callable(idx), None)."""
    if cond is None:
        return None
    if callable(cond) and not isinstance(cond, torch.Tensor):
        return cond(idx)
    if isinstance(cond, torch.Tensor):
        if cond.ndim == 0 or cond.shape[0] != n:
            raise ValueError(f"{name} must have one entry per item ({n}) on its first axis, got shape "
                             f"{tuple(cond.shape)}; pass a callable(indices) for anything else")
        return cond[idx.to(cond.device)]
    if isinstance(cond, (list, tuple)):
        if len(cond) != n:
            raise ValueError(f"{name} must have one entry per item ({n}), got {len(cond)}; "
                             "pass a callable(indices) for anything else")
        return [cond[int(i)] for i in idx]
    raise ValueError(f"{name} must be None, a tensor [{n}, ...], a list of {n} entries or a callable(indices), "
                     f"got {type(cond).__name__}")


# =========================================================================================== distributed helpers
def _dist_ctx(distributed: bool | None, group) -> tuple[int, int]:
    """(rank, world) of the composition: (0, 1) unless torch.distributed is initialised with world > 1
    (``distributed`` None = automatic, False = off, True = required)."""
    if distributed is False:
        return 0, 1
    ok = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not ok:
        if distributed:
            raise ValueError("distributed=True but torch.distributed is not initialised (init_process_group first)")
        return 0, 1
    return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)


def _shard(items: list[int], rank: int, world: int) -> tuple[list[int], int]:
    """Contiguous shard of ``items`` for ``rank`` (sizes differ by at most one) and the largest shard size."""
    n = len(items)
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    size = base + (1 if rank < extra else 0)
    return items[start:start + size], base + (1 if extra else 0)


def _check_same_noise(noise: torch.Tensor, rank: int, world: int, group) -> None:
    sig = torch.stack([noise.double().sum(), noise.double().abs().sum(), noise.double()[..., 0].sum()])
    allsig = [torch.empty_like(sig) for _ in range(world)]
    torch.distributed.all_gather(allsig, sig, group=group)
    for r, other in enumerate(allsig):
        if not torch.equal(other, sig):
            raise ValueError(f"rank {rank}: the noise grid differs from rank {r}'s; every rank must pass the same "
                             "noise (same seed) and arguments")


# =========================================================================================== evaluation
def _evaluate(fn: Denoiser, name: str, items: list[int], gather: Callable[[list[int]], torch.Tensor], level,
              cond, n_total: int, cond_name: str, batch: int, rank: int, world: int, group,
              stats: dict | None) -> torch.Tensor:
    """x0 of ``fn`` for every item (rows, columns or images) -> [len(items), ...]; each rank evaluates its shard in
    chunks of ``batch`` and the shards are all-gathered (world > 1)."""
    mine, max_len = _shard(items, rank, world) if world > 1 else (items, len(items))
    outs = []
    for j in range(0, len(mine), batch):
        idx = torch.tensor(mine[j:j + batch], dtype=torch.long)
        inp = gather(mine[j:j + batch])
        out = fn(inp, level, _take(cond, idx, n_total, cond_name))
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"{name} must return a tensor (x0), got {type(out).__name__}")
        if tuple(out.shape) != tuple(inp.shape):
            raise ValueError(f"{name} returned shape {tuple(out.shape)} for an input of shape {tuple(inp.shape)}; "
                             f"it must return x0 with the input's shape")
        out = out.to(device=inp.device, dtype=inp.dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"{name} returned NaN or inf at level {level} (items {idx.tolist()})")
        outs.append(out)
        if stats is not None:
            stats[name] = stats.get(name, 0) + 1
    if world == 1:
        return torch.cat(outs, 0)
    probe = gather(items[:1])
    local = probe.new_zeros((max_len,) + tuple(probe.shape[1:]))
    if outs:
        mine_out = torch.cat(outs, 0)
        local[:mine_out.shape[0]] = mine_out
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local.contiguous(), group=group)
    full = [parts[r][:len(_shard(items, r, world)[0])] for r in range(world)]
    return torch.cat(full, 0)


def compose_x0(x: torch.Tensor, level, row_fn: Denoiser | None, col_fn: Denoiser | None, s: float = 0.6, *,
               view_weights=None, ind_fn: Denoiser | None = None, row_cond=None, col_cond=None, ind_cond=None,
               known: tuple[torch.Tensor, torch.Tensor] | None = None, batch: int = 1, col_batch: int | None = None,
               distributed: bool | None = None, group=None, stats: dict | None = None,
               row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One composed x0 estimate of the grid x [V, F, C, H, W] at ``level`` (sigma or timestep) -> [V, F, C, H, W].

    Without ``ind_fn``: x0 = r_v row + (1 - r_v) col with r_v = w_v (1 - s) (w = ``view_weights`` [V], default 1).
    ``row_weight`` [V] gives r directly (e.g. a row of :func:`composition_weights`; s and view_weights are then
    unused). With ``ind_fn``: x0 = row + col - ind (Theorem 3.1; s unused). A model whose weight is 0
    everywhere is not called. ``known`` = (mask [V, F] bool, values [V, F, C, H, W]): x0 is set to the values where
    mask is true and rows / columns that are entirely known are not evaluated. ``stats`` (a dict) counts the calls.
    """
    V, Fr = _check_grid(x, "x")
    batch = _check_batch(batch, "batch")
    col_batch = _check_batch(batch if col_batch is None else col_batch, "col_batch")
    rank, world = _dist_ctx(distributed, group)
    if ind_fn is not None:
        if view_weights is not None:
            raise ValueError("view_weights apply to the convex combination only; the exact form (ind_fn) has none")
        r = None
    elif row_weight is not None:
        r = torch.as_tensor(row_weight, dtype=torch.float64).reshape(-1).cpu()
        if r.numel() != V or not bool(((r >= 0) & (r <= 1)).all()):
            raise ValueError(f"row_weight must hold V = {V} numbers in [0, 1], got {r.tolist()}")
    else:
        r = composition_weights(torch.tensor([_check_unit("s", s)]), view_weights, None, V)[0]
    mask = None
    if known is not None:
        mask, values = known
        mask = mask.to(torch.bool).cpu()
        if tuple(mask.shape) != (V, Fr) or tuple(values.shape) != tuple(x.shape):
            raise ValueError(f"known must be (mask [V, F] = {(V, Fr)}, values {tuple(x.shape)}), got "
                             f"({tuple(mask.shape)}, {tuple(values.shape)})")
    need_rows = ind_fn is not None or bool((r > 0).any())
    need_cols = ind_fn is not None or bool((r < 1).any())
    if need_rows and row_fn is None:
        raise ValueError("this step needs the video (row) model but row_fn is None")
    if need_cols and col_fn is None:
        raise ValueError("this step needs the multi-view (column) model but col_fn is None")
    if need_rows and need_cols and (V < 2 or Fr < 2):
        raise ValueError(f"composing the video and multi-view models needs V >= 2 views and F >= 2 frames, got "
                         f"V = {V}, F = {Fr}; with one view use s = 0 (video model only), with one frame s = 1 "
                         "(multi-view model only)")
    rows = [v for v in range(V) if mask is None or not bool(mask[v].all())] if need_rows else []
    cols = [f for f in range(Fr) if mask is None or not bool(mask[:, f].all())] if need_cols else []
    zero = torch.zeros_like(x)
    R = zero.clone()
    if rows:
        R[rows] = _evaluate(row_fn, "row_fn", rows, lambda ix: x[ix], level, row_cond, V, "row_cond", batch,
                            rank, world, group, stats)
    C = zero.clone()
    if cols:
        Cc = _evaluate(col_fn, "col_fn", cols, lambda ix: x[:, ix].transpose(0, 1), level, col_cond, Fr,
                       "col_cond", col_batch, rank, world, group, stats)
        C[:, cols] = Cc.transpose(0, 1)
    if ind_fn is not None:
        elems = [v * Fr + f for v in range(V) for f in range(Fr) if mask is None or not bool(mask[v, f])]
        flat = x.reshape((V * Fr,) + tuple(x.shape[2:]))
        Ie = zero.reshape(flat.shape).clone()
        if elems:
            Ie[elems] = _evaluate(ind_fn, "ind_fn", elems, lambda ix: flat[ix], level, ind_cond, V * Fr,
                                  "ind_cond", batch * Fr, rank, world, group, stats)
        x0 = R + C - Ie.reshape(x.shape)
    else:
        rw = r.to(device=x.device, dtype=x.dtype).reshape(V, 1, 1, 1, 1)
        x0 = rw * R + (1 - rw) * C
    if mask is not None:
        m = mask.to(x.device).reshape(V, Fr, 1, 1, 1)
        x0 = torch.where(m, values.to(device=x.device, dtype=x.dtype), x0)
    return x0


# =========================================================================================== sampler
def _known_grid(V: int, Fr: int, like: torch.Tensor, cond_row, cond_row_index: int, cond_col,
                cond_col_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mask [V, F], values [V, F, C, H, W]) from the conditioning row / column, or None."""
    if cond_row is None and cond_col is None:
        return None
    item = tuple(like.shape[2:])
    mask = torch.zeros(V, Fr, dtype=torch.bool)
    values = torch.zeros_like(like)
    if cond_row is not None:
        if not isinstance(cond_row, torch.Tensor) or tuple(cond_row.shape) != (Fr,) + item:
            got = tuple(cond_row.shape) if isinstance(cond_row, torch.Tensor) else type(cond_row).__name__
            raise ValueError(f"cond_row (one view over all frames) must have shape {(Fr,) + item}, got {got}")
        if not -V <= int(cond_row_index) < V:
            raise ValueError(f"cond_row_index {cond_row_index} is outside the {V} views")
        vi = int(cond_row_index) % V
        mask[vi] = True
        values[vi] = cond_row.to(like)
    if cond_col is not None:
        if not isinstance(cond_col, torch.Tensor) or tuple(cond_col.shape) != (V,) + item:
            got = tuple(cond_col.shape) if isinstance(cond_col, torch.Tensor) else type(cond_col).__name__
            raise ValueError(f"cond_col (one frame from all views) must have shape {(V,) + item}, got {got}")
        if not -Fr <= int(cond_col_index) < Fr:
            raise ValueError(f"cond_col_index {cond_col_index} is outside the {Fr} frames")
        fi = int(cond_col_index) % Fr
        if cond_row is not None:
            a, b = values[vi, fi], cond_col[vi].to(like)
            if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * (1 + float(a.abs().max()))):
                raise ValueError(f"cond_row and cond_col disagree where they cross (view {vi}, frame {fi}): "
                                 f"max difference {float((a - b).abs().max()):.3g}; encode the same image for both")
        mask[:, fi] = True
        values[:, fi] = cond_col.to(like)
    if not bool(torch.isfinite(values).all()):
        raise ValueError("cond_row / cond_col contain NaN or inf")
    return mask, values


def _apply_x0_hook(hook, x0: torch.Tensor, i: int, steps: int, level, known, rank: int, world: int,
                   group) -> torch.Tensor:
    """hook(i, steps, level, x0 flattened view-major [V*F, C, H, W]) -> grid [V, F, C, H, W], known entries
    clamped; with world > 1 rank 0 runs the hook and broadcasts."""
    V, Fr = int(x0.shape[0]), int(x0.shape[1])
    if world > 1 and hasattr(hook, "selects") and not hook.selects(i, steps):
        return x0
    flat = x0.reshape((V * Fr,) + tuple(x0.shape[2:]))
    if world == 1 or rank == 0:
        out = hook(i, steps, level, flat)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(flat.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"x0_hook must return a tensor shaped like the flattened grid {tuple(flat.shape)} "
                             f"(view-major V*F items), got {got}")
        out = out.to(device=x0.device, dtype=x0.dtype)
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"x0_hook returned NaN or inf at step {i}")
    else:
        out = torch.empty_like(flat)
    if world > 1:
        out = out.contiguous()
        torch.distributed.broadcast(out, src=torch.distributed.get_global_rank(group, 0) if group is not None
                                    else 0, group=group)
    out = out.reshape(x0.shape)
    if known is not None:
        m = known[0].to(x0.device).reshape(V, Fr, 1, 1, 1)
        out = torch.where(m, known[1].to(device=x0.device, dtype=x0.dtype), out)
    return out


def _ddim_schedule(steps: int, cfg: dict | None) -> tuple[torch.Tensor, list[int], list[float]]:
    """(alphas_cumprod [T] float64, timesteps [n], alpha of each step's target [n]) - diffusers' DDIM convention:
    previous timestep = t - T // n, the final one ``set_alpha_to_one`` (1) or a_0."""
    if cfg is None:
        from .cogvideo_load import COGVIDEOX_5B_SCHEDULER_CONFIG as cfg  # noqa: N811 - default CogVideoX schedule
    cfg = dict(cfg)
    cfg.setdefault("timestep_spacing", "trailing")
    acp = alphas_cumprod(cfg).to(torch.float64)
    ts = teacher_timesteps(steps, cfg)
    stride = int(cfg.get("num_train_timesteps", 1000)) // int(steps)
    final = 1.0 if cfg.get("set_alpha_to_one", True) else float(acp[0])
    prev = [float(acp[t - stride]) if t - stride >= 0 else final for t in ts]
    return acp, ts, prev


def compose_sample(noise: torch.Tensor, row_fn: Denoiser | None, col_fn: Denoiser | None, *,
                   sampler: str = "euler", steps: int = 25,
                   schedule: str = "constant", s0: float = 0.6, s1: float | None = None, k: float = 15.0,
                   s_min: float = 0.0, s_max: float = 1.0, view_weights=None, row_only_from: float | None = None,
                   ind_fn: Denoiser | None = None,
                   sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                   scheduler_config: dict | None = None,
                   cond_row: torch.Tensor | None = None, cond_row_index: int = 0,
                   cond_col: torch.Tensor | None = None, cond_col_index: int = 0,
                   row_cond=None, col_cond=None, ind_cond=None,
                   batch: int = 1, col_batch: int | None = None,
                   distributed: bool | None = None, group=None,
                   progress: Progress | None = None,
                   x0_hook: Callable | None = None) -> ComposeResult:
    """Sample the V x F grid by composing a video model (rows) and a multi-view model (columns).

    noise [V, F, C, H, W]: standard normal noise (the grid's shape, dtype and device; EDM starts at sigma_max * noise,
    DDIM at noise). sampler: "euler" / "heun" (EDM over :func:`sigmas_karras`, x_{i+1} = x + (sigma_{i+1} - sigma_i)
    (x - x0) / sigma_i; Heun's 2nd-order correction except into sigma = 0) or "ddim" (eta 0 over
    ``leap.alphas_cumprod(scheduler_config)``, default the CogVideoX-5B config with trailing timesteps; the x0 of a
    step gives eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) and x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, with
    diffusers' previous timestep t - 1000 // steps, so s = 0 with a CogVideoX row model follows
    ``leap.teacher_sample``'s DDIM arithmetic).
    Multi-view weight per step: ``schedule_values(schedule, steps, s0=, s1=, k=, s_min=, s_max=)`` (default constant
    0.6, the release's default), per-view weights and ``row_only_from`` as :func:`composition_weights`; with
    ``ind_fn`` the exact Theorem 3.1 form row + col - ind is used instead. Conditioning ``cond_row`` [F, C, H, W]
    (view ``cond_row_index``) / ``cond_col`` [V, C, H, W] (frame ``cond_col_index``) is clamped every step (module
    docstring); ``row_cond`` / ``col_cond`` / ``ind_cond`` are handed to the denoisers. ``progress`` (a
    :class:`~vscene_engine.runtime.Progress`): ``update(i, n, stage="compose")`` after step i (1-based),
    ``check_interrupt()`` before each step (raising aborts). See the module docstring for batching and torch.distributed sharding.

    x0_hook(step, n_steps, level, x0_flat) -> x0_flat' (optional, e.g. ``aware3d.make_3d_aware_hook``): called once
    per step (0-based index; level = the step's sigma or timestep) on the composed x0 grid flattened view-major,
    ``x0_flat [V * F, C, H, W]`` with item v * F + f = view v, frame f (the ComfyUI latent-batch order, so the hook's
    cameras / decoded frames follow it), before the sampler update, which then uses the returned x0; known
    (conditioning) entries are clamped again afterwards. Heun: applied to the step's first x0 estimate only.
    World size R > 1: only rank 0 runs the hook and its result is broadcast (a hook with ``selects(step, n_steps)``
    skips the broadcast on the steps it leaves alone). None: unchanged sampler.
    """
    t_start = time.perf_counter()
    V, Fr = _check_grid(noise, "noise")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = _check_batch(steps, "steps")
    batch = _check_batch(batch, "batch")
    col_batch = _check_batch(batch if col_batch is None else col_batch, "col_batch")
    s = schedule_values(schedule, steps, s0=s0, s1=s1, k=k, s_min=s_min, s_max=s_max)
    if ind_fn is not None:
        if view_weights is not None or row_only_from is not None:
            raise ValueError("view_weights / row_only_from apply to the convex combination only; the exact form "
                             "(ind_fn) has neither")
        if row_fn is None or col_fn is None:
            raise ValueError("the exact form (ind_fn) needs row_fn and col_fn too")
        rw = torch.zeros(steps, V, dtype=torch.float64)
    else:
        rw = composition_weights(s, view_weights, row_only_from, V)
    if ind_fn is None:
        both = bool(((rw > 0).any(dim=1) & (rw < 1).any(dim=1)).any())
        if both and (V < 2 or Fr < 2):
            raise ValueError(f"composing the video and multi-view models needs V >= 2 views and F >= 2 frames, got "
                             f"V = {V}, F = {Fr}; with one view use s0 = 0 (video model only), with one frame "
                             "s0 = 1 (multi-view model only)")
    elif V < 2 or Fr < 2:
        raise ValueError(f"the exact form (ind_fn) composes rows and columns and needs V >= 2 and F >= 2, got "
                         f"V = {V}, F = {Fr}")
    known = _known_grid(V, Fr, noise, cond_row, cond_row_index, cond_col, cond_col_index)
    rank, world = _dist_ctx(distributed, group)
    if world > 1:
        _check_same_noise(noise, rank, world, group)
    progress = as_progress(progress)
    stats: dict = {}

    def x0_at(x, level, i):
        return compose_x0(x, level, row_fn, col_fn, ind_fn=ind_fn, row_cond=row_cond, col_cond=col_cond,
                          ind_cond=ind_cond, known=known, batch=batch, col_batch=col_batch,
                          distributed=False if world == 1 else True, group=group, stats=stats,
                          row_weight=None if ind_fn is not None else rw[i])

    def clamp(x, a, b):
        # known entries follow the forward process of the initial noise: a * value + b * noise
        if known is None:
            return x
        m = known[0].to(x.device).reshape(V, Fr, 1, 1, 1)
        return torch.where(m, a * known[1] + b * noise, x)

    check_interrupt = progress.check_interrupt

    def hooked(x0, i, level):
        if x0_hook is None:
            return x0
        return _apply_x0_hook(x0_hook, x0, i, steps, level, known, rank, world, group)

    with torch.no_grad():
        if sampler == "ddim":
            acp, ts, prev = _ddim_schedule(steps, scheduler_config)
            levels: list = list(ts)
            x = clamp(noise.clone(), float(acp[ts[0]]) ** 0.5, (1 - float(acp[ts[0]])) ** 0.5)
            for i, t in enumerate(ts):
                check_interrupt()
                a_t, a_p = float(acp[t]), prev[i]
                x0 = hooked(x0_at(x, int(t), i), i, int(t))
                ca = ((1 - a_p) / (1 - a_t)) ** 0.5
                x = ca * x + (a_p ** 0.5 - a_t ** 0.5 * ca) * x0
                x = clamp(x, a_p ** 0.5, (1 - a_p) ** 0.5)
                progress.update(i + 1, steps, stage="compose")
        else:
            sig = sigmas_karras(steps, sigma_min, sigma_max, rho)
            levels = [float(v) for v in sig]
            x = clamp(noise * levels[0], 1.0, levels[0])
            for i in range(steps):
                check_interrupt()
                s_i, s_n = levels[i], levels[i + 1]
                x0 = hooked(x0_at(x, s_i, i), i, s_i)
                d = (x - x0) / s_i
                x_next = x + (s_n - s_i) * d
                if sampler == "heun" and s_n > 0:
                    x_next = clamp(x_next, 1.0, s_n)
                    d2 = (x_next - x0_at(x_next, s_n, i)) / s_n
                    x_next = x + (s_n - s_i) * (d + d2) / 2
                x = clamp(x_next, 1.0, s_n)
                progress.update(i + 1, steps, stage="compose")
    if known is not None:
        x = torch.where(known[0].to(x.device).reshape(V, Fr, 1, 1, 1), known[1], x)
    s_out = torch.full_like(s, float("nan")) if ind_fn is not None else s.masked_fill(
        _row_only_steps(steps, row_only_from), 0.0)
    info = {"sampler": sampler, "steps": steps, "row_calls": stats.get("row_fn", 0),
            "col_calls": stats.get("col_fn", 0), "ind_calls": stats.get("ind_fn", 0), "world_size": world,
            "rank": rank, "exact_form": ind_fn is not None, "seconds": time.perf_counter() - t_start}
    return ComposeResult(samples=x, s=s_out, row_weights=rw, levels=levels, info=info)


# ============================================================================================ grid helpers
def orbit_cameras(views: int, elevation_deg: float = 0.0, fov_deg: float = 33.8, radius: float = 2.0,
                  width: int = 576, height: int = 576):
    """Cameras of an SV3D-style orbit around the origin: view i at azimuth i * 360 / (views - 1) degrees (as core
    ComfyUI's SV3D_Conditioning numbers them, so the first and last views coincide), fixed elevation, looking at
    the origin, world -y up. OpenCV camera-to-world, +x right, +y down, +z forward; K from the horizontal FOV.
    Returns ``cameras.Cameras`` with ``views`` cameras."""
    import math as _m

    from .cameras import Cameras, look_at

    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    step = 360.0 / max(views - 1, 1)
    az = torch.tensor([i * step for i in range(views)], dtype=torch.float64) * _m.pi / 180
    el = _m.radians(float(elevation_deg))
    eye = torch.stack([radius * _m.cos(el) * torch.sin(az), torch.full_like(az, -radius * _m.sin(el)),
                       -radius * _m.cos(el) * torch.cos(az)], -1).float()
    c2w = look_at(eye, torch.zeros_like(eye))
    f = 0.5 * width / _m.tan(_m.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Cameras(c2w=c2w, K=K.expand(views, 3, 3).clone(), width=int(width), height=int(height),
                   near=max(0.01, radius - 1.5), far=radius + 1.5, names=[f"view_{i:02d}" for i in range(views)])


def grid_select(images: torch.Tensor, views: int, frames: int, axis: str, index: int) -> torch.Tensor:
    """From a view-major grid batch [V*F, ...] (item v*F + f) take the V views of frame ``index`` (axis "frame")
    or the F frames of view ``index`` (axis "view")."""
    V, F = int(views), int(frames)
    if images.shape[0] != V * F:
        raise ValueError(f"the batch has {images.shape[0]} images but views x frames = {V} x {F} = {V * F}")
    g = images.reshape(V, F, *images.shape[1:])
    if axis == "frame":
        if not 0 <= index < F:
            raise ValueError(f"frame index {index} out of range 0..{F - 1}")
        return g[:, index]
    if axis == "view":
        if not 0 <= index < V:
            raise ValueError(f"view index {index} out of range 0..{V - 1}")
        return g[index]
    raise ValueError(f"axis must be 'frame' or 'view', got {axis!r}")
