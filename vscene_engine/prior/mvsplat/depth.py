"""MVSplat's cost-volume depth predictor and Gaussian raw head (official
src/model/encoder/costvolume/depth_predictor_multiview.py, ``DepthPredictorMultiView``).

Pipeline at feature resolution (h, w) = (H/s, W/s):

1. plane sweep: ``num_depth_candidates`` depths uniform in inverse depth between 1/far and 1/near; every other view's
   features are warped into the reference view with the known cameras (bilinear, zero padding) and correlated with
   the reference features (dot product / sqrt(C)); the correlations of all other views are averaged;
2. cost-volume refinement: conv + GN + GELU + U-Net + conv, plus a 1x1 residual;
3. softmax over the candidates -> coarse inverse depth (expectation) and confidence (max probability);
4. full resolution: features upsampled x s, depth U-Net on [image, features, coarse disparity, confidence];
5. heads: ``to_disparity`` (disparity residual and density logits) and ``to_gaussians`` (raw Gaussian parameters).

Internally everything runs in the official ``(v b)`` (view-major) batch order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .unet import UNetModel

__all__ = ["DepthPredictorMultiView", "warp_with_pose_depth_candidates"]


def warp_with_pose_depth_candidates(feature1: torch.Tensor, intrinsics: torch.Tensor, pose: torch.Tensor,
                                    depth: torch.Tensor, clamp_min_depth: float = 1e-3,
                                    chunk: int = 32) -> torch.Tensor:
    """Warp ``feature1 [N, C, h, w]`` (the source view) into the reference view for each depth candidate.

    ``intrinsics [N, 3, 3]`` in feature-grid pixels, ``pose [N, 4, 4]`` reference-camera -> source-camera,
    ``depth [N, D, h, w]``. Pixel (i, j) of the reference view sits at integer coordinates (x=j, y=i) (as in the
    official code, no half-pixel offset) and samples use ``align_corners=True``. Returns ``[N, C, D, h, w]``.
    Candidates are processed in chunks of ``chunk`` to bound memory (the result does not depend on it).
    """
    n, d, h, w = depth.shape
    c = feature1.shape[1]
    dev, dt = depth.device, depth.dtype
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    grid = torch.stack([xs, ys, torch.ones_like(xs)], 0).to(dt).view(1, 3, -1).repeat(n, 1, 1)  # [N, 3, h*w]
    rays = torch.bmm(pose[:, :3, :3], torch.bmm(torch.inverse(intrinsics), grid))  # [N, 3, h*w]
    out = []
    for d0 in range(0, d, chunk):
        dd = depth[:, d0:d0 + chunk].reshape(n, 1, -1, h * w)
        nd = dd.shape[2]
        pts = rays.unsqueeze(2) * dd + pose[:, :3, 3:].unsqueeze(-1)  # [N, 3, nd, h*w]
        pts = torch.bmm(intrinsics, pts.reshape(n, 3, -1)).view(n, 3, nd, h * w)
        xy = pts[:, :2] / pts[:, 2:].clamp(min=clamp_min_depth)
        gx = 2 * xy[:, 0] / (w - 1) - 1
        gy = 2 * xy[:, 1] / (h - 1) - 1
        g = torch.stack([gx, gy], dim=-1).view(n, nd * h, w, 2)
        out.append(F.grid_sample(feature1, g, mode="bilinear", padding_mode="zeros",
                                 align_corners=True).view(n, c, nd, h, w))
    return torch.cat(out, dim=2) if len(out) > 1 else out[0]


def _vb(x: torch.Tensor) -> torch.Tensor:
    """``[B, V, ...] -> [V*B, ...]`` (view-major)."""
    return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class DepthPredictorMultiView(nn.Module):
    """See the module docstring. Parameter names mirror the official module.

    ``forward(features [B,V,C,h,w], intrinsics [B,V,3,3] (normalized), extrinsics [B,V,4,4] (c2w), near, far [B,V],
    images [B,V,3,H,W], cnn_features [B,V,C,h,w])`` -> ``(depths [B,V,H*W,1,gpp], densities [B,V,H*W,1,gpp],
    raw_gaussians [B,V,H*W,raw_channels])``.
    """

    def __init__(self, feature_channels=128, upscale_factor=4, num_depth_candidates=32,
                 costvolume_unet_feat_dim=128, costvolume_unet_channel_mult=(1, 1, 1), costvolume_unet_attn_res=(),
                 gaussian_raw_channels=84, gaussians_per_pixel=1, num_views=2, depth_unet_feat_dim=64,
                 depth_unet_attn_res=(), depth_unet_channel_mult=(1, 1, 1)):
        super().__init__()
        self.num_depth_candidates = num_depth_candidates
        self.upscale_factor = upscale_factor
        self.gaussians_per_pixel = gaussians_per_pixel
        cin = num_depth_candidates + feature_channels
        cv = costvolume_unet_feat_dim
        self.corr_refine_net = nn.Sequential(
            nn.Conv2d(cin, cv, 3, 1, 1), nn.GroupNorm(8, cv), nn.GELU(),
            UNetModel(cv, cv, cv, costvolume_unet_attn_res, costvolume_unet_channel_mult, 32, num_views),
            nn.Conv2d(cv, num_depth_candidates, 3, 1, 1))
        self.regressor_residual = nn.Conv2d(cin, num_depth_candidates, 1, 1, 0)
        self.depth_head_lowres = nn.Sequential(
            nn.Conv2d(num_depth_candidates, num_depth_candidates * 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(num_depth_candidates * 2, num_depth_candidates, 3, 1, 1))
        self.upsampler = nn.Sequential(
            nn.Conv2d(2 * feature_channels, feature_channels, 3, 1, 1),
            nn.Upsample(scale_factor=upscale_factor, mode="bilinear", align_corners=True), nn.GELU())
        self.proj_feature = nn.Conv2d(feature_channels, depth_unet_feat_dim, 3, 1, 1)
        dch = depth_unet_feat_dim
        self.refine_unet = nn.Sequential(
            nn.Conv2d(3 + dch + 2, dch, 3, 1, 1), nn.GroupNorm(4, dch), nn.GELU(),
            UNetModel(dch, dch, dch, depth_unet_attn_res, depth_unet_channel_mult, 32, num_views))
        gin = dch + 3 + feature_channels
        self.to_gaussians = nn.Sequential(
            nn.Conv2d(gin, gaussian_raw_channels * 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(gaussian_raw_channels * 2, gaussian_raw_channels, 3, 1, 1))
        self.to_disparity = nn.Sequential(
            nn.Conv2d(dch, dch * 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(dch * 2, gaussians_per_pixel * 2, 3, 1, 1))

    # ------------------------------------------------------------------ cost volume
    def _cost_volume(self, features, intrinsics, extrinsics, near, far):
        b, v, c, h, w = features.shape
        feat_ref = _vb(features)
        # reference -> source camera transforms, one list entry per "other view" offset
        poses = []
        if v == 2:
            pose = extrinsics[:, 1].detach().inverse() @ extrinsics[:, 0].detach()
            poses.append(torch.cat((pose, pose.inverse()), dim=0))
        else:
            for off in range(1, v):
                poses.append(torch.cat([extrinsics[:, (i + off) % v].detach().inverse() @ extrinsics[:, i].detach()
                                        for i in range(v)], dim=0))
        sources = [_vb(features[:, [(i + off) % v for i in range(v)]]) for off in range(1, v)]
        k = intrinsics[:, :, :3, :3].detach().clone()
        k[:, :, 0, :] *= float(w)
        k[:, :, 1, :] *= float(h)
        k = _vb(k)
        disp_min = _vb(1.0 / far.detach()).unsqueeze(1)
        disp_max = _vb(1.0 / near.detach()).unsqueeze(1)
        lin = torch.linspace(0.0, 1.0, self.num_depth_candidates, device=features.device).unsqueeze(0)
        disp = (disp_min + lin * (disp_max - disp_min)).type_as(features)[:, :, None, None]  # [vb, D, 1, 1]
        depth = 1.0 / disp.repeat(1, 1, h, w)
        corrs = []
        for src, pose in zip(sources, poses):
            warped = warp_with_pose_depth_candidates(src, k, pose, depth)
            corrs.append((feat_ref.unsqueeze(2) * warped).sum(1) / (c ** 0.5))
        corr = torch.mean(torch.stack(corrs, dim=0), dim=0)
        return torch.cat((corr, feat_ref), dim=1), disp, feat_ref

    def forward(self, features, intrinsics, extrinsics, near, far, images, cnn_features):
        b, v, c, h, w = features.shape
        corr_in, disp_candi, feat_ref = self._cost_volume(features, intrinsics, extrinsics, near, far)
        cnn = _vb(cnn_features)
        corr = self.corr_refine_net(corr_in) + self.regressor_residual(corr_in)
        pdf = F.softmax(self.depth_head_lowres(corr), dim=1)
        coarse = (disp_candi * pdf).sum(dim=1, keepdim=True)
        pdf_max = torch.max(pdf, dim=1, keepdim=True)[0]
        pdf_max = F.interpolate(pdf_max, scale_factor=self.upscale_factor)
        full_disp = F.interpolate(coarse, scale_factor=self.upscale_factor, mode="bilinear", align_corners=True)

        feat_full = self.upsampler(torch.cat((feat_ref, cnn), dim=1))
        proj = self.proj_feature(feat_full)
        imgs = _vb(images)
        refine = self.refine_unet(torch.cat((imgs, proj, full_disp, pdf_max), dim=1))

        raw = self.to_gaussians(torch.cat([refine, imgs, feat_full], dim=1))  # [vb, c, H, W]
        hh, ww = raw.shape[-2:]
        raw = raw.view(v, b, raw.shape[1], hh * ww).permute(1, 0, 3, 2)  # b v (h w) c

        delta, dens = self.to_disparity(refine).split(self.gaussians_per_pixel, dim=1)
        far_vb = _vb(far).view(-1, 1, 1, 1)
        near_vb = _vb(near).view(-1, 1, 1, 1)
        fine = (full_disp + delta).clamp(1.0 / far_vb, 1.0 / near_vb)

        def to_bv(x):  # (v b) g H W -> b v (H W) 1 g
            g = x.shape[1]
            return x.view(v, b, g, hh * ww).permute(1, 0, 3, 2).unsqueeze(3)

        return to_bv(1.0 / fine), to_bv(torch.sigmoid(dens)), raw
