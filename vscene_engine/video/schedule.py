"""The noise schedule of a CogVideoX video model: one :class:`NoiseSchedule` built once from the diffusers scheduler
config, and the leap timestep :data:`REFERENCE_TIMESTEP`.

Entry point: ``NoiseSchedule.from_config(scheduler_config)`` (``VideoModel.schedule`` holds the one built at load).
Every sampler and trainer (leap, teacher DDIM, consistency distillation, DDPNet rewards, 3D-aware refine, Diffusion²)
reads the schedule from it; nobody re-reads the raw dict.

Defaults: a key missing from the config takes the default of diffusers' ``CogVideoXDDIMScheduler.__init__``
(:data:`DIFFUSERS_DEFAULTS`; e.g. ``prediction_type`` "epsilon", ``snr_shift_scale`` 3.0, ``timestep_spacing``
"leading", ``rescale_betas_zero_snr`` False), i.e. exactly what diffusers does with the same ``scheduler_config.json``.
The real CogVideoX configs spell every key out (``cogvideo_load.COGVIDEOX_5B_SCHEDULER_CONFIG``: v_prediction,
snr_shift_scale 1.0, zero-terminal-SNR, trailing spacing), so the defaults only matter for hand-written configs.

Variance-preserving math (diffusers conventions), a_t = alphas_cumprod[t] ("alpha bar"):
  forward      x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps                      (:meth:`NoiseSchedule.add_noise`)
  v target     v   = sqrt(a_t) eps - sqrt(1 - a_t) x0                      (:meth:`NoiseSchedule.velocity`)
  x0 from v    x0  = sqrt(a_t) x_t - sqrt(1 - a_t) v
  x0 from eps  x0  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t);  "sample" prediction: x0 = output
  DDIM (eta 0) x_prev = sqrt((1 - a_p) / (1 - a_t)) x_t + (sqrt(a_p) - sqrt(a_t) sqrt((1 - a_p) / (1 - a_t))) x0
               with a_p = a_{t - N // steps}, or 1 (``set_alpha_to_one``) / a_0 past the end
  sigma level  sigma_t = sqrt((1 - a_t) / a_t)  (the VE / k-diffusion noise level of x_t / sqrt(a_t))

Precision, as diffusers: ``add_noise`` / ``velocity`` / ``x0_from_output`` cast a_t to the sample's dtype before the
square roots (``add_noise`` / ``get_velocity`` semantics; this matters in bf16); ``ddim_x0`` / ``ddim_update`` keep
the scalar coefficients in the schedule's precision (``step`` semantics). Timesteps ``t`` are a Python int (0-d
coefficients) or a tensor [B] of per-sample timesteps (coefficients shaped [B, 1, ...] against samples [B, ...]).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

__all__ = ["REFERENCE_TIMESTEP", "DIFFUSERS_DEFAULTS", "PREDICTION_TYPES", "NoiseSchedule", "alphas_cumprod",
           "add_noise", "velocity", "x0_from_output", "ddim_timesteps"]

#: VideoScene's leap timestep: the reference calls ``video_gen(..., noise_timestep=550)``, which draws
#: ``randint(549, 550)`` = 549 (its demo uses 459).
REFERENCE_TIMESTEP = 549

#: ``diffusers.CogVideoXDDIMScheduler.__init__`` defaults (diffusers 0.30 - 0.42): what a missing config key means.
DIFFUSERS_DEFAULTS: dict = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "trained_betas": None, "clip_sample": True, "set_alpha_to_one": True, "steps_offset": 0,
    "prediction_type": "epsilon", "clip_sample_range": 1.0, "sample_max_value": 1.0, "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False, "snr_shift_scale": 3.0,
}

PREDICTION_TYPES = ("v_prediction", "epsilon", "sample")  # what the model output is
TIMESTEP_SPACINGS = ("trailing", "leading", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


# =========================================================================================== ᾱ from the config
def _resolve(cfg: dict | None) -> dict:
    """The config with diffusers' defaults for missing (or None) keys; validated (clear errors)."""
    out = dict(DIFFUSERS_DEFAULTS)
    out.update({k: v for k, v in (cfg or {}).items() if v is not None or k == "trained_betas"})
    if out["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {out['prediction_type']!r} in the scheduler config "
                         f"(one of {PREDICTION_TYPES})")
    if out["timestep_spacing"] not in TIMESTEP_SPACINGS:
        raise ValueError(f"unsupported timestep_spacing {out['timestep_spacing']!r} in the scheduler config "
                         f"(one of {TIMESTEP_SPACINGS})")
    if out["trained_betas"] is None and out["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(f"unsupported beta_schedule {out['beta_schedule']!r} in the scheduler config "
                         f"(one of {BETA_SCHEDULES}, or trained_betas)")
    if int(out["num_train_timesteps"]) < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {out['num_train_timesteps']}")
    return out


