"""The training stage's error types, importable without torch (the CLIs name them in their error handling)."""
from __future__ import annotations

from facesynth.checkpoint import CheckpointError  # noqa: F401  (the CLIs name it with TrainingError)


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a run folder of another config, data of the wrong shape)."""
