"""The landmark-fit start of training samples: simulated detector landmarks, their noise model, the start
policy of ``train.start``, and inference that starts where training did (``refine.network_start``)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from coarse.landmarks import detector_noise, load_landmark_model, simulated_detections
from datagen.scene import centred_pose, draw_scene
from facesynth.config import load_config
from render.camera import euler_to_rotation

SIZE = 64


@pytest.fixture(scope="module")
def lm(cfg, model):
    return load_landmark_model(cfg.resolve_path(cfg.fit.landmarks))


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={"render.image_size": SIZE, "render.backend": "numba", "train.start": "fit"})


def _random_face(model, rng):
    return np.r_[rng.normal(size=model.n_identity), rng.uniform(0, 0.4, model.n_expression)].astype(np.float32)


# ----------------------------------------------------------------------------------------- simulated detections
def test_simulated_detections_scatter_as_calibrated_around_the_projection(model, lm):
    """On the mean face (where the pull towards it changes nothing): per detector and landmark the robust
    scatter is the calibrated sigma x pose scale, the median offset from project() is ~0, and the detectors
    come in the calibration's shares."""
    pose = centred_pose(model, euler_to_rotation(0.2, 0.1, 0.0), 2.0, 512)
    alpha = np.zeros(model.n_coeffs, np.float32)
    ref = lm.project(model, alpha, pose)
    rng = np.random.default_rng(0)
    draws = [simulated_detections(lm, model, alpha, pose, rng) for _ in range(2500)]
    names = np.array([d for _, d in draws])
    shares = {k: v for k, v in lm.provenance["detectors"].items() if k != "none"}
    total = sum(shares.values())
    for name, count in shares.items():
        assert abs(np.mean(names == name) - count / total) < 0.04, name
        err = np.stack([p for p, d in draws if d == name]) - ref  # (n, 68, 2) px
        sigma_px = lm.sigma(name) * pose.scale
        robust = 1.4826 * np.median(np.abs(err - np.median(err, 0)), axis=(0, 2))
        np.testing.assert_allclose(robust / sigma_px, 1.0, atol=0.2, err_msg=name)
        assert (np.abs(np.median(err, 0)) / sigma_px[:, None]).max() < 0.15, name
        # heavy tails: more far points than a Gaussian of that scatter would give (0.27 % beyond 3 sigma)
        assert np.mean(np.abs(err) > 3 * sigma_px[:, None]) > 0.02


def test_simulated_detections_follow_the_face_partly_and_err_together(model, lm):
    nm = {"follow": {"hog": [0.5, 0.25]}, "dof": 30.0, "shared": 0.5, "group": 0.3}
    one = dataclasses.replace(lm, provenance={"detectors": {"hog": 10}})
    rng = np.random.default_rng(1)
    alpha = _random_face(model, rng) * 2
    pose = centred_pose(model, np.eye(3), 2.0, 512)
    pts = np.stack([simulated_detections(one, model, alpha, pose, rng, nm)[0] for _ in range(400)])
    followed = alpha.copy()
    followed[:model.n_identity] *= 0.5
    followed[model.n_identity:] *= 0.25
    med = np.median(pts, 0)
    off_followed = np.abs(med - one.project(model, followed, pose)).mean()
    assert off_followed < 0.3 * np.abs(med - one.project(model, alpha, pose)).mean()
    z = (pts - one.project(model, followed, pose)) / (lm.sigma("hog") * pose.scale)[:, None]
    corr = np.corrcoef(z[:, :, 0].T)
    assert 0.4 < corr[40, 60] < 0.6 and 0.7 < corr[40, 41] < 0.9  # other groups share 0.5; one group 0.8
    a, b = (simulated_detections(one, model, alpha, pose, np.random.default_rng(5), nm) for _ in range(2))
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(ValueError, match="shared"):
        simulated_detections(one, model, alpha, pose, rng, dict(nm, shared=0.9))


