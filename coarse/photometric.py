"""Photometric refinement of the coarse face: analysis by synthesis of the photo's shading.

The landmark fit reads shape from 68 points; the photo's shading over the whole face (cheeks, nose, brow, the
outline against the background) says more. This stage starts from the landmark fit (coefficients and pose) and
minimises, over identity, expression and pose::

    E = sum_k w_k || (x_k - proj_k(a)) / s ||^2                    the landmark fit's term (coarse.fit.fit_map)
      + ||W (a - a_mean)||^2          its prior (coarse.fit.CoefficientPrior: the fit section's, or one given)
      + weight * mean_{v in S} psi(I(p_v) - albedo_v Y(n_v) . sh)                       shading
      + BOX_WEIGHT * ||a_exp - clip(a_exp, 0, 1)||^2                                    expression in [0, 1]

- ``S``: ``samples`` of the face vertices the camera sees (in the photo, facing it, not occluded), drawn afresh
  each round from one seeded order of the face's vertices (so the same photo gives the same answer); the rounds
  before the last take ``early_samples`` (they bring the shape near; the last round's sample sets the answer);
- ``I`` is the photo's luma, blurred by ``blur_mm`` (mm on the face at the pose's scale), sampled bilinearly at
  each vertex's projection ``p_v`` (the term moves vertices across image edges, e.g. the cheek's outline);
- ``albedo_v`` is the vertex's gray albedo from the face model's albedo model, ``Y(n_v) . sh`` second-order SH
  shading of its camera-frame normal (:mod:`render.shading`; the area-weighted normal of its face triangles);
- ``psi(r) = r^2 / (r^2 + robust^2)`` (Geman-McClure): hair, stubble, glasses and background behind a wrong
  outline count as one outlier each, not as a large square (a loose ``robust`` lets the geometry bend to
  explain texture the albedo model lacks: ``docs/tuning.md``);
- albedo coefficients and light are re-fitted in closed form (iteratively reweighted least squares) at the start
  of each of ``rounds`` rounds, with the visibility of the current shape; within a round they, the visibility,
  the sample and the landmarks' contour vertices stay fixed and a Levenberg-Marquardt solver moves shape and
  pose: Gauss-Newton steps with the robust term's IRLS weights (exact gradient, a Gauss-Newton Hessian) from
  analytic Jacobians, at most ``iterations`` per round, until a step lowers the energy by less than
  ``tolerance`` of it. Expression weights are clipped to [0, 1] at the end.

Why hand-written: the energy samples the photo at the model's vertices, so it needs no differentiable
rasteriser, and its Jacobian is a sparse map of the face model's basis (each sample's row touches its vertex
and the vertex's one-ring through the normal); built directly it makes one Gauss-Newton step cost a few
milliseconds, where autograd over the whole mesh cost ~20 ms per evaluation (``benchmarks/coarse.py``).

Frames: the photo frame (pixels, x right, y down) for the photo, the landmarks and the pose
(:mod:`render.camera`); the camera frame (x right, y up, z towards the camera) for normals; coefficients
``alpha`` (K,) identity first.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from render.camera import Pose, image_xy, project
from render.shading import LUMA, sh_basis, sh_gradient, sh_least_squares
from render.visibility import visible_vertices

from .fit import CoefficientPrior, map_landmark_weights, one_blas_thread

#: Weight of the penalty that keeps expression weights in [0, 1] during the steps (clipped after).
BOX_WEIGHT = 1e3
#: Fewer visible face vertices than this: the photo says too little (e.g. a face of a few pixels), the start stays.
MIN_VISIBLE = 50
#: Parameters after the free coefficients: rotation vector (3, left-multiplied), log scale, translation (2).
N_POSE = 6


def _robust_weights(r: np.ndarray, c: float) -> np.ndarray:
    """IRLS weights of the Geman-McClure loss psi(r) = r^2 / (r^2 + c^2), scaled to 1 at r = 0: c^2 psi'(r) / (2 r)."""
    return (c * c / (r * r + c * c)) ** 2


