"""render/occlusion.py and what a photo adds to Phong (render.renderer.Light: occlusion, shadow, srgb).

Visibility is checked on a scene whose shadows are known by construction: a small square 10 mm above the middle
of a large ground square; the renderer's options against the plain Phong render of the same face and against
the sRGB formula evaluated with the render's own normals and albedo.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from datagen.generate import PHOTO_LIGHT_KEYS, data_config
from datagen.scene import centred_pose, draw_scene
from facesynth.config import ConfigError, override
from render.camera import euler_to_rotation
from render.occlusion import ambient_occlusion, fibonacci_sphere, frame_towards, visibility
from render.renderer import FaceRenderer, Light
from render.shading import linear_to_srgb, phong_shade, srgb_to_linear


def grid(n: int, half: float, z: float) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex grid over [-half, half]^2 at height z, facing +z: (V, 3) vertices, (F, 3) triangles."""
    xs = np.linspace(-half, half, n)
    X, Y = np.meshgrid(xs, xs)
    verts = np.stack([X.ravel(), Y.ravel(), np.full(n * n, z)], 1)
    i = np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None]
    a, b, c, d = i.ravel(), i.ravel() + 1, i.ravel() + n, i.ravel() + n + 1
    return verts, np.concatenate([np.stack([a, b, d], 1), np.stack([a, d, c], 1)])


@pytest.fixture(scope="module")
def canopy():
    """A ground square of 100 mm (41 x 41 vertices, 2.5 mm apart) under a 20 mm square 10 mm above its middle."""
    ground, gt = grid(41, 50.0, 0.0)
    roof, rt = grid(5, 10.0, 10.0)
    verts = np.concatenate([ground, roof])
    tris = np.concatenate([gt, rt + len(ground)])
    normals = np.tile([0.0, 0.0, 1.0], (len(verts), 1))
    return verts, normals, tris, len(ground)


def ground_vertex(x: float, y: float) -> int:
    return int(round((y + 50) / 2.5)) * 41 + int(round((x + 50) / 2.5))


def test_frame_and_directions():
    for d in ([0, 0, 1], [1, 0, 0], [0.3, -0.5, 0.2], [0, 0, -1]):
        Q = frame_towards(np.array(d, float))
        np.testing.assert_allclose(Q @ Q.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(Q @ (np.array(d) / np.linalg.norm(d)), [0, 0, 1], atol=1e-12)
        assert np.linalg.det(Q) == pytest.approx(1.0)
    dirs = fibonacci_sphere(200)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0)
    assert np.abs(dirs.mean(0)).max() < 0.02  # evenly spread: no side favoured


def test_cast_shadows_fall_where_the_geometry_puts_them(canopy):
    verts, normals, tris, n_ground = canopy
    up, slanted, below = [0, 0, 1.0], np.array([1.0, 0, 1.0]) / np.sqrt(2), [0, 0, -1.0]
    seen = visibility(verts, normals, tris, np.array([up, slanted, below]))
    under, open_ground, roof = ground_vertex(0, 0), ground_vertex(30, 30), n_ground + 12
    assert seen[0, under] == 0 and seen[0, open_ground] == 1 and seen[0, roof] == 1
    # light at 45 degrees towards +x: the roof's shadow moves 10 mm towards -x (x in [-20, 0])
    assert seen[1, ground_vertex(-10, 0)] == 0 and seen[1, ground_vertex(-17.5, 5)] == 0
    assert seen[1, ground_vertex(5, 0)] == 1 and seen[1, ground_vertex(-25, 0)] == 1
    assert not seen[2].any()  # every vertex faces away from a light below
    # no acne: the open ground is lit from every direction above it that misses the roof
    far = [ground_vertex(x, y) for x in (-45, 45) for y in (-45, 45)]
    assert seen[:2][:, far].all()


def test_ambient_occlusion_is_lowest_under_the_roof(canopy):
    verts, normals, tris, n_ground = canopy
    ao = ambient_occlusion(verts, normals, tris, n_directions=96, size=128)
    assert ao.shape == (len(verts),) and ao.min() >= 0 and ao.max() <= 1
    centre, edge, corner = ao[ground_vertex(0, 0)], ao[ground_vertex(15, 0)], ao[ground_vertex(45, 45)]
    assert centre < edge < corner and corner > 0.95 and centre < 0.6
    assert ao[n_ground + 12] > 0.95  # the roof's top is in the open


