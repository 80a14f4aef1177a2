"""Texture from a photo, as in the paper's Fig. 9: colours projected from the photo onto the visible
vertices; the hidden ones filled from the albedo model fitted to the visible ones; then baked into the
model's UV layout for an OBJ texture.

UV layout: ICT's UVs use tiles (UDIM-like): u in [0, 1) the face, [1, 2) the mouth socket, [3, 4) eyes and
teeth. The baked texture is an atlas of ``N_TILES`` tiles side by side, so atlas u = u / N_TILES.
"""
from __future__ import annotations

import numpy as np

from render.camera import Pose, project
from render.raster import NumbaRasterizer, fragments_from_ids
from render.visibility import sample_colors, visible_vertices

N_TILES = 4


def fit_albedo(albedo_model, face_colors: np.ndarray, visible: np.ndarray, reg: float = 1.0) -> np.ndarray:
    """Albedo coefficients (Ka,) whose face albedo best matches the visible colours (Tikhonov ``reg``).

    Args:
        face_colors: (Vf, 3) colours of the face-area vertices; visible: (Vf,) bool.
    """
    A = albedo_model.basis[visible].reshape(-1, albedo_model.n_components).astype(np.float64)
    b = (face_colors[visible] - albedo_model.mean[visible]).reshape(-1).astype(np.float64)
    lhs = A.T @ A + reg * np.eye(A.shape[1])
    return np.linalg.solve(lhs, A.T @ b).astype(np.float32)


def vertex_texture(model, image: np.ndarray, verts: np.ndarray, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex colours of the head from the photo.

    Returns:
        colors: (V, 3) float32 in [0, 1]: photo colours where visible; elsewhere on the face the fitted
        albedo model, and the fixed materials (eyes, teeth, mouth) where neither applies;
        visible: (V,) bool.
    """
    from morphable.materials import head_albedo

    visible = visible_vertices(model, verts, pose, image.shape[:2])
    photo = sample_colors(image, project(verts, pose)[:, :2])
    face = model.regions["face"]
    if model.albedo_model is not None and visible[face].sum() > 50:
        beta = fit_albedo(model.albedo_model, photo[face], visible[face])
        skin = model.albedo_model.albedo(beta)[0]
    else:
        skin = np.median(photo[face][visible[face]], axis=0) if visible[face].any() else np.full(3, 0.6)
    colors = head_albedo(model, skin)
    colors[visible] = photo[visible]
    return colors, visible


def bake_uv_texture(model, vertex_colors: np.ndarray, size: int = 512) -> np.ndarray:
    """Rasterise per-vertex colours (V, 3) into the UV atlas: (size, N_TILES * size, 3) float32."""
    uv_to_vertex = np.zeros(len(model.uv), np.int64)
    uv_to_vertex[model.tri_uv.reshape(-1)] = model.triangles.reshape(-1)
    pts = np.zeros((len(model.uv), 3), np.float64)
    pts[:, 0] = model.uv[:, 0] * size
    pts[:, 1] = (1.0 - model.uv[:, 1]) * size
    W = N_TILES * size
    ids = NumbaRasterizer().rasterize(pts, model.tri_uv, size, W)
    frags = fragments_from_ids(ids, pts, model.tri_uv)
    tex = frags.interpolate(vertex_colors[uv_to_vertex], model.tri_uv)
    # Pad a few texels around each chart so bilinear lookups at the seams do not bleed black.
    covered = frags.mask
    for _ in range(3):
        tex = np.where(covered[..., None], tex, _max3x3(tex))
        covered = _max3x3(covered)
    return tex


def _max3x3(a: np.ndarray) -> np.ndarray:
    """The maximum over each pixel's 3 x 3 neighbourhood within the image, of (H, W) or (H, W, C) ``a`` (each
    channel apart): scipy's ``grey_dilation(size=3)``, whose reflected border repeats the edge pixel, as two
    passes of shifted maxima (several times faster)."""
    rows = a.copy()
    np.maximum(rows[1:], a[:-1], out=rows[1:])
    np.maximum(rows[:-1], a[1:], out=rows[:-1])
    out = rows.copy()
    np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def atlas_uv(model) -> np.ndarray:
    """(T, 2) UVs in the baked atlas (u / N_TILES), for the OBJ ``vt`` lines."""
    uv = model.uv.copy()
    uv[:, 0] /= N_TILES
    return uv
