"""The loaded video model (CogVideoX image-to-video family) shared by the loader and the samplers.

Entry point: the :class:`VideoModel` dataclass. It is produced by ``cogvideo_load.load_video_model`` and consumed by
``leap.leap_sample`` / ``leap.teacher_sample``. It owns the model's :class:`~vscene_engine.video.schedule.NoiseSchedule`
(``model.schedule``, built once from ``scheduler_config``), which every sampler and trainer uses. No ComfyUI imports.

Geometry (CogVideoX 1.0, e.g. ``CogVideoX-5b-I2V`` / ``feizhengcong/CogvideoX-Interpolation``):
  pixels  [B, 3, F, H, W] in [-1, 1]   F = 4k+1 (49), H, W multiples of 16 (480 x 720)
  latents [B, C, T, h, w] (ComfyUI LATENT order) with C = 16, T = (F-1)/4 + 1 (13), h = H/8 (60), w = W/8 (90).
  The diffusers transformer takes [B, T, C, h, w]; the samplers permute.
  The I2V transformer input has 2C channels: the noisy video latents concatenated with the image latents
  [first, zeros x (T-2), last] on the channel axis.

Placement: ``placer`` decides where a module lives while it is used (see :class:`Placer`). The default keeps every
module on ``device``. ComfyUI nodes pass a placer that goes through the host's model manager.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .schedule import NoiseSchedule

__all__ = ["VideoModel", "Placer", "DevicePlacer", "StreamingPlacer"]


class Placer:
    """Puts a module on the compute device for the duration of a ``with`` block.

    ``use(name, module)`` is a context manager yielding the module ready for compute. ``name`` is "transformer",
    "vae" or "text_encoder". Subclasses implement offload policies; this base class does nothing (the module stays
    where it is).
    """

    def use(self, name: str, module: torch.nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext(module)


class DevicePlacer(Placer):
    """Move a module to ``device`` on entry; with ``offload_to`` set, move it there again on exit (offload mode)."""

    def __init__(self, device, offload_to=None):
        self.device = torch.device(device)
        self.offload_to = torch.device(offload_to) if offload_to is not None else None

    @contextlib.contextmanager
    def use(self, name: str, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        module.to(self.device)
        try:
            yield module
        finally:
            if self.offload_to is not None:
                module.to(self.offload_to)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


class StreamingPlacer(DevicePlacer):
    """Sequential offload ("block swap") for the transformer: its small parts (embeddings, norms, output head) go
    to ``device`` for the whole call; each block of ``transformer_blocks`` is moved to ``device`` right before it
    runs and back to ``offload_to`` right after, so about one block (~0.3 GB of CogVideoX-5B in bf16) is resident
    at a time. Slower (every block crosses the bus each step); for cards with less memory than the weights.
    Other modules (the VAE) are handled like :class:`DevicePlacer` with offload.
    """

    def __init__(self, device, offload_to="cpu", blocks_attr: str = "transformer_blocks"):
        super().__init__(device, offload_to)
        self.blocks_attr = blocks_attr
        self.moves = 0  # block transfers to the device (for tests / reports)

    @contextlib.contextmanager
    def use(self, name: str, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        blocks = getattr(module, self.blocks_attr, None)
        if name != "transformer" or not isinstance(blocks, torch.nn.ModuleList):
            with super().use(name, module) as m:
                yield m
            return
        for child in module.children():
            if child is not blocks:
                child.to(self.device)
        for p in module.parameters(recurse=False):
            p.data = p.data.to(self.device)
        for b in module.buffers(recurse=False):
            b.data = b.data.to(self.device)

        def pre(mod, args, kwargs):
            mod.to(self.device)
            self.moves += 1

        def post(mod, args, kwargs, output):
            mod.to(self.offload_to)

        hooks = []
        try:
            for blk in blocks:
                blk.to(self.offload_to)
                hooks.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
                hooks.append(blk.register_forward_hook(post, with_kwargs=True))
            yield module
        finally:
            for h in hooks:
                h.remove()
            module.to(self.offload_to)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


@dataclass
class VideoModel:
    """A CogVideoX I2V model ready for sampling.

    transformer: diffusers ``CogVideoXTransformer3DModel`` (in_channels = 2 x latent channels), eval mode.
    vae: diffusers ``AutoencoderKLCogVideoX``, eval mode.
    scheduler_config: the ``scheduler/scheduler_config.json`` dict as read (betas, prediction type, zero-SNR, spacing).
    schedule: the :class:`NoiseSchedule` of ``scheduler_config`` (built at construction when not given; missing keys
    take diffusers' defaults). Samplers read the schedule from here, never from the raw dict.
    prompt_embeds: [1, L, D] text embedding (L = transformer ``max_text_seq_length``, D = ``text_embed_dim``), cpu.
    negative_prompt_embeds: same shape or None (only needed for classifier-free guidance in the teacher sampler).
    dtype: compute/weight dtype (bf16 on CUDA, fp32 on CPU by default).
    device: compute device.
    placer: see :class:`Placer`.
    name: a display name (folder name).
    report: loading report (dict; see ``cogvideo_load``), e.g. {"weights": {...matched/missing/unexpected...}}.
    """

    transformer: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    placer: Placer = field(default_factory=Placer)
    name: str = "video-model"
    report: dict = field(default_factory=dict)
    schedule: NoiseSchedule | None = None

    def __post_init__(self):
        if self.schedule is None:
            self.schedule = NoiseSchedule.from_config(self.scheduler_config)

    # ---------------------------------------------------------------------------------------- geometry
    @property
    def vae_scale_spatial(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scale_temporal(self) -> int:
        return int(self.vae.config.temporal_compression_ratio)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def fixed_geometry(self) -> bool:
        """True when the transformer has learned positional embeddings: it only runs at its sample size/frames."""
        return bool(getattr(self.transformer.config, "use_learned_positional_embeddings", False))

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) in pixels the model was trained at (e.g. 480 x 720)."""
        c = self.transformer.config
        return int(c.sample_height) * self.vae_scale_spatial, int(c.sample_width) * self.vae_scale_spatial

    @property
    def native_frames(self) -> int:
        """Pixel frame count the model was trained at (e.g. 49)."""
        return int(self.transformer.config.sample_frames)

    def latent_frames(self, frames: int) -> int:
        return (int(frames) - 1) // self.vae_scale_temporal + 1

    def check_frames(self, frames: int) -> None:
        """Raise ValueError (actionable) if ``frames`` cannot be generated by this model."""
        frames = int(frames)
        if self.fixed_geometry and frames != self.native_frames:
            raise ValueError(
                f"{self.name} needs exactly {self.native_frames} frames (its transformer has learned positional "
                f"embeddings for {self.native_frames} frames at {self.native_size[0]}x{self.native_size[1]}), but the "
                f"video has {frames}. Render the coarse video with frames={self.native_frames} "
                f"(CoarseSplatPrior 'frames' input / --frames {self.native_frames}).")
        if frames < 1 or (frames - 1) % self.vae_scale_temporal != 0:
            raise ValueError(
                f"the video has {frames} frames; CogVideoX needs 4k+1 frames (e.g. 49). Render 4k+1 frames.")

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.transformer.parameters())
