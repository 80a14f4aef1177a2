"""Weak-perspective projection, the one camera of the pipeline: p = s [R | t] P.

Frames and units:
- model frame: millimetres, y up, face looking along +z (see :mod:`morphable.model`);
- image frame: pixels, origin at the top-left corner of the image, x to the right, y down; the centre of
  pixel (row i, column j) is (x, y) = (j + 0.5, i + 0.5);
- depth: millimetres along the camera axis in the rotated model frame, larger = nearer the camera.

Projection of a model point P: ``x = s (R P)_x + t_x``, ``y = t_y - s (R P)_y``, ``depth = (R P)_z``.
The camera looks along -z of the rotated frame, so the view vector (towards the camera) is +z.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class Pose:
    """Weak-perspective pose.

    scale: pixels per millimetre; rotation: (3, 3) rotation applied to model points;
    translation: (2,) pixel position of the model origin in the image (x, y).
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def to_dict(self) -> dict:
        return {
            "scale": float(self.scale),
            "rotation": np.asarray(self.rotation, float).tolist(),
            "translation": np.asarray(self.translation, float).tolist(),
        }

    @staticmethod
    def from_dict(d: dict) -> "Pose":
        return Pose(float(d["scale"]), np.asarray(d["rotation"], np.float64), np.asarray(d["translation"], np.float64))


def euler_to_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (3, 3) from angles in radians: R = R_z(roll) R_x(pitch) R_y(yaw).

    In the right-handed model frame (y up, +z towards the camera): positive yaw turns the face towards the
    image's right (+x), positive pitch turns it down (chin towards the chest), positive roll turns it
    counter-clockwise as seen in the image.
    """
    # Written out rather than scipy's Rotation.from_euler("yxz", [yaw, pitch, roll]) (the same rotation): scipy
    # goes through a quaternion and differs in the last bit, which would change the poses stored in datagen's
    # shards, so the same seed would no longer give the same bytes.
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def rotation_to_euler(R: np.ndarray) -> tuple[float, float, float]:
    """Inverse of :func:`euler_to_rotation` (radians: yaw, pitch, roll) for |pitch| < 90 degrees."""
    yaw, pitch, roll = Rotation.from_matrix(R).as_euler("yxz")
    return float(yaw), float(pitch), float(roll)


def project(points: np.ndarray, pose: Pose) -> np.ndarray:
    """Project model points into the image.

    Args:
        points: (..., 3) model-frame positions, mm.
        pose: the weak-perspective pose.
    Returns:
        (..., 3): pixel x, pixel y (image frame) and depth in mm (larger = nearer).
    """
    rp = points @ np.asarray(pose.rotation, points.dtype).T
    out = np.empty_like(rp)
    out[..., 0], out[..., 1] = image_xy(rp, pose.scale, pose.translation)
    out[..., 2] = rp[..., 2]
    return out


def image_xy(rotated, scale, translation):
    """The image position of points already rotated by the pose, numpy or torch (differentiable in all three):
    ``(x, y) = (s X + t_x, t_y - s Y)`` for rotated points (..., 3) (X, Y, Z), scale ``s`` (px/mm) and
    translation (2,) (px). Returns (x, y), each (...)."""
    return scale * rotated[..., 0] + translation[0], translation[1] - scale * rotated[..., 1]


def perspective_warp(points: np.ndarray, pose: Pose, distance_mm: float, centre: np.ndarray) -> np.ndarray:
    """Model points moved so that their weak-perspective image under ``pose`` is the pinhole image of a camera
    ``distance_mm`` in front of ``centre`` (the optical axis through it, the same scale there).

    A point at depth ``z`` (mm, camera frame, relative to the centre, towards the camera) is seen magnified by
    ``D / (D - z)`` about the axis: near parts (the nose) grow and far parts (ears, the far cheek) shrink, as in
    a phone photo at arm's length. Depths and the drawing order stay as they were.

    Args:
        points: (..., 3) model-frame positions, mm; centre: (3,) model-frame point on the optical axis.
        distance_mm: camera distance D from the centre, mm (> the face's depth).
    Returns:
        (..., 3) model-frame positions, mm, to draw with ``pose``.
    """
    R = np.asarray(pose.rotation, np.float64)
    rp = np.asarray(points, np.float64) @ R.T
    c = np.asarray(centre, np.float64) @ R.T
    k = distance_mm / np.maximum(distance_mm - (rp[..., 2] - c[2]), 1e-3)
    rp[..., :2] = c[:2] + (rp[..., :2] - c[:2]) * k[..., None]
    return (rp @ R).astype(np.asarray(points).dtype)


def rotate_normals(normals: np.ndarray, pose: Pose) -> np.ndarray:
    """(..., 3) model-frame normals -> camera-frame normals (x right, y up, z towards the camera)."""
    return normals @ np.asarray(pose.rotation, normals.dtype).T
