"""ScoreComposeMultiView: Diffusion² score composition of a video MODEL and a multi-view MODEL as a core GUIDER.

The guider samples a V x F grid of images (a latent batch of V*F, view-major) with core SamplerCustomAdvanced: at
every step the video model denoises each view's F frames (rows), the multi-view model each frame's V views (columns),
and their x0 estimates are combined with the weight s(i) of the chosen schedule (vscene_engine.compose.diffusion2).
"""
from __future__ import annotations

from vscene_engine.compose.diffusion2 import WeightSchedule

from .guider import make_compose_guider

CATEGORY = "VideoScene"


class ScoreComposeMultiView:
    CATEGORY = CATEGORY
    FUNCTION = "get_guider"
    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("Guider for core SamplerCustomAdvanced; sample a latent batch of views x frames images.",)
    DESCRIPTION = ("Diffusion²: composes the scores of a video model (along the frames of each view) and a "
                   "multi-view model (along the views of each frame) into one V x F image matrix, x0 = (1-s) row + "
                   "s column, s(i) on a schedule (the released code: constant 0.6, or a logistic that DECREASES the "
                   "multi-view weight over the steps). Both models must share latent format and sigmas (SVD + "
                   "SV3D). Per-view video conditioning: a batch of V; per-frame multi-view conditioning: a batch "
                   "of F. Optional VideoMV 3D-aware denoising with vae + trajectory.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": ("MODEL", {"tooltip": "Row model: denoises each view's frames (e.g. SVD)."}),
                "video_positive": ("CONDITIONING", {"tooltip": "Conditioning of the video model (e.g. "
                                                               "SVD_img2vid_Conditioning positive)."}),
                "multiview_model": ("MODEL", {"tooltip": "Column model: denoises each frame's views (e.g. SV3D)."}),
                "multiview_positive": ("CONDITIONING", {"tooltip": "Conditioning of the multi-view model (e.g. "
                                                                   "SV3D_Conditioning positive)."}),
                "views": ("INT", {"default": 21, "min": 1, "max": 256,
                                  "tooltip": "V: views per frame (SV3D: 21). Latent batch = views x frames."}),
                "frames": ("INT", {"default": 14, "min": 1, "max": 256,
                                   "tooltip": "F: frames per view (SVD: 14 or 25)."}),
                "schedule": (["constant", "logistic", "linear", "cosine"], {
                    "default": "constant", "tooltip": "Multi-view weight s over the steps (released default: "
                                                      "constant 0.6)."}),
                "s0": ("FLOAT", {"default": 0.6, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "constant: s; linear: start; logistic: midpoint (fraction of steps)."}),
                "s1": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                                 "tooltip": "linear: end value of s."}),
                "k": ("FLOAT", {"default": 15.0, "min": 0.1, "max": 100.0, "step": 0.1,
                                "tooltip": "logistic: steepness."}),
                "video_cfg": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                        "tooltip": "CFG of the video model (uses video_negative)."}),
                "multiview_cfg": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 30.0, "step": 0.1,
                                            "tooltip": "CFG of the multi-view model (uses multiview_negative)."}),
            },
            "optional": {
                "video_negative": ("CONDITIONING", {"tooltip": "Negative conditioning of the video model."}),
                "multiview_negative": ("CONDITIONING", {"tooltip": "Negative conditioning of the multi-view model."}),
                "vae": ("VAE", {"tooltip": "3D-aware denoising (VideoMV): the VAE of the models' latent format, to "
                                           "decode x0 and re-encode the renders."}),
                "trajectory": ("VSCENE_TRAJECTORY", {"tooltip": "3D-aware denoising: cameras of the V views (Orbit "
                                                                "Trajectory with the same views)."}),
                "aware3d_every": ("INT", {"default": 0, "min": 0, "max": 1000,
                                          "tooltip": "3D-aware denoising every N steps from aware3d_start (VideoMV: "
                                                     "10 of 50); 0 = off. Needs vae and trajectory."}),
                "aware3d_start": ("FLOAT", {"default": 0.4, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "First 3D-aware step as a fraction of the steps."}),
                "aware3d_iters": ("INT", {"default": 100, "min": 1, "max": 5000,
                                          "tooltip": "Gaussian-fit iterations per 3D-aware step (warm-started)."}),
                "aware3d_groups": (["per_frame", "all"], {
                    "default": "per_frame", "tooltip": "per_frame: one scene per frame from its V views (moving "
                                                       "scene); all: one static scene from every image."}),
            },
        }

    def get_guider(self, video_model, video_positive, multiview_model, multiview_positive, views, frames, schedule,
                   s0, s1, k, video_cfg, multiview_cfg, video_negative=None, multiview_negative=None, vae=None,
                   trajectory=None, aware3d_every=0, aware3d_start=0.4, aware3d_iters=100,
                   aware3d_groups="per_frame"):
        weights = WeightSchedule(schedule, s0=float(s0), k=float(k), s1=float(s1) if schedule == "linear" else None)
        aware3d = None
        if int(aware3d_every) > 0:
            from vscene_engine.compose.aware3d import Aware3DConfig

            if vae is None or trajectory is None:
                raise ValueError("aware3d_every > 0 turns on 3D-aware denoising, which needs the vae and the "
                                 "trajectory inputs connected (or set aware3d_every to 0)")
            aware3d = {"vae": vae, "cameras": trajectory, "groups": aware3d_groups,
                       "cfg": Aware3DConfig(every=int(aware3d_every), start=float(aware3d_start),
                                            iters=int(aware3d_iters)).validate()}
        g = make_compose_guider(video_model, multiview_model, views, frames,
                                {"positive": video_positive, "negative": video_negative},
                                {"positive": multiview_positive, "negative": multiview_negative},
                                float(video_cfg), float(multiview_cfg), weights, aware3d=aware3d)
        return (g,)


