"""Per-vertex albedo for the whole rendered head: skin from the albedo model, plus the fixed materials that
fill the holes of the face area (eyeballs with sclera, iris and pupil; a dark mouth interior; teeth).

Colours are display RGB in [0, 1]: Phong is evaluated on them directly and images are written without a gamma curve, as in the paper.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SCLERA = np.array([0.80, 0.77, 0.74], np.float32)
TEETH = np.array([0.78, 0.74, 0.63], np.float32)
MOUTH_INTERIOR = np.array([0.16, 0.05, 0.05], np.float32)
PUPIL = np.array([0.02, 0.02, 0.02], np.float32)
PUPIL_RADIUS_MM = 2.2
IRIS_RADIUS_MM = 6.0
#: Iris colours people have (brown, dark brown, hazel, green, blue, gray), linear RGB.
IRIS_PALETTE = np.array(
    [[0.22, 0.11, 0.05], [0.10, 0.05, 0.02], [0.30, 0.20, 0.08], [0.20, 0.28, 0.12],
     [0.15, 0.25, 0.40], [0.30, 0.33, 0.36]],
    np.float32,
)


@lru_cache(maxsize=4)
def _eye_layout(model) -> tuple[np.ndarray, np.ndarray]:
    """(eyeball vertex ids, radial distance in mm from the eye's optical axis, inf on the back half).

    ICT's sclera mesh is a closed ball whose front (the cornea) was transparent in ICT's own shader, so
    the iris and pupil are painted on the front of both the sclera and the iris meshes.
    """
    ids, radii = [], []
    for side in ("left", "right"):
        idx = np.concatenate([model.regions[f"sclera_{side}"], model.regions[f"iris_{side}"]])
        p = model.mean[idx]
        c = model.mean[model.regions[f"sclera_{side}"]].mean(0)
        r = np.linalg.norm((p - c)[:, :2], axis=1)
        r = np.where(p[:, 2] >= c[2], r, np.inf)
        ids.append(idx)
        radii.append(r)
    return np.concatenate(ids), np.concatenate(radii)


def head_albedo(model, skin: np.ndarray, iris_rgb: np.ndarray | None = None) -> np.ndarray:
    """Albedo of every model vertex.

    Args:
        model: :class:`morphable.model.FaceModel`.
        skin: (Vf, 3) albedo of the face-area vertices (``model.regions['face']``), or (3,) for one tone.
        iris_rgb: (3,) iris colour (default: brown).
    Returns:
        (V, 3) float32.
    """
    out = np.empty((model.n_vertices, 3), np.float32)
    out[:] = SCLERA
    out[model.regions["face"]] = skin
    out[model.regions["mouth_interior"]] = MOUTH_INTERIOR
    out[model.regions["teeth"]] = TEETH
    ids, r = _eye_layout(model)
    iris = IRIS_PALETTE[0] if iris_rgb is None else np.asarray(iris_rgb, np.float32)
    out[ids[r < IRIS_RADIUS_MM]] = iris
    out[ids[r < PUPIL_RADIUS_MM]] = PUPIL
    return out


def random_iris(rng: np.random.Generator) -> np.ndarray:
    """A random iris colour: a palette entry, jittered."""
    base = IRIS_PALETTE[rng.integers(len(IRIS_PALETTE))]
    return np.clip(base * rng.uniform(0.8, 1.2, 3), 0, 1).astype(np.float32)
