"""Image losses and metrics for fitting Gaussian scenes.

Entry points: :func:`l1`, :func:`ssim`, :func:`dssim`, :func:`psnr`, :func:`photometric_loss`.

Images follow the engine layout (DESIGN.md): float tensors ``[N, H, W, C]`` in [0, 1] (a single ``[H, W, C]`` image
is accepted and treated as ``N = 1``). Everything is differentiable torch.

SSIM is the Wang et al. (2004) / 3DGS definition: an 11x11 Gaussian window with sigma 1.5 (normalised to sum 1),
``C1 = 0.01**2``, ``C2 = 0.03**2`` (data range 1), per-channel statistics, applied as two separable 1-D convolutions.
``padding="same"`` (the default) zero-pads by 5 pixels like 3DGS's ``utils/loss_utils.ssim`` (``F.conv2d(...,
padding=window_size // 2)``), so numbers match what 3DGS trains on and reports; ``padding="valid"`` averages only
the ``(H-10) x (W-10)`` positions where the window lies fully inside the image (the scikit-image / Wang et al.
reference convention; needs H, W >= 11).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["l1", "ssim", "dssim", "psnr", "photometric_loss", "gaussian_window"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2


def _as_batch(img: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor [N,H,W,C], got {type(img).__name__}")
    if img.dim() == 3:
        img = img[None]
    if img.dim() != 4:
        raise ValueError(f"{name} must have shape [N,H,W,C] (or [H,W,C]), got {tuple(img.shape)}")
    if not img.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor in [0,1], got {img.dtype}; convert with "
                         f".float() / 255")
    return img


def _pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(a, "img_a"), _as_batch(b, "img_b")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; resize one of them first")
    return a, b


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32,
                    device=None) -> torch.Tensor:
    """1-D Gaussian taps ``[size]`` centred on the middle tap, normalised to sum 1."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    w = torch.exp(-(x * x) / (2.0 * sigma * sigma))
    return (w / w.sum()).to(dtype=dtype, device=device)


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all elements (scalar)."""
    pred, target = _pair(pred, target)
    return (pred - target).abs().mean()


def _blur(x: torch.Tensor, w: torch.Tensor, pad: int) -> torch.Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]`` with 1-D taps ``w`` (depthwise, zero padding ``pad``)."""
    C = x.shape[1]
    k = w.numel()
    wx = w.view(1, 1, 1, k).expand(C, 1, 1, k)
    wy = w.view(1, 1, k, 1).expand(C, 1, k, 1)
    x = F.conv2d(x, wx, padding=(0, pad), groups=C)
    return F.conv2d(x, wy, padding=(pad, 0), groups=C)


