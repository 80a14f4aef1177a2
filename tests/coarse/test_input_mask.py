"""``train.input_mask: landmarks``: the network's inputs cut to the face region the landmarks outline, the same
way in training (cache, online) and inference (``network_fit``)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from coarse.frame import NetworkFrame, frame_map
from coarse.iterative import landmark_pose, network_fit
from coarse.landmarks import vertex_landmarks
from datagen.sample import landmark_region
from facesynth.config import ConfigError, override
from render.camera import Pose, euler_to_rotation

SIZE = 64


def _face_points(model, size=SIZE, roll=0.0) -> np.ndarray:
    """(68, 2) the mean face's landmarks, centred in a size x size image."""
    pose = Pose(0.2 * size / 64, euler_to_rotation(0.0, 0.0, roll), np.array([size / 2, size / 2]))
    return vertex_landmarks(model).project(model, np.zeros(model.n_coeffs, np.float32), pose)


def test_the_region_holds_the_inner_face_and_follows_the_face_up(model):
    pts = _face_points(model)
    region = landmark_region(pts, SIZE, 0.3)

    def at(p):  # (x, y) pixels -> inside the region?
        assert 0 <= p[0] < SIZE and 0 <= p[1] < SIZE
        return region[int(p[1]), int(p[0])]
    assert at(pts[30]) and at(pts[62]) and at(pts[36]) and at(pts[45])  # nose tip, mouth, eye corners
    chin, brows = pts[8], pts[17:27].mean(0)
    up = brows - chin
    assert at(brows + 0.2 * up) and not at(brows + 0.45 * up)  # the forehead up to 0.3 of chin-to-brows
    assert not at(chin - 0.1 * up)  # nothing below the chin (neck, collar)
    assert not region[:, :2].any() and not region[:2].any()  # ears and skull out: the image's edge is empty
    assert landmark_region(pts, SIZE, 0.0).sum() < region.sum() < landmark_region(pts, SIZE, 0.6).sum()
    rolled = landmark_region(_face_points(model, roll=np.pi / 2), SIZE, 0.3)  # a face lying on its side
    assert abs(int(rolled.sum()) - int(region.sum())) < 0.05 * region.sum()
    assert not np.array_equal(rolled, region)
    with pytest.raises(ValueError, match="finite"):
        landmark_region(np.full((68, 2), np.nan), SIZE, 0.3)


def test_network_fit_feeds_only_the_region_of_its_landmarks(cfg, model):
    """With input_mask landmarks both channels are zero outside the region of the landmarks in the frame,
    and with shading (the default) the image reaches beyond it."""
    rng = np.random.default_rng(1)
    truth = np.r_[rng.normal(size=model.n_identity), np.zeros(model.n_expression)].astype(np.float32)
    photo_pose = Pose(1.5, euler_to_rotation(0.3, 0.1, 0.0), np.array([250.0, 260.0]))
    points = vertex_landmarks(model).project(model, truth, photo_pose)
    photo = np.full((512, 512), 0.8, np.float32)
    seen = []

    def predict(x, a):
        seen.append(x[0])
        return a

    for mask in ("shading", "landmarks"):
        frame = NetworkFrame(SIZE, float(cfg.sampling.pose.scale_mean), mask, 0.3)
        network_fit(predict, frame, photo, points, model, cfg.render, iterations=1)
    plain, cut = seen
    start = landmark_pose(points, model, np.zeros(model.n_coeffs, np.float32))
    frame = NetworkFrame(SIZE, float(cfg.sampling.pose.scale_mean), "landmarks", 0.3)
    region = frame.region(frame_map(start, frame.pose(model, start.rotation)).forward(points))
    assert (cut[:, ~region] == 0).all() and (cut[0, region] > 0).mean() > 0.95
    np.testing.assert_array_equal(cut[:, region], plain[:, region])
    assert (plain[0, ~region] > 0).sum() > 0.2 * region.sum()  # the silhouette reaches well beyond the region


@pytest.fixture(scope="module")
def small_cfg(model_path):
    from facesynth.config import load_config

    return load_config(overrides={
        "render.image_size": SIZE, "render.backend": "numba", "train.start": "fit", "train.cache_chunk": 4,
        "train.batch": 3, "train.input_mask": "landmarks", "train.input_forehead": 0.3})


def test_training_inputs_are_cut_to_their_landmarks_region_from_cache_and_online(small_cfg, tmp_path):
    from training.cache import CacheDataset, write_cache
    from training.data import OnlineDataset

    path = tmp_path / "pairs.h5"
    write_cache(small_cfg, path, 3, 5, progress=False)  # the cache holds whole inputs; reading cuts them
    frame = NetworkFrame.from_config(small_cfg)
    batch = CacheDataset(path, None, 0, 3, frame=frame).batch(0)
    plain = CacheDataset(path, None, 0, 3).batch(0)
    online = OnlineDataset(small_cfg, 5)
    with h5py.File(path, "r") as f:
        points, index = f["points"][:], f["index"][:]
    for i, row in enumerate(np.searchsorted(index, batch["index"].numpy())):
        region = frame.region(points[row])
        x = batch["input"][i].numpy()
        assert (x[:, ~region] == 0).all() and (x[1, region] > 0).mean() > 0.9
        np.testing.assert_array_equal(x[:, region], plain["input"][i].numpy()[:, region])
        rec = online.record(int(batch["index"][i]))["input"]  # online: the same cut of the float sample
        assert (rec[:, ~region] == 0).all()
        np.testing.assert_allclose(rec, x, atol=0.5 / 255 + 1e-6)


def test_the_landmarks_mask_needs_landmarks_and_valid_settings(small_cfg, tmp_path):
    from training.cache import CacheDataset, write_cache
    from training.data import OnlineDataset
    from training.errors import TrainingError
    from training.train import default_batches

    mean = override(small_cfg, "train.start", "mean")
    with pytest.raises(TrainingError, match="input_mask"):
        OnlineDataset(mean, 5).record(0)
    path = tmp_path / "mean.h5"
    write_cache(mean, path, 3, 5, progress=False)
    with pytest.raises(TrainingError, match="input_mask"):
        CacheDataset(path, None, 0, 3, frame=NetworkFrame.from_config(small_cfg)).batch(0)
    with pytest.raises(TrainingError, match="shards"):
        default_batches(small_cfg, 3, 0, 1, 0, False)
    for key, value in (("train.input_mask", "hull"), ("train.input_forehead", 2.0)):
        with pytest.raises(ConfigError, match="input_mask"):
            override(small_cfg, key, value)