NODE_CLASS_MAPPINGS = {"ScoreComposeMultiView": ScoreComposeMultiView}
NODE_DISPLAY_NAME_MAPPINGS = {"ScoreComposeMultiView": "Score Compose Multi-View (Diffusion²)"}


class GridSelect:
    """V x F image grid (view-major batch) -> one frame's V views or one view's F frames."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The selected views (axis frame) or frames (axis view).",)
    DESCRIPTION = "Selects a column (the views of one frame) or a row (the frames of one view) of a composed grid."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {"tooltip": "Decoded grid, batch views x frames, view-major (v*frames + f)."}),
            "views": ("INT", {"default": 21, "min": 1, "max": 256, "tooltip": "V of the grid."}),
            "frames": ("INT", {"default": 14, "min": 1, "max": 256, "tooltip": "F of the grid."}),
            "axis": (["frame", "view"], {"default": "frame",
                                         "tooltip": "frame: the V views of frame index; view: the F frames of "
                                                    "view index."}),
            "index": ("INT", {"default": 0, "min": 0, "max": 255, "tooltip": "Which frame / view."}),
        }}

    def run(self, images, views, frames, axis, index):
        from vscene_engine.compose.diffusion2 import grid_select

        return (grid_select(images, views, frames, axis, index),)


class OrbitTrajectory:
    """Cameras of an SV3D-style orbit (for SplatReconstruct on a multi-view column)."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("VSCENE_TRAJECTORY",)
    RETURN_NAMES = ("trajectory",)
    OUTPUT_TOOLTIPS = ("One camera per view, azimuth i*360/(views-1) as core SV3D_Conditioning.",)
    DESCRIPTION = ("Orbit cameras around the origin matching core SV3D_Conditioning's views (fixed elevation, "
                   "evenly spaced azimuths), to reconstruct a splat from the views of one frame.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "views": ("INT", {"default": 21, "min": 1, "max": 256, "tooltip": "Number of views (SV3D: 21)."}),
            "elevation": ("FLOAT", {"default": 0.0, "min": -90.0, "max": 90.0, "step": 0.1,
                                    "tooltip": "Elevation in degrees (as in SV3D_Conditioning)."}),
            "fov_deg": ("FLOAT", {"default": 33.8, "min": 5.0, "max": 120.0, "step": 0.1,
                                  "tooltip": "Field of view (SV3D renders: about 33.8 degrees)."}),
            "radius": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 100.0, "step": 0.1,
                                 "tooltip": "Camera distance from the object centre."}),
            "width": ("INT", {"default": 576, "min": 16, "max": 4096, "step": 8, "tooltip": "Image width."}),
            "height": ("INT", {"default": 576, "min": 16, "max": 4096, "step": 8, "tooltip": "Image height."}),
        }}

    def run(self, views, elevation, fov_deg, radius, width, height):
        from vscene_engine.compose.diffusion2 import orbit_cameras

        return (orbit_cameras(views, elevation, fov_deg, radius, width, height),)


NODE_CLASS_MAPPINGS.update({"GridSelect": GridSelect, "OrbitTrajectory": OrbitTrajectory})
NODE_DISPLAY_NAME_MAPPINGS.update({"GridSelect": "Grid Select (VideoScene)",
                                   "OrbitTrajectory": "Orbit Trajectory (VideoScene)"})
