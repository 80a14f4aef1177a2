"""Fine geometric detail with ground truth: a random displacement map in the face's UV tile.

The morphable model holds smooth faces only. With ``datagen.detail`` on, each true face gets a displacement
map D (mm, along the surface normal, negative = a groove) in the UV layout of the face area (ICT's tile
u in [0, 1)), drawn from (seed, index) like everything else:

- forehead wrinkles: 2-5 horizontal grooves 10-35 mm above the brows, following the brow line;
- crow's feet: 3-5 grooves fanning out from each outer eye corner, 8-20 mm long;
- nasolabial folds: a curved groove from each nose wing to beside the mouth corner;
- pores: smoothed white noise of about 0.03 mm over the whole face.

Wrinkle depths are drawn in [depth_min_mm, depth_max_mm] (0.25-1 mm by default), groove profiles are
Gaussian with a standard deviation of 0.7-1.6 mm (wrinkles 2-4 mm wide). Distances are measured in the UV
plane scaled to millimetres by the model's median mm-per-UV ratio (UV is close to a frontal projection over
the face). The renderer displaces the surface per pixel (:meth:`render.renderer.FaceRenderer.render_face`
with ``displacement_uv``); the sample stores the detailed depth, the displacement image and the wrinkle
region mask, so detail has ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class DetailMap:
    """displacement: (S, S) float32 mm over the face UV tile (row 0 = v = 1); wrinkles: (S, S) bool, the
    texels within 2.5 standard deviations of a wrinkle's centre line."""

    displacement: np.ndarray
    wrinkles: np.ndarray


@lru_cache(maxsize=4)
def _layout(model) -> tuple[np.ndarray, float]:
    """(68, 2) UVs of the landmark vertices, and the median mm per UV unit over the face."""
    uvv = np.zeros((model.n_vertices, 2), np.float64)
    uvv[model.triangles.reshape(-1)] = model.uv[model.tri_uv.reshape(-1)]
    face_tris = np.all(np.isin(model.triangles, model.regions["face"]), axis=1)
    t, tu = model.triangles[face_tris], model.tri_uv[face_tris]
    e3 = np.linalg.norm(model.mean[t[:, 1]] - model.mean[t[:, 0]], axis=1)
    e2 = np.linalg.norm(model.uv[tu[:, 1]] - model.uv[tu[:, 0]], axis=1)
    ok = e2 > 1e-9
    return uvv[model.landmarks68], float(np.median(e3[ok] / e2[ok]))


def _polyline_distance(points: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Distance (N,) from points (N, 2) to a polyline (M, 2)."""
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(np.einsum("nmk,mk->nm", points[:, None] - a[None], ab) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(1)


def _bezier(p0, p1, p2, n=24) -> np.ndarray:
    s = np.linspace(0, 1, n)[:, None]
    return (1 - s) ** 2 * p0 + 2 * (1 - s) * s * p1 + s ** 2 * p2


def sample_detail(rng: np.random.Generator, model, size: int = 512, depth_min_mm: float = 0.25,
                  depth_max_mm: float = 1.0, pore_mm: float = 0.03) -> DetailMap:
    """Draw one face's detail map (see the module docstring)."""
    lm_uv, mm_per_uv = _layout(model)
    lm = lm_uv * mm_per_uv  # landmark positions in the UV plane, mm
    # texel centres in mm: column j at x = (j + 0.5) / S, row i at y = (S - i - 0.5) / S (row 0 at v = 1)
    texel = mm_per_uv / size

    grooves: list[tuple[np.ndarray, float, float]] = []  # (polyline mm, depth mm, sigma mm)

    def depth():
        return rng.uniform(depth_min_mm, depth_max_mm)

    brow = lm[17:27]
    for k in range(rng.integers(2, 6)):
        lift = rng.uniform(10, 35)
        line = brow[1:-1] + np.array([0.0, lift]) + rng.normal(0, 0.8, (8, 2))
        line = np.array([np.interp(np.linspace(0, 1, 24), np.linspace(0, 1, 8), line[:, d]) for d in (0, 1)]).T
        grooves.append((line, depth() * 0.8, rng.uniform(0.8, 1.6)))
    for corner, side in ((lm[36], -1.0), (lm[45], 1.0)):
        for angle in np.deg2rad(rng.uniform(-40, 40, rng.integers(3, 6))):
            length = rng.uniform(8, 20)
            start = corner + np.array([side * rng.uniform(3, 6), rng.normal(0, 1)])
            end = start + length * np.array([side * np.cos(angle), np.sin(angle)])
            grooves.append((np.stack([start, end]), depth() * 0.6, rng.uniform(0.7, 1.1)))
    for wing, mouth, side in ((lm[31], lm[48], -1.0), (lm[35], lm[54], 1.0)):
        p0 = wing + np.array([side * 4.0, 2.0])
        p2 = mouth + np.array([side * rng.uniform(4, 9), -rng.uniform(2, 10)])
        p1 = (p0 + p2) / 2 + np.array([side * rng.uniform(4, 10), 0.0])
        grooves.append((_bezier(p0, p1, p2), depth(), rng.uniform(1.0, 1.6)))

    disp = np.zeros((size, size), np.float64)
    wrinkles = np.zeros((size, size), bool)
    for line, d, sigma in grooves:
        lo, hi = line.min(0) - 4 * sigma, line.max(0) + 4 * sigma
        j0, j1 = max(int(lo[0] / texel), 0), min(int(hi[0] / texel) + 1, size)
        i0, i1 = max(size - int(hi[1] / texel) - 1, 0), min(size - int(lo[1] / texel), size)
        if j0 >= j1 or i0 >= i1:
            continue
        jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
        pts = np.stack([(jj + 0.5) * texel, (size - ii - 0.5) * texel], -1).reshape(-1, 2)
        dist = _polyline_distance(pts, line).reshape(ii.shape)
        disp[i0:i1, j0:j1] -= d * np.exp(-0.5 * (dist / sigma) ** 2)
        wrinkles[i0:i1, j0:j1] |= dist < 2.5 * sigma
    pores = gaussian_filter(rng.standard_normal((size, size)), 0.7)
    pores *= pore_mm / max(pores.std(), 1e-12)
    return DetailMap((disp + pores).astype(np.float32), wrinkles)
