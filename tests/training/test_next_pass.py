"""Pairs for the network's later passes (``train cache-next``) and runs that start from trained weights
(``train.init``)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coarse.network import load_iterative
from facesynth.config import load_config, override
from training.cache import check_cache, read_cache_info, write_cache
from training.cli import main as cli
from training.next_pass import first_pass_rows, write_next_pass
from training.train import TrainingError, train_iterative

SIZE = 48
N = 12


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={
        "render.image_size": SIZE, "render.backend": "numba", "train.start": "fit", "train.cache_chunk": 4,
        "train.start_fit_prob": 0.6, "train.batch": 4, "train.steps": 2, "train.val_samples": 4,
        "train.val_every": 1, "train.checkpoint_every": 1, "train.device": "cpu", "train.workers": 0,
        "train.widths": [4, 8, 8, 16], "train.lr": 1e-2})


@pytest.fixture(scope="module")
def made(small_cfg, tmp_path_factory):
    """A cache, a network trained on it, and the cache with its next-pass pairs."""
    tmp = tmp_path_factory.mktemp("next")
    cache = tmp / "pairs.h5"
    write_cache(small_cfg, cache, N, 5, progress=False)
    cfg = override(small_cfg, "train.cache", str(cache))
    train_iterative(cfg, tmp / "run", progress=False)
    out = tmp / "pairs2.h5"
    result = write_next_pass(small_cfg, cache, tmp / "run" / "ckpt.pt", out, progress=False)
    return cache, tmp / "run" / "ckpt.pt", out, result


def test_next_pass_pairs_start_where_the_network_ended(small_cfg, made):
    cache, weights, out, result = made
    rows = first_pass_rows(cache)
    assert 0 < len(rows) < N and result["next_pass"] == len(rows) and result["n"] == N + len(rows)
    net = load_iterative(weights).net
    with h5py.File(cache, "r") as src, h5py.File(out, "r") as f:
        for k in ("inputs", "alpha_gt", "alpha_t", "index"):  # the source's pairs come first, unchanged
            np.testing.assert_array_equal(f[k][:N], src[k][:])
        for j in (0, len(rows) - 1):
            row, new = int(rows[j]), N + j
            np.testing.assert_allclose(src["alpha_t"][row], src["alpha_fit"][row], atol=1e-5)  # a first-pass pair
            with torch.no_grad():
                a_1 = net(torch.from_numpy(src["inputs"][row][None] / np.float32(255)),
                          torch.from_numpy(src["alpha_t"][row][None]))[0].numpy()
            np.testing.assert_allclose(f["alpha_t"][new], a_1, atol=1e-5)
            assert not np.allclose(f["alpha_t"][new], src["alpha_t"][row])  # the network moved it
            np.testing.assert_array_equal(f["alpha_gt"][new], src["alpha_gt"][row])
            assert f["index"][new] == src["index"][row]
            # the same image (masked by the shading of a_t: equal where both shadings cover the face); the
            # shading is a_1's
            both = (f["inputs"][new][-1] > 0) & (src["inputs"][row][-1] > 0)
            assert both.mean() > 0.1
            np.testing.assert_array_equal(f["inputs"][new][0][both], src["inputs"][row][0][both])
            assert np.abs(f["inputs"][new][-1].astype(int) - src["inputs"][row][-1].astype(int)).max() > 0
    info = check_cache(out, small_cfg)  # trains with the source's config
    assert info["config"]["next_pass"]["pairs"] == len(rows) and info["config"]["next_pass"]["source_n"] == N
    assert write_next_pass(small_cfg, cache, weights, out, progress=False)["rendered"] == 0  # done: nothing to do
    with pytest.raises(TrainingError, match="already holds next-pass pairs"):
        write_next_pass(small_cfg, out, weights, out.with_name("x.h5"), progress=False)


def test_a_run_starts_from_given_weights_and_resumes_from_its_own(small_cfg, made, tmp_path):
    _, weights, out, _ = made
    cfg = override(override(small_cfg, "train.cache", str(out)), "train.init", str(weights))
    first = train_iterative(cfg, tmp_path / "run", steps=1, progress=False)
    scratch = train_iterative(override(cfg, "train.init", ""), tmp_path / "scratch", steps=1, progress=False)
    assert first["train_loss"] != scratch["train_loss"]  # the first step starts from the weights
    ref = train_iterative(cfg, tmp_path / "ref", progress=False)
    again = train_iterative(cfg, tmp_path / "run", progress=False)  # resumed: its own checkpoint
    assert again["resumed_from"] == 1 and again["train_loss"] == ref["train_loss"]
    with pytest.raises(TrainingError, match="another network"):
        train_iterative(override(cfg, "train.widths", [4, 8, 8, 8]), tmp_path / "other", progress=False)
    # the dense head starts from the mean head's weights as the same function: the same first loss
    dense = train_iterative(override(cfg, "train.head", "dense"), tmp_path / "dense", steps=1, progress=False)
    assert dense["train_loss"] == pytest.approx(first["train_loss"], rel=1e-4)


def test_cli_cache_next(small_cfg, made, tmp_path):
    cache, weights, _, _ = made
    cfg = tmp_path / "small.yaml"
    cfg.write_text(f"render:\n  image_size: {SIZE}\n  backend: numba\ntrain:\n  cache_chunk: 4\n"
                   "  widths: [4, 8, 8, 16]\n")
    r = CliRunner().invoke(cli, ["cache-next", "--config", str(cfg), "--cache", str(cache), "--weights",
                                 str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.h5")])
    assert r.exit_code == 1 and "missing.pt not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["cache-next", "--config", str(cfg), "--cache", str(cache), "--weights",
                                 str(weights), "--out", str(tmp_path / "o.h5"), "--quiet", "--n", "2"])
    assert r.exit_code == 0, r.output
    n_next = 2
    assert f"{N + n_next} pairs, {n_next} of them" in r.output and read_cache_info(tmp_path / "o.h5")["n"] == N + n_next
    assert (tmp_path / "o.h5.png").stat().st_size > 5_000


def test_a_next_pass_pose_that_fails_keeps_the_first_pass_pose(small_cfg, made, monkeypatch):
    """When the pose fit to a_1's landmark vertices fails (FitError), the pair is still made, drawn under
    the pose of the first pass's a_t."""
    import training.starts as starts
    from coarse.fit import FitError
    from training.next_pass import NextPassSource

    cache, weights, out, _ = made
    rows = first_pass_rows(cache)
    real, seen = starts.landmark_pose, []

    def first_fails(points, model, alpha):
        seen.append(np.asarray(alpha).copy())
        if len(seen) == 1:
            raise FitError("pose fit diverged to a non-positive scale")
        return real(points, model, alpha)

    monkeypatch.setattr(starts, "landmark_pose", first_fails)
    rec = NextPassSource(small_cfg, cache, rows, weights, 5, 0, 1).record(0)
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(rec["alpha_t"], f["alpha_t"][N], atol=1e-5)  # a_1, as without the failure
    with h5py.File(cache, "r") as src:
        np.testing.assert_array_equal(seen[1], src["alpha_t"][rows[0]])  # the fallback: the first pass's a_t


