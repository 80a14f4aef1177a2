"""Synthetic faces with known fine detail, framed and rendered as the SfS stage sees a face: one source for
``refine evaluate`` (:mod:`reconstruct.evaluate`) and the detail network's training data
(:mod:`training.detail_data`).

- :func:`detail_frame_config`: the generator's settings for such faces: ``datagen.detail`` on, a square
  image of the SfS resolution (``refine.resolution``) that the face fills (``detail.frame_scale``
  0.0058: about 0.67 mm per pixel at 256 px, as :func:`coarse.frame.sfs_frame_pose` frames a
  photo), yaw spread ``detail.frame_yaw_std_deg``;
- :class:`DetailFace`: one face's parameters and detail ground truth, drawn on the fly (:func:`draw_face`)
  or read from shards made with ``datagen.detail`` (:func:`shard_face`); :func:`detail_faces` yields either;
- :func:`render_scene`: the truth (detailed), the same face without detail, and the coarse start rendered as
  the pipeline renders it (flat albedo, frontal light), with the face mask.

Frames: every image is (H, W) in the face's frame (pixels, rows down); depth in mm along the camera axis,
larger = nearer; normals camera-frame unit vectors (x right, y up, z towards the camera).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .faces import FaceRecord, shard_faces
from .generate import DatagenError
from .scene import draw_scene
from facesynth.config import override
from render.camera import Pose
from render.renderer import FaceRender, Light


def detail_frame_config(cfg, resolution: int | None = None):
    """``cfg`` with fine detail on and on-the-fly faces filling a square frame of ``resolution`` pixels
    (default ``refine.resolution``), the frame SfS and the detail network work in."""
    cfg = override(cfg, "datagen.detail", True)
    cfg = override(cfg, "render.image_size", resolution or cfg.refine.resolution)
    cfg = override(cfg, "sampling.pose.scale_mean", cfg.detail.frame_scale)
    return override(cfg, "sampling.pose.yaw_std_deg", cfg.detail.frame_yaw_std_deg)


@dataclass(frozen=True)
class DetailFace:
    """One synthetic face with fine-detail ground truth.

    alpha_gt: (K,) shape coefficients; pose: its pose in the frame; albedo: (V, 3) per-vertex head albedo;
    light: the Phong light; background: (H, W, 3) or None (black); displacement_uv: (S, S) mm over the face
    UV tile (:mod:`datagen.detail`); wrinkles: (S, S) bool over the UV tile (``wrinkles_space`` "uv") or
    (H, W) bool in the image ("image", from shards); index: the sample index.
    """

    alpha_gt: np.ndarray
    pose: Pose
    albedo: np.ndarray
    light: Light
    background: np.ndarray | None
    displacement_uv: np.ndarray
    wrinkles: np.ndarray
    wrinkles_space: str
    index: int


def draw_face(cfg, model, seed: int, index: int) -> DetailFace:
    """Face ``index`` of the on-the-fly set ``seed`` (``cfg`` with ``datagen.detail`` on, e.g.
    :func:`detail_frame_config`); deterministic in (seed, index)."""
    s = draw_scene(seed, index, model, cfg)
    if s.detail is None:
        raise ValueError("draw_face needs datagen.detail: true (use detail_frame_config)")
    return DetailFace(s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background, s.detail.displacement,
                      s.detail.wrinkles, "uv", index)


def shard_face(face: FaceRecord, model, size: int, data_dir=None) -> DetailFace:
    """A face read from shards (:func:`datagen.faces.shard_faces`) of a dataset made with ``datagen.detail``,
    for a renderer of ``size`` pixels."""
    from morphable.materials import head_albedo

    if face.detail_uv is None:
        raise FileNotFoundError(f"{data_dir} was made without datagen.detail: no fine-detail ground truth")
    if face.rgb.shape[0] != size:
        raise DatagenError(f"{data_dir} has {face.rgb.shape[0]} px images; use --config with "
                           f"render.image_size: {face.rgb.shape[0]}")
    skin = model.albedo_model.albedo(face.albedo)[0]
    return DetailFace(face.alpha_gt, face.pose, head_albedo(model, skin, face.iris), face.light, None,
                      face.detail_uv, face.wrinkles, "image", face.index)


def detail_faces(cfg, model, size: int, data_dir=None, n: int = 20, seed: int = 0):
    """``n`` faces (:class:`DetailFace`): drawn on the fly with ``seed`` (``cfg`` framed by
    :func:`detail_frame_config`), or the first ``n`` of a dataset made with ``datagen.detail``."""
    if data_dir is None:
        for i in range(n):
            yield draw_face(cfg, model, seed, i)
        return
    for face in shard_faces(data_dir, n):
        yield shard_face(face, model, size, data_dir)


@dataclass(frozen=True)
class DetailScene:
    """One synthetic face rendered in its (H, W) frame.

    truth: the detailed, textured, lit render over the background (its ``depth``/``normals`` are the
    detailed surface's); smooth: the same face without detail (its ``depth``/``normals`` are the smooth
    surface's; None unless asked for); coarse: the coarse start as the pipeline renders it (flat albedo,
    frontal light); alpha_coarse: (K,); flat_albedo: (V, 3) the face area's median albedo;
    mask: (H, W) bool, the truth's narrow face area inside the coarse silhouette; wrinkles: (H, W) bool;
    albedo: (H, W, 3) float32 per-pixel albedo of the truth; pixel_mm: mm per pixel (1 / pose.scale).
    """

    face: DetailFace
    truth: FaceRender
    smooth: FaceRender | None
    coarse: FaceRender
    alpha_coarse: np.ndarray
    flat_albedo: np.ndarray
    mask: np.ndarray
    wrinkles: np.ndarray
    albedo: np.ndarray
    pixel_mm: float

    @property
    def target(self) -> np.ndarray:
        """(H, W) float32 mm: the fine detail as a depth offset, detailed minus smooth true depth, inside
        ``mask`` (0 outside). Needs ``smooth``."""
        return np.where(self.mask, self.truth.depth - self.smooth.depth, 0.0).astype(np.float32)


def render_scene(face: DetailFace, model, renderer, start=None, rng=None, smooth: bool = False) -> DetailScene:
    """Render ``face``: the truth, optionally the smooth face, and the coarse start.

    ``start(face, truth, rng) -> alpha (K,)`` gives the coarse start from the truth render (e.g.
    :func:`coarse.stage.synthetic_start`); None: the true smooth face. ``rng`` is passed to it (default
    ``numpy.random.default_rng(face.index)``).
    """
    rng = np.random.default_rng(face.index) if rng is None else rng
    verts_gt = model.vertices(face.alpha_gt)
    truth = renderer.render_face(face.alpha_gt, face.pose, face.albedo, face.light, face.background,
                                 verts=verts_gt, displacement_uv=face.displacement_uv)
    smooth_r = (renderer.render_face(face.alpha_gt, face.pose, face.albedo, face.light, face.background,
                                     verts=verts_gt) if smooth else None)
    alpha_c = face.alpha_gt if start is None else start(face, truth, rng)
    flat = face.albedo.copy()
    region = model.regions["face"]
    flat[region] = np.median(face.albedo[region], axis=0)
    c = renderer.render_face(alpha_c, face.pose, flat, renderer.shading_light)
    mask = renderer.narrow_face_mask(truth.fragments) & c.mask
    if face.wrinkles_space == "image":
        wrinkles = face.wrinkles
    else:
        uv = renderer.face_uv(truth.fragments)
        wrinkles = renderer.sample_uv_map(uv, face.wrinkles.astype(np.float32), order=0) > 0.5
    albedo = truth.fragments.interpolate(face.albedo, model.triangles)
    return DetailScene(face, truth, smooth_r, c, alpha_c, flat, mask, wrinkles, albedo, 1.0 / face.pose.scale)