def test_the_error_scale_shrinks_noise_and_pull_together(model, lm):
    """error_scale s: the same draws, the error from the exact projection is s times the detector's (noise and
    pull both: the inner points' projection is linear in the face; the jaw line's points slide along the
    silhouette), 0 gives the exact points; s < 0 is refused."""
    rng = np.random.default_rng(4)
    alpha = _random_face(model, rng) * 2
    pose = centred_pose(model, euler_to_rotation(0.1, -0.1, 0.05), 2.0, 512)
    exact = lm.project(model, alpha, pose)
    full, det = simulated_detections(lm, model, alpha, pose, np.random.default_rng(9))
    same, _ = simulated_detections(lm, model, alpha, pose, np.random.default_rng(9), error_scale=1.0)
    np.testing.assert_array_equal(full, same)
    assert np.abs(full - exact).mean() > 1.0  # the detector's error, px
    for s in (0.0, 0.3):
        got, d = simulated_detections(lm, model, alpha, pose, np.random.default_rng(9), error_scale=s)
        assert d == det
        np.testing.assert_allclose((got - exact)[17:], s * (full - exact)[17:], atol=1e-6)
        if s == 0:
            np.testing.assert_allclose(got, exact, atol=1e-9)
    with pytest.raises(ValueError, match="error_scale"):
        simulated_detections(lm, model, alpha, pose, rng, error_scale=-0.5)


def test_fit_starts_of_several_error_levels(small_cfg, model):
    """train.start_error_scale: s ~ U[low, high] per sample from (seed, index) alone; s = 0 draws exact points
    and no extra pose error; low > high is refused."""
    from facesynth.config import ConfigError, override
    from training.starts import FitStart

    levels = FitStart.from_config(override(small_cfg, "train.start_error_scale", [0.0, 1.0]))
    scales = [levels.scale(0, i) for i in range(200)]
    assert 0.0 <= min(scales) < 0.1 and 0.9 < max(scales) <= 1.0 and abs(np.mean(scales) - 0.5) < 0.06
    assert scales == [levels.scale(0, i) for i in range(200)] and scales[:20] != [levels.scale(1, i) for i in range(20)]
    assert FitStart.from_config(small_cfg).scale(0, 5) == 1.0
    exact = FitStart.from_config(override(small_cfg, "train.start_error_scale", [0.0, 0.0]))
    calibrated = FitStart.from_config(small_cfg)
    scene = draw_scene(0, 2, model, small_cfg)
    want = exact.landmarks.project(model, scene.alpha_gt, scene.pose)
    np.testing.assert_allclose(exact.draw(scene, model, 0).points, want, atol=1e-3)

    def pose_error(policy, index):  # degrees between the pose a_t is drawn under and the face's
        sc = draw_scene(0, index, model, small_cfg)
        pose = policy.pose(policy.draw(sc, model, 0).points, model, sc.alpha_gt, sc, 0)
        return np.degrees(np.arccos(np.clip((np.trace(pose.rotation @ sc.pose.rotation.T) - 1) / 2, -1, 1)))
    errs = [np.median([pose_error(p, i) for i in range(8)]) for p in (exact, calibrated)]
    assert errs[0] < 0.5 * errs[1]
    with pytest.raises(ConfigError, match="start_error_scale"):
        override(small_cfg, "train.start_error_scale", [0.8, 0.2])