def _albedo_light(mean: np.ndarray, basis: np.ndarray, normals: np.ndarray, intensity: np.ndarray, robust: float,
                  albedo_reg: float, iterations: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Gray albedo (N,) and SH light (9,) of N visible face vertices, by alternating robust least squares.

    mean: (N,), basis: (N, Ka): the albedo model in luma at those vertices; normals: (N, 3) camera-frame unit
    normals; intensity: (N,) their luma in the blurred photo.
    """
    Y = sh_basis(normals)
    w = np.ones(len(intensity))
    albedo = mean
    sh = sh_least_squares(normals, intensity, albedo, w, ridge=1e-3)
    for _ in range(iterations):
        s = Y @ sh
        A = basis * s[:, None]
        beta = np.linalg.solve((A * w[:, None]).T @ A + albedo_reg * np.eye(A.shape[1]),
                               A.T @ (w * (intensity - mean * s)))
        albedo = mean + basis @ beta
        sh = sh_least_squares(normals, intensity, albedo, w, ridge=1e-3)
        w = _robust_weights(intensity - albedo * (Y @ sh), robust)
    return albedo, sh


# ---------------------------------------------------------------------------------------------- the photo
@dataclass(frozen=True)
class BlurredPhoto:
    """The photo's blurred luma over a window about the face: ``image`` (h, w) float32 whose pixel (0, 0) is the
    photo's pixel ``origin`` (x, y); sampled with photo-frame points."""

    image: np.ndarray
    origin: np.ndarray

    @staticmethod
    def of(photo: np.ndarray, sigma_px: float, points: np.ndarray) -> "BlurredPhoto":
        """Luma of ``photo`` ((H, W, 3) or (H, W), float in [0, 1] or uint8) blurred by ``sigma_px``, over the box
        of ``points`` (N, 2) photo-frame pixels widened by half its size and 4 sigma (the fit moves the face a
        little; the blur of a window is the blur of the photo there)."""
        H, W = photo.shape[:2]
        lo, hi = points.min(0), points.max(0)
        pad = 0.5 * (hi - lo).max() + 4 * sigma_px + 2
        x0, y0 = (max(0, int(np.floor(v - pad))) for v in lo)
        x1, y1 = min(W, int(np.ceil(hi[0] + pad))), min(H, int(np.ceil(hi[1] + pad)))
        if x1 - x0 < 2 or y1 - y0 < 2:
            x0, y0, x1, y1 = 0, 0, W, H
        window = np.asarray(photo[y0:y1, x0:x1], np.float32)
        if photo.dtype == np.uint8:
            window /= 255.0
        gray = window @ LUMA if window.ndim == 3 else window
        return BlurredPhoto(gaussian_filter(gray, sigma_px), np.array([x0, y0], np.float64))

    def sample(self, xy: np.ndarray, gradient: bool = False):
        """Bilinear samples (N,) at photo-frame points ``xy`` (N, 2) (pixel centres at +0.5; outside the window
        the border value, as ``grid_sample``'s border padding), and with ``gradient`` their (N, 2) derivative
        in x, y (of the bilinear interpolant; 0 along an axis clamped at the border)."""
        img = self.image
        h, w = img.shape
        u = xy - self.origin - 0.5
        x = np.clip(u[:, 0], 0.0, w - 1.0)
        y = np.clip(u[:, 1], 0.0, h - 1.0)
        x0 = np.minimum(np.floor(x).astype(np.intp), w - 2)
        y0 = np.minimum(np.floor(y).astype(np.intp), h - 2)
        fx, fy = x - x0, y - y0
        i00, i01 = img[y0, x0], img[y0, x0 + 1]
        i10, i11 = img[y0 + 1, x0], img[y0 + 1, x0 + 1]
        top, bottom = i00 + fx * (i01 - i00), i10 + fx * (i11 - i10)
        value = (top + fy * (bottom - top)).astype(np.float64)
        if not gradient:
            return value
        gx = ((1 - fy) * (i01 - i00) + fy * (i11 - i10)) * ((u[:, 0] > 0) & (u[:, 0] < w - 1))
        gy = (bottom - top) * ((u[:, 1] > 0) & (u[:, 1] < h - 1))
        return value, np.stack([gx, gy], 1).astype(np.float64)


# ---------------------------------------------------------------------------------------------- one round
_KERNELS: dict = {}


def _kernels() -> dict:
    """numba kernels, compiled on first use (and cached on disk)."""
    if _KERNELS:
        return _KERNELS
    import numba

    @numba.njit(cache=True, nogil=True)
    def area_normals(ring, tri, inc_i, inc_t, out):
        # out[i] = sum over sample vertex i's triangles t of (v1 - v0) x (v2 - v0): the unnormalised normal
        out[:] = 0.0
        for k in range(len(inc_i)):
            t = inc_t[k]
            a, b, c = ring[tri[t, 0]], ring[tri[t, 1]], ring[tri[t, 2]]
            e1x, e1y, e1z = b[0] - a[0], b[1] - a[1], b[2] - a[2]
            e2x, e2y, e2z = c[0] - a[0], c[1] - a[1], c[2] - a[2]
            i = inc_i[k]
            out[i, 0] += e1y * e2z - e1z * e2y
            out[i, 1] += e1z * e2x - e1x * e2z
            out[i, 2] += e1x * e2y - e1y * e2x

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def jacobian_rows(ring, tri, rows_t, rows_c, pair_of, pair_i, pair_w, indptr, self_pair, qvec, albedo, position,
                      basis, out):
        # d r_i / d a for every sample vertex i (module docstring of PhotometricRound.derivatives):
        # G[p] = sum over the triangles t holding both i and w of the edge opposite w in t; the pair's 3-vector
        # h[p] = -albedo_i (G[p] x qvec_i), plus the position part on w = i; then out[i] = sum_p h[p] . basis[w]
        n_pairs = len(pair_i)
        G = np.zeros((n_pairs, 3))
        for k in range(len(rows_t)):
            t, c = rows_t[k], rows_c[k]
            u, v = ring[tri[t, (c + 1) % 3]], ring[tri[t, (c + 2) % 3]]
            p = pair_of[k]
            G[p, 0] += u[0] - v[0]
            G[p, 1] += u[1] - v[1]
            G[p, 2] += u[2] - v[2]
        h = np.empty((n_pairs, 3), np.float32)
        for p in range(n_pairs):
            i = pair_i[p]
            q0, q1, q2 = qvec[i, 0], qvec[i, 1], qvec[i, 2]
            rho = albedo[i]
            h[p, 0] = -rho * (G[p, 1] * q2 - G[p, 2] * q1)
            h[p, 1] = -rho * (G[p, 2] * q0 - G[p, 0] * q2)
            h[p, 2] = -rho * (G[p, 0] * q1 - G[p, 1] * q0)
        for i in range(len(self_pair)):
            p = self_pair[i]
            h[p, 0] += position[i, 0]
            h[p, 1] += position[i, 1]
            h[p, 2] += position[i, 2]
        n, k = out.shape
        for i in range(n):
            acc = out[i]
            for m in range(k):
                acc[m] = 0.0
            for p in range(indptr[i], indptr[i + 1]):
                r = 3 * pair_w[p]
                c0, c1, c2 = h[p, 0], h[p, 1], h[p, 2]
                b0, b1, b2 = basis[r], basis[r + 1], basis[r + 2]
                for m in range(k):
                    acc[m] += c0 * b0[m] + c1 * b1[m] + c2 * b2[m]

    _KERNELS["area_normals"] = area_normals
    _KERNELS["jacobian_rows"] = jacobian_rows
    return _KERNELS


def _skew_rows(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d(omega x q)_x / d omega and d(omega x q)_y / d omega, each (N, 3), for points q (N, 3)."""
    zero = np.zeros(len(q))
    return np.stack([zero, q[:, 2], -q[:, 1]], 1), np.stack([-q[:, 2], zero, q[:, 0]], 1)


class PhotometricRound:
    """The energy of one round (module docstring) with albedo, light, visibility, the vertex sample and the
    landmarks' rows fixed, as a function of the free coefficients and the pose; its value, gradient and
    Gauss-Newton Hessian from analytic Jacobians.

    Args:
        model: the face model; face: (Vf,) the face region's vertex ids; tris: (F, 3) its triangles, local ids.
        photo: :class:`BlurredPhoto`.
        sample: (N,) face-local ids of the sampled visible vertices (each a corner of a face triangle).
        alpha: (K,) the round's start (frozen coefficients keep its values); free: (Kf,) ids of the moving ones.
        lm_mean: (68, 3), lm_basis: (68, 3, K): the landmarks as ``mean + basis @ a`` (the contour's choice).
        lm_target: (68, 2) the detector's points minus nothing (the offset is applied with the scale);
        lm_offset: (68, 2) mm; lm_weights: (68,) 1/mm^2; coefficients: the prior
        (:class:`coarse.fit.CoefficientPrior`); n_identity: modes of identity (expression follows); weight,
        robust: the shading term's.
    """

    def __init__(self, model, face, tris, photo: BlurredPhoto, sample, alpha, free, lm_mean, lm_basis,
                 lm_target, lm_offset, lm_weights, coefficients: CoefficientPrior, n_identity, weight, robust):
        self.photo, self.sample = photo, np.sort(sample)  # in mesh order: neighbours share cache lines
        self.albedo, self.sh = np.ones(len(sample)), np.zeros(9)  # set by fit_albedo_light
        self.alpha0, self.free = np.asarray(alpha, np.float64), np.asarray(free)
        self.weight, self.robust, self.n_id = float(weight), float(robust), int(n_identity)
        self.lm = (lm_mean, lm_basis, np.asarray(lm_target, np.float64), np.asarray(lm_offset, np.float64),
                   np.asarray(lm_weights, np.float64))
        self.coefficients = coefficients
        self.prior_A, self.prior_c = coefficients.rows(self.free, self.alpha0)  # z = A a_free + c ~ N(0, I)
        n = len(sample)
        # the sample's triangles and their vertices (the sample's one-ring): all the geometry a step needs
        touch = np.zeros(len(face), bool)
        touch[self.sample] = True
        adj = tris[touch[tris].any(1)]
        ring, local = np.unique(np.r_[self.sample, adj.ravel()], return_inverse=True)
        self.tri = local[n:].reshape(-1, 3)  # (T, 3) ids into ring
        self.in_ring = local[:n]  # (N,) the sample's ids into ring
        gid = face[ring]
        frozen = np.setdiff1d(np.arange(model.n_coeffs), self.free)
        basis = model.basis[gid]  # (R, 3, K) float32
        self.base = model.mean[gid].astype(np.float64)  # (R, 3) and the frozen coefficients' part
        if len(frozen):
            self.base += basis[:, :, frozen].astype(np.float64) @ self.alpha0[frozen]
            basis = np.ascontiguousarray(basis[:, :, self.free])
        self.basis = basis.reshape(-1, len(self.free))  # (3R, Kf)
        # incidences: sample vertex i is corner c of triangle t; every corner c' of t is a pair (i, tri[t, c'])
        which = np.full(len(ring), -1)
        which[self.in_ring] = np.arange(n)
        inc_t, inc_c = np.nonzero(which[self.tri] >= 0)
        self.inc_i, self.inc_t = which[self.tri[inc_t, inc_c]], inc_t  # the sample vertex, its triangle
        rows_i = np.repeat(self.inc_i, 3)
        rows_t, rows_c = np.repeat(inc_t, 3), np.tile(np.arange(3), len(inc_t))
        pairs, self.pair_of = np.unique(rows_i * len(ring) + self.tri[rows_t, rows_c], return_inverse=True)
        self.rows_t, self.rows_c = rows_t, rows_c
        self.pair_i, self.pair_w = pairs // len(ring), pairs % len(ring)  # sorted by sample vertex
        self.indptr = np.searchsorted(self.pair_i, np.arange(n + 1))
        self.self_pair = np.searchsorted(pairs, np.arange(n) * len(ring) + self.in_ring)
        self.n = n

    # ------------------------------------------------------------------ pieces
    def _ring(self, a_free: np.ndarray) -> np.ndarray:
        """(R, 3) float64 ring vertices, mm, model frame."""
        return self.base + (self.basis @ a_free.astype(np.float32)).reshape(-1, 3)

    def _unnormalised_normals(self, ring: np.ndarray) -> np.ndarray:
        """(N, 3) the sample's area-weighted normals (sum over its triangles of twice the area vector)."""
        out = np.empty((self.n, 3))
        _kernels()["area_normals"](ring, self.tri, self.inc_i, self.inc_t, out)
        return out

    def camera_normals(self, a_free: np.ndarray, R: np.ndarray) -> np.ndarray:
        """(N, 3) the sample's unit normals in the camera frame."""
        u = self._unnormalised_normals(self._ring(a_free))
        return (u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)) @ R.T

    def fit_albedo_light(self, albedo_mean, albedo_basis, albedo_reg: float, R, s, t) -> None:
        """Set the sample's gray albedo and the SH light by robust least squares (:func:`_albedo_light`) at the
        round's start (pose R, s, t); albedo_mean (Vf,), albedo_basis (Vf, Ka): the albedo model in luma."""
        a_free = self.alpha0[self.free]
        q = self._ring(a_free)[self.in_ring] @ R.T
        seen = self.photo.sample(np.stack(image_xy(q, s, t), 1))
        self.albedo, self.sh = _albedo_light(albedo_mean[self.sample], albedo_basis[self.sample],
                                             self.camera_normals(a_free, R), seen, self.robust, albedo_reg)

    def full_alpha(self, a_free: np.ndarray) -> np.ndarray:
        alpha = self.alpha0.copy()
        alpha[self.free] = a_free
        return alpha

    def evaluate(self, a_free: np.ndarray, R: np.ndarray, s: float, t: np.ndarray) -> "RoundPoint":
        """The round's energy at free coefficients ``a_free`` (Kf,) and pose (R (3, 3), s px/mm, t (2,) px), with
        what :meth:`derivatives` needs there."""
        ring = self._ring(a_free)
        u = self._unnormalised_normals(ring)
        norm = np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
        n_model = u / norm
        n_cam = n_model @ R.T
        q = ring[self.in_ring] @ R.T  # (N, 3) camera frame, mm
        seen, grad_img = self.photo.sample(np.stack(image_xy(q, s, t), 1), gradient=True)
        r = seen - self.albedo * (sh_basis(n_cam) @ self.sh)
        e_photo = self.weight / self.n * float((r * r / (r * r + self.robust ** 2)).sum())

        alpha = self.full_alpha(a_free)
        lm_mean, lm_basis, target, offset, w_lm = self.lm
        lq = (lm_mean + lm_basis @ alpha) @ R.T  # (68, 3)
        res = (target - s * offset - np.stack(image_xy(lq, s, t), 1)) / s
        z = self.prior_A @ a_free + self.prior_c
        ex = alpha[self.n_id:]
        out = ex - np.clip(ex, 0.0, 1.0)
        energy = (e_photo + float((w_lm[:, None] * res * res).sum()) + float(z @ z)
                  + BOX_WEIGHT * float(out @ out))
        return RoundPoint(energy, a_free, R, s, t, ring, norm, n_model, n_cam, q, grad_img, r, alpha, lq, res, z,
                          out)

    def derivatives(self, p: "RoundPoint") -> tuple[np.ndarray, np.ndarray]:
        """Gradient g (Kf + 6,) and Gauss-Newton Hessian (Kf + 6, Kf + 6) of the energy at ``p`` in the step
        (d a_free, rotation vector (left-multiplied), d log s, d t)."""
        R, s, t = p.R, p.s, p.t
        kf = len(self.free)
        P = kf + N_POSE
        # shading residual rows: d r / d (a_free, omega, log s, t)
        gx, gy = p.grad_img[:, 0], p.grad_img[:, 1]
        dS_dm = sh_gradient(p.n_cam, self.sh)  # (N, 3)
        dS_dn = dS_dm @ R
        qvec = (dS_dn - p.n_model * (dS_dn * p.n_model).sum(1, keepdims=True)) / p.norm  # (N, 3)
        J = np.empty((self.n, P), np.float32)
        rows = np.empty((self.n, kf), np.float32)
        position = s * (gx[:, None] * R[0] - gy[:, None] * R[1])  # d r / d (the vertex's own position)
        _kernels()["jacobian_rows"](p.ring, self.tri, self.rows_t, self.rows_c, self.pair_of, self.pair_i, self.pair_w,
                                    self.indptr, self.self_pair, qvec, self.albedo, position, self.basis, rows)
        J[:, :kf] = rows
        dqx, dqy = _skew_rows(p.q)
        J[:, kf:kf + 3] = s * (gx[:, None] * dqx - gy[:, None] * dqy) - self.albedo[:, None] * np.cross(p.n_cam, dS_dm)
        J[:, kf + 3] = s * (gx * p.q[:, 0] - gy * p.q[:, 1])
        J[:, kf + 4], J[:, kf + 5] = gx, gy
        wr = 2 * self.weight / self.n * _robust_weights(p.r, self.robust) / self.robust ** 2  # de = sum wr r dr
        grad = ((wr * p.r).astype(np.float32) @ J).astype(np.float64)
        Jw = J * np.sqrt(wr).astype(np.float32)[:, None]
        hess = (Jw.T @ Jw).astype(np.float64)

        # landmark rows: res_x = (X - s ox - t_x) / s - q_x, res_y = (Y - s oy - t_y) / s + q_y
        lm_mean, lm_basis, target, offset, w_lm = self.lm
        A = np.einsum("ij,ljk->lik", R, lm_basis[:, :, self.free])  # (68, 3, Kf)
        Jl = np.zeros((68, 2, P))
        Jl[:, 0, :kf], Jl[:, 1, :kf] = -A[:, 0], A[:, 1]
        lqx, lqy = _skew_rows(p.lq)
        Jl[:, 0, kf:kf + 3], Jl[:, 1, kf:kf + 3] = -lqx, lqy
        Jl[:, 0, kf + 3] = -(target[:, 0] - t[0]) / s
        Jl[:, 1, kf + 3] = -(target[:, 1] - t[1]) / s
        Jl[:, 0, kf + 4] = Jl[:, 1, kf + 5] = -1.0 / s
        Jl = Jl.reshape(-1, P)
        wl = 2 * np.repeat(w_lm, 2)
        grad += Jl.T @ (wl * p.res.reshape(-1))
        hess += (Jl * wl[:, None]).T @ Jl
        # prior (linear rows) and box (diagonal)
        grad[:kf] += 2 * self.prior_A.T @ p.z
        hess[:kf, :kf] += 2 * self.prior_A.T @ self.prior_A
        box = np.zeros(len(p.alpha))
        box[self.n_id:] = p.out
        grad[:kf] += 2 * BOX_WEIGHT * box[self.free]
        hess[np.arange(kf), np.arange(kf)] += 2 * BOX_WEIGHT * (box[self.free] != 0)
        return grad, hess


@dataclass(frozen=True)
class RoundPoint:
    """A point of a :class:`PhotometricRound` (free coefficients and pose), its energy, and the pieces of the
    energy its derivatives reuse: the ring's vertices (R, 3), the sample's normals (model and camera frame) and
    their unnormalised length, camera-frame positions q (N, 3), the photo's gradient (N, 2) and the shading
    residuals (N,); the full coefficients (K,), the landmarks' camera-frame points (68, 3) and residuals
    (68, 2), the prior's whitened residuals z, and the expression weights' excess over [0, 1] (Ke,)."""

    energy: float
    a_free: np.ndarray
    R: np.ndarray
    s: float
    t: np.ndarray
    ring: np.ndarray
    norm: np.ndarray
    n_model: np.ndarray
    n_cam: np.ndarray
    q: np.ndarray
    grad_img: np.ndarray
    r: np.ndarray
    alpha: np.ndarray
    lq: np.ndarray
    res: np.ndarray
    z: np.ndarray
    out: np.ndarray


def _step(R: np.ndarray, s: float, t: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """The pose moved by the last six step entries (rotation vector, d log s, d t)."""
    return Rotation.from_rotvec(d[:3]).as_matrix() @ R, s * float(np.exp(d[3])), t + d[4:6]


#: Levenberg-Marquardt's damping at the start of a round, relative to the Hessian's diagonal: a round starts with
#: a new light and sample, where a full Gauss-Newton step overshoots (the photo is far from linear over a pixel).
START_DAMPING = 1.0


def _solve_round(rd: PhotometricRound, a_free, R, s, t, iterations: int, tolerance: float,
                 lam: float = START_DAMPING):
    """Levenberg-Marquardt on one round's energy from (a_free, R, s, t): at most ``iterations`` accepted steps,
    until one lowers the energy by less than ``tolerance`` of it; Marquardt's diagonal scaling, the damping
    ``lam`` updated by the ratio of the actual to the predicted decrease (Nielsen 1999). Returns the best point
    found."""
    point = rd.evaluate(a_free, R, s, t)
    nu = 2.0
    for _ in range(iterations):
        grad, hess = rd.derivatives(point)
        scale = np.diag(hess) + 1e-9
        drop = None
        while lam < 1e8:
            d = np.linalg.solve(hess + lam * np.diag(scale), -grad)
            new_pose = _step(point.R, point.s, point.t, d[-N_POSE:])
            cand = rd.evaluate(point.a_free + d[:-N_POSE], *new_pose) if np.isfinite(d).all() and new_pose[1] > 0 \
                else None
            predicted = 0.5 * float(d @ (lam * scale * d - grad))
            if cand is not None and cand.energy < point.energy and predicted > 0:
                rho = (point.energy - cand.energy) / predicted
                drop = (point.energy - cand.energy) / max(abs(point.energy), 1e-12)
                point = cand
                lam, nu = lam * max(1 / 3, 1 - (2 * rho - 1) ** 3), 2.0
                break
            lam, nu = lam * nu, nu * 2
        if drop is None or drop < tolerance:
            break
    return point.a_free, point.R, point.s, point.t


def face_sample_order(n_face: int) -> np.ndarray:
    """(n_face,) a fixed pseudo-random order of the face's vertices: each round samples the first visible ones."""
    return np.random.default_rng(20261206).permutation(n_face)


def photometric_fit(photo: np.ndarray, alpha0: np.ndarray, pose0: Pose, points2d: np.ndarray, model, landmarks,
                    prior, params, detector: str | None = None,
                    n_identity: int | None = None, free: str = "all",
                    coefficients: CoefficientPrior | None = None) -> tuple[np.ndarray, Pose]:
    """Refine a coarse face by its shading in the photo (module docstring).

    Args:
        photo: (H, W, 3) or (H, W), float in [0, 1] or uint8.
        alpha0: (K,) the start, identity first (the landmark fit); pose0: its pose in the photo frame.
        points2d: (68, 2) the detector's landmarks, photo pixels.
        model: the face model (with its albedo model); landmarks: the detector's
            :class:`coarse.landmarks.LandmarkModel`; prior: the ``fit`` config section (landmark term and prior,
            as :func:`coarse.fit.fit_map`);
            params: the ``refine.photometric`` section (:class:`facesynth.config.PhotometricConfig`);
            detector: which detector found the face.
        n_identity: refine only the first ``n_identity`` identity modes (the others keep the start's values, as
            :func:`coarse.fit.fit_map`'s ``n_identity`` leaves them at 0); default all.
        free: ``all`` (identity, expression and pose move) or ``expression`` (the identity stays the start's).
        coefficients: the prior on the coefficients (:class:`coarse.fit.CoefficientPrior`; default ``prior``'s).
    Returns:
        (alpha (K,) float32, its pose in the photo frame). With fewer than :data:`MIN_VISIBLE` visible face
        vertices, or when a round's answer is not finite, the last good round's answer (at first the start).
    """
    if model.albedo_model is None:
        raise ValueError("the photometric fit needs the face model's albedo model")
    if free not in ("all", "expression"):
        raise ValueError(f"free must be 'all' or 'expression'; got {free!r}")
    n_id, K = model.n_identity, model.n_coeffs
    n_fit = 0 if free == "expression" else (n_id if n_identity is None else int(n_identity))
    with one_blas_thread():  # small dense products: threads cost more than they give (coarse.fit)
        return _fit(photo, np.asarray(alpha0, np.float64).copy(), pose0, np.asarray(points2d, np.float64), model,
                    landmarks, prior, params, detector, np.r_[np.arange(n_fit), np.arange(n_id, K)],
                    coefficients or CoefficientPrior.from_config(prior, n_id, K - n_id))


@dataclass(frozen=True)
class _FaceData:
    """What every fit of one face model reuses: the face region's vertex ids (Vf,) and triangles (F, 3, local
    ids), which of its vertices have a triangle (Vf,), the sampling order (Vf,), and the albedo model in luma:
    mean (Vf,) and basis (Vf, Ka)."""

    face: np.ndarray
    tris: np.ndarray
    usable: np.ndarray
    order: np.ndarray
    albedo_mean: np.ndarray
    albedo_basis: np.ndarray


@lru_cache(maxsize=4)
def _face_data(model) -> _FaceData:
    face = model.regions["face"]
    tris = model.region_triangles("face", local=True)
    usable = np.zeros(len(face), bool)
    usable[tris.ravel()] = True  # a vertex of no face triangle has no normal
    return _FaceData(face, tris, usable, face_sample_order(len(face)),
                     model.albedo_model.mean.astype(np.float64) @ LUMA,
                     np.einsum("vck,c->vk", model.albedo_model.basis.astype(np.float64), LUMA))


def _fit(photo, alpha, pose, pts, model, landmarks, prior, params, detector, free_ids, coefficients):
    """:func:`photometric_fit` with its coefficients ``free_ids`` moving."""
    fd = _face_data(model)
    face, tris, order, usable = fd.face, fd.tris, fd.order, fd.usable
    n_id, K = model.n_identity, model.n_coeffs
    w_lm = map_landmark_weights(landmarks, prior, detector)
    H, W = photo.shape[:2]
    blurred = BlurredPhoto.of(photo, params.blur_mm * pose.scale,
                              project(model.vertices(alpha.astype(np.float32))[face], pose)[:, :2])
    n_samples = [params.early_samples] * (params.rounds - 1) + [params.samples]
    for rnd in range(params.rounds):
        verts = model.vertices(alpha.astype(np.float32))
        vis = visible_vertices(model, verts, pose, (H, W))[face] & usable
        if vis.sum() < MIN_VISIBLE:
            break
        R0, s0, t0 = np.asarray(pose.rotation, np.float64), float(pose.scale), np.asarray(pose.translation, np.float64)
        rd = PhotometricRound(model, face, tris, blurred, order[vis[order]][:n_samples[rnd]], alpha, free_ids,
                              *landmarks.vertex_rows(model, alpha, R0), pts, landmarks.offset_mm, w_lm, coefficients,
                              n_id, params.weight, params.robust)
        rd.fit_albedo_light(fd.albedo_mean, fd.albedo_basis, params.albedo_reg, R0, s0, t0)
        a_free, R, s, t = _solve_round(rd, alpha[free_ids], R0, s0, t0, params.iterations, params.tolerance)
        new_alpha = rd.full_alpha(a_free)
        if not (np.isfinite(new_alpha).all() and np.isfinite(R).all() and s > 0 and np.isfinite(t).all()):
            break  # a degenerate step: keep the last good round
        alpha, pose = new_alpha, Pose(float(s), R, t)
        alpha[n_id:] = np.clip(alpha[n_id:], 0.0, 1.0)
    return alpha.astype(np.float32), pose
