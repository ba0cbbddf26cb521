"""ScoreComposeMultiView: Diffusion² score composition of a video MODEL and a multi-view MODEL as a core GUIDER.

The guider samples a V x F grid of images (a latent batch of V*F, view-major) with core SamplerCustomAdvanced: at
every step the video model denoises each view's F frames (rows), the multi-view model each frame's V views (columns),
and their x0 estimates are combined with the weight s(i) of the chosen schedule (vscene_engine.compose).
"""
from __future__ import annotations

from . import host

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
                   "SV3D).")

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
            },
        }

    def get_guider(self, video_model, video_positive, multiview_model, multiview_positive, views, frames, schedule,
                   s0, s1, k, video_cfg, multiview_cfg, video_negative=None, multiview_negative=None):
        sched = {"kind": schedule, "s0": float(s0), "k": float(k)}
        if schedule == "linear":
            sched["s1"] = float(s1)
        g = host.make_compose_guider(video_model, multiview_model, views, frames,
                                     {"positive": video_positive, "negative": video_negative},
                                     {"positive": multiview_positive, "negative": multiview_negative},
                                     float(video_cfg), float(multiview_cfg), sched)
        return (g,)


NODE_CLASS_MAPPINGS = {"ScoreComposeMultiView": ScoreComposeMultiView}
NODE_DISPLAY_NAME_MAPPINGS = {"ScoreComposeMultiView": "Score Compose Multi-View (Diffusion²)"}