# ----------------------------------------------------------------------------------------- the renderer
@pytest.fixture(scope="module")
def face(model, cfg):
    """``face(**light_fields)``: a render of one turned face under an oblique light, with ``.light`` and
    ``.albedo`` (V, 3) attached."""
    renderer = FaceRenderer.from_config(model, cfg.render, image_size=128, backend="numba")
    scene = draw_scene(0, 5, model, cfg)
    pose = centred_pose(model, euler_to_rotation(0.3, 0.0, 0.0), cfg.sampling.pose.scale_mean * 128, 128)
    light = Light(np.array([0.7, 0.3, 0.65], np.float32) / np.linalg.norm([0.7, 0.3, 0.65]), 0.4, 0.8, 0.05, 10.0)
    albedo = scene.head_albedo(model)

    def render(**kw):
        return renderer.render_face(scene.alpha_gt, pose, albedo, dataclasses.replace(light, **kw))
    render.light, render.albedo, render.triangles = light, albedo, model.triangles
    return render


def test_occlusion_and_shadows_only_darken(face):
    plain = face()
    for kw in ({"occlusion": 1.0}, {"shadow": 1.0}):
        out = face(**kw).gray[plain.mask]
        darker = plain.gray[plain.mask] - out
        assert darker.min() > -1e-5, kw
        assert (darker > 0.05).mean() > 0.01, kw  # some of the face is clearly darker (sockets, the nose's shadow)
        assert (darker < 0.01).mean() > 0.5, kw  # most of it is open and lit
    half = face(shadow=0.5).gray[plain.mask]
    full = face(shadow=1.0).gray[plain.mask]
    np.testing.assert_allclose(half, (plain.gray[plain.mask] + full) / 2, atol=2e-3)  # strength is linear
    assert np.array_equal(face(occlusion=0.0, shadow=0.0).rgb, plain.rgb)


def test_srgb_shades_in_linear_light_and_encodes_the_result(face):
    plain, srgb = face(), face(srgb=True)
    m = plain.mask
    assert np.array_equal(m, srgb.mask)
    li = face.light
    a = srgb.fragments.interpolate(face.albedo, face.triangles)
    lit = phong_shade(srgb.normals, srgb_to_linear(a), li.direction, li.ambient, li.diffuse, li.specular, li.shininess)
    np.testing.assert_allclose(srgb.rgb[m], linear_to_srgb(lit)[m], atol=1e-5)
    dark = m & (plain.gray < 0.25)
    assert dark.sum() > 20 and srgb.gray[dark].mean() > plain.gray[dark].mean() + 0.02  # a photo lifts the shadows
    grid = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(grid)), grid, atol=1e-5)
    assert float(linear_to_srgb(np.float32(0.2))) == pytest.approx(0.4845, abs=1e-3)  # 20 % of the light: mid-gray


def test_light_records_round_trip():
    plain = Light(np.array([0, 0, 1.0], np.float32), 0.5, 0.7, 0.05, 10.0)
    assert set(plain.to_dict()) == {"direction", "k_a", "k_d", "k_s", "shininess"}  # as written before the options
    photo = dataclasses.replace(plain, occlusion=0.3, shadow=0.8, srgb=True)
    back = Light.from_dict(photo.to_dict())
    assert (back.occlusion, back.shadow, back.srgb) == (pytest.approx(0.3), pytest.approx(0.8), True)
    old = Light.from_dict(plain.to_dict())
    assert (old.occlusion, old.shadow, old.srgb, old.ambient) == (0.0, 0.0, False, 0.5)


def _photo_fields(light: Light) -> tuple:
    return light.occlusion, light.shadow, light.srgb


def test_scene_draws_of_the_photo_light(model, cfg):
    photo = override(override(override(cfg, "sampling.light.occlusion_max", 0.6), "sampling.light.shadow_prob", 0.5),
                     "sampling.light.srgb_prob", 0.7)
    before = [draw_scene(4, i, model, cfg) for i in range(40)]
    after = [draw_scene(4, i, model, photo) for i in range(40)]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.alpha_gt, b.alpha_gt)  # the scene's other draws do not move
        np.testing.assert_array_equal(a.light.direction, b.light.direction)
        assert a.light.ambient == b.light.ambient and _photo_fields(a.light) == (0.0, 0.0, False)
        assert 0.0 <= b.light.occlusion <= 0.6 and (b.light.shadow == 0.0 or 0.5 <= b.light.shadow <= 1.0)
    assert len({b.light.occlusion for b in after}) == 40
    shadowed = np.mean([b.light.shadow > 0 for b in after])
    srgb = np.mean([b.light.srgb for b in after])
    assert 0.25 < shadowed < 0.75 and 0.45 < srgb < 0.95
    assert _photo_fields(draw_scene(4, 7, model, photo).light) == _photo_fields(after[7].light)  # same seed, same
    # recorded in a data file's config only when on: files made before the keys stay valid
    assert not set(PHOTO_LIGHT_KEYS) & set(data_config(cfg, "numba")["sampling"]["light"])
    assert set(PHOTO_LIGHT_KEYS) <= set(data_config(photo, "numba")["sampling"]["light"])
    with pytest.raises(ConfigError, match="srgb_prob"):
        override(cfg, "sampling.light.srgb_prob", 1.5)