def test_true_landmark_starts_fit_the_model_vertices_as_evaluation_does(small_cfg, model):
    """train.start_landmarks: true: the points are the model's landmark vertices + s x start_true_noise_mm of
    noise, the fit is the one `train evaluate --landmarks true` runs (closer than the calibrated fit of exact
    points: its prior is the detector's scatter), and the pose carries no detector error."""
    from facesynth.config import ConfigError, override
    from coarse.fit import fit_map
    from coarse.iterative import landmark_pose
    from coarse.landmarks import vertex_landmarks
    from training.metrics import coefficient_errors
    from training.starts import MIN_TRUE_SIGMA_MM, FitStart

    cfg = override(override(small_cfg, "train.start_landmarks", "true"), "train.start_error_scale", [0.0, 0.0])
    exact = FitStart.from_config(cfg)
    calibrated = FitStart.from_config(override(small_cfg, "train.start_error_scale", [0.0, 0.0]))
    gts, fits, cal = [], [], []
    for index in range(6):
        scene = draw_scene(0, index, model, small_cfg)
        d = exact.draw(scene, model, 0)
        assert d.detector == "true"
        np.testing.assert_allclose(d.points, vertex_landmarks(model).project(model, scene.alpha_gt, scene.pose),
                                   atol=1e-3)
        want, _ = fit_map(model, d.points.astype(np.float64), vertex_landmarks(model, MIN_TRUE_SIGMA_MM),
                          exact.prior)
        np.testing.assert_allclose(d.alpha_fit, want, atol=1e-5)
        pose = exact.pose(d.points, model, d.alpha_t, scene, 0)
        np.testing.assert_allclose(pose.rotation, landmark_pose(d.points, model, d.alpha_t).rotation, atol=1e-12)
        gts.append(scene.alpha_gt), fits.append(d.alpha_fit), cal.append(calibrated.draw(scene, model, 0).alpha_fit)
    gts = np.stack(gts)
    assert coefficient_errors(model, np.stack(fits), gts).mean() < coefficient_errors(model, np.stack(cal), gts).mean()
    noisy = FitStart.from_config(override(cfg, "train.start_error_scale", [1.0, 1.0]))
    scene = draw_scene(0, 1, model, small_cfg)
    err = noisy.draw(scene, model, 0).points - vertex_landmarks(model).project(model, scene.alpha_gt, scene.pose)
    assert 0.5 < err.std() / (noisy.true_noise_mm * scene.pose.scale) < 1.5
    with pytest.raises(ConfigError, match="start_landmarks"):
        override(small_cfg, "train.start_landmarks", "dlib")


def test_detector_noise_recovers_a_known_noise_model(model, lm):
    truth = {"follow": {"cnn": [0.7, 0.4]}, "dof": 3.0, "shared": 0.3, "group": 0.25}
    one = dataclasses.replace(lm, provenance={"detectors": {"cnn": 1}})
    rng = np.random.default_rng(2)
    recs = {k: [] for k in ("alpha", "scale", "rotation", "translation", "detected", "detector")}
    for _ in range(250):
        alpha = _random_face(model, rng)
        pose = centred_pose(model, euler_to_rotation(*rng.normal(0, 0.2, 3)), 2.0, 512)
        points, det = simulated_detections(one, model, alpha, pose, rng, truth)
        for k, v in zip(recs, (alpha, pose.scale, pose.rotation, pose.translation, points, det)):
            recs[k].append(v)
    got = detector_noise(lm, model, {k: np.asarray(v) for k, v in recs.items()})
    np.testing.assert_allclose(got["follow"]["cnn"], truth["follow"]["cnn"], atol=0.08)
    assert 2.0 <= got["dof"] <= 5.0 and abs(got["shared"] - 0.3) < 0.1 and abs(got["group"] - 0.25) < 0.1


def test_the_shipped_landmarks_carry_a_noise_model(lm):
    nm = lm.provenance["noise_model"]
    assert set(nm["follow"]) == {k for k in lm.provenance["detectors"] if k != "none"}
    assert 0 < nm["shared"] + nm["group"] < 1 and nm["dof"] > 1


# ----------------------------------------------------------------------------------------- the start policy
def test_fit_u_keeps_zero_and_starts_at_the_fit_for_the_given_share():
    from training.starts import fit_u

    u = np.linspace(0.0, 1.0, 10001)[1:]
    mapped = np.array([fit_u(x, 0.6) for x in u])
    assert fit_u(0.0, 0.6) == 0.0 and abs(np.mean(mapped == 1.0) - 0.6) < 0.01
    assert mapped.min() > 0 and mapped.max() == 1.0 and fit_u(0.5, 1.0) == 1.0 and fit_u(0.2, 0.0) == 0.2


