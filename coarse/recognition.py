"""A face-recognition descriptor of a detected face: dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``,
shipped in ``face_recognition_models``), 128 numbers that say who a face is and little about its pose, light or
expression. :mod:`coarse.identity` maps it to the face model's identity coefficients.

dlib aligns a 150 x 150 chip of the face by its landmarks (``padding`` 0.25 of the face around it) and runs the
network on it; 0.08-0.1 s per face on one CPU core.

Frames: the photo frame of :mod:`coarse.detect` (pixels, x right, y down, pixel centres at +0.5).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .detect import _model_path

#: Length of a descriptor.
DESCRIPTOR_SIZE = 128


@lru_cache(maxsize=1)
def _recognition_model():
    import dlib

    return dlib.face_recognition_model_v1(str(_model_path("dlib_face_recognition_resnet_model_v1.dat")))


def _shape(landmarks: np.ndarray):
    """dlib's ``full_object_detection`` of 68 photo-frame points (pixel indices, as its predictor gives them)."""
    import dlib

    pts = np.rint(np.asarray(landmarks, np.float64) - 0.5).astype(int)
    lo, hi = pts.min(0), pts.max(0)
    return dlib.full_object_detection(dlib.rectangle(int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])),
                                      [dlib.point(int(x), int(y)) for x, y in pts])


def face_descriptor(image: np.ndarray, landmarks: np.ndarray, jitters: int = 0) -> np.ndarray:
    """The recognition descriptor of the face with these landmarks.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (68, 2) the face's 68 points (Multi-PIE order), photo frame.
        jitters: > 1 averages the descriptors of that many randomly jittered chips (dlib's ``num_jitters``).
    Returns:
        (128,) float32, unit-ish length (dlib's metric: two photos of one person lie within 0.6).
    """
    pts = np.asarray(landmarks, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected (68, 2) finite landmarks; got shape {pts.shape}")
    image = np.ascontiguousarray(image, np.uint8)
    d = _recognition_model().compute_face_descriptor(image, _shape(pts), int(jitters))
    return np.asarray(d, np.float32)
