"""Texture from a photo (the paper's Fig. 9): colours projected onto the visible vertices reproduce the face's
own albedo when the "photo" is a render of that albedo; the baked atlas's padding grows each chart as scipy's 3 x 3
grey dilation does."""
from __future__ import annotations

import numpy as np

from datagen.scene import draw_scene
from reconstruct.texture import _max3x3, vertex_texture
from render.renderer import FaceRenderer, Light


def test_projected_texture_reproduces_the_rendered_albedo_where_visible(model, cfg):
    s = draw_scene(0, 5, model, cfg)
    albedo = s.head_albedo(model)
    flat_light = Light(np.array([0.0, 0.0, 1.0], np.float32), 1.0, 0.0, 0.0, 10.0)  # image = albedo
    r = FaceRenderer.from_config(model, cfg.render, backend="numba")
    verts = model.vertices(s.alpha_gt)
    img = r.render_face(s.alpha_gt, s.pose, albedo, flat_light, s.background, verts=verts).rgb
    colors, visible = vertex_texture(model, np.clip(img, 0, 1), verts, s.pose)
    face = np.zeros(model.n_vertices, bool)
    face[model.regions["narrow_face"]] = True
    seen = visible & face
    assert seen.sum() > 0.3 * face.sum()  # a frontal-ish face shows much of itself
    err = np.abs(colors[seen] - albedo[seen]).mean(-1)
    assert np.median(err) < 0.02, np.median(err)
    # hidden vertices get the albedo model's fit, not the photo: still skin-like, not background
    hidden = face & ~visible
    if hidden.any():
        assert np.abs(colors[hidden] - albedo[face].mean(0)).mean() < 0.25


def test_padding_maximum_is_scipys_grey_dilation():
    from scipy.ndimage import grey_dilation

    rng = np.random.default_rng(0)
    for shape in [(37, 53), (1, 6), (5, 1), (1, 1)]:
        tex = (rng.random(shape + (3,)) * (rng.random(shape + (1,)) > 0.6)).astype(np.float32)
        want = np.stack([grey_dilation(tex[..., c], size=3) for c in range(3)], -1)
        np.testing.assert_array_equal(_max3x3(tex), want)
        mask = rng.random(shape) > 0.8
        np.testing.assert_array_equal(_max3x3(mask), grey_dilation(mask.astype(np.uint8), size=3).astype(bool))