def test_detector_pose_adds_the_configured_error():
    """The extra pose error of the fit start: zero noise and follow change nothing; the noise has the
    configured spread per axis; follow takes that share of the true pitch off; same (seed, index), same pose."""
    from render.camera import Pose, rotation_to_euler
    from training.starts import detector_pose, pose_error_rng

    true = Pose(2.0, euler_to_rotation(0.3, 0.25, 0.05), np.array([10.0, 20.0]))
    fitted = Pose(2.1, euler_to_rotation(0.32, 0.2, 0.04), np.array([11.0, 19.0]))
    same = detector_pose(fitted, true, (0, 0, 0), 0.0, pose_error_rng(1, 2))
    assert np.allclose(same.rotation, fitted.rotation, atol=1e-9) and same.scale == fitted.scale
    followed = detector_pose(fitted, true, (0, 0, 0), 0.5, pose_error_rng(1, 2))
    assert rotation_to_euler(followed.rotation)[1] == pytest.approx(0.2 - 0.5 * 0.25, abs=1e-9)
    noise = (4.0, 3.0, 1.0)
    errors = np.degrees([np.subtract(rotation_to_euler(detector_pose(fitted, true, noise, 0.0,
                                                                     pose_error_rng(1, i)).rotation),
                                     rotation_to_euler(fitted.rotation)) for i in range(400)])
    assert np.allclose(errors.std(axis=0), noise, rtol=0.15) and np.all(np.abs(errors.mean(axis=0)) < 0.5)
    a, b = (detector_pose(fitted, true, noise, 0.5, pose_error_rng(3, 7)) for _ in range(2))
    assert np.array_equal(a.rotation, b.rotation)


def test_a_start_whose_fit_fails_draws_the_detections_again(small_cfg, model, monkeypatch):
    """A FitError of one draw's fit (a heavy-tailed draw) draws the detections again from the same generator:
    the sample still exists and is the same every time; a fit that always fails is an error."""
    import training.starts as starts
    from coarse.fit import FitError

    policy = starts.start_policy(small_cfg)
    scene = draw_scene(0, 3, model, small_cfg)
    real, calls = starts.fit_map, []

    def fails_first(*args, **kwargs):
        calls.append(1)
        if len(calls) % 2 == 1:
            raise FitError("pose fit diverged to a non-positive scale")
        return real(*args, **kwargs)

    monkeypatch.setattr(starts, "fit_map", fails_first)
    a, b = policy.draw(scene, model, 0), policy.draw(scene, model, 0)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.alpha_t, b.alpha_t)
    monkeypatch.setattr(starts, "fit_map", real)
    first = policy.draw(scene, model, 0)  # without the failure: the first draw, other points
    assert not np.array_equal(first.points, a.points)

    def always(*args, **kwargs):
        raise FitError("pose fit diverged to a non-positive scale")

    monkeypatch.setattr(starts, "fit_map", always)
    with pytest.raises(FitError):
        policy.draw(scene, model, 0)


def test_make_sample_renders_the_given_alpha_t(small_cfg, model):
    from datagen.sample import make_sample
    from render.renderer import FaceRenderer

    renderer = FaceRenderer.from_config(model, small_cfg.render)
    scene = draw_scene(0, 3, model, small_cfg)
    plain = make_sample(0, 3, model, small_cfg, renderer)
    same = make_sample(0, 3, model, small_cfg, renderer, alpha_t=scene.alpha_t)
    np.testing.assert_array_equal(plain.image, same.image)
    np.testing.assert_array_equal(plain.shading, same.shading)
    at_truth = make_sample(0, 3, model, small_cfg, renderer, alpha_t=scene.alpha_gt)
    np.testing.assert_array_equal(at_truth.mask, at_truth.face_mask)
    np.testing.assert_array_equal(at_truth.scene.alpha_t, scene.alpha_gt)
    moved = dataclasses.replace(scene.pose, translation=scene.pose.translation + np.array([3.0, 0.0]))
    elsewhere = make_sample(0, 3, model, small_cfg, renderer, alpha_t=scene.alpha_gt, pose_t=moved)
    assert (elsewhere.mask != elsewhere.face_mask).sum() > 20 and not elsewhere.image[~elsewhere.mask].any()
    np.testing.assert_array_equal(elsewhere.mask[:, 3:], at_truth.mask[:, :-3])
    with pytest.raises(ValueError, match="alpha_t must have shape"):
        make_sample(0, 3, model, small_cfg, renderer, alpha_t=np.zeros(5))


