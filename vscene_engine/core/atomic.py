"""Atomic file writes. Entry points: :func:`atomic_write_bytes`, :func:`atomic_write`.

A temporary file is created in the destination folder, written, flushed to disk and renamed over the target with
``os.replace``; on any error it is removed, so a target is either complete or untouched (never partial). Missing
parent folders are created. The new file gets the usual permissions (0666 minus the umask).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write_fn) -> Path:
    """Call ``write_fn(tmp_path: str)`` to produce the file, then atomically move it to ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see module docstring); return ``path``."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)
