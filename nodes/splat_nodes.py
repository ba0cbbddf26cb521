"""Splat utility nodes: render a core SPLAT at cameras given in any format the engine reads."""
from __future__ import annotations

import json
import warnings

import torch

from . import host

CATEGORY = "VideoScene"


def _parse_color(text: str) -> tuple[float, float, float]:
    t = (text or "").strip()
    if t.startswith("#") and len(t) == 7:
        try:
            return tuple(int(t[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
        except ValueError:
            pass
    else:
        try:
            vals = [float(v) for v in t.replace(" ", "").split(",")]
            if len(vals) == 3 and all(0.0 <= v <= 1.0 for v in vals):
                return tuple(vals)
        except ValueError:
            pass
    raise ValueError(f"background {text!r} is not a colour: use '#rrggbb' or 'r,g,b' with values in 0..1")


#: fov (degrees) of core Preview Splat's viewer camera when it shows a result that carries a camera: the frontend
#: (1.49, applyResultToLoad3d) sets the node's "Camera Config" to {fov: 75, ...saved config} and then applies only the
#: camera_info's position, target and zoom
PREVIEW_VIEWER_FOV = 75.0


def camera_info(cameras, scene=None, index: int = 0) -> dict:
    """Core ``LOAD3D_CAMERA`` dict (Preview Splat's ``camera_info``) of camera ``index`` of ``cameras`` (engine
    Cameras, OpenCV c2w + K in pixels), so the viewer opens where that photo was taken.

    three.js convention (vscene_engine.io.camera_formats.to_load3d): world +Y up, camera looks down -Z; our world maps
    to it by (x, y, z) -> (x, -y, -z), as Preview Splat shows a 3DGS PLY. The viewer keeps its own fov (75 degrees,
    :data:`PREVIEW_VIEWER_FOV`) and applies position / target / zoom, so the photo's vertical fov goes into ``zoom``
    (core RenderSplat reads fov and zoom together and gets the same focal length); its OrbitControls look at
    ``target``, put on the optical axis at the median depth of ``scene``'s Gaussian centres in front of the camera
    (the orbit pivot is then the middle of the scene; 1 unit when no scene is given or nothing is in front).
    """
    from vscene_engine.io.camera_formats import to_load3d

    cam = cameras[[int(index)]]
    c2w = cam.c2w[0].detach().double().cpu()
    dist = 1.0
    if scene is not None and getattr(scene, "means", None) is not None and scene.means.shape[0] > 0:
        rel = scene.means.detach().double().cpu() - c2w[:3, 3]
        z = rel @ c2w[:3, 2]
        z = z[torch.isfinite(z) & (z > 1e-6)]
        if z.numel() > 0:
            dist = float(z.median())
    target = (c2w[:3, 3] + dist * c2w[:3, 2]).tolist()
    with warnings.catch_warnings():  # a viewer has a centred principal point and square pixels: approximate quietly
        warnings.simplefilter("ignore")
        return to_load3d(cam, target=target, viewer_fov=PREVIEW_VIEWER_FOV)[0]


def parse_cameras(text: str, load3d_camera=None, width: int = 512, height: int = 512):
    """Cameras from a LOAD3D_CAMERA dict (wins when connected) or from text: a JSON document in any format the engine
    reads (vscene, NeRF transforms.json, LOAD3D list, ...), RealEstate10K rows, or a path to a camera file/folder."""
    from vscene_engine.io.camera_formats import detect_format, from_load3d, load_cameras

    if load3d_camera is not None:
        info = load3d_camera if isinstance(load3d_camera, (list, tuple)) else [load3d_camera]
        return from_load3d(list(info), width=width, height=height)
    t = (text or "").strip()
    if not t:
        raise ValueError("no cameras: paste camera JSON (vscene / transforms.json / LOAD3D), RealEstate10K rows or a "
                         "path to a camera file, or connect a LOAD3D_CAMERA")
    if t[0] in "[{":
        try:
            data = json.loads(t)
        except json.JSONDecodeError as e:
            raise ValueError(f"cameras text is not valid JSON ({e.msg} at line {e.lineno}); fix it or give a path") from None
        src = data
    else:
        src = t
    # width/height only for formats that store no image size (they would otherwise resize a stored size)
    if detect_format(src) in ("load3d", "re10k"):
        return load_cameras(src, width=width, height=height)
    return load_cameras(src)


class VSceneRenderSplat:
    """Render a SPLAT at one or more cameras with the engine's exact rasterizer (gsplat on CUDA when usable)."""

    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "MASK", "IMAGE")
    RETURN_NAMES = ("images", "alpha", "depth")
    OUTPUT_TOOLTIPS = (
        "Rendered colour, one frame per camera [F,H,W,3].",
        "Accumulated opacity per pixel (1 = fully covered).",
        "Expected depth, normalised per batch to 0..1 (near = white); 0 where nothing was hit.",
    )
    DESCRIPTION = ("Renders a Gaussian splat (core SPLAT) from cameras: paste cameras in any format the pack reads "
                   "(vscene JSON, NeRF transforms.json, LLFF/COLMAP/RealEstate10K paths) or connect a Load3D camera. "
                   "Exact front-to-back alpha compositing (3DGS rules).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "splat": ("SPLAT", {"tooltip": "Gaussian splat to render (first item of a batch)."}),
                "cameras": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "Camera JSON text (vscene, transforms.json, LOAD3D list) or a path "
                                                  "to a camera file/folder. Ignored when load3d_camera is connected."}),
                "width": ("INT", {"default": 512, "min": 8, "max": 8192, "step": 8,
                                  "tooltip": "Image width for cameras that do not define one (LOAD3D, RealEstate10K)."}),
                "height": ("INT", {"default": 512, "min": 8, "max": 8192, "step": 8,
                                   "tooltip": "Image height for cameras that do not define one."}),
                "max_size": ("INT", {"default": 0, "min": 0, "max": 8192,
                                     "tooltip": "If > 0, downscale so the longer side is at most this many pixels."}),
                "background": ("STRING", {"default": "#000000",
                                          "tooltip": "Background colour: '#rrggbb' or 'r,g,b' in 0..1."}),
                "backend": (["auto", "torch", "gsplat"], {"default": "auto",
                                                          "tooltip": "auto: gsplat on CUDA if its first call works, "
                                                                     "else the exact pure-torch rasterizer."}),
            },
            "optional": {
                "load3d_camera": ("LOAD3D_CAMERA", {"tooltip": "Camera from a Load3D node; overrides the text."}),
            },
        }

    def render(self, splat, cameras, width, height, max_size, background, backend, load3d_camera=None):
        from vscene_engine.render.rasterize import render

        bg = _parse_color(background)
        cams = parse_cameras(cameras, load3d_camera, width, height)
        if max_size and max(cams.width, cams.height) > max_size:
            s = max_size / max(cams.width, cams.height)
            cams = cams.resized(max(1, round(cams.width * s)), max(1, round(cams.height * s)))
        scenes = host.splat_to_scenes(splat)
        if not scenes:
            raise ValueError("the SPLAT input is empty")
        device = host.torch_device()
        scene = scenes[0].to(device=device, dtype=torch.float32)
        cams = cams.to(device=device, dtype=torch.float32)
        rgbs, alphas, depths = [], [], []
        bar = host.progress(len(cams), "render splat")
        with torch.no_grad():
            for i in range(len(cams)):
                out = render(scene, cams[i], background=bg, backend=backend, progress=bar)  # checks Cancel
                rgbs.append(out.rgb[0].float().cpu())
                alphas.append(out.alpha[0, ..., 0].float().cpu())
                depths.append(out.depth[0, ..., 0].float().cpu())
                bar.update(i + 1, len(cams), preview=rgbs[-1])
        bar.close()
        rgb, alpha, depth = torch.stack(rgbs), torch.stack(alphas), torch.stack(depths)
        hit = depth > 0
        if bool(hit.any()):
            lo, hi = float(depth[hit].min()), float(depth[hit].max())
            vis = torch.where(hit, 1.0 - (depth - lo) / max(hi - lo, 1e-8) * 0.9, torch.zeros_like(depth))
        else:
            vis = torch.zeros_like(depth)
        return (rgb.clamp(0, 1), alpha, vis[..., None].expand(-1, -1, -1, 3).contiguous())


NODE_CLASS_MAPPINGS = {"VSceneRenderSplat": VSceneRenderSplat}
NODE_DISPLAY_NAME_MAPPINGS = {"VSceneRenderSplat": "Render Splat at Cameras (VideoScene)"}
