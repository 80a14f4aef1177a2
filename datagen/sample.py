"""One training sample: draw the scene (:mod:`datagen.scene`), render the face and the shading image of
a_t with the shared renderer, and mask the face image with a_t's silhouette.

:func:`make_sample` is the single generator used by ``datagen render`` (written to shards) and by
``train iterative --online`` (fed straight to the network).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from render.camera import Pose
from render.shading import shading_image

from .scene import SceneParams, camera_points, draw_scene


@dataclass(frozen=True)
class Sample:
    """Arrays of one sample, for an (H, W) image.

    image: (H, W) float32 in [0, 1], gray face render masked by a_t's silhouette (or (H, W, 3) with
    ``color_input``); shading: (H, W) float32, shading image of a_t; mask: (H, W) bool, a_t's silhouette;
    rgb: (H, W, 3) float32, the unmasked colour render; depth: (H, W) float32 mm of the true face (0 = none);
    face_mask: (H, W) bool, the true face's silhouette; normals: (H, W, 3) camera-frame normals of the
    true face; landmarks: (68, 2) projected true landmarks (pixel x, y); scene: the drawn parameters.
    With fine detail (``datagen.detail``): depth and normals are the detailed surface's, displacement (H, W)
    float32 mm is the detail along the normal, wrinkles (H, W) bool the wrinkle regions.
    """

    image: np.ndarray
    shading: np.ndarray
    mask: np.ndarray
    rgb: np.ndarray
    depth: np.ndarray
    face_mask: np.ndarray
    normals: np.ndarray
    landmarks: np.ndarray
    scene: SceneParams
    displacement: np.ndarray | None = None
    wrinkles: np.ndarray | None = None


def make_sample(seed: int, index: int, model, cfg, renderer, alpha_t: np.ndarray | None = None,
                pose_t: Pose | None = None) -> Sample:
    """Generate sample ``index`` of the dataset ``seed`` (deterministic in (seed, index) alone).

    ``alpha_t``: (K,) the current estimate to render the shading and mask of, instead of the scene's a_t (e.g.
    a landmark-fit start, :mod:`training.starts`); ``pose_t``: the pose to render them under, instead of the
    face's (e.g. the pose inference would fit to the landmarks); the scene keeps its other draws.
    """
    scene = draw_scene(seed, index, model, cfg)
    if alpha_t is not None:
        alpha_t = np.asarray(alpha_t, np.float32)
        if alpha_t.shape != scene.alpha_t.shape:
            raise ValueError(f"alpha_t must have shape {scene.alpha_t.shape}; got {alpha_t.shape}")
        scene = dataclasses.replace(scene, alpha_t=alpha_t)
    # Both geometries in one product: the 16-bit basis is read from memory once.
    verts_gt, verts_t = model.draw_vertices(np.stack([scene.alpha_gt, scene.alpha_t]))
    verts_gt = camera_points(scene, model, verts_gt)  # a_t is drawn as inference draws it: weak perspective
    detail = scene.detail
    face = renderer.render_face(scene.alpha_gt, scene.pose, scene.head_albedo(model), scene.light,
                                scene.background, verts=verts_gt,
                                displacement_uv=None if detail is None else detail.displacement)
    if detail is None and pose_t is None and np.array_equal(verts_t, verts_gt):  # u = 0: one set of fragments
        mask = face.mask
        shading = shading_image(face.normals, mask, renderer.shading_ambient, renderer.shading_diffuse)
    else:
        shading, mask = renderer.render_shading(scene.alpha_t, scene.pose if pose_t is None else pose_t, verts=verts_t)
    src = face.rgb if cfg.datagen.color_input else face.gray
    image = src * (mask[..., None] if src.ndim == 3 else mask)
    wrinkles = None
    if detail is not None:
        uv = renderer.face_uv(face.fragments)
        wrinkles = renderer.sample_uv_map(uv, detail.wrinkles.astype(np.float32), order=0) > 0.5
    return Sample(image, shading, mask, face.rgb, face.depth, face.mask, face.normals, face.landmarks, scene,
                  face.displacement if detail is not None else None, wrinkles)


def network_input(image: np.ndarray, shading: np.ndarray) -> np.ndarray:
    """The iterative network's input: (C + 1, H, W) float32, the masked image's channel(s) then shading.

    image: (H, W) gray or (H, W, 3) colour in [0, 1]; shading: (H, W) in [0, 1].
    """
    img = image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
    return np.concatenate([img, shading[None]], axis=0).astype(np.float32)


def landmark_region(points: np.ndarray, size: int, forehead: float) -> np.ndarray:
    """The face region the 68 landmarks outline: the convex hull of the jaw line (0-16) and the eyebrows (17-26)
    raised by ``forehead`` x the vector from the chin (8) to the brows' centre (the face's own up, so any roll).

    It holds the skin of a face in any photo, and leaves out what a real head has there and a synthetic render
    has not: hair over the skull, ears, neck, collar, and the background where a scan ends.

    Args:
        points: (68, 2) landmarks, pixels (x, y; pixel centres at + 0.5) of the (size, size) image.
        size: the image's side, pixels; forehead: share of the chin-to-brows height added above the brows.
    Returns:
        (size, size) bool, True inside the region. :class:`ValueError` for points that are not finite.
    """
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    pts = np.asarray(points, np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError("landmark_region needs (68, 2) finite landmarks")
    brows = pts[17:27]
    up = brows.mean(0) - pts[8]
    outline = np.concatenate([pts[:17], brows + forehead * up])
    try:
        outline = outline[ConvexHull(outline).vertices]
    except QhullError:  # degenerate (all points on a line): no region
        return np.zeros((size, size), bool)
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in outline - 0.5], fill=1)
    return np.asarray(canvas, bool)


def training_record(image: np.ndarray, shading: np.ndarray, alpha_gt: np.ndarray, alpha_t: np.ndarray,
                    index: int) -> dict:
    """The dict one training example is, whether read from shards or generated online:
    ``input`` (C + 1, H, W) float32, ``alpha_gt`` (K,) float32, ``alpha_t`` (K,) float32, ``index`` int."""
    return {
        "input": network_input(image, shading),
        "alpha_gt": np.asarray(alpha_gt, np.float32),
        "alpha_t": np.asarray(alpha_t, np.float32),
        "index": int(index),
    }
