"""Textured head scans as test photos: load a scan (OBJ + texture + ``landmarks68.txt``), put it in the
model frame, and render it with a perspective camera (pyrender) in chosen poses, lenses and lights.

Frames and units:
- the model frame (see :mod:`morphable.model`): millimetres, y up, the face looking along +z. A scan file's
  axes are not trusted: :func:`load_scan` moves the scan by the rotation and translation (no scale: the scan's
  true size matters) that best take its 68 landmarks (nose, eyes, outer lips) onto the model's mean-face
  landmarks;
- a render: the head is turned by :func:`render.camera.euler_to_rotation` (yaw, pitch, roll) about its
  landmarks' centroid, which sits on the camera axis ``distance_mm`` in front of a pinhole camera looking
  along -z; the image frame is :mod:`render.camera`'s (pixels, origin at the top-left corner, x right,
  y down), the principal point at the image centre. Focal lengths are 35 mm-equivalent: ``f_px = focal_mm /
  36 * image_size`` (a 36 mm wide full-frame sensor across the square image).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .now_metric import ALIGN_LANDMARKS, Similarity, fit_similarity

#: The landmark file of a scan folder: 68 lines "x y z" in the OBJ's frame and units, Multi-PIE order.
LANDMARKS_FILE = "landmarks68.txt"
#: Width of the full-frame sensor that defines 35 mm-equivalent focal lengths, mm.
SENSOR_WIDTH_MM = 36.0


class ScanError(ValueError):
    """A scan folder cannot be used (missing or unreadable files, no texture, bad landmarks): one line."""


@dataclass(frozen=True)
class Scan:
    """A textured scan in the model frame.

    mesh: the textured ``trimesh.Trimesh`` (vertices (V, 3) mm, model frame; seam vertices are duplicated
        once per UV); landmarks: (68, 3) mm, model frame, Multi-PIE order;
    points: (P, 3) the distinct vertex positions (the scan points a metric scores);
    point_index: (V,) the row of ``points`` of each mesh vertex;
    to_model: the rigid transform applied to the file's coordinates; source: the OBJ file.
    """

    mesh: object
    landmarks: np.ndarray
    points: np.ndarray
    point_index: np.ndarray
    to_model: Similarity
    source: Path


def _scan_files(folder: str | Path, need_landmarks: bool = True) -> tuple[Path, Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanError(f"scan folder {folder} not found (it holds one .obj, its texture and {LANDMARKS_FILE})")
    objs = sorted(folder.glob("*.obj"))
    if len(objs) != 1:
        raise ScanError(f"scan folder {folder} must hold exactly one .obj file, found {len(objs)}")
    lm = folder / LANDMARKS_FILE
    if need_landmarks and not lm.is_file():
        raise ScanError(f"scan folder {folder} has no {LANDMARKS_FILE} (68 lines 'x y z')")
    return objs[0], lm


def read_landmarks(path: str | Path) -> np.ndarray:
    """(68, 3) float64 landmarks from a text file of 68 lines ``x y z`` (``#`` comments allowed)."""
    try:
        lm = np.loadtxt(path, comments="#", ndmin=2)
    except ValueError as e:
        raise ScanError(f"{path}: not 68 lines of 3 numbers ({str(e).splitlines()[0]})") from None
    if lm.shape != (68, 3) or not np.isfinite(lm).all():
        raise ScanError(f"{path}: expected 68 finite points 'x y z', got an array of shape {lm.shape}")
    return lm


def load_scan(folder: str | Path, reference_landmarks: np.ndarray, landmarks: np.ndarray | None = None) -> Scan:
    """Load the scan in ``folder`` and move it into the model frame.

    Args:
        folder: holds one ``.obj`` with its ``.mtl`` and texture image, and ``landmarks68.txt``, in mm.
        reference_landmarks: (68, 3) the model's mean-face landmarks (``model.landmarks(zeros)``), mm.
        landmarks: (68, 3) the scan's landmarks in the OBJ's frame (e.g. :func:`place_landmarks`) instead of
            the folder's ``landmarks68.txt``.
    Raises:
        ScanError: missing or unreadable files, no texture, landmarks that are not 68 x 3.
    """
    import trimesh

    obj, lm_path = _scan_files(folder, need_landmarks=landmarks is None)
    landmarks = read_landmarks(lm_path) if landmarks is None else np.asarray(landmarks, np.float64)
    eyes = float(np.linalg.norm(landmarks[36] - landmarks[45]))
    if not 50.0 < eyes < 150.0:
        raise ScanError(f"{lm_path}: outer eye corners (36, 45) are {eyes:.4g} apart, not 50-150: is the scan in mm?")
    try:
        mesh = trimesh.load(obj, process=False, force="mesh")
    except Exception as e:  # trimesh raises many types for a broken file
        raise ScanError(f"{obj}: cannot read the mesh ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                        ) from None
    if len(mesh.faces) == 0:
        raise ScanError(f"{obj}: no triangles")
    material = getattr(mesh.visual, "material", None)
    image = getattr(material, "image", None) or getattr(material, "baseColorTexture", None)
    if mesh.visual.kind != "texture" or getattr(mesh.visual, "uv", None) is None or image is None:
        raise ScanError(f"{obj}: no texture (the .obj needs UVs and an .mtl whose map_Kd image exists)")
    T = fit_similarity(landmarks[ALIGN_LANDMARKS], np.asarray(reference_landmarks)[ALIGN_LANDMARKS], scale=False)
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = T.rotation, T.translation
    mesh.apply_transform(M)
    points, index = np.unique(np.asarray(mesh.vertices), axis=0, return_inverse=True)
    # smooth normals across the UV seams (trimesh's would see each copy of a seam vertex as a border)
    welded = trimesh.Trimesh(points, index.reshape(-1)[mesh.faces], process=False)
    mesh.vertex_normals = np.asarray(welded.vertex_normals)[index.reshape(-1)]
    return Scan(mesh, T.apply(landmarks), points, index.reshape(-1), T, obj)


@dataclass(frozen=True)
class ScanView:
    """One photo of a scan: head turn (degrees, :func:`render.camera.euler_to_rotation`), lens (35 mm-equivalent
    focal length, mm) and distance from the camera to the head's landmark centroid (mm), a directional light
    (unit direction towards the light, camera frame: x right, y up, +z towards the camera; pyrender intensity),
    ambient light (fraction of the albedo), and the seed of the background."""

    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    focal_mm: float
    distance_mm: float
    light_direction: tuple[float, float, float]
    light_intensity: float
    ambient: float
    background_seed: int

    def focal_px(self, image_size: int) -> float:
        return self.focal_mm / SENSOR_WIDTH_MM * image_size

    def rotation(self) -> np.ndarray:
        from render.camera import euler_to_rotation

        return euler_to_rotation(*np.radians([self.yaw_deg, self.pitch_deg, self.roll_deg]))

    def to_dict(self) -> dict:
        return asdict(self)


def sample_views(n: int, sc) -> list[ScanView]:
    """``n`` views for a :class:`facesynth.config.ScanEvalConfig`: yaw evenly over [-yaw_max, yaw_max]
    (ascending), pitch and roll uniform in +-their maxima, the cameras of ``sc.cameras`` in turn with a
    uniform distance in each one's range, a light uniform in the cone of ``sc.light_max_angle_deg`` around
    the camera axis. The same ``sc.seed`` gives the same views."""
    if n < 1:
        raise ScanError(f"--views must be at least 1, got {n}")
    rng = np.random.default_rng(sc.seed)
    yaws = np.linspace(-sc.yaw_max_deg, sc.yaw_max_deg, n) if n > 1 else np.zeros(1)
    views = []
    for i, yaw in enumerate(yaws):
        focal, near, far = sc.cameras[i % len(sc.cameras)]
        cos_max = np.cos(np.radians(sc.light_max_angle_deg))
        cz = rng.uniform(cos_max, 1.0)
        phi = rng.uniform(0, 2 * np.pi)
        sz = np.sqrt(1 - cz * cz)
        views.append(ScanView(
            float(yaw), float(rng.uniform(-1, 1) * sc.pitch_max_deg), float(rng.uniform(-1, 1) * sc.roll_max_deg),
            float(focal), float(rng.uniform(near, far)), (float(sz * np.cos(phi)), float(sz * np.sin(phi)), float(cz)),
            float(rng.uniform(*sc.light_intensity)), float(rng.uniform(*sc.ambient)), int(rng.integers(2 ** 31))))
    return views


@dataclass(frozen=True)
class ScanImage:
    """A render: image (H, W, 3) uint8 RGB; mask (H, W) bool, the scan's pixels (coverage > 1/2);
    landmarks (68, 2) float64 pixel x, y of the scan's landmarks (image frame of :mod:`render.camera`)."""

    image: np.ndarray
    mask: np.ndarray
    landmarks: np.ndarray


def _look_along(z: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose third column is the unit vector ``z``."""
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z], 1)


class ScanRenderer:
    """Offscreen pyrender renderer of one scan (OSMesa on a CPU, EGL on a GPU: the platform of
    :func:`render.raster.gl_platform_name`), reused for every view.

    Args:
        scan: the scan; image_size: square output side, pixels; supersample: render at this factor and
            average each block (anti-aliased edges); platform: ``auto``, ``osmesa`` or ``egl``.
    """

    def __init__(self, scan: Scan, image_size: int, supersample: int = 2, platform: str = "auto"):
        from render.raster import gl_platform_name

        os.environ.setdefault("PYOPENGL_PLATFORM", gl_platform_name(platform))
        import pyrender

        if image_size < 16:
            raise ScanError(f"image size must be at least 16 pixels, got {image_size}")
        self.pyrender = pyrender
        self.scan, self.size, self.ss = scan, image_size, max(1, int(supersample))
        self.pivot = scan.landmarks.mean(0)
        tex = np.asarray(scan.mesh.visual.material.image.convert("RGB"))
        material = pyrender.MetallicRoughnessMaterial(
            baseColorTexture=pyrender.Texture(source=tex, source_channels="RGB"), metallicFactor=0.0,
            roughnessFactor=0.8)
        self.scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.zeros(3))
        self.head = self.scene.add(pyrender.Mesh.from_trimesh(scan.mesh, material=material, smooth=True))
        side = self.size * self.ss
        self.camera = self.scene.add(pyrender.IntrinsicsCamera(1.0, 1.0, side / 2, side / 2, znear=10.0, zfar=1e5))
        self.light = self.scene.add(pyrender.DirectionalLight(color=np.ones(3), intensity=1.0))
        self.renderer = pyrender.OffscreenRenderer(side, side)

    def _place(self, view: ScanView) -> np.ndarray:
        """Pose the head, camera and light for ``view``; returns the head's (4, 4) model -> world matrix."""
        R = view.rotation()
        M = np.eye(4)
        M[:3, :3], M[:3, 3] = R, -R @ self.pivot
        self.scene.set_pose(self.head, M)
        f = view.focal_px(self.size * self.ss)
        self.camera.camera.fx = self.camera.camera.fy = f
        cam = np.eye(4)
        cam[2, 3] = view.distance_mm
        self.scene.set_pose(self.camera, cam)
        light = np.eye(4)
        light[:3, :3] = _look_along(np.asarray(view.light_direction, np.float64))  # shines along -direction
        self.scene.set_pose(self.light, light)
        self.light.light.intensity = view.light_intensity
        self.scene.ambient_light = np.full(3, view.ambient)
        return M

    def project(self, points: np.ndarray, view: ScanView) -> np.ndarray:
        """(N, 3) model-frame points -> (N, 2) pixel x, y in the output image (perspective)."""
        X = np.asarray(points, np.float64) @ view.rotation().T - view.rotation() @ self.pivot
        depth = view.distance_mm - X[:, 2]
        f, c = view.focal_px(self.size), self.size / 2
        return np.stack([c + f * X[:, 0] / depth, c - f * X[:, 1] / depth], -1)

    def _render_rgba(self, flags) -> np.ndarray:
        """(H, W, 4) float: colour premultiplied by coverage (the background renders black), coverage."""
        color, depth = self.renderer.render(self.scene, flags=flags)
        rgba = np.concatenate([color[..., :3].astype(np.float32) / 255.0, (depth > 0)[..., None]], -1)
        s, n = self.ss, self.size
        return rgba.reshape(n, s, n, s, 4).mean((1, 3))

    def render(self, view: ScanView, background: np.ndarray) -> ScanImage:
        """The textured scan seen in ``view`` over ``background`` ((H, W, 3) float in [0, 1], H = W = image
        size)."""
        if background.shape != (self.size, self.size, 3):
            raise ValueError(f"background must be ({self.size}, {self.size}, 3), got {background.shape}")
        self._place(view)
        rgba = self._render_rgba(self.pyrender.RenderFlags.NONE)
        out = rgba[..., :3] + (1.0 - rgba[..., 3:]) * background
        image = (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
        return ScanImage(image, rgba[..., 3] > 0.5, self.project(self.scan.landmarks, view))

    def render_colors(self, vertex_colors: np.ndarray, view: ScanView) -> np.ndarray:
        """The scan with per-vertex colours ((V, 3) float in [0, 1]) shaded by a head-on light
        (0.35 + 0.65 max(0, n . v)), over white: (H, W, 3) float."""
        pyrender = self.pyrender
        M = self._place(view)
        mesh = self.scan.mesh
        normals = np.asarray(mesh.vertex_normals) @ M[:3, :3].T
        view_dir = -(np.asarray(mesh.vertices) @ M[:3, :3].T + M[:3, 3])
        view_dir[:, 2] += view.distance_mm
        facing = (normals * view_dir).sum(-1) / np.linalg.norm(view_dir, axis=-1)
        colors = np.clip(vertex_colors * (0.35 + 0.65 * np.clip(facing, 0, 1))[:, None], 0, 1)
        prim = pyrender.Primitive(positions=np.asarray(mesh.vertices, np.float32), indices=np.asarray(mesh.faces),
                                  color_0=np.concatenate([colors, np.ones((len(colors), 1))], 1).astype(np.float32))
        node = self.scene.add(pyrender.Mesh([prim]), pose=M)
        self.head.mesh.is_visible = False
        try:
            rgba = self._render_rgba(pyrender.RenderFlags.FLAT)
        finally:
            self.scene.remove_node(node)
            self.head.mesh.is_visible = True
        return rgba[..., :3] + (1.0 - rgba[..., 3:])

    def render_depth(self, view: ScanView, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The textured scan in ``view`` over ``background`` ((H, W, 3) float in [0, 1]) as (H, W, 3) uint8, and
        the depth (H, W) mm along the camera axis of each pixel (0: no scan). Needs ``supersample`` 1."""
        if self.ss != 1:
            raise ValueError("render_depth needs a renderer made with supersample=1")
        self._place(view)
        color, depth = self.renderer.render(self.scene, flags=self.pyrender.RenderFlags.NONE)
        background = (np.clip(background, 0, 1) * 255 + 0.5).astype(np.uint8)
        return np.where((depth > 0)[..., None], color[..., :3], background), depth.astype(np.float64)

    def unproject(self, xy: np.ndarray, depth: np.ndarray, view: ScanView) -> np.ndarray:
        """(N, 3) model-frame points seen at pixels ``xy`` (N, 2) at camera depths ``depth`` (N,) mm in ``view``:
        the inverse of :meth:`project`."""
        f, c = view.focal_px(self.size), self.size / 2
        X = np.stack([(xy[:, 0] - c) * depth / f, -(xy[:, 1] - c) * depth / f, view.distance_mm - depth], 1)
        return X @ view.rotation() + self.pivot

    def close(self) -> None:
        self.renderer.delete()


# ---------------------------------------------------------------------------------------------- landmarks
#: Framings of :func:`place_landmarks`: fields of view (degrees) and aim shifts (mm, x and y) in turn.
PLACE_FOVS_DEG = (8.5, 10.0, 11.5)
PLACE_SHIFTS_MM = ((0.0, 0.0), (12.0, -12.0), (-12.0, 12.0))


def place_landmarks(folder: str | Path, detect_params=None, image_size: int = 1024,
                    distance_mm: float = 2000.0) -> np.ndarray:
    """68 landmarks for a scan folder that has none, found as a photo's are: the textured scan rendered head-on
    (the OBJ's own frame: y up, the face looking along +z, mm) by a camera ``distance_mm`` away at ``image_size``
    pixels, in 9 framings (:data:`PLACE_FOVS_DEG` x :data:`PLACE_SHIFTS_MM`); on each, the detector and dlib's
    68-point predictor (:func:`coarse.detect.detect_faces`), each point carried onto the surface by the render's
    depth; the 9 results projected into the first framing, their per-point median taken in the image and
    carried onto the surface again.

    Returns:
        (68, 3) float64 landmarks in the OBJ's frame and units, Multi-PIE order (the format of
        :data:`LANDMARKS_FILE`).
    Raises:
        ScanError: unreadable files, or no face found in any framing.
    """
    import trimesh

    from coarse.detect import ReconstructionInputError, detect_faces

    obj = _scan_files(folder, need_landmarks=False)[0]
    try:
        mesh = trimesh.load(obj, process=False, force="mesh")
    except Exception as e:  # trimesh raises many types for a broken file
        raise ScanError(f"{obj}: cannot read the mesh ({type(e).__name__})") from None
    v = np.asarray(mesh.vertices, np.float64)
    front = v[v[:, 2] > v[:, 2].max() - 60.0]  # the face: the 60 mm nearest the camera
    centre = np.r_[0.5 * (front[:, :2].min(0) + front[:, :2].max(0)), v[:, 2].max() - 40.0]
    scan = Scan(mesh, np.tile(centre, (68, 1)), v, np.arange(len(v)), Similarity(1.0, np.eye(3), np.zeros(3)),
                obj)
    renderer = ScanRenderer(scan, image_size, supersample=1)
    background = np.full((image_size, image_size, 3), 0.5)
    found, base = [], None
    try:
        for fov in PLACE_FOVS_DEG:
            if found == [] and fov != PLACE_FOVS_DEG[0]:
                break
            focal = SENSOR_WIDTH_MM / (2 * np.tan(np.radians(fov) / 2))
            view = ScanView(0.0, 0.0, 0.0, float(focal), distance_mm, (0.0, 0.0, 1.0), 3.0, 0.4, 0)
            for shift in PLACE_SHIFTS_MM:
                renderer.pivot = centre + np.r_[shift, 0.0]
                image, depth = renderer.render_depth(view, background)
                try:
                    points = detect_faces(image, detect_params)[0].landmarks
                    on_scan = _depth_at(depth, points)
                except (ReconstructionInputError, ScanError):
                    if base is None:
                        break  # the first framing shows no face: the others (a little wider or shifted) will not
                    continue  # a point off the scan: this framing says nothing
                if base is None:
                    base = (view, renderer.pivot.copy(), depth)
                found.append(renderer.unproject(points, on_scan, view))
        if base is None:
            raise ScanError(f"{obj}: no face found in head-on renders (is +z the face's direction and y up?)")
        view, pivot, depth = base
        renderer.pivot = pivot
        median = np.median(np.stack([renderer.project(p, view) for p in found]), axis=0)
        return renderer.unproject(median, _depth_at(depth, median), view)
    finally:
        renderer.close()


def _depth_at(depth: np.ndarray, xy: np.ndarray, radius: int = 5) -> np.ndarray:
    """(N,) the render's depth at pixels ``xy`` (N, 2): the median of the scan's pixels within ``radius`` (a
    silhouette point's pixel may be background)."""
    H, W = depth.shape
    out = np.empty(len(xy))
    for k, (x, y) in enumerate(np.floor(xy).astype(int)):
        patch = depth[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
        hit = patch[patch > 0]
        out[k] = np.median(hit) if len(hit) else np.nan
    if not np.isfinite(out).all():
        raise ScanError("a landmark fell off the scan in a head-on render")
    return out
