"""Diffusion² score composition: sample a V x F grid of latents with a video model and a multi-view model.

Entry point: :func:`compose_sample` (thin: builds the pieces below and runs one sampler). In the k-diffusion shape:

- the denoiser: :class:`ComposedDenoiser` ``model(x [V, F, C, H, W], level, step) -> x0``: the two models (plus an
  optional single-image model), the video weight of each step and view, the known (conditioning) entries and the
  optional 3D-aware x0 hook. A host guider wraps the same object (nodes/guider.py); :func:`compose_x0` is one call.
- the samplers: :func:`sample_euler`, :func:`sample_heun` (EDM sigmas, :func:`sigmas_karras`) and
  :func:`sample_ddim` (:func:`ddim_steps` of a ``schedule.NoiseSchedule``), each ``(model, x, levels, callback)``.
- the configuration: :class:`WeightSchedule` (s(i) by :func:`schedule_values`, per-view weights
  :func:`orbit_view_weights`, :func:`composition_weights`), :class:`KarrasSigmas`, :class:`GridConditioning`,
  :class:`Batching`.

The grid (Diffusion², fudan-zvg/diffusion-square, ``main.py::parallel_denoising_ddp``)::

    x [V, F, C, H, W]      V views ("rows" are videos: one view over F frames)
                           F frames ("columns" are multi-view sets: one frame seen from V views)

    row_fn(x_rows [B, F, C, H, W], level, cond) -> x0 [B, F, C, H, W]   the video model on B views' rows
    col_fn(x_cols [B, V, C, H, W], level, cond) -> x0 [B, V, C, H, W]   the multi-view model on B frames' columns
    ind_fn(x_imgs [B, C, H, W], level, cond)    -> x0 [B, C, H, W]      optional: a single-image model

Denoisers are in x0-prediction form. ``level`` is a Python float sigma for the EDM samplers ("euler", "heun": the
model input is x = x0 + sigma * eps) and a Python int timestep for "ddim" (x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
over the ``schedule.NoiseSchedule``'s alphas_cumprod). ``cond`` is the per-row / per-column / per-image conditioning the
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

from ..video.schedule import NoiseSchedule
from ..core.runtime import Progress, as_progress

__all__ = ["ComposeResult", "SCHEDULE_KINDS", "SAMPLERS", "schedule_values", "sigmas_karras", "orbit_view_weights",
           "composition_weights", "step_index", "WeightSchedule", "KarrasSigmas", "Batching", "GridConditioning",
           "KnownGrid", "ComposedDenoiser", "compose_x0", "to_d", "sample_euler", "sample_heun", "DDIMSteps",
           "ddim_steps", "sample_ddim", "compose_sample", "orbit_cameras", "grid_select"]

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


# =========================================================================================== configuration
@dataclass(frozen=True)
class WeightSchedule:
    """How the two models are mixed at step i of n: the multi-view weight s(i) (:func:`schedule_values` of ``kind``
    with s0 / s1 / k / s_min / s_max; default constant 0.6, the release's) and the per-view video weights w_v
    (``view_weights`` [V] in [0, 1], None = 1) and ``row_only_from`` of :func:`composition_weights`."""

    kind: str = "constant"
    s0: float = 0.6
    s1: float | None = None
    k: float = 15.0
    s_min: float = 0.0
    s_max: float = 1.0
    view_weights: Any = None
    row_only_from: float | None = None

    def values(self, n: int) -> torch.Tensor:
        """s(i) for each of the n steps -> float64 [n] (validated: clear ValueError)."""
        return schedule_values(self.kind, n, s0=self.s0, s1=self.s1, k=self.k, s_min=self.s_min, s_max=self.s_max)

    def row_weights(self, n: int, views: int) -> torch.Tensor:
        """Video-model weight r per step and view -> float64 [n, V] (the multi-view weight is 1 - r)."""
        return composition_weights(self.values(n), self.view_weights, self.row_only_from, views)

    def reported(self, n: int) -> torch.Tensor:
        """s per step as used: 0 on the row-only steps -> float64 [n]."""
        return self.values(n).masked_fill(_row_only_steps(n, self.row_only_from), 0.0)


@dataclass(frozen=True)
class KarrasSigmas:
    """The EDM noise levels of the "euler" / "heun" samplers (:func:`sigmas_karras`; SVD / SV3D: sigma_max 700)."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def sigmas(self, n: int) -> torch.Tensor:
        """float64 [n + 1], sigma_max down to sigma_min, then 0."""
        return sigmas_karras(n, self.sigma_min, self.sigma_max, self.rho)


@dataclass(frozen=True)
class Batching:
    """Memory and work split of the denoiser calls: ``batch`` rows (views) per call, ``col_batch`` columns (frames)
    per call (None = ``batch``), single images ``batch * F`` per call; ``distributed`` None = shard over
    torch.distributed when it is initialised with world size > 1, False = never, True = required; ``group`` its
    process group. The result does not depend on any of these."""

    batch: int = 1
    col_batch: int | None = None
    distributed: bool | None = None
    group: Any = None

    def sizes(self) -> tuple[int, int]:
        """(row batch, column batch), validated."""
        b = _check_batch(self.batch, "batch")
        return b, _check_batch(b if self.col_batch is None else self.col_batch, "col_batch")


@dataclass(frozen=True)
class GridConditioning:
    """Known images of the grid, replacement ("inpainting") style (module docstring): ``cond_row`` [F, C, H, W] =
    view ``cond_row_index`` over all frames, ``cond_col`` [V, C, H, W] = frame ``cond_col_index`` from all views."""

    cond_row: torch.Tensor | None = None
    cond_row_index: int = 0
    cond_col: torch.Tensor | None = None
    cond_col_index: int = 0

    def known(self, noise: torch.Tensor) -> "KnownGrid | None":
        """The known entries of the grid shaped like ``noise`` [V, F, C, H, W] (None without conditioning)."""
        V, Fr = int(noise.shape[0]), int(noise.shape[1])
        mv = _known_grid(V, Fr, noise, self.cond_row, self.cond_row_index, self.cond_col, self.cond_col_index)
        return None if mv is None else KnownGrid(mv[0], mv[1], noise)


@dataclass
class KnownGrid:
    """mask [V, F] bool, values [V, F, C, H, W] (the known clean images), noise [V, F, C, H, W] (the sampler's
    initial standard-normal noise, None where only x0 is clamped)."""

    mask: torch.Tensor
    values: torch.Tensor
    noise: torch.Tensor | None = None

    def _m(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.device).reshape(int(self.mask.shape[0]), int(self.mask.shape[1]), 1, 1, 1)

    def renoise(self, x: torch.Tensor, alpha, beta) -> torch.Tensor:
        """x with the known entries at the forward-process value alpha * value + beta * noise."""
        return torch.where(self._m(x), alpha * self.values + beta * self.noise, x)

    def clamp_x0(self, x0: torch.Tensor) -> torch.Tensor:
        """x0 with the known entries set to their values."""
        return torch.where(self._m(x0), self.values.to(device=x0.device, dtype=x0.dtype), x0)


# =========================================================================================== the composed denoiser
class ComposedDenoiser:
    """The Diffusion² denoiser of a V x F grid: ``model(x [V, F, C, H, W], level, step) -> x0 [V, F, C, H, W]``.

    Holds the row (video), column (multi-view) and optional single-image denoisers with their per-item conditioning
    (module docstring), the video weight of each step and view ``row_weights`` [n, V] (:meth:`WeightSchedule.
    row_weights`; ignored in the exact form, ``ind_fn`` given: x0 = row + col - ind), the known entries
    (:class:`KnownGrid`: x0 clamped to them; samplers re-noise x with :meth:`renoise_known`), the optional 3D-aware
    hook and the work split (:class:`Batching`). ``step`` is the 0-based step whose weights apply; the hook runs on
    the FIRST call of each step (a second-order sampler's correction is left alone) and must be reset with
    :meth:`reset` before another sampling run. ``progress.check_interrupt()`` (a
    :class:`~vscene_engine.core.runtime.Progress`) runs before every call; raising aborts. ``stats`` counts the calls of each model ("row_fn", "col_fn", "ind_fn").
    """

    def __init__(self, row_fn: Denoiser | None, col_fn: Denoiser | None, row_weights: torch.Tensor, *,
                 ind_fn: Denoiser | None = None, row_cond=None, col_cond=None, ind_cond=None,
                 known: KnownGrid | None = None, x0_hook: Callable | None = None,
                 batching: Batching = Batching(), progress: Progress | None = None):
        self.row_fn, self.col_fn, self.ind_fn = row_fn, col_fn, ind_fn
        self.row_cond, self.col_cond, self.ind_cond = row_cond, col_cond, ind_cond
        self.row_weights = torch.as_tensor(row_weights, dtype=torch.float64).cpu()
        if self.row_weights.ndim != 2 or not bool(((self.row_weights >= 0) & (self.row_weights <= 1)).all()):
            raise ValueError(f"row_weights must be [n steps, V views] numbers in [0, 1], got shape "
                             f"{tuple(self.row_weights.shape)}")
        self.known, self.x0_hook, self.progress = known, x0_hook, as_progress(progress)
        self.batch, self.col_batch = batching.sizes()
        self.group = batching.group
        self.rank, self.world = _dist_ctx(batching.distributed, batching.group)
        self.stats: dict = {}
        self._hooked: set = set()

    @property
    def n_steps(self) -> int:
        return int(self.row_weights.shape[0])

    @property
    def exact(self) -> bool:
        return self.ind_fn is not None

    def reset(self) -> None:
        """Forget which steps the hook has seen and the call counts (a new sampling run)."""
        self._hooked, self.stats = set(), {}

    def __call__(self, x: torch.Tensor, level, step: int) -> torch.Tensor:
        self.progress.check_interrupt()
        x0 = self.x0(x, level, None if self.exact else self.row_weights[min(int(step), self.n_steps - 1)])
        if self.x0_hook is not None and int(step) not in self._hooked:
            self._hooked.add(int(step))
            x0 = _apply_x0_hook(self.x0_hook, x0, int(step), self.n_steps, level, self.known, self.rank,
                                self.world, self.group)
        return x0

    def renoise_known(self, x: torch.Tensor, alpha, beta) -> torch.Tensor:
        """x with the known entries at alpha * value + beta * noise (x itself without conditioning)."""
        return x if self.known is None else self.known.renoise(x, alpha, beta)

    def x0(self, x: torch.Tensor, level, r: torch.Tensor | None) -> torch.Tensor:
        """One composed x0 of the grid x [V, F, C, H, W]: r_v row + (1 - r_v) col with r [V] the video weights, or
        row + col - ind (r None, the exact form). A model whose weight is 0 everywhere is not called; rows /
        columns / images that are entirely known are not evaluated."""
        V, Fr = _check_grid(x, "x")
        mask = None if self.known is None else self.known.mask
        need_rows = r is None or bool((r > 0).any())
        need_cols = r is None or bool((r < 1).any())
        if need_rows and self.row_fn is None:
            raise ValueError("this step needs the video (row) model but row_fn is None")
        if need_cols and self.col_fn is None:
            raise ValueError("this step needs the multi-view (column) model but col_fn is None")
        if need_rows and need_cols and (V < 2 or Fr < 2):
            raise ValueError(f"composing the video and multi-view models needs V >= 2 views and F >= 2 frames, got "
                             f"V = {V}, F = {Fr}; with one view use s = 0 (video model only), with one frame s = 1 "
                             "(multi-view model only)")
        rows = [v for v in range(V) if mask is None or not bool(mask[v].all())] if need_rows else []
        cols = [f for f in range(Fr) if mask is None or not bool(mask[:, f].all())] if need_cols else []
        dist = (self.rank, self.world, self.group, self.stats)
        zero = torch.zeros_like(x)
        R = zero.clone()
        if rows:
            R[rows] = _evaluate(self.row_fn, "row_fn", rows, lambda ix: x[ix], level, self.row_cond, V, "row_cond",
                                self.batch, *dist)
        C = zero.clone()
        if cols:
            Cc = _evaluate(self.col_fn, "col_fn", cols, lambda ix: x[:, ix].transpose(0, 1), level, self.col_cond,
                           Fr, "col_cond", self.col_batch, *dist)
            C[:, cols] = Cc.transpose(0, 1)
        if r is None:
            elems = [v * Fr + f for v in range(V) for f in range(Fr) if mask is None or not bool(mask[v, f])]
            flat = x.reshape((V * Fr,) + tuple(x.shape[2:]))
            Ie = zero.reshape(flat.shape).clone()
            if elems:
                Ie[elems] = _evaluate(self.ind_fn, "ind_fn", elems, lambda ix: flat[ix], level, self.ind_cond,
                                      V * Fr, "ind_cond", self.batch * Fr, *dist)
            x0 = R + C - Ie.reshape(x.shape)
        else:
            rw = r.to(device=x.device, dtype=x.dtype).reshape(V, 1, 1, 1, 1)
            x0 = rw * R + (1 - rw) * C
        return x0 if self.known is None else self.known.clamp_x0(x0)


def compose_x0(x: torch.Tensor, level, row_fn: Denoiser | None, col_fn: Denoiser | None, s: float = 0.6, *,
               view_weights=None, ind_fn: Denoiser | None = None, row_cond=None, col_cond=None, ind_cond=None,
               known: tuple[torch.Tensor, torch.Tensor] | None = None, batching: Batching = Batching(),
               row_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One composed x0 estimate of the grid x [V, F, C, H, W] at ``level`` (sigma or timestep) -> [V, F, C, H, W]
    (a one-step :class:`ComposedDenoiser`).

    Without ``ind_fn``: x0 = r_v row + (1 - r_v) col with r_v = w_v (1 - s) (w = ``view_weights`` [V], default 1).
    ``row_weight`` [V] gives r directly (s and view_weights are then unused). With ``ind_fn``: x0 = row + col - ind
    (Theorem 3.1; s unused). ``known`` = (mask [V, F] bool, values [V, F, C, H, W]): x0 is set to the values where
    mask is true and rows / columns that are entirely known are not evaluated.
    """
    V, Fr = _check_grid(x, "x")
    if ind_fn is not None:
        if view_weights is not None:
            raise ValueError("view_weights apply to the convex combination only; the exact form (ind_fn) has none")
        r = torch.zeros(1, V, dtype=torch.float64)
    elif row_weight is not None:
        r = torch.as_tensor(row_weight, dtype=torch.float64).reshape(1, -1).cpu()
        if r.numel() != V or not bool(((r >= 0) & (r <= 1)).all()):
            raise ValueError(f"row_weight must hold V = {V} numbers in [0, 1], got {r.reshape(-1).tolist()}")
    else:
        r = WeightSchedule(s0=_check_unit("s", s), view_weights=view_weights).row_weights(1, V)
    grid = None
    if known is not None:
        mask, values = known
        mask = mask.to(torch.bool).cpu()
        if tuple(mask.shape) != (V, Fr) or tuple(values.shape) != tuple(x.shape):
            raise ValueError(f"known must be (mask [V, F] = {(V, Fr)}, values {tuple(x.shape)}), got "
                             f"({tuple(mask.shape)}, {tuple(values.shape)})")
        grid = KnownGrid(mask, values)
    model = ComposedDenoiser(row_fn, col_fn, r, ind_fn=ind_fn, row_cond=row_cond, col_cond=col_cond,
                             ind_cond=ind_cond, known=grid, batching=batching)
    return model(x, level, 0)


# =========================================================================================== samplers
def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The EDM probability-flow ODE's derivative dx/dsigma = (x - x0) / sigma."""
    return (x - denoised) / sigma


def _notify(callback, x, i, level, denoised) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": level, "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x: torch.Tensor, sigmas, callback: Callable | None = None) -> torch.Tensor:
    """Euler's method on the EDM probability-flow ODE (Karras et al. 2022, Algorithm 1 without the 2nd-order step).

    model(x, sigma, step) -> x0 with ``renoise_known(x, alpha, beta)`` (:class:`ComposedDenoiser`); x [V, F, C, H, W]
    starts at sigmas[0] * noise; sigmas: the n + 1 levels (last 0); callback({"x", "i", "sigma", "denoised"}) after
    each step. Returns x at sigmas[-1]."""
    sig = [float(v) for v in sigmas]
    x = model.renoise_known(x, 1.0, sig[0])
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i], i)
        x = model.renoise_known(x + (sig[i + 1] - sig[i]) * to_d(x, sig[i], denoised), 1.0, sig[i + 1])
        _notify(callback, x, i, sig[i], denoised)
    return x


