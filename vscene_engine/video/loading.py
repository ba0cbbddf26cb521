"""Loading CogVideoX image-to-video diffusers folders, VideoScene student weights and the fixed prompt embedding.

Entry point: :func:`load_video_model` -> :class:`~vscene_engine.video.model.VideoModel`.

Base folder (e.g. ``THUDM/CogVideoX-5b-I2V`` or ``feizhengcong/CogvideoX-Interpolation`` as downloaded into
``models/CogVideo/<repo-name>/``), see :data:`BASE_LAYOUT_HELP` and :func:`inspect_base_folder`::

    transformer/config.json + diffusion_pytorch_model.safetensors (or index.json + shards, or a dtype variant)
    vae/config.json         + diffusion_pytorch_model.safetensors
    scheduler/scheduler_config.json
    text_encoder/ + tokenizer/   (optional; only used to encode a text prompt)

Conventions:
  * Base models are built on the meta device (:func:`build_on_meta`), then their tensors are streamed shard by shard
    with ``safetensors.safe_open`` (``.bin`` only via ``torch.load(weights_only=True)``), cast to the target dtype and
    assigned with ``load_state_dict(strict=True, assign=True)``. Like diffusers ``from_pretrained(torch_dtype=...)``
    every floating parameter/buffer ends in the requested dtype (including ``patch_embed.pos_embedding``). Modules
    end in eval() mode with ``requires_grad`` off, on the CPU (the placer moves them to the compute device).
  * Student weights (VideoScene ``model.safetensors``) are applied non-strictly by :func:`apply_weights` with common
    key prefixes normalised; everything is validated from the safetensors headers before the first tensor is
    copied, so a refused file leaves the module untouched.
  * Prompt embeddings are [1, L, D] float32 on the CPU (L = 226, D = 4096 for CogVideoX). ``.pt`` files are read
    with ``torch.load(weights_only=True)`` only: a file that needs pickle code is refused, never executed.
  * dtype policy (:func:`resolve_dtype`): bf16 on CUDA, fp32 on CPU; fp16 is refused for >= 2e9 parameters.

No ComfyUI imports; ``transformers`` is optional (only for :func:`encode_prompt`).
"""
from __future__ import annotations

import gc
import importlib.util
import inspect
import itertools
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from .schedule import NoiseSchedule
from .model import DevicePlacer, Placer, VideoModel

__all__ = [
    "BASE_LAYOUT_HELP", "COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG", "COGVIDEOX_5B_VAE_CONFIG",
    "COGVIDEOX_5B_SCHEDULER_CONFIG", "LoadReport", "inspect_base_folder", "find_weight_files", "build_on_meta",
    "manifest_of_files", "plan_state_dict", "normalize_keys", "check_weights", "apply_weights", "load_component",
    "load_prompt_embeds", "encode_prompt", "resolve_dtype", "load_video_model", "real_layout_check",
]

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ real configs
#: ``THUDM/CogVideoX-5b-I2V`` ``transformer/config.json`` (also used by feizhengcong/CogvideoX-Interpolation).
COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG: dict = {
    "activation_fn": "gelu-approximate", "attention_bias": True, "attention_head_dim": 64, "dropout": 0.0,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 32, "max_text_seq_length": 226,
    "norm_elementwise_affine": True, "norm_eps": 1e-05, "num_attention_heads": 48, "num_layers": 42,
    "out_channels": 16, "patch_size": 2, "sample_frames": 49, "sample_height": 60, "sample_width": 90,
    "spatial_interpolation_scale": 1.875, "temporal_compression_ratio": 4, "temporal_interpolation_scale": 1.0,
    "text_embed_dim": 4096, "time_embed_dim": 512, "timestep_activation_fn": "silu",
    "use_learned_positional_embeddings": True, "use_rotary_positional_embeddings": True,
}

#: ``THUDM/CogVideoX-5b-I2V`` ``vae/config.json``.
COGVIDEOX_5B_VAE_CONFIG: dict = {
    "act_fn": "silu", "block_out_channels": [128, 256, 256, 512], "down_block_types": ["CogVideoXDownBlock3D"] * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "latents_mean": None, "latents_std": None,
    "layers_per_block": 3, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_height": 480,
    "sample_width": 720, "scaling_factor": 0.7, "shift_factor": None, "temporal_compression_ratio": 4,
    "up_block_types": ["CogVideoXUpBlock3D"] * 4, "use_post_quant_conv": False, "use_quant_conv": False,
}

#: ``THUDM/CogVideoX-5b-I2V`` ``scheduler/scheduler_config.json``.
COGVIDEOX_5B_SCHEDULER_CONFIG: dict = {
    "_class_name": "CogVideoXDDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0, "num_train_timesteps": 1000,
    "prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "sample_max_value": 1.0,
    "set_alpha_to_one": True, "snr_shift_scale": 1.0, "steps_offset": 0, "timestep_spacing": "trailing",
    "trained_betas": None,
}

BASE_LAYOUT_HELP = """\
Expected a CogVideoX image-to-video diffusers folder (e.g. ComfyUI/models/CogVideo/CogVideoX-5b-I2V/):
  <folder>/
    model_index.json                          (optional)
    transformer/
      config.json
      diffusion_pytorch_model.safetensors     (or diffusion_pytorch_model.safetensors.index.json
                                               + diffusion_pytorch_model-0000K-of-0000N.safetensors shards,
                                               or a variant such as diffusion_pytorch_model.bf16.safetensors)
    vae/
      config.json
      diffusion_pytorch_model.safetensors     (same rules)
    scheduler/
      scheduler_config.json
    text_encoder/ + tokenizer/                (optional: only to encode a text prompt; not needed with prompt_embeds)
Get it with e.g. `huggingface-cli download THUDM/CogVideoX-5b-I2V --local-dir models/CogVideo/CogVideoX-5b-I2V`
(or feizhengcong/CogvideoX-Interpolation), or let ComfyUI-CogVideoXWrapper download it."""

