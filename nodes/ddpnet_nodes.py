"""DDPNetTimestep: VideoScene's dynamic denoising policy picks the leap timestep for LeapFlowStudent.

Input: the coarse video (IMAGE frames, encoded with the video model's VAE for a latent DDPNet) or a LATENT; output:
the timestep INT (connect it to LeapFlowStudent's timestep input), a plot of the policy (IMAGE) and a JSON info STRING.
"""
from __future__ import annotations

import json

import torch

from . import host

CATEGORY = "VideoScene"
_NONE = "none"


def _text_image(lines, size=(256, 512)) -> torch.Tensor:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size[1], size[0]), (24, 24, 28))
    d = ImageDraw.Draw(img)
    y = 16
    for line in lines:
        d.text((16, y), line, fill=(230, 230, 230))
        y += 18
    import numpy as np

    return torch.from_numpy(np.asarray(img).astype("float32") / 255.0)


class DDPNetTimestep:
    """Coarse video -> leap timestep chosen by DDPNet (or the reference constant 549 without weights)."""

    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("INT", "IMAGE", "STRING")
    RETURN_NAMES = ("timestep", "policy", "info")
    OUTPUT_TOOLTIPS = ("Leap timestep for LeapFlowStudent (connect to its timestep input).",
                       "Bar chart of the policy over the timestep bins (chosen bin highlighted).",
                       "JSON: chosen timestep, probabilities, source.")
    DESCRIPTION = ("VideoScene's DDPNet: a small CNN over the rendered coarse video (its VAE latent or the frames) "
                   "that picks how far to noise it before the one-step leap (trained as a contextual bandit, "
                   "reward = -MSE to the real video). Without weights it returns the reference constant 549 and "
                   "says so.")

    @classmethod
    def INPUT_TYPES(cls):
        try:
            # only files whose safetensors metadata says DDPNet (format "videoscene-ddpnet"), not the student weights
            files = [n for n in host.list_weights("videoscene", ("ddpnet",))
                     if n.lower().endswith((".safetensors", ".sft"))]
        except Exception:  # pragma: no cover
            files = []
        return {
            "required": {
                "weights": ([_NONE] + files, {"tooltip": "DDPNet weights (.safetensors written by train-ddpnet) "
                                                         "in models/videoscene; none = the reference t = 549."}),
                "mode": (["greedy", "sample"], {"default": "greedy",
                                                "tooltip": "greedy: most probable bin; sample: draw from the "
                                                           "policy (seeded)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1, "tooltip": "Seed for mode = sample."}),
            },
            "optional": {
                "frames": ("IMAGE", {"tooltip": "The coarse video (Coarse Splat Prior frames)."}),
                "latent": ("LATENT", {"tooltip": "Or its latent [1,C,T,h,w] (VAE space x scaling is applied "
                                                 "with video_model, else used as is)."}),
                "video_model": ("VSCENE_VIDEO_MODEL", {"tooltip": "Encodes the frames for a latent DDPNet "
                                                                  "(the same model LeapFlowStudent uses)."}),
            },
        }

    def run(self, weights, mode, seed, frames=None, latent=None, video_model=None):
        from vscene_engine.policy.ddpnet import choose_timestep, frames_input, latent_input, load_ddpnet, policy_plot
        from vscene_engine.video.schedule import REFERENCE_TIMESTEP

        if weights == _NONE:
            info = {"timestep": REFERENCE_TIMESTEP,
                    "source": f"no DDPNet weights: the reference constant t = {REFERENCE_TIMESTEP}"}
            img = _text_image(["DDPNet: no weights loaded", f"using the reference constant t = {REFERENCE_TIMESTEP}",
                               "(load DDPNet weights to choose t per scene)"])
            return (REFERENCE_TIMESTEP, img[None], json.dumps(info, indent=1))
        net = load_ddpnet(host.model_path("videoscene", weights))
        kind = net.config.kind
        host.check_interrupt()
        if kind == "latent":
            if latent is not None:
                x = latent["samples"].float().cpu()
                if video_model is not None:
                    x = x * video_model.scaling_factor
            elif frames is not None and video_model is not None:
                from vscene_engine.video.leap import video_latents

                x = video_latents(video_model, frames.float().cpu(),
                                  vae_tiling=bool(video_model.report.get("vae_tiling", False)))
            else:
                raise ValueError("this DDPNet was trained on latents: connect latent, or frames together with "
                                 "video_model (its VAE encodes them)")
            x = latent_input(x)
        else:
            if frames is None:
                raise ValueError("this DDPNet was trained on pixel videos: connect frames")
            x = frames_input(frames.float().cpu())
        gen = torch.Generator().manual_seed(int(seed))
        ts, probs, bins = choose_timestep(net, x, mode=mode, generator=gen)  # list[int], one per video
        t, p = ts[0], probs[0]
        plot = policy_plot(p, bins, chosen=t)
        info = {"timestep": t, "mode": mode, "kind": kind, "bins": list(bins),
                "probs": [round(float(v), 4) for v in p], "source": weights}
        return (t, plot[None], json.dumps(info, indent=1))


NODE_CLASS_MAPPINGS = {"DDPNetTimestep": DDPNetTimestep}
NODE_DISPLAY_NAME_MAPPINGS = {"DDPNetTimestep": "DDPNet Timestep (VideoScene)"}