def alphas_cumprod(cfg: dict | None) -> torch.Tensor:
    """[num_train_timesteps] cumulative alphas ᾱ of a CogVideoX DDIM/DPM scheduler config (missing keys: diffusers'
    defaults, :data:`DIFFUSERS_DEFAULTS`).

    betas (linear | scaled_linear | squaredcos_cap_v2 | trained_betas) -> cumprod(1 - betas) -> SNR shift
    ``a / (s + (1 - s) a)`` with ``snr_shift_scale`` s (SD3) -> optional zero-terminal-SNR rescale (Lin et al. 2023,
    Alg. 1). Precision as diffusers' ``CogVideoXDDIMScheduler``: scaled_linear betas in float64 (so the result is
    float64), the others float32.
    """
    c = _resolve(cfg)
    n = int(c["num_train_timesteps"])
    b0, b1 = float(c["beta_start"]), float(c["beta_end"])
    if c["trained_betas"] is not None:
        betas = torch.tensor(c["trained_betas"], dtype=torch.float32)
    elif c["beta_schedule"] == "linear":
        betas = torch.linspace(b0, b1, n, dtype=torch.float32)
    elif c["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=torch.float64) ** 2
    else:  # squaredcos_cap_v2 (GLIDE cosine), diffusers' betas_for_alpha_bar with max_beta 0.999
        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)
    acp = torch.cumprod(1.0 - betas, dim=0)
    s = float(c["snr_shift_scale"])
    acp = acp / (s + (1 - s) * acp)
    if c["rescale_betas_zero_snr"]:
        r = acp.sqrt()
        r0, rT = r[0].clone(), r[-1].clone()
        r = (r - rT) * (r0 / (r0 - rT))
        acp = r ** 2
    return acp


