"""DDPNet: VideoScene's "dynamic denoising policy network" that picks the leap timestep for a coarse video.

Entry point: :func:`choose_timestep` (policy -> timestep). Training: :func:`train_ddpnet` (generic contextual bandit)
and :func:`train_from_folder` (the pack's recipe: latents on disk + the frozen student as the reward). Files:
:func:`save_ddpnet` / :func:`load_ddpnet` (safetensors, config in the metadata, never pickle). Preview:
:func:`policy_plot`. No ComfyUI imports.

What it does (VideoScene, CVPR 2025, Sec. 3.3): a small 3D CNN looks at the rendered coarse video and picks the
timestep at which the one-step student denoises it: a good render needs little noise (small t), a poor one more
(large t). The action space is ``n_bins`` timesteps evenly spaced in ``t_min .. t_max`` (T' = t_max). It is trained as
a contextual bandit, decoupled from the (frozen) student: action = timestep bin, reward = -MSE between the student's
one-step output at that t and the ground-truth video latent; REINFORCE with a running reward baseline, exploration by
sampling the policy or epsilon-greedy, an entropy bonus, Adam.

Layouts:
  latent input  [B, C, T, h, w]  ComfyUI LATENT order (C = 16 for CogVideoX); any scale (VAE space or x scaling
                factor: the input is standardised per sample, so the scale does not matter).
  pixel input   [B, 3, F, H, W]  in [-1, 1] (see :func:`frames_input` for ComfyUI IMAGE frames [F, H, W, 3] 0..1).
  The leap sampler's latents are [1, T, C, h, w] x scaling factor: permute with :func:`latent_input`.
Any input size works: it is adaptively average-pooled to ``input_size`` (T, h, w) first.

Distributed training: :func:`train_ddpnet` / :func:`train_from_folder` run under ``torchrun`` with PyTorch DDP
(helpers in :mod:`vscene_engine.core.distributed`, shared with distill: ``init_distributed`` joins torchrun's group, nccl
on CUDA, gloo on CPU). Each rank draws its own slots of the global batch (world_size x batch x grad_accum; every draw is a
pure function of seed, step and position), calls the reward (the student) for its own samples only; the rewards
are gathered so the baseline / advantage statistics are identical on every rank, DDP averages the gradients, the
history is rank-averaged, only rank 0 writes checkpoints and the final file. From the command line:
``torchrun --nproc_per_node N -m vscene_engine train-ddpnet --model ... --data ... --out ...``.

Differences from the paper, on purpose: the paper does not publish DDPNet's exact layers or training settings; this
one is 4 x (Conv3d 3x3x3, GroupNorm, SiLU) + global pooling + Linear on a pooled input, with advantage
normalisation (running std of r - b) so the learning rate does not depend on the reward's scale.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.atomic import atomic_write
from ..core.distributed import all_mean, broadcast_flag, ddp_no_buffer_sync, dist_state, sample_index, seed_mix
from ..core.runtime import Progress, as_progress

__all__ = ["DDPNetConfig", "DDPNet", "choose_timestep", "latent_input", "frames_input", "save_ddpnet", "load_ddpnet",
           "train_ddpnet", "make_leap_reward", "policy_plot", "save_training_sample", "load_training_samples",
           "train_from_folder", "HIGHLIGHT", "FORMAT", "CHECKPOINT_FORMAT"]

FORMAT = "videoscene-ddpnet"
CHECKPOINT_FORMAT = "videoscene-ddpnet-checkpoint"
KINDS = ("latent", "pixel")
EXPLORE = ("sample", "egreedy")
BASELINES = ("global", "per_sample")
HIGHLIGHT = (1.0, 0.55, 0.0)  # colour (RGB 0..1) of the chosen bar in :func:`policy_plot`
_BAR = (0.33, 0.47, 0.72)


# =========================================================================================== config
@dataclass
class DDPNetConfig:
    """DDPNet hyper-parameters (stored in every file's metadata).

    in_channels: 16 for CogVideoX latents, 3 for pixel videos. n_bins: number of timestep choices (>= 2).
    t_min, t_max: smallest / largest timestep (t_max is the paper's T'), 1 <= t_min < t_max <= 999.
    width: channels of the first conv layer (the others use 2x and 4x). input_size: (T, h, w) the input is pooled
    to. kind: "latent" or "pixel".
    """

    in_channels: int = 16
    n_bins: int = 10
    t_min: int = 100
    t_max: int = 900
    width: int = 32
    input_size: tuple = (8, 16, 24)
    kind: str = "latent"

    def __post_init__(self):
        self.input_size = tuple(int(s) for s in self.input_size) if isinstance(self.input_size, (list, tuple)) \
            else self.input_size
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (saying what to change) on an invalid setting."""
        if self.kind not in KINDS:
            raise ValueError(f"DDPNet kind must be one of {KINDS}, got {self.kind!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"DDPNet in_channels must be a positive int (16 for latents, 3 for pixels), "
                             f"got {self.in_channels!r}")
        if self.kind == "pixel" and self.in_channels != 3:
            raise ValueError(f"a pixel DDPNet takes RGB videos: in_channels must be 3, got {self.in_channels}")
        if not 1 <= int(self.t_min) < int(self.t_max) <= 999:
            raise ValueError(f"DDPNet timesteps must satisfy 1 <= t_min < t_max <= 999, got t_min={self.t_min}, "
                             f"t_max={self.t_max}")
        if not isinstance(self.n_bins, int) or self.n_bins < 2:
            raise ValueError(f"DDPNet n_bins must be an int >= 2 (the number of timestep choices), got {self.n_bins!r}")
        if self.n_bins > self.t_max - self.t_min + 1:
            raise ValueError(f"{self.n_bins} bins do not fit in timesteps {self.t_min}..{self.t_max} (at most "
                             f"{self.t_max - self.t_min + 1}); use fewer bins or a wider range")
        b = self.bins()
        if any(y <= x for x, y in zip(b, b[1:])):
            raise ValueError(f"{self.n_bins} bins in {self.t_min}..{self.t_max} round to repeated timesteps {b}; "
                             f"use fewer bins")
        if not isinstance(self.width, int) or not 4 <= self.width <= 1024:
            raise ValueError(f"DDPNet width must be an int in 4..1024, got {self.width!r}")
        s = self.input_size
        if not (isinstance(s, tuple) and len(s) == 3 and all(isinstance(v, int) and 1 <= v <= 512 for v in s)):
            raise ValueError(f"DDPNet input_size must be 3 ints (T, h, w) in 1..512, got {s!r}")

    def bins(self) -> list[int]:
        """The timestep of each bin: linspace(t_min, t_max, n_bins) rounded; unique and increasing."""
        n, a, b = self.n_bins, int(self.t_min), int(self.t_max)
        return [int(round(a + (b - a) * i / (n - 1))) for i in range(n)]

    def to_json(self) -> str:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DDPNetConfig":
        """Parse :meth:`to_json` output; ValueError on unknown/missing fields or invalid values."""
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the DDPNet config is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise ValueError(f"the DDPNet config should be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown DDPNet config fields {unknown} (written by a newer version?)")
        return cls(**d)


# =========================================================================================== network
def _groups(ch: int) -> int:
    """GroupNorm groups: about 8 channels per group (the largest divisor of ch <= ch // 8, at least 1). Groups of
    one channel (instance norm) would erase the per-channel offsets that tell renders apart."""
    return max(g for g in range(1, max(1, ch // 8) + 1) if ch % g == 0)


class DDPNet(nn.Module):
    """The policy: video -> logits over the timestep bins.

    forward(x [B, C, T, H, W]) -> logits [B, n_bins]. Steps: adaptive average pool to ``input_size``, per-sample
    standardisation (zero mean, unit std over C, T, H, W), 4 x (Conv3d 3x3x3 padding 1, GroupNorm, SiLU) with
    stride (1, 2, 2) from the 2nd layer and widths (w, 2w, 2w, 4w), global average pool, Linear.
    Parameters are initialised from ``seed`` (the global RNG is left untouched); the head starts near zero, so the
    initial policy is close to uniform.
    """

    def __init__(self, config: DDPNetConfig | None = None, seed: int = 0):
        super().__init__()
        self.config = config or DDPNetConfig()
        self.config.validate()
        c, w = self.config.in_channels, self.config.width
        chans = [c, w, 2 * w, 2 * w, 4 * w]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            for i in range(4):
                stride = (1, 1, 1) if i == 0 else (1, 2, 2)
                setattr(self, f"conv{i + 1}", nn.Conv3d(chans[i], chans[i + 1], 3, stride=stride, padding=1))
                setattr(self, f"norm{i + 1}", nn.GroupNorm(_groups(chans[i + 1]), chans[i + 1]))
            self.head = nn.Linear(chans[4], self.config.n_bins)
            with torch.no_grad():
                self.head.weight.mul_(0.1)
                self.head.bias.zero_()

    @property
    def bins(self) -> list[int]:
        return self.config.bins()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, T, H, W] (any size, any scale) -> pooled and standardised [B, C, *input_size] float32."""
        _check_input(x, self.config)
        x = x.to(device=self.head.weight.device, dtype=torch.float32)
        x = F.adaptive_avg_pool3d(x, self.config.input_size)
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = x.std(dim=(1, 2, 3, 4), keepdim=True, unbiased=False)
        return (x - mean) / (std + 1e-6)

    def logits_prepared(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_bins] from :meth:`prepare` output (used by training, which prepares every sample once)."""
        for i in range(1, 5):
            x = F.silu(getattr(self, f"norm{i}")(getattr(self, f"conv{i}")(x)))
        return self.head(x.mean(dim=(2, 3, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_prepared(self.prepare(x))


def _check_input(x, cfg: DDPNetConfig) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"DDPNet input must be a torch tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"DDPNet input must be [B, C, T, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != cfg.in_channels:
        what = "RGB pixel videos [B, 3, F, H, W]" if cfg.kind == "pixel" else \
            f"{cfg.in_channels}-channel latents [B, C, T, h, w] (ComfyUI LATENT order)"
        hint = ""
        if x.shape[1] == 3 and cfg.kind == "latent":
            hint = " This looks like a pixel video: pass the VAE latent, or use a DDPNet trained on pixels."
        elif cfg.kind == "pixel":
            hint = " This looks like a latent: pass the decoded/rendered frames, or use a latent DDPNet."
        elif x.shape[2] == cfg.in_channels:
            hint = " The channels are on axis 2: permute [B, T, C, h, w] latents with latent_input()."
        raise ValueError(f"this DDPNet takes {what}, got {x.shape[1]} channels (shape {tuple(x.shape)}).{hint}")
    if min(x.shape) < 1:
        raise ValueError(f"DDPNet input is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError("DDPNet input contains NaN or inf values; check the render / latent that feeds it")


def latent_input(latents: torch.Tensor, layout: str = "BCThw") -> torch.Tensor:
    """Latents as DDPNet input [B, C, T, h, w]. layout "BCThw" (ComfyUI LATENT, returned as is), "BTChw" (the leap
    sampler's / diffusers' order, permuted) or "CThw" (one sample, a batch axis is added)."""
    if layout == "BCThw":
        return latents
    if layout == "BTChw":
        return latents.permute(0, 2, 1, 3, 4)
    if layout == "CThw":
        return latents.unsqueeze(0)
    raise ValueError(f"layout must be 'BCThw', 'BTChw' or 'CThw', got {layout!r}")


def frames_input(frames: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE frames [F, H, W, 3] in 0..1 -> pixel DDPNet input [1, 3, F, H, W] in [-1, 1]."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [F, H, W, 3] in 0..1, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    return (frames.float() * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)


@torch.no_grad()
def choose_timestep(net: DDPNet, x: torch.Tensor, mode: str = "greedy",
                    generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, list[int]]:
    """Pick the leap timestep for each video of a batch.

    x: a batch [B, C, T, H, W] (one video [C, T, H, W] is a batch of 1) -> (timesteps: list[int] of B, probs
    [B, n_bins], bins): always one list entry and one probs row per video, whatever the input's rank. mode "greedy"
    takes the most probable bin; "sample" draws from the policy (with ``generator``, a CPU torch.Generator, for
    reproducibility). probs are float32 on the CPU; bins is the list of timesteps (``net.config.bins()``).
    """
    if mode not in ("greedy", "sample"):
        raise ValueError(f"mode must be 'greedy' or 'sample', got {mode!r}")
    xb = x.unsqueeze(0) if isinstance(x, torch.Tensor) and x.ndim == 4 else x
    was_training = net.training
    net.eval()
    try:
        probs = torch.softmax(net(xb).float(), dim=-1).cpu()
    finally:
        net.train(was_training)
    if mode == "greedy":
        idx = probs.argmax(dim=-1)
    else:
        idx = torch.multinomial(probs, 1, generator=generator)[:, 0]
    bins = net.config.bins()
    return [int(bins[int(i)]) for i in idx], probs, bins


# =========================================================================================== files
def _read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; ValueError for a missing, corrupt or truncated file."""
    from safetensors.torch import load as st_load

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"DDPNet file {path} does not exist; check the path (or train one with train-ddpnet)")
    data = path.read_bytes()
    bad = f"{path} is not a readable safetensors file ({{}}): it is corrupt or truncated; re-download or retrain it"
    if len(data) < 8:
        raise ValueError(bad.format(f"only {len(data)} bytes"))
    n = struct.unpack("<Q", data[:8])[0]
    if n < 2 or 8 + n > len(data):
        raise ValueError(bad.format(f"header length {n} does not fit in {len(data)} bytes"))
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        tensors = st_load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type
        raise ValueError(bad.format(f"{type(exc).__name__}: {str(exc)[:120]}")) from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(meta or {})


def _config_from_meta(path, meta: dict) -> DDPNetConfig:
    fmt = meta.get("format")
    if "config" not in meta or fmt not in (FORMAT, CHECKPOINT_FORMAT):
        raise ValueError(f"{path} has no DDPNet config in its metadata (format {fmt!r}); it is not a DDPNet file "
                         f"written by save_ddpnet / train-ddpnet. Use a DDPNet .safetensors file (or retrain it)")
    try:
        return DDPNetConfig.from_json(meta["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: invalid DDPNet config in the metadata ({exc}); retrain it") from None


def _state_mismatch(path, net: DDPNet, sd: dict) -> ValueError | None:
    """A ValueError describing missing / unexpected / wrong-shape keys, or None when ``sd`` fits ``net``."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    wrong = [k for k in want if k in sd and tuple(sd[k].shape) != want[k]]
    if not (missing or unexpected or wrong):
        return None
    parts = []
    if wrong:
        def fmt(s):
            return "[" + ",".join(str(v) for v in s) + "]"
        desc = ", ".join(f"{k} is {fmt(sd[k].shape)} in the file, the net expects {fmt(want[k])}" for k in wrong[:4])
        hint = ""
        if "conv1.weight" in wrong and sd["conv1.weight"].ndim == 5:
            got_c, want_c = sd["conv1.weight"].shape[1], want["conv1.weight"][1]
            if got_c == 3 and want_c != 3:
                hint = " — was it trained on pixels instead of latents?"
            elif want_c == 3 and got_c != 3:
                hint = " — was it trained on latents instead of pixels?"
        parts.append(f"weights of the wrong shape: {desc}{hint}")
    if missing:
        parts.append(f"missing keys: {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else ""))
    if unexpected:
        parts.append(f"unexpected keys: {', '.join(unexpected[:6])}" + (" ..." if len(unexpected) > 6 else ""))
    return ValueError(f"{path} does not match the DDPNet described in its own metadata ({'; '.join(parts)}); "
                      f"the file is inconsistent: retrain it or use the file it came with")


def save_ddpnet(net: DDPNet, path, extra_meta: dict | None = None) -> Path:
    """Write ``net`` to ``path`` (.safetensors, atomic): weights + metadata {format, config (JSON), bins, extra}.
    ``extra_meta`` values are stored as strings (non-strings as JSON). Returns the path."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "config": net.config.to_json(), "bins": json.dumps(net.config.bins())}
    for k, v in (extra_meta or {}).items():
        if k in meta:
            raise ValueError(f"extra_meta key {k!r} is reserved ({sorted(meta)}); rename it")
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))


def load_ddpnet(path, device="cpu", kind: str | None = None) -> DDPNet:
    """Load a DDPNet file (or a :func:`train_ddpnet` checkpoint) strictly, in eval mode on ``device``.

    The config comes from the metadata. ValueError (naming the file) when it is missing/corrupt/truncated, has no
    DDPNet metadata, or its tensors do not fit the config (missing / unexpected keys, wrong shapes); with ``kind``
    ("latent"/"pixel") also when the file was trained on the other kind of input. Never unpickles anything.
    """
    tensors, meta = _read_safetensors(path)
    cfg = _config_from_meta(path, meta)
    if meta.get("format") == CHECKPOINT_FORMAT:
        tensors = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    if kind is not None and cfg.kind != kind:
        raise ValueError(f"{path} is a DDPNet for {cfg.kind} inputs, but {kind} inputs are given here; use a "
                         f"{kind} DDPNet (or feed it {cfg.kind}s)")
    net = DDPNet(cfg)
    err = _state_mismatch(path, net, tensors)
    if err is not None:
        raise err
    net.load_state_dict(tensors, strict=True)
    return net.to(device).eval()


# =========================================================================================== training
def _prepare_samples(net: DDPNet, samples: Sequence) -> torch.Tensor:
    """Every sample x_i [C, T, H, W] pooled + standardised once -> [N, C, *input_size] (no grad)."""
    if samples is None or len(samples) == 0:
        raise ValueError("no training samples: pass a non-empty sequence of inputs x_i [C, T, H, W] (for "
                         "train_from_folder: a folder of sample .safetensors files)")
    out = []
    with torch.no_grad():
        for i, x in enumerate(samples):
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise ValueError(f"training sample {i} must be a tensor [C, T, H, W], got "
                                 f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
            try:
                out.append(net.prepare(x.unsqueeze(0)))
            except ValueError as exc:
                raise ValueError(f"training sample {i}: {exc}") from None
    return torch.cat(out, 0)


def _rewards(reward_fn, idx: list[int], ts: list[int], step: int) -> torch.Tensor:
    """reward_fn's answer as float64 cpu [len(idx)]; ValueError for a wrong count. Non-finite values are checked by
    the caller over the whole (global) batch, so that every rank raises alike."""
    r = reward_fn(list(idx), list(ts))
    r = torch.as_tensor(r).detach().to("cpu", torch.float64).reshape(-1)
    if r.numel() != len(idx):
        raise ValueError(f"reward_fn returned {r.numel()} rewards for {len(idx)} (index, timestep) pairs at step "
                         f"{step}; it must return one reward per pair")
    return r


def _settings(lr, batch, explore, epsilon, entropy, baseline_momentum, seed, baseline, normalize_advantage,
              grad_accum: int = 1, world: int = 1) -> dict:
    return {"lr": float(lr), "batch": int(batch), "explore": explore, "epsilon": float(epsilon),
            "entropy": float(entropy), "baseline_momentum": float(baseline_momentum), "seed": int(seed),
            "baseline": baseline, "normalize_advantage": bool(normalize_advantage), "grad_accum": int(grad_accum),
            "world_size": int(world), "global_batch": int(batch) * int(grad_accum) * int(world)}


def _check_settings(s: dict, steps: int) -> None:
    if s["explore"] not in EXPLORE:
        raise ValueError(f"explore must be one of {EXPLORE}, got {s['explore']!r}")
    if s["baseline"] not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {s['baseline']!r}")
    if int(steps) < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if s["batch"] < 1:
        raise ValueError(f"batch must be >= 1, got {s['batch']}")
    if s["grad_accum"] < 1:
        raise ValueError(f"grad_accum must be >= 1 (micro-batches per step), got {s['grad_accum']}")
    if not s["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {s['lr']}")
    if not 0 <= s["epsilon"] <= 1:
        raise ValueError(f"epsilon must be in 0..1, got {s['epsilon']}")
    if not 0 <= s["baseline_momentum"] < 1:
        raise ValueError(f"baseline_momentum must be in [0, 1), got {s['baseline_momentum']}")


class _State:
    """Everything that evolves during training besides the weights and Adam: step, baseline, history. (No RNG
    state: every draw is a pure function of seed, step and global batch position, see :func:`_step_draws`.)"""

    def __init__(self, n: int, baseline: str):
        k = n if baseline == "per_sample" else 1
        self.step = 0
        self.base = torch.zeros(k, dtype=torch.float64)  # running reward mean (per sample or global)
        self.seen = torch.zeros(k, dtype=torch.uint8)  # 1 once a baseline entry has been initialised
        self.var = torch.zeros(1, dtype=torch.float64)  # running mean of (r - b)^2 (advantage normalisation)
        self.history = {"reward": [], "loss": [], "entropy": []}


def _save_checkpoint(path, net: DDPNet, opt: torch.optim.Optimizer, st: _State, settings: dict, n: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    osd = opt.state_dict()
    for pid, s in osd["state"].items():
        for name, v in s.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tensors["baseline"], tensors["baseline_seen"], tensors["adv_var"] = st.base, st.seen, st.var
    groups = [{k: v for k, v in g.items() if k != "params"} for g in osd["param_groups"]]
    meta = {"format": CHECKPOINT_FORMAT, "config": net.config.to_json(), "step": str(st.step),
            "settings": json.dumps(settings), "n_samples": str(n), "param_groups": json.dumps(groups),
            "history": json.dumps(st.history)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_checkpoint(path, net: DDPNet, opt: torch.optim.Optimizer, st: _State, settings: dict, n: int) -> None:
    tensors, meta = _read_safetensors(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a DDPNet training checkpoint (format {meta.get('format')!r}); pass "
                         f"another checkpoint path or resume=False")
    cfg = _config_from_meta(path, meta)
    if cfg != net.config:
        raise ValueError(f"checkpoint {path} was trained with DDPNet config {cfg.to_json()}, but this net has "
                         f"{net.config.to_json()}; use the same config, another checkpoint path, or resume=False")
    try:
        old = json.loads(meta["settings"])
        step, n_old = int(meta["step"]), int(meta["n_samples"])
        groups, history = json.loads(meta["param_groups"]), json.loads(meta["history"])
        groups = list(groups)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} has incomplete metadata ({exc}); delete it or pass resume=False") from None
    # the global batch (ranks x batch x grad_accum) must match, not its split: 2 ranks x 4 resume 1 x 4 x 2 exactly
    changed = [k for k in ("explore", "baseline", "seed") if old.get(k) != settings[k]]
    old_global = old.get("global_batch", old.get("batch"))
    if old_global != settings["global_batch"]:
        changed.append(f"global batch (ranks x batch x grad_accum) {old_global} -> {settings['global_batch']}")
    if changed or (settings["baseline"] == "per_sample" and n_old != n):
        what = changed or [f"n_samples {n_old} -> {n}"]
        raise ValueError(f"checkpoint {path} was written with different training settings ({what}); resume with the "
                         f"same settings, another checkpoint path, or resume=False")
    sd = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    err = _state_mismatch(path, net, sd)
    if err is not None:
        raise err
    net.load_state_dict(sd, strict=True)
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    if sorted(state) != list(range(len(list(net.parameters())))) or len(groups) != len(opt.param_groups):
        raise ValueError(f"checkpoint {path} holds optimiser state for another parameter layout; delete it or pass "
                         f"resume=False")
    # the new run's param groups (its lr) apply; Adam's moments and step counts come from the file
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    try:
        st.base, st.seen, st.var = tensors["baseline"].double(), tensors["baseline_seen"], tensors["adv_var"].double()
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path} lacks training state ({exc}); delete it or pass resume=False") from None
    st.step, st.history = step, history


def _step_draws(seed: int, step0: int, n: int, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of (0-based) step ``step0`` for the whole global batch of ``G`` positions (cheap; every rank
    makes all of them and uses its own rows): sample indices [G] (``distributed.sample_index``: a fresh seeded
    permutation of the N samples per epoch, position p = step0 x G + slot) and uniforms [G, 2] float64 (column 0:
    inverse-CDF draw of the action / the epsilon test, column 1: the random bin of epsilon-greedy). A pure function
    of (seed, step, position): no RNG state to checkpoint, and any split of G into ranks x micro-batches sees the
    same samples and draws."""
    idx = torch.tensor([sample_index(seed, n, step0 * G + p) for p in range(G)], dtype=torch.long)
    g = torch.Generator("cpu").manual_seed(seed_mix("ddpnet-action", int(seed), int(step0)))
    return idx, torch.rand(G, 2, generator=g, dtype=torch.float64)


def _act(probs: torch.Tensor, s: dict, u: torch.Tensor) -> torch.Tensor:
    """Exploration: actions [B] (bin indices) from probs [B, n_bins] (float64 cpu) and uniforms u [B, 2]."""
    k = probs.shape[1]
    if s["explore"] == "sample":  # inverse CDF: the first bin whose cumulative probability exceeds u
        c = probs.cumsum(dim=-1)
        c = c / c[:, -1:]
        return (c <= u[:, :1]).sum(dim=-1).clamp(max=k - 1)
    greedy = probs.argmax(dim=-1)
    rnd = (u[:, 1] * k).long().clamp(max=k - 1)
    return torch.where(u[:, 0] < s["epsilon"], rnd, greedy)


def _advantages(r: torch.Tensor, idx: torch.Tensor, track: torch.Tensor, st: _State, s: dict) -> torch.Tensor:
    """Per-sample advantages (r - b) [/ running std of r - b], then update the baseline from the rewards where
    ``track`` is True (epsilon-greedy: the greedy actions only, so b estimates what the current policy earns and an
    explored bin gets a positive advantage exactly when it beats the greedy choice) and the running variance.
    Called with the whole global batch (gathered from all ranks), so every rank keeps the same statistics."""
    slot = idx if s["baseline"] == "per_sample" else torch.zeros_like(idx)
    m = s["baseline_momentum"]
    for k in torch.unique(slot).tolist():  # first sight: start the baseline at the observed mean reward
        sel = (slot == k) & track
        if not st.seen[k] and sel.any():
            st.base[k] = r[sel].mean()
            st.seen[k] = 1
    b = st.base[slot]
    d = torch.where(st.seen[slot].bool(), r - b, torch.zeros_like(r))
    if s["normalize_advantage"]:
        if not st.var.item() > 0:
            st.var = (d ** 2).mean().reshape(1)
        adv = d / (st.var.sqrt() + 1e-8 + 1e-6 * b.abs().mean())
        st.var = m * st.var + (1 - m) * (d ** 2).mean()
    else:
        adv = d
    for k in torch.unique(slot).tolist():
        sel = (slot == k) & track
        if sel.any():
            st.base[k] = m * st.base[k] + (1 - m) * r[sel].mean()
    return adv


def _greedy_histogram(net: DDPNet, prepared: torch.Tensor) -> list[int]:
    counts = [0] * net.config.n_bins
    with torch.no_grad():
        for chunk in prepared.split(64):
            for a in net.logits_prepared(chunk).argmax(dim=-1).tolist():
                counts[a] += 1
    return counts


# ------------------------------------------------------------------------------------------- distributed
class _Policy(nn.Module):
    """``net.logits_prepared`` as ``forward``: what DistributedDataParallel wraps (it only hooks ``forward``)."""

    def __init__(self, net: DDPNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logits_prepared(x)


def _comm_device(world: int, like: torch.device | None = None) -> torch.device:
    """Where collective tensors live: the CPU for gloo, the (CUDA) device of ``like`` or the current one for nccl."""
    if world > 1:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            if like is not None and like.type == "cuda":
                return like
            return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_rows(x: torch.Tensor, world: int, dev: torch.device) -> list[torch.Tensor]:
    """All ranks' ``x`` (same shape everywhere), as a list indexed by rank, on the CPU."""
    if world == 1:
        return [x]
    import torch.distributed as dist

    y = x.to(dev).contiguous()
    out = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(out, y)
    return [o.cpu() for o in out]


def _rank0_write(write: Callable[[], object], rank: int, world: int, dev: torch.device, what: str):
    """Rank 0 runs ``write()`` (an atomic file write); every rank learns whether it worked (raises if not). The
    flag broadcast is the barrier after the write. Returns write()'s value on rank 0, None elsewhere."""
    err, out = None, None
    if rank == 0:
        try:
            out = write()
        except BaseException as exc:  # noqa: BLE001 - re-raised below after telling the other ranks
            err = exc
    ok = broadcast_flag(err is None, world, dev)
    if err is not None:
        raise err
    if not ok:
        raise RuntimeError(f"rank 0 failed to write {what} (see rank 0's error)")
    return out


# codes of a rank's rows in the gathered step data
_OK, _BAD_LOGITS, _REWARD_ERROR = 0.0, 1.0, 2.0


def train_ddpnet(net: DDPNet, samples: Sequence[torch.Tensor], reward_fn: Callable, steps: int, lr: float = 1e-3,
                 batch: int = 4, explore: str = "sample", epsilon: float = 0.1, entropy: float = 0.01,
                 baseline_momentum: float = 0.9, seed: int = 0, progress: Progress | None = None, checkpoint=None, checkpoint_every: int = 50,
                 resume: bool = True, baseline: str = "global", normalize_advantage: bool = True,
                 grad_accum: int = 1, distributed: bool | None = None) -> dict:
    """Train the policy ``net`` in place as a contextual bandit (REINFORCE); return the history.

    samples: sequence of N inputs x_i [C, T, H, W] (any sizes; each is pooled once). reward_fn(indices: list[int],
    timesteps: list[int]) -> Tensor [len] (higher is better, e.g. -MSE; see :func:`make_leap_reward`); it is the
    only link to the (frozen) student. Each step: a global batch of G = world_size x ``batch`` x ``grad_accum``
    sample indices (a fresh seeded permutation of the N samples per epoch, so every sample is seen once per N
    draws); actions from the policy (explore "sample") or epsilon-greedy ("egreedy": uniform bin with probability
    ``epsilon``, else argmax);
    advantage = r - b with b a running mean of the reward (``baseline`` "global", or "per_sample": one running mean
    per sample, which removes the per-scene reward level; with "egreedy" b follows the greedy actions' rewards only,
    so an explored bin is reinforced exactly when it beats the greedy one), divided by the running std of r - b
    when ``normalize_advantage`` (the reward's scale then does not matter: -MSE differences between bins are often
    tiny); loss = -mean(adv * log pi(a | x)) - entropy * mean(H(pi)); one Adam step. "sample" learns faster and
    more reliably than "egreedy" (which needs more steps and a larger entropy bonus, e.g. 0.05).
    grad_accum: micro-batches of ``batch`` per step (gradients summed, rewards/baseline over the whole step).
    All randomness is a pure function of (``seed``, step, global batch position) (no RNG state); the initial
    weights come from the net's own seed.

    distributed: None = auto (a process group already initialised, or torchrun's env: WORLD_SIZE > 1, joined with
    ``distributed.init_distributed``: nccl on CUDA, gloo on CPU), False = off, True = required. With W > 1 processes:
    the net is wrapped in DistributedDataParallel (rank 0's weights are broadcast at the start; with nccl the net
    must be on cuda:LOCAL_RANK); rank r / micro-batch m takes global slot m W + r (positions slot x batch ..) and
    calls ``reward_fn`` for its own samples only; the rewards are gathered so the baseline and advantage statistics
    are computed over the whole global batch, identically on every rank; gradients are averaged by DDP; the history
    is the rank average (reward: mean over the global batch; loss, entropy: mean of the ranks' values); only rank 0
    writes the checkpoint (atomic), the others wait for it. So W ranks x ``batch`` draw exactly the samples and
    uniforms of one process with ``batch`` x W (same sampled actions while the weights agree) and reproduce one
    process with ``batch`` and ``grad_accum`` = W bit for bit for W = 2 (up to float summation order for larger W).
    A non-finite reward / logit / loss / gradient, or a reward_fn ValueError, on any rank raises ValueError on every
    rank. progress.check_interrupt() must answer alike on every rank (otherwise torchrun tears the group down). The process group
    is left as it is (see :func:`train_from_folder`, which cleans up a group it created).

    checkpoint: a .safetensors path; weights + Adam state + step + baseline + history are written there
    atomically every ``checkpoint_every`` steps and at the end. With ``resume`` and an existing checkpoint, training
    continues from its step (same DDPNet config, explore, baseline, seed and global batch required, else ValueError;
    the new lr applies; the split of the global batch into ranks x batch x grad_accum may change); resuming gives
    bit-identical results to an uninterrupted run. A checkpoint at or beyond ``steps`` only loads (no training).
    Under DDP every rank reads it (a shared filesystem; ranks that disagree on the step raise ValueError).
    progress (:class:`~vscene_engine.core.runtime.Progress`): ``update(step, steps, stage="ddpnet", loss=)`` after each
    step (every rank), ``check_interrupt()`` before each step (raise to abort; the last checkpoint stays intact). A non-finite reward, logit, loss or gradient raises ValueError naming the step
    (nothing is written for that step; the net keeps its last good weights).

    Returns dict(reward, loss, entropy: per-step lists (all steps, including resumed ones; rank-averaged), bins,
    greedy_histogram (greedy choices over all samples at the end), steps, resumed_from (step or None), settings,
    rank, world_size, local (this rank's own reward / loss / entropy for the steps this call ran)).
    """
    progress = as_progress(progress)
    rank, world = dist_state(distributed)
    s = _settings(lr, batch, explore, epsilon, entropy, baseline_momentum, seed, baseline, normalize_advantage,
                  grad_accum, world)
    _check_settings(s, steps)
    dev = _comm_device(world, net.head.weight.device)
    if world > 1 and dev.type == "cuda" and net.head.weight.device.type != "cuda":
        raise ValueError(f"the nccl process group needs the DDPNet on CUDA (net.to('cuda:LOCAL_RANK')), it is on "
                         f"{net.head.weight.device}")
    prepared = _prepare_samples(net, samples)
    n = prepared.shape[0]
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
    st = _State(n, s["baseline"])
    resumed = None
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        _load_checkpoint(checkpoint, net, opt, st, s, n)
        resumed = st.step
    if world > 1:
        steps_seen = [int(t[0]) for t in _gather_rows(torch.tensor([float(st.step)], dtype=torch.float64), world, dev)]
        if len(set(steps_seen)) != 1:
            raise ValueError(f"the ranks resumed from different steps {steps_seen} (checkpoint {checkpoint}): every "
                             f"rank must read the same checkpoint file (a shared filesystem)")
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(_Policy(net), device_ids=[dev.index] if dev.type == "cuda" else None, **ddp_no_buffer_sync(DDP))
    bins = net.config.bins()
    every = max(1, int(checkpoint_every))
    A, B, W = s["grad_accum"], s["batch"], world
    G = s["global_batch"]
    local_hist = {"reward": [], "loss": [], "entropy": []}
    while st.step < int(steps):
        progress.check_interrupt()
        step = st.step + 1
        idx_all, u_all = _step_draws(s["seed"], step - 1, n, G)
        micro, rows_local, err = [], torch.zeros(A * B, 4, dtype=torch.float64), None
        for m in range(A):
            sl = slice((m * W + rank) * B, (m * W + rank + 1) * B)
            idx = idx_all[sl]
            # every rank runs every forward (DDP may talk in its forward); the last one of the step goes through DDP
            fwd = wrapped if W > 1 and m == A - 1 else net.logits_prepared
            logits = fwd(prepared[idx.to(prepared.device)])
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp.detach().double().exp().cpu()
            rows = rows_local[m * B:(m + 1) * B]
            if not torch.isfinite(logits).all():
                act, code = torch.zeros(B, dtype=torch.long), _BAD_LOGITS
            else:
                act = _act(probs, s, u_all[sl])
                code = _OK
                if s["explore"] == "egreedy":
                    rows[:, 1] = (act == probs.argmax(dim=-1)).double()
                else:
                    rows[:, 1] = 1.0
                if err is None:
                    try:
                        rows[:, 0] = _rewards(reward_fn, idx.tolist(), [bins[a] for a in act.tolist()], step)
                    except ValueError as exc:
                        err, code = exc, _REWARD_ERROR
                else:
                    code = _REWARD_ERROR
            if code != _OK:
                rows[:, 0] = float("nan")
            rows[:, 2], rows[:, 3] = act.double(), code
            micro.append((sl, logp, act))
        parts = _gather_rows(rows_local, W, dev)
        glob = torch.empty(G, 4, dtype=torch.float64)
        for k in range(W):
            for m in range(A):
                slot = m * W + k
                glob[slot * B:(slot + 1) * B] = parts[k][m * B:(m + 1) * B]
        code_of = {k: set(parts[k][:, 3].tolist()) for k in range(W)}
        bad = [k for k in range(W) if _BAD_LOGITS in code_of[k]]
        if bad:
            on = f" (on rank {', '.join(map(str, bad))})" if W > 1 else ""
            raise ValueError(f"non-finite DDPNet logits at step {step}{on}: the weights diverged; lower the learning "
                             f"rate (lr={s['lr']}) or restart from the last checkpoint")
        if err is not None:
            raise err
        failed = [k for k in range(W) if _REWARD_ERROR in code_of[k]]
        if failed:
            raise ValueError(f"reward_fn failed on rank {', '.join(map(str, failed))} at step {step} (see that rank's "
                             f"error); nothing was written for this step")
        r, track, act_all = glob[:, 0], glob[:, 1].bool(), glob[:, 2].long()
        if not torch.isfinite(r).all():
            pairs = [(int(i), bins[int(a)]) for i, a, v in zip(idx_all, act_all, r.tolist()) if not math.isfinite(v)]
            raise ValueError(f"non-finite reward at step {step} for (sample, timestep) {pairs[:4]}: check the reward "
                             f"function and its inputs (NaN/inf in the latents, the student's output or the ground "
                             f"truth); nothing was written for this step")
        adv_all = _advantages(r, idx_all, track, st, s)
        losses, ents = [], []
        for sl, logp, act in micro:
            adv = adv_all[sl].to(logp.device, logp.dtype)
            ent = -(logp.exp() * logp).sum(dim=-1)
            losses.append(-(adv * logp.gather(1, act.to(logp.device)[:, None])[:, 0]).mean()
                          - s["entropy"] * ent.mean())
            ents.append(ent.detach().mean())
        loss = losses[0] if A == 1 else torch.stack(losses).sum() / A
        ent_local = ents[0] if A == 1 else torch.stack(ents).sum() / A
        stats = all_mean(torch.stack([loss.detach(), ent_local]), W)  # rank averages
        if not torch.isfinite(stats[0]):
            raise ValueError(f"non-finite DDPNet loss at step {step}: check the inputs (NaN/inf latents) and lower "
                             f"the learning rate (lr={s['lr']}); nothing was written for this step")
        opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the ranks here
        if not all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None):
            raise ValueError(f"non-finite DDPNet gradients at step {step}: check the inputs and lower the learning "
                             f"rate (lr={s['lr']}); nothing was written for this step")
        opt.step()
        st.step = step
        st.history["reward"].append(float(r.mean()))
        st.history["loss"].append(float(stats[0]))
        st.history["entropy"].append(float(stats[1]))
        mine = torch.cat([rows_local[m * B:(m + 1) * B, 0] for m in range(A)])
        local_hist["reward"].append(float(mine.mean()))
        local_hist["loss"].append(float(loss.detach()))
        local_hist["entropy"].append(float(ent_local))
        if checkpoint is not None and (step % every == 0 or step == int(steps)):
            _rank0_write(lambda: _save_checkpoint(checkpoint, net, opt, st, s, n), rank, W, dev,
                         f"the checkpoint {checkpoint} at step {step}")
        progress.update(step, int(steps), stage="ddpnet", loss=st.history["loss"][-1])
    if world > 1:
        del wrapped
    net.eval()
    out = dict(st.history)
    out.update(bins=bins, greedy_histogram=_greedy_histogram(net, prepared), steps=st.step, resumed_from=resumed,
               settings=s, rank=rank, world_size=world, local=local_hist)
    return out


# =========================================================================================== leap reward
def make_leap_reward(model, render_latents: list, gt_latents: list, image_latents: list, seed: int = 0,
                     cache: bool = True) -> Callable:
    """The pack's reward: how well the frozen one-step student restores the ground truth from timestep t.

    model: a :class:`~vscene_engine.video.model.VideoModel` (its ``transformer`` is the student, with
    ``prompt_embeds``). render_latents / gt_latents / image_latents: lists of N tensors [1, T, C, h, w] x scaling
    factor (the leap sampler's layout: render = the coarse video's VAE latent, gt = the real video's, image =
    [first, zeros, last] as ``leap.encode_conditioning`` makes it).
    Returns reward_fn(indices, timesteps) -> Tensor [len] float32: for each pair, x_t = add_noise(render_i, eps_i, t)
    with eps_i fixed per sample (drawn from ``seed`` and i), ONE transformer call, x0 via the scheduler's prediction
    type, reward = -MSE(x0, gt_i). Under ``torch.no_grad()``; the transformer is placed once per call via
    ``model.placer``. With ``cache`` a (sample, timestep) pair is computed once (the reward is deterministic), so
    training costs at most N x n_bins transformer calls. ``reward_fn.calls`` counts the transformer calls.
    """
    from ..video.leap import rotary_embedding, transformer_output

    n = len(render_latents)
    if not (n == len(gt_latents) == len(image_latents)) or n == 0:
        raise ValueError(f"make_leap_reward needs the same non-zero number of render, gt and image latents, got "
                         f"{len(render_latents)}, {len(gt_latents)}, {len(image_latents)}")
    C = model.latent_channels
    for i in range(n):
        shapes = [tuple(x.shape) for x in (render_latents[i], gt_latents[i], image_latents[i])]
        if len(set(shapes)) != 1 or len(shapes[0]) != 5 or shapes[0][0] != 1 or shapes[0][2] != C:
            raise ValueError(f"sample {i}: render, gt and image latents must all be [1, T, {C}, h, w] (the leap "
                             f"sampler's layout, x scaling factor); got {shapes}")
    sched = model.schedule
    memo: dict = {}
    ropes: dict = {}

    def noise(i: int, like: torch.Tensor) -> torch.Tensor:
        g = torch.Generator("cpu").manual_seed(int(seed) * 1_000_003 + i)
        return torch.randn(tuple(like.shape), generator=g, dtype=torch.float32)

    def one(tr, i: int, t: int) -> float:
        dev, dt = model.device, model.dtype
        render = render_latents[i].to(dev, torch.float32)
        x_t = sched.add_noise(render, noise(i, render).to(dev), t).to(dt)
        T, _, h, w = render.shape[1:]
        if (T, h, w) not in ropes:
            ropes[(T, h, w)] = rotary_embedding(model, T, h, w, dev)
        out = transformer_output(tr, x_t, image_latents[i].to(dev, dt), t, model.prompt_embeds.to(dev, dt),
                           ropes[(T, h, w)])
        x0 = sched.x0_from_output(out.float(), x_t.float(), t)
        reward_fn.calls += 1
        return -float(F.mse_loss(x0, gt_latents[i].to(dev, torch.float32)))

    def reward_fn(indices, timesteps) -> torch.Tensor:
        pairs = [(int(i), int(t)) for i, t in zip(indices, timesteps)]
        for i, t in pairs:
            if not 0 <= i < n:
                raise ValueError(f"sample index {i} out of range (0..{n - 1})")
            if not 0 <= t < sched.num_train_timesteps:
                raise ValueError(f"timestep {t} out of range (0..{sched.num_train_timesteps - 1})")
        todo = [p for p in dict.fromkeys(pairs) if not (cache and p in memo)]
        if todo:
            with model.placer.use("transformer", model.transformer) as tr, torch.no_grad():
                for i, t in todo:
                    memo[(i, t)] = one(tr, i, t)
        vals = [memo[p] for p in pairs]
        if not cache:
            memo.clear()
        return torch.tensor(vals, dtype=torch.float32)

    reward_fn.calls = 0
    return reward_fn


# =========================================================================================== plot
def policy_plot(probs, bins: Sequence[int], chosen: int | None = None, size: tuple = (256, 512)) -> torch.Tensor:
    """Bar chart of a policy: probs [n_bins] (or [1, n_bins]) over the timestep ``bins``; ``chosen`` (a timestep
    from ``bins``) is drawn in :data:`HIGHLIGHT` orange, the others blue. size = (H, W) pixels.
    Returns [H, W, 3] float32 in 0..1 (one ComfyUI IMAGE frame; add a batch axis for the node)."""
    from PIL import Image, ImageDraw, ImageFont

    p = torch.as_tensor(probs, dtype=torch.float32).detach().cpu()
    if p.ndim == 2 and p.shape[0] == 1:
        p = p[0]
    bins = [int(b) for b in bins]
    if p.ndim != 1 or p.numel() != len(bins) or len(bins) == 0:
        raise ValueError(f"probs must be [n_bins] matching the {len(bins)} bins, got shape {tuple(p.shape)}")
    if chosen is not None and int(chosen) not in bins:
        raise ValueError(f"chosen timestep {chosen} is not one of the bins {bins}")
    H, W = int(size[0]), int(size[1])
    if H < 64 or W < 64:
        raise ValueError(f"policy_plot size must be at least 64 x 64, got {size}")
    img = Image.new("RGB", (W, H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 34, 8, 22, H - 30
    n = len(bins)
    slot = (W - left - right) / n
    pmax = max(float(p.max()), 1e-6)
    top_val = min(1.0, math.ceil(pmax * 10) / 10)
    title = "DDPNet policy" + (f"  -  t = {int(chosen)}" if chosen is not None else "")
    d.text((left, 4), title, fill=(0, 0, 0), font=font)
    d.line([(left, top), (left, bottom), (W - right, bottom)], fill=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        d.text((2, y - 6), f"{top_val * frac:.2f}", fill=(80, 80, 80), font=font)
    label_every = max(1, math.ceil(30 / slot))
    kc = bins.index(int(chosen)) if chosen is not None else None
    for k, (b, v) in enumerate(zip(bins, p.tolist())):
        x0, x1 = left + k * slot + 0.15 * slot, left + (k + 1) * slot - 0.15 * slot
        y0 = bottom - max(0.0, v) / top_val * (bottom - top)
        colour = HIGHLIGHT if chosen is not None and b == int(chosen) else _BAR
        d.rectangle([x0, min(y0, bottom - 1), x1, bottom], fill=tuple(int(round(c * 255)) for c in colour))
        near_chosen = kc is not None and k != kc and abs(k - kc) < label_every
        if (k % label_every == 0 and not near_chosen) or k == kc:
            d.text(((x0 + x1) / 2 - d.textlength(str(b), font=font) / 2, bottom + 4), str(b), fill=(0, 0, 0),
                   font=font)
    d.text((W // 2 - 24, H - 13), "timestep", fill=(80, 80, 80), font=font)
    import numpy as np
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


# =========================================================================================== folder training
SAMPLE_KEYS = ("render_latents", "gt_latents", "image_latents")


def save_training_sample(path, render_latents: torch.Tensor, gt_latents: torch.Tensor,
                         image_latents: torch.Tensor) -> Path:
    """Write one training sample for :func:`train_from_folder` (atomic .safetensors). All three [1, T, C, h, w]
    x scaling factor, the leap sampler's layout (``leap.encode_conditioning`` gives render = video_latents of the
    coarse video and image_latents; gt = video_latents of the real video)."""
    from safetensors.torch import save_file

    t = {k: v.detach().cpu().contiguous() for k, v in zip(SAMPLE_KEYS, (render_latents, gt_latents, image_latents))}
    shapes = {k: tuple(v.shape) for k, v in t.items()}
    if len(set(shapes.values())) != 1 or len(shapes["render_latents"]) != 5:
        raise ValueError(f"render, gt and image latents must share one shape [1, T, C, h, w], got {shapes}")
    return atomic_write(path, lambda tmp: save_file(t, tmp, metadata={"format": "videoscene-ddpnet-sample"}))


def load_training_samples(folder) -> tuple[list, list, list, list[str]]:
    """(render, gt, image latents, file names) from every ``*.safetensors`` in ``folder`` (sorted by name).
    ValueError for an absent/empty folder or a file without the three keys / with mismatched shapes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"training sample folder {folder} does not exist; create it with one .safetensors per "
                         f"scene holding {', '.join(SAMPLE_KEYS)} (see save_training_sample)")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no training samples in {folder}: expected *.safetensors files holding "
                         f"{', '.join(SAMPLE_KEYS)} [1, T, C, h, w] each (see save_training_sample)")
    out = ([], [], [])
    for f in files:
        tensors, _ = _read_safetensors(f)
        missing = [k for k in SAMPLE_KEYS if k not in tensors]
        if missing:
            raise ValueError(f"training sample {f} lacks {missing} (has {sorted(tensors)}); each sample needs "
                             f"{', '.join(SAMPLE_KEYS)}")
        shapes = {k: tuple(tensors[k].shape) for k in SAMPLE_KEYS}
        if len(set(shapes.values())) != 1 or len(shapes["render_latents"]) != 5 or shapes["render_latents"][0] != 1:
            raise ValueError(f"training sample {f}: the three latents must share one shape [1, T, C, h, w], got "
                             f"{shapes}")
        for lst, k in zip(out, SAMPLE_KEYS):
            lst.append(tensors[k])
    return out[0], out[1], out[2], [f.name for f in files]


def _check_model_geometry(model, render: list, names: list[str]) -> None:
    C = model.latent_channels
    want = None
    if model.fixed_geometry:
        H, W = model.native_size
        sp = model.vae_scale_spatial
        want = (model.latent_frames(model.native_frames), C, H // sp, W // sp)
    for x, name in zip(render, names):
        if x.shape[2] != C:
            raise ValueError(f"training sample {name} has {x.shape[2]} latent channels, {model.name} uses {C}; "
                             f"encode the samples with this model's VAE")
        if want is not None and tuple(x.shape[1:]) != want:
            raise ValueError(f"training sample {name} has latents [T, C, h, w] = {tuple(x.shape[1:])}, but "
                             f"{model.name} only runs at {want} (learned positional embeddings); encode "
                             f"{model.native_frames} frames at {model.native_size[0]}x{model.native_size[1]}")


def train_from_folder(folder, out, model=None, steps: int = 300, lr: float = 1e-3, batch: int = 4,
                      explore: str = "sample", epsilon: float = 0.1, entropy: float = 0.01, seed: int = 0,
                      n_bins: int = 10, t_min: int = 100, t_max: int = 900, width: int = 32,
                      input_size: tuple = (8, 16, 24), baseline: str = "per_sample", checkpoint=None,
                      checkpoint_every: int = 50, resume: bool = True, progress: Progress | None = None,
                      grad_accum: int = 1,
                      distributed: bool | None = None) -> dict:
    """Train a latent DDPNet on a folder of samples with the frozen student as the reward; write it to ``out``.

    folder: ``*.safetensors`` files, one per scene, each with ``render_latents`` (the coarse render's VAE latent),
      ``gt_latents`` (the real video's) and ``image_latents`` ([first, zeros, last]), all [1, T, C, h, w] x scaling
      factor (write them with :func:`save_training_sample`). Absent/empty folder -> ValueError.
    out: the DDPNet .safetensors to write (atomic; only after training succeeded).
    model: the loaded :class:`~vscene_engine.video.model.VideoModel` whose transformer is the (VideoScene) student
      (``cogvideo_load.load_video_model``). Required.
    steps, lr, batch, explore ("sample" | "egreedy"), epsilon, entropy, seed, grad_accum, progress: see
    :func:`train_ddpnet`.
    n_bins, t_min, t_max (T'), width, input_size: the :class:`DDPNetConfig` (in_channels from the latents).
    baseline: "per_sample" (default here: scenes differ a lot in reachable MSE) or "global".
    checkpoint / checkpoint_every / resume: see :func:`train_ddpnet` (e.g. ``out`` + ".ckpt.safetensors").
    Rewards are cached per (scene, bin): at most N x n_bins transformer calls in total per process, whatever
    ``steps`` is.

    distributed (see :func:`train_ddpnet`): None = auto, so under torchrun every process trains its share of the
    global batch (world_size x ``batch`` x ``grad_accum``), calling the student for its own samples only:
    ``torchrun --nproc_per_node N -m vscene_engine train-ddpnet --model ... --data ... --out ...`` (every rank loads
    the student; on GPUs give each rank its own: the DDPNet goes to cuda:LOCAL_RANK with nccl). Only rank 0 writes
    ``out`` and the checkpoint; the others wait for the write. A process group this call initialised (from
    torchrun's env) is destroyed before it returns; one that was already initialised is left alone.
    Returns dict(path, history, n_samples, files, bins, transformer_calls (summed over the ranks), rank,
    world_size) on every rank.
    """
    import torch.distributed as dist

    if model is None:
        raise ValueError("train_from_folder needs the loaded video model (the frozen student) to compute rewards: "
                         "load it with cogvideo_load.load_video_model(base_dir, weights=...)")
    render, gt, image, names = load_training_samples(folder)
    _check_model_geometry(model, render, names)
    cfg = DDPNetConfig(in_channels=int(render[0].shape[2]), n_bins=int(n_bins), t_min=int(t_min), t_max=int(t_max),
                       width=int(width), input_size=tuple(input_size), kind="latent")
    nmax = model.schedule.num_train_timesteps
    if cfg.t_max >= nmax:
        raise ValueError(f"t_max {cfg.t_max} must be below the model's {nmax} training timesteps")
    had_group = dist.is_available() and dist.is_initialized()
    rank, world = dist_state(distributed)
    owned = world > 1 and not had_group  # destroy only a group this call created
    try:
        dev = _comm_device(world)
        net = DDPNet(cfg, seed=seed).to(dev if dev.type == "cuda" else "cpu")
        reward_fn = make_leap_reward(model, render, gt, image, seed=seed)
        samples = [r[0].permute(1, 0, 2, 3) for r in render]  # [1,T,C,h,w] -> [C,T,h,w]
        hist = train_ddpnet(net, samples, reward_fn, steps, lr=lr, batch=batch, explore=explore, epsilon=epsilon,
                            entropy=entropy, seed=seed, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, resume=resume, baseline=baseline,
                            grad_accum=grad_accum, distributed=world > 1)
        last = hist["reward"][-20:]
        meta = {"trained_on": Path(folder).name, "n_samples": len(samples), "steps": hist["steps"],
                "student": str(getattr(model, "name", "")), "final_mean_reward": sum(last) / max(1, len(last)),
                "greedy_histogram": hist["greedy_histogram"], "world_size": world}
        _rank0_write(lambda: save_ddpnet(net, out, extra_meta=meta), rank, world, dev, f"the DDPNet {out}")
        calls = torch.tensor([float(reward_fn.calls)], dtype=torch.float64)
        if world > 1:
            calls = calls.to(dev)
            dist.all_reduce(calls, op=dist.ReduceOp.SUM)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()
    return {"path": Path(out), "history": hist, "n_samples": len(samples), "files": names, "bins": cfg.bins(),
            "transformer_calls": int(calls.item()), "rank": rank, "world_size": world}
