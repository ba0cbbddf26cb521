"""A tiny random CogVideoX image-to-video model in the REAL diffusers folder format (for tests, demos, CI).

Entry point: :func:`write_tiny_model`; command line ``python -m vscene_engine.tools.tiny_model --out DIR``.

The folder has exactly the layout of ``feizhengcong/CogvideoX-Interpolation`` / ``THUDM/CogVideoX-5b-I2V`` as
downloaded into ``models/CogVideo/<name>/`` (``model_index.json``, ``transformer/``, ``vae/``, ``scheduler/``; no
text encoder), plus ``videoscene/model.safetensors`` (student weights: a perturbed copy of the transformer, keys as
the transformer's state dict) and ``videoscene/prompt_embeds.pt`` ([1, 226, text_embed_dim] float32).

The transformer mirrors the 5B I2V architecture (in_channels 32 = 2 x 16 latent channels, learned positional +
rotary embeddings, max_text_seq_length 226, v-prediction zero-SNR scheduler) at toy width: it runs only at
``frames`` x ``height`` x ``width`` (learned positional embeddings fix the geometry, like the real model at
49 x 480 x 720). Everything is deterministic from ``seed``; the folder appears atomically (written next to
``out_dir`` and renamed).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from ..core.atomic import atomic_write, atomic_write_bytes
from ..video.loading import COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, COGVIDEOX_5B_SCHEDULER_CONFIG, COGVIDEOX_5B_VAE_CONFIG

__all__ = ["write_tiny_model", "tiny_transformer_config", "tiny_vae_config", "main"]

TINY_TEXT_EMBED_DIM = 32
_MARKER = "_vscene_tiny_model"


def _check_geometry(frames: int, height: int, width: int) -> None:
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames={frames}: CogVideoX needs 4k+1 frames (e.g. 9, 13, 49)")
    if height < 16 or width < 16 or height % 16 or width % 16:
        raise ValueError(f"{height}x{width}: height and width must be positive multiples of 16 (e.g. 64x96)")


def tiny_transformer_config(frames: int = 9, height: int = 64, width: int = 96, layers: int = 2, heads: int = 2,
                            head_dim: int = 8, in_channels: int = 32) -> dict:
    """The 5B I2V transformer config at toy width (sample_height/width in latent pixels = height/8, width/8)."""
    return dict(COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, num_layers=int(layers), num_attention_heads=int(heads),
                attention_head_dim=int(head_dim), in_channels=int(in_channels), out_channels=16,
                text_embed_dim=TINY_TEXT_EMBED_DIM, time_embed_dim=16, max_text_seq_length=226,
                sample_frames=int(frames), sample_height=int(height) // 8, sample_width=int(width) // 8)


def tiny_vae_config(height: int = 64, width: int = 96) -> dict:
    """The 5B VAE config with tiny channels (8, 8, 16, 16), one layer per block, 4 norm groups."""
    return dict(COGVIDEOX_5B_VAE_CONFIG, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4,
                latent_channels=16, temporal_compression_ratio=4, scaling_factor=0.7, sample_height=int(height),
                sample_width=int(width))


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _populate(root: Path, frames: int, height: int, width: int, seed: int, with_student: bool, layers: int,
              heads: int, head_dim: int) -> None:
    """Write every file of the tiny model under ``root`` (a fresh temporary folder)."""
    import diffusers
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        transformer = CogVideoXTransformer3DModel.from_config(
            tiny_transformer_config(frames, height, width, layers, heads, head_dim))
        vae = AutoencoderKLCogVideoX.from_config(tiny_vae_config(height, width))
    g = torch.Generator().manual_seed(int(seed) + 1)
    with torch.no_grad():  # default init zeroes some projections; make every tensor informative for tests
        for p in list(transformer.parameters()) + list(vae.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    for m in (transformer, vae):  # the sincos pos_embedding is computed in float64; real checkpoints hold one dtype
        torch.nn.Module.to(m, torch.float32)
    transformer.save_pretrained(str(root / "transformer"), safe_serialization=True)
    vae.save_pretrained(str(root / "vae"), safe_serialization=True)
    version = diffusers.__version__
    _write_json(root / "scheduler" / "scheduler_config.json",
                dict(COGVIDEOX_5B_SCHEDULER_CONFIG, _diffusers_version=version))
    _write_json(root / "model_index.json", {
        "_class_name": "CogVideoXImageToVideoPipeline", "_diffusers_version": version, _MARKER: True,
        "scheduler": ["diffusers", "CogVideoXDDIMScheduler"], "text_encoder": [None, None],
        "tokenizer": [None, None], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
    })
    if with_student:
        student = {k: (v + torch.randn(v.shape, generator=g) * 0.01 if v.is_floating_point() else v).contiguous()
                   for k, v in transformer.state_dict().items()}
        atomic_write(root / "videoscene" / "model.safetensors",
                     lambda tmp: save_file(student, tmp, metadata={"format": "pt"}))
        embeds = torch.randn(1, 226, TINY_TEXT_EMBED_DIM, generator=g)
        buf = io.BytesIO()  # (saving to a named temp file would put its random name into the zip records)
        torch.save(embeds, buf)
        atomic_write_bytes(root / "videoscene" / "prompt_embeds.pt", buf.getvalue())


def _is_tiny_model(path: Path) -> bool:
    try:
        return bool(json.loads((path / "model_index.json").read_text()).get(_MARKER))
    except (OSError, ValueError, AttributeError):
        return False


def _install(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing empty folder or earlier tiny model is replaced, anything else refused."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif out.is_dir() and _is_tiny_model(out):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "m")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        else:
            raise ValueError(f"{out} exists and is not an earlier tiny model; choose an empty or new folder")
    os.replace(tmp, out)


def write_tiny_model(out_dir, frames: int = 9, height: int = 64, width: int = 96, seed: int = 0,
                     with_student: bool = True, layers: int = 2, heads: int = 2, head_dim: int = 16) -> dict:
    """Write a tiny random CogVideoX I2V diffusers folder to ``out_dir`` (see module docstring); return its paths.

    ``frames`` = 4k+1 pixel frames, ``height``/``width`` multiples of 16: the only geometry the model runs at.
    Returns {"base", "model_index", "transformer", "vae", "scheduler"} and, with ``with_student``,
    {"student", "prompt_embeds"} (all Paths). An existing ``out_dir`` is replaced only if it is empty or an earlier
    tiny model; files appear all at once (temporary folder next to ``out_dir``, then a rename).
    """
    frames, height, width = int(frames), int(height), int(width)
    _check_geometry(frames, height, width)
    if min(int(layers), int(heads), int(head_dim)) < 1:
        raise ValueError("layers, heads and head_dim must be >= 1")
    if int(head_dim) % 16:
        raise ValueError(f"head_dim must be a multiple of 16 (3D RoPE splits it into even t/h/w parts), got {head_dim}")
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _populate(tmp, frames, height, width, seed, with_student, layers, heads, head_dim)
        _fix_modes(tmp)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    paths = {"base": out, "model_index": out / "model_index.json", "transformer": out / "transformer",
             "vae": out / "vae", "scheduler": out / "scheduler" / "scheduler_config.json"}
    if with_student:
        paths.update(student=out / "videoscene" / "model.safetensors",
                     prompt_embeds=out / "videoscene" / "prompt_embeds.pt")
    return paths


def install_tiny_model(models_dir, name: str = "tiny-cogvideox-i2v", **kwargs) -> dict:
    """Write a tiny model into a ComfyUI-style models folder: the base as ``<models_dir>/CogVideo/<name>/`` and the
    student weights + prompt embedding as ``<models_dir>/videoscene/<name>/{model.safetensors,prompt_embeds.pt}``
    (where the pack's loader node lists them). ``kwargs`` go to :func:`write_tiny_model`. Returns the paths."""
    models = Path(models_dir).expanduser().resolve()
    paths = write_tiny_model(models / "CogVideo" / name, with_student=True, **kwargs)
    dst = models / "videoscene" / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if not all(p.name in ("model.safetensors", "prompt_embeds.pt", "ddpnet.safetensors") for p in dst.iterdir()):
            raise ValueError(f"{dst} exists and holds other files; remove it or choose another name")
        shutil.rmtree(dst)
    os.replace(paths["base"] / "videoscene", dst)
    paths.update(student=dst / "model.safetensors", prompt_embeds=dst / "prompt_embeds.pt")
    # an UNTRAINED latent DDPNet of this geometry, for wiring DDPNetTimestep -> LeapFlowStudent in test workflows
    from ..policy.ddpnet import DDPNet, DDPNetConfig, save_ddpnet

    f = int(kwargs.get("frames", 9))
    h, w = int(kwargs.get("height", 64)) // 8, int(kwargs.get("width", 96)) // 8
    net = DDPNet(DDPNetConfig(in_channels=16, n_bins=9, input_size=((f - 1) // 4 + 1, h, w)),
                 seed=int(kwargs.get("seed", 0)))
    paths["ddpnet"] = save_ddpnet(net, dst / "ddpnet.safetensors",
                                  extra_meta={"note": "untrained tiny test weights (random init)"})
    return paths


def _fix_modes(root: Path) -> None:
    """Usual permissions (0777/0666 minus the umask): mkdtemp and some writers create private (0700/0600) entries."""
    m = os.umask(0)
    os.umask(m)
    os.chmod(root, 0o777 & ~m)
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~m)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~m)


def main(argv=None) -> int:
    """``python -m vscene_engine.tools.tiny_model --out DIR [--frames 9 --height 64 --width 96 --seed 0]``."""
    ap = argparse.ArgumentParser(
        prog="python -m vscene_engine.tools.tiny_model",
        description="Write a tiny random CogVideoX image-to-video model in the real diffusers folder layout "
                    "(model_index.json, transformer/, vae/, scheduler/) plus videoscene/model.safetensors and "
                    "videoscene/prompt_embeds.pt. For tests and dry runs of the video-model path without the "
                    "11 GB CogVideoX-5B download; its output is noise.")
    ap.add_argument("--out", required=True, help="output folder (created; replaced only if empty or an earlier "
                                                 "tiny model)")
    ap.add_argument("--frames", type=int, default=9, help="pixel frames 4k+1 the model runs at (default 9; real: 49)")
    ap.add_argument("--height", type=int, default=64, help="pixel height, multiple of 16 (default 64; real: 480)")
    ap.add_argument("--width", type=int, default=96, help="pixel width, multiple of 16 (default 96; real: 720)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0); output is deterministic")
    ap.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2; real: 42)")
    ap.add_argument("--no-student", action="store_true", help="skip videoscene/ (student weights, prompt embedding)")
    args = ap.parse_args(argv)
    try:
        paths = write_tiny_model(args.out, frames=args.frames, height=args.height, width=args.width, seed=args.seed,
                                 with_student=not args.no_student, layers=args.layers)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