_WEIGHT_STEM = "diffusion_pytorch_model"
_VARIANT_ORDER = ("bf16", "fp16", "fp32")
_KEY_PREFIXES = ("base_model.model.", "_orig_mod.", "module.", "transformer.", "model.")
_LORA_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_magnitude")
FP16_MAX_PARAMS = 2e9

# ================================================================================================ folder layout


def _layout_error(path: Path, problems: list[str], hint: str = "") -> ValueError:
    lines = [f"CogVideoX base folder {path} is not usable:"] + [f"  - {p}" for p in problems]
    if hint:
        lines.append(hint)
    lines.append(BASE_LAYOUT_HELP)
    return ValueError("\n".join(lines))


def _read_index(index: Path) -> list[Path]:
    """Shard paths (sorted, unique) named by a ``*.index*.json`` weight map; ValueError on a bad/missing shard."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read the shard index {index} ({exc}); re-download it") from None
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise ValueError(f"shard index {index} names files that are missing: {', '.join(missing)} "
                         f"(incomplete download? re-download the folder {index.parent})")
    return [index.parent / n for n in names]


def find_weight_files(folder, stems: Iterable[str] = (_WEIGHT_STEM,)) -> dict | None:
    """Find the weight files of one diffusers component folder; None when there are none.

    Preference: ``<stem>.safetensors``, ``<stem>.safetensors.index.json`` (+ shards), a variant
    ``<stem>.<v>.safetensors`` / ``<stem>.safetensors.index.<v>.json`` (v = bf16, fp16, fp32, other), then the same
    for ``.bin``. Returns {"files": [Path], "format": "safetensors"|"bin", "index": Path|None, "variant": str|None}.
    """
    folder = Path(folder)
    for stem in stems:
        for fmt in ("safetensors", "bin"):
            single = folder / f"{stem}.{fmt}"
            if single.is_file():
                return {"files": [single], "format": fmt, "index": None, "variant": None}
            index = folder / f"{stem}.{fmt}.index.json"
            if index.is_file():
                return {"files": _read_index(index), "format": fmt, "index": index, "variant": None}
            variants = {}
            for p in folder.glob(f"{stem}.*.{fmt}"):
                v = p.name[len(stem) + 1:-len(fmt) - 1]
                if v and "." not in v:
                    variants[v] = ("single", p)
            for p in folder.glob(f"{stem}.{fmt}.index.*.json"):
                v = p.name[len(f"{stem}.{fmt}.index."):-len(".json")]
                if v and "." not in v:
                    variants.setdefault(v, ("index", p))
            if variants:
                order = [v for v in _VARIANT_ORDER if v in variants] + sorted(set(variants) - set(_VARIANT_ORDER))
                v = order[0]
                kind, p = variants[v]
                files = [p] if kind == "single" else _read_index(p)
                return {"files": files, "format": fmt, "index": p if kind == "index" else None, "variant": v}
    return None


def _inspect_component(base: Path, name: str, problems: list[str]) -> dict | None:
    folder = base / name
    if not folder.is_dir():
        problems.append(f"missing folder {name}/")
        return None
    config = folder / "config.json"
    ok = True
    if not config.is_file():
        problems.append(f"missing {name}/config.json")
        ok = False
    try:
        weights = find_weight_files(folder)
    except ValueError as exc:
        problems.append(f"{name}/: {exc}")
        return None
    if weights is None:
        problems.append(f"missing {name}/{_WEIGHT_STEM}.safetensors (no weight file in {folder})")
        ok = False
    return {"folder": folder, "config": config, **weights} if ok else None


def _folder_hint(base: Path) -> str:
    """A hint when the user pointed at a component folder or at the parent of model folders."""
    if (base / "config.json").is_file() and find_weight_files(base) is not None:
        return (f"Hint: {base} looks like a single component folder (transformer/ or vae/); "
                f"pass its parent folder {base.parent} instead.")
    try:
        candidates = sorted(p.name for p in base.iterdir() if (p / "transformer").is_dir())
    except OSError:
        candidates = []
    if candidates:
        return f"Hint: {base} contains model folders: {', '.join(candidates[:8])}; pass one of them."
    return ""


def inspect_base_folder(path) -> dict:
    """Validate a CogVideoX diffusers folder without reading weights.

    Returns {"path": Path, "transformer": comp, "vae": comp, "scheduler": {"config": Path},
    "text_encoder": Path|None, "tokenizer": Path|None, "model_index": Path|None} where comp is
    {"folder", "config", "files", "format", "index", "variant"}. Raises ValueError naming the folder, every missing
    part and showing :data:`BASE_LAYOUT_HELP`.
    """
    base = Path(path).expanduser()
    if not base.exists():
        raise _layout_error(base, ["the folder does not exist"])
    if not base.is_dir():
        raise _layout_error(base, ["this is a file, not a folder"])
    problems: list[str] = []
    transformer = _inspect_component(base, "transformer", problems)
    vae = _inspect_component(base, "vae", problems)
    sched = base / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        problems.append("missing scheduler/scheduler_config.json")
    if problems:
        raise _layout_error(base, problems, _folder_hint(base))
    te, tok = base / "text_encoder", base / "tokenizer"
    has_te = (te / "config.json").is_file() and tok.is_dir() and any(tok.iterdir())
    index = base / "model_index.json"
    return {
        "path": base, "transformer": transformer, "vae": vae, "scheduler": {"config": sched},
        "text_encoder": te if has_te else None, "tokenizer": tok if has_te else None,
        "model_index": index if index.is_file() else None,
    }


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-download it") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object, got {type(data).__name__}; re-download it")
    return data


# ================================================================================================ building


def build_on_meta(cls, config: dict) -> torch.nn.Module:
    """Construct ``cls.from_config(config)`` on the meta device (no memory).

    Keys starting with "_" (``_class_name``, ``_diffusers_version``, ...) are dropped; keys that ``cls.__init__``
    does not take are ignored with a debug log.
    """
    params = inspect.signature(cls.__init__).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    clean = {}
    for k, v in dict(config).items():
        if k.startswith("_"):
            continue
        if k not in params and not takes_kwargs:
            log.debug("%s: ignoring unknown config key %r=%r", cls.__name__, k, v)
            continue
        clean[k] = v
    with torch.device("meta"):
        return cls.from_config(clean)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layout(module: torch.nn.Module) -> dict[str, tuple]:
    """State-dict key -> shape (works on meta modules)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ================================================================================================ manifests

