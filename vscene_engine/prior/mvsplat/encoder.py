"""MVSplat encoder (official src/model/encoder/encoder_costvolume.py, ``EncoderCostVolume``): posed context images
-> pixel-aligned 3D Gaussians. Entry points: :class:`MVSplatEncoder`, :func:`load_mvsplat`, :func:`to_gaussian_scene`.

Conventions of the inputs (as the official code):

* ``images [B, V, 3, H, W]`` RGB in 0..1;
* ``extrinsics [B, V, 4, 4]`` camera-to-world, OpenCV axes (+x right, +y down, +z forward);
* ``intrinsics [B, V, 3, 3]`` **normalized**: first row divided by the width, second by the height
  (fx/W, fy/H, cx/W, cy/H; a centred principal point is 0.5);
* ``near, far [B, V]`` depth range of the plane sweep (RealEstate10K model: 1 and 100).

Inference only: there is no training-only branch in this forward (the official forward has none that changes the
Gaussians either; its ``deterministic`` flag is unused by the cost-volume encoder, and nothing is sampled).
Opacity: the official ``map_pdf_to_opacity`` with exponent ``2**x``, ``x = initial + min(step / warm_up, 1) *
(final - initial)``; with the shipped ``initial = final = 0`` the exponent is 1 and opacity = density for every
``global_step``. ``global_step=None`` (default) means "fully warmed up" (x = final).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...core.gaussians import rotmat_to_quat
from ...io.checkpoints import state_dict_mismatch
from .adapter import GaussianAdapter, quaternion_xyzw_to_matrix
from .backbone import BackboneMultiview
from .config import MVSplatConfig
from .depth import DepthPredictorMultiView

__all__ = ["MVSplatEncoder", "load_mvsplat", "to_gaussian_scene"]


class MVSplatEncoder(nn.Module):
    """The official ``EncoderCostVolume`` (default, non-ablation model). Submodules ``backbone``,
    ``gaussian_adapter`` (no parameters) and ``depth_predictor`` carry exactly the official parameter names, so
    ``load_state_dict(official_sd, strict=True)`` works once the Lightning prefix ``encoder.`` is removed.
    """

    def __init__(self, cfg: MVSplatConfig | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else MVSplatConfig.re10k()
        self.cfg = cfg
        self.backbone = BackboneMultiview(cfg.d_feature, cfg.downscale_factor, cfg.num_transformer_layers,
                                          cfg.ffn_dim_expansion)
        self.gaussian_adapter = GaussianAdapter(cfg.gaussian_scale_min, cfg.gaussian_scale_max, cfg.sh_degree)
        self.depth_predictor = DepthPredictorMultiView(
            feature_channels=cfg.d_feature, upscale_factor=cfg.downscale_factor,
            num_depth_candidates=cfg.num_depth_candidates, costvolume_unet_feat_dim=cfg.costvolume_unet_feat_dim,
            costvolume_unet_channel_mult=cfg.costvolume_unet_channel_mult,
            costvolume_unet_attn_res=cfg.costvolume_unet_attn_res,
            gaussian_raw_channels=cfg.gaussian_raw_channels, gaussians_per_pixel=cfg.gaussians_per_pixel,
            num_views=cfg.num_views, depth_unet_feat_dim=cfg.depth_unet_feat_dim,
            depth_unet_attn_res=cfg.depth_unet_attn_res, depth_unet_channel_mult=cfg.depth_unet_channel_mult)

    # ------------------------------------------------------------------ helpers
    def map_pdf_to_opacity(self, pdf: torch.Tensor, global_step: int | None = None) -> torch.Tensor:
        c = self.cfg
        frac = 1.0 if global_step is None else min(global_step / c.opacity_mapping_warm_up, 1)
        x = c.opacity_mapping_initial + frac * (c.opacity_mapping_final - c.opacity_mapping_initial)
        e = 2 ** x
        return 0.5 * (1 - (1 - pdf) ** e + pdf ** (1 / e))

    def check_inputs(self, images, extrinsics, intrinsics, near, far):
        """Validate shapes and conventions; returns (near, far) broadcast to ``[B, V]``. Raises ValueError."""
        if not isinstance(images, torch.Tensor) or images.dim() != 5 or images.shape[2] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be [B, V, 3, H, W] (RGB in 0..1), got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point in 0..1, got {images.dtype}")
        if images.numel() and images.detach().amax().item() > 2.0:
            raise ValueError("images look like 0..255 values; MVSplat expects RGB in 0..1 (divide by 255)")
        b, v, _, h, w = images.shape
        if extrinsics.shape != (b, v, 4, 4):
            raise ValueError(f"extrinsics must be [B, V, 4, 4] = {[b, v, 4, 4]} camera-to-world matrices, "
                             f"got {tuple(extrinsics.shape)}")
        if intrinsics.shape != (b, v, 3, 3):
            raise ValueError(f"intrinsics must be [B, V, 3, 3] = {[b, v, 3, 3]}, got {tuple(intrinsics.shape)}")
        near = torch.as_tensor(near, dtype=images.dtype, device=images.device)
        far = torch.as_tensor(far, dtype=images.dtype, device=images.device)
        try:
            near = near.broadcast_to((b, v)) if near.dim() != 1 else near[:, None].broadcast_to((b, v))
            far = far.broadcast_to((b, v)) if far.dim() != 1 else far[:, None].broadcast_to((b, v))
        except RuntimeError:
            raise ValueError(f"near/far must be [B, V] = {[b, v]} (or broadcastable), got {tuple(near.shape)} and "
                             f"{tuple(far.shape)}") from None
        if not (near > 0).all() or not (far > near).all():
            raise ValueError("need 0 < near < far for every view")
        if v < 2:
            raise ValueError(f"MVSplat needs at least 2 context views, got {v}")
        cfg = self.cfg
        if (cfg.costvolume_unet_attn_res or cfg.depth_unet_attn_res) and v != cfg.num_views:
            raise ValueError(f"this model's U-Net attention joins exactly cfg.num_views={cfg.num_views} views; "
                             f"got {v} (set MVSplatConfig.num_views to change it)")
        m = cfg.size_multiple
        if h % m or w % m:
            raise ValueError(f"image height and width must be multiples of {m} for this model (downscale "
                             f"{cfg.downscale_factor} x attention split {cfg.multiview_trans_attn_split}, and "
                             f"2**(levels-1) of both U-Nets); got {h}x{w}, e.g. resize/crop to "
                             f"{max(m, h // m * m)}x{max(m, w // m * m)}")
        k = intrinsics.detach()
        if not torch.isfinite(k).all() or not torch.isfinite(extrinsics).all():
            raise ValueError("intrinsics/extrinsics contain NaN or inf")
        if (k[..., 0, 0].abs() > 10).any() or (k[..., 1, 1].abs() > 10).any() or (k[..., :2, 2].abs() > 10).any():
            raise ValueError("intrinsics look like pixel units (fx, fy or cx, cy > 10); MVSplat needs normalized "
                             "intrinsics: divide the first row by the image width and the second row by the height "
                             "(fx/W, fy/H, cx/W, cy/H)")
        if (k[..., 0, 0] <= 0).any() or (k[..., 1, 1] <= 0).any():
            raise ValueError("intrinsics must have positive focal lengths")
        return near, far

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor, near, far,
                global_step: int | None = None) -> dict:
        """Predict Gaussians; see the module docstring for the input conventions.

        Returns a dict (G = V * H * W * gaussians_per_pixel, ordered view, row, column, Gaussian):

        * ``means [B, G, 3]``, ``covariances [B, G, 3, 3]`` (world), ``opacities [B, G]``;
        * ``harmonics [B, G, 3, K]`` (official layout: RGB, then K = (d+1)^2 coefficients; world frame);
        * ``scales [B, G, 3]`` linear standard deviations (world units) along the Gaussian's own axes;
        * ``rotations [B, G, 4]`` wxyz world-frame quaternions (``R S S^T R^T`` reproduces ``covariances``);
        * ``rotations_camera_xyzw [B, G, 4]`` the official (camera-frame, xyzw) quaternions;
        * ``depths [B, V, H, W]`` (``[B, V, H, W, gpp]`` when gaussians_per_pixel > 1): the predicted depth, in
          [near, far]. The cost volume treats it as z-depth, but the official adapter places each Gaussian at this
          distance along the *unit* ray through its pixel (reproduced as is; the two differ by the cosine of the
          ray's angle to the optical axis).
        """
        near, far = self.check_inputs(images, extrinsics, intrinsics, near, far)
        cfg = self.cfg
        b, v, _, h, w = images.shape
        dtype = next(self.parameters()).dtype
        images, extrinsics, intrinsics = images.to(dtype), extrinsics.to(dtype), intrinsics.to(dtype)
        near, far = near.to(dtype), far.to(dtype)

        trans, cnn = self.backbone(images, attn_splits=cfg.multiview_trans_attn_split)
        depths, densities, raw = self.depth_predictor(trans, intrinsics, extrinsics, near, far, images, cnn)
        gpp = cfg.gaussians_per_pixel

        # pixel centres in normalized image coordinates, shifted by the predicted sub-pixel offsets
        ys = (torch.arange(h, device=images.device) + 0.5) / h
        xs = (torch.arange(w, device=images.device) + 0.5) / w
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        xy = torch.stack([gx, gy], dim=-1).reshape(h * w, 1, 2)
        raw = raw.reshape(b, v, h * w, cfg.num_surfaces, -1)  # b v r srf c
        offset = raw[..., :2].sigmoid()
        pixel_size = 1 / torch.tensor((w, h), dtype=torch.float32, device=images.device)
        xy = xy + (offset - 0.5) * pixel_size

        g = self.gaussian_adapter(
            extrinsics[:, :, None, None, None], intrinsics[:, :, None, None, None], xy[..., None, :],
            depths, self.map_pdf_to_opacity(densities, global_step) / gpp, raw[..., None, 2:], (h, w))

        n = v * h * w * cfg.num_surfaces * gpp
        scales = g["scales"].reshape(b, n, 3)
        rot_cam = g["rotations"].reshape(b, n, 4)
        # world-frame rotation: camera-to-world rotation composed with the camera-frame one
        r_cam = quaternion_xyzw_to_matrix(g["rotations"])
        r_world = extrinsics[:, :, None, None, None, :3, :3] @ r_cam
        out = {
            "means": g["means"].reshape(b, n, 3),
            "covariances": g["covariances"].reshape(b, n, 3, 3),
            "harmonics": g["harmonics"].reshape(b, n, 3, cfg.d_sh),
            "opacities": g["opacities"].reshape(b, n),
            "scales": scales,
            "rotations": rotmat_to_quat(r_world).reshape(b, n, 4),
            "rotations_camera_xyzw": rot_cam,
            "depths": depths.reshape(b, v, h, w, gpp)[..., 0] if gpp == 1 else depths.reshape(b, v, h, w, gpp),
        }
        return out


def _strip_prefix(sd: dict) -> dict:
    if any(k.startswith("encoder.") for k in sd):
        return {k[len("encoder."):]: t for k, t in sd.items() if k.startswith("encoder.")}
    return dict(sd)


def load_mvsplat(path, device="cpu", dtype: torch.dtype = torch.float32, config: MVSplatConfig | None = None,
                 **overrides) -> MVSplatEncoder:
    """Load an MVSplat encoder from ``.safetensors`` (keys with or without ``encoder.``) or a Lightning ``.ckpt``
    (read by :func:`vscene_engine.io.checkpoints.read_state_dict`: PyTorch's weights-only unpickler, inert stand-ins).

    The config is inferred with :meth:`MVSplatConfig.from_state_dict` (``overrides`` are passed to it) unless
    ``config`` is given. Loading is strict; a mismatch raises ValueError listing the first missing / unexpected /
    mis-shaped keys. Returns the encoder in eval mode on ``device`` with ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MVSplat weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        from ...io import checkpoints as safe_ckpt  # imported lazily: weights-only reading of Lightning checkpoints
        sd = safe_ckpt.read_state_dict(str(path), prefix="encoder.")
    sd = _strip_prefix(sd)
    try:
        cfg = config if config is not None else MVSplatConfig.from_state_dict(sd, **overrides)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path.name}: cannot read an MVSplat encoder config from the weights: {e}") from None
    with torch.device("meta"):
        model = MVSplatEncoder(cfg)
    ref = model.state_dict()
    problem = state_dict_mismatch(ref, sd)
    if problem:
        raise ValueError(f"{path.name} does not match the MVSplat encoder ({cfg}): {problem}")
    model = MVSplatEncoder(cfg)
    model.load_state_dict(sd, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def to_gaussian_scene(out: dict, b: int = 0):
    """Batch element ``b`` of :meth:`MVSplatEncoder.forward`'s output as a
    :class:`vscene_engine.core.gaussians.GaussianScene` (means, linear scales, wxyz world quaternions, opacities [N],
    sh [N, K, 3] = harmonics transposed).

    SH basis: MVSplat's harmonics are evaluated by its renderer (diff-gaussian-rasterization) with the INRIA 3DGS
    basis, which is also :mod:`vscene_engine.core.sh`'s, so they are used as they are. (The network rotates them to world
    with e3nn's Wigner-D, whose real basis differs from 3DGS's by the order and signs of the odd-degree functions; the
    weights were trained with exactly that transform, so no basis change is applied here.)
    """
    from ...core.gaussians import GaussianScene
    return GaussianScene(
        means=out["means"][b],
        scales=out["scales"][b],
        quats=out["rotations"][b],
        opacities=out["opacities"][b],
        sh=out["harmonics"][b].transpose(-1, -2).contiguous(),
    )
