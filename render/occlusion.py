"""What of the light reaches each vertex of a mesh: cast shadows of a directional light, ambient occlusion.

A vertex sees a direction ``d`` when nothing of the mesh lies in front of it along ``d``. The mesh is drawn
orthographically along ``d`` (a shadow map of ``size`` x ``size`` pixels over the mesh's extent, by the numba
rasteriser, whatever the renderer's own backend), and a vertex is seen when its depth is within a bias of the
nearest surface at its pixel. The bias grows with the slope of the surface to ``d`` (no acne on grazing faces).

Ambient occlusion is the cosine-weighted share of the hemisphere above a vertex that it sees, over a fixed
Fibonacci sphere of directions: 1 in the open (cheek, forehead), lower in the eye sockets, the nostrils, the
mouth's corners, behind the ears and under the chin.
"""
from __future__ import annotations

import numpy as np

from .raster import NumbaRasterizer, fragments_from_ids


def frame_towards(direction: np.ndarray) -> np.ndarray:
    """(3, 3) rotation Q with ``Q @ direction`` = (0, 0, 1) (``direction``: (3,), any length > 0)."""
    z = np.asarray(direction, np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (the golden-angle spiral); deterministic."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.maximum(1.0 - z * z, 0.0))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def visibility(verts: np.ndarray, normals: np.ndarray, triangles: np.ndarray, directions: np.ndarray,
               size: int = 256, bias_px: float = 1.0, rasterizer: NumbaRasterizer | None = None) -> np.ndarray:
    """Which vertices see each direction.

    Args:
        verts: (V, 3) positions, mm (any frame); normals: (V, 3) unit vertex normals in the same frame.
        triangles: (F, 3) vertex indices.
        directions: (D, 3) unit vectors from the surface towards the light, in the frame of ``verts``.
        size: side of each shadow map, pixels, over the mesh's extent across the direction.
        bias_px: depth tolerance in pixels of the map, times (1 + 2 tan) of the angle between normal and direction.
    Returns:
        (D, V) float32: 1 where the vertex sees the direction, 0 where the mesh is in front of it or the vertex
        faces away from it (n . d <= 0).
    """
    rasterizer = rasterizer or NumbaRasterizer()
    verts = np.asarray(verts, np.float64)
    tris = np.ascontiguousarray(triangles)
    out = np.zeros((len(directions), len(verts)), np.float32)
    for k, d in enumerate(np.asarray(directions, np.float64)):
        p = verts @ frame_towards(d).T
        lo = p[:, :2].min(0)
        px_per_mm = (size - 4) / max(float((p[:, :2].max(0) - lo).max()), 1e-6)
        vi = np.empty_like(p)
        vi[:, :2] = (p[:, :2] - lo) * px_per_mm + 2.0
        vi[:, 2] = p[:, 2]
        frags = fragments_from_ids(rasterizer.rasterize(vi, tris, size, size), vi, tris)
        ix = np.clip(vi[:, 0].astype(np.int64), 0, size - 1)
        iy = np.clip(vi[:, 1].astype(np.int64), 0, size - 1)
        cos = np.clip(normals @ (d / np.linalg.norm(d)), 0.0, 1.0)
        tan = np.sqrt(1.0 - np.minimum(cos, 0.995) ** 2) / np.maximum(cos, 0.1)
        bias = bias_px * (1.0 + 2.0 * tan) / px_per_mm
        covered = frags.face_id[iy, ix] >= 0
        seen = ~covered | (vi[:, 2] >= frags.depth[iy, ix] - bias)
        out[k] = seen & (cos > 0.0)
    return out


def ambient_occlusion(verts: np.ndarray, normals: np.ndarray, triangles: np.ndarray, n_directions: int = 64,
                      size: int = 192, rasterizer: NumbaRasterizer | None = None) -> np.ndarray:
    """(V,) float32 in [0, 1]: the cosine-weighted share of the hemisphere above each vertex that it sees.

    ``verts`` (V, 3) mm, ``normals`` (V, 3) unit, ``triangles`` (F, 3); ``n_directions`` over the whole sphere
    (about half of them lie above any vertex); ``size``: shadow-map side, pixels."""
    dirs = fibonacci_sphere(n_directions)
    seen = visibility(verts, normals, triangles, dirs, size, rasterizer=rasterizer)
    w = np.clip(np.asarray(normals, np.float64) @ dirs.T, 0.0, None).T  # (D, V)
    return ((seen * w).sum(0) / np.maximum(w.sum(0), 1e-9)).astype(np.float32)
