"""Scan-to-mesh error in the style of the NoW benchmark (Sanyal et al. 2019, "Learning to Regress 3D Face
Shape and Expression from an Image without 3D Supervision").

For one reconstructed mesh and one scan with 68 landmarks each (Multi-PIE order):

1. the scan is cropped to its points within ``radius_mm`` (95 mm) of its nose tip (landmark 30);
2. the reconstruction is aligned to the scan by a similarity (rotation, translation, scale) fitted to
   corresponding landmarks, :data:`ALIGN_LANDMARKS` (nose, eyes and outer lips: the points the scan and the
   model place alike; the jaw line and the brows are drawn differently by annotators and models);
3. ICP refines that similarity: each (subsampled, seeded) cropped scan point is paired with its closest
   point on the reconstructed surface, and a similarity is fitted to the pairs, repeatedly;
4. the error is the distance from every cropped scan point to the closest point of the aligned
   reconstructed surface (exact point-to-triangle), in the scan's units (mm).

Frames: the scan's frame is the reference; the reconstruction may be in any frame and scale (the metric is
invariant to a similarity transform of it). The similarity maps reconstruction points to the scan:
``x_scan = s R x_rec + t``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

#: Landmarks of the initial alignment (Multi-PIE): nose 27-35, eyes 36-47, outer lip contour 48-59.
ALIGN_LANDMARKS = np.arange(27, 60)
#: The nose tip (Multi-PIE landmark 30), centre of the scan crop.
NOSE_TIP = 30


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation`` (points as rows: ``scale * x @ rotation.T + translation``).

    scale: dimensionless; rotation: (3, 3) proper rotation; translation: (3,) in the target's units.
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) -> (N, 3)."""
        return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

    def inverse_apply(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) target points -> (N, 3) source points."""
        return (np.asarray(points, np.float64) - self.translation) @ self.rotation / self.scale

    def then(self, outer: "Similarity") -> "Similarity":
        """The similarity ``outer(self(x))``."""
        return Similarity(outer.scale * self.scale, outer.rotation @ self.rotation,
                          outer.scale * outer.rotation @ self.translation + outer.translation)


def fit_similarity(src: np.ndarray, dst: np.ndarray, scale: bool = True) -> Similarity:
    """Least-squares similarity (Umeyama 1991) with ``dst ~ s R src + t``; ``scale=False`` fixes s = 1.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 and not all on a line.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"fit_similarity needs two (N >= 3, 3) arrays of the same shape; got {src.shape} "
                         f"and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    d = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        d[2] = -1.0
    R = U @ np.diag(d) @ Vt
    var = (a ** 2).sum() / len(src)
    s = float((S * d).sum() / var) if scale and var > 0 else 1.0
    return Similarity(s, R, mu_d - s * R @ mu_s)