def ssim_map(img_a: torch.Tensor, img_b: torch.Tensor, *, padding: str = "same", window_size: int = SSIM_WINDOW,
             sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-pixel, per-channel SSIM map ``[N, H', W', C]`` (``H' = H`` for "same", ``H - window_size + 1`` for
    "valid")."""
    a, b = _pair(img_a, img_b)
    if padding not in ("same", "valid"):
        raise ValueError(f"ssim: padding must be 'same' or 'valid', got {padding!r}")
    H, W = a.shape[1], a.shape[2]
    if padding == "valid" and (H < window_size or W < window_size):
        raise ValueError(f"ssim: padding='valid' needs images of at least {window_size}x{window_size}, got {W}x{H}; "
                         f"use padding='same'")
    pad = window_size // 2 if padding == "same" else 0
    w = gaussian_window(window_size, sigma, dtype=a.dtype, device=a.device)
    x = a.permute(0, 3, 1, 2)
    y = b.permute(0, 3, 1, 2)
    C = x.shape[1]
    if x.requires_grad and not y.requires_grad and torch.is_grad_enabled():
        # fitting: the target's statistics need no backward, so blur them outside the graph (the same numbers, as
        # the depthwise blur treats every channel on its own; the backward then blurs 3 statistics instead of 5)
        mu_x, e_xx, e_xy = _blur(torch.cat([x, x * x, x * y], 1), w, pad).split(C, 1)
        with torch.no_grad():
            mu_y, e_yy = _blur(torch.cat([y, y * y], 1), w, pad).split(C, 1)
    else:  # one conv call for the five statistics: stack along the channel axis
        mu_x, mu_y, e_xx, e_yy, e_xy = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), w, pad).split(C, 1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    s_xx, s_yy, s_xy = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    num = (2 * mu_xy + SSIM_C1) * (2 * s_xy + SSIM_C2)
    den = (mu_xx + mu_yy + SSIM_C1) * (s_xx + s_yy + SSIM_C2)
    return (num / den).permute(0, 2, 3, 1)


def ssim(img_a: torch.Tensor, img_b: torch.Tensor, *, padding: str = "same", reduction: str = "mean") -> torch.Tensor:
    """Structural similarity of ``img_a`` and ``img_b`` ``[N, H, W, C]`` in [0, 1].

    ``padding``: "same" (3DGS, zero padding, default) or "valid" (window fully inside). ``reduction``: "mean" ->
    scalar mean over images, pixels and channels; "none" -> ``[N]`` per-image means.
    """
    m = ssim_map(img_a, img_b, padding=padding)
    if reduction == "mean":
        return m.mean()
    if reduction == "none":
        return m.flatten(1).mean(1)
    raise ValueError(f"ssim: reduction must be 'mean' or 'none', got {reduction!r}")


def dssim(img_a: torch.Tensor, img_b: torch.Tensor, *, padding: str = "same") -> torch.Tensor:
    """Structural dissimilarity ``(1 - SSIM) / 2`` (scalar, in [0, 1])."""
    return (1.0 - ssim(img_a, img_b, padding=padding)) / 2.0


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, *, max_val: float = 1.0,
         reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, computed per image and then averaged (the NeRF/3DGS reporting convention).

    ``a, b``: ``[N, H, W, C]`` (or ``[H, W, C]``). ``mask``: optional ``[N, H, W]`` / ``[N, H, W, 1]`` (or without
    ``N``) bool or float weights; the MSE of an image is ``sum(m (a-b)^2) / (C sum(m))``. ``reduction``: "mean"
    (scalar) or "none" (``[N]``). Identical images give ``inf``; an all-zero mask raises ValueError.
    """
    a, b = _pair(a, b)
    err = (a - b).pow(2)
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = torch.as_tensor(mask, device=a.device).to(a.dtype)
        n, h, w = a.shape[:3]
        shp = tuple(m.shape)
        if shp in ((n, h, w), (h, w)):
            m = m.unsqueeze(-1)
        elif shp not in ((n, h, w, 1), (h, w, 1)):
            raise ValueError(f"psnr: mask shape {shp} does not match images {tuple(a.shape)}; give [N,H,W] or "
                             f"[N,H,W,1]")
        m = m.expand(n, h, w, 1)
        wsum = m.flatten(1).sum(1) * a.shape[-1]
        if bool((wsum <= 0).any()):
            raise ValueError("psnr: the mask selects no pixel in at least one image")
        mse = (err * m).flatten(1).sum(1) / wsum
    out = 10.0 * torch.log10(max_val ** 2 / mse)
    if reduction == "mean":
        return out.mean()
    if reduction == "none":
        return out
    raise ValueError(f"psnr: reduction must be 'mean' or 'none', got {reduction!r}")


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """``(1 - lambda) * L1 + lambda * D-SSIM`` with ``D-SSIM = (1 - SSIM) / 2`` (SSIM with "same" padding).

    Note: 3DGS's training loss uses ``1 - SSIM`` (no ``/2``), i.e. twice the SSIM weight of this definition at the
    same ``lambda``.
    """
    if not 0.0 <= float(lambda_dssim) <= 1.0:
        raise ValueError(f"lambda_dssim must be in [0, 1], got {lambda_dssim}")
    loss = l1(pred, target)
    if lambda_dssim > 0:
        loss = (1.0 - lambda_dssim) * loss + lambda_dssim * dssim(pred, target)
    return loss

