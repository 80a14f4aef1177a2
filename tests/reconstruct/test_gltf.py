"""The glTF export (reconstruct/gltf.py) and the Live Link Face CSV (reconstruct/arkit.py): face.glb of refine sfs
read back with pygltflib is refined.obj at its default weights and the coarse mesh without refinement, its morph
targets are the model's blendshapes with ARKit's names (jawOpen moves the chin down), as sparse accessors; refine
video --gltf writes animation.glb and blendshapes.csv (one row per frame, weights in [0, 1], increasing timecodes,
jawOpen as in frames.jsonl); the Khronos validator finds no error and no warning in either; the preview draws; bad
input is a one-line error."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from morphable.obj import read_obj_vertices

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "data" / "astronaut.png"
FRAMES = 8
TOL_M = 0.01e-3  # 0.01 mm, in the file's metres


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "reconstruct.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _validate(path):
    from reconstruct.gltf import ValidatorMissing, validate_glb

    try:
        report = validate_glb(path)
    except ValidatorMissing as e:
        pytest.skip(f"the Khronos glTF validator cannot run here: {e}")
    issues = report["issues"]
    assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"][:5]
    return report


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """refine sfs on the shipped photo with the detail network and SfS (the landmark fit: fast)."""
    out = tmp_path_factory.mktemp("astro")
    res = _cli("sfs", PHOTO, "--out", out, "--resolution", "96", "--no-photometric")
    assert res.returncode == 0, res.stderr[-800:]
    return out


def _by_name(meshes):
    return {m.name: m for m in meshes}


def test_face_glb_at_its_default_weights_is_refined_obj(photo, model):
    from PIL import Image

    from reconstruct.gltf import read_glb

    meshes = _by_name(read_glb(photo / "face.glb"))
    assert list(meshes) == ["face", "teeth", "eyeLeft", "eyeRight"]
    refined = read_obj_vertices(photo / "refined.obj") * 1e-3
    covered = np.zeros(model.n_vertices, bool)
    for m in meshes.values():
        posed, _ = m.posed()
        assert np.abs(posed - refined[m.model_vertex]).max() < TOL_M, m.name
        covered[m.model_vertex] = True
    assert covered.all()  # every model vertex is in some mesh
    params = json.loads((photo / "params.json").read_text())
    assert params["refined_offset"]["vertices_moved"] > 100  # the refined surface is not the coarse one
    face = meshes["face"]
    assert face.weights[:53] == pytest.approx([params["expression"][n] for n in model.expression_names], abs=1e-6)
    np.testing.assert_array_equal(face.texture, np.asarray(Image.open(photo / "coarse_texture.png").convert("RGB")))
    assert (photo / "params.json").stat().st_mtime_ns >= (photo / "face.glb").stat().st_mtime_ns  # written last


def test_face_glb_validates(photo):
    report = _validate(photo / "face.glb")
    assert report["info"]["animationCount"] == 0 and report["info"]["materialCount"] == 2


def test_morph_targets_are_sparse_accessors(photo):
    """Every target is zeros plus a sparse list of the vertices it changes, which takes less than whole arrays."""
    from reconstruct.gltf import load_glb

    g = load_glb(photo / "face.glb")
    listed, whole = 0, 0
    for mesh in g.meshes:
        for target in mesh.primitives[0].targets:
            for name in ("POSITION", "NORMAL"):
                acc = g.accessors[target[name]]
                assert acc.bufferView is None
                whole += 12 * acc.count
                if acc.sparse is not None:
                    assert 0 < acc.sparse.count <= acc.count
                    listed += acc.sparse.count * (12 + (2 if acc.sparse.indices.componentType == 5123 else 4))
    assert 0 < listed < 0.8 * whole


@pytest.fixture(scope="module")
def coarse(photo, model, tmp_path_factory):
    """The unrefined head of the photo's coefficients (the function itself, no refinement), and the coefficients."""
    from reconstruct.gltf import HeadSurface, read_glb, write_face_glb

    alpha = np.array(json.loads((photo / "params.json").read_text())["alpha"], np.float32)
    path = tmp_path_factory.mktemp("coarse") / "face.glb"
    write_face_glb(path, model, HeadSurface(model.vertices(alpha), model.split(alpha)[1]))
    return _by_name(read_glb(path)), alpha