def test_fit_start_samples(small_cfg, model):
    """a_t is the truth where the scene drew u = 0, the fit of simulated landmarks where u maps to 1, and a
    sample depends on (seed, index) alone."""
    from training.data import OnlineDataset
    from training.starts import FitStart, fit_u, start_policy

    policy = start_policy(small_cfg)
    assert isinstance(policy, FitStart) and policy.fitted_pose and start_policy(dataclasses.replace(
        small_cfg, train=dataclasses.replace(small_cfg.train, start="mean"))) is None
    true_pose = start_policy(dataclasses.replace(small_cfg, train=dataclasses.replace(small_cfg.train, start_pose="true")))
    assert true_pose.draw(draw_scene(0, 1, model, small_cfg), model, 0).pose_t is None
    ds = OnlineDataset(small_cfg, 0)
    seen = set()
    for index in range(40):
        scene = draw_scene(0, index, model, small_cfg)
        sample, draw = ds.sample(index)
        np.testing.assert_array_equal(sample.scene.alpha_t, draw.alpha_t)
        u = fit_u(scene.u, small_cfg.train.start_fit_prob)
        want = scene.alpha_gt + u * (draw.alpha_fit - scene.alpha_gt)
        np.testing.assert_allclose(draw.alpha_t, want, atol=1e-5)
        seen.add("truth" if u == 0 else "fit" if u == 1 else "between")
        if u == 0:
            np.testing.assert_array_equal(draw.alpha_t, scene.alpha_gt.astype(np.float32))
        # a_t is drawn under the pose inference would fit to the landmarks: near the face's, not it
        angle = np.degrees(np.arccos(np.clip((np.trace(draw.pose_t.rotation @ scene.pose.rotation.T) - 1) / 2, -1, 1)))
        assert 0 < angle < 30
        if len(seen) == 3 and index >= 6:
            break
    assert seen == {"truth", "fit", "between"}
    # the fit is the landmark fit of the sample's own face: better than the mean face
    from training.metrics import coefficient_errors

    gts = np.stack([draw_scene(0, i, model, small_cfg).alpha_gt for i in range(8)])
    fits = np.stack([policy.draw(draw_scene(0, i, model, small_cfg), model, 0).alpha_fit for i in range(8)])
    assert coefficient_errors(model, fits, gts).mean() < coefficient_errors(model, np.zeros_like(gts), gts).mean()
    # deterministic for any worker count
    def batches(workers):
        return list(DataLoader(OnlineDataset(small_cfg, 5, stop_index=4, batch_size=2), batch_size=None,
                               num_workers=workers))
    for got, want in zip(batches(2), batches(0), strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)


# ----------------------------------------------------------------------------------------- inference from the fit
@pytest.mark.parametrize("start", ["fit", "mean"])
def test_coarse_fit_starts_the_network_where_training_did(cfg, model, lm, start):
    from coarse.frame import NetworkFrame
    from coarse.stage import CoarseSettings, coarse_fit
    from datagen.sample import make_sample
    from render.renderer import FaceRenderer

    photo_cfg = load_config(overrides={"render.image_size": 256, "render.backend": "numba"})
    face = make_sample(3, 1, model, photo_cfg, FaceRenderer.from_config(model, photo_cfg.render))
    seen = []

    def predict(x, alpha):
        seen.append(alpha[0].copy())
        return alpha + 0.01

    settings = CoarseSettings(lm, cfg.fit, predict, NetworkFrame(SIZE, cfg.sampling.pose.scale_mean), 2,
                              network_start=start)
    out = coarse_fit(face.rgb, face.landmarks, model, settings, photo_cfg.render, "hog")
    assert out.method == "iterative_network" and len(seen) == 2
    np.testing.assert_array_equal(seen[0], out.fit if start == "fit" else np.zeros(model.n_coeffs, np.float32))
    np.testing.assert_allclose(out.alpha, seen[0] + 0.02, atol=1e-6)
    with pytest.raises(ValueError, match="network_start"):
        dataclasses.replace(settings, network_start="random")