_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _corrupt(path, detail: str) -> ValueError:
    return ValueError(f"corrupt or truncated safetensors file {path} ({detail}); re-download it")


def _safetensors_header(path) -> dict:
    """Parse and sanity-check a safetensors header (reads only the header bytes). ValueError on corruption."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _corrupt(path, f"only {size} bytes")
            n = int.from_bytes(head, "little")
            if n <= 1 or 8 + n > size:
                raise _corrupt(path, f"header length {n} does not fit in {size} bytes")
            raw = fh.read(n)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _corrupt(path, "unreadable header") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_len = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            shape = [int(s) for s in info["shape"]]
            dt = str(info["dtype"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header entry for {key!r}") from None
        if not 0 <= begin <= end <= data_len:
            raise _corrupt(path, f"tensor {key!r} ends at byte {end} but the file holds {data_len} data bytes")
        if dt in _ST_ITEMSIZE and end - begin != math.prod(shape) * _ST_ITEMSIZE[dt]:
            raise _corrupt(path, f"tensor {key!r} has {end - begin} bytes, expected {math.prod(shape)} x {dt}")
    return header


def _torch_load_safe(path) -> object:
    """``torch.load(weights_only=True)`` with a clear ValueError when the file needs pickle code (never run)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, OSError):  # old (non-zip) format or damaged archive: retry without mmap
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError, RuntimeError, EOFError, OSError, ...
        msg = str(exc)
        if "weights_only" in msg or "Unsupported global" in msg:
            raise ValueError(
                f"{path} contains Python objects that need pickle code to load; refusing to load it (running "
                f"pickled code is unsafe). Save plain tensors instead, e.g. torch.save(tensor.cpu(), path) or a "
                f".safetensors file.") from None
        first = msg.splitlines()[0][:200] if msg else ""
        raise ValueError(f"{path} is a corrupt or truncated torch file ({type(exc).__name__}: {first}); "
                         f"re-download / re-save it") from None


def _bin_state_dict(path) -> dict:
    sd = _torch_load_safe(path)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a state dict of tensors (got {type(sd).__name__})")
    return sd


def _manifest_with_files(paths) -> dict[str, tuple[tuple, str, Path]]:
    """key -> (shape, dtype string, file). Headers only for safetensors; ValueError on duplicates/corruption."""
    out: dict[str, tuple[tuple, str, Path]] = {}
    for p in _as_paths(paths):
        if p.suffix == ".safetensors":
            entries = {k: (tuple(int(s) for s in v["shape"]), str(v["dtype"]))
                       for k, v in _safetensors_header(p).items() if k != "__metadata__"}
        else:
            entries = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in _bin_state_dict(p).items()}
        for k, (shape, dt) in entries.items():
            if k in out:
                raise ValueError(f"tensor {k!r} is in both {out[k][2]} and {p}; the shards overlap")
            out[k] = (shape, dt, p)
    return out


def manifest_of_files(paths) -> dict[str, tuple[tuple, str]]:
    """key -> (shape tuple, dtype string such as "BF16") from safetensors headers only (no tensor data read).

    ``paths``: one path or a list (shards). ``.bin`` files are read with ``torch.load(weights_only=True, mmap=True)``.
    """
    return {k: (shape, dt) for k, (shape, dt, _) in _manifest_with_files(paths).items()}


def _as_paths(paths) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


# ================================================================================================ planning


@dataclass
class LoadReport:
    """Key bookkeeping of a (planned) load. Keys are model keys (after prefix normalisation).

    matched: keys present in both with equal shapes; missing: model keys absent from the file(s); unexpected: file
    keys the model lacks; mismatched: [(key, model_shape, file_shape)]; prefix_stripped: the prefix(es) removed from
    the file keys ("" when none); files: the weight files (strings).
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple] = field(default_factory=list)
    prefix_stripped: str = ""
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One human line, e.g. "1234 matched, 0 missing, 2 unexpected"."""
        s = f"{len(self.matched)} matched, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        if self.mismatched:
            s += f", {len(self.mismatched)} shape-mismatched"
        if self.prefix_stripped:
            s += f" (stripped key prefix {self.prefix_stripped!r})"
        return s

    def to_dict(self, max_keys: int = 20) -> dict:
        """JSON-friendly dict: counts, the summary line and up to ``max_keys`` example keys per list."""
        return {
            "summary": self.summary(), "matched": len(self.matched), "missing": len(self.missing),
            "unexpected": len(self.unexpected), "mismatched": len(self.mismatched),
            "prefix_stripped": self.prefix_stripped, "files": list(self.files),
            "missing_keys": self.missing[:max_keys], "unexpected_keys": self.unexpected[:max_keys],
            "mismatched_keys": [[k, list(a), list(b)] for k, a, b in self.mismatched[:max_keys]],
        }