@torch.no_grad()
def sample_heun(model, x: torch.Tensor, sigmas, callback: Callable | None = None) -> torch.Tensor:
    """Heun's 2nd-order method on the EDM probability-flow ODE (Karras et al. 2022, Algorithm 1, no churn): Euler
    into sigma_{i+1}, then the mean of both slopes (Euler into sigma = 0). Same arguments as :func:`sample_euler`;
    the correction evaluates the model with the step's own weights (step i)."""
    sig = [float(v) for v in sigmas]
    x = model.renoise_known(x, 1.0, sig[0])
    for i in range(len(sig) - 1):
        s_i, s_n = sig[i], sig[i + 1]
        denoised = model(x, s_i, i)
        d = to_d(x, s_i, denoised)
        x_next = x + (s_n - s_i) * d
        if s_n > 0:
            x_next = model.renoise_known(x_next, 1.0, s_n)
            d2 = to_d(x_next, s_n, model(x_next, s_n, i))
            x_next = x + (s_n - s_i) * (d + d2) / 2
        x = model.renoise_known(x_next, 1.0, s_n)
        _notify(callback, x, i, s_i, denoised)
    return x


@dataclass(frozen=True)
class DDIMSteps:
    """The levels of a DDIM run: ``timesteps`` [n] (descending ints), ``alpha`` [n] = a_t = ᾱ[t] and ``alpha_prev``
    [n] = the ᾱ each step goes to (diffusers: ᾱ[t - N // n], past the end 1 or ᾱ[0]); Python floats."""

    timesteps: list
    alpha: list
    alpha_prev: list


