"""Video-model nodes: LoadVideoSceneModel -> LeapFlowStudent (VideoScene's one-step student) / VideoSceneTeacher.

Custom type: VSCENE_VIDEO_MODEL (vscene_engine.video.model.VideoModel, its modules under ComfyUI's model manager).
Outputs are core types: IMAGE [F,H,W,3] 0..1 and LATENT {"samples": [1,C,T,h,w]} (VAE space, unscaled).
"""
from __future__ import annotations

import json

import torch

from . import host

CATEGORY = "VideoScene"
_NONE = "none"
_MISSING_BASE = "(no model in models/CogVideo)"


def _choices(folder: str, exts: tuple[str, ...], none_first: bool = True, kinds: tuple[str, ...] | None = None
             ) -> list[str]:
    """Dropdown entries: files of model folder ``folder`` with a suffix in ``exts`` and, when ``kinds`` is given,
    a ``host.weights_kind`` in ``kinds`` (from the safetensors header: the DDPNet file is not offered as student
    weights, nor the student weights as a prompt embedding)."""
    try:
        names = host.list_weights(folder, kinds) if kinds is not None else host.list_models(folder)
        names = [n for n in names if n.lower().endswith(exts)]
    except Exception:  # pragma: no cover - a broken folder must not break INPUT_TYPES
        names = []
    return ([_NONE] if none_first else []) + names


_STUDENT_KINDS = ("transformer", "unreadable")
_EMBED_KINDS = ("prompt_embeds",)


def _embed_choices() -> list[str]:
    return _choices("videoscene", (".pt", ".pth", ".safetensors"), kinds=_EMBED_KINDS)


