"""Landmark fitting: weak-perspective pose recovery, the regularised shape fit, degenerate input.
(``model`` and ``cfg`` are the session fixtures of conftest.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from morphable.sampling import sample_shape
from coarse.fit import CONTOUR, FitError, fit_landmarks, fit_pose
from render.camera import Pose, euler_to_rotation, project


def _rotation_error_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(Ra @ Rb.T) - 1) / 2, -1.0, 1.0))))


@pytest.mark.parametrize("angles", [(25, -10, 5), (-40, 15, -8), (0, 0, 0)])
def test_fit_pose_recovers_known_pose(model, angles):
    pts3 = model.landmarks(np.zeros(model.n_coeffs)).astype(np.float64)
    pose = Pose(0.72, euler_to_rotation(*np.deg2rad(angles)), np.array([101.0, 96.0]))
    pts2 = project(pts3, pose)[:, :2] + np.random.default_rng(0).normal(0, 0.5, (68, 2))
    est = fit_pose(pts2, pts3)
    assert _rotation_error_deg(est.rotation, pose.rotation) < 2.0
    assert abs(est.scale / pose.scale - 1) < 0.02
    np.testing.assert_allclose(est.rotation @ est.rotation.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(est.rotation) > 0
    assert np.abs(project(pts3, est)[:, :2] - pts2).mean() < 1.0  # y-down convention of render.camera


def test_fit_pose_is_exact_without_noise_and_ignores_zero_weights(model):
    pts3 = model.landmarks(np.zeros(model.n_coeffs)).astype(np.float64)
    pose = Pose(1.3, euler_to_rotation(0.3, -0.2, 0.1), np.array([50.0, 70.0]))
    pts2 = project(pts3, pose)[:, :2]
    pts2[:5] += 40.0  # outliers with zero weight
    w = np.ones(68)
    w[:5] = 0
    est = fit_pose(pts2, pts3, weights=w)
    np.testing.assert_allclose(est.rotation, pose.rotation, atol=1e-8)
    np.testing.assert_allclose([est.scale, *est.translation], [pose.scale, *pose.translation], atol=1e-7)


def test_fit_pose_rejects_degenerate_input(model):
    pts3 = model.landmarks(np.zeros(model.n_coeffs)).astype(np.float64)
    pts2 = project(pts3, Pose(1.0, np.eye(3), np.zeros(2)))[:, :2]
    with pytest.raises(FitError, match="at least 4"):
        fit_pose(pts2[:3], pts3[:3])
    with pytest.raises(FitError, match="coplanar"):
        flat = pts3.copy()
        flat[:, 2] = 0.0
        fit_pose(pts2, flat)
    with pytest.raises(FitError, match="NaN"):
        bad = pts2.copy()
        bad[3, 0] = np.nan
        fit_pose(bad, pts3)
    with pytest.raises(FitError, match="collinear"):
        fit_pose(np.c_[np.arange(68.0), np.arange(68.0)], pts3)
    with pytest.raises(FitError, match=r"\(N, 2\)"):
        fit_pose(pts2[:, :1], pts3)
    with pytest.raises(ValueError):  # FitError is a ValueError
        fit_landmarks(model, pts2[:60])


def _synthetic_faces(model, cfg, n: int):
    out = []
    for seed in range(n):
        rng = np.random.default_rng(1000 + seed)
        alpha = sample_shape(rng, model, cfg.sampling)
        R = euler_to_rotation(*np.deg2rad(rng.normal(0, [15, 8, 4])))
        pose = Pose(0.72, R, np.array([100.0, 110.0]))
        pts2 = project(model.landmarks(alpha).astype(np.float64), pose)[:, :2] + rng.normal(0, 0.5, (68, 2))
        out.append((alpha, pts2))
    return out


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(0)


@pytest.mark.parametrize("contour_weight", [0.0, 1.0])
def test_fit_landmarks_beats_the_mean_face(model, cfg, contour_weight):
    used = np.ones(68, bool) if contour_weight > 0 else ~np.isin(np.arange(68), CONTOUR)
    zero = np.zeros(model.n_coeffs)
    err2d, err3d = [], []
    for alpha_true, pts2 in _synthetic_faces(model, cfg, 5):
        lm_true = model.landmarks(alpha_true).astype(np.float64)
        lm0 = model.landmarks(zero).astype(np.float64)
        pose0 = fit_pose(pts2[used], lm0[used])
        alpha, pose = fit_landmarks(model, pts2, contour_weight=contour_weight)
        assert alpha.shape == (model.n_coeffs,) and alpha.dtype == np.float32
        expr = model.split(alpha)[1]
        assert expr.min() >= 0 and expr.max() <= 1 + 1e-6
        lm = model.landmarks(alpha).astype(np.float64)
        err2d.append((np.linalg.norm(project(lm0, pose0)[used, :2] - pts2[used], axis=1).mean(),
                      np.linalg.norm(project(lm, pose)[used, :2] - pts2[used], axis=1).mean()))
        err3d.append((np.linalg.norm(_centred(lm0[used]) - _centred(lm_true[used]), axis=1).mean(),
                      np.linalg.norm(_centred(lm[used]) - _centred(lm_true[used]), axis=1).mean()))
    e2, e3 = np.mean(err2d, 0), np.mean(err3d, 0)
    assert e2[1] < 0.8 * e2[0], e2
    assert e3[1] < e3[0], e3


def test_fit_landmarks_does_not_modify_input(model, cfg):
    _, pts2 = _synthetic_faces(model, cfg, 1)[0]
    keep = pts2.copy()
    fit_landmarks(model, pts2, n_iter=1)
    np.testing.assert_array_equal(pts2, keep)


# ---------------------------------------------------------------------------------------------- MAP fit
def _prior(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg.fit, **changes)


def test_fit_map_moves_towards_the_truth_with_good_landmarks_and_stays_home_without(model, cfg):
    """Exact landmarks of the model's own vertices: the MAP fit beats the mean face. Landmarks it is told are
    very noisy: the prior wins and the face stays near the mean face with a near-neutral expression."""
    from coarse.fit import fit_map
    from coarse.landmarks import vertex_landmarks
    from training.metrics import coefficient_errors

    exact, vague = vertex_landmarks(model, 0.5), vertex_landmarks(model, 500.0)
    truths, fits, homes = [], [], []
    for alpha_true, pts2 in _synthetic_faces(model, cfg, 4):
        a, pose = fit_map(model, pts2, exact, _prior(cfg, sigma_scale=1.0))
        assert a.shape == (model.n_coeffs,) and a.dtype == np.float32 and pose.scale > 0
        expr = model.split(a)[1]
        assert expr.min() >= 0 and expr.max() <= 1 + 1e-6
        truths.append(alpha_true), fits.append(a), homes.append(fit_map(model, pts2, vague, cfg.fit)[0])
    truths = np.asarray(truths)
    err_fit = coefficient_errors(model, np.asarray(fits), truths).mean()
    err_mean = coefficient_errors(model, np.zeros_like(truths), truths).mean()
    assert err_fit < 0.8 * err_mean
    home = np.asarray(homes)
    assert np.abs(home[:, :model.n_identity]).max() < 0.05 and home[:, model.n_identity:].max() < 0.01


def test_fit_map_identity_modes_and_errors(model, cfg):
    from coarse.fit import fit_map
    from coarse.landmarks import vertex_landmarks

    _, pts2 = _synthetic_faces(model, cfg, 1)[0]
    lm = vertex_landmarks(model, 1.0)
    a, _ = fit_map(model, pts2, lm, cfg.fit, n_identity=10)
    assert np.all(a[10:model.n_identity] == 0) and np.any(a[:10] != 0)
    with pytest.raises(FitError):
        fit_map(model, pts2[:60], lm, cfg.fit)
    with pytest.raises(FitError):
        fit_map(model, np.full((68, 2), np.nan), lm, cfg.fit)
    with pytest.raises(FitError, match="n_identity"):
        fit_map(model, pts2, lm, cfg.fit, n_identity=model.n_identity + 1)


def test_box_least_squares_is_scipys_bounded_least_squares():
    from scipy.optimize import lsq_linear

    from coarse.fit import box_least_squares

    rng = np.random.default_rng(0)
    for trial in range(40):
        M, K, nb = 120, 60, 25
        A = rng.standard_normal((M, K)) * rng.uniform(0.1, 3, K)
        y = rng.standard_normal(M) * 3
        lo = np.r_[np.full(K - nb, -np.inf), np.zeros(nb)]
        hi = np.r_[np.full(K - nb, np.inf), np.ones(nb)]
        ref = lsq_linear(A, y, bounds=(lo, hi), method="bvls").x
        got = box_least_squares(A, y, lo, hi, x0=None if trial % 2 else rng.uniform(0, 1, K))
        assert np.all(got >= lo) and np.all(got <= hi)
        np.testing.assert_allclose(got, ref, atol=1e-9)
        assert 0 < np.sum((got[K - nb:] == 0) | (got[K - nb:] == 1)) < nb  # some bounds active, some not
