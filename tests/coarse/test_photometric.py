"""The photometric refinement of the coarse face (coarse/photometric.py): on renders of model faces it moves the
landmark fit towards the truth, keeps expression weights in [0, 1] and out-of-span modes where they were; the
coarse stage runs it between the landmark fit and the network, and weight 0 or the flag turns it off."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from coarse.fit import fit_map
from coarse.landmarks import vertex_landmarks
from coarse.photometric import photometric_fit
from datagen.scene import draw_scene
from render.camera import project
from render.renderer import FaceRenderer
from training.metrics import coefficient_errors


@pytest.fixture(scope="module")
def scenes(model, cfg):
    """Three rendered sample faces with their noisy true landmarks (1 px) and landmark fits."""
    r = FaceRenderer.from_config(model, cfg.render, backend="numba")
    lms = vertex_landmarks(model, 1.0)
    out = []
    for i in range(3):
        s = draw_scene(3, i, model, cfg)
        img = np.clip(r.render_face(s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background).rgb, 0, 1)
        rng = np.random.default_rng(i)
        pts = project(model.landmarks(s.alpha_gt).astype(np.float64), s.pose)[:, :2] + rng.normal(0, 1.0, (68, 2))
        alpha, pose = fit_map(model, pts, lms, cfg.fit)
        out.append((s, img, pts, alpha, pose))
    return out, lms


def _params(cfg, **changes):
    return dataclasses.replace(cfg.refine.photometric, **changes)


def test_shading_moves_the_landmark_fit_towards_the_truth(model, cfg, scenes):
    faces, lms = scenes
    params = _params(cfg, weight=10000.0)
    before, after = [], []
    for s, img, pts, alpha, pose in faces:
        refined, new_pose = photometric_fit(img, alpha, pose, pts, model, lms, cfg.fit, params)
        ex = refined[model.n_identity:]
        assert refined.dtype == np.float32 and ex.min() >= 0 and ex.max() <= 1
        assert abs(new_pose.scale / pose.scale - 1) < 0.1  # the pose moves, it does not run away
        before.append(coefficient_errors(model, alpha[None], s.alpha_gt[None]).mean())
        after.append(coefficient_errors(model, refined[None], s.alpha_gt[None]).mean())
    assert np.mean(after) < 0.95 * np.mean(before), (before, after)


def test_weight_zero_or_the_flag_turns_the_stage_off(cfg):
    from coarse.stage import CoarseSettings
    from facesynth.config import override

    assert CoarseSettings.from_config(cfg).photometric == cfg.refine.photometric
    assert CoarseSettings.from_config(cfg, photometric=False).photometric is None
    assert CoarseSettings.from_config(override(cfg, "refine.photometric.weight", 0.0)).photometric is None


def test_region_triangles_index_the_region_vertices(model):
    face = model.regions["face"]
    glob = model.region_triangles("face")
    local = model.region_triangles("face", local=True)
    assert len(glob) == len(local) > 0 and local.min() >= 0 and local.max() < len(face)
    np.testing.assert_array_equal(face[local], glob)


def test_identity_modes_past_n_identity_keep_the_start(model, cfg, scenes):
    faces, lms = scenes
    s, img, pts, alpha, pose = faces[1]
    start = alpha.copy()
    start[40:model.n_identity] = 0.5  # out-of-span modes with a value: they must stay as they are
    refined, _ = photometric_fit(img, start, pose, pts, model, lms, cfg.fit, _params(cfg, weight=1e4),
                                 n_identity=40)
    np.testing.assert_array_equal(refined[40:model.n_identity], start[40:model.n_identity])
    assert not np.allclose(refined[:40], start[:40])


def test_the_coarse_stage_refines_the_fit_and_starts_the_network_there(model, cfg, scenes):
    from coarse.stage import CoarseSettings, coarse_fit
    from coarse.frame import NetworkFrame

    faces, lms = scenes
    s, img, pts, alpha, pose = faces[2]
    plain = CoarseSettings(lms, cfg.fit)
    shaded = dataclasses.replace(plain, photometric=cfg.refine.photometric)
    a = coarse_fit(img, pts, model, plain, cfg.render)
    b = coarse_fit(img, pts, model, shaded, cfg.render)
    assert a.method == "landmark_fit" and b.method == "photometric_fit"
    np.testing.assert_array_equal(a.fit, b.fit)
    assert not np.allclose(b.alpha, b.fit) and np.array_equal(b.start, b.alpha)
    keep = dataclasses.replace(shaded, predict=lambda x, al: al, frame=NetworkFrame.from_config(cfg), iterations=1)
    c = coarse_fit(img, pts, model, keep, cfg.render)  # a network that returns its a_t: the photometric fit
    assert c.method == "iterative_network"
    np.testing.assert_allclose(c.alpha, b.alpha, atol=1e-6)
    np.testing.assert_array_equal(c.start, b.alpha)