def _activation_bytes(model, name: str) -> int:
    """Rough activation memory reserved when loading ``name`` (bytes; a safety margin for the host's manager)."""
    H, W = model.native_size
    F = model.native_frames
    if name == "transformer":
        c = model.transformer.config
        tokens = model.latent_frames(F) * (H // 8 // c.patch_size) * (W // 8 // c.patch_size) + c.max_text_seq_length
        hidden = c.num_attention_heads * c.attention_head_dim
        return int(tokens * hidden * 2 * 24)
    return int(F * H * W * 2 * 64)  # VAE: a few full-resolution feature maps per frame batch


class LoadVideoSceneModel:
    """CogVideoX I2V base folder + VideoScene student weights + fixed prompt embedding -> VSCENE_VIDEO_MODEL."""

    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("VSCENE_VIDEO_MODEL", "STRING")
    RETURN_NAMES = ("video_model", "report")
    OUTPUT_TOOLTIPS = ("The video model for LeapFlowStudent / VideoScene Teacher.",
                       "JSON: base folder, dtype, parameters, weight keys matched/missing/unexpected.")
    DESCRIPTION = ("Loads a CogVideoX image-to-video diffusers folder from models/CogVideo (the layout kijai's "
                   "CogVideoXWrapper downloads; VideoScene uses feizhengcong/CogvideoX-Interpolation), applies the "
                   "VideoScene student weights (model.safetensors, from models/videoscene) non-strictly and the "
                   "fixed prompt embedding (prompt_embeds.pt, loaded as tensors only). The T5 text encoder is "
                   "never loaded when an embedding is given.")

    @classmethod
    def INPUT_TYPES(cls):
        bases = _choices("CogVideo", ("",), none_first=False) or [_MISSING_BASE]
        return {
            "required": {
                "base_model": (bases, {"tooltip": "Diffusers folder in models/CogVideo/<name> (transformer/, vae/, "
                                                  "scheduler/), e.g. CogvideoX-Interpolation or CogVideoX-5b-I2V."}),
                "weights": (_choices("videoscene", (".safetensors", ".sft"), kinds=_STUDENT_KINDS), {
                    "tooltip": "VideoScene student weights (model.safetensors) in models/videoscene; 'none' runs "
                               "the base model as is."}),
                "prompt_embeds": (_embed_choices(), {
                    "tooltip": "Fixed prompt embedding (prompt_embeds.pt) in models/videoscene. 'none': encode "
                               "the prompt below with the folder's text encoder (needs transformers)."}),
                "precision": (["auto", "bf16", "fp32", "fp16"], {
                    "default": "auto", "tooltip": "auto: bf16 on CUDA, fp32 on CPU. fp16 gives NaNs (black "
                                                  "frames) on the 5B model and is refused for it."}),
                "memory_mode": (["default", "offload", "sequential"], {
                    "default": "default",
                    "tooltip": "default: ComfyUI keeps the models loaded while memory allows. offload: VAE and "
                               "transformer never share the GPU (fits 24 GB with VAE tiling). sequential: the "
                               "transformer is streamed block by block (slow; for small cards)."}),
                "vae_tiling": ("BOOLEAN", {"default": False,
                                           "tooltip": "Encode/decode the VAE in tiles: much less memory, slight "
                                                      "seams possible. Recommended with offload on 24 GB cards."}),
            },
            "optional": {
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "Only used when prompt_embeds = none and the base folder has "
                                                 "text_encoder/ and tokenizer/."}),
                "negative_prompt_embeds": (_embed_choices(), {
                    "tooltip": "Embedding of the negative prompt, for the teacher's classifier-free guidance."}),
            },
        }

    def load(self, base_model, weights, prompt_embeds, precision, memory_mode, vae_tiling, prompt="",
             negative_prompt_embeds=_NONE):
        from vscene_engine.video.loading import load_video_model

        if base_model == _MISSING_BASE:
            raise ValueError("no CogVideoX model folder found. Put a diffusers image-to-video folder (transformer/, "
                             f"vae/, scheduler/) in {', '.join(host.model_dirs('CogVideo'))}, e.g. "
                             "feizhengcong/CogvideoX-Interpolation as models/CogVideo/CogvideoX-Interpolation.")
        base_dir = host.model_path("CogVideo", base_model)
        w = host.model_path("videoscene", weights) if weights != _NONE else None
        pe = host.model_path("videoscene", prompt_embeds) if prompt_embeds != _NONE else None
        npe = host.model_path("videoscene", negative_prompt_embeds) if negative_prompt_embeds not in (None, _NONE) \
            else None
        device = host.torch_device()
        model = load_video_model(base_dir, weights=w, prompt_embeds=pe, prompt=(prompt or None) if pe is None
                                 else None, negative_prompt_embeds=npe, device=device,
                                 dtype=None if precision == "auto" else precision, name=base_model)
        extra = {n: _activation_bytes(model, n) for n in ("transformer", "vae")}
        model.placer = host.ManagedPlacer({"transformer": model.transformer, "vae": model.vae}, memory_mode,
                                          extra_memory=extra)
        model.report["vae_tiling"] = bool(vae_tiling)
        model.report["memory_mode"] = memory_mode
        report = {"base": base_dir, "dtype": str(model.dtype).replace("torch.", ""), "device": str(device),
                  "parameters": model.n_params, "native": {"frames": model.native_frames,
                                                           "height": model.native_size[0],
                                                           "width": model.native_size[1]},
                  **model.report}
        return (model, json.dumps(report, indent=1, default=str))


def _views_images(views, first_image=None, last_image=None):
    if views is None and (first_image is None or last_image is None):
        raise ValueError("connect views (from Load View Pair) or both first_image and last_image")
    a = first_image[0] if first_image is not None else views.images[0]
    b = last_image[-1] if last_image is not None else views.images[1]
    return a.float().cpu(), b.float().cpu()


