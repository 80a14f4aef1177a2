"""Evaluation: similarity-aligned vertex error, the iterative inference loop with an injected predictor,
the report's shape, error maps, and ``train evaluate`` printing one JSON object."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facesynth.config import load_config
from training.evaluate import evaluate, online_faces
from training.metrics import coefficient_errors, similarity_align, summarize, vertex_errors
from coarse.network import IterativeNet

SIZE = 64
REPORT_KEYS = {"mean_face", "iterations", "landmark_fit", "samples", "pose_source"}


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={"render.image_size": SIZE, "render.backend": "numba", "evaluate.error_maps": 2})


@pytest.fixture(scope="module")
def faces(small_cfg):
    return list(online_faces(small_cfg, 2))


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


def test_perfect_predictor_has_zero_error(small_cfg, faces, tmp_path):
    png = tmp_path / "maps.png"
    report = evaluate(Oracle(faces, 2), faces, small_cfg, iterations=2, pose_source="true", error_maps_png=png)
    assert set(report) == REPORT_KEYS and report["samples"] == 2 and report["pose_source"] == "true"
    assert len(report["iterations"]) == 2
    for it in report["iterations"]:
        assert set(it) == {"mean_mm", "median_mm"} and it["mean_mm"] < 1e-3
    assert report["mean_face"]["mean_mm"] > 0.5
    assert 0 < report["landmark_fit"]["mean_mm"] < report["mean_face"]["mean_mm"] * 3
    assert png.stat().st_size > 10_000


def test_landmark_pose_and_untrained_network(small_cfg, faces):
    """The untrained network returns a_t = 0 at every pass: each iteration's error is the mean face's."""
    torch.manual_seed(0)
    report = evaluate(IterativeNet.from_config(small_cfg), faces, small_cfg, iterations=2,
                      pose_source="landmarks", landmark_baseline=False)
    assert set(report) == REPORT_KEYS - {"landmark_fit"}
    assert report["pose_source"] == "landmarks" and report["samples"] == 2
    for it in report["iterations"]:
        assert it == pytest.approx(report["mean_face"], rel=1e-6)
    with pytest.raises(ValueError, match="pose_source"):
        evaluate(IterativeNet.from_config(small_cfg), faces[:1], small_cfg, pose_source="guess")


def test_cli_evaluate_prints_one_json_object(small_cfg, tmp_path):
    from training.cli import main as cli
    from training.train import FORMAT, save_checkpoint

    torch.manual_seed(0)
    net = IterativeNet.from_config(small_cfg)
    weights = tmp_path / "ckpt.pt"
    save_checkpoint(weights, {"format": FORMAT, "config": small_cfg.to_dict(), "model": net.state_dict(), "step": 0})
    result = CliRunner().invoke(cli, ["evaluate", "--weights", str(weights), "--online", "--n", "1",
                                      "--iterations", "1", "--pose", "true", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == REPORT_KEYS and report["samples"] == 1 and len(report["iterations"]) == 1
    assert (tmp_path / "eval_errors.png").exists()