def ddim_steps(steps: int, schedule: NoiseSchedule | None = None) -> DDIMSteps:
    """The DDIM levels of ``steps`` steps of a :class:`schedule.NoiseSchedule` (None: CogVideoX-5B's, trailing
    timesteps) - the only schedule math of this module."""
    sched = schedule if schedule is not None else _cogvideox_schedule()
    ts = sched.timesteps(steps)
    return DDIMSteps(timesteps=[int(t) for t in ts], alpha=[float(sched.alpha_bar(t)) for t in ts],
                     alpha_prev=[float(sched.prev_alpha_bar(t, steps)) for t in ts])


def _cogvideox_schedule() -> NoiseSchedule:
    from ..video.loading import COGVIDEOX_5B_SCHEDULER_CONFIG
    return NoiseSchedule.from_config(COGVIDEOX_5B_SCHEDULER_CONFIG)


@torch.no_grad()
def sample_ddim(model, x: torch.Tensor, levels: DDIMSteps, callback: Callable | None = None) -> torch.Tensor:
    """DDIM with eta = 0 (Song et al. 2021, eq. 12) from the model's x0: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t),
    x_prev = sqrt(a_p) x0 + sqrt(1 - a_p) eps = c x_t + (sqrt(a_p) - sqrt(a_t) c) x0, c = sqrt((1 - a_p) / (1 - a_t))
    (diffusers' ``step``). model as :func:`sample_euler` (called with the int timestep); x [V, F, C, H, W] starts
    at the noise; levels: :func:`ddim_steps`. Returns x at the last alpha_prev."""
    a0 = levels.alpha[0]
    x = model.renoise_known(x, a0 ** 0.5, (1 - a0) ** 0.5)
    for i, t in enumerate(levels.timesteps):
        a_t, a_p = levels.alpha[i], levels.alpha_prev[i]
        denoised = model(x, int(t), i)
        c = ((1 - a_p) / (1 - a_t)) ** 0.5
        x = model.renoise_known(c * x + (a_p ** 0.5 - a_t ** 0.5 * c) * denoised, a_p ** 0.5, (1 - a_p) ** 0.5)
        _notify(callback, x, i, int(t), denoised)
    return x


