"""Configuration of the MVSplat encoder (official ``EncoderCostVolumeCfg``, config/model/encoder/costvolume.yaml).

Entry point: :class:`MVSplatConfig`.

Field names follow the official yaml (``gaussian_adapter.*`` and ``opacity_mapping.*`` are flattened into
``gaussian_scale_min/max``, ``sh_degree`` and ``opacity_mapping_initial/final/warm_up``). Only the inference path of
the default model is implemented: ``use_epipolar_trans``, ``wo_depth_refine``, ``wo_cost_volume``,
``wo_cost_volume_refine`` and ``wo_backbone_cross_attn`` (the paper's ablations) must stay ``False``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Mapping

__all__ = ["MVSplatConfig"]


def _lcm(a: int, b: int) -> int:
    from math import gcd
    return a * b // gcd(a, b)


@dataclass
class MVSplatConfig:
    """Hyper-parameters of :class:`vscene_engine.prior.mvsplat.MVSplatEncoder` (defaults = costvolume.yaml).

    ``num_views`` is the number of context views the U-Nets' cross-view attention was built for (the official code
    reads it from ``dataset.view_sampler.num_context_views``; 2 for RealEstate10K). It is not visible in the weights;
    the forward pass must be called with exactly that many views whenever a U-Net has attention blocks.
    """

    d_feature: int = 128
    num_depth_candidates: int = 32
    num_surfaces: int = 1
    gaussians_per_pixel: int = 1
    gaussian_scale_min: float = 0.5
    gaussian_scale_max: float = 15.0
    sh_degree: int = 4
    opacity_mapping_initial: float = 0.0
    opacity_mapping_final: float = 0.0
    opacity_mapping_warm_up: int = 1
    multiview_trans_attn_split: int = 2
    costvolume_unet_feat_dim: int = 128
    costvolume_unet_channel_mult: tuple = (1, 1, 1)
    costvolume_unet_attn_res: tuple = ()
    depth_unet_feat_dim: int = 64
    depth_unet_attn_res: tuple = ()
    depth_unet_channel_mult: tuple = (1, 1, 1)
    downscale_factor: int = 4
    num_views: int = 2
    num_transformer_layers: int = 6
    ffn_dim_expansion: int = 4
    # ablation switches of the official config; only the default (all False) is implemented
    wo_depth_refine: bool = False
    wo_cost_volume: bool = False
    wo_backbone_cross_attn: bool = False
    wo_cost_volume_refine: bool = False
    use_epipolar_trans: bool = False

    def __post_init__(self) -> None:
        for name in ("costvolume_unet_channel_mult", "costvolume_unet_attn_res", "depth_unet_attn_res",
                     "depth_unet_channel_mult"):
            setattr(self, name, tuple(int(x) for x in getattr(self, name)))
        for name in ("wo_depth_refine", "wo_cost_volume", "wo_backbone_cross_attn", "wo_cost_volume_refine",
                     "use_epipolar_trans"):
            if getattr(self, name):
                raise ValueError(f"MVSplatConfig.{name}=True is an ablation of the official code that this port does "
                                 f"not implement; only the default model is supported")
        if self.downscale_factor not in (4, 8):
            raise ValueError(f"downscale_factor must be 4 or 8 (the CNN backbone's output stride), "
                             f"got {self.downscale_factor}")
        if not 0 <= self.sh_degree <= 4:
            raise ValueError(f"sh_degree must be in 0..4, got {self.sh_degree}")
        for name in ("d_feature", "num_depth_candidates", "num_surfaces", "gaussians_per_pixel",
                     "multiview_trans_attn_split", "costvolume_unet_feat_dim", "depth_unet_feat_dim", "num_views"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"MVSplatConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_surfaces != 1:
            raise ValueError("num_surfaces must be 1 (the official depth predictor only produces one surface)")
        if self.d_feature % 2:
            raise ValueError(f"d_feature must be even (sine position embedding), got {self.d_feature}")
        for name in ("costvolume_unet_feat_dim", "depth_unet_feat_dim"):
            ch = getattr(self, name)
            mult = self.costvolume_unet_channel_mult if name.startswith("cost") else self.depth_unet_channel_mult
            res = self.costvolume_unet_attn_res if name.startswith("cost") else self.depth_unet_attn_res
            if not mult:
                raise ValueError(f"{name[:-9]}_channel_mult must not be empty")
            if res and any((ch * m) % 32 for m in mult):
                raise ValueError(f"{name}*channel_mult must be divisible by 32 where attention is used "
                                 f"(32 channels per head)")

    # ------------------------------------------------------------------ presets
    @classmethod
    def re10k(cls) -> "MVSplatConfig":
        """The official RealEstate10K model: costvolume.yaml with the overrides of config/experiment/re10k.yaml."""
        return cls(
            num_depth_candidates=128,
            costvolume_unet_feat_dim=128,
            costvolume_unet_channel_mult=(1, 1, 1),
            costvolume_unet_attn_res=(4,),
            gaussians_per_pixel=1,
            depth_unet_feat_dim=32,
            depth_unet_attn_res=(16,),
            depth_unet_channel_mult=(1, 1, 1, 1, 1),
        )

    @classmethod
    def from_official_dict(cls, d: Mapping, num_views: int = 2) -> "MVSplatConfig":
        """Build from the official (nested) encoder config dict, i.e. costvolume.yaml after the experiment overrides
        (``gaussian_adapter`` and ``opacity_mapping`` sub-dicts; ``name``, ``visualizer``,
        ``unimatch_weights_path`` and ``shim_patch_size`` are ignored). Unknown keys raise ValueError."""
        d = dict(d)
        kw = {"num_views": num_views}
        ga = d.pop("gaussian_adapter", None) or {}
        for k in ("gaussian_scale_min", "gaussian_scale_max", "sh_degree"):
            if k in ga:
                kw[k] = ga[k]
        om = d.pop("opacity_mapping", None) or {}
        for k in ("initial", "final", "warm_up"):
            if k in om:
                kw[f"opacity_mapping_{k}"] = om[k]
        for k in ("name", "visualizer", "unimatch_weights_path", "shim_patch_size"):
            d.pop(k, None)
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in d if k not in names)
        if unknown:
            raise ValueError(f"unknown MVSplat encoder config keys: {unknown}")
        kw.update(d)
        return cls(**kw)

    def replace(self, **kw) -> "MVSplatConfig":
        return replace(self, **kw)

    # ------------------------------------------------------------------ derived sizes
    @property
    def d_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def gaussian_raw_channels(self) -> int:
        """Channels of the Gaussian head: per surface 2 (xy offset) + 3 (scale) + 4 (quaternion) + 3*d_sh."""
        return self.num_surfaces * (7 + 3 * self.d_sh + 2)

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this: the features are at 1/downscale resolution, split into
        ``multiview_trans_attn_split`` windows per side and fed to the cost-volume U-Net (len(mult)-1 halvings);
        the depth U-Net works at full resolution (len(mult)-1 halvings). 16 for the re10k model."""
        m = self.downscale_factor * self.multiview_trans_attn_split
        m = _lcm(m, self.downscale_factor * 2 ** (len(self.costvolume_unet_channel_mult) - 1))
        m = _lcm(m, 2 ** (len(self.depth_unet_channel_mult) - 1))
        return m

    # ------------------------------------------------------------------ from weights
    @classmethod
    def from_state_dict(cls, sd: Mapping, **overrides) -> "MVSplatConfig":
        """Infer the configuration from an encoder state dict (keys with or without the ``encoder.`` prefix; only the
        shapes are used, so meta tensors work).

        Determined by the weights: ``d_feature``, ``num_depth_candidates``, both U-Nets' feature dims, channel
        multipliers and attention resolutions, ``sh_degree`` (from the Gaussian head width), ``gaussians_per_pixel``,
        ``num_transformer_layers``, ``ffn_dim_expansion``. Not visible in the weights (taken from :meth:`re10k` unless
        given in ``overrides``): ``gaussian_scale_min/max``, opacity mapping, ``multiview_trans_attn_split``,
        ``downscale_factor`` (4 unless overridden), ``num_views``.

        Raises ValueError when the keys are not those of an MVSplat ``EncoderCostVolume``.
        """
        shapes = {}
        for k, v in sd.items():
            if k.startswith("encoder."):
                k = k[len("encoder."):]
            shapes[k] = tuple(v.shape)
        required = ("backbone.backbone.conv1.weight", "depth_predictor.corr_refine_net.0.weight",
                    "depth_predictor.regressor_residual.weight", "depth_predictor.proj_feature.weight",
                    "depth_predictor.to_gaussians.2.weight", "depth_predictor.to_disparity.2.weight",
                    "depth_predictor.refine_unet.0.weight")
        missing = [k for k in required if k not in shapes]
        if missing:
            sample = ", ".join(sorted(shapes)[:5]) or "<empty>"
            raise ValueError(f"not an MVSplat EncoderCostVolume state dict: missing {missing[:3]} "
                             f"(first keys found: {sample})")
        d_feature = shapes["backbone.backbone.conv2.weight"][0]
        n_depth = shapes["depth_predictor.regressor_residual.weight"][0]
        cv_dim = shapes["depth_predictor.corr_refine_net.0.weight"][0]
        dp_dim = shapes["depth_predictor.proj_feature.weight"][0]
        raw = shapes["depth_predictor.to_gaussians.2.weight"][0]
        d_sh_3 = raw - 9
        if d_sh_3 <= 0 or d_sh_3 % 3:
            raise ValueError(f"unexpected Gaussian head width {raw}")
        d_sh = d_sh_3 // 3
        sh_degree = int(round(d_sh ** 0.5)) - 1
        if (sh_degree + 1) ** 2 != d_sh:
            raise ValueError(f"Gaussian head width {raw} does not correspond to an SH degree")
        gpp = shapes["depth_predictor.to_disparity.2.weight"][0] // 2
        layers = {int(m.group(1)) for k in shapes
                  if (m := re.match(r"backbone\.transformer\.layers\.(\d+)\.", k))}
        n_layers = max(layers) + 1 if layers else 6
        mlp = shapes.get("backbone.transformer.layers.0.cross_attn_ffn.mlp.0.weight")
        ffn = mlp[0] // mlp[1] if mlp else 4

        def unet(prefix: str, model_channels: int):
            blocks = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"input_blocks\.(\d+)\.", k))}
            n_in = max(blocks) + 1  # 1 + levels + (levels - 1)
            levels = n_in // 2
            mult, attn = [], []
            idx, ds = 1, 1
            for level in range(levels):
                w = shapes[f"{prefix}input_blocks.{idx}.0.in_layers.0.weight"]
                mult.append(w[0] // model_channels)
                if f"{prefix}input_blocks.{idx}.1.qkv.weight" in shapes:
                    attn.append(ds)
                idx += 1
                if level != levels - 1:
                    idx += 1
                    ds *= 2
            return tuple(mult), tuple(attn)

        cv_mult, cv_attn = unet("depth_predictor.corr_refine_net.3.", cv_dim)
        dp_mult, dp_attn = unet("depth_predictor.refine_unet.3.", dp_dim)
        base = cls.re10k()
        kw = {f.name: getattr(base, f.name) for f in fields(cls)}
        kw.update(
            d_feature=d_feature, num_depth_candidates=n_depth, costvolume_unet_feat_dim=cv_dim,
            costvolume_unet_channel_mult=cv_mult, costvolume_unet_attn_res=cv_attn, depth_unet_feat_dim=dp_dim,
            depth_unet_channel_mult=dp_mult, depth_unet_attn_res=dp_attn, sh_degree=sh_degree,
            gaussians_per_pixel=gpp, num_transformer_layers=n_layers, ffn_dim_expansion=ffn,
        )
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}