def plan_state_dict(model_shapes: dict, file_shapes: dict) -> LoadReport:
    """Compare key -> shape maps (pure bookkeeping; works with meta models). Values may be shapes or (shape, dtype)."""
    def shape_of(v):
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], str):
            v = v[0]
        return tuple(int(s) for s in v)

    rep = LoadReport()
    for k, ms in model_shapes.items():
        if k not in file_shapes:
            rep.missing.append(k)
            continue
        ms, fs = shape_of(ms), shape_of(file_shapes[k])
        if ms == fs:
            rep.matched.append(k)
        else:
            rep.mismatched.append((k, ms, fs))
    rep.unexpected = [k for k in file_shapes if k not in model_shapes]
    return rep


def normalize_keys(file_keys: Iterable[str], model_keys: Iterable[str]) -> tuple[dict[str, str], str]:
    """Map file keys to model keys by stripping common prefixes when that increases the number of matches.

    Prefixes: "base_model.model.", "_orig_mod.", "module.", "transformer.", "model.", also chained up to three deep
    ("module.transformer.x"). The chain with the most matches wins (ties: the shorter one); a chain that would map
    two file keys onto one model key is skipped. Returns ({file_key: model_key}, stripped chain joined, "" if none).
    """
    model_keys = set(model_keys)
    file_keys = list(file_keys)

    def strip(key: str, chain: tuple) -> str:
        for p in chain:
            if key.startswith(p):
                key = key[len(p):]
        return key

    def score(m: dict) -> int:
        hits = [v for v in m.values() if v in model_keys]
        return -1 if len(hits) != len(set(hits)) else len(hits)

    chains = [()] + list(itertools.chain.from_iterable(
        itertools.product(_KEY_PREFIXES, repeat=n) for n in (1, 2, 3)))
    best_map, best_chain, best = {k: k for k in file_keys}, (), -2
    for chain in chains:
        if chain and not any(k.startswith(chain[0]) for k in file_keys):
            continue
        cand = {k: strip(k, chain) for k in file_keys}
        sc = score(cand)
        if sc > best:
            best_map, best_chain, best = cand, chain, sc
    return best_map, "".join(best_chain)


# ================================================================================================ student weights


def _resolve_weight_paths(path_or_paths) -> list[Path]:
    """A file, an ``*.index.json``, a list of files, or a folder holding model.safetensors / diffusers weights."""
    if not isinstance(path_or_paths, (str, os.PathLike)):
        paths = _as_paths(path_or_paths)
        if not paths:
            raise ValueError("no weight files given")
    else:
        p = Path(path_or_paths).expanduser()
        if p.is_dir():
            found = find_weight_files(p, stems=("model", _WEIGHT_STEM))
            if found is None:
                raise ValueError(f"no weight file in {p} (expected model.safetensors or "
                                 f"{_WEIGHT_STEM}.safetensors, possibly sharded with an index.json)")
            paths = found["files"]
        elif p.name.endswith(".json"):
            paths = _read_index(p)
        else:
            paths = [p]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"weight file {p} does not exist")
        if p.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            raise ValueError(f"unsupported weight file {p} (expected .safetensors, or .bin/.pt with plain tensors)")
    return paths


def _check_plan(module_layout: dict, manifest: dict, files: list[Path]) -> tuple[LoadReport, dict[str, str]]:
    """Validate file keys against a module layout; returns (report, {file_key: model_key} of matched keys)."""
    names = ", ".join(str(p) for p in files)
    lora = [k for k in manifest if any(m in k for m in _LORA_MARKERS)]
    if lora:
        raise ValueError(
            f"{names} holds LoRA adapter weights ({len(lora)} of {len(manifest)} keys, e.g. {lora[0]!r}); this "
            f"loader applies full transformer weights only. Merge the LoRA into the transformer first, or use the "
            f"full VideoScene model.safetensors.")
    mapping, prefix = normalize_keys(manifest.keys(), module_layout.keys())
    file_shapes = {mapping[k]: v[0] for k, v in manifest.items()}
    rep = plan_state_dict(module_layout, file_shapes)
    rep.prefix_stripped, rep.files = prefix, [str(p) for p in files]
    if not rep.matched and not rep.mismatched:
        raise ValueError(
            f"no key of {names} matches the model ({len(manifest)} keys in the file, e.g. "
            f"{list(manifest)[:3]}; the model expects e.g. {list(module_layout)[:3]}). "
            f"Is this a CogVideoX transformer checkpoint?")
    if rep.mismatched:
        lines = "; ".join(f"{k}: model {list(a)} vs file {list(b)}" for k, a, b in rep.mismatched[:5])
        raise ValueError(
            f"{len(rep.mismatched)} tensors of {names} have the wrong shape for this model ({lines}). These weights "
            f"belong to a different model (size / in_channels / sample size); use the matching base folder.")
    inverse = {mk: fk for fk, mk in mapping.items()}
    return rep, {inverse[k]: k for k in rep.matched}


def check_weights(module: torch.nn.Module, path_or_paths) -> LoadReport:
    """Everything :func:`apply_weights` validates, from headers only (works on meta modules); nothing is loaded."""
    files = _resolve_weight_paths(path_or_paths)
    manifest = manifest_of_files(files)
    return _check_plan(_layout(module), manifest, files)[0]


