"""datagen render: determinism, resume after a real kill, refusal to mix datasets, reading back."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datagen.generate import DatagenError, RenderPlan, merge_manifests, render_dataset
from datagen.loader import iter_records, make_loader
from facesynth.config import load_config

SIZE = 64


@pytest.fixture(scope="module")
def cfg():
    return load_config(overrides={"render.image_size": SIZE, "render.backend": "numba"})


def _render(cfg, out, n, shard, workers=1, rank=0, nodes=1, seed=0):
    return render_dataset(cfg, RenderPlan(Path(out), n, seed, shard, rank, nodes), workers=workers, progress=False)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    _render(cfg, out, 10, 4, workers=1)
    return out


def test_same_bytes_for_any_worker_count_and_node_split(cfg, reference, tmp_path):
    ref = _shard_bytes(reference)
    assert list(ref) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    _render(cfg, tmp_path / "w2", 10, 4, workers=2)
    assert _shard_bytes(tmp_path / "w2") == ref
    split = tmp_path / "nodes"
    for rank in (1, 0):
        _render(cfg, split, 10, 4, workers=1, rank=rank, nodes=2)
    assert _shard_bytes(split) == ref
    merged = merge_manifests(split)
    assert merged["complete"] and merged["samples_done"] == 10


def test_merge_reports_missing_node(cfg, tmp_path):
    _render(cfg, tmp_path, 10, 4, rank=0, nodes=2)
    with pytest.raises(DatagenError, match="incomplete"):
        merge_manifests(tmp_path)


def test_refuses_other_config_or_seed(cfg, tmp_path):
    _render(cfg, tmp_path, 3, 4)
    from facesynth.config import override

    other = override(cfg, "sampling.pose.yaw_std_deg", 5.0)
    with pytest.raises(DatagenError, match="another config"):
        _render(other, tmp_path, 3, 4)
    with pytest.raises(DatagenError, match="seed"):
        _render(cfg, tmp_path, 3, 4, seed=1)


def test_unwritable_dir_is_one_line_error(cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatagenError, match="cannot write"):
        _render(cfg, blocker / "sub", 3, 4)


def test_more_samples_extends_and_keeps_finished_shards(cfg, reference, tmp_path):
    _render(cfg, tmp_path, 6, 4)  # shard 0 full, shard 1 partial (2 of 4)
    first = (tmp_path / "shard-000000.tar").stat().st_mtime_ns
    _render(cfg, tmp_path, 10, 4)
    assert (tmp_path / "shard-000000.tar").stat().st_mtime_ns == first  # never rewritten
    assert _shard_bytes(tmp_path) == _shard_bytes(reference)


def test_resume_removes_what_a_killed_writer_left(cfg, tmp_path):
    """Temporary files of this node's shards and of its manifest (a kill during either write) are removed by
    the next run; another node's are not this node's to remove."""
    from facesynth.io import TMP_MARK

    _render(cfg, tmp_path, 4, 2)
    stale = [tmp_path / f"manifest.json{TMP_MARK}host-1", tmp_path / f"shard-000001.tar{TMP_MARK}host-1"]
    other = tmp_path / f"manifest.node-1-of-2.json{TMP_MARK}host-2"
    for p in stale + [other]:
        p.write_bytes(b"partial")
    _render(cfg, tmp_path, 4, 2)
    assert not any(p.exists() for p in stale) and other.exists()


def test_kill_and_resume_gives_the_same_shards(cfg, tmp_path):
    """A real `datagen render` process is SIGKILLed mid-run; the same command finishes the job. One sample per
    shard, so the kill lands mid-run however fast the samples are."""
    reference = tmp_path / "reference"
    _render(cfg, reference, 10, 1, workers=1)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "datagen.cli", "render", "--n", "10", "--shard-size", "1", "--out", str(out),
           "--workers", "1", "--image-size", str(SIZE), "--backend", "numba", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shard-000000.tar").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "shard-000000.tar").exists(), proc.stderr.read().decode()[-500:]
    done_before = set(p.name for p in out.glob("shard-*.tar"))
    assert len(done_before) < 10  # it was really killed mid-run
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-500:]
    assert not list(out.glob("*.tmp-*"))
    assert _shard_bytes(out) == _shard_bytes(reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["samples_done"] == 10


def test_cli_bad_input_is_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "datagen.cli", "render", "--n", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0
    assert "--n must be positive" in res.stderr


def test_read_back_keys_shapes_and_geometry(cfg, reference):
    from morphable.model import load_model
    from render.camera import Pose, project

    model = load_model(cfg.resolve_path(cfg.model.path))
    recs = list(iter_records(reference))
    assert [r["key"] for r in recs] == [f"{i:09d}" for i in range(10)]
    for r in recs:
        p = r["params"]
        assert r["image"].shape == (SIZE, SIZE) and r["shading"].shape == (SIZE, SIZE)
        assert r["rgb"].shape == (SIZE, SIZE, 3) and r["depth"].shape == (SIZE, SIZE)
        assert len(p["alpha_gt"]) == len(p["alpha_t"]) == 153
        # the image is masked by a_t's silhouette, which is where the shading image is non-zero
        assert not r["image"][~r["mask"]].any()
        assert (r["shading"][r["mask"]] > 0).mean() > 0.99
        # the mask is the silhouette of a_t: rasterise a_t again and compare
        pose = Pose.from_dict(p["pose"])
        alpha_t = np.asarray(p["alpha_t"], np.float32)
        from render.raster import NumbaRasterizer

        ids = NumbaRasterizer().rasterize(project(model.vertices(alpha_t), pose), model.triangles, SIZE, SIZE)
        assert ((ids >= 0) == r["mask"]).mean() > 0.999
        # landmarks are the projected true landmarks and land on the true face
        lm = np.asarray(p["landmarks"])
        expect = project(model.landmarks(np.asarray(p["alpha_gt"], np.float32)), pose)[:, :2]
        assert np.allclose(lm, expect, atol=1e-3)
        inside = np.clip(np.floor(lm).astype(int), 0, SIZE - 1)
        assert r["depth_mask"][inside[:, 1], inside[:, 0]].mean() > 0.9


def test_loader_batches(reference):
    batches = list(make_loader(reference, 4, shuffle_buffer=0, repeat=False))
    assert [b["input"].shape[0] for b in batches] == [4, 4, 2]
    b = batches[0]
    assert tuple(b["input"].shape[1:]) == (2, SIZE, SIZE)
    assert b["input"].dtype.is_floating_point and float(b["input"].max()) <= 1.0
    assert tuple(b["alpha_gt"].shape) == (4, 153) and b["index"].tolist() == [0, 1, 2, 3]


def test_cli_workers_out_of_range_is_one_line(tmp_path):
    """`--workers -1` used to render with --n 10 and die in multiprocessing with --n 40."""
    res = subprocess.run([sys.executable, "-m", "datagen.cli", "render", "--n", "40", "--workers", "-1",
                          "--out", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0
    assert "--workers must lie in [0, " in res.stderr


@pytest.mark.parametrize("kwargs, image_size, message", [
    ({"workers": -1}, SIZE, "--workers"), ({"workers": 10**6}, SIZE, "--workers"), ({"seed": -1}, SIZE, "--seed"),
    ({"nodes": 0}, SIZE, "--num-nodes"), ({}, 0, "--image-size")])
def test_out_of_range_numbers_are_refused(cfg, tmp_path, kwargs, image_size, message):
    from facesynth.config import override

    with pytest.raises(DatagenError, match=message):
        _render(override(cfg, "render.image_size", image_size), tmp_path, 40, 4, **kwargs)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_png_encoder_round_trips_through_pillow():
    import io

    from PIL import Image

    from datagen.shards import _png

    rng = np.random.default_rng(0)
    for arr in (rng.integers(0, 256, (7, 5), dtype=np.uint8), rng.integers(0, 65536, (6, 9), dtype=np.uint16),
                rng.integers(0, 256, (4, 3, 3), dtype=np.uint8), np.zeros((1, 1), np.uint8)):
        back = np.asarray(Image.open(io.BytesIO(_png(arr))))
        assert back.shape == arr.shape
        np.testing.assert_array_equal(back.astype(arr.dtype), arr)
    with pytest.raises(ValueError, match="expected"):
        _png(np.zeros((4, 4), np.float32))


def test_a_sample_with_u_zero_shares_one_set_of_fragments(cfg):
    """u = 0: the shading image comes from the face's own fragments and equals a separate render of a_t."""
    from datagen.sample import make_sample
    from datagen.scene import draw_scene
    from morphable.model import load_model
    from render.renderer import FaceRenderer

    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, cfg.render)
    index = next(i for i in range(200) if draw_scene(0, i, model, cfg).u == 0.0)
    s = make_sample(0, index, model, cfg, renderer)
    shading, mask = renderer.render_shading(s.scene.alpha_t, s.scene.pose, verts=model.draw_vertices(s.scene.alpha_t))
    np.testing.assert_array_equal(s.mask, mask)
    np.testing.assert_array_equal(s.shading, shading)
    np.testing.assert_array_equal(s.mask, s.face_mask)


def test_manifest_names_the_format_and_encoders(reference):
    from datagen.generate import FORMAT

    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["format"] == FORMAT == "facesynth-datagen/2"
    assert set(manifest["encoders"]) == {"zlib", "pillow"}