def test_perspective_pairs_see_the_face_as_a_pinhole_camera_does(small_cfg, model):
    """sampling.pose.perspective_prob: that share of the scenes has a camera distance (the other draws are the
    scene's own); the face is rendered through it, the start's detections are projected through it (so they lie
    on the render's landmarks as in weak perspective), and a_t is drawn as inference draws it (weak perspective).
    Files made without the option keep their config."""
    from datagen.generate import data_config
    from datagen.sample import make_sample
    from datagen.scene import draw_distance
    from facesynth.config import ConfigError, override
    from render.renderer import FaceRenderer
    from training.starts import FitStart

    near = override(override(small_cfg, "sampling.pose.perspective_prob", 1.0), "sampling.pose.distance_mm",
                    [350.0, 400.0])
    near = override(near, "train.start_error_scale", [0.0, 0.0])
    half = [draw_distance(0, i, 0.5, (350.0, 400.0)) for i in range(200)]
    assert 0.4 < np.mean([d is None for d in half]) < 0.6
    assert all(350.0 <= d <= 400.0 for d in half if d is not None)
    assert draw_scene(0, 3, model, small_cfg).distance_mm is None
    i = next(i for i in range(200) if draw_scene(0, i, model, near).u == 0.0)
    weak_scene, scene = draw_scene(0, i, model, small_cfg), draw_scene(0, i, model, near)
    assert 350.0 <= scene.distance_mm <= 400.0
    np.testing.assert_array_equal(scene.alpha_gt, weak_scene.alpha_gt)
    np.testing.assert_array_equal(scene.pose.rotation, weak_scene.pose.rotation)

    renderer = FaceRenderer.from_config(model, near.render)
    weak, persp = make_sample(0, i, model, small_cfg, renderer), make_sample(0, i, model, near, renderer)
    moved = np.abs(persp.landmarks - weak.landmarks).max()
    assert moved > 0.5  # px at 64 px: the camera is near
    policy = FitStart.from_config(near)
    # exact points (error scale 0) through the camera move as the render's landmarks move (17-67: the jaw's
    # points follow the silhouette, not fixed vertices)
    points = policy.draw(scene, model, 0).points[17:]
    unwarped = policy.landmarks.project(model, scene.alpha_gt, scene.pose)[17:]
    shift = (persp.landmarks - weak.landmarks)[17:]
    assert np.abs((points - unwarped) - shift).mean() < 0.25 * np.abs(shift).mean()
    # u = 0, a_t = the truth: its shading is the weak-perspective render, not the camera's
    shading, mask = renderer.render_shading(scene.alpha_t, scene.pose, verts=model.draw_vertices(scene.alpha_t))
    np.testing.assert_array_equal(persp.shading, shading)
    assert not np.array_equal(persp.face_mask, mask)

    assert "perspective_prob" not in data_config(small_cfg, "numba")["sampling"]["pose"]
    assert data_config(near, "numba")["sampling"]["pose"]["distance_mm"] == [350.0, 400.0]
    with pytest.raises(ConfigError, match="perspective_prob"):
        override(small_cfg, "sampling.pose.perspective_prob", 1.5)


def test_photometric_starts_refine_the_fit_on_a_photo_sized_render(small_cfg, model):
    """train.start photometric: the same simulated detections and landmark fit as train.start fit, then the
    photometric fit on the true render at evaluate.image_size (deterministic; whether it helps is measured by
    train evaluate, not on three faces)."""
    from facesynth.config import override
    from training.metrics import coefficient_errors
    from training.starts import FitStart

    cfg = override(override(small_cfg, "train.start_fit_prob", 1.0), "evaluate.image_size", 256)
    fit = FitStart.from_config(cfg)
    photo = FitStart.from_config(override(cfg, "train.start", "photometric"))
    assert fit.photometric is None and photo.photometric is not None and photo.photo_size == 256
    errors = []
    for i in range(3):
        scene = draw_scene(0, i, model, cfg)
        a, b = fit.draw(scene, model, 0), photo.draw(scene, model, 0)
        np.testing.assert_array_equal(a.points, b.points)
        assert not np.allclose(a.alpha_fit, b.alpha_fit)
        np.testing.assert_array_equal(b.alpha_fit, photo.draw(scene, model, 0).alpha_fit)
        errors.append([coefficient_errors(model, d.alpha_fit[None], scene.alpha_gt[None]).mean() for d in (a, b)])
    assert np.mean(errors, 0)[1] < 1.5 * np.mean(errors, 0)[0], errors  # a refinement, not a different face