def _iter_file_tensors(path: Path, keys: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) of one file (all keys or ``keys``), one tensor at a time for safetensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        _safetensors_header(path)
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                for k in fh.keys():
                    if keys is None or k in keys:
                        yield k, fh.get_tensor(k)
        except ValueError:
            raise
        except Exception as exc:  # SafetensorError and friends
            raise _corrupt(path, f"{type(exc).__name__}: {str(exc)[:200]}") from None
    else:
        sd = _bin_state_dict(path)
        for k in list(sd):
            if keys is None or k in keys:
                yield k, sd.pop(k)


def apply_weights(module: torch.nn.Module, path_or_paths, dtype: torch.dtype | None = None) -> LoadReport:
    """Apply (VideoScene student) weights to ``module`` in place, non-strictly; return the :class:`LoadReport`.

    ``path_or_paths``: ``model.safetensors``, a list of shards, an ``*.index.json`` or a folder. Common key prefixes
    are normalised (see :func:`normalize_keys`). Refused with ValueError, before anything is copied (the module is
    unchanged): LoRA-only/LoRA files, zero matching keys, any shape mismatch, corrupt/truncated files. Matched tensors
    are streamed one at a time and copied with ``param.data.copy_`` (cast to each parameter's dtype/device; with
    ``dtype`` given they are first rounded through ``dtype``, e.g. to reproduce a bf16 load into an fp32 module).
    """
    files = _resolve_weight_paths(path_or_paths)
    manifest = _manifest_with_files(files)
    rep, matched = _check_plan(_layout(module), {k: v[:2] for k, v in manifest.items()}, files)
    targets = module.state_dict(keep_vars=True)
    on_meta = [k for k in matched.values() if targets[k].is_meta]
    if on_meta:
        raise ValueError(f"the module still has tensors on the meta device ({on_meta[:3]}); load the base model "
                         f"before applying weights")
    by_file: dict[Path, set[str]] = {}
    for fk in matched:
        by_file.setdefault(manifest[fk][2], set()).add(fk)
    with torch.no_grad():
        for path, keys in by_file.items():
            for fk, t in _iter_file_tensors(path, keys):
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                target = targets[matched[fk]]
                target.data.copy_(t)
    log.info("applied %s: %s", ", ".join(rep.files), rep.summary())
    return rep


# ================================================================================================ base loading


def _materialize_meta_buffers(module: torch.nn.Module) -> None:
    """Recompute non-persistent buffers left on meta after ``assign=True`` loading (known: CogVideoX pos_embedding)."""
    from diffusers.models.embeddings import CogVideoXPatchEmbed

    for sub in module.modules():
        if isinstance(sub, CogVideoXPatchEmbed):
            buf = sub._buffers.get("pos_embedding")
            if buf is not None and buf.is_meta:
                sub._buffers["pos_embedding"] = sub._get_positional_embeddings(
                    sub.sample_height, sub.sample_width, sub.sample_frames, device=torch.device("cpu"))
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{type(module).__name__}: tensors still on the meta device after loading (not in the "
                         f"checkpoint and not recomputable): {left[:10]}; the folder does not match this diffusers "
                         f"version's {type(module).__name__}")


def load_component(cls, comp: dict, dtype: torch.dtype, model: torch.nn.Module | None = None) -> torch.nn.Module:
    """Load one diffusers component strictly: meta build, header check, stream tensors, assign, cast, eval.

    ``comp``: an entry of :func:`inspect_base_folder` ({"config", "files", ...}); ``model``: an already meta-built
    instance (optional). Returns the module on the CPU in ``dtype`` with ``requires_grad`` off.
    """
    if model is None:
        model = build_on_meta(cls, _read_json(comp["config"]))
    files = list(comp["files"])
    names = ", ".join(str(p) for p in files)
    rep = plan_state_dict(_layout(model), {k: v[0] for k, v in manifest_of_files(files).items()})
    problems = []
    if rep.missing:
        problems.append(f"{len(rep.missing)} missing keys (e.g. {rep.missing[:5]})")
    if rep.mismatched:
        problems.append("shape mismatches: " + "; ".join(f"{k}: model {list(a)} vs file {list(b)}"
                                                         for k, a, b in rep.mismatched[:5]))
    if rep.unexpected:
        problems.append(f"{len(rep.unexpected)} unexpected keys (e.g. {rep.unexpected[:5]})")
    if problems:
        raise ValueError(f"{cls.__name__} weights {names} do not match {comp['config']}: {'; '.join(problems)}. "
                         f"Incomplete or mixed download? Re-download the {Path(comp['config']).parent.name}/ folder.")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        for k, t in _iter_file_tensors(Path(path)):
            state[k] = t.to(dtype) if t.is_floating_point() else t
    model.load_state_dict(state, strict=True, assign=True)
    del state
    _materialize_meta_buffers(model)
    torch.nn.Module.to(model, dtype)  # floating tensors only (diffusers' own .to() warns about fp32 modules)
    model.eval().requires_grad_(False)
    return model


# ================================================================================================ prompt embeddings


