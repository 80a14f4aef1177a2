"""Training: geometry loss, online data, optimisation, exact resume after an interruption, NaN stop, CLI errors.

Everything runs on the CPU at 64 x 64 pixels with batches of 4.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from facesynth.config import load_config
from training import train as train_module
from training.cli import main as cli
from training.data import OnlineDataset, fixed_batches
from training.loss import GeometryLoss
from coarse.network import IterativeNet, load_iterative
from training.train import (TrainingError, default_batches, load_checkpoint,
                            train_iterative)

SIZE = 64


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={
        "render.image_size": SIZE, "render.backend": "numba", "train.online": True, "train.batch": 4,
        "train.steps": 4, "train.val_samples": 4, "train.val_every": 2, "train.checkpoint_every": 2,
        "train.device": "cpu", "train.workers": 0, "train.lr": 1e-4, "train.widths": [8, 16, 32, 64]})


def _losses(run_dir) -> list[tuple[int, float]]:
    with open(run_dir / "log.csv", newline="") as f:
        return [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f)]


# ----------------------------------------------------------------------------------------- loss
def test_gram_loss_equals_explicit_vertex_mse(model):
    rng = np.random.default_rng(0)
    n_id, n_exp = model.n_identity, model.n_expression

    def draw(b):
        return np.concatenate([rng.normal(size=(b, n_id)), rng.uniform(size=(b, n_exp))], 1)

    x, y = draw(3), draw(3)
    loss = GeometryLoss(model, "face")(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    vx = model.vertices(torch.tensor(x), region="face")  # (B, |face|, 3) float64
    vy = model.vertices(torch.tensor(y), region="face")
    explicit = ((vx - vy) ** 2).mean(dim=(1, 2)).mean()
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert abs(loss.item() - explicit.item()) <= 1e-4 * explicit.item()
    assert GeometryLoss(model)(torch.tensor(x), torch.tensor(x)).item() == pytest.approx(0.0, abs=1e-6)


def test_aligned_loss_is_the_similarity_aligned_vertex_mse_and_ignores_size(model):
    """train.loss_align: similarity: the vertex MSE after Umeyama alignment (as the evaluation aligns), with
    the gradient of that minimum; a larger face costs what alignment leaves, far less than unaligned."""
    from training.metrics import vertex_errors

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(4, model.n_identity)), rng.uniform(size=(4, model.n_expression))], 1)
    y = np.concatenate([rng.normal(size=(4, model.n_identity)), rng.uniform(size=(4, model.n_expression))], 1)
    loss = GeometryLoss(model, "face", align=True)
    got = loss.per_sample(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    want = (vertex_errors(model.vertices(x, region="face"), model.vertices(y, region="face")) ** 2).mean(1) / 3
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4)
    assert np.all(want < 0.9 * GeometryLoss(model).per_sample(torch.tensor(x), torch.tensor(y)).numpy())
    # y's face scaled by 1.1 (the model's mean scaled: a face the fit could not tell apart from y's under weak
    # perspective), rounded to the model's span: aligned it costs only the rounding
    idx = model.regions["face"]
    A = model.basis[idx].reshape(-1, model.n_coeffs).astype(np.float64)
    target = 1.1 * model.vertices(y[:1], region="face")[0]
    z = np.linalg.lstsq(A, (target - model.mean[idx]).reshape(-1), rcond=None)[0][None]
    rounding = (vertex_errors(model.vertices(z, region="face"), target[None]) ** 2).mean() / 3
    # (aligned to y, not to 1.1 y: the rounding's size shrinks by 1.1)
    assert loss(torch.tensor(z), torch.tensor(y[:1])).item() == pytest.approx(rounding / 1.1 ** 2, rel=1e-3)
    assert GeometryLoss(model)(torch.tensor(z), torch.tensor(y[:1])).item() > 5 * rounding
    # the gradient of the minimum (a finite difference along a random direction)
    xt = torch.tensor(x[:1], dtype=torch.float64, requires_grad=True)
    loss(xt, torch.tensor(y[:1])).backward()
    d = torch.tensor(rng.normal(size=x[:1].shape))
    h = 1e-3
    numeric = (loss(torch.tensor(x[:1]) + h * d, torch.tensor(y[:1])) - loss(torch.tensor(x[:1]) - h * d,
                                                                            torch.tensor(y[:1]))) / (2 * h)
    assert (xt.grad * d).sum().item() == pytest.approx(numeric.item(), rel=1e-3)


# ----------------------------------------------------------------------------------------- data
def test_online_data_is_deterministic_for_any_worker_count_and_start(small_cfg):
    def batches(workers, start=0):
        ds = OnlineDataset(small_cfg, 5, start_index=start, stop_index=6, batch_size=2)
        return list(DataLoader(ds, batch_size=None, num_workers=workers))

    ref = batches(0)
    assert [b["index"].tolist() for b in ref] == [[0, 1], [2, 3], [4, 5]]
    assert ref[0]["input"].shape == (2, 2, SIZE, SIZE) and ref[0]["alpha_gt"].shape == (2, 153)
    for got, want in zip(batches(2), ref, strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    for got, want in zip(batches(0, start=2), ref[1:], strict=True):  # resume from sample 2
        assert torch.equal(got["input"], want["input"])
    # single records: worker w of W takes start + w, + W, ...
    single = OnlineDataset(small_cfg, 5, start_index=1, stop_index=5)
    assert [r["index"] for r in single] == [1, 2, 3, 4]
    np.testing.assert_array_equal(single.record(4)["input"], ref[2]["input"][0].numpy())


# ----------------------------------------------------------------------------------------- optimisation
def test_adam_steps_lower_the_loss_on_a_fixed_batch(small_cfg, model):
    batch = fixed_batches(small_cfg, 0, 4, 4)[0]
    torch.manual_seed(0)
    net = IterativeNet.from_config(small_cfg)
    loss_fn = GeometryLoss(model)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    losses = []
    for _ in range(6):
        loss = loss_fn(net(batch["input"], batch["alpha_t"]), batch["alpha_gt"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


# ----------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def uninterrupted(small_cfg, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    result = train_iterative(small_cfg, run, progress=False)
    return run, result


def test_run_folder(uninterrupted):
    run, result = uninterrupted
    assert result["step"] == 4 and result["resumed_from"] == 0 and np.isfinite(result["val_loss"])
    assert {p.name for p in run.iterdir()} >= {"ckpt.pt", "log.csv", "curves.png", "config.json"}
    ckpt = load_checkpoint(run / "ckpt.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["render"]["image_size"] == SIZE
    assert ckpt["data_position"] == {"source": "online", "seed": 0, "next_index": 16}
    with open(run / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"]
    assert [bool(r["val_loss"]) for r in rows] == [False, True, False, True]
    assert all(float(r["samples_per_s"]) > 0 for r in rows)


def test_export_keeps_the_network_and_drops_the_optimiser(uninterrupted, tmp_path):
    import json

    run, _ = uninterrupted
    prov = tmp_path / "prov.json"
    prov.write_text(json.dumps({"samples": 16}))
    out = tmp_path / "w.pt"
    result = CliRunner().invoke(cli, ["export", str(run / "ckpt.pt"), str(out), "--provenance", str(prov)])
    assert result.exit_code == 0, result.output
    w = load_checkpoint(out)
    assert "optimizer" not in w and "rng" not in w and w["provenance"] == {"samples": 16} and w["step"] == 4
    a, b = load_iterative(run / "ckpt.pt"), load_iterative(out)
    x, alpha = torch.rand(2, 2, SIZE, SIZE), torch.randn(2, a.net.n_coeffs)
    with torch.no_grad():
        torch.testing.assert_close(a.net(x, alpha), b.net(x, alpha))
    assert b.frame.size == SIZE and b.step == 4 and b.provenance == {"samples": 16} and not b.color_input
    assert [m.out_channels for m in b.net.modules() if isinstance(m, torch.nn.Conv2d)][:2] == [8, 8]  # train.widths
    bad = CliRunner().invoke(cli, ["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")])
    assert bad.exit_code != 0 and "not found" in bad.output and "Traceback" not in bad.output


def test_resume_after_interruption_equals_uninterrupted_run(small_cfg, uninterrupted, tmp_path, monkeypatch,
                                                           dying):
    """Killed after step 3 (checkpoint at 2): the same call again resumes at 2 and ends where the
    uninterrupted run ended, with the same losses and parameters."""
    real_loader = train_module.online_loader
    run = tmp_path / "run"
    monkeypatch.setattr(train_module, "online_loader", dying(real_loader, 3))
    with pytest.raises(KeyboardInterrupt):
        train_iterative(small_cfg, run, progress=False)
    assert load_checkpoint(run / "ckpt.pt")["step"] == 2
    monkeypatch.setattr(train_module, "online_loader", real_loader)
    result = train_iterative(small_cfg, run, progress=False)

    ref_run, ref = uninterrupted
    assert result["resumed_from"] == 2 and result["step"] == 4
    assert _losses(run) == _losses(ref_run)  # rows 1-2 from the first call, 3-4 after the resume
    assert result["val_loss"] == ref["val_loss"]
    a, b = load_checkpoint(run / "ckpt.pt"), load_checkpoint(ref_run / "ckpt.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["data_position"] == b["data_position"]


def test_resume_refuses_another_config(small_cfg, uninterrupted, tmp_path):
    from facesynth.config import override

    run, _ = uninterrupted
    with pytest.raises(TrainingError, match=r"another config \(train\.seed"):
        train_iterative(override(small_cfg, "train.seed", 7), run, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_cfg, tmp_path):
    fixed = fixed_batches(small_cfg, 0, 4, 4)[0]
    bad = dict(fixed, alpha_gt=torch.full_like(fixed["alpha_gt"], float("nan")))

    def batches(step):
        for s in range(step, 10):
            yield bad if s == 2 else fixed

    with pytest.raises(TrainingError, match=r"loss is nan at step 3: stopped; last good checkpoint: .*step 2"):
        train_iterative(small_cfg, tmp_path, batches=batches, progress=False)
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 2
    net = load_iterative(tmp_path / "ckpt.pt").net
    with torch.no_grad():
        assert torch.isfinite(net(fixed["input"], fixed["alpha_t"])).all()


def test_training_from_shards_resumes_by_batches_consumed(small_cfg, tmp_path):
    from datagen.generate import RenderPlan, render_dataset
    from facesynth.config import override

    render_dataset(small_cfg, RenderPlan(tmp_path / "shards", 16, 0, 8), workers=1, progress=False)
    cfg = override(override(small_cfg, "train.online", False), "train.data", str(tmp_path / "shards"))
    ref = train_iterative(cfg, tmp_path / "ref", steps=3, progress=False)
    train_iterative(cfg, tmp_path / "run", steps=2, progress=False)  # then continued to 3 steps
    result = train_iterative(cfg, tmp_path / "run", steps=3, progress=False)
    assert result["resumed_from"] == 2 and _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    ckpt = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert ckpt["data_position"] == {"source": "shards", "batches": 3}
    assert result["train_loss"] == ref["train_loss"]


def test_default_batches_needs_an_existing_data_folder(small_cfg, tmp_path):
    from facesynth.config import override

    cfg = override(override(small_cfg, "train.online", False), "train.data", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="training data folder .*missing not found"):
        default_batches(cfg, 4, 0, 1, 0, False)


# ----------------------------------------------------------------------------------------- CLI
def _one_line_error(result, text: str):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("Error: ") and text in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_rejects_bad_values_with_one_line(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["iterative", "--online", "--batch", "0", "--out", str(tmp_path / "r")])
    _one_line_error(r, "train.batch must be >= 1; got 0")
    r = runner.invoke(cli, ["iterative", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    _one_line_error(r, "nowhere not found")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("train:\n  lrr: 0.1\n")
    r = runner.invoke(cli, ["iterative", "--config", str(bad_cfg), "--out", str(tmp_path / "r")])
    _one_line_error(r, "unknown config key 'train.lrr'")
    not_weights = tmp_path / "w.pt"
    not_weights.write_text("hello")
    r = runner.invoke(cli, ["evaluate", "--weights", str(not_weights)])
    _one_line_error(r, "is not a readable checkpoint")
    r = runner.invoke(cli, ["evaluate", "--weights", str(tmp_path / "none.pt")])
    _one_line_error(r, "weights file")
    r = runner.invoke(cli, ["iterative", "--lr", "fast"])  # a click type error: usage + one error line
    assert r.exit_code == 2 and "Invalid value for '--lr'" in r.output and "Traceback" not in r.output


def test_cli_help_shows_yaml_defaults():
    out = CliRunner().invoke(cli, ["iterative", "--help"]).output
    assert "[pipeline.yaml: 2000]" in out and "[pipeline.yaml: 0.0001]" in out


def test_the_weight_average_from_a_step_is_exported_and_resumes_exactly(small_cfg, tmp_path):
    """train.average_from: the checkpoints from that step on are averaged (batch counters: the last); a run
    continued checkpoint by checkpoint ends with the average of an uninterrupted one; export ships the average
    (--last: the last weights)."""
    from facesynth.config import override

    cfg = override(override(small_cfg, "train.average_from", 2), "train.checkpoint_every", 1)
    whole = train_iterative(cfg, tmp_path / "whole", progress=False)
    steps, weights = tmp_path / "steps", []
    for n in (1, 2, 3, 4):
        train_iterative(override(cfg, "train.steps", n), steps, progress=False)
        weights.append(load_checkpoint(steps / "ckpt.pt")["model"])
    a, b = load_checkpoint(tmp_path / "whole" / "ckpt.pt"), load_checkpoint(steps / "ckpt.pt")
    assert whole["step"] == 4 and a["average"]["count"] == b["average"]["count"] == 3
    for k, w in a["average"]["model"].items():
        if w.is_floating_point():
            want = torch.stack([s[k].double() for s in weights[1:]]).mean(0)
            torch.testing.assert_close(w.double(), want, rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(w, weights[-1][k])
        torch.testing.assert_close(b["average"]["model"][k], w, rtol=1e-6, atol=1e-8)
    assert any(not torch.equal(w, a["model"][k]) for k, w in a["average"]["model"].items())
    for extra, want in (([], a["average"]["model"]), (["--last"], a["model"])):
        out = tmp_path / f"w{len(extra)}.pt"
        r = CliRunner().invoke(cli, ["export", str(tmp_path / "whole" / "ckpt.pt"), str(out), *extra])
        assert r.exit_code == 0, r.output
        w = load_checkpoint(out)
        assert all(torch.equal(w["model"][k], want[k]) for k in want)
        assert ("averaged" in w) == (not extra) and ("average of 3 checkpoints (steps 2-4)" in r.output) == (not extra)
    assert "average" not in load_checkpoint(train_iterative(small_cfg, tmp_path / "plain", progress=False)
                                            ["checkpoint"])