# =========================================================================================== VP identities
def _coefs(acp: torch.Tensor, t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(a_t), sqrt(1 - a_t)) computed in ``like``'s dtype (diffusers ``add_noise`` semantics).

    ``t``: an int (0-d results) or a tensor [B] of per-sample timesteps (results shaped [B, 1, ...] to broadcast
    against ``like`` [B, ...])."""
    a = acp.to(device=like.device, dtype=like.dtype)
    if isinstance(t, torch.Tensor) and t.ndim > 0:
        a = a[t.to(like.device).long()].reshape(-1, *([1] * (like.ndim - 1)))
    else:
        a = a[int(t)]
    return a ** 0.5, (1 - a) ** 0.5


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """q(x_t | x0): sqrt(a_t) x0 + sqrt(1 - a_t) eps; ``t`` an int or per-sample timesteps [B] (x0 [B, ...])."""
    sa, sb = _coefs(acp, t, x0)
    return sa * x0 + sb * eps


def velocity(x0: torch.Tensor, eps: torch.Tensor, t, acp: torch.Tensor) -> torch.Tensor:
    """The v-prediction target sqrt(a_t) eps - sqrt(1 - a_t) x0 (``t`` an int or per-sample timesteps [B])."""
    sa, sb = _coefs(acp, t, x0)
    return sa * eps - sb * x0


def x0_from_output(out: torch.Tensor, x_t: torch.Tensor, t, acp: torch.Tensor, prediction: str) -> torch.Tensor:
    """x0 from a v-, epsilon- or sample-prediction ``out`` at timestep t (an int or per-sample timesteps [B])."""
    if prediction == "v_prediction":
        sa, sb = _coefs(acp, t, out)
        return sa * x_t - sb * out
    if prediction == "epsilon":
        sa, sb = _coefs(acp, t, x_t)
        return (x_t - sb * out) / sa
    if prediction == "sample":
        return out
    raise ValueError(f"unsupported prediction_type {prediction!r} (one of {PREDICTION_TYPES})")


# =========================================================================================== DDIM timesteps
def ddim_timesteps(steps: int, cfg: dict | None, start: int | None = None) -> list[int]:
    """DDIM timesteps of diffusers' ``set_timesteps`` for the config's ``timestep_spacing`` ("trailing" as CogVideoX:
    999, 979, ... for 50 steps; "leading" + ``steps_offset``; "linspace"). With ``start`` the steps below ``start``
    are kept, preceded by ``start`` itself (SDEdit from a noised video)."""
    c = _resolve(cfg)
    n = int(c["num_train_timesteps"])
    steps = int(steps)
    if not 1 <= steps <= n:
        raise ValueError(f"DDIM steps must be in 1..{n}, got {steps}")
    if c["timestep_spacing"] == "trailing":
        ratio = n / steps
        ts = [int(round(x)) - 1 for x in _arange_desc(n, ratio)]
    elif c["timestep_spacing"] == "leading":
        ratio = n // steps
        ts = [i * ratio + int(c["steps_offset"]) for i in range(steps)][::-1]
    else:
        ts = [int(round(i * (n - 1) / (steps - 1))) if steps > 1 else 0 for i in range(steps)][::-1]
    if start is not None:
        ts = [int(start)] + [t for t in ts if t < int(start)]
    return ts


def _arange_desc(n: int, ratio: float) -> list[float]:
    """np.arange(n, 0, -ratio) in float64."""
    out, k = [], 0
    while True:
        x = n - k * ratio
        if x <= 0:
            break
        out.append(x)
        k += 1
    return out


# =========================================================================================== the object
@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A CogVideoX VP noise schedule (diffusers ``CogVideoXDDIMScheduler`` math), built once by :meth:`from_config`.

    config: the resolved scheduler config (every key of :data:`DIFFUSERS_DEFAULTS` present; read it as
    ``schedule.config[...]``, never with ``.get(key, default)``).
    alphas_cumprod: [num_train_timesteps] ᾱ (float64 for scaled_linear betas, as diffusers), cpu.
    """

    config: dict
    alphas_cumprod: torch.Tensor

    @classmethod
    def from_config(cls, cfg: dict | None = None) -> "NoiseSchedule":
        """From a diffusers ``scheduler_config.json`` dict (missing keys: diffusers' defaults; None: all defaults)."""
        c = _resolve(cfg)
        return cls(config=c, alphas_cumprod=alphas_cumprod(c))

    # ------------------------------------------------------------------------------------ config
    @property
    def prediction_type(self) -> str:
        return str(self.config["prediction_type"])

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config["num_train_timesteps"])

    @property
    def timestep_spacing(self) -> str:
        return str(self.config["timestep_spacing"])

    @property
    def final_alpha_cumprod(self) -> torch.Tensor:
        """ᾱ past the last DDIM step: 1 (``set_alpha_to_one``) or a_0, in the schedule's dtype (0-d)."""
        if self.config["set_alpha_to_one"]:
            return torch.tensor(1.0, dtype=self.alphas_cumprod.dtype)
        return self.alphas_cumprod[0]

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over ᾱ's bytes (identifies the schedule in checkpoints)."""
        return hashlib.sha256(self.alphas_cumprod.numpy().tobytes()).hexdigest()[:16]

    def check_timestep(self, t: int, what: str = "timestep") -> int:
        """``t`` as an int, or a clear ValueError unless 1 <= t < num_train_timesteps."""
        n = self.num_train_timesteps
        if not 1 <= int(t) < n:
            raise ValueError(f"{what} must be in 1..{n - 1}, got {t}")
        return int(t)

    # ------------------------------------------------------------------------------------ levels
    def alpha_bar(self, t) -> torch.Tensor:
        """a_t = ᾱ[t] in the schedule's dtype: 0-d for an int, [B] for a tensor of timesteps."""
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            return self.alphas_cumprod[t.cpu().long()]
        return self.alphas_cumprod[int(t)]

    def sigma(self, t) -> torch.Tensor:
        """The VE (k-diffusion) noise level sqrt((1 - a_t) / a_t) of x_t / sqrt(a_t), float64 (inf at zero SNR)."""
        a = self.alpha_bar(t).double()
        return ((1 - a) / a).sqrt()

    def sigmas(self, timesteps) -> torch.Tensor:
        """[n] float64 sigma levels of a timestep list (e.g. :meth:`timesteps`)."""
        return self.sigma(torch.as_tensor(list(timesteps), dtype=torch.long))

    # ------------------------------------------------------------------------------------ forward / prediction
    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (coefficients in x0's dtype, as diffusers ``add_noise``)."""
        return add_noise(x0, eps, t, self.alphas_cumprod)

    def velocity(self, x0: torch.Tensor, eps: torch.Tensor, t) -> torch.Tensor:
        """v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (diffusers ``get_velocity``)."""
        return velocity(x0, eps, t, self.alphas_cumprod)

    def x0_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """x0 from the model output under this schedule's ``prediction_type`` (coefficients in the tensors' dtype)."""
        return x0_from_output(out, x_t, t, self.alphas_cumprod, self.prediction_type)

    # ------------------------------------------------------------------------------------ DDIM
    def timesteps(self, steps: int, start: int | None = None) -> list[int]:
        """DDIM timesteps for ``steps`` (see :func:`ddim_timesteps`)."""
        return ddim_timesteps(steps, self.config, start=start)

    def prev_alpha_bar(self, t: int, steps: int) -> torch.Tensor:
        """a_p of the DDIM step from ``t`` with ``steps`` inference steps: ᾱ[t - N // steps] or the final ᾱ."""
        prev = int(t) - self.num_train_timesteps // int(steps)
        return self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod

    def ddim_x0(self, out: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """x0 of diffusers' ``CogVideoXDDIMScheduler.step`` (scalar a_t in the schedule's precision)."""
        a_t = self.alphas_cumprod[int(t)]
        if self.prediction_type == "v_prediction":
            return a_t ** 0.5 * x_t - (1 - a_t) ** 0.5 * out
        if self.prediction_type == "epsilon":
            return (x_t - (1 - a_t) ** 0.5 * out) / a_t ** 0.5
        return out

    def ddim_update(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, steps: int) -> torch.Tensor:
        """x_prev of a DDIM (eta = 0) step from x_t at ``t`` given x0 (diffusers ``step``'s ``prev_sample``)."""
        a_t = self.alphas_cumprod[int(t)]
        a_p = self.prev_alpha_bar(t, steps)
        at = ((1 - a_p) / (1 - a_t)) ** 0.5
        bt = a_p ** 0.5 - a_t ** 0.5 * at
        return at * x_t + bt * x0

    def ddim_step(self, out: torch.Tensor, x_t: torch.Tensor, t: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_prev, x0) = diffusers ``CogVideoXDDIMScheduler.step(out, t, x_t)`` after ``set_timesteps(steps)``."""
        x0 = self.ddim_x0(out, x_t, t)
        return self.ddim_update(x_t, x0, t, steps), x0
