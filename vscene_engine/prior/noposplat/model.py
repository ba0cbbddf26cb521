"""The NoPoSplat network in pure PyTorch: two unposed images -> pixel-aligned 3D Gaussians in view 1's camera frame.

Entry point: :class:`NoPoSplatNet` (``net(images, intrinsics) -> dict``).

Parameter names equal the official ``EncoderNoPoSplat.state_dict()`` (cvg/NoPoSplat, src/model/encoder/
encoder_noposplat.py with backbone/backbone_croco.py, the CroCo blocks, heads/dpt_head.py, heads/dpt_gs_head.py and
common/gaussian_adapter.py); the Lightning checkpoint adds the prefix ``encoder.``. Module map:

* ``backbone``: CroCo ViT encoder shared by both views (``patch_embed``, ``enc_blocks``, ``enc_norm``), the
  intrinsics token (``intrinsic_encoder``), ``decoder_embed``, the two cross-attention decoders ``dec_blocks`` (view 1)
  and ``dec_blocks2`` (view 2), ``dec_norm``; ``mask_token`` is CroCo's pre-training token (loaded, unused);
* ``downstream_head1/2``: DPT heads for 3D points of view 1 / view 2 (both in view 1's camera frame);
* ``gaussian_param_head/2``: DPT-GS heads (DPT + a 7x7 conv of the input image) for the raw Gaussian parameters;
* the Gaussian adapter has no weights (``sh_mask`` is a non-persistent buffer).

Conventions: images ``[B, 2, 3, H, W]`` in 0..1 (normalised inside with mean = std = 0.5 like the official data
shim), H = W a multiple of 16; intrinsics ``[B, 2, 3, 3]`` NORMALISED (row 0 divided by the width, row 1 by the
height); the 3D points are in view 1's OpenCV camera frame (+x right, +y down, +z forward), in the network's own scale.
Inference only (no dropout / drop-path), deterministic.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import NoPoSplatConfig

__all__ = ["NoPoSplatNet", "RoPE2D", "quat_xyzw_to_rotmat"]


# ------------------------------------------------------------------------------------------------ 2D RoPE

class RoPE2D(nn.Module):
    """2D rotary position embedding (CroCo): the first half of each head's channels is rotated by the token's row,
    the second half by its column, each with 1D RoPE of frequencies ``freq ** (-2i / D)`` (D = half the head dim).

    tokens ``[B, heads, N, head_dim]``, positions ``[B, N, 2]`` integer (row, col) -> same shape as tokens.
    """

    def __init__(self, freq: float = 100.0):
        super().__init__()
        self.freq = float(freq)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    def _rope1d(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        # frequencies in float32 first, as the reference does, then the angle table in the tokens' dtype
        inv = 1.0 / (self.freq ** (torch.arange(0, d, 2, device=x.device).float() / d))
        n = int(pos.max()) + 1
        ang = torch.outer(torch.arange(n, device=x.device, dtype=inv.dtype), inv).to(x.dtype)
        ang = torch.cat((ang, ang), dim=-1)                    # [n, d]
        cos = ang.cos()[pos][:, None]                            # [B, 1, N, d]
        sin = ang.sin()[pos][:, None]
        return x * cos + self._rotate_half(x) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        y, x = tokens.chunk(2, dim=-1)
        return torch.cat((self._rope1d(y, positions[..., 0]), self._rope1d(x, positions[..., 1])), dim=-1)


# ------------------------------------------------------------------------------------------------ CroCo blocks

class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    B, N, C = x.shape
    return x.view(B, N, n, C // n).transpose(1, 2)              # [B, heads, N, hd]


def _merge(x: torch.Tensor) -> torch.Tensor:
    B, h, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, h * d)


class Attention(nn.Module):
    """Self-attention with a fused ``qkv`` projection and 2D RoPE on queries and keys."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x, pos):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (_heads(t, self.num_heads) for t in (q, k, v))
        q, k = self.rope(q, pos), self.rope(k, pos)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class CrossAttention(nn.Module):
    """Cross-attention (separate ``projq/projk/projv``), 2D RoPE with each side's own positions."""

    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x, mem, xpos, mpos):
        q = self.rope(_heads(self.projq(x), self.num_heads), xpos)
        k = self.rope(_heads(self.projk(mem), self.num_heads), mpos)
        v = _heads(self.projv(mem), self.num_heads)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class Block(nn.Module):
    """Pre-norm ViT encoder block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, pos):
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view's (``norm_y``-normalised) tokens, MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x, y, xpos, ypos):
        x = x + self.attn(self.norm1(x), xpos)
        m = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), m, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv: ``[B, 3, H, W] -> tokens [B, N, C]`` and positions ``[B, N, 2]``
    (row, col), row-major."""

    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.patch_size = (patch, patch)
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        B, _, H, W = x.shape
        p = self.patch_size[0]
        if H % p or W % p:
            raise ValueError(f"image size {H}x{W} must be a multiple of the patch size {p}")
        x = self.proj(x)
        h, w = x.shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                                    indexing="ij")
        pos = torch.stack((rows.reshape(-1), cols.reshape(-1)), dim=-1)[None].expand(B, -1, -1)
        return x.flatten(2).transpose(1, 2), pos