_SAMPLE_FNS = {"euler": sample_euler, "heun": sample_heun, "ddim": sample_ddim}


# =========================================================================================== entry point
def compose_sample(noise: torch.Tensor, row_fn: Denoiser | None, col_fn: Denoiser | None, *,
                   ind_fn: Denoiser | None = None, sampler: str = "euler", steps: int = 25,
                   weights: WeightSchedule = WeightSchedule(), sigmas: KarrasSigmas = KarrasSigmas(),
                   schedule: NoiseSchedule | None = None, conditioning: GridConditioning | None = None,
                   row_cond=None, col_cond=None, ind_cond=None, batching: Batching = Batching(),
                   progress: Progress | None = None, x0_hook: Callable | None = None) -> ComposeResult:
    """Sample the V x F grid by composing a video model (rows) and a multi-view model (columns).

    noise [V, F, C, H, W]: standard normal noise (the grid's shape, dtype and device; EDM starts at sigma_max * noise,
    DDIM at noise). sampler: "euler" / "heun" (:func:`sample_euler` / :func:`sample_heun` over ``sigmas``'
    :func:`sigmas_karras` levels) or "ddim" (:func:`sample_ddim` over ``schedule``, a :class:`schedule.NoiseSchedule`,
    default the CogVideoX-5B one with trailing timesteps, so s = 0 with a CogVideoX row model follows
    ``leap.teacher_sample``'s DDIM arithmetic). ``weights``: the mixing of the two models per step and view
    (:class:`WeightSchedule`, default constant s = 0.6 as released); with ``ind_fn`` the exact Theorem 3.1 form
    row + col - ind is used instead (``weights`` then must not carry view_weights / row_only_from).
    ``conditioning``: known images (:class:`GridConditioning`), clamped every step; ``row_cond`` / ``col_cond`` /
    ``ind_cond`` are handed to the denoisers (module docstring); ``batching``: :class:`Batching`.
    ``progress`` (a :class:`~vscene_engine.core.runtime.Progress`): ``update(i, n, stage="compose")`` after step i
    (1-based), ``check_interrupt()`` before each model evaluation (raising aborts).

    x0_hook(step, n_steps, level, x0_flat) -> x0_flat' (optional, e.g. ``aware3d.make_3d_aware_hook``): called once
    per step (0-based index; level = the step's sigma or timestep) on the composed x0 grid flattened view-major,
    ``x0_flat [V * F, C, H, W]`` with item v * F + f = view v, frame f (the ComfyUI latent-batch order, so the hook's
    cameras / decoded frames follow it), before the sampler update, which then uses the returned x0; known
    (conditioning) entries are clamped again afterwards. Heun: applied to the step's first x0 estimate only.
    World size R > 1: only rank 0 runs the hook and its result is broadcast (a hook with ``selects(step, n_steps)``
    skips the broadcast on the steps it leaves alone). None: unchanged sampler.
    """
    t_start = time.perf_counter()
    # 1. check the inputs
    V, Fr = _check_grid(noise, "noise")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    steps = _check_batch(steps, "steps")
    batching.sizes()
    # 2. the weights of each step and view
    s = weights.values(steps)
    if ind_fn is not None:
        if weights.view_weights is not None or weights.row_only_from is not None:
            raise ValueError("view_weights / row_only_from apply to the convex combination only; the exact form "
                             "(ind_fn) has neither")
        if row_fn is None or col_fn is None:
            raise ValueError("the exact form (ind_fn) needs row_fn and col_fn too")
        rw = torch.zeros(steps, V, dtype=torch.float64)
    else:
        rw = weights.row_weights(steps, V)
    _check_composable(rw, ind_fn is not None, V, Fr)
    # 3. the composed denoiser
    known = None if conditioning is None else conditioning.known(noise)
    model = ComposedDenoiser(row_fn, col_fn, rw, ind_fn=ind_fn, row_cond=row_cond, col_cond=col_cond,
                             ind_cond=ind_cond, known=known, x0_hook=x0_hook, progress=progress,
                             batching=batching)
    if model.world > 1:
        _check_same_noise(noise, model.rank, model.world, batching.group)
    # 4. the levels and the sampling loop
    if sampler == "ddim":
        lv = ddim_steps(steps, schedule)
        levels: list = list(lv.timesteps)
        x = noise.clone()
    else:
        lv = sigmas.sigmas(steps)
        levels = [float(v) for v in lv]
        x = noise * levels[0]
    progress = as_progress(progress)
    x = _SAMPLE_FNS[sampler](model, x, lv, callback=lambda d: progress.update(d["i"] + 1, steps, stage="compose"))
    # 5. the known entries exactly, and the report
    if known is not None:
        x = known.clamp_x0(x)
    s_out = torch.full_like(s, float("nan")) if ind_fn is not None else weights.reported(steps)
    info = {"sampler": sampler, "steps": steps, "row_calls": model.stats.get("row_fn", 0),
            "col_calls": model.stats.get("col_fn", 0), "ind_calls": model.stats.get("ind_fn", 0),
            "world_size": model.world, "rank": model.rank, "exact_form": ind_fn is not None,
            "seconds": time.perf_counter() - t_start}
    return ComposeResult(samples=x, s=s_out, row_weights=rw, levels=levels, info=info)


