"""morphable/sampling.py and datagen/scene.py: the distributions of random faces and scenes.

Statistical checks use enough draws that a tolerance of 4-5 standard errors is still tight; every
expected value is computed from pipeline.yaml, not written here.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from datagen.scene import draw_scene, sample_light, sample_pose, sample_u
from facesynth.config import override
from morphable.sampling import sample_expression, sample_identity
from render.camera import rotation_to_euler

N = 4000


def _tol(p: float, n: int, k: float = 4.5) -> float:
    """k standard errors of a fraction p estimated from n draws."""
    return k * np.sqrt(p * (1 - p) / n)


def _expressions(model, ecfg, n: int = N, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([sample_expression(rng, model, ecfg) for _ in range(n)])


@pytest.fixture(scope="module")
def expressions(model, cfg):
    return _expressions(model, cfg.sampling.expression)


def _extreme_hits(model, w: np.ndarray, ecfg) -> np.ndarray:
    """(n,) bool: some extreme set has all its weights >= extreme_min."""
    hit = np.zeros(len(w), bool)
    for names in ecfg.extreme_sets:
        idx = [model.expression_index(n) for n in names]
        hit |= np.all(w[:, idx] >= ecfg.extreme_min, axis=1)
    return hit


def test_identity_is_standard_normal(model, cfg):
    rng = np.random.default_rng(1)
    x = np.stack([sample_identity(rng, model, cfg.sampling.identity) for _ in range(N)])
    assert x.shape == (N, model.n_identity) and x.dtype == np.float32
    std = cfg.sampling.identity.std
    assert abs(x.mean()) < 5 * std / np.sqrt(x.size)
    assert abs(x.std() / std - 1) < 0.01
    per_mode = x.std(0) / std
    assert np.all(np.abs(per_mode - 1) < 5 / np.sqrt(2 * N))
    corr = np.corrcoef(x[:, :10].T)
    assert np.abs(corr - np.eye(10)).max() < 5 / np.sqrt(N)
    doubled = dataclasses.replace(cfg.sampling.identity, std=2 * std)
    y = np.stack([sample_identity(rng, model, doubled) for _ in range(500)])
    assert abs(y.std() / (2 * std) - 1) < 0.02


def test_expression_weights_are_sparse_and_in_range(model, cfg, expressions):
    ecfg = cfg.sampling.expression
    w = expressions
    assert w.shape == (N, model.n_expression) and w.dtype == np.float32
    assert w.min() >= 0.0 and w.max() <= 1.0
    active = (w > 0).sum(1)
    # each blendshape is active with active_prob, symmetry at most doubles that, an extreme adds a few
    lo = (1 - ecfg.neutral_prob) * ecfg.active_prob * model.n_expression
    hi = 2 * ecfg.active_prob * model.n_expression + max(len(s) for s in ecfg.extreme_sets)
    assert lo * 0.9 < active.mean() < hi
    assert active.mean() < 0.3 * model.n_expression
    # an active weight is Beta(a, b) outside the extreme sets' values
    mean_beta = ecfg.beta_a / (ecfg.beta_a + ecfg.beta_b)
    plain = w[~_extreme_hits(model, w, ecfg)]
    assert abs(plain[plain > 0].mean() - mean_beta) < 0.03


def test_extremes_and_neutral_faces_have_their_rates(model, cfg, expressions):
    ecfg = cfg.sampling.expression
    w = expressions
    n_expr = model.n_expression
    ext = _extreme_hits(model, w, ecfg).mean()
    # faces with no extreme reach a set by chance (Beta draws above extreme_min): that rate, measured
    no_extremes = dataclasses.replace(ecfg, extreme_prob=0.0)
    chance = _extreme_hits(model, _expressions(model, no_extremes, seed=8), ecfg).mean()
    assert chance < 0.5 * ecfg.extreme_prob
    expected = ecfg.extreme_prob + (1 - ecfg.extreme_prob) * chance
    assert abs(ext - expected) < 4.5 * np.hypot(_tol(expected, N, 1), _tol(chance, N, 1)), (ext, expected)
    # all-zero faces: neutral (or nothing active by chance) and no extreme pushed on top
    p_zero = (1 - ecfg.extreme_prob) * (ecfg.neutral_prob + (1 - ecfg.neutral_prob) * (1 - ecfg.active_prob) ** n_expr)
    zero = np.all(w == 0, axis=1).mean()
    assert abs(zero - p_zero) < _tol(p_zero, N)
    # the switches do what they say
    always = override(cfg, "sampling.expression.extreme_prob", 1.0).sampling.expression
    assert _extreme_hits(model, _expressions(model, always, 300, seed=5), always).all()
    still = dataclasses.replace(ecfg, extreme_prob=0.0, neutral_prob=1.0)
    assert np.all(_expressions(model, still, 100, seed=6) == 0)


def test_symmetric_faces_copy_left_to_right(model, cfg):
    ecfg = dataclasses.replace(cfg.sampling.expression, symmetric_prob=1.0, extreme_prob=0.0)
    w = _expressions(model, ecfg, 300, seed=7)
    names = model.expression_names
    pairs = [(names.index(n), names.index(n[:-2] + "_R")) for n in names if n.endswith("_L")]
    assert len(pairs) > 15
    left, right = np.array(pairs).T
    np.testing.assert_array_equal(w[:, left], w[:, right])
    asym = dataclasses.replace(ecfg, symmetric_prob=0.0)
    w = _expressions(model, asym, 300, seed=7)
    assert np.mean(w[:, left] != w[:, right]) > 0.05


def test_draw_scene_is_deterministic_per_index(model, cfg):
    a, b = draw_scene(11, 5, model, cfg), draw_scene(11, 5, model, cfg)
    for f in ("alpha_gt", "alpha_rand", "alpha_t", "albedo_coeffs", "iris", "background"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    assert a.u == b.u
    assert a.pose.to_dict() == b.pose.to_dict() and a.light.to_dict() == b.light.to_dict()
    for other in (draw_scene(11, 6, model, cfg), draw_scene(12, 5, model, cfg)):
        assert not np.array_equal(a.alpha_gt, other.alpha_gt)
        assert not np.array_equal(a.background, other.background)
        assert a.pose.to_dict() != other.pose.to_dict()
    # alpha_t lies between the true and the random coefficients
    np.testing.assert_allclose(a.alpha_t, a.alpha_gt + a.u * (a.alpha_rand - a.alpha_gt), atol=1e-6)
    assert a.alpha_gt.shape == (model.n_coeffs,)
    assert a.background.shape == (cfg.render.image_size, cfg.render.image_size, 3)


def test_light_is_unit_frontal_and_spread(cfg):
    lcfg = cfg.sampling.light
    rng = np.random.default_rng(2)
    lights = [sample_light(rng, lcfg) for _ in range(N)]
    d = np.stack([l.direction for l in lights]).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-6)
    assert np.all(d[:, 2] >= 0)
    # uniform over the frontal hemisphere: E[z] = 1/2, E[x] = E[y] = 0, z uniform in [0, 1]
    assert abs(d[:, 2].mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
    assert np.all(np.abs(d[:, :2].mean(0)) < 5 * np.sqrt(1 / 3 / N))
    assert abs(np.mean(d[:, 2] < 0.5) - 0.5) < _tol(0.5, N)
    ka = np.array([l.ambient for l in lights])
    kd = np.array([l.diffuse for l in lights])
    assert abs(ka.mean() - lcfg.ambient_mean) < 5 * lcfg.ambient_std / np.sqrt(N) + 1e-3
    assert abs(kd.mean() - lcfg.diffuse_mean) < 5 * lcfg.diffuse_std / np.sqrt(N) + 1e-3
    assert all(l.specular >= 0 and l.shininess == lcfg.shininess for l in lights)


def test_u_is_zero_with_its_probability(cfg):
    p, pm = cfg.datagen.u_zero_prob, 0.3
    rng = np.random.default_rng(3)
    draws = [sample_u(rng, p, pm) for _ in range(N)]
    u = np.array([d[0] for d in draws])
    mean = np.array([d[1] for d in draws])
    assert abs(np.mean(u == 0) - p) < _tol(p, N)
    assert abs(np.mean(mean) - pm) < _tol(pm, N) and not np.any(mean & (u == 0))
    nz = u[u != 0]
    assert nz.min() > 0 and nz.max() <= 1
    assert abs(nz.mean() - 0.5) < 5 * np.sqrt(1 / 12 / len(nz))
    assert all(sample_u(rng, 1.0, 0.5)[0] == 0 for _ in range(50))
    # mean_start_prob 0 draws the same u as before the option existed: same dataset for the same seed
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    assert [sample_u(r1, p, 0.0)[0] for _ in range(20)] == [sample_u(r2, p, 0.4)[0] for _ in range(20)]


def test_mean_start_puts_a_t_on_the_path_from_the_mean_face(model, cfg):
    from facesynth.config import override

    c = override(cfg, "datagen.mean_start_prob", 1.0)
    s = draw_scene(0, 3, model, c)
    assert np.all(s.alpha_rand == 0)
    np.testing.assert_allclose(s.alpha_t, (1 - s.u) * s.alpha_gt, atol=1e-6)
    c0 = override(cfg, "datagen.mean_start_prob", 0.0)
    assert np.any(draw_scene(0, 3, model, c0).alpha_rand != 0)


def test_pose_angles_follow_the_config(model, cfg):
    pcfg = cfg.sampling.pose
    size = cfg.render.image_size
    rng = np.random.default_rng(4)
    poses = [sample_pose(rng, model, pcfg, size) for _ in range(1000)]
    angles = np.rad2deg(np.array([rotation_to_euler(p.rotation) for p in poses]))
    assert np.all(np.abs(angles[:, 0]) <= pcfg.max_yaw_deg + 1e-6)
    for k, std in enumerate((pcfg.yaw_std_deg, pcfg.pitch_std_deg, pcfg.roll_std_deg)):
        assert abs(angles[:, k].std() / std - 1) < 0.12, k
    scales = np.array([p.scale for p in poses]) / size
    assert abs(scales.mean() - pcfg.scale_mean) < 5 * pcfg.scale_std / np.sqrt(len(poses))
