"""Video files <-> frames. Entry points: :func:`write_video`, :func:`read_frames`.

Frames are float tensors [F,H,W,3] in [0,1]. Encoding uses PyAV (the FFmpeg bindings ComfyUI itself depends on for its
VIDEO type): H.264 in MP4, yuv420p, which needs even width and height — odd sizes are padded by one edge pixel and
the padding is recorded nowhere (pass even sizes to avoid it). Writes are atomic (temporary file + rename).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from ..core.atomic import atomic_write

__all__ = ["write_video", "read_frames"]


def write_video(frames: torch.Tensor, path, fps: float = 8.0, crf: int = 18) -> Path:
    """Encode [F,H,W,3] (0..1) as H.264 MP4 at ``fps``; atomic; returns the path."""
    try:
        import av
    except ImportError:  # pragma: no cover - av ships with ComfyUI and is in requirements.txt
        raise RuntimeError("writing video needs PyAV: pip install av") from None
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise ValueError(f"write_video expects frames [F,H,W,3] with F >= 1, got "
                         f"{tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__}")
    if not torch.isfinite(frames).all():
        raise ValueError("write_video: frames contain NaN/inf; nothing was written")
    if not (0 < float(fps) <= 240):
        raise ValueError(f"write_video: fps must be in (0, 240], got {fps}")
    arr = (frames.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    F, H, W, _ = arr.shape
    if H % 2 or W % 2:
        arr = np.pad(arr, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        H, W = arr.shape[1:3]

    def _write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
            stream.options = {"crf": str(crf)}
            for f in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(path, _write)


def read_frames(source) -> torch.Tensor:
    """A video file (anything FFmpeg decodes) or a folder of images (sorted by name) -> [F,H,W,3] float32 0..1."""
    p = Path(source)
    if p.is_dir():
        from .images import load_image

        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise ValueError(f"{p}: no .png/.jpg/.webp frames in this folder")
        imgs = [load_image(f) for f in files]
        if len({tuple(i.shape) for i in imgs}) != 1:
            raise ValueError(f"{p}: frames have different sizes; all frames of a video must have one size")
        return torch.stack(imgs)
    if not p.is_file():
        raise FileNotFoundError(f"video or frame folder not found: {p}")
    import av

    what_to_do = "re-export or re-download it (an interrupted copy leaves such files), or pass a folder of frames"
    try:
        with av.open(str(p)) as container:
            if not container.streams.video:
                raise ValueError(f"{p}: the file has no video stream; pass a video file or a folder of frames")
            stream = container.streams.video[0]
            declared = int(stream.frames or 0)  # from the container's index; 0 when it does not say
            frames = [torch.from_numpy(fr.to_ndarray(format="rgb24")) for fr in container.decode(stream)]
    except (av.error.FFmpegError, EOFError, IndexError) as e:  # FFmpeg's own errors; EOF inside a damaged stream
        raise ValueError(f"{p}: cannot decode as video, the file is truncated, corrupt or not a video "
                         f"({type(e).__name__}: {e}); {what_to_do}") from None
    if not frames:
        raise ValueError(f"{p}: the video has no decodable frames; the file is truncated or empty; {what_to_do}")
    if declared and len(frames) < declared:
        # FFmpeg decodes what it can from a cut-off file (index at the front) and stops quietly at the cut
        raise ValueError(f"{p}: the video is truncated: its index declares {declared} frames but only {len(frames)} "
                         f"decode; {what_to_do}")
    return torch.stack(frames).float() / 255.0
