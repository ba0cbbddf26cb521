"""Two-photo pipeline nodes: LoadViewPair -> CoarseSplatPrior -> (LeapFlowStudent, later) -> SplatReconstruct.

Custom types: VSCENE_VIEWS (vscene_engine.views.pair.ViewPair) and VSCENE_TRAJECTORY (vscene_engine.core.cameras.Cameras of
the video frames). Everything else is a core type: IMAGE, MASK, SPLAT, LOAD3D_CAMERA.
"""
from __future__ import annotations

import dataclasses
import json

import torch

from . import host
from .splat_nodes import _parse_color, camera_info

CATEGORY = "VideoScene"


class LoadViewPair:
    """Two photos (+ optional cameras) -> VSCENE_VIEWS with consistent images and intrinsics."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("VSCENE_VIEWS", "IMAGE", "STRING")
    RETURN_NAMES = ("views", "images", "report")
    OUTPUT_TOOLTIPS = ("The two views with cameras, depth range and provenance.",
                       "The two prepared images [2,H,W,3] at the working size.",
                       "JSON report: camera source, pose-estimation inliers/confidence, sizes.")
    DESCRIPTION = ("Prepares two photos of one scene: brings them to one working size (keeping intrinsics right) "
                   "and gets their cameras — estimated from image features when none are given (baseline "
                   "normalised to 1), or read from camera text/JSON or two Load3D cameras, or taken from core "
                   "Depth Anything 3 (cameras and depth; baseline normalised to 1).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image_a": ("IMAGE", {"tooltip": "First photo (start of the camera path). First image of a batch."}),
                "image_b": ("IMAGE", {"tooltip": "Second photo (end of the camera path); may differ in size."}),
                "cameras_from": (["estimate", "text", "load3d", "da3", "prior"], {
                    "default": "estimate",
                    "tooltip": "estimate: pose from image features (needs overlap and some parallax); text: the "
                               "cameras field; load3d: the camera_a / camera_b inputs; da3: cameras, depth and "
                               "confidence from core Depth Anything 3 (the da3_geometry input; its views 0 and 1); "
                               "prior: no pose here, the prior finds it (CoarseSplatPrior method noposplat; for "
                               "wide baselines where feature matching fails)."}),
                "cameras": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "2 cameras as text: vscene JSON, transforms.json (2 frames), "
                                                  "RealEstate10K rows, or a path to a camera file/folder."}),
                "fov_deg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 170.0, "step": 0.5,
                                      "tooltip": "Horizontal field of view of the photos in degrees (estimate "
                                                 "mode). 0 = auto: self-calibrate the focal length from the pair; "
                                                 "when the pair cannot tell it (little rotation, an orbit around "
                                                 "an object, a flat scene) 60 is assumed and the report says so. "
                                                 "A value > 0 is used as given. Phone main cameras: ~65-70."}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                 "tooltip": "Longer side of the working images (rounded to a multiple of 8)."}),
                "resize": (["crop", "pad", "stretch"], {"default": "crop",
                                                        "tooltip": "How photo B is brought to photo A's aspect "
                                                                   "ratio; intrinsics follow."}),
            },
            "optional": {
                "camera_a": ("LOAD3D_CAMERA", {"tooltip": "Camera of photo A (cameras_from = load3d)."}),
                "camera_b": ("LOAD3D_CAMERA", {"tooltip": "Camera of photo B (cameras_from = load3d)."}),
                "da3_geometry": ("DA3_GEOMETRY", {
                    "tooltip": "cameras_from = da3: output of core 'Run Depth Anything 3' (mode multiview, "
                               "Small/Base model) on a batch of the two photos (A first). Cameras are re-based on "
                               "photo A with baseline 1; the depth travels with the views (CoarseSplatPrior method "
                               "depth)."}),
            },
        }

    def load(self, image_a, image_b, cameras_from, cameras, fov_deg, size, resize, camera_a=None, camera_b=None,
             da3_geometry=None):
        from vscene_engine.io.camera_formats import from_load3d
        from vscene_engine.views.pair import make_view_pair, prepare_image

        cams = None
        if cameras_from == "text":
            from .splat_nodes import parse_cameras

            a = prepare_image(image_a, "image A")
            cams = parse_cameras(cameras, None, int(a.shape[1]), int(a.shape[0]))
        elif cameras_from == "load3d":
            if camera_a is None or camera_b is None:
                raise ValueError("cameras_from = load3d needs both camera_a and camera_b connected")
            a = prepare_image(image_a, "image A")
            cams = from_load3d([camera_a, camera_b], width=int(a.shape[1]), height=int(a.shape[0]))
        elif cameras_from == "da3":
            from vscene_engine.views.da3 import da3_view_pair

            if da3_geometry is None:
                raise ValueError("cameras_from = da3 needs da3_geometry connected: 'Run Depth Anything 3' (mode "
                                 "multiview, DA3-Small/Base from models/geometry_estimation) on a batch of the two "
                                 "photos")
        elif cameras_from == "prior":
            from vscene_engine.views.pair import placeholder_cameras

            a = prepare_image(image_a, "image A")
            cams = placeholder_cameras(int(a.shape[1]), int(a.shape[0]), fov_deg if fov_deg > 0 else 60.0)
        elif cameras_from != "estimate":
            raise ValueError(f"unknown cameras_from {cameras_from!r}")
        if cameras_from == "da3":
            views = da3_view_pair(image_a, image_b, da3_geometry, size=size, resize=resize)
        else:
            views = make_view_pair(image_a, image_b, cams, fov_deg=fov_deg, size=size, resize=resize)
        if cameras_from == "prior":
            views = dataclasses.replace(views, provenance=dict(views.provenance, cameras="prior",
                                                               fov_given=bool(fov_deg > 0)))
        report = {"near": views.near, "far": views.far, "scale": views.scale, **views.provenance}
        return (views, views.images.clone(), json.dumps(report, indent=1, default=str))


class CoarseSplatPrior:
    """VSCENE_VIEWS -> coarse Gaussian scene + the video rendered along the camera path."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("SPLAT", "IMAGE", "MASK", "VSCENE_TRAJECTORY", "LOAD3D_CAMERA", "VSCENE_VIEWS")
    RETURN_NAMES = ("splat", "frames", "coverage", "trajectory", "camera_info", "views")
    OUTPUT_TOOLTIPS = ("Coarse 3D Gaussian scene (one Gaussian per reliable pixel of each view).",
                       "Frames rendered along the camera path [F,H,W,3].",
                       "Per-frame coverage (accumulated opacity); low = holes the prior cannot fill.",
                       "Cameras of the frames (for SplatReconstruct / the video student).",
                       "Camera of photo A for Preview Splat's camera_info: the viewer opens where photo A was taken.",
                       "The input views with the cameras the prior used: for noposplat the cameras it found "
                       "(A = identity, baseline 1); for the other methods the input views unchanged.")
    DESCRIPTION = ("VideoScene's coarse 3D prior: plane-sweep stereo between the two views (left-right checked), "
                   "one Gaussian per pixel, the feed-forward MVSplat encoder (the paper's prior; official "
                   "checkpoint), one Gaussian per pixel of depth maps (Depth Anything 3's), or the pose-free "
                   "NoPoSplat network (VideoScene's demo prior for unposed photos; it finds the cameras itself), "
                   "rendered along the camera path between the views (default: 49 frames, cosine easing, as "
                   "VideoScene).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "views": ("VSCENE_VIEWS", {"tooltip": "From LoadViewPair."}),
                "method": (["stereo", "mvsplat", "depth", "noposplat"], {
                    "default": "stereo",
                    "tooltip": "stereo: weight-free plane-sweep stereo. mvsplat: VideoScene's feed-forward MVSplat "
                               "prior (needs mvsplat_weights: the official re10k.ckpt or its .safetensors in "
                               "models/mvsplat). depth: one Gaussian per pixel of depth maps: Depth Anything 3's "
                               "(LoadViewPair cameras_from = da3) or the depth input. noposplat: pose-free NoPoSplat "
                               "(needs noposplat_weights in models/noposplat); replaces the views' cameras with the "
                               "ones it finds (output 'views')."}),
                "frames": ("INT", {"default": 49, "min": 2, "max": 241,
                                   "tooltip": "Frames of the camera path (VideoScene's student needs 49)."}),
                "path": (["interpolate", "se3", "orbit", "keyframes"], {
                    "default": "interpolate",
                    "tooltip": "interpolate: VideoScene's pivot interpolation A->B; se3: straight; orbit: around "
                               "the scene; keyframes: A -> via_camera -> B."}),
                "easing": (["cosine", "linear"], {"default": "cosine", "tooltip": "Speed profile along the path."}),
                "num_depths": ("INT", {"default": 64, "min": 8, "max": 256,
                                       "tooltip": "Depth planes of the stereo sweep (more: finer, slower)."}),
                "background": ("STRING", {"default": "#000000",
                                          "tooltip": "Colour behind the scene: '#rrggbb' or 'r,g,b' in 0..1."}),
            },
            "optional": {
                "via_camera": ("LOAD3D_CAMERA", {"tooltip": "Keyframe between the two views (path = keyframes)."}),
                "mvsplat_weights": (["none"] + _mvsplat_files(), {
                    "tooltip": "method mvsplat: MVSplat weights in models/mvsplat (official re10k.ckpt, read "
                               "without running pickled code, or the .safetensors from `python -m vscene_engine "
                               "convert-mvsplat`)."}),
                "mvsplat_size": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 16,
                                         "tooltip": "method mvsplat: network input size (short side; official: "
                                                    "256)."}),
                "mvsplat_fit": (["crop", "full"], {"default": "crop",
                                                   "tooltip": "method mvsplat: crop = official square centre crop "
                                                              "(outside it the video shows background); full = "
                                                              "the whole photo (short side = size)."}),
                "near": ("FLOAT", {"default": 1.0, "min": 1e-4, "max": 1e6, "step": 0.01,
                                   "tooltip": "method mvsplat: nearest depth of the plane sweep in pose units "
                                              "(RealEstate10K model: 1; estimated poses have baseline 1)."}),
                "far": ("FLOAT", {"default": 100.0, "min": 1e-3, "max": 1e7, "step": 1.0,
                                  "tooltip": "method mvsplat: farthest depth (RealEstate10K model: 100)."}),
                "depth": ("IMAGE", {"tooltip": "method depth: a depth map per view (batch of 2, A first; channel 0) "
                                               "of any scale, e.g. from a depth estimator; the scale is fitted to "
                                               "the cameras photometrically. Not needed with cameras_from = da3."}),
                "confidence": ("MASK", {"tooltip": "method depth: per-view confidence in 0..1 (batch of 2); pixels "
                                                   "below min_confidence are dropped, the rest fade with it."}),
                "depth_encoding": (["depth", "inverse"], {
                    "default": "depth",
                    "tooltip": "method depth, depth input: depth = larger is farther (e.g. DA3 raw depth); "
                               "inverse = near is bright (disparity-like depth images)."}),
                "min_confidence": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1.0, "step": 0.01,
                                             "tooltip": "method depth: drop pixels below this confidence (DA3's "
                                                        "is normalised per view to 0..1, like core's "
                                                        "confidence_threshold)."}),
                "noposplat_weights": (["none"] + _noposplat_files(), {
                    "tooltip": "method noposplat: NoPoSplat weights in models/noposplat (the release's re10k.ckpt, "
                               "acid.ckpt, mixRe10kDl3dv.ckpt or mixRe10kDl3dv_512x512.ckpt, read without running "
                               "pickled code, or a .safetensors of them). The pack never downloads weights."}),
                "noposplat_intrinsics": (["cameras", "default"], {
                    "default": "cameras",
                    "tooltip": "method noposplat: cameras = give the network the views' focal length (from "
                               "LoadViewPair; with cameras_from = prior only when fov_deg > 0); default = the demo's "
                               "fx = fy = 0.8 of the square crop."}),
                "noposplat_refine_steps": ("INT", {
                    "default": 0, "min": 0, "max": 1000,
                    "tooltip": "method noposplat: photometric refinement steps of camera B after PnP (the release "
                               "uses 200; slow on CPU). 0 = PnP only."}),
            },
        }

    def run(self, views, method, frames, path, easing, num_depths, background, via_camera=None,
            mvsplat_weights="none", mvsplat_size=256, mvsplat_fit="crop", near=1.0, far=100.0, depth=None,
            confidence=None, depth_encoding="depth", min_confidence=0.1, noposplat_weights="none",
            noposplat_intrinsics="cameras", noposplat_refine_steps=0):
        from vscene_engine.io.camera_formats import from_load3d
        from vscene_engine.core.cameras import Cameras
        from vscene_engine.pipeline import coarse_video, make_path
        from vscene_engine.prior.coarse import PriorConfig
        from vscene_engine.prior.stereo import StereoConfig

        bg = _parse_color(background)
        prior = None
        if views.provenance.get("cameras") == "prior" and method != "noposplat":
            raise ValueError("these views have no cameras yet (LoadViewPair cameras_from = prior): use method "
                             "noposplat, which finds them, or set cameras_from to estimate / da3 / text / load3d")
        if method == "noposplat":
            # NoPoSplat finds the cameras itself: run it first, then the path goes through ITS cameras
            prior, views = _noposplat_views(views, noposplat_weights, noposplat_intrinsics, noposplat_refine_steps)
        kf = None
        if path == "keyframes":
            if via_camera is None:
                raise ValueError("path = keyframes needs via_camera (a Load3D camera) connected")
            via = from_load3d([via_camera], width=views.width, height=views.height)
            c = views.cameras
            kf = Cameras(torch.cat([c.c2w[:1], via.c2w.to(c.c2w), c.c2w[1:]]), c.K[:1].expand(3, 3, 3), c.width,
                         c.height, c.near[:1].expand(3), c.far[:1].expand(3))
        traj = make_path(views, frames=frames, kind=path, easing=easing, keyframes=kf)
        cfg, inputs = PriorConfig(method=method, stereo=StereoConfig(num_depths=int(num_depths))), {}
        managed = None
        if method == "mvsplat":
            if mvsplat_weights in (None, "", "none"):
                raise ValueError("method mvsplat needs mvsplat_weights: put the official MVSplat re10k.ckpt (or the "
                                 ".safetensors from `python -m vscene_engine convert-mvsplat re10k.ckpt --out "
                                 "re10k.safetensors`) in models/mvsplat and pick it; without it use method stereo")
            managed = _mvsplat_model(host.model_path("mvsplat", mvsplat_weights))
            cfg = dataclasses.replace(cfg, mvsplat_size=int(mvsplat_size), mvsplat_fit=mvsplat_fit, near=float(near),
                                      far=float(far))
            inputs = {"mvsplat": managed.load_to_gpu()}
        elif method == "depth":
            cfg, inputs = _depth_prior(views, cfg, depth, confidence, depth_encoding, min_confidence)
        bar = host.progress(len(traj), "coarse prior video")
        try:
            res = coarse_video(views, traj, background=bg, config=cfg, progress=bar, prior=prior, **inputs)
        finally:
            bar.close()
            if managed is not None:
                managed.offload()
        return (host.scene_to_splat(res.scene), res.frames.float().cpu(), res.coverage.float().cpu(), traj,
                camera_info(traj, res.scene), views)


