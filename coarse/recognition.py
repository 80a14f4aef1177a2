"""A face-recognition descriptor of a detected face: dlib's ResNet (``dlib_face_recognition_resnet_model_v1.dat``,
shipped in ``face_recognition_models``), 128 numbers that say who a face is and little about its pose, light or
expression. :mod:`coarse.identity` maps it to the face model's identity coefficients.

dlib aligns a 150 x 150 chip of the face by its landmarks (``padding`` 0.25 of the face around it) and runs the
network on it; 0.08-0.1 s per face on one CPU core.

Frames: the photo frame of :mod:`coarse.detect` (pixels, x right, y down, pixel centres at +0.5).
"""
from __future__ import annotations

import numpy as np

from .detect import _model_path, dlib_model

#: Length of a descriptor.
DESCRIPTOR_SIZE = 128
#: Landmark k of a face seen in a mirror is landmark MIRROR_68[k] of the face (Multi-PIE order: the jaw, brows,
#: lower nose, eyes and mouth run the other way; the eyes trade places).
MIRROR_68 = np.r_[16:-1:-1, 26:16:-1, 27:31, 35:30:-1, 45:41:-1, 47:45:-1, 39:35:-1, 41:39:-1, 54:47:-1, 59:54:-1,
                  64:59:-1, 67:64:-1]


@dlib_model
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


def face_descriptor(image: np.ndarray, landmarks: np.ndarray, jitters: int = 0, mirror: bool = False) -> np.ndarray:
    """The recognition descriptor of the face with these landmarks.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (68, 2) the face's 68 points (Multi-PIE order), photo frame.
        jitters: > 1 averages the descriptors of that many randomly jittered chips (dlib's ``num_jitters``).
        mirror: average the descriptor with that of the photo mirrored left to right (its landmarks mirrored
            and relabelled, :data:`MIRROR_68`): half the noise of a second look at the face, for the time of one
            more descriptor.
    Returns:
        (128,) float32, unit-ish length (dlib's metric: two photos of one person lie within 0.6).
    """
    pts = np.asarray(landmarks, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError(f"expected (68, 2) finite landmarks; got shape {pts.shape}")
    image = np.ascontiguousarray(image, np.uint8)
    d = np.asarray(_recognition_model().compute_face_descriptor(image, _shape(pts), int(jitters)), np.float32)
    if not mirror:
        return d
    flipped = pts[MIRROR_68] * (-1.0, 1.0) + (image.shape[1], 0.0)
    m = _recognition_model().compute_face_descriptor(np.ascontiguousarray(image[:, ::-1]), _shape(flipped),
                                                     int(jitters))
    return 0.5 * (d + np.asarray(m, np.float32))
