"""refine sfs end to end on the shipped photo, its one-line errors for bad input, and the refined mesh on the
model's topology (:func:`reconstruct.pipeline.refined_mesh`) on a rendered face with known depth offsets."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesynth.config import load_config
from morphable.obj import read_obj, read_obj_topology

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "data" / "astronaut.png"


def _refine(*args, cwd=None, python=()):
    return subprocess.run([sys.executable, *python, "-m", "reconstruct.cli", "sfs", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


#: Modules ``refine sfs`` with the shipped data does not use, so must not import (torch alone takes ~1.5 s): the
#: iterative and detail networks run on ONNX Runtime.
UNUSED = ("torch", "h5py", "matplotlib", "pyrender", "onnx")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("astro")
    res = _refine(PHOTO, "--out", out, "--resolution", "128", "--weights", REPO / "data" / "missing.pt")
    assert res.returncode != 0 and "not found" in res.stderr  # a weights path the user gives must exist
    res = _refine(PHOTO, "--out", out, "--resolution", "128", python=("-X", "importtime"))
    assert res.returncode == 0, res.stderr[-800:]
    imported = {line.split("|")[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported and not imported & set(UNUSED), imported & set(UNUSED)
    assert "start-up" in res.stdout.splitlines()[-1]
    return out


def test_writes_every_output_and_obj_parses(result):
    from reconstruct.outputs import OUTPUT_FILES

    for f in OUTPUT_FILES:
        assert (result / f).stat().st_size > 0, f
    from morphable.model import load_model

    model = load_model(REPO / "data" / "ict_face_model.h5")
    verts, tris = read_obj(result / "coarse.obj")
    assert verts.shape == (model.n_vertices, 3) and tris.shape == model.triangles.shape
    # refined.obj: the coarse mesh (topology, UVs, texture) moved by at most a few mm
    rv, rt = read_obj(result / "refined.obj")
    np.testing.assert_array_equal(rt, tris)
    for a, b in zip(read_obj_topology(result / "refined.obj")[1:], read_obj_topology(result / "coarse.obj")[1:]):
        np.testing.assert_array_equal(a, b)  # tri_uv, uv
    assert "coarse_texture.png" in (result / "refined.mtl").read_text()
    moved = np.linalg.norm(rv - verts, axis=1)
    assert 0 < moved.max() < 5
    # the depth-map mesh lies on the coarse face, in the same frame and units (mm)
    gv, gt = read_obj(result / "refined_depthmap.obj")
    assert len(gv) > 1000 and gt.max() < len(gv)
    face = verts[model.regions["narrow_face"]]
    assert np.all(gv.min(0) > face.min(0) - 15) and np.all(gv.max(0) < face.max(0) + 15)
    params = json.loads((result / "params.json").read_text())
    off = params["refined_offset"]
    assert off["vertices_moved"] > 100 and off["max_mm"] - off["min_mm"] == pytest.approx(
        float(np.ptp(np.einsum("vk,vk->v", rv - verts, model.vertex_normals(verts.astype(np.float32))))), abs=1e-3)
    assert len(params["alpha"]) == 153 and len(params["landmarks_detected"]) == 68
    assert "texture_s" in params["timings_s"] and "detail_s" in params["timings_s"]
    assert params["detail_runtime"] == "onnxruntime" and params["detail_weights"].endswith("detail_weights.pt")
    assert params["coarse_method"] == "iterative_network" and params["weights"].endswith("iterative_weights.pt")
    assert params["network_runtime"] == "onnxruntime"
    start = params["startup_s"]
    assert {"imports", "detection", "models", "waited", "total"} <= set(start) and start["total"] > 0


def test_detection_in_a_forked_process_is_the_same(cfg):
    """refine.detect_in_background: the photo and its detections come back from the child as they are here. The
    fork runs in a fresh process, as `refine sfs PHOTO` forks (this one has run dlib: no fork after that)."""
    from facesynth.background import fork_available
    from reconstruct.cli import _detect

    if not fork_available():
        pytest.skip("no fork here")
    script = (
        "import json, sys\n"
        "from facesynth.background import Background\n"
        "from facesynth.config import load_config\n"
        "from reconstruct.cli import _detect\n"
        "with Background(_detect, sys.argv[1], load_config().detect, False) as job:\n"
        "    photo, found, seconds = job.result()\n"
        "f = found.faces\n"
        "print(json.dumps({'forked': job.forked, 'seconds': seconds, 'shape': list(photo.shape),\n"
        "                  'sum': int(photo.astype('int64').sum()), 'stages': found.stages,\n"
        "                  'landmarks': [x.landmarks.tolist() for x in f], 'detectors': [x.detector for x in f]}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(PHOTO)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    child = json.loads(done.stdout.strip().splitlines()[-1])
    assert child["forked"] and child["seconds"] > 0
    here, found_here, _ = _detect(PHOTO, cfg.detect, False)
    assert child["shape"] == list(here.shape) and child["sum"] == int(here.astype(np.int64).sum())
    faces_here = found_here.faces
    assert len(child["landmarks"]) == len(faces_here) == 1 and child["stages"] == found_here.stages
    np.testing.assert_array_equal(np.array(child["landmarks"][0]), faces_here[0].landmarks)
    assert child["detectors"][0] == faces_here[0].detector


def test_no_fork_once_dlib_has_run_in_the_process(tmp_path):
    """dlib's thread pool does not survive a fork: a process that has run dlib detects in itself, not in a child
    (a child forked after the pool started can wait on it forever)."""
    from click.testing import CliRunner

    from coarse.detect import detect_faces, dlib_has_run, load_image
    from facesynth.background import fork_available
    from reconstruct.cli import main

    if not fork_available():
        pytest.skip("no fork here")
    detect_faces(load_image(PHOTO))
    assert dlib_has_run()
    config = tmp_path / "fork.yaml"
    config.write_text("refine:\n  detect_in_background: true\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["sfs", str(PHOTO), "--out", str(out), "--no-detail", "--no-sfs",
                                      "--config", str(config)])
    assert result.exit_code == 0, result.output
    params = json.loads((out / "params.json").read_text())
    assert params["startup_s"]["detection_in_background"] is False


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory) -> Path:
    """A photo of two faces of different sizes (the astronaut and a copy at 0.7 x) and a third one too small
    (inter-ocular ~16 px < detect.min_interocular_px 20)."""
    astro = Image.open(PHOTO).convert("RGB")
    photo = Image.new("RGB", (512 + 358, 512), (120, 120, 120))
    photo.paste(astro)
    photo.paste(astro.resize((358, 358), Image.Resampling.LANCZOS), (512, 0))
    photo.paste(astro.resize((200, 200), Image.Resampling.LANCZOS), (512, 312))
    path = tmp_path_factory.mktemp("two") / "two.png"
    photo.save(path)
    return path


FAST = ("--no-sfs", "--no-detail", "--no-photometric", "--resolution", "64")


def test_every_face_above_the_limit_is_reconstructed_and_the_rest_named(two_faces, tmp_path):
    res = _refine(two_faces, "--out", tmp_path / "all", *FAST)
    assert res.returncode == 0, res.stderr[-800:]
    assert "2 faces found, all reconstructed" in res.stdout and "1 face under detect.min_interocular_px 20 px" \
        in res.stdout
    params = [json.loads((tmp_path / "all" / f"face-{i:02d}" / "params.json").read_text()) for i in (0, 1)]
    assert [p["face_index"] for p in params] == [0, 1] and params[0]["faces_in_image"] == 2
    assert params[0]["detection"]["box"][2] < 512 < params[1]["detection"]["box"][0]  # the largest first
    faces = params[0]["faces"]
    assert faces["selection"] == "all" and faces["reconstructed"] == faces["found"] == 2
    assert len(faces["below_limit"]) == 1 and faces["below_limit"][0]["interocular_px"] < 20
    assert not (tmp_path / "all" / "params.json").exists()

    res = _refine(two_faces, "--out", tmp_path / "largest", "--largest", *FAST)
    assert res.returncode == 0, res.stderr[-800:]
    assert "the largest of 2 faces found reconstructed (--largest)" in res.stdout
    params = json.loads((tmp_path / "largest" / "params.json").read_text())
    assert params["faces"]["selection"] == "largest" and params["faces"]["reconstructed"] == 1
    assert params["faces_in_image"] == 1 and params["detection"]["box"][2] < 512
    assert not (tmp_path / "largest" / "face-00").exists()


def test_refuses_to_overwrite_without_force(result):
    res = _refine(PHOTO, "--out", result, "--resolution", "128", "--no-sfs")
    assert res.returncode != 0 and "--force" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("make", ["noise", "empty", "text"])
def test_bad_input_is_a_one_line_error(tmp_path, make):
    p = tmp_path / "in.png"
    if make == "noise":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p)
    elif make == "empty":
        p.write_bytes(b"")
    else:
        p.write_text("not an image")
    res = _refine(p, "--out", tmp_path / "out")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stderr.strip().startswith("Error:")
    assert res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------- refined.obj on the model's mesh
SIZE = 128
FADE = load_config().refine.refined


@pytest.fixture(scope="module", params=[0.0, 30.0], ids=["frontal", "yaw30"])
def seen_face(request, model, cfg):
    """The mean face rendered in an SfS frame (SIZE pixels, yaw in degrees): a reconstruction with no
    refinement yet, the coarse vertices and which of them the frame sees (visible and inside the mask)."""
    from coarse.frame import sfs_frame_pose
    from reconstruct.pipeline import Reconstruction
    from reconstruct.texture import visible_vertices
    from render.camera import Pose, euler_to_rotation, project
    from render.renderer import FaceRenderer

    alpha = np.zeros(model.n_coeffs, np.float32)
    verts = model.vertices(alpha)
    rot = euler_to_rotation(np.radians(request.param), 0.1, 0.0)
    frame = sfs_frame_pose(model, verts, Pose(1.0, rot, np.zeros(2)), SIZE)
    r = FaceRenderer.from_config(model, cfg.render, image_size=SIZE, backend="numba")
    fr = r.render_face(alpha, frame, np.ones((model.n_vertices, 3), np.float32), r.shading_light, verts=verts)
    mask = r.narrow_face_mask(fr.fragments)
    rec = Reconstruction(alpha, frame, "test", sfs_frame=frame, sfs_mask=mask, coarse_depth=fr.depth)
    px = np.clip(project(verts, frame)[:, :2].astype(int), 0, SIZE - 1)
    seen = visible_vertices(model, verts, frame, mask.shape) & mask[px[:, 1], px[:, 0]]
    return rec, verts, seen


def _with_offset(rec, d: float):
    """``rec`` with its refined depth the coarse one plus ``d`` mm (towards the camera) inside the mask."""
    from dataclasses import replace

    return replace(rec, refined_depth=rec.coarse_depth + np.where(rec.sfs_mask, d, 0.0).astype(np.float32))


def _edges(model) -> np.ndarray:
    t = model.triangles
    return np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])


def test_refined_mesh_is_the_coarse_mesh_without_an_offset(seen_face, model):
    from dataclasses import replace

    from reconstruct.pipeline import refined_mesh, vertex_offset
    from reconstruct.texture import atlas_uv

    rec, verts, _ = seen_face
    for same in (rec, _with_offset(rec, 0.0)):  # no refinement, or a refined depth equal to the coarse one
        same = replace(same, vertex_offset=vertex_offset(same, model, FADE, verts))
        rv, rt, uv, tri_uv = refined_mesh(same, model)
        np.testing.assert_array_equal(rt, model.triangles)
        np.testing.assert_array_equal(tri_uv, model.tri_uv)
        np.testing.assert_array_equal(uv, atlas_uv(model))
        np.testing.assert_allclose(rv, verts, atol=1e-6)


@pytest.mark.parametrize("d", [0.6, -0.4])
def test_a_constant_depth_offset_moves_what_was_seen_towards_the_camera(seen_face, model, d):
    from scipy.spatial import cKDTree

    from reconstruct.pipeline import refined_mesh, vertex_offset
    from render.camera import rotate_normals

    rec, verts, seen = seen_face
    rec = _with_offset(rec, d)
    off = vertex_offset(rec, model, FADE, verts)
    normals = model.vertex_normals(verts)
    n_view = rotate_normals(normals, rec.sfs_frame)[:, 2]
    assert np.all(np.abs(off) <= abs(d) + 1e-6)
    assert np.all(off[~seen] == 0)  # hidden, or outside the mask: not moved
    # seen vertices farther than the fade from anything unseen, facing the camera: the full height-field change
    far = cKDTree(verts[~seen]).query(verts)[0] > FADE.fade_mm + 0.5  # euclidean <= geodesic distance
    full = seen & far & (n_view > FADE.facing_to)
    assert full.sum() > 500
    np.testing.assert_allclose(off[full], d * n_view[full], rtol=1e-3, atol=1e-5)
    # refined.obj: along the normal, so a frontal vertex moves by ~d along the view axis
    from dataclasses import replace

    rv = refined_mesh(replace(rec, vertex_offset=off), model)[0]
    np.testing.assert_allclose(rv - verts, off[:, None] * normals, atol=1e-5)
    view = np.asarray(rec.sfs_frame.rotation)[2]  # towards the camera, model frame
    frontal = full & (n_view > 0.97)
    assert frontal.sum() > 50
    np.testing.assert_allclose((rv - verts)[frontal] @ view, d, rtol=0.07)


def test_a_sloped_offset_is_sampled_at_each_vertex_pixel(seen_face, model):
    from dataclasses import replace

    from scipy.spatial import cKDTree

    from reconstruct.pipeline import vertex_offset
    from render.camera import project, rotate_normals

    rec, verts, seen = seen_face
    ii, jj = np.mgrid[:SIZE, :SIZE]
    plane = lambda x, y: 0.2 + 0.02 * (x - SIZE / 2) - 0.01 * (y - SIZE / 2)  # noqa: E731  mm at pixel x, y
    rec = replace(rec, refined_depth=rec.coarse_depth + np.where(rec.sfs_mask, plane(jj + 0.5, ii + 0.5), 0.0))
    off = vertex_offset(rec, model, FADE, verts)
    n_view = rotate_normals(model.vertex_normals(verts), rec.sfs_frame)[:, 2]
    full = seen & (n_view > FADE.facing_to) & (cKDTree(verts[~seen]).query(verts)[0] > FADE.fade_mm + 0.5)
    x, y = project(verts[full], rec.sfs_frame)[:, :2].T
    np.testing.assert_allclose(off[full], plane(x, y) * n_view[full], atol=2e-4)


def test_the_offset_fades_smoothly(seen_face, model):
    from dataclasses import replace

    import reconstruct.pipeline as pipeline

    rec, verts, seen = seen_face
    rec, d = _with_offset(rec, 0.5), 0.5
    e = _edges(model)
    length = np.linalg.norm(verts[e[:, 0]] - verts[e[:, 1]], axis=1)
    border = seen[e[:, 0]] != seen[e[:, 1]]

    def jumps(fade):
        off = pipeline.vertex_offset(rec, model, fade, verts)
        step = np.abs(off[e[:, 0]] - off[e[:, 1]]) / d
        return float((step / length).max()), float(step[border].mean())

    slope, at_border = jumps(FADE)
    assert slope < 0.5 and at_border < 0.1  # per mm of surface, and across the seen/unseen border
    slope, at_border = jumps(replace(FADE, fade_mm=1e-3, facing_to=0.2501))  # no fade: a step at the border
    assert slope > 2.0 and at_border > 0.3


def test_the_network_runs_when_weights_exist_and_no_network_keeps_the_fit(tmp_path):
    """With network weights refine's coarse face is the network's (params.json says so, and that torch ran it
    without an ONNX export beside the weights); --no-network keeps the fit (refined by the photo's shading);
    --no-photometric too keeps the landmark fit as it is."""
    import torch

    from coarse.network import FORMAT, IterativeNet
    from facesynth.config import override

    cfg = override(override(load_config(), "render.image_size", 64), "train.widths", [4, 8, 8, 16])
    torch.manual_seed(0)
    net = IterativeNet.from_config(cfg)
    torch.nn.init.normal_(net.correction.weight, std=0.01)  # not the identity: the network moves the face
    weights = tmp_path / "w.pt"
    torch.save({"format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(), "step": 1}, weights)
    methods = {}
    for name, extra in (("net", []), ("fit", ["--no-network"]), ("landmarks", ["--no-network", "--no-photometric"])):
        res = _refine(PHOTO, "--out", tmp_path / name, "--resolution", "64", "--no-sfs", "--no-detail",
                      "--weights", weights, "--iterations", "2", *extra)
        assert res.returncode == 0, res.stderr[-800:]
        methods[name] = json.loads((tmp_path / name / "params.json").read_text())
        if name == "net":  # no export beside these weights: torch runs them, and the face's line says why
            assert "iterative_network (torch, no w.onnx)" in res.stdout
    assert methods["net"]["coarse_method"] == "iterative_network" and methods["net"]["network_runtime"] == "torch"
    assert methods["fit"]["coarse_method"] == "photometric_fit"  # refine.photometric is on by default
    assert methods["landmarks"]["coarse_method"] == "landmark_fit"
    assert not np.allclose(methods["net"]["alpha"], methods["fit"]["alpha"])
    assert not np.allclose(methods["fit"]["alpha"], methods["landmarks"]["alpha"])