def _noposplat_views(views, weights, intrinsics, refine_steps):
    """Run method noposplat on ``views`` -> (PriorResult, the views with NoPoSplat's cameras)."""
    from vscene_engine.prior.coarse import PriorConfig, coarse_prior

    if weights in (None, "", "none"):
        raise ValueError("method noposplat needs noposplat_weights: put a NoPoSplat release checkpoint (re10k.ckpt, "
                         "acid.ckpt or mixRe10kDl3dv*.ckpt from the NoPoSplat project page) in models/noposplat and "
                         "pick it; without it use method stereo")
    if intrinsics == "cameras" and views.provenance.get("cameras") == "prior" and \
            not views.provenance.get("fov_given"):
        intrinsics = "default"  # placeholder cameras with no FOV from the user: the demo's fx = fy = 0.8
    managed = _noposplat_model(host.model_path("noposplat", weights))
    try:
        net = managed.load_to_gpu()
        imgs = views.images.to(next(net.parameters()).device)
        cfg = PriorConfig(method="noposplat", noposplat_intrinsics=intrinsics,
                          noposplat_refine_steps=int(refine_steps))
        with host.progress(0, "NoPoSplat prior") as bar:
            prior = coarse_prior(imgs, views.cameras.to(device=imgs.device), cfg, noposplat=net, progress=bar)
    finally:
        managed.offload()
    cams = prior.cameras.to(device=views.images.device, dtype=views.cameras.dtype)
    prov = dict(views.provenance, cameras="noposplat", noposplat={
        k: prior.info[k] for k in ("intrinsics", "focal_normalised", "pnp_points", "pnp_inliers", "refine_steps",
                                   "baseline_network_units", "image_size") if k in prior.info})
    prior.scene = prior.scene.to(device=views.images.device)
    new = dataclasses.replace(views, cameras=cams, near=float(cams.near.min()), far=float(cams.far.max()),
                              scale=1.0, provenance=prov)
    return prior, new