class MeshDistance:
    """Exact closest points on a fixed triangle mesh.

    Candidate triangles come from a KD-tree of the triangle centroids: for a point p, no triangle whose
    centroid c has ``|p - c| - r_max >= d`` can be nearer than ``d`` (``r_max``: the largest distance of a
    triangle's vertex from its centroid). The k nearest centroids are tried first; points whose bound
    does not exclude the rest are completed with every centroid within ``d + r_max``. Triangles with an edge
    longer than twice the median are first split at their edges' midpoints (the same surface), which keeps
    ``r_max``, and so that completion, small. Point-to-triangle distances are
    :func:`trimesh.triangles.closest_point`'s.

    Args:
        verts: (V, 3) vertices; triangles: (F, 3) vertex indices (only those triangles count).
        k: centroids tried first per point.
    """

    def __init__(self, verts: np.ndarray, triangles: np.ndarray, k: int = 8):
        from trimesh.remesh import subdivide_to_size

        verts = np.asarray(verts, np.float64)
        triangles = np.asarray(triangles, np.int64)
        if verts.ndim != 2 or verts.shape[1] != 3 or triangles.ndim != 2 or triangles.shape[1] != 3:
            raise ValueError(f"MeshDistance needs verts (V, 3) and triangles (F, 3); got {verts.shape} and "
                             f"{triangles.shape}")
        if len(triangles) == 0:
            raise ValueError("MeshDistance needs at least one triangle")
        edges = np.linalg.norm(verts[triangles] - verts[np.roll(triangles, 1, 1)], axis=-1)
        if edges.max() > 2 * np.median(edges):
            verts, triangles = subdivide_to_size(verts, triangles, 2 * np.median(edges), max_iter=20)
        self.corners = verts[triangles]  # (F, 3, 3)
        self.centroids = self.corners.mean(1)
        self.radius = np.linalg.norm(self.corners - self.centroids[:, None], axis=-1).max(1)  # (F,)
        self.r_max = float(self.radius.max())
        self.tree = cKDTree(self.centroids)
        self.k = min(k, len(triangles))

    def _exact(self, points: np.ndarray, tri: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from trimesh.triangles import closest_point

        q = closest_point(self.corners[tri], points)
        return np.linalg.norm(q - points, axis=-1), q

    def query(self, points: np.ndarray, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) points -> distances (N,) and closest surface points (N, 3), in the mesh's units.

        ``exact=False`` stops after the k nearest centroids' triangles (exact for points near the surface,
        an upper bound elsewhere; enough for ICP's pairs).
        """
        p = np.asarray(points, np.float64).reshape(-1, 3)
        dc, idx = self.tree.query(p, self.k)
        dc, idx = dc.reshape(len(p), -1), idx.reshape(len(p), -1)
        d, q = self._exact(np.repeat(p, self.k, 0), idx.reshape(-1))
        d, q = d.reshape(len(p), self.k), q.reshape(len(p), self.k, 3)
        j = d.argmin(1)
        best, closest = d[np.arange(len(p)), j], q[np.arange(len(p)), j]
        open_ = np.nonzero(dc[:, -1] - self.r_max < best)[0] if exact and self.k < len(self.corners) else []
        if len(open_):
            lists = self.tree.query_ball_point(p[open_], best[open_] + self.r_max)
            owner = np.repeat(np.arange(len(open_)), [len(c) for c in lists])
            tri = np.concatenate(lists).astype(np.int64)
            po = p[open_][owner]
            near = np.linalg.norm(po - self.centroids[tri], axis=-1) - self.radius[tri] < best[open_][owner]
            owner, tri, po = owner[near], tri[near], po[near]
            counts = np.bincount(owner, minlength=len(open_))
            dd, qq = self._exact(po, tri)
            order = np.lexsort((dd, owner))  # per point, nearest first
            has = counts > 0  # always, up to rounding: the best triangle's centroid lies within best + r_max
            first = order[(np.cumsum(counts) - counts)[has]]
            better = dd[first] < best[open_[has]]
            rows = open_[has][better]
            best[rows], closest[rows] = dd[first][better], qq[first][better]
        return best, closest


def summary(distances: np.ndarray) -> dict:
    """``{"median_mm", "mean_mm", "std_mm"}`` of (N,) distances (None each when N = 0)."""
    d = np.asarray(distances, np.float64)
    if d.size == 0:
        return {"median_mm": None, "mean_mm": None, "std_mm": None}
    return {"median_mm": float(np.median(d)), "mean_mm": float(d.mean()), "std_mm": float(d.std())}


@dataclass(frozen=True)
class ScanScore:
    """The result of :func:`scan_to_mesh`.

    distances: (N,) mm, one per cropped scan point (the order of ``crop``'s True entries);
    crop: (P,) bool over the scan points given; transform: reconstruction -> scan similarity after ICP.
    """

    distances: np.ndarray
    crop: np.ndarray
    transform: Similarity

    def summary(self) -> dict:
        return summary(self.distances)


def crop_scan(points: np.ndarray, landmarks: np.ndarray, radius_mm: float = 95.0) -> np.ndarray:
    """(P,) bool: scan points (P, 3) within ``radius_mm`` of the nose tip, ``landmarks[NOSE_TIP]`` (68, 3)."""
    return np.linalg.norm(np.asarray(points) - np.asarray(landmarks)[NOSE_TIP], axis=-1) <= radius_mm


def scan_to_mesh(scan_points: np.ndarray, scan_landmarks: np.ndarray, verts: np.ndarray, triangles: np.ndarray,
                 mesh_landmarks: np.ndarray, radius_mm: float = 95.0, icp_iterations: int = 30,
                 icp_points: int = 2000, seed: int = 0) -> ScanScore:
    """NoW-style error of a reconstructed mesh against a scan (see the module docstring).

    Args:
        scan_points: (P, 3) scan vertices, mm; scan_landmarks: (68, 3) in the same frame.
        verts: (V, 3) reconstructed vertices (any frame and scale); triangles: (F, 3) the surface scored.
        mesh_landmarks: (68, 3) the reconstruction's landmarks in the frame of ``verts``.
        radius_mm: crop radius around the scan's nose tip.
        icp_iterations: ICP rounds (stops early once a round changes the fit by < 1e-6).
        icp_points: cropped scan points used by ICP (a seeded subsample when there are more).
        seed: the subsample's seed.
    """
    scan_points = np.asarray(scan_points, np.float64)
    scan_landmarks = np.asarray(scan_landmarks, np.float64)
    mesh_landmarks = np.asarray(mesh_landmarks, np.float64)
    if scan_landmarks.shape != (68, 3) or mesh_landmarks.shape != (68, 3):
        raise ValueError(f"scan_to_mesh needs (68, 3) landmarks; got {scan_landmarks.shape} and "
                         f"{mesh_landmarks.shape}")
    crop = crop_scan(scan_points, scan_landmarks, radius_mm)
    target = scan_points[crop]
    if len(target) < 3:
        raise ValueError(f"only {len(target)} scan points lie within {radius_mm} mm of the nose tip")
    T = fit_similarity(mesh_landmarks[ALIGN_LANDMARKS], scan_landmarks[ALIGN_LANDMARKS])
    mesh = MeshDistance(verts, triangles)
    rng = np.random.default_rng(seed)
    sub = target if len(target) <= icp_points else target[rng.choice(len(target), icp_points, replace=False)]
    for _ in range(icp_iterations):
        _, q = mesh.query(T.inverse_apply(sub), exact=False)
        step = fit_similarity(T.apply(q), sub)
        T = T.then(step)
        change = abs(step.scale - 1) + np.abs(step.rotation - np.eye(3)).max() + np.abs(step.translation).max() / 100
        if change < 1e-6:
            break
    d, _ = mesh.query(T.inverse_apply(target))
    return ScanScore(d * T.scale, crop, T)
