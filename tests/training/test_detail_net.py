"""The detail network: shapes and mask, its synthetic data (target = detailed - smooth depth), the loss (the
photometric term reproduces the render at the truth), training steps and exact resume, the pipeline stage
(off cleanly, offsets the refined mesh along the view axis), ``refine evaluate`` stages and the CLIs.

Everything runs on the CPU with tiny networks, 64-128 pixel frames and 32-pixel crops.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facesynth.config import load_config
from coarse.landmarks import vertex_landmarks
from coarse.stage import CoarseSettings, synthetic_start
from datagen.synthetic import detail_frame_config, draw_face, render_scene
from training.detail_data import DetailDataset, collate, face_example, random_crops
from training.detail_net import FORMAT, DetailLoss, DetailNet, detail_features, load_detail

SIZE = 64
TINY = (4, 8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread (more only spin against other processes on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={
        "refine.resolution": SIZE, "render.backend": "numba", "datagen.detail_uv_size": 256,
        "detail.channels": list(TINY), "detail.crop": 32, "detail.crops_per_face": 2, "detail.batch": 2,
        "detail.steps": 4, "detail.val_samples": 2, "detail.val_every": 2, "detail.checkpoint_every": 2,
        "detail.device": "cpu", "detail.workers": 0, "detail.lr": 1e-2, "refine.weights": "data/none.pt"})


@pytest.fixture(scope="module")
def scene(model):
    """One face at 128 px (wrinkles a few pixels wide), landmark-fit coarse start, with the smooth render."""
    from render.renderer import FaceRenderer

    cfg = detail_frame_config(load_config(overrides={"datagen.detail_uv_size": 256}), 128)
    renderer = FaceRenderer.from_config(model, cfg.render, image_size=128, backend="numba")
    face = draw_face(cfg, model, 0, 3)
    start = synthetic_start("landmarks", model, cfg.evaluate.landmark_noise_px)
    return render_scene(face, model, renderer, start, np.random.default_rng(0), smooth=True), renderer


def _batch(example: dict, crop: int, count: int, seed: int = 0) -> dict:
    crops = random_crops(example, crop, count, np.random.default_rng(seed))
    return collate([dict(c, index=i) for i, c in enumerate(crops)])


# ----------------------------------------------------------------------------------------- network
def test_output_shape_units_and_mask():
    torch.manual_seed(0)
    net = DetailNet(TINY)
    torch.nn.init.normal_(net.head.weight)  # the head starts at zero: make the output non-trivial
    x = torch.randn(2, 6, 37, 30)
    x[:, 5] = (torch.rand(2, 37, 30) > 0.5).float()
    out = net.eval()(x, torch.tensor([0.5, 1.0]))
    assert out.shape == (2, 1, 37, 30) and out.dtype == torch.float32
    assert (out[x[:, 5:6] == 0] == 0).all() and out.abs().sum() > 0
    # the offset is predicted in pixel units: twice the pixel size, twice the millimetres
    np.testing.assert_allclose(net(x[:1], 1.0).detach(), 2 * net(x[:1], 0.5).detach(), rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected x \(B, 6, H, W\); got \(2, 5, 8, 8\)"):
        net(torch.zeros(2, 5, 8, 8), 1.0)
    assert 3e5 < sum(p.numel() for p in DetailNet().parameters()) < 1e6


def test_features_are_normalised_inside_the_mask():
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 24), bool)
    mask[4:16, 5:20] = True
    image = rng.uniform(0.2, 0.8, (20, 24, 3)).astype(np.float32)
    normals = np.tile(np.array([0.0, 0.0, 1.0], np.float32), (20, 24, 1))
    f = detail_features(image, normals, mask, 2.0)
    assert f.shape == (6, 20, 24) and f.dtype == np.float32
    assert abs(np.median(f[0][mask])) < 1e-6  # gray / median - 1
    f2 = detail_features(image * 0.5, normals, mask, 2.0)  # a dimmer light or darker skin: the same input
    np.testing.assert_allclose(f2, f, atol=1e-5)
    assert (f[:, ~mask] == 0).all() and (f[5][mask] == 1).all() and (f[4][mask] == 1).all()


# ----------------------------------------------------------------------------------------- data and loss
def test_target_is_detailed_minus_smooth_depth_and_marks_the_wrinkles(scene, model):
    sc, renderer = scene
    f = sc.face
    plain = renderer.render_face(f.alpha_gt, f.pose, f.albedo, f.light, f.background)
    detailed = renderer.render_face(f.alpha_gt, f.pose, f.albedo, f.light, f.background,
                                    displacement_uv=f.displacement_uv)
    m = sc.mask
    np.testing.assert_array_equal(sc.target[m], (detailed.depth - plain.depth)[m])
    assert (sc.target[~m] == 0).all()
    assert np.abs(sc.target[m & sc.wrinkles]).mean() > 5 * np.abs(sc.target[m & ~sc.wrinkles]).mean()
    assert sc.target[m & sc.wrinkles].min() < -0.2  # grooves of 0.25-1 mm
    # the input's mask channel and the coarse normals are the pipeline's (flat albedo, frontal light)
    ex = face_example(sc, 2.0)
    assert ex["input"].shape == (6, 128, 128) and (ex["input"][5] == m).all()
    np.testing.assert_allclose(ex["input"][2:5][:, m], sc.coarse.normals[m].T, atol=1e-6)
    assert not np.allclose(sc.coarse.normals[m], sc.smooth.normals[m], atol=1e-3)  # a fit, not the truth


def test_photometric_term_reproduces_the_render_at_the_truth(scene, cfg):
    sc, _ = scene
    b = _batch(face_example(sc, 2.0), 32, 4)
    loss = DetailLoss.from_config(cfg)
    at_truth = loss.terms(b["target"], b)
    at_zero = loss.terms(torch.zeros_like(b["target"]), b)
    assert at_truth["displacement"] == 0 and at_truth["gradient"] == 0
    assert at_truth["photometric"] < 1e-5 < at_zero["photometric"]  # the renderer's own shading model
    assert at_zero["displacement"] > 0.01 and at_zero["gradient"] > 0.01 and at_zero["smoothness"] == 0
    total = loss(torch.zeros_like(b["target"]), b)
    assert total.item() == pytest.approx(sum(loss.weights[k] * v.item() for k, v in at_zero.items()), rel=1e-6)


def test_crops_lie_on_the_face_and_the_stream_is_deterministic(small_cfg):
    cfg = detail_frame_config(small_cfg)
    first = list(DetailDataset(cfg, 5, 0, stop_index=4, batch_size=2))
    assert [b["index"].tolist() for b in first] == [[0, 1], [2, 3]]
    b = first[0]
    assert b["input"].shape == (2, 6, 32, 32) and b["target"].shape == (2, 1, 32, 32)
    assert b["light_direction"].shape == (2, 3) and b["light_shininess"].shape == b["pixel_mm"].shape == (2,)
    assert (b["mask"][:, 0, 16, 16] == 1).all()  # each crop is centred on a face pixel
    again = list(DetailDataset(cfg, 5, 2, stop_index=4, batch_size=2))  # resumed at crop 2
    assert all(torch.equal(again[0][k], first[1][k]) for k in first[1])


# ----------------------------------------------------------------------------------------- training
def test_adam_steps_lower_the_loss_on_a_fixed_batch(scene, cfg):
    sc, _ = scene
    b = _batch(face_example(sc, 2.0), 32, 4)
    torch.manual_seed(0)
    net, loss_fn = DetailNet((8, 16)), DetailLoss.from_config(cfg)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = loss_fn(net(b["input"], b["pixel_mm"]), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def _losses(run_dir) -> list[tuple[int, float]]:
    with open(run_dir / "log.csv", newline="") as f:
        return [(int(r["step"]), float(r["train_loss"])) for r in csv.DictReader(f)]


def test_resume_after_interruption_equals_uninterrupted_run(small_cfg, tmp_path, monkeypatch, dying):
    from training import detail as detail_module
    from training.detail import train_detail

    ref = train_detail(small_cfg, tmp_path / "ref", progress=False)
    assert ref["step"] == 4 and ref["coarse"] == "landmark_fit" and np.isfinite(ref["val_loss"])
    assert {p.name for p in (tmp_path / "ref").iterdir()} >= {"ckpt.pt", "log.csv", "curves.png", "config.json"}

    real = detail_module.batch_loader
    monkeypatch.setattr(detail_module, "batch_loader", dying(real, 3))
    with pytest.raises(KeyboardInterrupt):
        train_detail(small_cfg, tmp_path / "run", progress=False)
    monkeypatch.setattr(detail_module, "batch_loader", real)
    result = train_detail(small_cfg, tmp_path / "run", progress=False)
    assert result["resumed_from"] == 2 and _losses(tmp_path / "run") == _losses(tmp_path / "ref")
    a, b = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True) for d in ("run", "ref"))
    assert a["format"] == FORMAT and a["data_position"] == b["data_position"] == {
        "source": "online", "seed": 0, "next_crop": 8}
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    loaded = load_detail(tmp_path / "ref" / "ckpt.pt")
    assert loaded.net.channels == TINY and not loaded.net.training and loaded.step == 4
    assert loaded.highpass_sigma_px == small_cfg.detail.highpass_sigma_px
    # another coarse start is another run
    from training.loop import TrainingError

    weights = tmp_path / "iterative.pt"
    weights.write_bytes(b"")
    with pytest.raises(TrainingError, match="another coarse"):
        train_detail(small_cfg, tmp_path / "ref", steps=5, coarse_weights=str(weights), progress=False)


# ----------------------------------------------------------------------------------------- pipeline
@pytest.fixture(scope="module")
def photo(scene):
    """The 128 px render as a photo and its true landmarks as the detection."""
    from coarse.detect import Detection

    sc, _ = scene
    return (sc.truth.rgb * 255).round().astype(np.uint8), Detection(np.array([0, 0, 128, 128.0]),
                                                                     sc.truth.landmarks.astype(np.float64), 1.0)


def test_detail_stage_switches_off_cleanly(photo, model, small_cfg):
    from reconstruct.pipeline import reconstruct_face

    img, det = photo
    calls = []

    def zeros(image, normals, mask, pixel_mm):
        calls.append((image.shape, normals.shape, mask.shape, pixel_mm))
        return np.zeros(mask.shape, np.float32)

    coarse = CoarseSettings(vertex_landmarks(model, 2.0), small_cfg.fit)
    plain = reconstruct_face(img, det, model, small_cfg, coarse, resolution=SIZE, sfs_params=small_cfg.refine.sfs)
    zero = reconstruct_face(img, det, model, small_cfg, coarse, resolution=SIZE, sfs_params=small_cfg.refine.sfs,
                            detail=zeros)
    assert calls == [((SIZE, SIZE, 3), (SIZE, SIZE, 3), (SIZE, SIZE), pytest.approx(1 / plain.sfs_frame.scale))]
    assert plain.detail_displacement is None and (zero.detail_displacement == 0).all()
    np.testing.assert_array_equal(zero.refined_depth, plain.refined_depth)
    np.testing.assert_array_equal(zero.refined_normals, plain.refined_normals)
    assert "detail_s" in zero.timings and "detail_s" not in plain.timings


def test_displacement_moves_the_refined_mesh_along_the_view_axis(photo, model, small_cfg):
    from reconstruct.pipeline import depth_grid_mesh, reconstruct_face

    img, det = photo
    rng = np.random.default_rng(1)
    known = rng.uniform(-1.0, 0.5, (SIZE, SIZE)).astype(np.float32)
    rec = reconstruct_face(img, det, model, small_cfg, CoarseSettings(vertex_landmarks(model, 2.0), small_cfg.fit),
                           resolution=SIZE, sfs=False, detail=lambda image, normals, mask, px: known)
    m = rec.sfs_mask
    np.testing.assert_array_equal(rec.detail_displacement, np.where(m, known, 0))
    v0, t0, _ = depth_grid_mesh(rec.coarse_depth, m, rec.sfs_frame)
    v1, t1, _ = depth_grid_mesh(rec.refined_depth, m, rec.sfs_frame)
    np.testing.assert_array_equal(t0, t1)
    view = np.asarray(rec.sfs_frame.rotation)[2]  # the camera's +z (towards the camera) in the model frame
    np.testing.assert_allclose(v1 - v0, known[m][:, None] * view[None], atol=2e-5)


def test_refine_evaluate_reports_every_stage(small_cfg):
    from reconstruct.evaluate import STAGES, evaluate_sfs

    def halfway(image, normals, mask, pixel_mm):
        return np.full(mask.shape, -0.1, np.float32)

    rep = evaluate_sfs(small_cfg, n=1, coarse="true", detail=halfway)
    assert set(STAGES) <= set(rep) and set(rep["smooth_albedo"]) == set(STAGES)
    assert set(rep["seconds_per_image"]) == {"sfs", "detail"}
    keys = set(rep["coarse"])
    assert all(set(rep[s]) == keys for s in STAGES) and "change_percent_detail_sfs" in rep
    # a constant offset changes no normal and no depth after removing the mean
    assert rep["detail"]["depth_rmse_mm"] == pytest.approx(rep["coarse"]["depth_rmse_mm"], abs=1e-5)
    plain = evaluate_sfs(small_cfg, n=1, coarse="true")
    assert set(plain) & set(STAGES) == {"coarse", "sfs"} and set(plain["seconds_per_image"]) == {"sfs"}
    assert plain["sfs"] == rep["sfs"]


# ----------------------------------------------------------------------------------------- CLIs
def _tiny_weights(path, cfg):
    from training.loop import save_checkpoint

    torch.manual_seed(0)
    net = DetailNet.from_config(cfg)
    torch.nn.init.normal_(net.head.weight, std=0.1)  # a non-zero offset
    save_checkpoint(path, {"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(), "step": 0})
    return path


def test_refine_sfs_with_and_without_the_detail_stage(small_cfg, tmp_path):
    from pathlib import Path

    from reconstruct.cli import main as refine

    photo = Path(__file__).resolve().parents[2] / "data" / "astronaut.png"
    weights = _tiny_weights(tmp_path / "tiny.pt", small_cfg)
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["sfs", str(photo), "--out", str(out), "--resolution", str(SIZE), "--no-sfs", "--device", "cpu"]
    r = runner.invoke(refine, args + ["--detail-weights", str(weights)])
    assert r.exit_code == 0, r.output
    assert f"detail {weights}" in r.output and (out / "detail.png").exists()
    params = json.loads((out / "params.json").read_text())
    assert params["detail"]["png_scale_mm"] > 0 and params["detail_weights"] == str(weights)
    r = runner.invoke(refine, args + ["--no-detail", "--force"])
    assert r.exit_code == 0, r.output
    assert "detail off (--no-detail)" in r.output and not (out / "detail.png").exists()
    assert json.loads((out / "params.json").read_text())["detail"] is None
    r = runner.invoke(refine, args + ["--force", "--detail-weights", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and r.output.strip() == f"Error: weights file {tmp_path / 'missing.pt'} not found"


def test_train_detail_cli_errors_are_one_line(tmp_path):
    from training.cli import main as train

    runner = CliRunner()
    r = runner.invoke(train, ["detail", "--online", "--batch", "0", "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and r.output.strip().splitlines()[-1] == "Error: detail.batch must be >= 1; got 0"
    r = runner.invoke(train, ["detail", "--coarse-weights", str(tmp_path / "none.pt"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "Error: weights file" in r.output and "Traceback" not in r.output
    r = runner.invoke(train, ["detail", "--data", str(tmp_path), "--online"])
    assert r.exit_code == 2 and "either --data or --online" in r.output
    assert "[pipeline.yaml: 20000]" in runner.invoke(train, ["detail", "--help"]).output


def test_refine_evaluate_with_the_real_front_end(small_cfg):
    """``--coarse detector``: the detector runs on each render and the calibrated fit gives the coarse start;
    the report says how many faces it found."""
    from reconstruct.evaluate import evaluate_sfs

    rep = evaluate_sfs(small_cfg, n=2, coarse="detector", resolution=160)
    assert rep["coarse_start"] == "detector" and 0 < rep["detector_found"] <= 1
    assert rep["samples"] == round(2 * rep["detector_found"]) and rep["coarse"]["normal_deg_mean"] > 0


def test_detail_faces_read_back_from_shards_as_drawn(small_cfg, model, tmp_path):
    """One face source: a detail dataset written by ``datagen render`` reads back (datagen.faces.shard_faces)
    as the faces drawn on the fly, with its fine detail and wrinkles; a plain dataset is refused."""
    from datagen.generate import RenderPlan, render_dataset
    from datagen.synthetic import detail_faces, detail_frame_config

    cfg = detail_frame_config(small_cfg)
    render_dataset(cfg, RenderPlan(tmp_path / "d", 2, 5, 2), workers=1, progress=False)
    read = list(detail_faces(cfg, model, SIZE, tmp_path / "d", n=2))
    drawn = [draw_face(cfg, model, 5, i) for i in range(2)]
    assert [f.index for f in read] == [0, 1] and all(f.wrinkles_space == "image" for f in read)
    for r, d in zip(read, drawn):
        np.testing.assert_allclose(r.alpha_gt, d.alpha_gt, atol=1e-6)
        np.testing.assert_allclose(r.albedo, d.albedo, atol=1e-5)
        assert r.displacement_uv.shape == d.displacement_uv.shape
        assert np.abs(r.displacement_uv - d.displacement_uv).max() < 0.01  # 16-bit quantisation
    plain = detail_frame_config(small_cfg)
    import dataclasses

    plain = dataclasses.replace(plain, datagen=dataclasses.replace(plain.datagen, detail=False))
    render_dataset(plain, RenderPlan(tmp_path / "p", 1, 5, 1), workers=1, progress=False)
    with pytest.raises(FileNotFoundError, match="without datagen.detail"):
        list(detail_faces(plain, model, SIZE, tmp_path / "p", n=1))
