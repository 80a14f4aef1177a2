"""Fine-detail ground truth: the displacement map, and its rendering into depth and normals."""
from __future__ import annotations

import numpy as np
import pytest

from datagen.detail import sample_detail
from datagen.sample import make_sample
from facesynth.config import load_config
from morphable.model import load_model
from render.renderer import FaceRenderer


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(overrides={"render.image_size": 128, "render.backend": "numba", "datagen.detail": True,
                                 "datagen.detail_uv_size": 256})
    model = load_model(cfg.resolve_path(cfg.model.path))
    return cfg, model, FaceRenderer.from_config(model, cfg.render)


def test_detail_map_depths_and_regions(setup):
    cfg, model, _ = setup
    d = sample_detail(np.random.default_rng(3), model, 256, 0.25, 1.0)
    assert d.displacement.shape == d.wrinkles.shape == (256, 256)
    # grooves are at most a little deeper than the deepest wrinkle (overlaps), pores are tiny
    assert -2.5 < d.displacement.min() < -0.2
    assert np.abs(d.displacement[~d.wrinkles]).mean() < 0.05
    assert 0.005 < d.wrinkles.mean() < 0.2
    # forehead wrinkles lie above the eyes in UV (rows are v from the top)
    rows = np.nonzero(d.wrinkles)[0]
    assert rows.min() < 0.3 * 256


def test_detail_is_rendered_with_ground_truth(setup):
    cfg, model, renderer = setup
    s = make_sample(0, 5, model, cfg, renderer)
    plain_cfg = load_config(overrides={"render.image_size": 128, "render.backend": "numba"})
    plain = make_sample(0, 5, model, plain_cfg, renderer)
    # the same face, pose and light: only the detail differs
    assert np.array_equal(s.face_mask, plain.face_mask)
    m = s.face_mask
    assert s.displacement is not None and s.wrinkles is not None
    assert s.wrinkles[m].mean() > 0.005 and not s.wrinkles[~m].any()
    # depth moves by the displacement (along the normal, so by d / n_z in depth)
    diff = (s.depth - plain.depth)[m]
    assert np.corrcoef(diff, s.displacement[m])[0, 1] > 0.9
    # normals change in the wrinkles, hardly elsewhere; the image changes where the normals change
    angle = np.degrees(np.arccos(np.clip((s.normals * plain.normals).sum(-1), -1, 1)))
    assert angle[s.wrinkles].mean() > 3 * angle[m & ~s.wrinkles].mean()
    assert np.abs(s.rgb - plain.rgb)[s.wrinkles].mean() > np.abs(s.rgb - plain.rgb)[m & ~s.wrinkles].mean()
