"""Multi-view feature backbone of MVSplat: a small ResNet-style CNN (UniMatch/GMFlow) followed by a 6-layer
multi-view Transformer with window ("swin") self- and cross-view attention.

Corresponds to the official files src/model/encoder/backbone/backbone_multiview.py (``BackboneMultiview``),
backbone/multiview_transformer.py (``MultiViewFeatureTransformer``), backbone/unimatch/backbone.py (``CNNEncoder``),
backbone/unimatch/position.py (sine position embedding) and backbone/unimatch/utils.py (window split/merge).
Module and parameter names mirror the official tree so that the official ``state_dict`` loads unchanged.

Shapes: images ``[B, V, 3, H, W]`` in 0..1 -> (transformer features, CNN features), each ``[B, V, C, H/s, W/s]``
with ``s = downscale_factor`` and ``C = d_feature``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BackboneMultiview", "CNNEncoder", "MultiViewFeatureTransformer", "sine_position_embedding"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------ CNN

class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN-ReLU plus a (strided 1x1 conv + IN) shortcut when the shape changes.
    Instance norms have no affine parameters, so only the convolutions carry weights."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.norm3 = nn.InstanceNorm2d(planes)
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), self.norm3)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return F.relu(x + y)


class CNNEncoder(nn.Module):
    """Stride-2 7x7 stem and three stages of two residual blocks (64, 96, 128 channels), output stride 4 (or 8),
    then a 1x1 projection to ``output_dim``. ``[N, 3, H, W] -> [N, output_dim, H/s, W/s]``."""

    def __init__(self, output_dim: int = 128, downscale_factor: int = 4):
        super().__init__()
        dims = (64, 96, 128)
        self.conv1 = nn.Conv2d(3, dims[0], 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(dims[0])
        self.layer1 = nn.Sequential(ResidualBlock(dims[0], dims[0], 1), ResidualBlock(dims[0], dims[0]))
        self.layer2 = nn.Sequential(ResidualBlock(dims[0], dims[1], 2), ResidualBlock(dims[1], dims[1]))
        last_stride = 2 if downscale_factor == 8 else 1
        self.layer3 = nn.Sequential(ResidualBlock(dims[1], dims[2], last_stride), ResidualBlock(dims[2], dims[2]))
        self.conv2 = nn.Conv2d(dims[2], output_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.conv2(x)


# ------------------------------------------------------------------------------------------------ windows

def split_windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, H, W, C] -> [B*k*k, H/k, W/k, C]`` (windows ordered batch-major, then window row, window column)."""
    b, h, w, c = x.shape
    x = x.view(b, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * k * k, h // k, w // k, c)


def merge_windows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`split_windows`."""
    bk, hh, ww, c = x.shape
    b = bk // (k * k)
    x = x.view(b, k, k, hh, ww, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, k * hh, k * ww, c)


def shifted_window_mask(h: int, w: int, k: int, device=None) -> torch.Tensor:
    """Swin attention mask for a feature map of ``h x w`` split into ``k x k`` windows that were rolled by half a
    window: ``[k*k, L, L]`` (L = window area) with 0 where two positions came from the same region, -100 otherwise."""
    wh, ww = h // k, w // k
    sh, sw = wh // 2, ww // 2
    region = torch.zeros(1, h, w, 1, device=device)
    label = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            region[:, hs, ws, :] = label
            label += 1
    win = split_windows(region, w // ww).reshape(-1, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def sine_position_embedding(h: int, w: int, channels: int, device=None) -> torch.Tensor:
    """DETR-style normalized sine embedding for an ``h x w`` grid: ``[1, channels, h, w]`` (first half encodes y,
    second half x; within each half sin/cos pairs with geometric frequencies, temperature 1e4, scale 2*pi)."""
    npf = channels // 2
    ones = torch.ones(1, h, w, device=device)
    y = ones.cumsum(1, dtype=torch.float32)
    x = ones.cumsum(2, dtype=torch.float32)
    y = y / (y[:, -1:, :] + 1e-6) * (2 * math.pi)
    x = x / (x[:, :, -1:] + 1e-6) * (2 * math.pi)
    i = torch.arange(npf, dtype=torch.float32, device=device)
    freq = 10000 ** (2 * torch.div(i, 2, rounding_mode="floor") / npf)
    px = x[..., None] / freq
    py = y[..., None] / freq
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------ attention

def _window_self_attention(q, k, v, splits, h, w, mask):
    """Single-head attention inside ``splits x splits`` windows; q, k, v ``[B, h*w, C]``; ``mask`` is the shifted
    window mask (the inputs are rolled by half a window first) or None."""
    b, _, c = q.shape
    if mask is not None:
        sh, sw = (h // splits) // 2, (w // splits) // 2
        q, k, v = (torch.roll(t.view(b, h, w, c), shifts=(-sh, -sw), dims=(1, 2)) for t in (q, k, v))
    else:
        q, k, v = (t.view(b, h, w, c) for t in (q, k, v))
    bn = b * splits * splits
    q, k, v = (split_windows(t, splits).reshape(bn, -1, c) for t in (q, k, v))
    scores = q @ k.transpose(1, 2) / c ** 0.5
    if mask is not None:
        scores = scores + mask.repeat(b, 1, 1)
    out = torch.softmax(scores, dim=-1) @ v
    out = merge_windows(out.view(bn, h // splits, w // splits, c), splits)
    if mask is not None:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out.reshape(b, -1, c)


def _window_cross_attention(q, k, v, splits, h, w, mask):
    """Single-head window attention from q ``[B, h*w, C]`` to the other views' k, v ``[B, M, h*w, C]``: each query
    attends to the keys of the same window in all M other views (keys ordered pixel-major, view-minor).

    The shifted-window mask is tiled along the key axis view-major, exactly as the official code does (for M = 1,
    i.e. two views, this is the ordinary Swin mask)."""
    b, _, c = q.shape
    m = k.shape[1]
    q = q.view(b, h, w, c)
    k = k.view(b, m, h, w, c)
    v = v.view(b, m, h, w, c)
    if mask is not None:
        sh, sw = (h // splits) // 2, (w // splits) // 2
        q = torch.roll(q, shifts=(-sh, -sw), dims=(1, 2))
        k = torch.roll(k, shifts=(-sh, -sw), dims=(2, 3))
        v = torch.roll(v, shifts=(-sh, -sw), dims=(2, 3))
    bn = b * splits * splits
    hh, ww = h // splits, w // splits
    q = split_windows(q, splits).reshape(bn, -1, c)
    # [B, H, W, C, M] so that, per window, keys are ordered (pixel, view)
    k = split_windows(k.permute(0, 2, 3, 4, 1).reshape(b, h, w, c * m), splits).reshape(bn, hh * ww, c, m)
    v = split_windows(v.permute(0, 2, 3, 4, 1).reshape(b, h, w, c * m), splits).reshape(bn, hh * ww, c, m)
    k = k.permute(0, 2, 1, 3).reshape(bn, c, hh * ww * m)
    v = v.permute(0, 1, 3, 2).reshape(bn, hh * ww * m, c)
    scores = q @ k / c ** 0.5
    if mask is not None:
        scores = scores + mask.repeat(b, 1, m)
    out = torch.softmax(scores, dim=-1) @ v
    out = merge_windows(out.view(bn, hh, ww, c), splits)
    if mask is not None:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out.reshape(b, -1, c)


def _full_attention(q, k, v):
    scores = q @ k.transpose(1, 2) / q.shape[2] ** 0.5
    return torch.softmax(scores, dim=2) @ v


class TransformerLayer(nn.Module):
    """One attention layer (official ``TransformerLayer``, single head): ``source + norm1(merge(attn))`` for
    self-attention (``no_ffn=True``), or ``source + norm2(mlp([source, norm1(merge(attn))]))`` for cross-attention.
    """

    def __init__(self, d_model: int, no_ffn: bool, ffn_dim_expansion: int, with_shift: bool):
        super().__init__()
        self.no_ffn = no_ffn
        self.with_shift = with_shift
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.LayerNorm(d_model)
        if not no_ffn:
            hidden = 2 * d_model * ffn_dim_expansion
            self.mlp = nn.Sequential(nn.Linear(2 * d_model, hidden, bias=False), nn.GELU(),
                                     nn.Linear(hidden, d_model, bias=False))
            self.norm2 = nn.LayerNorm(d_model)

    def forward(self, source, target, h, w, mask, splits):
        q = self.q_proj(source)
        k = self.k_proj(target)
        v = self.v_proj(target)
        use_mask = mask if self.with_shift else None
        if splits > 1:
            if k.dim() == 4:
                msg = _window_cross_attention(q, k, v, splits, h, w, use_mask)
            else:
                msg = _window_self_attention(q, k, v, splits, h, w, use_mask)
        else:
            if k.dim() == 4:
                raise ValueError("multi-view cross attention needs multiview_trans_attn_split > 1 "
                                 "(the official code has no global multi-view path either)")
            msg = _full_attention(q, k, v)
        msg = self.norm1(self.merge(msg))
        if not self.no_ffn:
            msg = self.norm2(self.mlp(torch.cat([source, msg], dim=-1)))
        return source + msg


class TransformerBlock(nn.Module):
    """Self-attention (no FFN) followed by cross-view attention with FFN."""

    def __init__(self, d_model: int, ffn_dim_expansion: int, with_shift: bool):
        super().__init__()
        self.self_attn = TransformerLayer(d_model, True, ffn_dim_expansion, with_shift)
        self.cross_attn_ffn = TransformerLayer(d_model, False, ffn_dim_expansion, with_shift)

    def forward(self, source, target, h, w, mask, splits):
        source = self.self_attn(source, source, h, w, mask, splits)
        return self.cross_attn_ffn(source, target, h, w, mask, splits)


def _query_and_others(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of V ``[B, ...]`` -> (``[V*B, ...]`` each view as query, ``[V*B, V-1, ...]`` the other views in order)."""
    q, kv = [], []
    for i in range(len(features)):
        others = features[:i] + features[i + 1:]
        q.append(features[i])
        kv.append(torch.stack(others, dim=1))
    return torch.cat(q, dim=0), torch.cat(kv, dim=0)


class MultiViewFeatureTransformer(nn.Module):
    """``num_layers`` blocks; odd blocks use shifted windows. Input/output: list of V ``[B, C, h, w]``."""

    def __init__(self, num_layers: int = 6, d_model: int = 128, ffn_dim_expansion: int = 4):
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(
            [TransformerBlock(d_model, ffn_dim_expansion, with_shift=(i % 2 == 1)) for i in range(num_layers)])

    def forward(self, features: list[torch.Tensor], attn_num_splits: int) -> list[torch.Tensor]:
        b, c, h, w = features[0].shape
        nv = len(features)
        if nv < 2:
            raise ValueError("the multi-view transformer needs at least 2 views")
        mask = None
        if attn_num_splits > 1:
            mask = shifted_window_mask(h, w, attn_num_splits, device=features[0].device).to(features[0].dtype)
        q, kv = _query_and_others([f.reshape(b, c, -1).transpose(1, 2) for f in features])
        for i, layer in enumerate(self.layers):
            q = layer(q, kv, h, w, mask, attn_num_splits)
            if i < len(self.layers) - 1:
                q, kv = _query_and_others(list(q.chunk(nv, dim=0)))
        return [f.view(b, h, w, c).permute(0, 3, 1, 2).contiguous() for f in q.chunk(nv, dim=0)]


class BackboneMultiview(nn.Module):
    """CNN features + sine position embedding (added per attention window) + multi-view Transformer.

    ``forward(images [B, V, 3, H, W] in 0..1, attn_splits)`` -> ``(trans_features, cnn_features)``, both
    ``[B, V, C, H/s, W/s]``. Images are normalized with the ImageNet mean/std first.
    """

    def __init__(self, feature_channels: int = 128, downscale_factor: int = 4, num_transformer_layers: int = 6,
                 ffn_dim_expansion: int = 4):
        super().__init__()
        self.feature_channels = feature_channels
        self.backbone = CNNEncoder(feature_channels, downscale_factor)
        self.transformer = MultiViewFeatureTransformer(num_transformer_layers, feature_channels, ffn_dim_expansion)

    def forward(self, images: torch.Tensor, attn_splits: int = 2):
        b, v = images.shape[:2]
        mean = torch.tensor(_IMAGENET_MEAN, device=images.device).view(3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=images.device).view(3, 1, 1)
        x = ((images - mean) / std).reshape(b * v, *images.shape[2:])
        feats = self.backbone(x)
        feats = feats.view(b, v, *feats.shape[1:])
        cnn_features = feats
        _, _, c, h, w = feats.shape
        k = attn_splits if attn_splits > 1 else 1
        pos = sine_position_embedding(h // k, w // k, self.feature_channels, device=images.device)
        pos = pos.to(feats.dtype).repeat(1, 1, k, k)  # the same embedding in every window
        views = [feats[:, i] + pos for i in range(v)]
        views = self.transformer(views, attn_num_splits=attn_splits)
        return torch.stack(views, dim=1), cnn_features