def _depth_prior(views, cfg, depth, confidence, encoding, min_confidence) -> tuple:
    """(PriorConfig, coarse_video inputs) of method depth: the depth input (scale fitted) or else the views' own
    (DA3) depth."""
    from vscene_engine.prior.depth import depth_from_image, maps_to_views

    cfg, kw = dataclasses.replace(cfg, min_confidence=float(min_confidence)), {}
    if depth is not None:
        kw["depth"] = maps_to_views(views, depth_from_image(depth, encoding), "depth")
        cfg = dataclasses.replace(cfg, align_depth_scale=True)
    elif views.depth is None:
        raise ValueError("method depth needs depth maps: set LoadViewPair's cameras_from to da3 (with 'Run Depth "
                         "Anything 3' connected) or connect a depth image (batch of 2) to the depth input")
    if confidence is not None:
        kw["confidence"] = maps_to_views(views, confidence.detach().float().cpu().reshape(
            -1, *confidence.shape[-2:]), "confidence").clamp(0, 1)
    return cfg, kw


_PRIOR_WEIGHT_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth")


def _weight_files(folder: str) -> list:
    """Weights files in a model folder (``models/mvsplat``, ``models/noposplat``) for a dropdown."""
    try:
        return [n for n in host.list_models(folder) if n.lower().endswith(_PRIOR_WEIGHT_EXTS)]
    except Exception:  # pragma: no cover
        return []