def test_without_refinement_the_head_is_the_coarse_mesh_and_neutral_at_weights_zero(coarse, model):
    meshes, alpha = coarse
    verts = model.vertices(alpha) * 1e-3
    neutral = model.vertices(model.join(model.split(alpha)[0], np.zeros(model.n_expression))) * 1e-3
    for m in meshes.values():
        assert np.abs(m.posed()[0] - verts[m.model_vertex]).max() < TOL_M, m.name
        assert np.abs(m.posed({})[0] - neutral[m.model_vertex]).max() < TOL_M, m.name
        assert m.colors is not None and m.texture is None  # no texture given: vertex colours
    # metres, y up, the face looking along +z: the nose tip in front of the eyes, the eyes above the chin
    lm = model.landmarks68
    assert 0.2 < np.ptp(neutral[:, 1]) < 0.4
    assert neutral[lm[30], 2] > neutral[lm[36], 2] and neutral[lm[36], 1] > neutral[lm[8], 1]


def test_targets_have_arkit_names_and_move_as_the_blendshapes(coarse, model):
    from reconstruct.arkit import ARKIT_NAMES
    from reconstruct.gltf import SPARSE_POSITION_M

    meshes, alpha = coarse
    face, teeth = meshes["face"], meshes["teeth"]
    assert set(ARKIT_NAMES) <= set(face.target_names) and len(face.target_names) == 56
    assert {"browInnerUpLeft", "browInnerUpRight", "cheekPuffLeft", "cheekPuffRight"} <= set(face.target_names)
    assert not any("_L" in n or "_R" in n for n in face.target_names)
    extra = [face.target_names.index(n) for n in ("browInnerUp", "cheekPuff", "tongueOut")]
    assert np.all(face.weights[extra] == 0)
    assert teeth.target_names == ["jawForward", "jawLeft", "jawOpen", "jawRight"]
    # jawOpen = 1 moves the chin down (-y) as the model's blendshape does, the lower teeth with it
    ident = model.split(alpha)[0]
    jaw = np.zeros(model.n_expression, np.float32)
    jaw[model.expression_index("jawOpen")] = 1.0
    truth = model.vertices(model.join(ident, jaw))
    chin = np.flatnonzero(face.model_vertex == model.landmarks68[8])[0]
    p0, p1 = face.posed({})[0][chin], face.posed({"jawOpen": 1.0})[0][chin]
    assert p1[1] - p0[1] < -0.015 and np.abs(p1 * 1e3 - truth[model.landmarks68[8]]).max() < 0.01
    assert teeth.posed({"jawOpen": 1.0})[0][:, 1].min() < teeth.posed({})[0][:, 1].min() - 0.01
    # its normals are those of the blendshape's mesh; the whole browInnerUp is both halves (each of the three
    # sparse targets leaves out deltas up to SPARSE_POSITION_M, so they agree to twice that)
    _, n1 = face.posed({"jawOpen": 1.0})
    np.testing.assert_allclose(n1, model.vertex_normals(truth)[face.model_vertex], atol=2e-3)
    both = face.posed({"browInnerUpLeft": 1.0, "browInnerUpRight": 1.0})[0]
    np.testing.assert_allclose(face.posed({"browInnerUp": 1.0})[0], both, atol=2.5 * SPARSE_POSITION_M)


def test_live_link_timecodes_read_back_as_unreal_reads_them():
    from reconstruct.arkit import live_link_timecode

    assert live_link_timecode(0.0) == "00:00:00:00.000"
    assert live_link_timecode(3725.04) == "01:02:05:01.200"
    for t in (0.0, 0.04, 1.96, 59.999, 3725.04):
        h, m, s, f = live_link_timecode(t).split(":")
        assert float(f) < 30  # so Unreal's importer infers 30 fps
        assert int(h) * 3600 + int(m) * 60 + int(s) + float(f) / 30 == pytest.approx(t, abs=1e-4)


def test_arkit_weights_average_the_split_halves(model):
    from reconstruct.arkit import ARKIT_NAMES, arkit_weights

    w = np.zeros(model.n_expression)
    w[model.expression_index("browInnerUp_L")], w[model.expression_index("browInnerUp_R")] = 0.2, 0.6
    w[model.expression_index("jawOpen")], w[model.expression_index("eyeBlink_L")] = 1.3, 0.5
    a = dict(zip(ARKIT_NAMES, arkit_weights(model.expression_names, w)))
    assert a["browInnerUp"] == pytest.approx(0.4) and a["jawOpen"] == 1.0 and a["eyeBlinkLeft"] == 0.5
    assert a["tongueOut"] == 0.0 and a["cheekPuff"] == 0.0


