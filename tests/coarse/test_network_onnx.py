"""The iterative network on ONNX Runtime (coarse/network_runtime.py): the export gives torch's coefficients and
carries what inference needs (frame, colour, step, provenance), the shipped export is the shipped weights', a
stale export is not used under ``auto`` and is an error under ``onnx``, ``refine``'s coarse face is the same on
either runtime, and ``train export-onnx`` recognises the iterative network's weights."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coarse.network import FORMAT, IterativeNet, export_onnx, load_iterative
from facesynth.config import ConfigError, load_config, override
from facesynth.io import file_digest

pytest.importorskip("onnxruntime")
from coarse.network_runtime import ONNX_FORMAT, OnnxIterative, matching_onnx  # noqa: E402
from facesynth.onnx_model import onnx_path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "data" / "iterative_weights.pt"
PHOTO = REPO / "data" / "astronaut.png"


def _inputs(rng, batch: int, channels: int, size: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Random network inputs: (B, C, S, S) image + shading in [0, 1], (B, K) coefficients ~ N(0, 0.5^2)."""
    return (rng.uniform(0, 1, (batch, channels, size, size)).astype(np.float32),
            (0.5 * rng.standard_normal((batch, k))).astype(np.float32))


@pytest.fixture(scope="module", params=["mean", "dense"])
def tiny(request, tmp_path_factory):
    """A small random iterative network's weights file (64 px, widths 4-8-8-16, a non-zero correction, BatchNorm
    statistics away from (0, 1)) of each head, and its ONNX export."""
    from training.loop import save_checkpoint

    cfg = override(override(override(load_config(), "render.image_size", 64), "train.widths", [4, 8, 8, 16]),
                   "train.head", request.param)
    cfg = override(cfg, "train.input_mask", "landmarks")
    torch.manual_seed(0)
    net = IterativeNet.from_config(cfg)
    torch.nn.init.normal_(net.correction.weight, std=0.05)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, {"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(), "step": 7,
                           "provenance": {"what": "a test network", "faces": 3}})
    meta = export_onnx(path)
    return path, Path(meta["path"]), meta


def test_the_export_gives_torch_coefficients_and_what_inference_needs(tiny):
    path, onnx_file, meta = tiny
    assert onnx_file == onnx_path(path) and meta["format"] == ONNX_FORMAT and meta["step"] == "7"
    assert meta["source_sha256"] == file_digest(path)
    weights, ort = load_iterative(path), OnnxIterative(onnx_file)
    assert (ort.frame, ort.color_input, ort.step, ort.provenance) == (weights.frame, weights.color_input, 7,
                                                                      {"what": "a test network", "faces": 3})
    assert ort.config == weights.config and ort.frame.input_mask == "landmarks"
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # the batch is dynamic
        x, a = _inputs(rng, batch, 2, 64, weights.net.n_coeffs)
        want = weights.predictor("cpu")(x, a)
        got = ort.predictor()(x, a)
        assert got.shape == want.shape == (batch, 153) and got.dtype == np.float32
        assert np.abs(want - a).max() > 1e-2  # the network moves the face: the comparison means something
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="CPU only"):
        ort.predictor("cuda")


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped iterative network")
def test_the_shipped_export_is_the_shipped_weights():
    """data/iterative_weights.onnx was made from data/iterative_weights.pt and gives its coefficients to < 1e-4
    (coefficients ~ 1) on random inputs of its frame."""
    net, why = matching_onnx(SHIPPED)
    assert net is not None, why
    weights = load_iterative(SHIPPED)
    assert (net.frame, net.color_input, net.step, net.provenance) == (weights.frame, weights.color_input,
                                                                      weights.step, weights.provenance)
    x, a = _inputs(np.random.default_rng(1), 4, 4 if net.color_input else 2, net.frame.size, weights.net.n_coeffs)
    np.testing.assert_allclose(net.predictor()(x, a), weights.predictor()(x, a), atol=1e-4, rtol=0)