def _mvsplat_files() -> list:
    return _weight_files("mvsplat")


def _noposplat_files() -> list:
    return _weight_files("noposplat")


_MODEL_CACHE: dict = {}  # folder -> (file key, ManagedModule): one network per prior kept, per file version


def _managed_network(folder: str, path: str, load):
    """The network ``load(path, device="cpu")`` of a weights file under the host's memory manager, cached per
    (folder, file version)."""
    import os

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    hit = _MODEL_CACHE.get(folder)
    if hit is None or hit[0] != key:
        _MODEL_CACHE.pop(folder, None)
        net = load(path, device="cpu")
        size = sum(p.numel() * p.element_size() for p in net.parameters())
        _MODEL_CACHE[folder] = (key, host.ManagedModule(net, size=size))
    return _MODEL_CACHE[folder][1]


def _mvsplat_model(path: str):
    """The MVSplat encoder of a weights file under the host's memory manager."""
    from vscene_engine.prior.mvsplat import load_mvsplat

    return _managed_network("mvsplat", path, load_mvsplat)


def _noposplat_model(path: str):
    """The NoPoSplat network of a weights file under the host's memory manager."""
    from vscene_engine.prior.noposplat import load_noposplat

    return _managed_network("noposplat", path, load_noposplat)


class SplatReconstruct:
    """Frames with known cameras (+ the two photos) -> an optimised Gaussian scene."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("SPLAT", "IMAGE", "STRING", "LOAD3D_CAMERA")
    RETURN_NAMES = ("splat", "renders", "psnr", "camera_info")
    OUTPUT_TOOLTIPS = ("The reconstructed Gaussian scene.", "The scene re-rendered at the trajectory cameras.",
                       "JSON: PSNR (dB) of every frame and input view against its target.",
                       "Camera of the trajectory's first frame (photo A) for Preview Splat's camera_info.")
    DESCRIPTION = ("3DGS optimisation (L1 + D-SSIM, Adam, densify/prune) of a scene to the video frames at their "
                   "trajectory cameras plus the two input photos, starting from a SPLAT (e.g. the coarse prior) "
                   "or from random Gaussians.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "Video frames [F,H,W,3] matching the trajectory."}),
                "trajectory": ("VSCENE_TRAJECTORY", {"tooltip": "Cameras of the frames (from CoarseSplatPrior)."}),
                "iterations": ("INT", {"default": 600, "min": 1, "max": 30000,
                                       "tooltip": "Optimisation steps (3DGS uses 30000 on GPU)."}),
                "densify": ("BOOLEAN", {"default": True, "tooltip": "Clone/split/prune Gaussians while fitting."}),
                "input_view_weight": ("INT", {"default": 4, "min": 0, "max": 64,
                                              "tooltip": "How many times each real photo counts vs. one frame."}),
                "sh_degree": ("INT", {"default": 1, "min": 0, "max": 3, "tooltip": "View-dependent colour degree."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "tooltip": "Seeds all randomness."}),
                "background": ("STRING", {"default": "#000000",
                                          "tooltip": "Background the frames were rendered over."}),
            },
            "optional": {
                "views": ("VSCENE_VIEWS", {"tooltip": "The two photos and cameras (added as training views)."}),
                "init": ("SPLAT", {"tooltip": "Starting scene (e.g. the coarse prior); random when absent."}),
            },
        }

    def run(self, frames, trajectory, iterations, densify, input_view_weight, sh_degree, seed, background,
            views=None, init=None):
        from vscene_engine.pipeline import reconstruct

        bg = _parse_color(background)
        if views is not None and input_view_weight == 0:
            views = None
        bar = host.progress(iterations, "reconstruct splat", preview_every=25)
        # ComfyUI executes every node inside torch.inference_mode() (execution.py), where autograd is off and the
        # input tensors are "inference tensors" that cannot be saved for backward. Fitting needs gradients: leave
        # inference mode and work on normal copies of every input tensor.
        with torch.inference_mode(False), torch.enable_grad():
            frames_t = frames.detach().float().cpu().clone()
            traj = trajectory.clone()
            if views is not None:
                views = dataclasses.replace(views, images=views.images.clone(), cameras=views.cameras.clone())
            init_scene = host.splat_to_scenes(init)[0].to(dtype=torch.float32).clone() if init is not None else None
            res = reconstruct(frames_t, traj, views, init_scene, iters=iterations, densify=densify,
                              input_view_weight=max(1, input_view_weight), sh_degree=sh_degree, seed=seed,
                              background=bg, progress=bar)
        bar.close()
        vals = list(res.psnr_per_view.values())
        report = {"mean_psnr": sum(vals) / len(vals), "per_view": res.psnr_per_view, "gaussians": len(res.scene)}
        return (host.scene_to_splat(res.scene), res.renders.float().cpu(), json.dumps(report, indent=1),
                camera_info(traj, res.scene))


NODE_CLASS_MAPPINGS = {
    "LoadViewPair": LoadViewPair,
    "CoarseSplatPrior": CoarseSplatPrior,
    "SplatReconstruct": SplatReconstruct,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadViewPair": "Load View Pair (VideoScene)",
    "CoarseSplatPrior": "Coarse Splat Prior (VideoScene)",
    "SplatReconstruct": "Splat Reconstruct (VideoScene)",
}