def _embeds_from_object(obj, source: str) -> torch.Tensor:
    if isinstance(obj, dict):
        if "prompt_embeds" in obj and isinstance(obj["prompt_embeds"], torch.Tensor):
            return obj["prompt_embeds"]
        tensors = [v for v in obj.values() if isinstance(v, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        raise ValueError(f"{source} holds a dict with keys {list(obj)[:8]}; expected a single tensor or the key "
                         f"'prompt_embeds'")
    if isinstance(obj, (list, tuple)) and len(obj) == 1 and isinstance(obj[0], torch.Tensor):
        return obj[0]
    if isinstance(obj, torch.Tensor):
        return obj
    raise ValueError(f"{source} holds a {type(obj).__name__}; expected a [1, L, D] or [L, D] tensor")


def load_prompt_embeds(path, text_embed_dim: int | None = None, max_len: int | None = None) -> torch.Tensor:
    """Load a fixed text embedding -> [1, L, D] float32 on the CPU.

    ``path``: ``.pt``/``.pth`` (``torch.load(weights_only=True)`` only) or ``.safetensors`` (one tensor or key
    "prompt_embeds"), or a tensor. Accepts [L, D] / [1, L, D] tensors, a dict with one tensor or "prompt_embeds".
    Validates D == ``text_embed_dim`` and L == ``max_len`` when given (4096 / 226 for CogVideoX).
    """
    if isinstance(path, torch.Tensor):
        obj, source = path, "the prompt embedding tensor"
    else:
        p = Path(path).expanduser()
        source = str(p)
        if not p.is_file():
            raise ValueError(f"prompt embedding file {p} does not exist (expected e.g. videoscene/prompt_embeds.pt "
                             f"next to the VideoScene weights)")
        if p.suffix == ".safetensors":
            _safetensors_header(p)
            obj = dict(_iter_file_tensors(p))
        else:
            obj = _torch_load_safe(p)
    t = _embeds_from_object(obj, source)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] != 1:
        raise ValueError(f"{source}: prompt embedding has shape {list(t.shape)}; expected [1, L, D] or [L, D]")
    if not t.is_floating_point():
        raise ValueError(f"{source}: prompt embedding has dtype {t.dtype}; expected a floating tensor")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise ValueError(f"{source}: prompt embedding contains NaN/inf; re-create it (encode in bf16/fp32, not fp16)")
    if text_embed_dim is not None and t.shape[2] != int(text_embed_dim):
        raise ValueError(f"{source}: prompt embedding width D={t.shape[2]} but the transformer expects "
                         f"text_embed_dim={text_embed_dim} (T5-XXL: 4096); this embedding is for another model")
    if max_len is not None and t.shape[1] != int(max_len):
        raise ValueError(f"{source}: prompt embedding has L={t.shape[1]} tokens but this CogVideoX needs exactly "
                         f"{max_len} (max_text_seq_length; the T5 output padded to {max_len}); re-encode it with "
                         f"padding='max_length', max_length={max_len}")
    return t


def encode_prompt(base_dir, prompt, max_len: int = 226, device="cpu", dtype=None,
                  placer: Placer | None = None) -> torch.Tensor:
    """Encode ``prompt`` (str or list of str) with the folder's T5 -> [N, max_len, D] float32 on the CPU.

    Needs ``text_encoder/`` + ``tokenizer/`` in ``base_dir`` and an importable ``transformers`` (+ sentencepiece);
    otherwise ValueError. Mirrors diffusers ``CogVideoXImageToVideoPipeline._get_t5_prompt_embeds``.
    """
    base = Path(base_dir)
    te, tok = base / "text_encoder", base / "tokenizer"
    if not (te / "config.json").is_file() or not tok.is_dir():
        raise ValueError(
            f"cannot encode a text prompt: {base} has no text_encoder/ + tokenizer/. Provide prompt_embeds "
            f"(e.g. the VideoScene prompt_embeds.pt), or download text_encoder/ and tokenizer/ of the base repo.")
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("cannot encode a text prompt: the 'transformers' package is not installed. Provide "
                         "prompt_embeds (e.g. the VideoScene prompt_embeds.pt) or `pip install transformers "
                         "sentencepiece`.")
    from transformers import T5EncoderModel, T5Tokenizer

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    tokenizer = T5Tokenizer.from_pretrained(str(tok))
    ids = tokenizer(prompts, padding="max_length", max_length=int(max_len), truncation=True,
                    add_special_tokens=True, return_tensors="pt").input_ids
    dt = resolve_dtype(device, dtype)
    encoder = T5EncoderModel.from_pretrained(str(te), torch_dtype=dt).eval().requires_grad_(False)
    with torch.no_grad(), (placer or DevicePlacer(device)).use("text_encoder", encoder) as m:
        out = m(ids.to(next(m.parameters()).device))[0].float().cpu()
    del m, encoder  # the T5-XXL is ~9.5 GB in bf16: free it before the transformer loads
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


# ================================================================================================ dtype policy

_DTYPE_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


def resolve_dtype(device, dtype=None, n_params: int | None = None, allow_fp16: bool = False) -> torch.dtype:
    """Pick the weight/compute dtype.

    ``dtype``: None/"auto" -> bf16 on CUDA (fp16 with a warning when the GPU lacks bf16, or fp32 for >= 2e9 params),
    fp32 elsewhere; or a torch.dtype / "bf16" / "fp16" / "fp32". fp16 for a model with ``n_params`` >= 2e9 raises
    ValueError (CogVideoX-5B overflows in fp16) unless ``allow_fp16`` (then a warning).
    """
    dev = torch.device(device)
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        if dev.type == "cuda":
            if not torch.cuda.is_available() or torch.cuda.is_bf16_supported():
                return torch.bfloat16  # (without CUDA the move to the device fails later with torch's own error)
            if n_params is not None and n_params >= FP16_MAX_PARAMS and not allow_fp16:
                warnings.warn("this GPU has no bf16 support and fp16 gives NaNs on CogVideoX-5B; using fp32")
                return torch.float32
            warnings.warn("this GPU has no bf16 support; using fp16")
            dtype = torch.float16
        else:
            return torch.float32
    if isinstance(dtype, str):
        key = dtype.lower().replace("torch.", "")
        if key not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'bf16', 'fp16' or 'fp32'")
        dtype = _DTYPE_NAMES[key]
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"unsupported dtype {dtype!r}; use 'auto', 'bf16', 'fp16' or 'fp32'")
    if dtype == torch.float16 and n_params is not None and n_params >= FP16_MAX_PARAMS:
        msg = "fp16 gives NaNs/black frames on CogVideoX-5B; use bf16 (or fp32)"
        if not allow_fp16:
            raise ValueError(f"{msg} (model has {n_params / 1e9:.1f}e9 parameters; pass allow_fp16=True to force)")
        warnings.warn(msg)
    return dtype


