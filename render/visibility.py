"""Which model vertices a camera sees, and the image's colours at them: shared by the texture
(:mod:`reconstruct.texture`), the refined mesh and the photometric coarse refinement (:mod:`coarse.photometric`).

Frames: the image frame of :mod:`render.camera` (pixels, x right, y down, pixel centres at +0.5).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from .camera import Pose, project, rotate_normals
from .raster import NumbaRasterizer, fragments_from_ids


def visible_vertices(model, verts: np.ndarray, pose: Pose, image_shape: tuple[int, int],
                     min_facing: float = 0.25, depth_tol_mm: float = 1.5) -> np.ndarray:
    """(V,) bool: vertices that the camera sees (in the image, facing it, not occluded).

    Args:
        verts: (V, 3) model-frame vertices, mm; pose: the photo's pose; image_shape: (H, W) of the photo.
        min_facing: minimum camera-frame normal z (grazing vertices take unreliable colours).
        depth_tol_mm: a vertex is occluded when the rendered depth at its pixel is nearer by more than this.
    """
    H, W = image_shape
    vi = project(verts, pose)
    ids = NumbaRasterizer().rasterize(vi, model.triangles, H, W)
    frags = fragments_from_ids(ids, vi, model.triangles)
    x, y = vi[:, 0], vi[:, 1]
    inside = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    xi = np.clip(x.astype(int), 0, W - 1)
    yi = np.clip(y.astype(int), 0, H - 1)
    unoccluded = frags.mask[yi, xi] & (frags.depth[yi, xi] - vi[:, 2] < depth_tol_mm)
    facing = rotate_normals(model.vertex_normals(verts), pose)[:, 2] > min_facing
    return inside & unoccluded & facing


def sample_colors(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear colours of ``image`` (H, W, 3) float in [0, 1] at pixel points (N, 2) x, y -> (N, 3)."""
    coords = np.stack([points[:, 1] - 0.5, points[:, 0] - 0.5])
    return np.stack([map_coordinates(image[..., c], coords, order=1, mode="nearest")
                     for c in range(image.shape[-1])], -1).astype(np.float32)
