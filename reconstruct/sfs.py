"""Shape from shading: add fine detail (wrinkles, folds) to a coarse depth map using the photo's shading,
in the spirit of Or-El et al. 2015 (RGBD-Fusion): lighting by a second-order SH fit, an edge-aware albedo,
then a Gauss-Newton depth solve.

Frames and units:
- depth maps are (H, W) in the image frame (row i down, column j right), millimetres along the camera axis,
  larger = nearer the camera (as :class:`render.raster.Fragments.depth`);
- normals are camera-frame unit vectors (x right, y up, z towards the camera), as everywhere in
  :mod:`render.shading`; image rows go down, so d/dy = -d/d(row);
- the solver works in pixel units, zeta = depth / pixel_mm, so that depth gradients are dimensionless slopes
  and the weights below do not depend on the image scale.

Energy minimised over the depth zeta (all sums over pixels p of the working grid)::

    E(zeta) = w_s   sum_{p in S} (I_p - rho_p Y(n_p(zeta)) . sh)^2          shading
            + sum_p lambda_p (zeta_p - zeta0_p)^2                           fidelity / anchor
            + w_l   sum_p (L (zeta - zeta0))_p^2                            smoothness of the added detail

- ``n(zeta) = (-gx, -gy, 1) / sqrt(1 + gx^2 + gy^2)`` with ``gx = Dx zeta``, ``gy = Dy zeta`` central differences
  on the full grid (one-sided on the grid border, as ``numpy.gradient``), so difference operators never drop
  out-of-mask neighbours.
- S (the shading set) is the mask eroded by one pixel (every difference stencil lies inside the face), minus
  saturated (I > 0.98) and black (I < 0.02) pixels, where the Lambertian model does not hold.
- ``lambda_p = fidelity_weight`` inside the mask (weak: keeps the low frequencies of the coarse shape, which
  shading alone cannot fix without knowing the albedo), ``anchor_weight`` outside (strong: pixels outside the
  face stay at the coarse depth and hold the border of the face).
- L is the 5-point Laplacian. It regularises the *displacement* zeta - zeta0 rather than zeta (Or-El et al.
  penalise L zeta): our coarse depth is a smooth model render, so its curvature (nose, chin) is right and must
  not be flattened, and the silhouette step of a render (0 outside the face) must not leak inside. It damps the
  highest frequencies, where central differences are blind (the checkerboard mode) and noise dominates.

Each Gauss-Newton step linearises the shading in the depth gradients,
``dS/dgx = -rho (G_x - (G . n) n_x) / N``, ``dS/dgy = -rho (G_y - (G . n) n_y) / N`` (G = d(Y . sh)/dn,
N = |(-gx, -gy, 1)|), so the Jacobian is ``J = diag(a) Dx + diag(b) Dy`` and the step solves the sparse SPD
system ``(w_s J^T J + Lambda + w_l L^T L) delta = -grad E / 2`` by Jacobi-preconditioned conjugate gradients
(``solver="cg"``: an inexact Newton step, capped at ``cg_maxiter`` products) or a sparse direct solve
(``solver="direct"``, SuperLU: the same answer, ~9x slower at 256 x 256), followed by step halving if the
energy went up.

Lighting and albedo (Or-El et al.'s first two steps), redone at the start of each of ``rounds`` rounds from
the current normals, ``light_iterations`` times:
1. SH (9 coefficients, :mod:`render.shading` convention) by least squares on S, with the albedo of the
   previous pass (first pass: constant albedo, absorbed into the SH scale);
2. albedo = edge-aware smoothing of ``I / shading`` by weighted least squares::

       min_rho  sum_{p in S} (rho_p s_p - I_p)^2 + albedo_smooth sum_{p~q in mask} w_pq (rho_p - rho_q)^2,
       w_pq = exp(-(I_p - I_q)^2 / (2 albedo_sigma^2)) exp(-(zeta0_p - zeta0_q)^2 / (2 albedo_slope_sigma^2))

   Neighbours whose intensities differ sharply (brows, lips, freckles: albedo edges are sharp, shading from
   geometry varies smoothly over several pixels) or whose coarse depths jump are decoupled, so those edges
   stay in the albedo and do not become geometry; smooth shading variations are averaged out of the albedo
   and left to the depth solve. The first albedo still holds part of the detail's shading (I / coarse
   shading); a second round, with the refined normals, explains more of it by geometry.

The weights and solver settings are ``refine.sfs`` (:class:`facesynth.config.SfSConfig`; pixel units,
intensities in [0, 1]); why each value: ``docs/tuning.md``.

Model error is taken out of the target: each round, the residual ``r = I - rho Y(n) . sh`` at the current
shape is low-pass filtered (Gaussian, ``residual_lowpass_mm``, over the shading set) and subtracted from the
image, ``I' = I - G * r``, so only the detail (wrinkles, folds: a few millimetres wide) is asked of the
shading.

Colour images are reduced to luma (:func:`render.shading.to_gray`); one gray albedo and one (9,) SH result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import ndimage

from facesynth.config import SfSConfig
from render.filters import masked_blur, normals_from_slopes
from render.shading import sh_basis, sh_gradient, sh_least_squares, to_gray


@dataclass(frozen=True)
class SfSResult:
    """Output of :func:`sfs_refine`, for an (H, W) image.

    depth: (H, W) float32 refined depth, mm (larger = nearer); equal to the input outside the mask.
    normals: (H, W, 3) float32 camera-frame unit normals of the refined depth (0 outside the mask).
    albedo: (H, W) float32 gray albedo (0 outside the mask).
    sh: (9,) SH lighting coefficients (:mod:`render.shading` convention), fitted with ``albedo``.
    energy: E at the start of each round (with that round's albedo and light) and after each accepted
        Gauss-Newton step.
    linear_iterations: CG iterations of each step (0 for the direct solver).
    seconds: wall time of the call.
    """

    depth: np.ndarray
    normals: np.ndarray
    albedo: np.ndarray
    sh: np.ndarray
    energy: tuple[float, ...]
    linear_iterations: tuple[int, ...]
    seconds: float


# ---------------------------------------------------------------------------------------------- operators
def _diff1d(n: int) -> sp.csr_matrix:
    """(n, n) first difference with numpy.gradient's rule: central inside, one-sided at both ends."""
    if n < 2:
        raise ValueError(f"need at least 2 samples per axis; got {n}")
    rows = np.r_[0, 0, np.repeat(np.arange(1, n - 1), 2), n - 1, n - 1]
    cols = np.r_[0, 1, np.c_[np.arange(0, n - 2), np.arange(2, n)].reshape(-1), n - 2, n - 1]
    vals = np.r_[-1.0, 1.0, np.tile([-0.5, 0.5], n - 2), -1.0, 1.0]
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def _lap1d(n: int) -> sp.csr_matrix:
    """(n, n) second difference with reflecting (zero-flux) ends."""
    main = np.full(n, -2.0)
    main[[0, -1]] = -1.0
    return sp.diags([np.ones(n - 1), main, np.ones(n - 1)], [-1, 0, 1], format="csr")


def gradient_operators(h: int, w: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Sparse (h w, h w) operators giving d/dx (right) and d/dy (up) of a row-major (h, w) grid, per pixel."""
    Dx = sp.kron(sp.identity(h, format="csr"), _diff1d(w), format="csr")
    Dy = -sp.kron(_diff1d(h), sp.identity(w, format="csr"), format="csr")
    return Dx, Dy


def laplacian_operator(h: int, w: int) -> sp.csr_matrix:
    """Sparse (h w, h w) 5-point Laplacian of a row-major (h, w) grid (zero flux at the border)."""
    return (sp.kron(sp.identity(h, format="csr"), _lap1d(w)) + sp.kron(_lap1d(h), sp.identity(w, format="csr"))).tocsr()


@lru_cache(maxsize=4)
def _operators(h: int, w: int) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(Dx, Dy, L^T L) of an (h, w) grid, cached (read-only by convention)."""
    Dx, Dy = gradient_operators(h, w)
    L = laplacian_operator(h, w)
    return Dx, Dy, (L.T @ L).tocsr()


# ---------------------------------------------------------------------------------------------- pieces
def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product; :func:`sfs_refine` runs with BLAS on one thread (OpenBLAS threads its ddot for long vectors,
    and on a busy 2-core machine those threads stall each CG iteration: 5x slower runs were seen)."""
    return float(a @ b)


def pcg(A: sp.csr_matrix, b: np.ndarray, rtol: float, maxiter: int,
        x0: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Jacobi-preconditioned conjugate gradients for a sparse SPD ``A`` (n, n): ``(x (n,), iterations)``.

    A plain loop (scipy's ``cg`` spends as long in its Python wrapper as in the products at our sizes); stops
    when ``|b - A x| <= rtol |b|`` or after ``maxiter`` products.
    """
    minv = 1.0 / A.diagonal()
    x = np.zeros_like(b) if x0 is None else x0.copy()
    r = b - A @ x if x0 is not None else b.copy()
    stop2 = rtol * rtol * _dot(b, b)
    z = minv * r
    p = z.copy()
    rz = _dot(r, z)
    for k in range(1, maxiter + 1):
        Ap = A @ p
        alpha = rz / _dot(p, Ap)
        x += alpha * p
        r -= alpha * Ap
        if _dot(r, r) <= stop2:
            return x, k
        z = minv * r
        rz_new = _dot(r, z)
        p *= rz_new / rz
        p += z
        rz = rz_new
    return x, maxiter


def fit_sh(normals: np.ndarray, image: np.ndarray, albedo, mask: np.ndarray) -> np.ndarray:
    """Second-order SH lighting by least squares over the mask: argmin_sh sum (albedo Y(n) . sh - I)^2.

    Args:
        normals: (H, W, 3) camera-frame unit normals.
        image: (H, W) gray or (H, W, C) intensities in [0, 1].
        albedo: (H, W) or scalar.
        mask: (H, W) bool pixels to use (at least 9).
    Returns:
        (9,) coefficients, or (C, 9) for a (H, W, C) image.
    """
    mask = np.asarray(mask, bool)
    if normals.shape[:2] != mask.shape or image.shape[:2] != mask.shape or normals.shape[-1] != 3:
        raise ValueError(f"expected normals (H, W, 3), image (H, W[, C]) and mask (H, W); "
                         f"got {normals.shape}, {image.shape}, {mask.shape}")
    a = np.broadcast_to(np.asarray(albedo, np.float64), mask.shape)[mask]
    return sh_least_squares(normals[mask], np.asarray(image, np.float64)[mask], a)


def _neighbour_pairs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (p, q) of horizontally and vertically adjacent pixel pairs both inside ``mask``."""
    h, w = mask.shape
    idx = np.arange(h * w).reshape(h, w)
    ph = mask[:, :-1] & mask[:, 1:]
    pv = mask[:-1, :] & mask[1:, :]
    p = np.r_[idx[:, :-1][ph], idx[:-1, :][pv]]
    q = np.r_[idx[:, 1:][ph], idx[1:, :][pv]]
    return p, q


def estimate_albedo(image: np.ndarray, shading: np.ndarray, data_mask: np.ndarray, mask: np.ndarray,
                    zeta0: np.ndarray, params: SfSConfig, start: np.ndarray | None = None) -> np.ndarray:
    """Edge-aware albedo by weighted least squares (module docstring, step 2).

    Args:
        image: (h, w) gray in [0, 1]; shading: (h, w) Y(n) . sh with unit albedo;
        data_mask: (h, w) bool pixels with a data term; mask: (h, w) bool pixels to solve for (the face);
        zeta0: (h, w) coarse depth in pixel units; params: smoothing weights; start: (h, w) the conjugate
            gradients' start (e.g. the last estimate; default the median albedo everywhere).
    Returns:
        (h, w) albedo, 0 outside ``mask``.
    """
    h, w = mask.shape
    cells = np.flatnonzero(mask)
    if len(cells) == 0:
        return np.zeros((h, w))
    pos = np.full(h * w, -1)
    pos[cells] = np.arange(len(cells))
    I, s, z = image.reshape(-1), shading.reshape(-1), zeta0.reshape(-1)
    d = data_mask.reshape(-1)[cells].astype(np.float64)
    p, q = _neighbour_pairs(mask)
    wpq = np.exp(-((I[p] - I[q]) ** 2) / (2 * params.albedo_sigma ** 2)
                 - ((z[p] - z[q]) ** 2) / (2 * params.albedo_slope_sigma ** 2)) * params.albedo_smooth
    n = len(cells)
    G = sp.csr_matrix((np.r_[np.ones(len(p)), -np.ones(len(p))],
                       (np.r_[np.arange(len(p)), np.arange(len(p))], np.r_[pos[p], pos[q]])), shape=(len(p), n))
    sc = s[cells]
    ratio = np.where(d > 0, I[cells] / np.where(np.abs(sc) > 1e-3, sc, 1e-3), 0.0)
    rho_bar = float(np.median(ratio[d > 0])) if np.any(d > 0) else 1.0
    eps = 1e-4  # keeps pixels without data (and islands) at the median albedo
    A = sp.diags(d * sc * sc + eps) + G.T @ sp.diags(wpq) @ G
    b = d * sc * I[cells] + eps * rho_bar
    x0 = np.full(n, rho_bar) if start is None else start.reshape(-1)[cells].astype(np.float64)
    rho, _ = pcg(A.tocsr(), b, rtol=1e-4, maxiter=300, x0=x0)
    out = np.zeros(h * w)
    out[cells] = rho
    return out.reshape(h, w)


# ---------------------------------------------------------------------------------------------- solver
class _DepthProblem:
    """The energy of the module docstring on one working grid (flat arrays, pixel units)."""

    def __init__(self, image, albedo, sh, shade_mask, mask, zeta0, params: SfSConfig):
        h, w = mask.shape
        self.shape = (h, w)
        self.I = image.reshape(-1)
        self.rho = albedo.reshape(-1)
        self.sh = sh
        self.ws = params.shading_weight * shade_mask.reshape(-1).astype(np.float64)
        self.lam = np.where(mask.reshape(-1), params.fidelity_weight, params.anchor_weight)
        self.zeta0 = zeta0.reshape(-1)
        self.Dx, self.Dy, LtL = _operators(h, w)
        self.LtL = params.smooth_weight * LtL
        self.params = params

    def shading(self, zeta):
        n, N = normals_from_slopes(self.Dx @ zeta, self.Dy @ zeta)
        return self.rho * np.einsum("pk,k->p", sh_basis(n), self.sh), n, N

    def energy(self, zeta) -> float:
        S = self.shading(zeta)[0]
        d = zeta - self.zeta0
        return float(np.sum(self.ws * (S - self.I) ** 2) + np.sum(self.lam * d * d) + _dot(d, self.LtL @ d))

    def linearise(self, zeta) -> tuple[np.ndarray, sp.csr_matrix]:
        """Shading S(zeta) (n,) and its Jacobian dS/dzeta (n, n) = diag(a) Dx + diag(b) Dy."""
        S, n, N = self.shading(zeta)
        G = sh_gradient(n, self.sh)
        gn = np.einsum("pc,pc->p", G, n)
        a = -self.rho * (G[:, 0] - gn * n[:, 0]) / N  # dS/dgx
        b = -self.rho * (G[:, 1] - gn * n[:, 1]) / N  # dS/dgy
        return S, (sp.diags(a) @ self.Dx + sp.diags(b) @ self.Dy).tocsr()

    def step(self, zeta) -> tuple[np.ndarray, int]:
        """Gauss-Newton step (n,) and the CG iterations it took."""
        S, J = self.linearise(zeta)
        WJ = sp.diags(self.ws) @ J
        A = (J.T @ WJ + sp.diags(self.lam) + self.LtL).tocsr()
        d = zeta - self.zeta0
        rhs = -(WJ.T @ (S - self.I) + self.lam * d + self.LtL @ d)
        if self.params.solver == "direct":
            return spla.spsolve(A.tocsc(), rhs), 0
        return pcg(A, rhs, self.params.cg_rtol, self.params.cg_maxiter)


def _check_inputs(image, depth0, mask, pixel_mm):
    depth0 = np.asarray(depth0, np.float64)
    mask = np.asarray(mask)
    image = np.asarray(image, np.float64)
    if depth0.ndim != 2 or min(depth0.shape) < 3:
        raise ValueError(f"depth0 must be (H, W) with H, W >= 3; got {depth0.shape}")
    if mask.shape != depth0.shape or mask.dtype != bool:
        raise ValueError(f"mask must be (H, W) = {depth0.shape} bool; got {mask.shape} {mask.dtype}")
    if image.shape[:2] != depth0.shape or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be (H, W) or (H, W, 3) with (H, W) = {depth0.shape}; got {image.shape}")
    if not (np.isfinite(image).all() and np.isfinite(depth0).all()):
        raise ValueError("image or depth0 contain NaN or inf")
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise ValueError(f"pixel_mm must be a positive number; got {pixel_mm}")
    if image.ndim == 3:
        image = to_gray(image)
    return image, depth0, mask


def _chroma_edges(image: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray | None:
    """(H, W) bool: pixels near a change of chromaticity, i.e. of albedo (lips, brows, freckles, stubble),
    which shading alone never causes. None for gray images or ``threshold`` 0.

    The threshold is ``max(threshold, 3 x the median chromaticity gradient over mask)``: a clean render has
    almost no chromaticity gradient outside albedo edges, but a photo's sensor noise and JPEG chroma
    subsampling give every pixel one (median 0.005 per pixel on ``data/astronaut.png``), and an absolute
    threshold alone would call the whole face an edge."""
    if image.ndim != 3 or threshold <= 0:
        return None
    chroma = image / np.maximum(image.sum(-1, keepdims=True), 1e-3)
    gy, gx = np.gradient(chroma, axis=(0, 1))
    g = np.sqrt((gx ** 2 + gy ** 2).sum(-1))
    if mask.any():
        threshold = max(threshold, 3.0 * float(np.median(g[mask])))
    return ndimage.binary_dilation(g > threshold, iterations=1)


def sfs_refine(image: np.ndarray, depth0: np.ndarray, mask: np.ndarray, pixel_mm: float,
               params: SfSConfig) -> SfSResult:
    """Refine a coarse depth map with the image's shading (energy and steps: module docstring).

    Args:
        image: (H, W) gray or (H, W, 3) RGB, linear-ish intensities in [0, 1].
        depth0: (H, W) coarse depth, mm, larger = nearer (e.g. ``FaceRender.depth`` of the fitted model);
            values outside ``mask`` are not used (a render has 0 there).
        mask: (H, W) bool face pixels to refine.
        pixel_mm: pixel size in mm (1 / pose.scale).
        params: weights and solver settings (``cfg.refine.sfs``, :class:`facesynth.config.SfSConfig`).
    Returns:
        :class:`SfSResult`.
    Raises:
        ValueError: wrong shapes, NaN/inf, bad pixel size or solver name, or fewer than 9 usable face pixels.
    """
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        return _sfs_refine(image, depth0, mask, pixel_mm, params, t0)


def _sfs_refine(image, depth0, mask, pixel_mm, params, t0) -> SfSResult:
    image_in = np.asarray(image, np.float64)
    image, depth0, mask = _check_inputs(image, depth0, mask, pixel_mm)
    albedo_edges = _chroma_edges(image_in, mask, params.chroma_edge)
    H, W = depth0.shape
    if not mask.any():
        raise ValueError("mask is empty: no face pixels to refine")

    # working crop: the mask's bounding box plus a margin (the rest is anchored at depth0 and unchanged)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    m = params.margin
    r0, r1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, H)
    c0, c1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, W)
    if r1 - r0 < 3 or c1 - c0 < 3:
        r0, r1, c0, c1 = 0, H, 0, W
    crop = (slice(r0, r1), slice(c0, c1))
    msk, img = mask[crop], image[crop]

    # coarse depth in pixel units, outside the mask replaced by the nearest face value (no silhouette step)
    _, (ii, jj) = ndimage.distance_transform_edt(~msk, return_indices=True)
    zeta0 = depth0[crop][ii, jj] / pixel_mm
    shade_mask = ndimage.binary_erosion(msk, border_value=0) & (img > 0.02) & (img < 0.98)
    if albedo_edges is not None:
        shade_mask &= ~albedo_edges[crop]
    if np.count_nonzero(shade_mask) < 9:
        raise ValueError(f"only {np.count_nonzero(shade_mask)} usable face pixels (need >= 9 inside the eroded "
                         "mask with intensities in (0.02, 0.98))")

    zeta = zeta0.reshape(-1).copy()
    energy: list[float] = []
    lin_its: list[int] = []
    for _ in range(params.rounds):
        zc = zeta.reshape(msk.shape)
        n_cur = normals_from_slopes(np.gradient(zc, axis=1), -np.gradient(zc, axis=0))[0]
        Y = sh_basis(n_cur)
        albedo, start = np.ones_like(img), None
        for _ in range(params.light_iterations):
            sh = sh_least_squares(n_cur[shade_mask], img[shade_mask], albedo[shade_mask])
            albedo = start = estimate_albedo(img, np.einsum("...k,k->...", Y, sh), shade_mask, msk, zeta0, params,
                                             start)
        sh = sh_least_squares(n_cur[shade_mask], img[shade_mask], albedo[shade_mask])
        target = img
        if params.residual_lowpass_mm > 0:
            target = img - masked_blur(img - albedo * np.einsum("...k,k->...", Y, sh), shade_mask,
                                        params.residual_lowpass_mm / pixel_mm)

        prob = _DepthProblem(target, albedo, sh, shade_mask, msk, zeta0, params)
        e_cur = prob.energy(zeta)
        energy.append(e_cur)
        for _ in range(params.iterations):
            delta, its = prob.step(zeta)
            lin_its.append(its)
            t, e_new = 1.0, np.inf
            for _ in range(4):  # step halving
                e_new = prob.energy(zeta + t * delta)
                if e_new <= e_cur:
                    break
                t *= 0.5
            if e_new > e_cur:
                break
            zeta = zeta + t * delta
            e_cur = e_new
            energy.append(e_cur)

    zc = zeta.reshape(msk.shape)
    depth = depth0.copy()
    depth[crop] = np.where(msk, zc * pixel_mm, depth0[crop])
    normals = np.zeros((H, W, 3))
    nc = normals_from_slopes(np.gradient(zc, axis=1), -np.gradient(zc, axis=0))[0]
    normals[crop] = np.where(msk[..., None], nc, 0.0)
    alb = np.zeros((H, W))
    alb[crop] = albedo
    return SfSResult(depth.astype(np.float32), normals.astype(np.float32), alb.astype(np.float32), sh,
                     tuple(energy), tuple(lin_its), time.perf_counter() - t0)
