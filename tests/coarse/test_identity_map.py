"""Identity from the image (coarse/identity.py, coarse/recognition.py): the map's prediction and prior, its file,
the fits' Gaussian prior with a full identity covariance (coarse.fit.CoefficientPrior), and the coarse stage
using the recognition descriptor of a rendered face."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coarse.fit import CoefficientPrior, fit_map
from coarse.identity import IdentityMap, load_identity_map


def _map(rng, n_id=100, d=128, cov_scale=0.5, kind="ridge"):
    layers = [(rng.normal(0, 0.1, (d, n_id)), rng.normal(0, 0.1, n_id))]
    C = rng.normal(size=(n_id, n_id)) / n_id ** 0.5
    return IdentityMap(rng.normal(size=d), rng.uniform(0.5, 2, d), layers, rng.uniform(0.8, 1.2, n_id),
                       cov_scale * (C @ C.T + 0.2 * np.eye(n_id)), kind, {"made": "test"})


def test_prediction_file_round_trip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    m = _map(rng)
    x = rng.normal(size=(5, 128))
    expected = ((x - m.x_mean) / m.x_scale @ m.layers[0][0] + m.layers[0][1]) * m.y_scale
    np.testing.assert_allclose(m.predict(x), expected)
    np.testing.assert_allclose(m.predict(x[0]), expected[0])
    back = load_identity_map(m.save(tmp_path / "map.npz"))
    np.testing.assert_allclose(back.predict(x), m.predict(x))
    assert back.kind == "ridge" and back.provenance == {"made": "test"}
    (tmp_path / "bad.npz").write_bytes(b"not a map")
    with pytest.raises(ValueError, match="identity map"):
        load_identity_map(tmp_path / "bad.npz")


def test_two_layer_map_applies_a_relu_between_layers():
    rng = np.random.default_rng(1)
    W1, b1, W2, b2 = rng.normal(size=(4, 6)), rng.normal(size=6), rng.normal(size=(6, 3)), rng.normal(size=3)
    m = IdentityMap(np.zeros(4), np.ones(4), [(W1, b1), (W2, b2)], np.ones(3), np.eye(3), "mlp")
    x = rng.normal(size=(7, 4))
    np.testing.assert_allclose(m.predict(x), np.maximum(x @ W1 + b1, 0) @ W2 + b2)


def test_the_prior_whitens_the_identity_with_the_maps_covariance(cfg, model):
    rng = np.random.default_rng(2)
    m = _map(rng)
    base = CoefficientPrior.from_config(cfg.fit, model.n_identity, model.n_expression)
    x = rng.normal(size=128)
    prior = m.prior(x, base)
    n = model.n_identity
    W = prior.whiten[:n, :n]
    np.testing.assert_allclose(np.linalg.inv(W.T @ W), m.cov, atol=1e-8)  # z = W (a - mean) ~ N(0, I)
    np.testing.assert_allclose(prior.mean[:n], m.predict(x))
    np.testing.assert_array_equal(prior.whiten[n:], base.whiten[n:])  # the expression's prior is untouched
    np.testing.assert_array_equal(prior.whiten[:n, n:], 0)
    part = m.prior(x, base, n_identity=40)  # the out-of-span check: only the first 40 modes are predicted
    np.testing.assert_allclose(part.mean[:40], m.predict(x)[:40])
    np.testing.assert_array_equal(part.mean[40:n], base.mean[40:n])
    np.testing.assert_allclose(np.linalg.inv(part.whiten[:40, :40].T @ part.whiten[:40, :40]), m.cov[:40, :40],
                               atol=1e-8)


def test_a_confident_identity_prior_pulls_the_landmark_fit_to_it(cfg, model):
    """fit_map under a prior N(target, tiny) returns (nearly) the target identity; under a loose one, the plain
    fit; the energy's prior rows are the whitening's."""
    from coarse.landmarks import vertex_landmarks
    from datagen.scene import draw_scene
    from render.camera import project

    lms = vertex_landmarks(model, 1.0)
    s = draw_scene(3, 0, model, cfg)
    pts = project(model.landmarks(s.alpha_gt).astype(np.float64), s.pose)[:, :2]
    base = CoefficientPrior.from_config(cfg.fit, model.n_identity, model.n_expression)
    target = np.random.default_rng(3).normal(size=model.n_identity)
    tight = base.with_identity(target, 1e-6 * np.eye(model.n_identity))
    a_tight, _ = fit_map(model, pts, lms, cfg.fit, coefficients=tight)
    np.testing.assert_allclose(a_tight[:model.n_identity], target, atol=1e-2)
    a_plain, _ = fit_map(model, pts, lms, cfg.fit)
    a_same, _ = fit_map(model, pts, lms, cfg.fit, coefficients=base)
    np.testing.assert_array_equal(a_plain, a_same)


def test_the_coarse_stage_reads_the_identity_from_the_descriptor(cfg, model):
    """A map that predicts the true identity whatever the descriptor, with a small error covariance: the coarse
    stage's identity lands near the truth (prior) or on it (fixed), the descriptor is computed from the photo,
    and the photometric fit holds the identity when told to."""
    from coarse.landmarks import vertex_landmarks
    from coarse.recognition import DESCRIPTOR_SIZE, face_descriptor
    from coarse.stage import CoarseSettings, coarse_fit
    from datagen.scene import draw_scene
    from render.camera import project
    from render.renderer import FaceRenderer

    r = FaceRenderer.from_config(model, cfg.render, backend="numba", image_size=256)
    big = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, image_size=256))
    s = draw_scene(4, 1, model, big)
    photo = np.clip(r.render_face(s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background).rgb, 0, 1)
    pts = project(model.landmarks(s.alpha_gt).astype(np.float64), s.pose)[:, :2]
    d = face_descriptor((photo * 255 + 0.5).astype(np.uint8), pts)
    assert d.shape == (DESCRIPTOR_SIZE,) and np.isfinite(d).all() and 0.5 < np.linalg.norm(d) < 2
    n = model.n_identity
    truth = np.asarray(s.alpha_gt[:n], np.float64)
    oracle = IdentityMap(np.zeros(DESCRIPTOR_SIZE), np.ones(DESCRIPTOR_SIZE),
                         [(np.zeros((DESCRIPTOR_SIZE, n)), truth)], np.ones(n), 0.01 * np.eye(n), "ridge")
    lms = vertex_landmarks(model, 1.0)
    plain = CoarseSettings(lms, cfg.fit)
    err = {}
    for use, held in (("prior", "free"), ("fixed", "free"), ("prior", "held")):
        settings = dataclasses.replace(plain, identity=oracle, identity_use=use, photometric_identity=held,
                                       photometric=cfg.refine.photometric)
        cf = coarse_fit(photo, pts, model, settings, cfg.render)
        np.testing.assert_allclose(cf.identity_prior, truth, atol=1e-5)
        err[use, held] = np.abs(cf.alpha[:n] - truth).max()
        if use == "fixed" or held == "held":
            np.testing.assert_allclose(cf.alpha[:n], cf.fit[:n], atol=1e-6)  # the photometric fit held it
    assert err["fixed", "free"] < 1e-5 and err["prior", "held"] < 0.5
    assert np.abs(coarse_fit(photo, pts, model, plain, cfg.render).alpha[:n] - truth).max() > 1.0


def test_the_mirrored_descriptor_is_the_same_for_the_photo_and_its_mirror_image(cfg, model):
    """mirror=True averages the photo's descriptor with its mirror image's, the landmarks relabelled
    (MIRROR_68): the mirror image of the photo gives the same average, and MIRROR_68 is its own inverse."""
    from coarse.recognition import MIRROR_68, face_descriptor
    from datagen.scene import centred_pose
    from render.camera import euler_to_rotation, project
    from render.renderer import FaceRenderer

    np.testing.assert_array_equal(MIRROR_68[MIRROR_68], np.arange(68))
    r = FaceRenderer.from_config(model, cfg.render, backend="numba", image_size=256)
    alpha = np.zeros(model.n_coeffs, np.float32)
    alpha[:model.n_identity] = np.random.default_rng(5).normal(size=model.n_identity)
    pose = centred_pose(model, euler_to_rotation(0.3, 0.1, 0.05), 1.3, 256)
    skin = model.albedo_model.albedo(np.zeros((1, model.albedo_model.n_components)))[0]
    from morphable.materials import head_albedo

    img = (np.clip(r.render_face(alpha, pose, head_albedo(model, skin), r.shading_light).rgb, 0, 1) * 255).astype(
        np.uint8)
    pts = project(model.landmarks(alpha).astype(np.float64), pose)[:, :2]
    flipped = np.ascontiguousarray(img[:, ::-1])
    pts_f = pts[MIRROR_68] * (-1.0, 1.0) + (256, 0.0)
    a, b = face_descriptor(img, pts, mirror=True), face_descriptor(flipped, pts_f, mirror=True)
    np.testing.assert_allclose(a, b, atol=1e-5)
    plain = face_descriptor(img, pts)
    assert 0 < np.linalg.norm(a - plain) < 0.5 * np.linalg.norm(plain)
