"""Image files <-> tensors. Entry points: :func:`load_image`, :func:`save_image`.

Tensors are float in [0,1], layout [H,W,C] (C = 3, or 4 with alpha); batches [N,H,W,C] (ComfyUI IMAGE layout).
Writes are atomic: a temporary file in the destination folder is renamed over the target only when complete.
"""
from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import torch

from ..core.atomic import atomic_write

__all__ = ["load_image", "save_image", "resize_image", "composite", "atomic_write"]


def load_image(path, *, keep_alpha: bool = False, background=None) -> torch.Tensor:
    """Read an image file -> [H,W,3] (or [H,W,4] with ``keep_alpha``) float32 in [0,1].

    Grayscale is expanded to RGB; palette images are converted; 16-bit images keep their precision. With an alpha
    channel and ``background`` (RGB in 0..1) the image is composited over that colour.
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    try:
        with Image.open(p) as im:
            _load_strict(im)  # PIL decodes lazily: truncation / corrupt data surface only here
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                arr = np.repeat(arr[..., None], 3, -1)
            else:
                has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
                arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / 255.0
    except UnidentifiedImageError:
        raise ValueError(f"{p}: not a readable image: the file is truncated or corrupt, or not in a format PIL "
                         "reads; pass a PNG, JPEG or WebP image (re-export or re-download a damaged one)") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"{p}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error) as e:
        # PIL reports broken files as OSError ("image file is truncated", "Truncated File Read"), SyntaxError
        # ("broken PNG file"), ValueError, EOFError, struct/zlib errors depending on the format and where it breaks
        if isinstance(e, OSError) and e.errno is not None:  # the file system's error (permissions, I/O), not PIL's
            raise ValueError(f"{p}: cannot read the file ({e.strerror}); check that it is readable") from None
        raise ValueError(f"{p}: the image file is truncated or corrupt ({type(e).__name__}: {e}); re-export or "
                         "re-download it (an interrupted copy leaves such files)") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.shape[-1] == 4 and background is not None:
        t = composite(t, background)
    elif t.shape[-1] == 4 and not keep_alpha:
        t = t[..., :3]
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{p}: image has zero size")
    return t


_STRICT_LOCK = threading.Lock()


def _load_strict(im) -> None:
    """``im.load()`` with PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` off: when another library has switched that global
    on, PIL fills a truncated image's missing rows with grey without a word; here it raises instead. The global is
    restored at once (it is only touched when it was on)."""
    from PIL import ImageFile

    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        im.load()
        return
    with _STRICT_LOCK:
        prev = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            im.load()
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = prev


def composite(rgba: torch.Tensor, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Alpha-composite [...,4] over an RGB background -> [...,3]."""
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + bg * (1 - a)


def resize_image(img: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [H,W,C] or [N,H,W,C] with an area filter when shrinking, bilinear (corner-aligned=False) when growing.

    Matches ``Cameras.resized`` (pixel-centre convention: x' + 0.5 = (x + 0.5) * W'/W).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"resize_image: target size must be positive, got {width}x{height}")
    squeeze = img.dim() == 3
    x = (img[None] if squeeze else img).permute(0, 3, 1, 2)
    H, W = x.shape[-2:]
    if (H, W) == (height, width):
        out = x
    elif height <= H and width <= W:
        out = torch.nn.functional.interpolate(x, size=(height, width), mode="area")
    else:
        out = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                              antialias=True)
    out = out.permute(0, 2, 3, 1)
    return out[0] if squeeze else out


def save_image(img: torch.Tensor, path, *, quality: int = 95) -> Path:
    """Write [H,W,3|4] (values clamped to 0..1) as PNG/JPEG/WebP chosen by the suffix; atomic."""
    from PIL import Image

    if img.dim() != 3 or img.shape[-1] not in (1, 3, 4):
        raise ValueError(f"save_image expects [H,W,C] with C in (1,3,4), got {tuple(img.shape)}")
    if not torch.isfinite(img).all():
        raise ValueError("save_image: image has NaN/inf values; nothing was written")
    arr = (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    im = Image.fromarray(arr)
    suffix = Path(path).suffix.lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(suffix)
    if fmt is None:
        raise ValueError(f"save_image: unsupported extension {suffix!r}; use .png, .jpg or .webp")
    if fmt == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt, **({"quality": quality} if fmt != "PNG" else {})))
