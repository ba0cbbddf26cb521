"""Loading NoPoSplat weights: the release's Lightning ``.ckpt`` files or ``.safetensors``.

Entry point: :func:`load_noposplat` ``(path) -> NoPoSplatNet`` (eval mode).

Lightning checkpoints are read by :func:`vscene_engine.io.checkpoints.read_state_dict` (PyTorch's weights-only unpickler
with our inert stand-ins, never a plain ``torch.load``); their model keys are ``encoder.<name>`` (the LightningModule
stores the network as ``self.encoder``; its decoder, losses and the training-time distiller add no persistent
entries), and the prefix is stripped. ``.safetensors`` files may hold the names with or without ``encoder.``.
Loading is strict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...io.checkpoints import state_dict_mismatch
from .config import RELEASE_FILES, NoPoSplatConfig
from .model import NoPoSplatNet

__all__ = ["load_noposplat", "guess_image_size", "save_noposplat"]


def guess_image_size(path) -> int:
    """The training input size of a weights file: the release file names (``RELEASE_FILES``), else a ``512`` in the
    name (``..._512x512``), else the ``image_size`` in a safetensors file's metadata, else 256."""
    p = Path(path)
    if p.name in RELEASE_FILES:
        return RELEASE_FILES[p.name]
    if re.search(r"(?<!\d)512(?!\d)", p.stem):
        return 512
    if p.suffix.lower() == ".safetensors" and p.is_file():
        try:
            from safetensors import safe_open
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
            if "image_size" in meta:
                return int(meta["image_size"])
            if "noposplat_config" in meta:
                return int(json.loads(meta["noposplat_config"]).get("image_size", 256))
        except Exception:  # noqa: BLE001 - unreadable metadata: fall back to the default; load() reports real errors
            pass
    return 256


def _read(path: Path) -> tuple[dict, dict]:
    from ...io import checkpoints as safe_ckpt
    meta = {}
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path.name}: unreadable safetensors file ({e}); download it again") from None
        sd = safe_ckpt.read_state_dict(str(path))
    else:
        sd = safe_ckpt.read_state_dict(str(path))
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):]: t for k, t in sd.items() if k.startswith("encoder.")}
    return sd, meta


def load_noposplat(path, device="cpu", dtype: torch.dtype = torch.float32, config: NoPoSplatConfig | None = None,
                   image_size: int | None = None) -> NoPoSplatNet:
    """Load a NoPoSplat network from a release ``.ckpt`` or a ``.safetensors`` file.

    The config is ``config`` if given, else the one stored in a safetensors file's ``noposplat_config`` metadata
    (written by :func:`save_noposplat`), else inferred from the weights (:meth:`NoPoSplatConfig.from_state_dict`)
    with ``image_size`` (default: :func:`guess_image_size`). Raises FileNotFoundError, or ValueError naming the file
    and the first missing / unexpected / mis-shaped keys. Returns the network in eval mode on ``device``/``dtype``.
    """
    from ...io.checkpoints import CheckpointError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NoPoSplat weights not found: {path}")
    try:
        sd, meta = _read(path)
    except CheckpointError as e:
        raise ValueError(f"{path.name}: {e}") from None
    size = int(image_size) if image_size else guess_image_size(path)
    try:
        if config is not None:
            cfg = config
        elif "noposplat_config" in meta:
            d = json.loads(meta["noposplat_config"])
            if image_size:
                d["image_size"] = size
            cfg = NoPoSplatConfig.from_dict(d)
        else:
            cfg = NoPoSplatConfig.from_state_dict(sd, image_size=size)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path.name} is not a NoPoSplat checkpoint (cannot read its config from the weights: "
                         f"{e}); expected the release's re10k.ckpt / acid.ckpt / mixRe10kDl3dv*.ckpt") from None
    with torch.device("meta"):
        ref = NoPoSplatNet(cfg).state_dict()
    problem = state_dict_mismatch(ref, sd)
    if problem:
        raise ValueError(f"{path.name} does not match the NoPoSplat network: {problem}")
    model = NoPoSplatNet(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def save_noposplat(model: NoPoSplatNet, path, prefix: str = "encoder.") -> None:
    """Write ``model`` as ``.safetensors`` with the official key names (``prefix`` + name; shared tensors cloned) and
    its config in the metadata (``noposplat_config``, ``image_size``). Written atomically."""
    from safetensors.torch import save_file
    from ...core.atomic import atomic_write
    sd = {prefix + k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"noposplat_config": json.dumps(model.cfg.to_dict()), "image_size": str(model.cfg.image_size)}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
