"""Reading the weights files every network of the project is saved in (``torch.save`` of a dict with a
``format`` tag), with one-line errors for a missing, foreign or truncated file. Stage-free: each network's
typed loader (:func:`coarse.network.load_iterative`, :func:`training.detail_net.load_detail`) builds on it."""
from __future__ import annotations

from pathlib import Path


class CheckpointError(ValueError):
    """A file that is not a readable facesynth checkpoint (of the expected kind)."""


def load_file(path: str | Path, map_location="cpu") -> dict:
    """``torch.load`` of a weights file (tensors only); :class:`CheckpointError` when it is not one."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a foreign or truncated file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({first})") from None


def read_checkpoint(path: str | Path, fmt: str, what: str, map_location="cpu") -> dict:
    """Read a checkpoint of format ``fmt`` (e.g. ``facesynth-iterative/1``); :class:`CheckpointError` if the
    file is not one (``what`` names the expected kind in the message)."""
    ckpt = load_file(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not a facesynth {what} checkpoint")
    return ckpt
