"""Photometric refinement of the coarse face: analysis by synthesis of the photo's shading.

The landmark fit reads shape from 68 points; the photo's shading over the whole face (cheeks, nose, brow, the
outline against the background) says more. This stage starts from the landmark fit (coefficients and pose) and
minimises, over identity, expression and pose::

    E = sum_k w_k || (x_k - proj_k(a)) / s ||^2                    the landmark fit's term (coarse.fit.fit_map)
      + ||a_id / identity_std||^2 + ||(a_exp - expression_mean) / expression_std||^2      its prior
      + weight * mean_{v in visible} psi(I(p_v) - albedo_v Y(n_v) . sh)                  shading

- ``I`` is the photo's luma, blurred by ``blur_mm`` (mm on the face at the pose's scale), sampled at each visible
  face vertex's projection ``p_v`` (bilinear: the term moves vertices across image edges, e.g. the cheek's outline);
- ``albedo_v`` is the vertex's gray albedo from the face model's albedo model, ``Y(n_v) . sh`` second-order SH
  shading of its camera-frame normal (:mod:`render.shading`);
- ``psi(r) = r^2 / (r^2 + robust^2)`` (Geman-McClure): hair, stubble, glasses and background behind a wrong
  outline count as one outlier each, not as a large square (a loose ``robust`` lets the geometry bend to
  explain texture the albedo model lacks: ``docs/tuning.md``);
- albedo coefficients and light are re-fitted in closed form (iteratively reweighted least squares) at the start
  of each of ``rounds`` rounds, with the visibility of the current shape; between re-fits, ``steps`` L-BFGS
  iterations move the shape and pose with albedo, light and visibility fixed. Expression weights are kept in
  [0, 1] by a penalty and clipped at the end.

Frames: the photo frame (pixels, x right, y down) for the photo, the landmarks and the pose
(:mod:`render.camera`); coefficients ``alpha`` (K,) identity first.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from morphable.model import mesh_normals
from render.camera import Pose, image_xy, project
from render.shading import LUMA, sh_basis, sh_least_squares
from render.visibility import visible_vertices

from .fit import map_landmark_weights, map_prior

#: Weight of the penalty that keeps expression weights in [0, 1] during the L-BFGS steps (clipped after).
BOX_WEIGHT = 1e3


def _robust_weights(r: np.ndarray, c: float) -> np.ndarray:
    """IRLS weights of the Geman-McClure loss r^2 / (r^2 + c^2)."""
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


def _rotation(omega, R0):
    """exp([omega]_x) R0: (3, 3) torch, differentiable in omega (3,)."""
    import torch

    zero = omega.new_zeros(())
    k = torch.stack([torch.stack([zero, -omega[2], omega[1]]), torch.stack([omega[2], zero, -omega[0]]),
                     torch.stack([-omega[1], omega[0], zero])])
    return torch.linalg.matrix_exp(k) @ R0


def _project(points, R, s, t):
    """:func:`render.camera.project` in torch, differentiable in the pose: (N, 3) model mm -> (N, 2) photo
    pixels."""
    import torch

    return torch.stack(image_xy(points @ R.T, s, t), 1)


def _sample(image, xy):
    """Bilinear samples (N,) of ``image`` (1, 1, H, W) at pixel points ``xy`` (N, 2) (x, y; pixel centres at
    +0.5), border values outside; differentiable in ``xy``."""
    import torch

    H, W = image.shape[-2:]
    g = torch.stack([xy[:, 0] / W * 2 - 1, xy[:, 1] / H * 2 - 1], 1).to(image.dtype)
    out = torch.nn.functional.grid_sample(image, g[None, None], mode="bilinear", padding_mode="border",
                                          align_corners=False)
    return out[0, 0, 0].to(xy.dtype)


def photometric_fit(photo: np.ndarray, alpha0: np.ndarray, pose0: Pose, points2d: np.ndarray, model, landmarks,
                    prior, params, detector: str | None = None,
                    n_identity: int | None = None) -> tuple[np.ndarray, Pose]:
    """Refine a coarse face by its shading in the photo (module docstring).

    Args:
        photo: (H, W, 3) or (H, W) float in [0, 1].
        alpha0: (K,) the start, identity first (the landmark fit); pose0: its pose in the photo frame.
        points2d: (68, 2) the detector's landmarks, photo pixels.
        model: the face model (with its albedo model); landmarks: the detector's
            :class:`coarse.landmarks.LandmarkModel`; prior: the ``fit`` config section (landmark term and prior,
            as :func:`coarse.fit.fit_map`); params: the ``refine.photometric`` section
            (:class:`facesynth.config.PhotometricConfig`); detector: which detector found the face.
        n_identity: refine only the first ``n_identity`` identity modes (the others keep the start's values, as
            :func:`coarse.fit.fit_map`'s ``n_identity`` leaves them at 0); default all.
    Returns:
        (alpha (K,) float32, its pose in the photo frame). With fewer than 50 visible face vertices, or when a
        round's step is not finite, the last good round's answer (at first the start) is returned.
    """
    import torch

    if model.albedo_model is None:
        raise ValueError("the photometric fit needs the face model's albedo model")
    f64 = torch.float64
    gray = photo @ LUMA if photo.ndim == 3 else photo
    H, W = gray.shape
    image = torch.as_tensor(gaussian_filter(np.asarray(gray, np.float32), params.blur_mm * pose0.scale))[None, None]
    face = model.regions["face"]
    tris = model.region_triangles("face", local=True)
    tris_t = torch.as_tensor(tris)
    albedo_mean = model.albedo_model.mean.astype(np.float64) @ LUMA  # (Vf,) luma of the face vertices
    albedo_basis = np.einsum("vck,c->vk", model.albedo_model.basis.astype(np.float64), LUMA)
    n_id, K = model.n_identity, model.n_coeffs
    w_lm = torch.as_tensor(map_landmark_weights(landmarks, prior, detector))
    prior_mean, prior_std = (torch.as_tensor(x) for x in map_prior(prior, n_id, K - n_id))
    pts = torch.as_tensor(np.asarray(points2d, np.float64))
    offset = torch.as_tensor(np.asarray(landmarks.offset_mm, np.float64))

    frozen = torch.zeros(K, dtype=torch.bool)
    frozen[(n_id if n_identity is None else int(n_identity)):n_id] = True
    alpha, pose = np.asarray(alpha0, np.float64).copy(), pose0
    for _ in range(params.rounds):
        verts = model.vertices(alpha.astype(np.float32))
        vis = visible_vertices(model, verts, pose, (H, W))[face]
        if vis.sum() < 50:
            break
        R0 = np.asarray(pose.rotation, np.float64)
        vf = verts[face].astype(np.float64)
        normals = (mesh_normals(vf, tris) @ R0.T)[vis]
        seen = _sample(image, torch.as_tensor(project(vf, pose)[vis, :2])).numpy()
        albedo, sh = _albedo_light(albedo_mean[vis], albedo_basis[vis], normals, seen, params.robust,
                                   params.albedo_reg)
        albedo, sh = torch.as_tensor(albedo), torch.as_tensor(sh)
        lm_mean, lm_basis = (torch.as_tensor(x) for x in landmarks.vertex_rows(model, alpha, R0))
        vis_t = torch.as_tensor(vis)
        R0, s0 = torch.as_tensor(R0), float(pose.scale)
        t0 = torch.as_tensor(np.asarray(pose.translation, np.float64))
        a = torch.tensor(alpha, dtype=f64, requires_grad=True)
        a.register_hook(lambda g: g.masked_fill(frozen, 0.0))
        omega = torch.zeros(3, dtype=f64, requires_grad=True)
        log_s = torch.zeros((), dtype=f64, requires_grad=True)
        dt = torch.zeros(2, dtype=f64, requires_grad=True)

        def energy():
            R, s, t = _rotation(omega, R0), s0 * torch.exp(log_s), t0 + dt
            v = model.vertices(a, region="face")
            n = mesh_normals(v, tris_t)[vis_t] @ R.T
            r = _sample(image, _project(v[vis_t], R, s, t)) - albedo * (sh_basis(n) * sh).sum(-1)
            e_photo = params.weight * (r * r / (r * r + params.robust ** 2)).mean()
            res = (pts - s * offset - _project(lm_mean + lm_basis @ a, R, s, t)) / s
            e_lm = (w_lm[:, None] * res * res).sum()
            e_prior = (((a - prior_mean) / prior_std) ** 2).sum()
            ex = a[n_id:]
            e_box = BOX_WEIGHT * (torch.relu(-ex) ** 2 + torch.relu(ex - 1) ** 2).sum()
            return e_photo + e_lm + e_prior + e_box

        opt = torch.optim.LBFGS([a, omega, log_s, dt], lr=1.0, max_iter=params.steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            e = energy()
            e.backward()
            return e

        opt.step(closure)
        new_alpha = a.detach().numpy().copy()
        with torch.no_grad():
            new_pose = Pose(float(s0 * torch.exp(log_s)), _rotation(omega, R0).numpy(), (t0 + dt).numpy())
        if not (np.isfinite(new_alpha).all() and np.isfinite(new_pose.rotation).all() and new_pose.scale > 0):
            break  # a degenerate step (e.g. a face of a few pixels): keep the last good round
        alpha, pose = new_alpha, new_pose
        alpha[n_id:] = np.clip(alpha[n_id:], 0.0, 1.0)
    return alpha.astype(np.float32), pose
