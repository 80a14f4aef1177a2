"""Landmark fitting: weak-perspective pose from 2D-3D correspondences, and the paper's baseline, a regularised
linear fit of the morphable model's identity and expression coefficients to the 68 detected landmarks.

Frames and units (see :mod:`render.camera`): 2D points are pixels in the image frame (x right, y down);
3D points are model-frame millimetres (y up, face looking along +z). A :class:`~render.camera.Pose` maps
model points to pixels by ``x = s (R P)_x + t_x``, ``y = t_y - s (R P)_y``. Internally the fit works with
``u = (x, -y)`` (y up), in which the camera is the plain affine map ``u = s R[:2] P + (t_x, -t_y)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.linalg import cho_factor, cho_solve
from scipy.spatial.transform import Rotation
from threadpoolctl import ThreadpoolController

from render.camera import Pose

@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()  # scanning the loaded libraries costs ms: once per process


def one_blas_thread():
    """A context with BLAS on one thread: bvls makes ~25 small LAPACK calls per solve, and threaded BLAS makes
    them 4-6x slower on a busy 2-core machine."""
    return _blas().limit(limits=1, user_api="blas")


#: Multi-PIE jaw-line (face contour) landmarks. On a real face they lie on the silhouette, which slides
#: over the skin as the head turns, while the model pins each to one vertex: they are excluded from the
#: landmark fit by default (``contour_weight=0``).
CONTOUR = np.arange(0, 17)


class FitError(ValueError):
    """Degenerate or malformed input to a fit (too few points, non-finite values, coplanar/collinear points)."""


# ---------------------------------------------------------------------------------------------- pose
def _check_points(points2d: np.ndarray, points3d: np.ndarray, weights: np.ndarray | None):
    p2 = np.asarray(points2d, np.float64)
    p3 = np.asarray(points3d, np.float64)
    if p2.ndim != 2 or p2.shape[1] != 2 or p3.ndim != 2 or p3.shape[1] != 3 or len(p2) != len(p3):
        raise FitError(f"expected points2d (N, 2) and points3d (N, 3); got {p2.shape} and {p3.shape}")
    w = np.ones(len(p2)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(p2),) or np.any(w < 0):
        raise FitError(f"weights must be (N,) = ({len(p2)},) and non-negative; got shape {w.shape}")
    if not (np.isfinite(p2).all() and np.isfinite(p3).all() and np.isfinite(w).all()):
        raise FitError("points or weights contain NaN or inf")
    if np.count_nonzero(w) < 4:
        raise FitError(f"a pose needs at least 4 weighted points; got {np.count_nonzero(w)}")
    return p2, p3, w


def fit_pose(points2d: np.ndarray, points3d: np.ndarray, weights: np.ndarray | None = None,
             n_refine: int = 10) -> Pose:
    """Weak-perspective pose by least squares, so that ``project(points3d, pose)[:, :2] ~ points2d``.

    1. affine camera ``u = A P + b`` (u = (x, -y)) by linear least squares;
    2. nearest scaled rotation: SVD ``A = U diag(s1, s2) V^T``, ``R[:2] = U V^T``, ``s = (s1 + s2) / 2``,
       third row ``R[0] x R[1]`` (a proper rotation);
    3. scale and translation re-fit with that rotation (linear), then ``n_refine`` Gauss-Newton steps on all
       six parameters (rotation as a left-multiplied rotation vector) to the true weak-perspective optimum.

    Args:
        points2d: (N, 2) pixel x, y (image frame, y down), N >= 4.
        points3d: (N, 3) model-frame points, mm; not all in one plane.
        weights: (N,) non-negative weights of the points (default 1).
        n_refine: Gauss-Newton iterations of step 3.
    Returns:
        The pose (scale in px/mm, rotation (3, 3), translation (2,) px).
    Raises:
        FitError: wrong shapes, NaN/inf, fewer than 4 points, or points3d (nearly) coplanar.
    """
    p2, p3, w = _check_points(points2d, points3d, weights)
    sw = np.sqrt(w)[:, None]
    u = np.stack([p2[:, 0], -p2[:, 1]], axis=1)
    wsum = w.sum()
    cP = (w[:, None] * p3).sum(0) / wsum
    cu = (w[:, None] * u).sum(0) / wsum
    P, U = p3 - cP, u - cu
    sv = np.linalg.svd(sw * P, compute_uv=False)
    if sv[2] < 1e-6 * max(sv[0], 1e-12):
        raise FitError("points3d are (nearly) coplanar or collinear: the weak-perspective pose is ambiguous")

    A = np.linalg.lstsq(sw * P, sw * U, rcond=None)[0].T  # (2, 3)
    Ua, sa, Vta = np.linalg.svd(A, full_matrices=False)  # (2, 2), (2,), (2, 3)
    if sa[1] < 1e-9 * max(sa[0], 1e-12):
        raise FitError("points2d are collinear: no scaled rotation fits them")
    R2 = Ua @ Vta
    R = np.vstack([R2, np.cross(R2[0], R2[1])])

    def scale_translation(R):
        q = P @ R[:2].T  # (N, 2) centred rotated points
        s = float((w[:, None] * q * U).sum() / max((w[:, None] * q * q).sum(), 1e-12))
        return s, cu - s * (cP @ R[:2].T)

    s, b = scale_translation(R)
    if s <= 0:
        raise FitError("pose fit gave a non-positive scale (points2d mirrored relative to points3d?)")
    for _ in range(n_refine):
        q = p3 @ R.T  # (N, 3)
        r = (s * q[:, :2] + b - u)  # (N, 2)
        # d(q)/d(omega) for R <- exp([omega]x) R: dq = omega x q
        J = np.zeros((len(q), 2, 6))
        J[:, 0, 1], J[:, 0, 2] = s * q[:, 2], -s * q[:, 1]
        J[:, 1, 0], J[:, 1, 2] = -s * q[:, 2], s * q[:, 0]
        J[:, 0, 3], J[:, 1, 3] = q[:, 0], q[:, 1]
        J[:, 0, 4] = J[:, 1, 5] = 1.0
        Jw = (sw[:, :, None] * J).reshape(-1, 6)
        step = np.linalg.lstsq(Jw, -(sw * r).reshape(-1), rcond=None)[0]
        R = Rotation.from_rotvec(step[:3]).as_matrix() @ R
        s, b = s + step[3], b + step[4:]
        if np.abs(step[:3]).max() < 1e-10 and abs(step[3]) < 1e-10 * s:
            break
    if s <= 0:
        raise FitError("pose fit diverged to a non-positive scale")
    return Pose(float(s), R, np.array([b[0], -b[1]]))


# ---------------------------------------------------------------------------------------------- box least squares
def box_least_squares(A: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      x0: np.ndarray | None = None) -> np.ndarray:
    """argmin_x ||A x - y||^2 subject to lower <= x <= upper, for a full-column-rank A (the fits' priors make it so).

    An active-set method on the normal equations (Lawson and Hanson's, for two-sided bounds): the free variables
    are solved for with the bound ones held; a solution that leaves the box steps to the first bound it crosses and
    holds that variable; at a solution inside the box, the held variable whose gradient points most into the box is
    freed, until none does (the Karush-Kuhn-Tucker conditions). With the (K, K) Gram matrix, each step is one
    Cholesky solve of the free block, ~10x faster than ``scipy.optimize.lsq_linear(method="bvls")`` on the fits'
    ~250 x 153 problems, for the same minimiser.

    Args:
        A: (M, K); y: (M,); lower, upper: (K,) bounds (+-inf: unbounded); x0: (K,) a start (e.g. the last solve's).
    Returns:
        (K,) float64, inside the bounds.
    """
    H, g = A.T @ A, A.T @ y
    K = len(g)
    unbounded = np.isinf(lower) & np.isinf(upper)
    if x0 is None:
        x = np.clip(cho_solve(cho_factor(H), g), lower, upper)
    else:
        x = np.clip(np.asarray(x0, np.float64), lower, upper)
    free = unbounded | ((x > lower) & (x < upper))
    tol = 1e-10 * max(1.0, float(np.abs(g).max()))
    for _ in range(4 * K):
        F = np.flatnonzero(free)
        held = ~free
        rhs = g[F] - H[np.ix_(F, held)] @ x[held]
        z = cho_solve(cho_factor(H[np.ix_(F, F)]), rhs) if len(F) else rhs
        out = (z < lower[F]) | (z > upper[F])
        if out.any():  # step towards z up to the first bound crossed; hold the variables that reach one
            xF, d = x[F], z - x[F]
            with np.errstate(divide="ignore", invalid="ignore"):
                limit = np.minimum(np.where(d < 0, (lower[F] - xF) / d, np.inf),
                                   np.where(d > 0, (upper[F] - xF) / d, np.inf))
            step = float(np.clip(limit.min(), 0.0, 1.0))
            hit = limit <= step * (1 + 1e-12) + 1e-15
            x[F] = np.where(hit, np.where(d < 0, lower[F], upper[F]), xF + step * d)
            free[F[hit]] = False
            continue
        x[F] = z
        grad = H @ x - g  # of the half squared norm: >= 0 at a lower bound, <= 0 at an upper one when optimal
        wrong = held & (((x <= lower) & (grad < -tol)) | ((x >= upper) & (grad > tol)))
        if not wrong.any():
            break
        free[np.argmax(np.where(wrong, np.abs(grad), -1.0))] = True
    return x


# ---------------------------------------------------------------------------------------------- shape
def landmark_weights(contour_weight: float = 0.0) -> np.ndarray:
    """(68,) per-landmark weights: ``contour_weight`` on the jaw line 0-16, 1 elsewhere."""
    w = np.ones(68)
    w[CONTOUR] = contour_weight
    return w


def fit_landmarks(model, points2d: np.ndarray, n_iter: int = 5, reg_identity: float = 2.0,
                  reg_expression: float = 2.0, pose: Pose | None = None,
                  contour_weight: float = 0.0) -> tuple[np.ndarray, Pose]:
    """Fit shape coefficients and pose to 68 image landmarks (the baseline of the paper).

    Alternates ``n_iter`` times: (a) :func:`fit_pose` of the current face's landmarks; (b) with that pose,
    the regularised linear least squares (residuals converted from pixels to mm by the pose scale)::

        min_a  sum_i w_i || (u_i - b) / s - R[:2] (mean_i + B_i a) ||^2
               + reg_identity ||a_id||^2 + reg_expression ||a_exp||^2,     0 <= a_exp <= 1

    solved by :func:`box_least_squares` (identity unbounded, expression weights bounded).

    Regularisation: identity coefficients are N(0, 1), so ``reg_identity`` is the MAP weight sigma^2 of a
    landmark noise of sigma mm per coordinate: the default 2.0 mm^2 (sigma ~ 1.4 mm, ~2-3 % of the
    inter-ocular distance, a typical detector error). ``reg_expression`` (2.0 mm^2) pulls the blendshape
    weights towards neutral as strongly: expressions are sparse, and without it the 53 weights trade off
    against identity on the 102 equations of 51 landmarks (on synthetic faces with 1 px landmark noise,
    2.0 / 2.0 gave a lower mean 3D face error than 0.5 or 8 for identity and 0.1 or 0.5 for expression).

    Jaw line: landmarks 0-16 are weighted by ``contour_weight`` (default 0: excluded, in the pose fit too),
    because on a real face they are silhouette points that slide with yaw while the model pins them to
    fixed vertices. Use e.g. 0.1-1 for frontal faces or synthetic landmarks that do come from those vertices.

    Args:
        model: :class:`morphable.model.FaceModel`.
        points2d: (68, 2) pixel x, y (image frame, y down), Multi-PIE order.
        n_iter: pose/shape alternations (>= 1).
        reg_identity, reg_expression: Tikhonov weights, mm^2.
        pose: initial pose (default: fitted to the mean face).
        contour_weight: weight of jaw-line landmarks 0-16.
    Returns:
        (alpha (K,) float32 coefficients, identity first; the final Pose).
    Raises:
        FitError: wrong shapes, NaN/inf, or a degenerate pose.
    """
    pts = np.asarray(points2d, np.float64)
    if pts.shape != (68, 2):
        raise FitError(f"expected (68, 2) landmarks; got {pts.shape}")
    if not np.isfinite(pts).all():
        raise FitError("landmarks contain NaN or inf")
    if n_iter < 1:
        raise FitError(f"n_iter must be >= 1; got {n_iter}")
    if reg_identity < 0 or reg_expression < 0 or contour_weight < 0:
        raise FitError("regularisation weights and contour_weight must be non-negative")

    K, n_id = model.n_coeffs, model.n_identity
    idx = model.landmarks68
    mean = model.mean[idx].astype(np.float64)  # (68, 3)
    basis = model.basis[idx].astype(np.float64)  # (68, 3, K)
    w = landmark_weights(contour_weight)
    sw = np.sqrt(w)[:, None]  # (68, 1)
    keep = w > 0
    reg = np.sqrt(np.r_[np.full(n_id, reg_identity), np.full(K - n_id, reg_expression)])
    lower = np.r_[np.full(n_id, -np.inf), np.zeros(K - n_id)]
    upper = np.r_[np.full(n_id, np.inf), np.ones(K - n_id)]
    u = np.stack([pts[:, 0], -pts[:, 1]], axis=1)  # y up

    alpha = np.zeros(K)
    if pose is None:
        pose = fit_pose(pts, mean, w)
    with one_blas_thread():
        for _ in range(n_iter):
            R2 = np.asarray(pose.rotation, np.float64)[:2]
            b = np.array([pose.translation[0], -pose.translation[1]])
            target = (u - b) / pose.scale - mean @ R2.T  # (68, 2) mm
            A = np.einsum("ij,njk->nik", R2, basis)  # (68, 2, K)
            A = (sw[:, :, None] * A)[keep].reshape(-1, K)
            y = (sw * target)[keep].reshape(-1)
            A_aug = np.vstack([A, np.diag(reg)])
            y_aug = np.r_[y, np.zeros(K)]
            alpha = box_least_squares(A_aug, y_aug, lower, upper, alpha)
            pose = fit_pose(pts, mean + basis @ alpha, w)
    return alpha.astype(np.float32), pose


# ---------------------------------------------------------------------------------------------- MAP fit
def map_landmark_weights(landmarks, prior, detector: str | None = None) -> np.ndarray:
    """(68,) weights 1 / sigma_k^2 (1/mm^2) of the MAP fit's landmark term (:func:`fit_map`): the detector's
    calibrated scatter x ``prior.sigma_scale``, floored at ``prior.sigma_min_mm``, the jaw line x
    ``prior.contour_weight``."""
    sigma = np.maximum(landmarks.sigma(detector) * prior.sigma_scale, prior.sigma_min_mm)
    w = 1.0 / sigma ** 2
    w[CONTOUR] *= prior.contour_weight
    return w


def map_prior(prior, n_identity: int, n_expression: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), each (n_identity + n_expression,): the MAP fit's Gaussian prior on the coefficients
    (:func:`fit_map`; expression weights are further cut to [0, 1])."""
    mean = np.r_[np.zeros(n_identity), np.full(n_expression, prior.expression_mean)]
    std = np.r_[np.full(n_identity, prior.identity_std), np.full(n_expression, prior.expression_std)]
    return mean, std


@dataclass(frozen=True)
class CoefficientPrior:
    """The fits' Gaussian prior on the coefficients a (K,), identity first: ``z = whiten @ (a - mean) ~ N(0, I)``,
    so the fits add ``||z||^2`` to their energy (expression weights are further cut to [0, 1]).

    mean: (K,); whiten: (K, K), the inverse of a Cholesky factor of the covariance (block diagonal: the
    identity's block may be full, e.g. from a recognition descriptor's regression, :mod:`coarse.identity`; the
    expression's is diagonal).
    """

    mean: np.ndarray
    whiten: np.ndarray

    @staticmethod
    def from_config(prior, n_identity: int, n_expression: int) -> "CoefficientPrior":
        """The ``fit`` section's prior: identity ~ N(0, identity_std^2 I), each expression weight ~
        N(expression_mean, expression_std^2) (:func:`map_prior`)."""
        mean, std = map_prior(prior, n_identity, n_expression)
        return CoefficientPrior(mean, np.diag(1.0 / std))

    def with_identity(self, mean: np.ndarray, cov: np.ndarray) -> "CoefficientPrior":
        """This prior with the identity's block replaced by N(mean (n_id,), cov (n_id, n_id))."""
        n = len(mean)
        L = np.linalg.cholesky(np.asarray(cov, np.float64))
        whiten = self.whiten.copy()
        whiten[:n, :] = 0.0
        whiten[:n, :n] = np.linalg.solve(L, np.eye(n))  # L^-1: z = L^-1 (a - mean), cov = L L^T
        return CoefficientPrior(np.r_[np.asarray(mean, np.float64), self.mean[n:]], whiten)

    def times_expression(self, n_identity: int, values: np.ndarray, std: float) -> "CoefficientPrior":
        """This prior times N(``values`` (n_exp,), ``std``^2 I) on the expression weights (those after the first
        ``n_identity`` coefficients; their block must be diagonal, as :meth:`from_config` makes it): the
        precisions add, the mean is the precision-weighted one (e.g. a video frame's expression near the last
        frame's)."""
        n = n_identity
        own_std = 1.0 / np.diag(self.whiten)[n:]
        precision = own_std ** -2 + std ** -2
        whiten = self.whiten.copy()
        whiten[n:, n:] = np.diag(np.sqrt(precision))
        mean = (self.mean[n:] * own_std ** -2 + np.asarray(values, np.float64) * std ** -2) / precision
        return CoefficientPrior(np.r_[self.mean[:n], mean], whiten)

    def rows(self, free: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(A (K, Kf), c (K,)) with ``z = A @ a[free] + c`` for coefficients ``a`` that equal ``base`` (K,) outside
        ``free``."""
        fixed = np.asarray(base, np.float64).copy()
        fixed[free] = 0.0
        return self.whiten[:, free], self.whiten @ (fixed - self.mean)


def fit_map(model, points2d: np.ndarray, landmarks, prior, n_identity: int | None = None,
            pose: Pose | None = None, detector: str | None = None,
            identity: np.ndarray | None = None,
            coefficients: CoefficientPrior | None = None) -> tuple[np.ndarray, Pose]:
    """MAP fit of shape and pose to a detector's 68 points, with the detector's calibrated error.

    Minimises, alternating pose (:func:`fit_pose`) and shape (bounded linear least squares)::

        sum_k || (x_k - proj_k(a)) / (s sigma_k) ||^2 + ||a_id / identity_std||^2
              + ||(a_exp - expression_mean) / expression_std||^2,        0 <= a_exp <= 1

    where ``proj_k`` puts landmark k where the detector is expected to (:class:`coarse.landmarks.LandmarkModel`:
    its surface point or silhouette vertex, plus its offset), ``s`` is the pose scale (px/mm) and
    ``sigma_k`` the detector's scatter in mm (``sigma_mm * sigma_scale``). With weak evidence the prior wins:
    the mean face and a neutral expression stay.

    Args:
        model: :class:`morphable.model.FaceModel`.
        points2d: (68, 2) detected pixel x, y (image frame, y down), Multi-PIE order.
        landmarks: :class:`coarse.landmarks.LandmarkModel` of the detector.
        prior: the prior and noise model, the ``fit`` config section (:class:`facesynth.config.FitConfig`):
            ``identity_std`` (identity ~ N(0, std^2); the model's modes are N(0, 1)); ``expression_mean``,
            ``expression_std`` (each expression weight ~ N(mean, std^2) cut to [0, 1]: a negative mean is a
            sparsity (L1) pull towards neutral, as an L1 weight lambda with a Gaussian of std sigma is the
            Gaussian centred at -lambda sigma^2 on [0, inf)); ``sigma_scale`` (x the calibrated scatter);
            ``sigma_min_mm`` (its floor); ``contour_weight`` (x the jaw line's weight); ``iterations``
            (pose/shape alternations).
        n_identity: fit only the first ``n_identity`` identity modes (the rest stay 0); default all.
        pose: initial pose (default: fitted to the mean face).
        detector: which detector found the face (its scatter, :meth:`coarse.landmarks.LandmarkModel.sigma`).
        identity: (n_identity_model,) fixed identity coefficients (e.g. a video's one identity,
            :func:`fit_map_shared_identity`): only expression and pose are fitted, and ``n_identity`` is ignored.
        coefficients: the prior on the coefficients (:class:`CoefficientPrior`, e.g. an identity predicted from
            the image) instead of ``prior``'s (:meth:`CoefficientPrior.from_config`).
    Returns:
        (alpha (K,) float32, identity first; the final Pose).
    Raises:
        FitError: wrong shapes, NaN/inf, or a degenerate pose.
    """
    pts = np.asarray(points2d, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise FitError(f"expected (68, 2) finite landmarks; got shape {pts.shape}")
    K, n_id = model.n_coeffs, model.n_identity
    n_fit = n_id if n_identity is None else int(n_identity)
    if not 0 <= n_fit <= n_id:
        raise FitError(f"n_identity must lie in [0, {n_id}]; got {n_fit}")
    base = np.zeros(K)  # the fixed part of alpha: the given identity, or nothing
    if identity is not None:
        base[:n_id], n_fit = _checked_identity(identity, n_id), 0
    w = map_landmark_weights(landmarks, prior, detector)
    sw = np.sqrt(w)[:, None]
    keep = w > 0
    free = np.r_[np.arange(n_fit), np.arange(n_id, K)]
    n_exp = K - n_id
    coefficients = coefficients or CoefficientPrior.from_config(prior, n_id, n_exp)
    prior_A, prior_c = coefficients.rows(free, base)
    lower = np.r_[np.full(n_fit, -np.inf), np.zeros(n_exp)]
    upper = np.r_[np.full(n_fit, np.inf), np.ones(n_exp)]

    alpha = base.copy()
    if pose is None:
        mean, basis = landmarks.vertex_rows(model, alpha, np.eye(3))
        pose = fit_pose(pts, mean + basis @ alpha, w)
    with one_blas_thread():
        for _ in range(max(1, prior.iterations)):
            mean, basis = landmarks.vertex_rows(model, alpha, pose.rotation)
            # the detector's offset, moved from the image to the points: pixels -> corrected pixels
            target_px = pts - pose.scale * landmarks.offset_mm
            pose = fit_pose(target_px, mean + basis @ alpha, w)
            R2 = np.asarray(pose.rotation, np.float64)[:2]
            b = np.array([pose.translation[0], -pose.translation[1]])
            u = np.stack([target_px[:, 0], -target_px[:, 1]], axis=1)
            target = (u - b) / pose.scale - (mean + basis @ base) @ R2.T  # (68, 2) mm
            A = np.einsum("ij,njk->nik", R2, basis[:, :, free])
            A = (sw[:, :, None] * A)[keep].reshape(-1, len(free))
            y = (sw * target)[keep].reshape(-1)
            A_aug = np.vstack([A, prior_A])
            y_aug = np.r_[y, -prior_c]
            sol = box_least_squares(A_aug, y_aug, lower, upper, alpha[free])
            alpha = base.copy()
            alpha[free] = sol
        mean, basis = landmarks.vertex_rows(model, alpha, pose.rotation)
        pose = fit_pose(pts - pose.scale * landmarks.offset_mm, mean + basis @ alpha, w)
    return alpha.astype(np.float32), pose


# ---------------------------------------------------------------------------------- one identity, many frames
def _checked_identity(identity: np.ndarray, n_id: int) -> np.ndarray:
    ident = np.asarray(identity, np.float64)
    if ident.shape != (n_id,) or not np.isfinite(ident).all():
        raise FitError(f"identity must be ({n_id},) finite coefficients; got shape {ident.shape}")
    return ident


def fit_map_shared_identity(model, points2d: np.ndarray, landmarks, prior, poses: list | None = None,
                            detector: str | None = None, rounds: int = 4, identity: np.ndarray | None = None,
                            evidence_frames: float | None = None,
                            coefficients: CoefficientPrior | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """MAP fit of ONE identity shared by N frames of the same face, with an expression and a pose per frame.

    Minimises the sum over frames of :func:`fit_map`'s landmark term and expression prior, weighted by
    ``c = evidence_frames / N``, plus one identity prior::

        c sum_f [ sum_k || (x_fk - proj_k(id, e_f, pose_f)) / (s_f sigma_k) ||^2
                  + ||(e_f - expression_mean) / expression_std||^2 ] + ||W (id - id_mean)||^2,   0 <= e_f <= 1

    by block coordinate descent, each step an exact minimisation over its block, so the energy never rises:
    per frame, expression and pose with the identity held (:func:`fit_map` with ``identity``); then the
    identity with every frame's expression, pose and jaw-line choice held (a linear least squares over all
    frames' landmarks, the normal equations of 100 unknowns); ``c`` leaves each frame's own step unchanged.
    The frames' landmarks are averaged, so their noise cancels and turned heads fix the identity's depth; but a
    detector errs on one face in much the same way in every frame, so N frames are not N independent
    measurements of the identity: ``evidence_frames`` (default N: independent frames) says how many they count
    as, which keeps the identity prior's say.

    Args:
        model: :class:`morphable.model.FaceModel`; landmarks, prior, detector: as :func:`fit_map`.
        points2d: (N, 68, 2) detected pixel x, y of each frame (image frame, y down), N >= 1.
        poses: N start poses (e.g. a tracker's), or None (each fitted to the start face).
        rounds: block-descent rounds (each: every frame's expression and pose, then the identity).
        identity: (n_identity,) start identity (default: the first frame's own :func:`fit_map`; from the mean
            face the descent is slow, as the expressions take up what the identity lacks).
        evidence_frames: how many independent frames the N frames' landmarks count as for the identity
            (default N).
        coefficients: the prior on the coefficients (:class:`CoefficientPrior`; default ``prior``'s); its
            identity block is the identity prior above.
    Returns:
        (identity (n_identity,) float32, alphas (N, K) float32 with that identity, the N final Poses).
    Raises:
        FitError: wrong shapes, NaN/inf, or a degenerate pose.
    """
    pts = np.asarray(points2d, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (68, 2) or len(pts) < 1 or not np.isfinite(pts).all():
        raise FitError(f"expected (N, 68, 2) finite landmarks with N >= 1; got shape {pts.shape}")
    if poses is not None and len(poses) != len(pts):
        raise FitError(f"expected {len(pts)} start poses; got {len(poses)}")
    K, n_id = model.n_coeffs, model.n_identity
    coefficients = coefficients or CoefficientPrior.from_config(prior, n_id, K - n_id)
    W = coefficients.whiten[:n_id, :n_id]
    poses = [None] * len(pts) if poses is None else list(poses)
    if identity is None:
        identity = fit_map(model, pts[0], landmarks, prior, pose=poses[0], detector=detector,
                           coefficients=coefficients)[0][:n_id]
    ident = _checked_identity(identity, n_id)
    w = map_landmark_weights(landmarks, prior, detector)
    sw = np.sqrt(w)[:, None]
    keep = w > 0
    c = 1.0 if evidence_frames is None else float(evidence_frames) / len(pts)
    if not c > 0:
        raise FitError(f"evidence_frames must be > 0; got {evidence_frames}")
    alphas = np.zeros((len(pts), K))
    for _ in range(max(1, rounds)):
        for f in range(len(pts)):
            alphas[f], poses[f] = fit_map(model, pts[f], landmarks, prior, pose=poses[f], detector=detector,
                                          identity=ident, coefficients=coefficients)
        # identity step: normal equations of every frame's landmark rows plus the prior
        normal = W.T @ W
        rhs = normal @ coefficients.mean[:n_id]
        with one_blas_thread():
            for f in range(len(pts)):
                mean, basis = landmarks.vertex_rows(model, alphas[f], poses[f].rotation)
                R2 = np.asarray(poses[f].rotation, np.float64)[:2]
                u = (pts[f] - poses[f].scale * landmarks.offset_mm) * (1.0, -1.0)
                b = np.array([poses[f].translation[0], -poses[f].translation[1]])
                expr = basis[:, :, n_id:] @ alphas[f, n_id:]
                y = (sw * ((u - b) / poses[f].scale - (mean + expr) @ R2.T))[keep].reshape(-1)
                A = (sw[:, :, None] * np.einsum("ij,njk->nik", R2, basis[:, :, :n_id]))[keep].reshape(-1, n_id)
                normal += c * (A.T @ A)
                rhs += c * (A.T @ y)
            ident = np.linalg.solve(normal, rhs)
    for f in range(len(pts)):  # expression and pose for the final identity
        alphas[f], poses[f] = fit_map(model, pts[f], landmarks, prior, pose=poses[f], detector=detector,
                                      identity=ident, coefficients=coefficients)
    return ident.astype(np.float32), alphas.astype(np.float32), poses