def test_a_stale_export_is_not_used_under_auto_and_an_error_under_onnx(tiny, tmp_path):
    from reconstruct.models import load_network_stage

    path, onnx_file, _ = tiny
    cfg = load_config()
    stage = load_network_stage(str(path), cfg, "cpu")
    assert (stage.runtime, stage.device, stage.why) == ("onnxruntime", "cpu", "")
    assert isinstance(stage.network, OnnxIterative) and stage.note() == "onnxruntime"
    assert load_network_stage(str(path), override(cfg, "refine.runtime", "torch"), "cpu").runtime == "torch"
    other = tmp_path / "other.pt"
    shutil.copy(path, other)
    shutil.copy(onnx_file, onnx_path(other))
    assert matching_onnx(other)[0] is not None  # the same bytes: the same weights
    with open(other, "ab") as f:
        f.write(b"\0")  # other weights now
    stale = load_network_stage(str(other), cfg, "cpu")
    assert stale.runtime == "torch" and "made from other weights" in stale.why
    assert stale.note() == f"torch, {stale.why}"
    with pytest.raises(ConfigError, match="refine.runtime onnx: other.onnx was made from other weights"):
        load_network_stage(str(other), override(cfg, "refine.runtime", "onnx"), "cpu")
    onnx_path(other).unlink()
    assert load_network_stage(str(other), cfg, "cpu").why == "no other.onnx"
    with pytest.raises(ConfigError, match="no other.onnx"):
        load_network_stage(str(other), override(cfg, "refine.runtime", "onnx"), "cpu")
    with pytest.raises(ConfigError, match="CPU only"):
        load_network_stage(str(path), override(cfg, "refine.runtime", "onnx"), "cuda")
    with pytest.raises(ConfigError, match="refine.runtime must be auto, onnx or torch"):
        override(cfg, "refine.runtime", "gpu")
    detail = tmp_path / "detail.onnx"  # an ONNX file of another network is not this network's export
    shutil.copy(REPO / "data" / "detail_weights.onnx", detail)
    net, why = matching_onnx(tmp_path / "detail.pt")
    assert net is None and "not a facesynth iterative network export" in why


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped iterative network")
def test_refine_coarse_face_is_the_same_on_either_runtime(cfg, model):
    """refine's coarse stage (the shipped settings: landmark fit, photometric fit, one network pass) on the
    shipped photo: the coarse face with the network on ONNX Runtime is torch's to 1e-4."""
    from coarse.detect import find_faces, load_image
    from coarse.stage import coarse_fit
    from reconstruct.models import load_coarse

    photo = load_image(PHOTO)
    det = find_faces(photo, cfg.detect, largest=True).faces[0]
    img = photo.astype(np.float32) / 255.0
    fits = {}
    for runtime in ("onnx", "torch"):
        coarse, network = load_coarse(None, override(cfg, "refine.runtime", runtime), "cpu")
        assert network.runtime == {"onnx": "onnxruntime", "torch": "torch"}[runtime]
        fits[runtime] = coarse_fit(img, det.landmarks, model, coarse, cfg.render, det.detector)
    a, b = fits["onnx"], fits["torch"]
    assert a.method == b.method == "iterative_network" and len(a.steps) == len(b.steps) == cfg.refine.iterations
    np.testing.assert_allclose(a.steps[-1], b.steps[-1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.alpha, b.alpha, atol=1e-4, rtol=0)
    np.testing.assert_allclose(a.pose.rotation, b.pose.rotation, atol=1e-5)
    np.testing.assert_allclose(a.pose.translation, b.pose.translation, atol=1e-3)


def test_train_export_onnx_recognises_the_iterative_network(tiny, tmp_path):
    from training.cli import main as train

    path, onnx_file, _ = tiny
    out = tmp_path / "x.onnx"
    r = CliRunner().invoke(train, ["export-onnx", str(path), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"{out}: {ONNX_FORMAT} of {path} (step 7" in r.output
    assert out.read_bytes() == onnx_file.read_bytes()  # the export is deterministic
    other = tmp_path / "other.pt"
    torch.save({"format": "something/1"}, other)
    r = CliRunner().invoke(train, ["export-onnx", str(other)])
    assert r.exit_code == 1 and "neither an iterative nor a detail network checkpoint" in r.output
    r = CliRunner().invoke(train, ["export-onnx", str(path), str(other), "--out", str(out)])
    assert r.exit_code == 2 and "--out needs exactly one WEIGHTS" in r.output
