"""The LDM-style 2D U-Net MVSplat uses to refine its cost volume and its depth (official
src/model/encoder/costvolume/ldm_unet/unet.py, ``UNetModel`` as instantiated by ``DepthPredictorMultiView``:
``num_res_blocks=1``, ``postnorm=True``, ``conv_resample=True``, ``num_head_channels=32``, no timestep embedding,
``use_cross_view_self_attn=True``).

Only that configuration is implemented. Module names (``input_blocks``, ``middle_block``, ``output_blocks``,
``out``, ``in_layers``/``out_layers``/``skip_connection``, ``qkv``/``norm``/``proj_out``, ``op``, ``conv``) mirror the
official ones so the state dict matches.

Input/output ``[V*B, C, H, W]`` with the batch ordered **view-major** (``(v b)``, as in the official depth
predictor): the attention blocks let every pixel of every view attend to all pixels of all ``num_views`` views of
the same batch element. H and W must be divisible by ``2**(len(channel_mult) - 1)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNetModel", "group_norm"]


def group_norm(channels: int) -> nn.GroupNorm:
    """The official ``normalization()``: 8 groups when the channels are divisible by 8, else 4 (eps 1e-5)."""
    return _GroupNormF32(4 if channels % 8 else 8, channels)


class _GroupNormF32(nn.GroupNorm):
    """GroupNorm evaluated in float32 for half-precision inputs (as the official ``GroupNorm8/4``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(),
                                self.eps).to(x.dtype)
        return super().forward(x)


class ResBlock(nn.Module):
    """Post-norm residual block: ``skip(x) + SiLU(GN(conv(SiLU(GN(conv(x))))))`` (1x1 conv skip when the channel
    count changes)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.Conv2d(channels, out_channels, 3, padding=1), group_norm(out_channels),
                                       nn.SiLU())
        self.out_layers = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1),
                                        group_norm(out_channels), nn.SiLU())
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class AttentionBlock(nn.Module):
    """Post-norm multi-head self-attention over all pixels of all views: ``x + GN(proj_out(attn(qkv(x))))``.

    ``qkv`` is a 1x1 Conv1d whose output channels are laid out head-major (per head: q, k, v of 32 channels each,
    the "legacy" QKV order of the official ``QKVAttentionLegacy``)."""

    def __init__(self, channels: int, num_head_channels: int = 32, num_views: int = 2):
        super().__init__()
        self.num_heads = channels // num_head_channels
        self.num_views = num_views
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = group_norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vb, c, *spatial = x.shape
        x = x.reshape(vb, c, -1)
        qkv = self.qkv(x)  # [(v b), 3c, t]
        v = self.num_views
        if vb % v:
            raise ValueError(f"U-Net attention was built for {v} views but got a batch of {vb} view-images")
        b = vb // v
        t = qkv.shape[-1]
        qkv = qkv.view(v, b, 3 * c, t).permute(1, 2, 0, 3).reshape(b, 3 * c, v * t)  # b n (v t)
        ch = c // self.num_heads
        q, k, val = qkv.reshape(b * self.num_heads, 3 * ch, v * t).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        low = w.dtype in (torch.float16, torch.bfloat16)  # softmax in float32 for half inputs, as the official
        w = torch.softmax(w.float() if low else w, dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, val).reshape(b, c, v, t).permute(2, 0, 1, 3).reshape(vb, c, t)
        h = self.norm(self.proj_out(a))
        return (x + h).reshape(vb, c, *spatial)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    """U-Net with one residual block per level, attention at the downsampling rates listed in
    ``attention_resolutions`` (1 = full resolution, 2 = half, ...), an attention-free middle block
    (``ResBlock, Identity, ResBlock``) and a post-norm output head ``conv, GN, SiLU``."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, attention_resolutions=(),
                 channel_mult=(1, 1, 1), num_head_channels: int = 32, num_views: int = 2):
        super().__init__()
        attention_resolutions = tuple(attention_resolutions)
        self.num_levels = len(channel_mult)
        self.input_blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            layers = [ResBlock(ch, mult * model_channels)]
            ch = mult * model_channels
            if ds in attention_resolutions:
                layers.append(AttentionBlock(ch, num_head_channels, num_views))
            self.input_blocks.append(nn.Sequential(*layers))
            skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(nn.Sequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = nn.Sequential(ResBlock(ch, ch), nn.Identity(), ResBlock(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(2):
                layers = [ResBlock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_head_channels, num_views))
                if level and i == 1:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(nn.Sequential(*layers))
        self.out = nn.Sequential(nn.Conv2d(model_channels, out_channels, 3, padding=1), group_norm(out_channels),
                                 nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = []
        h = x
        for block in self.input_blocks:
            h = block(h)
            hs.append(h)
        h = self.middle_block(h)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1))
        return self.out(h)