def _check_composable(rw: torch.Tensor, exact: bool, V: int, Fr: int) -> None:
    """Composing both models (some step mixes them, or the exact form) needs V >= 2 and F >= 2."""
    if not exact:
        both = bool(((rw > 0).any(dim=1) & (rw < 1).any(dim=1)).any())
        if both and (V < 2 or Fr < 2):
            raise ValueError(f"composing the video and multi-view models needs V >= 2 views and F >= 2 frames, got "
                             f"V = {V}, F = {Fr}; with one view use s0 = 0 (video model only), with one frame "
                             "s0 = 1 (multi-view model only)")
    elif V < 2 or Fr < 2:
        raise ValueError(f"the exact form (ind_fn) composes rows and columns and needs V >= 2 and F >= 2, got "
                         f"V = {V}, F = {Fr}")


# =========================================================================================== helpers of the above
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


def _apply_x0_hook(hook, x0: torch.Tensor, i: int, steps: int, level, known: KnownGrid | None, rank: int,
                   world: int, group) -> torch.Tensor:
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
    return out if known is None else known.clamp_x0(out)



# ============================================================================================ grid helpers
def orbit_cameras(views: int, elevation_deg: float = 0.0, fov_deg: float = 33.8, radius: float = 2.0,
                  width: int = 576, height: int = 576):
    """Cameras of an SV3D-style orbit around the origin: view i at azimuth i * 360 / (views - 1) degrees (as core
    ComfyUI's SV3D_Conditioning numbers them, so the first and last views coincide), fixed elevation, looking at
    the origin, world -y up. OpenCV camera-to-world, +x right, +y down, +z forward; K from the horizontal FOV.
    Returns ``cameras.Cameras`` with ``views`` cameras."""
    import math as _m

    from ..core.cameras import Cameras, look_at

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
