"""Scan evaluation: the NoW-style metric, loading and rendering a textured scan, and ``refine evaluate-scan``,
on a small scan made here from the face model (a made-up identity, textured with the albedo model, its file
frame turned and shifted so the loader must find the model frame from the landmarks)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from datagen.sheet import contact_sheet
from facesynth.io import save_png
from morphable.materials import head_albedo
from morphable.obj import write_obj
from reconstruct.now_metric import MeshDistance, Similarity, fit_similarity, scan_to_mesh
from reconstruct.scan import ScanError, ScanRenderer, ScanView, load_scan, read_landmarks
from reconstruct.texture import atlas_uv, bake_uv_texture
from render.camera import euler_to_rotation

#: The file frame of the made-up scan: model frame turned by these angles (degrees) and shifted (mm).
FILE_TURN_DEG = (30.0, -20.0, 70.0)
FILE_SHIFT_MM = np.array([12.0, -300.0, 45.0])


def _identity(model, seed: int) -> np.ndarray:
    alpha = np.zeros(model.n_coeffs, np.float32)
    alpha[: model.n_identity] = np.random.default_rng(seed).normal(0, 1, model.n_identity)
    return alpha


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory, model) -> Path:
    """A scan folder: face.obj + face.mtl + face_texture.png + landmarks68.txt, in mm, in a turned frame."""
    d = tmp_path_factory.mktemp("scan")
    alpha = _identity(model, 3)
    file_frame = Similarity(1.0, euler_to_rotation(*np.radians(FILE_TURN_DEG)), FILE_SHIFT_MM)
    skin = model.albedo_model.albedo(np.zeros((1, model.albedo_model.n_components)))[0]
    save_png(d / "face_texture.png", contact_sheet([bake_uv_texture(model, head_albedo(model, skin), 256)], 1, pad=0))
    write_obj(d / "face.obj", file_frame.apply(model.vertices(alpha)), model.triangles, atlas_uv(model), model.tri_uv,
              "face_texture.png")
    np.savetxt(d / "landmarks68.txt", file_frame.apply(model.landmarks(alpha)), fmt="%.4f",
               header="68 landmarks, Multi-PIE order, mm")
    return d


@pytest.fixture(scope="module")
def scan(scan_dir, model):
    return load_scan(scan_dir, model.landmarks(np.zeros(model.n_coeffs)))


# ------------------------------------------------------------------------------------------------ the metric
def test_fit_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(0, 50, (40, 3))
    true = Similarity(1.3, euler_to_rotation(0.4, -0.2, 1.1), np.array([5.0, -7.0, 30.0]))
    fit = fit_similarity(src, true.apply(src))
    assert fit.scale == pytest.approx(1.3) and np.allclose(fit.rotation, true.rotation)
    assert np.allclose(fit.inverse_apply(true.apply(src)), src)
    assert fit_similarity(src, true.apply(src), scale=False).scale == 1.0


def test_mesh_distance_is_exact_point_to_triangle(model):
    """Against the slow reference: every triangle tried for every point."""
    from trimesh.triangles import closest_point

    verts = model.vertices(np.zeros(model.n_coeffs))
    tris = model.triangles[::7]  # a sparse, holey mesh: many points are far from every triangle
    rng = np.random.default_rng(1)
    pts = verts[rng.choice(len(verts), 60)] + rng.normal(0, 20, (60, 3))
    d, q = MeshDistance(verts, tris).query(pts)
    corners = verts[tris].astype(np.float64)
    ref = np.array([np.linalg.norm(closest_point(corners, np.repeat(p[None], len(tris), 0)) - p, axis=1).min()
                    for p in pts])
    assert np.allclose(d, ref, atol=1e-6)
    assert np.allclose(np.linalg.norm(q - pts, axis=1), d)


def test_metric_is_zero_on_itself_invariant_to_similarity_and_grows_with_error(scan, model):
    mesh = scan.mesh
    verts, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    kw = {"radius_mm": 70.0, "icp_iterations": 12, "icp_points": 1000}  # smaller than the defaults: faster
    same = scan_to_mesh(scan.points, scan.landmarks, verts, faces, scan.landmarks, **kw)
    assert same.distances.max() < 0.01 and same.crop.sum() > 1000

    # the reconstruction in another frame and scale scores the same
    S = Similarity(0.02, euler_to_rotation(-1.0, 0.5, 2.0), np.array([3.0, 1.0, -2.0]))  # e.g. metres, turned
    moved = scan_to_mesh(scan.points, scan.landmarks, S.apply(verts), faces, S.apply(scan.landmarks), **kw)
    assert np.allclose(moved.distances, same.distances, atol=0.01)

    # a smooth bump on the nose along the normals: the error grows with its height, largest at the nose
    n = np.asarray(mesh.vertex_normals)
    near_nose = np.exp(-np.sum((verts - scan.landmarks[30]) ** 2, 1) / (2 * 12.0 ** 2))[:, None] * n
    bumps = [scan_to_mesh(scan.points, scan.landmarks, verts + h * near_nose, faces, scan.landmarks, **kw)
             for h in (1.0, 4.0)]
    assert 0.0 < bumps[0].summary()["mean_mm"] < bumps[1].summary()["mean_mm"]
    d = np.zeros(len(scan.points))
    d[bumps[1].crop] = bumps[1].distances
    nose = np.linalg.norm(scan.points - scan.landmarks[30], axis=1) < 5
    assert 1.5 < d[nose].mean() < 4.5 and d[nose].mean() > 3 * bumps[1].summary()["median_mm"]

    # another identity is further away than the scan's own, after its best similarity
    other = _identity(model, 4)
    far = scan_to_mesh(scan.points, scan.landmarks, model.vertices(other), model.triangles, model.landmarks(other),
                       **kw)
    assert far.summary()["median_mm"] > 0.5


# ------------------------------------------------------------------------------------------------ loader + renderer
def test_loader_finds_the_model_frame_from_the_landmarks(scan, scan_dir, model):
    # the file frame is undone (up to the small rotation between this identity's and the mean's landmarks)
    R = scan.to_model.rotation @ euler_to_rotation(*np.radians(FILE_TURN_DEG))
    assert np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) < 5
    assert scan.to_model.scale == 1.0  # sizes are kept
    lm_file = read_landmarks(scan_dir / "landmarks68.txt")
    assert np.allclose(np.linalg.norm(lm_file[36] - lm_file[45]), np.linalg.norm(scan.landmarks[36] - scan.landmarks[45]))
    assert len(scan.points) < len(scan.mesh.vertices)  # seam copies merged
    assert np.allclose(scan.points[scan.point_index], scan.mesh.vertices)


def test_render_puts_the_face_where_its_landmarks_project(scan):
    r = ScanRenderer(scan, 128, supersample=2)
    try:
        view = ScanView(20.0, 5.0, -5.0, 50.0, 500.0, (0.3, 0.2, 0.93), 3.0, 0.4, 0)
        bg = np.zeros((128, 128, 3), np.float32)
        bg[..., 2] = 1.0  # blue
        shot = r.render(view, bg)
        again = r.render(view, bg)
        colors = r.render_colors(np.tile([0.0, 1.0, 0.0], (len(scan.mesh.vertices), 1)), view)
    finally:
        r.close()
    assert np.array_equal(shot.image, again.image)
    assert shot.image.shape == (128, 128, 3) and shot.image.dtype == np.uint8
    px = np.round(shot.landmarks[27:] - 0.5).astype(int)  # nose, eyes, mouth: on the face's pixels
    assert np.all(shot.mask[px[:, 1], px[:, 0]])
    assert (shot.image[~shot.mask][:, 2] > 200).mean() > 0.97  # background stays blue (but for edge pixels) ...
    face = shot.image[shot.mask].astype(float)
    assert face[:, 0].mean() > face[:, 2].mean()  # ... the skin is reddish
    assert 0.05 < shot.mask.mean() < 0.6
    # projection: the person's right eye (36-41) on the image left, the mouth below the eyes
    assert shot.landmarks[36:42, 0].mean() < shot.landmarks[42:48, 0].mean()
    assert shot.landmarks[48:68, 1].mean() > shot.landmarks[36:48, 1].mean()
    green = colors[..., 1] > colors[..., 0] + 0.1  # vertex colours drawn (not the texture), same silhouette
    assert (green == shot.mask).mean() > 0.97 and np.all(colors[:4, :4] > 0.99)  # over white


# ------------------------------------------------------------------------------------------------ the command
def _cli(*args):
    from reconstruct.cli import main

    return CliRunner().invoke(main, ["evaluate-scan", *map(str, args)])


def test_evaluate_scan_reports_every_stage(scan_dir, tmp_path, model):
    from coarse.landmarks import vertex_landmarks

    lm = tmp_path / "landmarks.json"  # the model's own landmark vertices: no dependency on a calibration
    lm.write_text(json.dumps(vertex_landmarks(model).to_dict()))
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump({
        "fit": {"landmarks": str(lm)},
        "refine": {"resolution": 96},
        "scan_eval": {"image_size": 256, "yaw_max_deg": 15.0, "cameras": [[50.0, 450.0, 500.0]],
                      "icp_iterations": 8, "icp_points": 500}}))
    out = tmp_path / "eval"
    res = _cli(scan_dir, "--views", 2, "--out", out, "--config", cfg, "--no-detail")
    assert res.exit_code == 0, res.output[-800:]
    overall = json.loads(res.stdout)
    assert [s["scan"] for s in overall["scans"]] == [scan_dir.name]
    row = overall["scans"][0]
    out = out / scan_dir.name
    report = json.loads((out / "scan_eval.json").read_text())
    assert row["coarse"]["ratio_to_mean_face"] == pytest.approx(report["coarse"]["median_mm"]
                                                                 / report["mean_face"]["median_mm"])
    assert overall["mean_ratio_to_mean_face"]["coarse"] == pytest.approx(row["coarse"]["ratio_to_mean_face"])
    assert report["views"] == 2 and 0 <= report["found"] <= 2
    for stage in ("mean_face", "coarse", "refined"):
        assert set(report[stage]) >= {"median_mm", "mean_mm", "std_mm"}
    assert len(report["per_view"]) == 2
    assert report["found"] >= 1, report["per_view"]  # a frontal render of a model face is found
    assert report["coarse"]["median_mm"] < 5 and report["mean_face"]["median_mm"] > 0
    for f in ("view_00.png", "view_01.png", "views.png", "error_map.png"):
        assert (out / f).stat().st_size > 0


@pytest.mark.parametrize("breakage", ["missing", "no_landmarks", "bad_landmarks", "metres", "no_texture", "empty"])
def test_bad_scan_folder_is_a_one_line_error(scan_dir, tmp_path, breakage):
    d = tmp_path / "scan"
    if breakage != "missing":
        d.mkdir()
        for f in scan_dir.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    if breakage == "no_landmarks":  # placed from head-on renders; this scan's file frame is turned: no face there
        (d / "landmarks68.txt").unlink()
    elif breakage == "empty":  # no .obj anywhere below
        for f in d.iterdir():
            f.unlink()
    elif breakage == "bad_landmarks":
        (d / "landmarks68.txt").write_text("1 2 3\n4 5 6\n")
    elif breakage == "metres":
        np.savetxt(d / "landmarks68.txt", read_landmarks(d / "landmarks68.txt") / 1000)
    elif breakage == "no_texture":
        (d / "face_texture.png").unlink()
    res = _cli(d, "--views", 1, "--out", tmp_path / "out")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)  # click's one-line error, no traceback
    text = res.output.strip()
    assert text.startswith("Error:") and text.count("\n") == 0 and "Traceback" not in text, text
    assert not (tmp_path / "out").exists()


def test_scan_error_is_a_value_error():
    assert issubclass(ScanError, ValueError)


def test_views_follow_the_seed(cfg):
    from dataclasses import replace

    from reconstruct.scan import sample_views

    a, b = sample_views(12, cfg.scan_eval), sample_views(12, cfg.scan_eval)
    assert a == b and sample_views(12, replace(cfg.scan_eval, seed=1)) != a
    yaws = [v.yaw_deg for v in a]
    assert yaws[0] == -cfg.scan_eval.yaw_max_deg and yaws[-1] == cfg.scan_eval.yaw_max_deg
    assert {v.focal_mm for v in a} == {c[0] for c in cfg.scan_eval.cameras}
    with pytest.raises(ScanError):
        sample_views(0, cfg.scan_eval)



def test_a_folder_of_scans_and_landmarks_placed_from_head_on_renders(scan_dir, tmp_path, model):
    """A folder of scan folders stands for each of them; a scan without landmarks68.txt, in the usual frame (y up,
    the face along +z), gets dlib's points from head-on renders, carried onto the surface."""
    from reconstruct.scan import place_landmarks
    from reconstruct.scan_eval import scan_folders

    parent = tmp_path / "scans"
    for name in ("b_plain", "a_plain"):
        (parent / name).mkdir(parents=True)
        alpha = _identity(model, 3)
        for f in scan_dir.iterdir():
            if f.suffix != ".txt":
                (parent / name / f.name).write_bytes(f.read_bytes())
        write_obj(parent / name / "face.obj", model.vertices(alpha), model.triangles, atlas_uv(model), model.tri_uv,
                  "face_texture.png")
    assert [f.name for f in scan_folders([parent])] == ["a_plain", "b_plain"]
    assert scan_folders([parent / "a_plain"]) == [parent / "a_plain"]
    placed = place_landmarks(parent / "a_plain", image_size=512)
    truth = model.landmarks(_identity(model, 3))
    inner = np.linalg.norm(placed - truth, axis=1)[27:60]  # nose, eyes, mouth: where dlib and the model agree
    assert placed.shape == (68, 3) and np.median(inner) < 4.0, inner
