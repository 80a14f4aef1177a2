"""The detail network on ONNX Runtime (training/detail_runtime.py): the export gives torch's output, the shipped
export is the shipped weights', a stale or missing export falls back to torch, ``train export-onnx`` and the
runtime choice of ``refine`` (``detail.runtime``)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from facesynth.config import ConfigError, load_config, override
from facesynth.io import file_digest
from training.detail_net import FORMAT, DetailNet, export_onnx, load_detail
from training.detail_runtime import ONNX_FORMAT, OnnxDetail, detail_features, matching_onnx, onnx_path

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "data" / "detail_weights.pt"


def _features(rng, h: int, w: int, batch: int = 1) -> np.ndarray:
    """(B, 6, H, W) random network input with a mask of ~70 % (channel 5)."""
    x = rng.standard_normal((batch, 6, h, w)).astype(np.float32)
    x[:, 5] = rng.uniform(size=(batch, h, w)) < 0.7
    return x


def _torch(net: DetailNet, x: np.ndarray, pixel_mm: float) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(torch.from_numpy(x), pixel_mm).numpy()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random detail network's weights file (channels 4-8-16, non-zero head) and its ONNX export."""
    from training.loop import save_checkpoint

    cfg = override(load_config(), "detail.channels", [4, 8, 16])
    torch.manual_seed(0)
    net = DetailNet.from_config(cfg)
    torch.nn.init.normal_(net.head.weight, std=0.1)
    for m in net.modules():  # BatchNorm statistics away from (0, 1): the export must fold them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, {"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(), "step": 3})
    meta = export_onnx(path)
    return path, Path(meta["path"]), meta


def test_the_export_gives_torch_output_at_any_size(tiny):
    path, onnx_file, meta = tiny
    assert onnx_file == onnx_path(path) and meta["format"] == ONNX_FORMAT and meta["step"] == "3"
    assert meta["source_sha256"] == file_digest(path) and meta["pad_multiple"] == "4"
    net, ort = load_detail(path).net, OnnxDetail(onnx_file)
    rng = np.random.default_rng(0)
    for h, w in ((32, 32), (37, 50), (9, 4)):  # sizes that need padding: done outside the graph
        x = _features(rng, h, w)
        want = _torch(net, x, 0.7)[0, 0]
        got = ort.offset(x[0], 0.7)
        assert got.shape == (h, w) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        assert np.abs(want).max() > 1e-3 and (got[x[0, 5] == 0] == 0).all()


def test_the_shipped_export_is_the_shipped_weights(tmp_path):
    """data/detail_weights.onnx was made from data/detail_weights.pt and gives its output to ~1e-5 mm on a
    random 256 x 256 frame (the frame refine runs), through the predictor's own features too."""
    net, why = matching_onnx(SHIPPED)
    assert net is not None, why
    torch_weights = load_detail(SHIPPED)
    rng = np.random.default_rng(1)
    x = _features(rng, 256, 256)
    np.testing.assert_allclose(net.offset(x[0], 0.67), _torch(torch_weights.net, x, 0.67)[0, 0], atol=1e-5, rtol=0)
    image = rng.uniform(0.2, 0.8, (96, 80, 3)).astype(np.float32)
    normals = np.dstack([rng.uniform(-0.3, 0.3, (96, 80, 2)), np.ones((96, 80))]).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    mask = np.zeros((96, 80), bool)
    mask[10:90, 8:70] = True
    a = net.predictor()(image, normals, mask, 0.67)
    b = torch_weights.predictor("cpu")(image, normals, mask, 0.67)
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert net.highpass_sigma_px == torch_weights.highpass_sigma_px
    np.testing.assert_array_equal(detail_features(image, normals, mask, 2.0)[5], mask)


def test_a_stale_or_missing_export_is_not_used(tiny, tmp_path):
    path, onnx_file, _ = tiny
    other = tmp_path / "other.pt"
    shutil.copy(path, other)
    assert matching_onnx(other) == (None, "no other.onnx")
    shutil.copy(onnx_file, onnx_path(other))
    assert matching_onnx(other)[0] is not None  # the same bytes: the same weights
    with open(other, "ab") as f:
        f.write(b"\0")  # other weights now
    net, why = matching_onnx(other)
    assert net is None and "made from other weights" in why
    onnx_path(other).write_bytes(b"not onnx")
    net, why = matching_onnx(other)
    assert net is None and "not a readable ONNX file" in why


def test_refine_picks_the_runtime(tiny, tmp_path):
    from reconstruct.models import load_detail_stage

    path, _, _ = tiny
    cfg = load_config()
    stage = load_detail_stage(str(path), cfg, "cpu")
    assert (stage.runtime, stage.device, stage.why) == ("onnxruntime", "cpu", "")
    assert "(onnxruntime)" in stage.note()
    forced = load_detail_stage(str(path), override(cfg, "detail.runtime", "torch"), "cpu")
    assert forced.runtime == "torch"
    mask = np.ones((40, 40), bool)
    image = np.random.default_rng(2).uniform(0.3, 0.7, (40, 40, 3)).astype(np.float32)
    normals = np.zeros((40, 40, 3), np.float32)
    normals[..., 2] = 1
    np.testing.assert_allclose(stage.predictor(image, normals, mask, 0.5), forced.predictor(image, normals, mask, 0.5),
                               atol=1e-5, rtol=0)
    lone = tmp_path / "lone.pt"
    shutil.copy(path, lone)
    fallback = load_detail_stage(str(lone), cfg, "cpu")
    assert fallback.runtime == "torch" and fallback.why == "no lone.onnx" and "no lone.onnx" in fallback.note()
    with pytest.raises(ConfigError, match="no lone.onnx"):
        load_detail_stage(str(lone), override(cfg, "detail.runtime", "onnx"), "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        load_detail_stage(str(path), override(cfg, "detail.runtime", "onnx"), "cuda")
    with pytest.raises(ConfigError, match="detail.runtime"):
        override(cfg, "detail.runtime", "gpu")


def test_auto_answers_cpu_without_torch_on_a_machine_without_gpu(monkeypatch):
    import reconstruct.models as models

    monkeypatch.setattr(models, "GPU_DEVICE_FILES", ())
    monkeypatch.setattr(models.sys, "platform", "linux")
    monkeypatch.setitem(__import__("sys").modules, "training.loop", None)  # importing it would fail
    assert models.resolve_device("auto") == "cpu" and models.resolve_device("cpu") == "cpu"


def test_train_export_onnx_cli(tiny, tmp_path):
    from training.cli import main as train

    path, onnx_file, _ = tiny
    out = tmp_path / "x.onnx"
    r = CliRunner().invoke(train, ["export-onnx", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"{out}: {ONNX_FORMAT} of {path} (step 3" in r.output
    assert out.read_bytes() == onnx_file.read_bytes()  # the export is deterministic
    r = CliRunner().invoke(train, ["export-onnx", str(tmp_path / "missing.pt")])
    assert r.exit_code == 1 and "Error: weights file" in r.output and "Traceback" not in r.output
