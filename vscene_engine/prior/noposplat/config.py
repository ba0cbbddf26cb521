"""Configuration of the NoPoSplat network (cvg/NoPoSplat ``EncoderNoPoSplat`` with the ``croco`` backbone).

Entry point: :class:`NoPoSplatConfig` (``NoPoSplatConfig.release(256)`` / ``.release(512)`` / ``.small()``).

The released checkpoints (re10k.ckpt, acid.ckpt, mixRe10kDl3dv.ckpt: 256x256; mixRe10kDl3dv_512x512.ckpt: 512x512)
all use ONE architecture, the official ``croco_params['ViTLarge_BaseDecoder']`` with the settings of
config/model/encoder/noposplat.yaml, config/model/encoder/backbone/croco.yaml and config/experiment/re10k.yaml:

* CroCo ViT-L encoder: patch 16, 1024 wide, 24 blocks, 16 heads, MLP ratio 4, LayerNorm eps 1e-6, 2D RoPE (freq 100);
* two asymmetric cross-attention decoders (``dec_blocks`` for view 1, ``dec_blocks2`` for view 2): 768 wide, 12 blocks,
  12 heads;
* intrinsics embedded as one extra encoder token (``intrinsics_embed_loc='encoder'``, ``type='token'``): a
  ``Linear(9, 1024)`` of the row-major NORMALIZED 3x3 intrinsics;
* DPT heads (feature 256, layer dims 96/192/384/768, hooks ``[0, D/2, 3D/4, D]`` of the decoder outputs): one for
  3D points (``exp`` depth mode, no confidence) and one ``dpt_gs`` head for the Gaussian parameters per view;
* Gaussian adapter ``UnifiedGaussianAdapter``: SH degree 4, scales ``0.001 * softplus`` clamped at 0.3, opacity
  mapping initial = final = 0 (the identity formula), one Gaussian per pixel.

The two resolutions differ only in the input size (the weights have the same shapes), so ``image_size`` is not
visible in the weights: a 512 model must be configured with ``image_size=512`` (file name hint, see
:func:`NoPoSplatConfig.from_state_dict`).

Several sizes are hard-coded in the official code and therefore fixed here too (``intrinsics_embed_dim`` = 1024, the
DPT ``feature_dim`` = 256 and ``layer_dims``), and the official DPT head factory requires ``dec_depth > 9``. The
``small`` config keeps those and shrinks the rest (1 encoder block, a 128-wide decoder); it exists for the parity
test. ``tiny`` also shrinks the hard-coded sizes (fast tests of loading and the prior only).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

__all__ = ["NoPoSplatConfig", "RELEASE_FILES"]

# file names of the official release and the input size each model was trained at
RELEASE_FILES = {
    "re10k.ckpt": 256,
    "acid.ckpt": 256,
    "mixRe10kDl3dv.ckpt": 256,
    "mixRe10kDl3dv_512x512.ckpt": 512,
}


@dataclass
class NoPoSplatConfig:
    """Hyper-parameters of :class:`vscene_engine.prior.noposplat.NoPoSplatNet` (defaults = the released model).

    ``image_size``: the square input size the model was trained at (256 or 512 for the release); the network runs at
    any multiple of ``patch_size`` but is only meaningful at its training size. Head dims: ``enc_embed_dim /
    enc_num_heads`` and ``dec_embed_dim / dec_num_heads`` must be multiples of 4 (2D RoPE splits each head in two).
    """

    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    patch_size: int = 16
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    intrinsics_embed_dim: int = 1024        # official: nn.Linear(9, 1024), hard-coded
    dpt_feature_dim: int = 256              # official: hard-coded in the head factories
    dpt_layer_dims: tuple = (96, 192, 384, 768)
    sh_degree: int = 4
    num_surfaces: int = 1
    opacity_mapping_initial: float = 0.0
    opacity_mapping_final: float = 0.0
    opacity_mapping_warm_up: int = 1
    image_size: int = 256
    input_mean: tuple = (0.5, 0.5, 0.5)
    input_std: tuple = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.dpt_layer_dims = tuple(int(d) for d in self.dpt_layer_dims)
        self.input_mean = tuple(float(x) for x in self.input_mean)
        self.input_std = tuple(float(x) for x in self.input_std)
        if self.intrinsics_embed_dim != self.enc_embed_dim:
            raise ValueError(f"the intrinsics token is concatenated to the encoder tokens, so intrinsics_embed_dim "
                             f"({self.intrinsics_embed_dim}) must equal enc_embed_dim ({self.enc_embed_dim})")
        for name, dim, heads in (("enc", self.enc_embed_dim, self.enc_num_heads),
                                 ("dec", self.dec_embed_dim, self.dec_num_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name}_embed_dim {dim} / {name}_num_heads {heads} must give a head dim that is a "
                                 f"multiple of 4 (2D RoPE)")
        if self.dec_depth < 10:
            raise ValueError(f"dec_depth must be >= 10 (the official DPT heads require it), got {self.dec_depth}")
        if len(self.dpt_layer_dims) != 4:
            raise ValueError(f"dpt_layer_dims must have 4 entries, got {self.dpt_layer_dims}")
        if self.num_surfaces != 1:
            raise ValueError("only num_surfaces = 1 (the released models) is implemented")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def release(cls, image_size: int = 256) -> "NoPoSplatConfig":
        """The released architecture at ``image_size`` 256 (re10k / acid / mixRe10kDl3dv) or 512
        (mixRe10kDl3dv_512x512)."""
        return cls(image_size=int(image_size))

    @classmethod
    def small(cls, image_size: int = 64) -> "NoPoSplatConfig":
        """A small test config that keeps every code path of the release (and the official hard-coded sizes)."""
        return cls(enc_depth=1, enc_num_heads=16, dec_embed_dim=128, dec_depth=10, dec_num_heads=2,
                   image_size=image_size)

    @classmethod
    def tiny(cls, image_size: int = 32) -> "NoPoSplatConfig":
        """A very small config for fast tests of loading and the prior: every module of the release, but 64-wide
        tokens and a narrow DPT (so NOT the official hard-coded head sizes; parity is tested with :meth:`small`)."""
        return cls(enc_embed_dim=64, enc_depth=1, enc_num_heads=1, dec_embed_dim=64, dec_depth=10, dec_num_heads=1,
                   intrinsics_embed_dim=64, dpt_feature_dim=32, dpt_layer_dims=(8, 16, 32, 64), image_size=image_size)

    def replace(self, **kw) -> "NoPoSplatConfig":
        return replace(self, **kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "NoPoSplatConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown NoPoSplat config keys {unknown}")
        return cls(**dict(d))

    # ------------------------------------------------------------------ derived
    @property
    def d_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def raw_gs_dim(self) -> int:
        """Channels of the Gaussian-parameter head: opacity 1 + scale 3 + quaternion 4 + 3 * d_sh."""
        return 1 + 7 + 3 * self.d_sh

    @property
    def dpt_hooks(self) -> tuple:
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @classmethod
    def from_state_dict(cls, sd: Mapping, image_size: int | None = None, **overrides) -> "NoPoSplatConfig":
        """Infer the config from a state dict (keys without the ``encoder.`` prefix).

        Widths and depths are read from the weights; the numbers of heads are not visible there and are taken as
        width / 64 (the release: 1024/64 = 16 and 768/64 = 12), unless given in ``overrides``. ``image_size``
        defaults to 256 (not visible in the weights either).
        """
        def shape(k):
            if k not in sd:
                raise KeyError(f"missing key {k!r}")
            return tuple(sd[k].shape)

        enc = shape("backbone.patch_embed.proj.weight")
        dec = shape("backbone.decoder_embed.weight")
        idx = lambda pat: {int(m.group(1)) for k in sd for m in [re.match(pat, k)] if m}  # noqa: E731
        enc_depth = len(idx(r"backbone\.enc_blocks\.(\d+)\."))
        dec_depth = len(idx(r"backbone\.dec_blocks\.(\d+)\."))
        gs = shape("gaussian_param_head.dpt.head.4.weight")[0]
        sh = int(round(math.sqrt((gs - 8) / 3))) - 1
        patch = enc[-1]
        kw = dict(enc_embed_dim=enc[0], enc_depth=enc_depth, enc_num_heads=max(1, enc[0] // 64),
                  dec_embed_dim=dec[0], dec_depth=dec_depth, dec_num_heads=max(1, dec[0] // 64), patch_size=patch,
                  intrinsics_embed_dim=shape("backbone.intrinsic_encoder.weight")[0],
                  dpt_feature_dim=shape("downstream_head1.dpt.scratch.layer1_rn.weight")[0],
                  dpt_layer_dims=tuple(shape(f"downstream_head1.dpt.act_postprocess.{i}.0.weight")[0]
                                       for i in range(4)),
                  sh_degree=sh, image_size=int(image_size) if image_size else 256)
        mlp = shape("backbone.enc_blocks.0.mlp.fc1.weight")[0] / enc[0]
        kw["mlp_ratio"] = mlp
        kw.update(overrides)
        return cls(**kw)
