"""render/: camera, rasterisers (numba and GL), fragments and the Phong renderer.

Phong pixel values are checked on a sphere against the formula evaluated with the sphere's true normal at
each pixel centre; the mask and depth of a face against a plain per-triangle coverage loop; the two
rasterisers against each other.
"""
from __future__ import annotations

import numpy as np
import pytest

from datagen.scene import centred_pose, draw_scene, model_centre
from render.camera import Pose, euler_to_rotation, project, rotate_normals, rotation_to_euler
from render.raster import NumbaRasterizer, fragments_from_ids
from render.renderer import FaceRenderer, Light

NOSE_TIP = 30  # Multi-PIE landmarks, 0-based
CONTOUR = range(0, 17)
LUMA = np.array([0.299, 0.587, 0.114])


def frontal_pose(model, cfg, size: int, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> Pose:
    return centred_pose(model, euler_to_rotation(yaw, pitch, roll), cfg.sampling.pose.scale_mean * size, size)


@pytest.fixture(scope="module")
def numba_renderer(model, cfg):
    return FaceRenderer.from_config(model, cfg.render, backend="numba")


@pytest.fixture(scope="module")
def scene(model, cfg):
    return draw_scene(0, 3, model, cfg)


# ------------------------------------------------------------------------------------------ camera
def test_euler_round_trip_and_rotation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        yaw, roll = rng.uniform(-3.0, 3.0, 2)
        pitch = rng.uniform(-1.4, 1.4)
        R = euler_to_rotation(yaw, pitch, roll)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        np.testing.assert_allclose(rotation_to_euler(R), (yaw, pitch, roll), atol=1e-9)
    # R = R_z(roll) R_x(pitch) R_y(yaw): each angle alone is a rotation about its own axis
    np.testing.assert_allclose(euler_to_rotation(0.4, 0, 0) @ [0, 1, 0], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_rotation(0, 0.4, 0) @ [1, 0, 0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(euler_to_rotation(0, 0, 0.4) @ [0, 0, 1], [0, 0, 1], atol=1e-12)


def test_projection_frame_and_centred_pose(model, cfg):
    rng = np.random.default_rng(1)
    size = cfg.render.image_size
    R = euler_to_rotation(*rng.uniform(-0.5, 0.5, 3))
    pose = Pose(2.0, R, np.array([30.0, 40.0]))
    p = rng.normal(0, 50, (5, 3))
    out = project(p, pose)
    rp = p @ R.T
    np.testing.assert_allclose(out[:, 0], 2.0 * rp[:, 0] + 30.0)
    np.testing.assert_allclose(out[:, 1], 40.0 - 2.0 * rp[:, 1])  # y up in the model, down in the image
    np.testing.assert_allclose(out[:, 2], rp[:, 2])
    np.testing.assert_allclose(rotate_normals(np.eye(3), pose), R.T)  # rows: R e_i
    for _ in range(5):
        R = euler_to_rotation(*rng.uniform(-0.6, 0.6, 3))
        s = rng.uniform(0.5, 1.0)
        shift = rng.normal(0, 5, 2)
        c = project(model_centre(model)[None].astype(np.float64), centred_pose(model, R, s, size))[0]
        np.testing.assert_allclose(c[:2], [size / 2, size / 2], atol=1e-6)
        c = project(model_centre(model)[None].astype(np.float64), centred_pose(model, R, s, size, shift))[0]
        np.testing.assert_allclose(c[:2], size / 2 + shift, atol=1e-6)


def test_angle_signs_in_the_image(model, cfg):
    """Positive yaw turns the face towards the image's right, positive pitch down, positive roll
    counter-clockwise as seen in the image."""
    size = cfg.render.image_size
    lm = model.mean[model.landmarks68].astype(np.float64)

    def nose_offset(pose):  # nose tip relative to the mean of the two ends of the jaw contour
        p = project(lm, pose)
        return p[NOSE_TIP, :2] - (p[0, :2] + p[16, :2]) / 2

    base = nose_offset(frontal_pose(model, cfg, size))
    assert nose_offset(frontal_pose(model, cfg, size, yaw=0.3))[0] > base[0] + 5
    assert nose_offset(frontal_pose(model, cfg, size, yaw=-0.3))[0] < base[0] - 5
    assert nose_offset(frontal_pose(model, cfg, size, pitch=0.3))[1] > base[1] + 5  # image y is down
    p = project(lm, frontal_pose(model, cfg, size, roll=0.3))
    right_eye_corner, left_eye_corner = p[36], p[45]  # subject's right is the image's left
    assert left_eye_corner[1] < right_eye_corner[1] - 5  # counter-clockwise: the image-right eye goes up


# ------------------------------------------------------------------------------------------ Phong on a sphere
class SphereModel:
    """The parts of a FaceModel the renderer uses, for a sphere of radius ``radius`` mm at the origin."""

    def __init__(self, radius: float, subdivisions: int = 4):
        trimesh = pytest.importorskip("trimesh")
        s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
        self.mean = np.asarray(s.vertices, np.float32)
        self.triangles = np.asarray(s.faces, np.int32)
        self.landmarks68 = np.arange(68, dtype=np.int32)

    def vertex_normals(self, verts):
        return verts / np.linalg.norm(verts, axis=-1, keepdims=True)


def phong_reference(n, albedo, light_dir, ka, kd, ks, shininess):
    """I = k_a a + k_d a max(0, n.l) + k_s max(0, r.v)^shininess, r = 2 (n.l) n - l, v = (0, 0, 1)."""
    n_dot_l = n @ light_dir
    r = 2 * n_dot_l[..., None] * n - light_dir
    spec = np.where(n_dot_l > 0, np.maximum(r[..., 2], 0) ** shininess, 0.0)
    return ka * albedo + kd * albedo * np.maximum(n_dot_l, 0)[..., None] + ks * spec[..., None]


def test_phong_pixels_on_a_sphere():
    R_MM, SIZE, SCALE = 15.0, 80, 2.0
    sphere = SphereModel(R_MM)
    renderer = FaceRenderer(sphere, SIZE, "numba", "auto", 0.15, 0.85)
    rotation = euler_to_rotation(0.5, -0.3, 0.2)  # a sphere looks the same in any pose, its normals turn
    pose = Pose(SCALE, rotation, np.array([41.0, 37.5]))
    light_dir = np.array([0.45, 0.35, 0.82])
    light_dir /= np.linalg.norm(light_dir)
    light = Light(light_dir.astype(np.float32), 0.3, 0.55, 0.15, 10.0)
    colour = np.array([0.8, 0.6, 0.5], np.float32)
    albedo = np.tile(colour, (len(sphere.mean), 1))
    background = np.random.default_rng(0).uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)
    verts = sphere.mean @ rotation.T.astype(np.float32) @ rotation.astype(np.float32)  # = mean, rounding only
    out = renderer.render_face(None, pose, albedo, light, background, verts=verts)

    # the true sphere under each pixel centre, camera frame
    jj, ii = np.meshgrid(np.arange(SIZE) + 0.5, np.arange(SIZE) + 0.5)
    X, Y = (jj - pose.translation[0]) / SCALE, (pose.translation[1] - ii) / SCALE
    rho2 = X**2 + Y**2
    disk = rho2 < R_MM**2
    Z = np.sqrt(np.maximum(R_MM**2 - rho2, 0))
    n_true = np.stack([X, Y, Z], -1) / R_MM

    # silhouette: the inscribed polyhedron covers the disk but its rim, and nothing outside it
    assert not np.any(out.mask & ~disk)
    assert np.all(out.mask[rho2 < (0.98 * R_MM) ** 2])
    np.testing.assert_array_equal(out.rgb[~out.mask], background[~out.mask])
    # depth (camera frame, larger = nearer) and normals
    inner = out.mask & (n_true[..., 2] > 0.4)
    assert inner.sum() > 1500
    np.testing.assert_allclose(out.depth[inner], Z[inner], atol=0.1)
    np.testing.assert_allclose(out.normals[inner], n_true[inner], atol=5e-3)
    # the pixel values
    expected = np.clip(phong_reference(n_true, colour, light_dir, 0.3, 0.55, 0.15, 10.0), 0, 1)
    err = np.abs(out.rgb[inner] - expected[inner])
    assert err.max() < 0.004, err.max()
    assert np.ptp(expected[inner][:, 0]) > 0.3  # the test sees diffuse fall-off and a highlight
    assert (phong_reference(n_true, colour, light_dir, 0, 0, 0.15, 10.0)[inner][:, 0] > 0.1).any()
    np.testing.assert_allclose(out.gray, out.rgb @ LUMA, atol=1e-6)


# ------------------------------------------------------------------------------------------ face renders
def _coverage_reference(vi: np.ndarray, tris: np.ndarray, H: int, W: int):
    """Per-triangle loop: (H, W) bool covered (pixel centre inside a triangle, edges included) and the
    largest interpolated depth there."""
    depth = np.full((H, W), -np.inf)
    p = vi[tris]  # (F, 3, 3)
    lo = np.ceil(p[..., :2].min(1) - 0.5).astype(int)
    hi = np.floor(p[..., :2].max(1) - 0.5).astype(int)
    lo, hi = np.maximum(lo, 0), np.minimum(hi, [W - 1, H - 1])
    for f in np.flatnonzero(np.all(hi >= lo, axis=1)):
        (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = p[f]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        if area == 0:
            continue
        xs, ys = np.meshgrid(np.arange(lo[f, 0], hi[f, 0] + 1) + 0.5, np.arange(lo[f, 1], hi[f, 1] + 1) + 0.5)
        # edge functions: signed areas of the sub-triangles opposite each corner
        e0 = ((x2 - x1) * (ys - y1) - (y2 - y1) * (xs - x1)) / area
        e1 = ((x0 - x2) * (ys - y2) - (y0 - y2) * (xs - x2)) / area
        e2 = 1.0 - e0 - e1
        inside = (e0 >= 0) & (e1 >= 0) & (e2 >= 0)
        z = e0 * z0 + e1 * z1 + e2 * z2
        rows, cols = ys[inside].astype(int), xs[inside].astype(int)
        depth[rows, cols] = np.maximum(depth[rows, cols], z[inside])
    return np.isfinite(depth), depth


def test_mask_and_depth_are_the_projected_triangles(model, cfg, scene):
    size = 96
    pose = frontal_pose(model, cfg, size, yaw=0.4, pitch=-0.1)
    verts = model.vertices(scene.alpha_gt)
    vi = project(verts, pose)
    ids = NumbaRasterizer().rasterize(vi, model.triangles, size, size)
    frags = fragments_from_ids(ids, vi, model.triangles)
    covered, depth = _coverage_reference(vi.astype(np.float64), model.triangles, size, size)
    assert covered.sum() > 0.2 * size * size
    assert np.count_nonzero(frags.mask != covered) <= 2
    both = frags.mask & covered
    np.testing.assert_allclose(frags.depth[both], depth[both], atol=1e-3)  # the nearest triangle wins
    assert np.all(frags.depth[~frags.mask] == 0)
    # barycentrics: convex weights that give back the pixel centre
    b = frags.bary[frags.mask]
    assert np.all(b >= 0) and np.allclose(b.sum(-1), 1, atol=1e-5)
    corners = vi[model.triangles[ids[frags.mask]], :2]  # (N, 3, 2)
    rows, cols = np.nonzero(frags.mask)
    np.testing.assert_allclose(np.einsum("nk,nkc->nc", b, corners), np.stack([cols, rows], -1) + 0.5, atol=1e-3)


def test_landmarks_and_depth_of_a_face(model, cfg, numba_renderer, scene):
    r = numba_renderer
    albedo = scene.head_albedo(model)
    out = r.render_face(scene.alpha_gt, scene.pose, albedo, scene.light, scene.background)
    expected = project(model.landmarks(scene.alpha_gt), scene.pose)[:, :2]
    np.testing.assert_allclose(out.landmarks, expected, atol=1e-3)
    from scipy.ndimage import binary_dilation

    px = np.floor(out.landmarks).astype(int)
    assert np.all((px >= 0) & (px < r.size))
    inner = [k for k in range(68) if k not in CONTOUR]
    assert out.mask[px[inner, 1], px[inner, 0]].all()
    grown = binary_dilation(out.mask, iterations=1)  # contour landmarks sit on the silhouette
    assert grown[px[:, 1], px[:, 0]].all()
    # frontal: the nose tip is the nearest point, well in front of the cheeks
    front = r.render_face(scene.alpha_gt, frontal_pose(model, cfg, r.size), albedo, scene.light)
    lm = front.landmarks
    nose = tuple(np.floor(lm[NOSE_TIP, ::-1]).astype(int))
    for jaw, nostril in ((1, 31), (15, 35)):
        cheek = tuple(np.floor((lm[jaw, ::-1] + lm[nostril, ::-1]) / 2).astype(int))
        assert front.mask[cheek]
        assert front.depth[nose] > front.depth[cheek] + 10.0, (front.depth[nose], front.depth[cheek])
    deepest = np.unravel_index(np.argmax(np.where(front.mask, front.depth, -np.inf)), front.depth.shape)
    assert np.hypot(*(np.array(deepest) - nose)) < 0.05 * r.size
    # normals: unit on the mask, zero outside, facing the camera at the nose
    n = np.linalg.norm(front.normals, axis=-1)
    np.testing.assert_allclose(n[front.mask], 1.0, atol=1e-4)
    assert np.all(n[~front.mask] == 0)
    assert front.normals[nose][2] > 0.8


def test_shading_image_matches_the_face_normals(model, cfg, numba_renderer, scene):
    r = numba_renderer
    face = r.render_face(scene.alpha_t, scene.pose, scene.head_albedo(model), scene.light)
    shading, mask = r.render_shading(scene.alpha_t, scene.pose)
    np.testing.assert_array_equal(mask, face.mask)
    expected = cfg.render.shading_ambient + cfg.render.shading_diffuse * np.maximum(face.normals[..., 2], 0)
    np.testing.assert_allclose(shading[mask], expected[mask], atol=1e-5)
    assert np.all(shading[~mask] == 0)


@pytest.fixture(scope="module")
def gl_renderer(model, cfg):
    try:
        r = FaceRenderer.from_config(model, cfg.render, backend="gl")
    except Exception as e:  # no OSMesa / EGL library, or no context: a skip, not a failure
        pytest.skip(f"no OpenGL context: {type(e).__name__}: {e}")
    yield r
    r.rasterizer.close()


def test_numba_and_gl_rasterisers_agree(model, numba_renderer, gl_renderer, scene):
    albedo = scene.head_albedo(model)
    a = numba_renderer.render_face(scene.alpha_gt, scene.pose, albedo, scene.light, scene.background)
    b = gl_renderer.render_face(scene.alpha_gt, scene.pose, albedo, scene.light, scene.background)
    assert gl_renderer.backend == "gl"
    n_mask = a.mask.sum()
    assert n_mask > 0.2 * a.mask.size
    assert np.count_nonzero(a.mask != b.mask) <= max(5, n_mask // 1000)
    both = a.mask & b.mask
    same_id = a.fragments.face_id[both] == b.fragments.face_id[both]
    assert same_id.mean() > 0.99
    close = np.all(np.abs(a.rgb - b.rgb) < 2e-3, axis=-1)
    assert close.mean() > 0.99
    # a second frame of other geometry reuses the context
    s2, m2 = numba_renderer.render_shading(scene.alpha_rand, scene.pose)
    g2, gm2 = gl_renderer.render_shading(scene.alpha_rand, scene.pose)
    assert np.count_nonzero(m2 != gm2) <= max(5, m2.sum() // 1000)
    assert (np.abs(s2 - g2) < 2e-3).mean() > 0.99


# ------------------------------------------------------------------------------------------ culling
def test_closed_surfaces_are_found_and_culling_them_changes_no_pixel(model, cfg):
    from render.raster import closed_surface_triangles

    trimesh = pytest.importorskip("trimesh")
    ball = trimesh.creation.icosphere(subdivisions=2, radius=10.0)
    assert closed_surface_triangles(ball.faces, ball.vertices).all()
    assert not closed_surface_triangles(ball.faces[:, ::-1], ball.vertices).any()  # inside out: keep all
    assert not closed_surface_triangles(ball.faces[1:], ball.vertices).any()  # a hole: keep all
    closed = closed_surface_triangles(model.triangles, model.mean)
    eyes_teeth = np.zeros(model.n_vertices, bool)
    eyes_teeth[np.concatenate([model.regions["eyes"], model.regions["teeth"]])] = True
    np.testing.assert_array_equal(closed, eyes_teeth[model.triangles].all(1))
    rast, size = NumbaRasterizer(), 96
    for index, (yaw, pitch) in enumerate(((0.0, 0.0), (0.9, -0.3), (-0.7, 0.4))):
        verts = model.vertices(draw_scene(0, index, model, cfg).alpha_gt)
        vi = project(verts, frontal_pose(model, cfg, size, yaw=yaw, pitch=pitch))
        np.testing.assert_array_equal(rast.rasterize(vi, model.triangles, size, size, closed),
                                      rast.rasterize(vi, model.triangles, size, size))


def test_unit_interpolation_normalises_each_pixel(model, cfg, scene):
    size = 64
    pose = frontal_pose(model, cfg, size)
    verts = model.vertices(scene.alpha_gt)
    vi = project(verts, pose)
    frags = fragments_from_ids(NumbaRasterizer().rasterize(vi, model.triangles, size, size), vi, model.triangles)
    vn = rotate_normals(model.vertex_normals(verts), pose)
    plain = frags.interpolate(vn, model.triangles)
    unit = frags.interpolate(vn, model.triangles, unit=True)
    m = frags.mask
    expected = plain[m] / np.linalg.norm(plain[m], axis=-1, keepdims=True)
    np.testing.assert_allclose(unit[m], expected, atol=1e-6)
    assert np.all(unit[~m] == 0)