# ================================================================================================ entry point


def _check_configs(info: dict, tcfg: dict, vcfg: dict, scfg: dict) -> NoiseSchedule:
    """Class names, I2V channel count, scheduler config; returns the model's :class:`NoiseSchedule` (built once here;
    missing scheduler keys take diffusers' defaults, as diffusers would)."""
    tname, vname = tcfg.get("_class_name", "CogVideoXTransformer3DModel"), vcfg.get("_class_name",
                                                                                     "AutoencoderKLCogVideoX")
    if tname != "CogVideoXTransformer3DModel" or vname != "AutoencoderKLCogVideoX":
        raise ValueError(f"{info['path']} is not a CogVideoX model (transformer class {tname}, vae class {vname}); "
                         f"use a CogVideoX image-to-video base such as CogVideoX-5b-I2V / CogvideoX-Interpolation")
    latent = int(vcfg.get("latent_channels", 16))
    in_ch = int(tcfg.get("in_channels", 16))
    if in_ch != 2 * latent:
        raise ValueError(f"{info['path']} is not an image-to-video CogVideoX model (in_channels={in_ch}, needs "
                         f"{2 * latent}): use an I2V base such as CogVideoX-5b-I2V / CogvideoX-Interpolation")
    try:
        return NoiseSchedule.from_config(scfg)
    except ValueError as e:
        raise ValueError(f"{info['scheduler']['config']}: {e}") from None


def _prompt_len(tcfg: dict) -> int | None:
    """Text length the transformer requires (learned or sincos positional embeddings fix it), else None."""
    fixed = tcfg.get("use_learned_positional_embeddings", False) or not tcfg.get("use_rotary_positional_embeddings",
                                                                                 False)
    return int(tcfg.get("max_text_seq_length", 226)) if fixed else None


def _resolve_prompts(info: dict, tcfg: dict, prompt_embeds, prompt, negative_prompt_embeds, negative_prompt,
                     device, placer) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    D, L = int(tcfg.get("text_embed_dim", 4096)), _prompt_len(tcfg)
    src: dict = {}
    pos = neg = None
    if prompt_embeds is not None:
        pos = load_prompt_embeds(prompt_embeds, D, L)
        src["prompt_embeds"] = "tensor" if isinstance(prompt_embeds, torch.Tensor) else str(prompt_embeds)
    if negative_prompt_embeds is not None:
        neg = load_prompt_embeds(negative_prompt_embeds, D, L)
        src["negative_prompt_embeds"] = ("tensor" if isinstance(negative_prompt_embeds, torch.Tensor)
                                         else str(negative_prompt_embeds))
    texts = []
    if pos is None:
        if prompt is None:
            raise ValueError("need prompt_embeds or a prompt with a text encoder: pass prompt_embeds (e.g. the "
                             "VideoScene prompt_embeds.pt), or a prompt with text_encoder/ + tokenizer/ in "
                             f"{info['path']} and the transformers package installed")
        texts.append(prompt)
    if neg is None and negative_prompt is not None:
        texts.append(negative_prompt)
    if texts:
        enc = encode_prompt(info["path"], texts, max_len=L or int(tcfg.get("max_text_seq_length", 226)),
                            device=device, placer=placer)
        i = 0
        if pos is None:
            pos, i = load_prompt_embeds(enc[0:1], D, L), 1
            src["prompt_embeds"] = "text_encoder"
        if neg is None and negative_prompt is not None:
            neg = load_prompt_embeds(enc[i:i + 1], D, L)
            src["negative_prompt_embeds"] = "text_encoder"
    return pos, neg, src