def test_next_pass_pairs_keep_the_start_policy_of_their_file(small_cfg, made, tmp_path, monkeypatch):
    """A cache of other detector error levels (train.start_error_scale) gets next-pass pairs whose pose carries
    that file's error level, whatever the config says; the file trains with the config's other keys."""
    from training.starts import FitStart

    _, weights, _, _ = made
    levels = tmp_path / "levels.h5"
    write_cache(override(small_cfg, "train.start_error_scale", [0.0, 0.0]), levels, 6, 9, progress=False)
    with pytest.raises(TrainingError, match="another config .*start_error_scale"):
        check_cache(levels, small_cfg)
    real, scales = FitStart.pose, []

    def pose(self, *args):
        scales.append(self.error_scale)
        return real(self, *args)

    monkeypatch.setattr(FitStart, "pose", pose)
    result = write_next_pass(small_cfg, levels, weights, tmp_path / "levels2.h5", progress=False)
    assert result["next_pass"] > 0 and set(scales) == {(0.0, 0.0)}


def test_next_pass_feeds_a_network_its_inputs_as_it_was_trained(small_cfg, made, tmp_path):
    """Weights trained with ``train.input_mask: landmarks`` see each source pair cut to its landmarks' region."""
    from coarse.frame import NetworkFrame

    cache = made[0]
    cut = override(override(small_cfg, "train.input_mask", "landmarks"), "train.cache", str(cache))
    train_iterative(cut, tmp_path / "run", progress=False)
    weights = load_iterative(tmp_path / "run" / "ckpt.pt")
    assert weights.frame == NetworkFrame.from_config(cut) and weights.frame.input_mask == "landmarks"
    out = tmp_path / "cut2.h5"
    write_next_pass(small_cfg, cache, tmp_path / "run" / "ckpt.pt", out, progress=False, n=1)
    row = int(first_pass_rows(cache)[0])
    with h5py.File(cache, "r") as src, h5py.File(out, "r") as f:
        x = src["inputs"][row][None] / np.float32(255)
        region = weights.frame.region(src["points"][row])
        with torch.no_grad():
            want = weights.net(torch.from_numpy(x * region), torch.from_numpy(src["alpha_t"][row][None]))[0].numpy()
            whole = weights.net(torch.from_numpy(x), torch.from_numpy(src["alpha_t"][row][None]))[0].numpy()
        np.testing.assert_allclose(f["alpha_t"][N], want, atol=1e-5)
        assert not np.allclose(want, whole, atol=1e-5)  # the cut changes what the network says
