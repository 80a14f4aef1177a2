"""Filters and normals of (H, W) image-frame maps (depth maps: mm, larger = nearer, rows down), shared by the
stages that work on them."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def masked_blur(x: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` pixels) of ``x`` (H, W) over the pixels of ``mask`` (H, W) bool only
    (normalised convolution: pixels outside the mask neither contribute nor dilute). Returns (H, W) float64."""
    m = mask.astype(np.float64)
    return ndimage.gaussian_filter(np.where(mask, x, 0.0), sigma) / np.maximum(ndimage.gaussian_filter(m, sigma), 1e-6)


def normals_from_slopes(gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes -> (unit normals (..., 3), |(-gx, -gy, 1)| (...))."""
    norm = np.sqrt(1.0 + gx * gx + gy * gy)
    return np.stack([-gx / norm, -gy / norm, 1.0 / norm], axis=-1), norm


def depth_to_normals(depth: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Camera-frame unit normals of a depth map.

    Args:
        depth: (H, W) mm, larger = nearer, image frame (rows down); H, W >= 2.
        pixel_mm: size of one pixel, mm (1 / pose.scale).
    Returns:
        (H, W, 3) float64 unit normals (x right, y up, z towards the camera), from central differences
        (one-sided on the border), the operators of the solver.
    """
    depth = np.asarray(depth, np.float64)
    if depth.ndim != 2 or min(depth.shape) < 2:
        raise ValueError(f"depth must be (H, W) with H, W >= 2; got {depth.shape}")
    if not pixel_mm > 0:
        raise ValueError(f"pixel_mm must be > 0; got {pixel_mm}")
    z = depth / pixel_mm
    gx = np.gradient(z, axis=1)
    gy = -np.gradient(z, axis=0)
    return normals_from_slopes(gx, gy)[0]
