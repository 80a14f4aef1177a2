"""The photometric fit's energy written out in torch autograd, and the fit that minimised it by L-BFGS: the
reference :mod:`coarse.photometric` is checked against (its analytic gradient and its minimum, in the tests) and
timed against (``benchmarks/coarse.py``). Not used by ``refine``.

:func:`round_energy` is one round's energy (:mod:`coarse.photometric`'s docstring) over any set of visible face
vertices; :func:`reference_fit` is the fit as it first shipped: every visible face vertex, ``rounds`` rounds of
albedo, light and visibility re-fits, each followed by ``steps`` L-BFGS iterations (strong Wolfe line search)
in float64, the photo blurred whole. It needs torch.

Frames: as :mod:`coarse.photometric`.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from morphable.model import mesh_normals
from render.camera import Pose, image_xy, project
from render.shading import LUMA, sh_basis
from render.visibility import visible_vertices

from .fit import CoefficientPrior, map_landmark_weights
from .photometric import BOX_WEIGHT, _albedo_light


def _rotation(omega, R0):
    """exp([omega]_x) R0: (3, 3) torch, differentiable in omega (3,)."""
    import torch

    zero = omega.new_zeros(())
    k = torch.stack([torch.stack([zero, -omega[2], omega[1]]), torch.stack([omega[2], zero, -omega[0]]),
                     torch.stack([-omega[1], omega[0], zero])])
    return torch.linalg.matrix_exp(k) @ R0


def _sample(image, xy, origin):
    """Bilinear samples (N,) of ``image`` (1, 1, h, w), whose pixel (0, 0) is the photo's pixel ``origin``, at
    photo-frame points ``xy`` (N, 2) (pixel centres at +0.5), border values outside; differentiable in ``xy``."""
    import torch

    h, w = image.shape[-2:]
    u = xy - torch.as_tensor(origin, dtype=xy.dtype)
    g = torch.stack([u[:, 0] / w * 2 - 1, u[:, 1] / h * 2 - 1], 1).to(image.dtype)
    out = torch.nn.functional.grid_sample(image, g[None, None], mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, 0, 0].to(xy.dtype)


def round_energy(model, image: np.ndarray, origin, vertices: np.ndarray, albedo: np.ndarray, sh: np.ndarray,
                 lm_mean, lm_basis, target, offset, lm_weights, coefficients, R0, s0: float, t0,
                 weight: float, robust: float):
    """One round's energy as a torch function ``energy(a, omega, log_s, dt)`` of the coefficients a (K,) and the
    pose (R0, s0, t0) moved by a rotation vector omega (3,, left-multiplied), a log scale and a translation (2,).

    Args:
        image: (h, w) float32, the blurred luma whose pixel (0, 0) is the photo's pixel ``origin`` (x, y).
        vertices: (N,) face-local ids of the visible vertices the shading term averages over; albedo (N,),
            sh (9,): their gray albedo and the light.
        coefficients: the prior (:class:`coarse.fit.CoefficientPrior`); the rest as
            :class:`coarse.photometric.PhotometricRound`.
    Returns:
        the energy function (float64 scalar tensors).
    """
    import torch

    T = torch.as_tensor
    img = T(np.asarray(image, np.float32))[None, None]
    tris = T(model.region_triangles("face", local=True))
    vis = T(np.asarray(vertices))
    lm_mean, lm_basis, target, offset, w_lm = (T(np.asarray(v, np.float64)) for v in
                                               (lm_mean, lm_basis, target, offset, lm_weights))
    mean, whiten = T(np.asarray(coefficients.mean, np.float64)), T(np.asarray(coefficients.whiten, np.float64))
    albedo, sh = T(np.asarray(albedo, np.float64)), T(np.asarray(sh, np.float64))
    R0, t0 = T(np.asarray(R0, np.float64)), T(np.asarray(t0, np.float64))
    n_id = model.n_identity

    def energy(a, omega, log_s, dt):
        R, s, t = _rotation(omega, R0), s0 * torch.exp(log_s), t0 + dt
        v = model.vertices(a, region="face")
        n = mesh_normals(v, tris)[vis] @ R.T
        r = _sample(img, torch.stack(image_xy(v[vis] @ R.T, s, t), 1), origin) - albedo * (sh_basis(n) * sh).sum(-1)
        e_photo = weight * (r * r / (r * r + robust ** 2)).mean()
        res = (target - s * offset - torch.stack(image_xy((lm_mean + lm_basis @ a) @ R.T, s, t), 1)) / s
        ex = a[n_id:]
        z = whiten @ (a - mean)
        return (e_photo + (w_lm[:, None] * res * res).sum() + (z * z).sum()
                + BOX_WEIGHT * (torch.relu(-ex) ** 2 + torch.relu(ex - 1) ** 2).sum())
    return energy


def reference_fit(photo: np.ndarray, alpha0: np.ndarray, pose0: Pose, points2d: np.ndarray, model, landmarks,
                  prior, params, detector: str | None = None, rounds: int = 4, steps: int = 30) -> tuple[np.ndarray, Pose]:
    """The photometric fit by autograd and L-BFGS (module docstring), the arguments of
    :func:`coarse.photometric.photometric_fit` (``params``: weight, robust, blur_mm, albedo_reg)."""
    import torch

    gray = photo @ LUMA if photo.ndim == 3 else photo
    H, W = gray.shape
    image = gaussian_filter(np.asarray(gray, np.float32), params.blur_mm * pose0.scale)
    face = model.regions["face"]
    albedo_mean = model.albedo_model.mean.astype(np.float64) @ LUMA
    albedo_basis = np.einsum("vck,c->vk", model.albedo_model.basis.astype(np.float64), LUMA)
    n_id, K = model.n_identity, model.n_coeffs
    coefficients = CoefficientPrior.from_config(prior, n_id, K - n_id)
    w_lm = map_landmark_weights(landmarks, prior, detector)
    pts = np.asarray(points2d, np.float64)
    alpha, pose = np.asarray(alpha0, np.float64).copy(), pose0
    for _ in range(rounds):
        verts = model.vertices(alpha.astype(np.float32))
        vis = np.flatnonzero(visible_vertices(model, verts, pose, (H, W))[face])
        if len(vis) < 50:
            break
        R0 = np.asarray(pose.rotation, np.float64)
        vf = verts[face].astype(np.float64)
        normals = (mesh_normals(vf, model.region_triangles("face", local=True)) @ R0.T)[vis]
        seen = _sample(torch.as_tensor(image)[None, None], torch.as_tensor(project(vf, pose)[vis, :2]),
                       (0.0, 0.0)).numpy()
        albedo, sh = _albedo_light(albedo_mean[vis], albedo_basis[vis], normals, seen, params.robust,
                                   params.albedo_reg)
        energy = round_energy(model, image, (0.0, 0.0), vis, albedo, sh, *landmarks.vertex_rows(model, alpha, R0),
                              pts, landmarks.offset_mm, w_lm, coefficients, R0, float(pose.scale),
                              pose.translation, params.weight, params.robust)
        f64 = torch.float64
        a = torch.tensor(alpha, dtype=f64, requires_grad=True)
        omega = torch.zeros(3, dtype=f64, requires_grad=True)
        log_s = torch.zeros((), dtype=f64, requires_grad=True)
        dt = torch.zeros(2, dtype=f64, requires_grad=True)
        opt = torch.optim.LBFGS([a, omega, log_s, dt], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            e = energy(a, omega, log_s, dt)
            e.backward()
            return e

        opt.step(closure)
        new_alpha = a.detach().numpy().copy()
        with torch.no_grad():
            R = _rotation(omega, torch.as_tensor(R0)).numpy()
            new_pose = Pose(float(pose.scale * torch.exp(log_s)), R, np.asarray(pose.translation) + dt.numpy())
        if not (np.isfinite(new_alpha).all() and np.isfinite(R).all() and new_pose.scale > 0):
            break
        alpha, pose = new_alpha, new_pose
        alpha[n_id:] = np.clip(alpha[n_id:], 0.0, 1.0)
    return alpha.astype(np.float32), pose
