"""The training stage's error types, importable without torch (the CLIs name them in their error handling)."""
from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a run folder of another config, data of the wrong shape)."""


class CheckpointError(ValueError):
    """A file that is not a readable facesynth checkpoint."""