def load_video_model(base_dir, weights=None, prompt_embeds=None, prompt: str | None = None,
                     negative_prompt_embeds=None, negative_prompt: str | None = None, device="cpu", dtype=None,
                     allow_fp16: bool = False, placer: Placer | None = None, name: str | None = None) -> VideoModel:
    """Load a CogVideoX I2V base folder (+ VideoScene ``weights`` + prompt embedding) -> :class:`VideoModel`.

    Order (fail fast, cheap checks first): folder layout, configs (I2V channel count, prediction type), dtype policy
    on the meta-built transformer, student weights checked against the meta layout (headers only), prompt
    embedding (file preferred; else T5 from ``prompt``), then transformer + vae streamed in ``dtype`` onto the CPU,
    then the weights applied. ``placer`` (default ``DevicePlacer(device)``) moves modules to ``device`` on use.
    ``report``: {"base", "dtype", "prediction_type", "transformer", "vae", "weights" (LoadReport.to_dict() or None),
    "prompt"}.
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    info = inspect_base_folder(base_dir)
    tcfg = _read_json(info["transformer"]["config"])
    vcfg = _read_json(info["vae"]["config"])
    scfg = _read_json(info["scheduler"]["config"])
    schedule = _check_configs(info, tcfg, vcfg, scfg)
    meta_t = build_on_meta(CogVideoXTransformer3DModel, tcfg)
    n_params = _n_params(meta_t)
    dt = resolve_dtype(device, dtype, n_params=n_params, allow_fp16=allow_fp16)
    if weights is not None:
        check_weights(meta_t, weights)
    placer = placer if placer is not None else DevicePlacer(device)
    pos, neg, prompt_src = _resolve_prompts(info, tcfg, prompt_embeds, prompt, negative_prompt_embeds,
                                            negative_prompt, device, placer)
    log.info("loading %s transformer (%s parameters) in %s", info["path"].name, f"{n_params:,}", dt)
    transformer = load_component(CogVideoXTransformer3DModel, info["transformer"], dt, model=meta_t)
    log.info("loading %s vae", info["path"].name)
    vae = load_component(AutoencoderKLCogVideoX, info["vae"], dt)
    wrep = None
    if weights is not None:
        wrep = apply_weights(transformer, weights).to_dict()
    report = {
        "base": str(info["path"]), "dtype": str(dt).replace("torch.", ""), "prediction_type": schedule.prediction_type,
        "transformer": {"files": [str(p) for p in info["transformer"]["files"]], "n_params": n_params,
                        "variant": info["transformer"]["variant"]},
        "vae": {"files": [str(p) for p in info["vae"]["files"]], "n_params": _n_params(vae),
                "variant": info["vae"]["variant"]},
        "weights": wrep, "prompt": prompt_src,
    }
    return VideoModel(transformer=transformer, vae=vae, scheduler_config=scfg, prompt_embeds=pos,
                      negative_prompt_embeds=neg, dtype=dt, device=torch.device(device), placer=placer,
                      name=name or info["path"].name, report=report, schedule=schedule)


# ================================================================================================ real layout proof


def _simulated_shards(layout: dict, bytes_per: int, max_shard: int) -> dict[str, str]:
    """A diffusers-like weight_map splitting ``layout`` into shards of at most ``max_shard`` bytes."""
    shards: list[list[str]] = [[]]
    size = 0
    for k, shape in layout.items():
        b = math.prod(shape) * bytes_per
        if shards[-1] and size + b > max_shard:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += b
    n = len(shards)
    return {k: f"{_WEIGHT_STEM}-{i + 1:05d}-of-{n:05d}.safetensors" for i, ks in enumerate(shards) for k in ks}


def _plan_counts(rep: LoadReport) -> dict:
    return {"matched": len(rep.matched), "missing": len(rep.missing), "unexpected": len(rep.unexpected),
            "mismatched": len(rep.mismatched)}


def real_layout_check(transformer_config: dict = COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG,
                      vae_config: dict = COGVIDEOX_5B_VAE_CONFIG) -> dict:
    """Prove on the meta device (no memory) that a real download maps key-for-key and shape-for-shape.

    Builds both models from the configs on meta, plans their layouts against themselves, against a simulated bf16
    download manifest (diffusers-style 5 GB shards, keys as saved by ``save_pretrained``, and the same keys with a
    "transformer." prefix through :func:`normalize_keys`), and a T2V (in_channels/2) layout against the I2V one
    (must mismatch). Returns counts and the derived geometry (latent size, token count, pos_embedding shape).
    """
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    out: dict = {}
    devices: set[str] = set()
    layouts = {}
    for name, cls, cfg in (("transformer", CogVideoXTransformer3DModel, transformer_config),
                           ("vae", AutoencoderKLCogVideoX, vae_config)):
        model = build_on_meta(cls, cfg)
        sd = model.state_dict()
        devices |= {t.device.type for t in sd.values()}
        devices |= {t.device.type for t in model.parameters()}
        lay = layouts[name] = _layout(model)
        weight_map = _simulated_shards(lay, 2, 5 * 1024 ** 3)
        download = {k: (lay[k], "BF16") for k in weight_map}
        prefixed = {f"{name}." + k: v for k, v in download.items()}  # as saved from a wrapping pipeline/module
        mapping, prefix = normalize_keys(prefixed, lay) if name == "transformer" else ({}, "")
        out[name] = {
            "n_keys": len(lay), "n_params": _n_params(model),
            "n_elements": sum(math.prod(s) for s in lay.values()),
            "bytes_bf16": 2 * sum(math.prod(s) for s in lay.values()),
            "n_shards": len(set(weight_map.values())),
            "self": _plan_counts(plan_state_dict(lay, lay)),
            "download": _plan_counts(plan_state_dict(lay, download)),
        }
        if name == "transformer":
            renamed = {mapping[k]: v for k, v in prefixed.items()}
            out[name]["prefixed_download"] = dict(_plan_counts(plan_state_dict(lay, renamed)), prefix_stripped=prefix)
        del model, sd
    t2v = build_on_meta(CogVideoXTransformer3DModel, dict(transformer_config,
                                                          in_channels=int(transformer_config["in_channels"]) // 2))
    t2v_plan = plan_state_dict(layouts["transformer"], _layout(t2v))
    out["t2v_against_i2v"] = dict(_plan_counts(t2v_plan), mismatched_keys=[k for k, _, _ in t2v_plan.mismatched])
    tc, vc = transformer_config, vae_config
    s = 2 ** (len(vc["block_out_channels"]) - 1)
    frames, p = int(tc["sample_frames"]), int(tc["patch_size"])
    lt = (frames - 1) // int(vc["temporal_compression_ratio"]) + 1
    lh, lw = int(tc["sample_height"]), int(tc["sample_width"])
    tokens = lt * (lh // p) * (lw // p)
    pos_shape = layouts["transformer"].get("patch_embed.pos_embedding")
    out["geometry"] = {
        "frames": frames, "height": lh * s, "width": lw * s, "latent": (lt, lh, lw), "tokens": tokens,
        "text_tokens": int(tc["max_text_seq_length"]), "pos_embedding": pos_shape,
        "consistent": pos_shape is None or pos_shape[1] == int(tc["max_text_seq_length"]) + tokens,
    }
    out["devices"] = sorted(devices)
    return out

