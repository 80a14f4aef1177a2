"""Atomic file writes: every file is written to a temporary name in its own folder and renamed over the
target, so a reader (or a resumed run) never sees a partial file.

The temporary name is ``NAME.tmp-HOST-PID``: parallel writers (processes, or machines sharing a folder)
never collide, and ``NAME.tmp-*`` finds what a killed writer left behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Iterator

import numpy as np

TMP_MARK = ".tmp-"


def temp_path(path: str | Path) -> Path:
    """The temporary name this process uses for ``path``: ``NAME.tmp-HOST-PID`` in the same folder."""
    path = Path(path)
    return path.with_name(f"{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it is renamed over ``path`` (``os.replace``),
    on an error it is removed and the error re-raised. The temporary name has no meaningful suffix: pass the
    format explicitly to writers that guess it from the name (``fig.savefig(tmp, format="png")``)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """``json.dumps(obj, indent=indent, sort_keys=sort_keys)`` written to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


#: zlib level of :func:`save_png`: 1 writes refine's pictures about 3x faster than Pillow's default 6, for files
#: about 18 % larger (benchmarks/outputs.py); the pixels are the same at every level.
PNG_LEVEL = 1


def save_png(path: str | Path, img: np.ndarray, compress_level: int = PNG_LEVEL) -> Path:
    """Write ``img`` ((H, W) or (H, W, 3), uint8 or float in [0, 1]) as a PNG atomically, creating the
    folder; returns ``path``. ``compress_level``: zlib's 0 (none) .. 9 (smallest, slowest)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=compress_level)
    return path


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
