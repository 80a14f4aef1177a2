"""A synthetic shape-from-shading scene with known detail, for the SfS tests and benchmarks: a sphere cap
(the "coarse" depth) plus Gaussian bumps and a wrinkle band of 0.3-1 mm (the "true" depth), with a
sharp-edged dark albedo patch, lit by a directional SH light.

Frames and units as in :mod:`reconstruct.sfs`: (n, n) image-frame maps, depth in mm (larger = nearer),
camera-frame normals (x right, y up, z towards the camera).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from render.shading import sh_directional, sh_shade

from render.filters import depth_to_normals


@dataclass(frozen=True)
class DomeScene:
    """image: (n, n) float64 gray in [0, 1]; coarse: (n, n) mm, the dome, 0 outside ``mask``; mask: (n, n)
    bool; normals: (n, n, 3) true normals (dome + detail); albedo: (n, n); sh: (9,) the light;
    pixel_mm: pixel size."""

    image: np.ndarray
    coarse: np.ndarray
    mask: np.ndarray
    normals: np.ndarray
    albedo: np.ndarray
    sh: np.ndarray
    pixel_mm: float


def dome_scene(n: int = 64, pixel_mm: float = 0.5, seed: int = 0, albedo_patch: bool = True) -> DomeScene:
    """The scene on an (n, n) grid of ``pixel_mm`` pixels (the dome's radius is 0.45 of the image side);
    the bumps are drawn from ``seed``; ``albedo_patch`` False: constant albedo 0.7."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    x, y = (xx - n / 2) * pixel_mm, (n / 2 - yy) * pixel_mm  # camera frame: x right, y up
    R = n * pixel_mm * 0.45
    r2 = x ** 2 + y ** 2
    mask = r2 < R ** 2
    dome = np.sqrt(np.maximum(2.0 * R ** 2 - r2, 0.0))
    bumps = np.zeros_like(dome)
    for _ in range(8):
        cx, cy = rng.uniform(-0.6 * R, 0.6 * R, 2)
        s, a = rng.uniform(1.0, 2.0), rng.uniform(0.3, 1.0) * rng.choice([-1, 1])
        bumps += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
    bumps += 0.4 * np.sin(x * 2 * np.pi / 4.0) * np.exp(-((y + 0.3 * R) ** 2) / (2 * 2.0 ** 2))  # wrinkles
    n_true = depth_to_normals(dome + bumps, pixel_mm)
    albedo = np.full((n, n), 0.7)
    if albedo_patch:
        albedo[(x - 0.3 * R) ** 2 + (y - 0.3 * R) ** 2 < (0.2 * R) ** 2] = 0.45
    sh = sh_directional([0.4, 0.5, 0.77], intensity=0.8, ambient=0.3)
    image = np.clip(sh_shade(n_true, albedo, sh), 0.0, 1.0)
    return DomeScene(image, np.where(mask, dome, 0.0), mask, n_true, albedo, sh, pixel_mm)
