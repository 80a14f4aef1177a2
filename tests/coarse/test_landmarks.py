"""The detector's landmarks on the model: surface points, the jaw contour that follows the silhouette, and a
calibration that recovers a known offset and scatter from renders with known truth."""
from __future__ import annotations

import numpy as np
import pytest

from coarse.landmarks import (CONTOUR, LandmarkModel, calibrate, contour_rows, load_landmark_model,
                              noisy_landmarks, vertex_landmarks)
from render.camera import Pose, euler_to_rotation, project


def _pose(yaw=0.0, scale=2.0):
    return Pose(scale, euler_to_rotation(np.radians(yaw), 0.0, 0.0), np.array([256.0, 256.0]))


def test_vertex_landmarks_project_to_the_model_landmarks(model):
    lm = vertex_landmarks(model)
    rng = np.random.default_rng(0)
    alpha = np.r_[rng.normal(size=model.n_identity), np.zeros(model.n_expression)].astype(np.float32)
    pose = _pose(20.0)
    expected = project(model.landmarks(alpha), pose)[:, :2]
    np.testing.assert_allclose(lm.project(model, alpha, pose), expected, atol=1e-3)


def test_round_trip_through_json(model, tmp_path):
    from facesynth.io import write_json

    lm = vertex_landmarks(model, 2.5)
    lm = LandmarkModel(lm.triangles, lm.bary, contour_rows(model), np.full((68, 2), 0.5), lm.sigma_mm,
                       {"cnn": 3.0}, {"command": "test"})
    write_json(tmp_path / "lm.json", lm.to_dict())
    back = load_landmark_model(tmp_path / "lm.json")
    assert back.detector_scale == {"cnn": 3.0} and back.provenance == {"command": "test"}
    np.testing.assert_array_equal(back.contour, lm.contour)
    np.testing.assert_allclose(back.sigma("cnn"), 3.0 * lm.sigma_mm)
    with pytest.raises(ValueError, match="landmark model"):
        (tmp_path / "bad.json").write_text("{}")
        load_landmark_model(tmp_path / "bad.json")


def test_jaw_contour_follows_the_silhouette(model):
    """Turning the head moves the far side's jaw landmark onto vertices nearer the face's middle, and every
    chosen vertex is the row's outermost in the image."""
    rows = contour_rows(model)
    assert rows.shape[0] == 17 and (rows[:, 0] >= 0).all()
    lm = LandmarkModel(*vertex_landmarks(model).__dict__.values())
    lm = LandmarkModel(lm.triangles, lm.bary, rows, lm.offset_mm, lm.sigma_mm)
    zeros = np.zeros(model.n_coeffs, np.float32)
    front = lm.contour_vertices(model, zeros, _pose(0.0).rotation)
    turned = lm.contour_vertices(model, zeros, _pose(40.0).rotation)
    x_front, x_turned = model.mean[front, 0], model.mean[turned, 0]
    # one side's jaw points (x < 0 or x > 0 in the model) move towards the middle (|x| smaller)
    moved = np.abs(x_turned) < np.abs(x_front) - 5.0
    assert moved[:6].sum() + moved[11:].sum() >= 3
    R = _pose(40.0).rotation
    for k in range(17):
        cand = rows[k][rows[k] >= 0]
        img = model.mean[cand] @ R[:2].T
        d = ((model.mean[cand[-1]] - model.mean[cand[0]]) * [1, 1, 0]) @ R[:2].T  # outwards, as seen
        assert (img @ d).max() == pytest.approx(float(model.mean[turned[k]] @ R[:2].T @ d), rel=1e-5)


def test_calibration_recovers_a_known_offset_and_scatter(model):
    rng = np.random.default_rng(1)
    truth = vertex_landmarks(model)
    offset = np.zeros((68, 2))
    offset[8] = [0.0, 4.0]  # the chin 4 mm low
    offset[36:48, 1] = -2.0  # the eyes 2 mm high
    known = LandmarkModel(truth.triangles, truth.bary, contour_rows(model), offset, np.ones(68))
    n, recs = 60, {k: [] for k in ("alpha", "scale", "rotation", "translation", "detected", "face_id", "bary")}
    for i in range(n):
        alpha = np.r_[rng.normal(size=model.n_identity), np.zeros(model.n_expression)].astype(np.float32)
        pose = _pose(rng.uniform(-30, 30), rng.uniform(1.5, 2.5))
        pts = noisy_landmarks(known.project(model, alpha, pose), 1.5 * pose.scale, rng)  # 1.5 mm scatter
        for k, v in zip(recs, (alpha, pose.scale, pose.rotation, pose.translation, pts, np.full(68, -1),
                               np.zeros((68, 3)))):
            recs[k].append(v)
    lm = calibrate(model, {k: np.asarray(v) for k, v in recs.items()}, {"command": "test"})
    inner = np.setdiff1d(np.arange(68), CONTOUR)
    assert np.abs(lm.offset_mm[inner] - offset[inner]).max() < 1.2
    assert lm.offset_mm[8, 1] == pytest.approx(4.0, abs=1.2)
    assert 1.0 < np.median(lm.sigma_mm) < 2.0
    assert lm.provenance["found"] == n and lm.provenance["command"] == "test"


def test_detector_records_and_calibration_from_renders(model):
    """The calibration's plumbing on real renders, with a stand-in detector whose lower lip and chin are 3 mm
    low: the calibrated landmarks land where it puts them, and a face it misses is counted, not used."""
    from coarse.calibrate import calibrate_detector, detector_records
    from coarse.detect import Detection, NoFaceError
    from datagen.faces import online_faces
    from facesynth.config import load_config
    from render.renderer import FaceRenderer

    cfg = load_config(overrides={"render.image_size": 128, "render.backend": "numba"})
    faces = list(online_faces(cfg, 14, 3, model, FaceRenderer.from_config(model, cfg.render)))
    rng = np.random.default_rng(0)

    def detect(image):
        f = faces[detect.calls]
        detect.calls += 1
        if f.index == faces[-1].index:
            raise NoFaceError("missed")
        pts = f.landmarks + rng.normal(0, 0.3, (68, 2))
        pts[[8, 57], 1] += 3.0 * f.pose.scale
        return [Detection(np.array([0.0, 0, 128, 128]), pts, 1.0, "hog")]

    detect.calls = 0
    rec = detector_records(faces, detect)
    assert rec["detected"].shape == (14, 68, 2) and np.isnan(rec["detected"][-1]).all()
    assert list(rec["detector"]).count("none") == 1 and (rec["face_id"][0] >= -1).all()
    lm = calibrate_detector(rec, model, {"command": "test"})
    assert lm.provenance["found"] == 13 and lm.provenance["detectors"] == {"hog": 13, "none": 1}
    raw = vertex_landmarks(model)
    for k in (8, 57):
        err = [np.abs(m.project(model, f.alpha_gt, f.pose)[k, 1] - rec["detected"][i, k, 1]) / f.pose.scale
               for m in (lm, raw) for i, f in enumerate(faces[:-1])]
        calibrated, uncalibrated = np.mean(err[:13]), np.mean(err[13:])
        assert uncalibrated > 2.0 and calibrated < 0.7 * uncalibrated, (k, calibrated, uncalibrated)
