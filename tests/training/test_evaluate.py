"""Evaluation: similarity-aligned vertex error, the iterative inference loop with an injected predictor,
the report's shape, error maps, and ``train evaluate`` printing one JSON object."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coarse.frame import NetworkFrame
from coarse.iterative import torch_predictor
from coarse.landmarks import vertex_landmarks
from coarse.network import IterativeNet
from coarse.stage import CoarseSettings
from datagen.faces import online_faces
from facesynth.config import load_config
from render.renderer import FaceRenderer
from training.evaluate import evaluate
from training.metrics import coefficient_errors, similarity_align, summarize, vertex_errors

SIZE = 64
REPORT_KEYS = {"faces", "landmarks", "pose_source", "mean_face", "landmark_fit", "fit_to_mean_face"}


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={"render.image_size": SIZE, "render.backend": "numba", "evaluate.error_maps": 2})


@pytest.fixture(scope="module")
def faces(small_cfg, model):
    return list(online_faces(small_cfg, 2, 5, model, FaceRenderer.from_config(model, small_cfg.render)))


def _random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q * np.sign(np.linalg.det(q))


# ----------------------------------------------------------------------------------------- metrics
def test_similarity_transformed_copy_has_zero_error():
    rng = np.random.default_rng(1)
    true = rng.normal(size=(4, 500, 3)) * 50
    moved = np.stack([2.3 * true[i] @ _random_rotation(rng).T + rng.normal(size=3) * 30 for i in range(4)])
    np.testing.assert_allclose(similarity_align(moved, true), true, atol=1e-8)
    assert vertex_errors(moved, true).max() < 1e-8
    assert vertex_errors(moved[0], true[0]).shape == (500,)
    bent = true.copy()
    bent[:, :, 2] += 0.01 * true[:, :, 0] ** 2  # not a similarity
    assert vertex_errors(bent, true).mean() > 1.0


def test_reflection_is_not_used_for_alignment():
    rng = np.random.default_rng(2)
    true = rng.normal(size=(300, 3))
    mirrored = true * np.array([-1.0, 1.0, 1.0])
    assert vertex_errors(mirrored, true).mean() > 0.1  # a proper rotation cannot undo a mirror


def test_coefficient_errors_on_the_narrow_face(model):
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.normal(size=(2, model.n_identity)), rng.uniform(size=(2, model.n_expression))], 1)
    err = coefficient_errors(model, a, a)
    assert err.shape == (2, len(model.regions["narrow_face"])) and err.max() < 1e-3
    assert coefficient_errors(model, np.zeros_like(a), a).mean() > 0.5
    assert summarize(np.array([1.0, 2.0, 6.0])) == {"mean_mm": 3.0, "median_mm": 2.0}


# ----------------------------------------------------------------------------------------- evaluation
class Oracle(torch.nn.Module):
    """A perfect predictor: returns the true coefficients of the face being evaluated."""

    def __init__(self, faces, iterations: int):
        super().__init__()
        self.gts, self.iterations, self.calls = [f.alpha_gt for f in faces], iterations, 0

    def forward(self, x, alpha_t):
        assert x.shape == (1, 2, SIZE, SIZE) and alpha_t.shape == (1, 153)
        out = torch.as_tensor(self.gts[self.calls // self.iterations])[None]
        self.calls += 1
        return out


def _settings(model, cfg, net=None, iterations=2):
    predict = None if net is None else torch_predictor(net)
    return CoarseSettings(vertex_landmarks(model), cfg.fit, predict, NetworkFrame.from_config(cfg), iterations)


def test_perfect_predictor_has_zero_error(small_cfg, faces, model, tmp_path):
    png = tmp_path / "maps.png"
    report = evaluate(faces, model, _settings(model, small_cfg, Oracle(faces, 2)), small_cfg.render, "true", 1.0,
                      pose_source="true", error_maps_png=png, n_maps=2)
    assert REPORT_KEYS <= set(report) and report["faces"] == 2 and report["pose_source"] == "true"
    assert len(report["iterations"]) == 2 and "detector_found" not in report
    for it in report["iterations"]:
        assert set(it) == {"mean_mm", "median_mm"} and it["mean_mm"] < 1e-3
    assert report["mean_face"]["mean_mm"] > 0.5
    assert 0 < report["landmark_fit"]["mean_mm"] < report["mean_face"]["mean_mm"] * 3
    assert report["fit_to_mean_face"] == pytest.approx(report["landmark_fit"]["mean_mm"] / report["mean_face"]["mean_mm"])
    assert png.stat().st_size > 10_000


def test_landmark_pose_and_untrained_network(small_cfg, faces, model):
    """The untrained network returns a_t unchanged at every pass: each iteration's error is its start's, the
    landmark fit's (``network_start`` fit) or the mean face's."""
    torch.manual_seed(0)
    report = evaluate(faces, model, _settings(model, small_cfg, IterativeNet.from_config(small_cfg)), small_cfg.render,
                      "true", 1.0, uncalibrated_fit=False)
    assert "landmark_fit_uncalibrated" not in report and report["faces"] == 2
    for it in report["iterations"]:
        assert it == pytest.approx(report["landmark_fit"], rel=1e-6)
    untrained = _settings(model, small_cfg, IterativeNet.from_config(small_cfg))
    mean_start = dataclasses.replace(untrained, network_start="mean")
    report = evaluate(faces, model, mean_start, small_cfg.render, "true", 1.0, uncalibrated_fit=False)
    for it in report["iterations"]:
        assert it == pytest.approx(report["mean_face"], rel=1e-6)
    with pytest.raises(ValueError, match="pose_source"):
        evaluate(faces[:1], model, _settings(model, small_cfg), small_cfg.render, "true", pose_source="guess")
    with pytest.raises(ValueError, match="landmarks"):
        evaluate(faces[:1], model, _settings(model, small_cfg), small_cfg.render, "guess")


def test_exact_landmarks_beat_noisy_ones_and_the_fit_stays_near_the_mean_face_without_evidence(small_cfg, faces,
                                                                                               model):
    """With exact landmarks the MAP fit moves towards the truth; with landmarks drowned in noise the prior keeps
    it near the mean face: the fit does no harm where the evidence is weak."""
    exact = evaluate(faces, model, _settings(model, small_cfg), small_cfg.render, "true", 0.0, uncalibrated_fit=False)
    noisy = evaluate(faces, model, _settings(model, small_cfg), small_cfg.render, "true", 40.0, uncalibrated_fit=False)
    assert exact["landmark_fit"]["mean_mm"] < noisy["landmark_fit"]["mean_mm"]
    assert exact["landmark_fit"]["mean_mm"] < exact["mean_face"]["mean_mm"]
    assert noisy["landmark_fit"]["mean_mm"] < 1.25 * noisy["mean_face"]["mean_mm"]


def test_detector_landmarks_report_the_found_fraction(model, tmp_path):
    """The real detector runs on the renders (photo-like size): the report says how many it found."""
    cfg = load_config(overrides={"render.image_size": 192, "render.backend": "numba"})
    renderer = FaceRenderer.from_config(model, cfg.render)
    faces = list(online_faces(cfg, 2, 11, model, renderer))
    blank = dataclasses.replace(faces[0], rgb=np.full_like(faces[0].rgb, 0.5), index=99)  # no face to find
    report = evaluate(faces + [blank], model, _settings(model, cfg), cfg.render, "detector", uncalibrated_fit=False)
    assert report["faces"] == 3 and report["landmarks"] == "detector"
    assert report["detector_found"] == pytest.approx(2 / 3) and report["detector_missed"] == [99]
    assert sum(report["detector_stages"].values()) == pytest.approx(2 / 3)
    assert report["mean_face"]["mean_mm"] > 0.5 and report["landmark_fit"]["mean_mm"] > 0


def test_cli_evaluate_prints_one_json_object(small_cfg, tmp_path):
    from training.cli import main as cli
    from training.train import FORMAT, save_checkpoint

    torch.manual_seed(0)
    net = IterativeNet.from_config(small_cfg)
    weights = tmp_path / "ckpt.pt"
    save_checkpoint(weights, {"format": FORMAT, "config": small_cfg.to_dict(), "model": net.state_dict(), "step": 0})
    args = ["evaluate", "--online", "--n", "1", "--landmarks", "true", "--device", "cpu", "--no-uncalibrated-fit"]
    result = CliRunner().invoke(cli, args + ["--weights", str(weights), "--iterations", "1", "--pose", "true"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert REPORT_KEYS <= set(report) and report["faces"] == 1 and len(report["iterations"]) == 1
    assert report["weights"] == str(weights) and (tmp_path / "eval_errors.png").exists()
    result = CliRunner().invoke(cli, args + ["--no-network", "--out", str(tmp_path / "e.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "iterations" not in report and report["weights"] is None and report["landmark_fit"]["mean_mm"] > 0
    bad = CliRunner().invoke(cli, args + ["--landmark-noise", "-1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output


def test_uniform_albedo_faces_are_the_same_scenes_without_skin_texture(model, tmp_path):
    """--albedo uniform: the same face, pose, light and background; the skin one colour (its mean), so the
    face's pixels vary less; the eyes keep their materials."""
    from datagen.faces import scene_albedo
    from datagen.scene import draw_scene
    from training.cli import main as cli

    cfg = load_config(overrides={"render.image_size": 128, "render.backend": "numba"})
    renderer = FaceRenderer.from_config(model, cfg.render)
    textured, uniform = (next(online_faces(cfg, 1, 4, model, renderer, albedo=a)) for a in ("textured", "uniform"))
    assert np.array_equal(textured.alpha_gt, uniform.alpha_gt) and textured.pose.to_dict() == uniform.pose.to_dict()
    np.testing.assert_array_equal(textured.landmarks, uniform.landmarks)
    face = textured.fragments.mask
    np.testing.assert_array_equal(textured.rgb[~face], uniform.rgb[~face])  # the background
    assert np.abs(textured.rgb[face] - uniform.rgb[face]).max() > 0.05
    alb = scene_albedo(draw_scene(4, 0, model, cfg), model, "uniform")
    skin = alb[model.regions["face"]]
    assert np.ptp(skin, axis=0).max() == 0 and not np.allclose(alb[model.regions["teeth"]], skin[0])
    with pytest.raises(ValueError, match="albedo"):
        next(online_faces(cfg, 1, 4, model, renderer, albedo="gray"))
    args = ["evaluate", "--online", "--n", "1", "--landmarks", "true", "--no-network", "--no-uncalibrated-fit",
            "--out", str(tmp_path / "e.png")]
    result = CliRunner().invoke(cli, args + ["--albedo", "uniform"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["albedo"] == "uniform"
    bad = CliRunner().invoke(cli, [a for a in args if a != "--online"] + ["--albedo", "uniform", "--data",
                                                                           str(tmp_path)])
    assert bad.exit_code != 0 and "--albedo uniform renders faces on the fly" in bad.output


def test_perspective_faces_magnify_what_is_near(model):
    """The perspective option: a near camera magnifies the nose tip's offset from the face centre more than the
    ears', as a phone photo does; a far camera converges to the weak-perspective render."""
    from datagen.scene import model_centre
    from render.camera import Pose, euler_to_rotation, perspective_warp, project

    pose = Pose(2.0, euler_to_rotation(0.3, 0.1, 0.0), np.array([256.0, 256.0]))
    pts = model.mean.astype(np.float64)
    c = model_centre(model)
    weak, near, far = (project(p, pose) for p in (pts, perspective_warp(pts, pose, 400.0, c),
                                                   perspective_warp(pts, pose, 1e8, c)))
    centre = project(c[None], pose)[0, :2]
    nose, ear = model.landmarks68[30], int(np.argmin(pts[:, 2]))  # nose tip, the rearmost vertex
    grow = lambda k: np.linalg.norm(near[k, :2] - centre) / np.linalg.norm(weak[k, :2] - centre)  # noqa: E731
    assert grow(nose) > 1.05 and grow(ear) < 0.95
    np.testing.assert_allclose(near[:, 2], weak[:, 2], atol=1e-6)  # depth order kept
    np.testing.assert_allclose(far, weak, atol=1e-2)
    cfg = load_config(overrides={"render.image_size": 64, "render.backend": "numba"})
    renderer = FaceRenderer.from_config(model, cfg.render)
    a = next(online_faces(cfg, 1, 3, model, renderer))
    b = next(online_faces(cfg, 1, 3, model, renderer, distance_mm=(350.0, 400.0)))
    assert np.abs(a.rgb - b.rgb).max() > 0.05 and np.array_equal(a.alpha_gt, b.alpha_gt)


def test_the_network_starts_from_the_photometric_fit(small_cfg, faces, model):
    """With ``refine.photometric`` the landmark fit is refined by the render's shading and the network's passes
    start from that refined fit: the untrained network returns it unchanged."""
    torch.manual_seed(0)
    settings = dataclasses.replace(_settings(model, small_cfg, IterativeNet.from_config(small_cfg)),
                                   photometric=small_cfg.refine.photometric)
    report = evaluate(faces, model, settings, small_cfg.render, "true", 1.0, uncalibrated_fit=False)
    assert report["photometric_fit"]["mean_mm"] != pytest.approx(report["landmark_fit"]["mean_mm"], rel=1e-3)
    for it in report["iterations"]:
        assert it == pytest.approx(report["photometric_fit"], rel=1e-6)
