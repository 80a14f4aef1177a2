"""The photometric refinement of the coarse face (coarse/photometric.py): its analytic gradient is the gradient of
the energy written out in torch autograd (the documented formula), its Levenberg-Marquardt steps reach the energy
an autograd L-BFGS reaches; on renders of model faces it moves the landmark fit towards the truth, keeps
expression weights in [0, 1] and out-of-span modes where they were; the coarse stage runs it between the landmark
fit and the network, and weight 0 or the flag turns it off."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coarse.fit import fit_map
from coarse.landmarks import vertex_landmarks
from coarse.photometric import photometric_fit
from datagen.scene import draw_scene
from render.camera import project
from render.renderer import FaceRenderer
from training.metrics import coefficient_errors


@pytest.fixture(scope="module")
def scenes(model, cfg):
    """Three rendered sample faces with their noisy true landmarks (1 px) and landmark fits."""
    r = FaceRenderer.from_config(model, cfg.render, backend="numba")
    lms = vertex_landmarks(model, 1.0)
    out = []
    for i in range(3):
        s = draw_scene(3, i, model, cfg)
        img = np.clip(r.render_face(s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background).rgb, 0, 1)
        rng = np.random.default_rng(i)
        pts = project(model.landmarks(s.alpha_gt).astype(np.float64), s.pose)[:, :2] + rng.normal(0, 1.0, (68, 2))
        alpha, pose = fit_map(model, pts, lms, cfg.fit)
        out.append((s, img, pts, alpha, pose))
    return out, lms


def _params(cfg, **changes):
    return dataclasses.replace(cfg.refine.photometric, **changes)


def test_shading_moves_the_landmark_fit_towards_the_truth(model, cfg, scenes):
    faces, lms = scenes
    params = cfg.refine.photometric  # as shipped
    before, after = [], []
    for s, img, pts, alpha, pose in faces:
        refined, new_pose = photometric_fit(img, alpha, pose, pts, model, lms, cfg.fit, params)
        ex = refined[model.n_identity:]
        assert refined.dtype == np.float32 and ex.min() >= 0 and ex.max() <= 1
        true_err, start_err = abs(new_pose.scale / s.pose.scale - 1), abs(pose.scale / s.pose.scale - 1)
        assert true_err <= start_err + 0.05  # the pose moves, it does not run away
        before.append(coefficient_errors(model, alpha[None], s.alpha_gt[None]).mean())
        after.append(coefficient_errors(model, refined[None], s.alpha_gt[None]).mean())
    assert np.mean(after) < 0.95 * np.mean(before), (before, after)


def test_weight_zero_or_the_flag_turns_the_stage_off(cfg):
    from coarse.stage import CoarseSettings
    from facesynth.config import override

    assert CoarseSettings.from_config(cfg).photometric == cfg.refine.photometric
    assert CoarseSettings.from_config(cfg, photometric=False).photometric is None
    assert CoarseSettings.from_config(override(cfg, "refine.photometric.weight", 0.0)).photometric is None


def test_region_triangles_index_the_region_vertices(model):
    face = model.regions["face"]
    glob = model.region_triangles("face")
    local = model.region_triangles("face", local=True)
    assert len(glob) == len(local) > 0 and local.min() >= 0 and local.max() < len(face)
    np.testing.assert_array_equal(face[local], glob)


def test_identity_modes_past_n_identity_keep_the_start(model, cfg, scenes):
    faces, lms = scenes
    s, img, pts, alpha, pose = faces[1]
    start = alpha.copy()
    start[40:model.n_identity] = 0.5  # out-of-span modes with a value: they must stay as they are
    refined, _ = photometric_fit(img, start, pose, pts, model, lms, cfg.fit, _params(cfg, weight=1e4),
                                 n_identity=40)
    np.testing.assert_array_equal(refined[40:model.n_identity], start[40:model.n_identity])
    assert not np.allclose(refined[:40], start[:40])


def test_the_coarse_stage_refines_the_fit_and_starts_the_network_there(model, cfg, scenes):
    from coarse.stage import CoarseSettings, coarse_fit
    from coarse.frame import NetworkFrame

    faces, lms = scenes
    s, img, pts, alpha, pose = faces[2]
    plain = CoarseSettings(lms, cfg.fit)
    shaded = dataclasses.replace(plain, photometric=cfg.refine.photometric)
    a = coarse_fit(img, pts, model, plain, cfg.render)
    b = coarse_fit(img, pts, model, shaded, cfg.render)
    assert a.method == "landmark_fit" and b.method == "photometric_fit"
    np.testing.assert_array_equal(a.fit, b.fit)
    assert not np.allclose(b.alpha, b.fit) and np.array_equal(b.start, b.alpha)
    keep = dataclasses.replace(shaded, predict=lambda x, al: al, frame=NetworkFrame.from_config(cfg), iterations=1)
    c = coarse_fit(img, pts, model, keep, cfg.render)  # a network that returns its a_t: the photometric fit
    assert c.method == "iterative_network"
    np.testing.assert_allclose(c.alpha, b.alpha, atol=1e-6)
    np.testing.assert_array_equal(c.start, b.alpha)


# ---------------------------------------------------------------------------------------------- the energy
def _round(model, cfg, scenes, face=0, n_samples=400, n_identity=60, full_prior=False):
    """One round's energy of a rendered face (coarse.photometric.PhotometricRound) with a random light and albedo,
    expression weights pushed past [0, 1] on some entries (the box term) and identity modes past ``n_identity``
    frozen; and its start (free coefficients, R, s, t)."""
    from coarse.fit import CoefficientPrior, map_landmark_weights
    from coarse.photometric import BlurredPhoto, PhotometricRound, _face_data, face_sample_order
    from render.visibility import visible_vertices

    faces, lms = scenes
    s, img, pts, alpha, pose = faces[face]
    rng = np.random.default_rng(face)
    alpha = alpha.astype(np.float64)
    alpha[model.n_identity:] = np.clip(alpha[model.n_identity:] + 0.1 * rng.standard_normal(53), -0.1, 1.1)
    face_ids = model.regions["face"]
    tris = model.region_triangles("face", local=True)
    verts = model.vertices(alpha.astype(np.float32))
    photo = BlurredPhoto.of(img, 2.0, project(verts[face_ids], pose)[:, :2])
    vis = visible_vertices(model, verts, pose, img.shape[:2])[face_ids] & _face_data(model).usable
    order = face_sample_order(len(face_ids))
    sample = order[vis[order]][:n_samples]
    free = np.r_[np.arange(n_identity), np.arange(model.n_identity, model.n_coeffs)]
    coefficients = CoefficientPrior.from_config(cfg.fit, model.n_identity, model.n_coeffs - model.n_identity)
    if full_prior:  # an identity prior with a full covariance and a mean (as coarse.identity gives)
        C = rng.standard_normal((model.n_identity, model.n_identity)) / model.n_identity ** 0.5
        coefficients = coefficients.with_identity(rng.standard_normal(model.n_identity), C @ C.T + 0.3 * np.eye(100))
    R = np.asarray(pose.rotation, np.float64)
    rd = PhotometricRound(model, face_ids, tris, photo, sample, alpha, free, *lms.vertex_rows(model, alpha, R), pts,
                          lms.offset_mm, map_landmark_weights(lms, cfg.fit), coefficients, model.n_identity,
                          cfg.refine.photometric.weight, cfg.refine.photometric.robust)
    rd.albedo = rng.uniform(0.3, 0.8, len(sample))
    rd.sh = np.r_[2.0, 0.5 * rng.standard_normal(8)]
    return rd, (alpha[free], R, float(pose.scale), np.asarray(pose.translation, np.float64))


def _autograd_energy(rd, model, start):
    """The round's energy written out in torch (coarse.photometric_reference.round_energy) over the round's
    sample, light and albedo, as a function of the step from ``start`` (free coefficients, then the pose's six)."""
    import torch

    from coarse.photometric_reference import round_energy

    a0, R0, s0, t0 = start
    energy = round_energy(model, rd.photo.image, rd.photo.origin, rd.sample, rd.albedo, rd.sh, *rd.lm,
                          rd.coefficients, R0, s0, t0, rd.weight, rd.robust)
    free, kf = torch.as_tensor(rd.free), len(rd.free)

    def of_step(x):
        a = torch.as_tensor(rd.alpha0).clone()
        a[free] = torch.as_tensor(a0) + x[:kf]
        return energy(a, x[kf:kf + 3], x[kf + 3], x[kf + 4:])
    return of_step


@pytest.mark.parametrize("face, full_prior", [(0, False), (1, True)])
def test_the_analytic_gradient_is_the_autograd_gradient(model, cfg, scenes, face, full_prior):
    import torch

    rd, start = _round(model, cfg, scenes, face, full_prior=full_prior)
    point = rd.evaluate(*start)
    energy, (grad, hess) = point.energy, rd.derivatives(point)
    x = torch.zeros(len(start[0]) + 6, dtype=torch.float64, requires_grad=True)
    ref = _autograd_energy(rd, model, start)(x)
    ref.backward()
    assert energy == pytest.approx(float(ref.detach()), rel=1e-6)
    g = x.grad.numpy()
    for block in (slice(0, 60), slice(60, len(start[0])), slice(-6, -3), slice(-3, -2), slice(-2, None)):
        np.testing.assert_allclose(grad[block], g[block], rtol=0, atol=1e-4 * np.abs(g[block]).max())
    assert np.all(np.linalg.eigvalsh(hess) > -1e-6 * np.abs(hess).max())  # Gauss-Newton: positive semidefinite


def test_the_steps_reach_the_energy_autograd_lbfgs_reaches(model, cfg, scenes):
    import torch

    from coarse.photometric import _solve_round

    for face in (0, 2):
        rd, start = _round(model, cfg, scenes, face)
        e0 = rd.evaluate(*start).energy
        a, R, s, t = _solve_round(rd, *start, iterations=60, tolerance=1e-7)
        fast = rd.evaluate(a, R, s, t).energy
        x = torch.zeros(len(start[0]) + 6, dtype=torch.float64, requires_grad=True)
        energy = _autograd_energy(rd, model, start)
        opt = torch.optim.LBFGS([x], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            e = energy(x)
            e.backward()
            return e
        opt.step(closure)
        slow = float(energy(x).detach())
        assert fast < e0 and slow < e0
        assert fast <= slow + 0.01 * (e0 - slow), (e0, fast, slow)