# ---------------------------------------------------------------------------------------------- a clip
@pytest.fixture(scope="module")
def clip(tmp_path_factory, model, cfg):
    """A tiny clip of the talking head through refine video --gltf (the track held, as in test_video.py)."""
    from dataclasses import replace

    from reconstruct.models import StackOptions, load_stack
    from reconstruct.video import VideoOptions, process_video
    from reconstruct.video_eval import make_sample_clip

    path = tmp_path_factory.mktemp("clip") / "talk.mp4"
    make_sample_clip(path, model, cfg, frames=FRAMES, width=320, height=240, face_height=0.7, progress=False)
    out = tmp_path_factory.mktemp("video")
    process_video(path, out, replace(cfg, video=replace(cfg.video, lost_residual_mm=8.0)),
                  load_stack(cfg, StackOptions(no_detail=True)), VideoOptions(overlay=False, gltf=True),
                  progress=False)
    return out, [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]


def test_blendshapes_csv_has_live_link_face_columns_and_a_row_per_frame(clip):
    from reconstruct.arkit import ANGLE_COLUMNS, ARKIT_NAMES

    out, frames = clip
    with open(out / "blendshapes.csv", newline="") as f:
        rows = list(csv.reader(f))
    head, body = rows[0], rows[1:]
    assert head[:3] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft"] and head[-10:] == ["TongueOut", *ANGLE_COLUMNS]
    assert [h.lower() for h in head[2:54]] == [n.lower() for n in ARKIT_NAMES]
    with_face = [r for r in frames if r["face"]]
    assert len(body) == len(with_face) == FRAMES and all(len(r) == 63 and r[1] == "61" for r in body)
    weights = np.array([r[2:54] for r in body], float)
    assert weights.min() >= 0 and weights.max() <= 1
    seconds = []
    for r in body:
        h, m, s, ff = r[0].split(":")
        seconds.append(int(h) * 3600 + int(m) * 60 + int(s) + float(ff) / 30)
    assert np.all(np.diff(seconds) > 0)
    np.testing.assert_allclose(seconds, [r["time"] for r in with_face], atol=1e-4)
    jaw = weights[:, head.index("JawOpen") - 2]
    np.testing.assert_allclose(jaw, [r["expression"]["jawOpen"] for r in with_face], atol=1e-6)
    assert np.ptp(jaw) > 0.02  # it talks
    np.testing.assert_allclose(np.array([r[54] for r in body], float) * 180,
                               [r["pose"]["yaw_deg"] for r in with_face], atol=1e-3)


def test_animation_glb_animates_the_frames_and_validates(clip, model):
    from scipy.spatial.transform import Rotation

    from reconstruct.gltf import accessor_array, load_glb

    out, frames = clip
    _validate(out / "animation.glb")
    g = load_glb(out / "animation.glb")
    (anim,) = g.animations
    channels = {(g.nodes[c.target.node].name, c.target.path): anim.samplers[c.sampler] for c in anim.channels}
    assert set(channels) == {("head", "rotation"), ("head", "translation"), ("face", "weights"), ("teeth", "weights")}
    times = accessor_array(g, channels["head", "rotation"].input)
    np.testing.assert_allclose(times, [r["time"] for r in frames], atol=1e-6)
    w = accessor_array(g, channels["face", "weights"].output).reshape(FRAMES, -1)
    truth = np.array([[r["expression"][n] for n in model.expression_names] for r in frames])
    np.testing.assert_allclose(w[:, :53], truth, atol=1e-6)
    quats = accessor_array(g, channels["head", "rotation"].output)
    np.testing.assert_allclose(Rotation.from_quat(quats).as_matrix(), [r["pose"]["rotation"] for r in frames],
                               atol=1e-5)
    head = g.meshes[g.nodes[[n.name for n in g.nodes].index("face")].mesh]
    assert head.weights == [0.0] * 56  # the clip's head is neutral until animated


def test_preview_draws_three_panels_and_bad_input_is_a_one_line_error(photo, tmp_path):
    from PIL import Image

    res = _cli("gltf-preview", photo / "face.glb", "--out", tmp_path / "p.png", "--size", "96")
    assert res.returncode == 0, res.stderr[-800:]
    img = np.asarray(Image.open(tmp_path / "p.png"))
    assert img.shape[0] >= 96 and img.shape[1] >= 3 * 96 and img.std() > 10
    for bad in (photo / "coarse.obj", tmp_path / "missing.glb"):
        res = _cli("gltf-preview", bad, "--out", tmp_path / "q.png")
        assert res.returncode == 1 and res.stderr.startswith("Error:") and res.stderr.strip().count("\n") == 0
        assert "Traceback" not in res.stderr and not (tmp_path / "q.png").exists()