def _bar(total: int, desc: str, frames):
    """A host progress bar over ``total`` steps, showing the coarse video's middle frame until the sample's."""
    bar = host.progress(total, desc)
    bar.update(0, total, stage="encode", preview=frames[frames.shape[0] // 2])
    return bar


class LeapFlowStudent:
    """VideoScene's one-step student: coarse video + the two views -> a 3D-consistent video."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING")
    RETURN_NAMES = ("frames", "latent", "info")
    OUTPUT_TOOLTIPS = ("Generated frames [F,H,W,3] at the input video's size.",
                       "The denoised latent video (VAE space) [1,16,T,h,w].",
                       "JSON: timesteps, seed, pixel-noise sigma, stage timings.")
    DESCRIPTION = ("VideoScene (CVPR 2025): VAE-encodes the coarse video rendered from the 3D prior, noises it to "
                   "the leap timestep and denoises it in ONE step with the consistency-distilled CogVideoX student, "
                   "conditioned on the first/last view (no CFG, fixed prompt embedding). steps > 1: multi-step "
                   "consistency sampling from the same timestep.")

    @classmethod
    def INPUT_TYPES(cls):
        from vscene_engine.video.schedule import REFERENCE_TIMESTEP

        return {
            "required": {
                "video_model": ("VSCENE_VIDEO_MODEL", {"tooltip": "From Load VideoScene Model."}),
                "frames": ("IMAGE", {"tooltip": "Coarse video rendered along the path (Coarse Splat Prior "
                                                "frames): 49 frames for CogVideoX-5B."}),
                "timestep": ("INT", {"default": REFERENCE_TIMESTEP, "min": 1, "max": 999,
                                     "tooltip": "Leap timestep: how far the coarse video is noised before the "
                                                "one-step jump (VideoScene: 549; its demo: 459). Lower keeps more "
                                                "of the prior. Connect DDPNet Timestep to choose it per input."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                                 "tooltip": "Seeds all randomness (latent noise, pixel noise of the views, VAE "
                                            "posterior samples)."}),
                "steps": ("INT", {"default": 1, "min": 1, "max": 8,
                                  "tooltip": "1 = VideoScene. >1: consistency sampling (re-noise x0 to evenly "
                                             "spaced lower timesteps)."}),
                "aspect": (["stretch", "crop", "pad"], {
                    "default": "stretch",
                    "tooltip": "How frames reach the model's 3:2 (480x720): stretch (reference), crop (centre; "
                               "output at the crop size) or pad (reflection; output at the input size)."}),
            },
            "optional": {
                "views": ("VSCENE_VIEWS", {"tooltip": "The two views (first/last frame conditions)."}),
                "first_image": ("IMAGE", {"tooltip": "Override of the first view (first image of the batch)."}),
                "last_image": ("IMAGE", {"tooltip": "Override of the last view (last image of the batch)."}),
                "refine_3d": ("BOOLEAN", {"default": False,
                                          "tooltip": "3D-aware refine (VideoMV style): fit Gaussians to the "
                                                     "output at the trajectory cameras, render them, re-noise to "
                                                     "refine_t and take one more student step. Needs trajectory."}),
                "refine_t": ("INT", {"default": 100, "min": 1, "max": 999,
                                     "tooltip": "Timestep of the refine step (small: keeps the 3D render)."}),
                "trajectory": ("VSCENE_TRAJECTORY", {"tooltip": "Cameras of the frames (Coarse Splat Prior), "
                                                               "for refine_3d."}),
                "prior_splat": ("SPLAT", {"tooltip": "Warm start of the refine fit (e.g. the coarse prior)."}),
            },
        }

    def run(self, video_model, frames, timestep, seed, steps, aspect, views=None, first_image=None,
            last_image=None, refine_3d=False, refine_t=100, trajectory=None, prior_splat=None):
        from vscene_engine.video.leap import leap_sample

        a, b = _views_images(views, first_image, last_image)
        video = frames.float().cpu()
        video_model.check_frames(video.shape[0])
        bar = _bar(2 + steps, "VideoScene leap", video)
        bar.check_interrupt()
        res = leap_sample(video_model, a, b, video, timestep=timestep, seed=seed, steps=steps, aspect=aspect,
                          vae_tiling=bool(video_model.report.get("vae_tiling", False)), progress=bar)
        bar.update(2 + steps, 2 + steps, stage="decode", preview=res.frames[res.frames.shape[0] // 2])
        bar.close()
        info = {"timesteps": res.timesteps, **res.info}
        if refine_3d:
            res = self._refine(video_model, res, a, b, video, aspect, seed, refine_t, trajectory, prior_splat)
            info["refine_3d"] = {"timesteps": res.timesteps, **{k: v for k, v in res.info.items()
                                                               if isinstance(v, (int, float, str, dict, list))}}
        return (res.frames.to(host.intermediate_device()), {"samples": res.latents},
                json.dumps(info, indent=1, default=str))

    @staticmethod
    def _refine(video_model, res, a, b, video, aspect, seed, refine_t, trajectory, prior_splat):
        from vscene_engine.compose.aware3d import refine_3d
        from vscene_engine.video.leap import aspect_plan

        if trajectory is None:
            raise ValueError("refine_3d needs the trajectory (cameras of the frames): connect Coarse Splat Prior's "
                             "trajectory output")
        if len(trajectory) != res.frames.shape[0]:
            raise ValueError(f"the trajectory has {len(trajectory)} cameras but the video has {res.frames.shape[0]} "
                             "frames: connect the trajectory that rendered these frames")
        cams = trajectory.clone()
        if aspect == "crop":
            H, W = video_model.native_size
            y0, x0, ch, cw = aspect_plan(video.shape[1], video.shape[2], H, W, "crop")["crop"]
            cams = cams.resized(video.shape[2], video.shape[1]).cropped(x0, y0, cw, ch)
        init = host.splat_to_scenes(prior_splat)[0].to(dtype=torch.float32).clone() if prior_splat is not None \
            else None
        bar = host.progress(0, "VideoScene 3D-aware refine")
        out = refine_3d(video_model, res, cams, t_small=int(refine_t), seed=int(seed), first=a, last=b,
                        init_scene=init, aspect=aspect,
                        vae_tiling=bool(video_model.report.get("vae_tiling", False)), progress=bar)
        bar.update(bar.total, bar.total, stage=bar.stage, preview=out.frames[out.frames.shape[0] // 2])
        bar.close()
        return out


class VideoSceneTeacher:
    """The base model's multi-step DDIM sampler on the same conditioning (for 1/4/50-step comparisons)."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "LATENT", "STRING")
    RETURN_NAMES = ("frames", "latent", "info")
    OUTPUT_TOOLTIPS = ("Generated frames [F,H,W,3].", "Latent video (VAE space).", "JSON: timesteps, timings.")
    DESCRIPTION = ("DDIM (eta 0, trailing timesteps like CogVideoX) with optional classifier-free guidance, on the "
                   "student's conditioning. init = noise: the base model's own generation; init = video: SDEdit "
                   "from the coarse video noised to start_timestep.")

    @classmethod
    def INPUT_TYPES(cls):
        from vscene_engine.video.schedule import REFERENCE_TIMESTEP

        return {
            "required": {
                "video_model": ("VSCENE_VIDEO_MODEL", {"tooltip": "From Load VideoScene Model (weights = none "
                                                                  "for the pure base model)."}),
                "frames": ("IMAGE", {"tooltip": "Coarse video (geometry; content used with init = video)."}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 1000, "tooltip": "DDIM steps."}),
                "guidance": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Classifier-free guidance (>1 needs negative_prompt_embeds in "
                                                  "the loader; CogVideoX default 6)."}),
                "init": (["noise", "video"], {"default": "noise", "tooltip": "Start from noise or from the "
                                                                             "noised coarse video."}),
                "start_timestep": ("INT", {"default": REFERENCE_TIMESTEP, "min": 1, "max": 999,
                                           "tooltip": "init = video: timestep the coarse video is noised to."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Seeds all randomness."}),
                "aspect": (["stretch", "crop", "pad"], {"default": "stretch", "tooltip": "As LeapFlowStudent."}),
            },
            "optional": {
                "views": ("VSCENE_VIEWS", {"tooltip": "The two views (first/last frame conditions)."}),
                "first_image": ("IMAGE", {"tooltip": "Override of the first view."}),
                "last_image": ("IMAGE", {"tooltip": "Override of the last view."}),
            },
        }

    def run(self, video_model, frames, steps, guidance, init, start_timestep, seed, aspect, views=None,
            first_image=None, last_image=None):
        from vscene_engine.video.leap import teacher_sample

        a, b = _views_images(views, first_image, last_image)
        video = frames.float().cpu()
        video_model.check_frames(video.shape[0])
        bar = _bar(steps + 2, "VideoScene teacher", video)
        res = teacher_sample(video_model, a, b, video, steps=steps, guidance=guidance, seed=seed, init=init,
                             start_timestep=start_timestep if init == "video" else None, aspect=aspect,
                             vae_tiling=bool(video_model.report.get("vae_tiling", False)), progress=bar)
        bar.close()
        info = {"timesteps": res.timesteps, **res.info}
        return (res.frames.to(host.intermediate_device()), {"samples": res.latents},
                json.dumps(info, indent=1, default=str))


NODE_CLASS_MAPPINGS = {
    "LoadVideoSceneModel": LoadVideoSceneModel,
    "LeapFlowStudent": LeapFlowStudent,
    "VideoSceneTeacher": VideoSceneTeacher,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadVideoSceneModel": "Load VideoScene Model",
    "LeapFlowStudent": "Leap Flow Student (VideoScene)",
    "VideoSceneTeacher": "VideoScene Teacher (DDIM)",
}