class CroCoBackbone(nn.Module):
    """Siamese CroCo encoder + two cross-attention decoders (official ``AsymmetricCroCo``, intrinsics as a token).

    forward(images ``[B, 2, 3, H, W]`` normalised to -1..1, intrinsics ``[B, 2, 3, 3]`` normalised) ->
    (dec1, dec2): lists of ``dec_depth + 1`` tensors ``[B, N, C]`` per view (N = (H/16)(W/16); entry 0 = encoder output
    (C = enc_embed_dim), entries 1.. = the decoder blocks' outputs (C = dec_embed_dim), the last one after
    ``dec_norm``); the intrinsics token is removed from every entry.
    """

    def __init__(self, cfg: NoPoSplatConfig):
        super().__init__()
        self.cfg = cfg
        rope = RoPE2D(cfg.rope_freq)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        self.enc_blocks = nn.ModuleList(Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, rope)
                                        for _ in range(cfg.enc_depth))
        self.enc_norm = nn.LayerNorm(cfg.enc_embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, rope)
                                        for _ in range(cfg.dec_depth))
        self.dec_norm = nn.LayerNorm(cfg.dec_embed_dim, eps=1e-6)
        self.dec_blocks2 = copy.deepcopy(self.dec_blocks)
        self.intrinsic_encoder = nn.Linear(9, cfg.intrinsics_embed_dim)

    def encode(self, img: torch.Tensor, intr_token: torch.Tensor):
        """img ``[B, 3, H, W]``, intr_token ``[B, 1, C]`` -> tokens ``[B, N+1, C]``, positions ``[B, N+1, 2]``.
        The intrinsics token sits after the image tokens at position (rows, 0), one row below the image."""
        x, pos = self.patch_embed(img)
        x = torch.cat((x, intr_token), dim=1)
        extra = torch.zeros_like(pos[:, :1])
        extra[..., 0] = pos[:, -1:, 0] + 1
        pos = torch.cat((pos, extra), dim=1)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor):
        B, V = images.shape[:2]
        tok = self.intrinsic_encoder(intrinsics.flatten(2))      # [B, 2, C]
        # both views go through the shared encoder as one batch (view 1 first), as the official code
        feats, pos = self.encode(torch.cat((images[:, 0], images[:, 1])), torch.cat((tok[:, :1], tok[:, 1:2])))
        f1, f2 = feats.chunk(2)
        p1, p2 = pos.chunk(2)
        out1, out2 = [f1], [f2]
        f1, f2 = self.decoder_embed(f1), self.decoder_embed(f2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = blk1(f1, f2, p1, p2), blk2(f2, f1, p2, p1)
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return [t[:, :-1] for t in out1], [t[:, :-1] for t in out2]


# ------------------------------------------------------------------------------------------------ DPT heads

class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` (3x3 convs with bias)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """DPT feature fusion: ``(x [+ rcu1(skip)]) -> rcu2 -> bilinear x2 (align_corners) -> 1x1 out_conv``."""

    def __init__(self, c: int):
        super().__init__()
        self.out_conv = nn.Conv2d(c, c, 1)
        self.resConfUnit1 = ResidualConvUnit(c)
        self.resConfUnit2 = ResidualConvUnit(c)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Scratch(nn.Module):
    def __init__(self, layer_dims, c: int):
        super().__init__()
        for i, d in enumerate(layer_dims):
            setattr(self, f"layer{i + 1}_rn", nn.Conv2d(d, c, 3, padding=1, bias=False))
        # the official module registers the same four convs a second time under ``layer_rn`` (both names are in the
        # checkpoint, holding the same tensors)
        self.layer_rn = nn.ModuleList(getattr(self, f"layer{i + 1}_rn") for i in range(4))
        for i in range(4):
            setattr(self, f"refinenet{i + 1}", FusionBlock(c))


class DPTAdapter(nn.Module):
    """DPT decoder of 4 hooked token maps (official ``DPTOutputAdapter_fix``), with ``kind``:

    * ``"pts"``: regression head ``conv3x3 -> x2 -> conv3x3 -> relu -> conv1x1`` to ``out_ch`` channels;
    * ``"gs"``: the DPT-GS variant: the fused map is upsampled x2 and a ``relu(conv7x7(image))`` feature is added
      (``input_merger``) before ``conv3x3 (no bias) -> relu -> conv1x1``.

    forward(tokens: list of ``[B, N, C_i]``, (H, W), image ``[B, 3, H, W]`` for "gs") -> ``[B, out_ch, H, W]``.
    """

    def __init__(self, cfg: NoPoSplatConfig, out_ch: int, kind: str):
        super().__init__()
        self.kind = kind
        self.hooks = cfg.dpt_hooks
        self.patch = cfg.patch_size
        c, ld = cfg.dpt_feature_dim, cfg.dpt_layer_dims
        dims = (cfg.enc_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim, cfg.dec_embed_dim)
        self.scratch = _Scratch(ld, c)
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dims[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dims[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dims[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(dims[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
        ])
        if kind == "pts":
            last = c // 2
            self.head = nn.Sequential(nn.Conv2d(c, c // 2, 3, padding=1), nn.Upsample(scale_factor=2, mode="bilinear",
                                      align_corners=True), nn.Conv2d(c // 2, last, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(last, out_ch, 1))
        elif kind == "gs":
            self.input_merger = nn.Sequential(nn.Conv2d(3, c, 7, padding=3), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.Identity(), nn.ReLU(),
                                      nn.Identity(), nn.Conv2d(c, out_ch, 1))
        else:
            raise ValueError(f"unknown DPT head kind {kind!r}")

    def forward(self, tokens, hw, image=None):
        H, W = hw
        nh, nw = H // self.patch, W // self.patch
        maps = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], nh, nw)
            maps.append(self.scratch.layer_rn[i](self.act_postprocess[i](t)))
        s = self.scratch
        p = s.refinenet4(maps[3])[:, :, :maps[2].shape[2], :maps[2].shape[3]]
        p = s.refinenet3(p, maps[2])
        p = s.refinenet2(p, maps[1])
        p = s.refinenet1(p, maps[0])
        if self.kind == "gs":
            p = F.interpolate(p, scale_factor=2, mode="bilinear", align_corners=True) + self.input_merger(image)
        return self.head(p)


class _Head(nn.Module):
    """Container matching the official ``PixelwiseTaskWithDPT`` (its only child is ``dpt``)."""

    def __init__(self, cfg, out_ch, kind):
        super().__init__()
        self.dpt = DPTAdapter(cfg, out_ch, kind)


# ------------------------------------------------------------------------------------------------ Gaussians

def quat_xyzw_to_rotmat(q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """xyzw quaternions ``[..., 4]`` (not necessarily unit) -> rotation matrices ``[..., 3, 3]`` (the official
    formula with ``2 / (|q|^2 + eps)``)."""
    i, j, k, r = q.unbind(-1)
    s = 2 / ((q * q).sum(-1) + eps)
    return torch.stack((
        1 - s * (j * j + k * k), s * (i * j - k * r), s * (i * k + j * r),
        s * (i * j + k * r), 1 - s * (i * i + k * k), s * (j * k - i * r),
        s * (i * k - j * r), s * (j * k + i * r), 1 - s * (i * i + j * j),
    ), dim=-1).unflatten(-1, (3, 3))


def _exp_points(x: torch.Tensor) -> torch.Tensor:
    """Official ``reg_dense_depth`` in mode ('exp', -inf, inf): direction times ``expm1(|x|)``; x ``[..., 3]``."""
    d = x.norm(dim=-1, keepdim=True)
    return x / d.clamp(min=1e-8) * torch.expm1(d)


class NoPoSplatNet(nn.Module):
    """The NoPoSplat encoder (``EncoderNoPoSplat``, pose-free, ``dpt_gs`` heads, intrinsics token).

    forward(images ``[B, 2, 3, H, W]`` in 0..1, intrinsics ``[B, 2, 3, 3]`` normalised, global_step=0) -> dict, with
    G = 2 * H * W Gaussians ordered ``g = v*H*W + y*W + x``:

    * ``means [B, G, 3]`` (view 1's camera frame = the points of both heads), ``covariances [B, G, 3, 3]``;
    * ``scales [B, G, 3]``, ``rotations [B, G, 4]`` (unit **xyzw**, view 1's frame), ``opacities [B, G]``;
    * ``harmonics [B, G, 3, d_sh]`` (RGB x SH coefficients, ``sh_mask`` applied, INRIA 3DGS basis);
    * ``depth [B, 2, H, W]`` = the points' z; ``points [B, 2, H, W, 3]``; ``opacity_map [B, 2, H, W]``.
    """

    def __init__(self, cfg: NoPoSplatConfig | None = None):
        super().__init__()
        cfg = cfg or NoPoSplatConfig()
        self.cfg = cfg
        self.backbone = CroCoBackbone(cfg)
        self.downstream_head1 = _Head(cfg, 3, "pts")
        self.downstream_head2 = _Head(cfg, 3, "pts")
        self.gaussian_param_head = _Head(cfg, cfg.raw_gs_dim, "gs")
        self.gaussian_param_head2 = _Head(cfg, cfg.raw_gs_dim, "gs")
        mask = torch.ones(cfg.d_sh)
        for deg in range(1, cfg.sh_degree + 1):
            mask[deg ** 2:(deg + 1) ** 2] = 0.1 * 0.25 ** deg
        self.register_buffer("sh_mask", mask, persistent=False)

    def _opacity(self, pdf: torch.Tensor, global_step: int) -> torch.Tensor:
        c = self.cfg
        x = c.opacity_mapping_initial + min(global_step / c.opacity_mapping_warm_up, 1) * (
            c.opacity_mapping_final - c.opacity_mapping_initial)
        e = 2 ** x
        return 0.5 * (1 - (1 - pdf) ** e + pdf ** (1 / e))

    def forward(self, images: torch.Tensor, intrinsics: torch.Tensor, global_step: int = 0) -> dict:
        if images.dim() != 5 or images.shape[1] != 2 or images.shape[2] != 3:
            raise ValueError(f"images must be [B, 2, 3, H, W], got {tuple(images.shape)}")
        if tuple(intrinsics.shape[-3:]) != (2, 3, 3):
            raise ValueError(f"intrinsics must be [B, 2, 3, 3] (normalised), got {tuple(intrinsics.shape)}")
        B, _, _, H, W = images.shape
        mean = images.new_tensor(self.cfg.input_mean).view(1, 1, 3, 1, 1)
        std = images.new_tensor(self.cfg.input_std).view(1, 1, 3, 1, 1)
        x = (images - mean) / std
        dec1, dec2 = self.backbone(x, intrinsics.to(images.dtype))
        pts, raw = [], []
        for v, (dec, hp, hg) in enumerate(((dec1, self.downstream_head1, self.gaussian_param_head),
                                           (dec2, self.downstream_head2, self.gaussian_param_head2))):
            pts.append(_exp_points(hp.dpt(dec, (H, W)).permute(0, 2, 3, 1)))          # [B, H, W, 3]
            raw.append(hg.dpt(dec, (H, W), x[:, v]).permute(0, 2, 3, 1))               # [B, H, W, C]
        points = torch.stack(pts, 1)                                                    # [B, 2, H, W, 3]
        raw = torch.stack(raw, 1)                                                       # [B, 2, H, W, C]
        opac = self._opacity(raw[..., 0].sigmoid(), global_step)
        s, q, sh = raw[..., 1:].split((3, 4, 3 * self.cfg.d_sh), dim=-1)
        scales = (0.001 * F.softplus(s)).clamp_max(0.3)
        rot = q / (q.norm(dim=-1, keepdim=True) + 1e-8)
        sh = sh.unflatten(-1, (3, self.cfg.d_sh)) * self.sh_mask.to(sh.dtype)
        R = quat_xyzw_to_rotmat(rot)
        S = torch.diag_embed(scales)
        cov = R @ S @ S.transpose(-1, -2) @ R.transpose(-1, -2)
        G = 2 * H * W
        return {
            "means": points.reshape(B, G, 3),
            "covariances": cov.reshape(B, G, 3, 3),
            "scales": scales.reshape(B, G, 3),
            "rotations": rot.reshape(B, G, 4),
            "opacities": opac.reshape(B, G),
            "harmonics": sh.reshape(B, G, 3, self.cfg.d_sh),
            "depth": points[..., 2],
            "points": points,
            "opacity_map": opac,
        }


def to_gaussian_scene(out: dict, b: int = 0):
    """Batch element ``b`` of :meth:`NoPoSplatNet.forward` as a :class:`vscene_engine.core.gaussians.GaussianScene` in view
    1's camera frame (wxyz quaternions, sh ``[N, K, 3]``). The SH coefficients are used as they are: NoPoSplat renders
    them with the INRIA 3DGS basis, which is :mod:`vscene_engine.core.sh`'s."""
    from ...core.gaussians import GaussianScene
    q = out["rotations"][b]
    return GaussianScene(means=out["means"][b], scales=out["scales"][b],
                         quats=torch.cat((q[:, 3:], q[:, :3]), dim=-1), opacities=out["opacities"][b],
                         sh=out["harmonics"][b].transpose(-1, -2).contiguous())
