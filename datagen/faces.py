"""One source of synthetic faces with their truth, generated on the fly or read back from shards.

:func:`face_source` yields :class:`FaceRecord` s, the same fields whichever way they come, for every consumer
that needs whole faces rather than training batches: ``train evaluate``, ``train calibrate-landmarks``, and the
detail faces of :mod:`datagen.synthetic`.

Frames: images (H, W[, 3]) in pixels, x right, y down; poses weak-perspective (:mod:`render.camera`);
coefficients ``alpha`` (K,) identity first, mm model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from render.camera import Pose
from render.renderer import Light

#: Online evaluation faces come from this seed offset of ``datagen.seed`` (neither training nor validation).
EVAL_SEED_OFFSET = 2_000_003
#: How online faces are coloured (:func:`scene_albedo`).
ALBEDO_KINDS = ("textured", "uniform")


@dataclass(frozen=True)
class FaceRecord:
    """One synthetic face and its truth.

    rgb: (H, W, 3) float32 in [0, 1], the unmasked colour render over its background;
    pose: the true pose; landmarks: (68, 2) projected true landmark vertices (pixel x, y);
    alpha_gt: (K,) true coefficients; albedo: (Ka,) albedo coefficients; iris: (3,) iris colour;
    light: the Phong light; index: the sample index;
    fragments: the rasteriser's record of the true face (on the fly only; None from shards);
    detail_uv: (S, S) mm fine detail over the face UV tile, wrinkles: (H, W) bool (shards made with
    ``datagen.detail`` only; else None).
    """

    rgb: np.ndarray
    pose: Pose
    landmarks: np.ndarray
    alpha_gt: np.ndarray
    albedo: np.ndarray
    iris: np.ndarray
    light: Light
    index: int
    fragments: object = None
    detail_uv: np.ndarray | None = None
    wrinkles: np.ndarray | None = None


def online_faces(cfg, n: int, seed: int, model, renderer, start: int = 0,
                 distance_mm: tuple[float, float] | None = None, albedo: str = "textured") -> Iterator[FaceRecord]:
    """Faces ``start .. start + n - 1`` of the on-the-fly set ``seed``, drawn by :func:`datagen.scene.draw_scene`
    with ``cfg`` and rendered (true face only) by ``renderer``; deterministic in (seed, index).

    ``distance_mm``: (near, far) for a perspective camera at a distance drawn log-uniformly in that range per
    face (:func:`render.camera.perspective_warp`; phone photos ~350-600 mm, portraits 1-1.5 m), the face's
    ``pose`` then the weak-perspective camera of the same scale at the face's centre; None: weak perspective.
    ``albedo``: one of :data:`ALBEDO_KINDS` (:func:`scene_albedo`); the scene's draws do not depend on it, so
    ``uniform`` gives the same faces, poses, lights and backgrounds untextured (``albedo`` of the record stays
    the drawn coefficients).
    """
    from .scene import camera_points, draw_distance, draw_scene

    if albedo not in ALBEDO_KINDS:
        raise ValueError(f"albedo must be one of {ALBEDO_KINDS}; got {albedo!r}")
    for i in range(start, start + n):
        s = draw_scene(seed, i, model, cfg)
        if distance_mm is not None:
            s = dataclasses.replace(s, distance_mm=draw_distance(seed, i, 1.0, distance_mm))
        f = render_truth(s, model, renderer, camera_points(s, model, model.vertices(s.alpha_gt)), albedo)
        yield FaceRecord(f.rgb, s.pose, f.landmarks.astype(np.float64), s.alpha_gt, s.albedo_coeffs, s.iris,
                         s.light, i, f.fragments)


def scene_albedo(scene, model, albedo: str = "textured") -> np.ndarray:
    """(V, 3) per-vertex albedo (linear RGB in [0, 1]) of a drawn scene's head. ``textured``: the albedo model's
    skin of the scene (:meth:`datagen.scene.SceneParams.head_albedo`); ``uniform``: every face vertex the mean of
    that skin over the face's vertices, the eyes, teeth and mouth as the model's materials give them
    (:func:`morphable.materials.head_albedo`): the same tone against the same background, without the skin's
    texture (brows, lips, stubble, blotches)."""
    full = scene.head_albedo(model)
    if albedo == "textured":
        return full
    from morphable.materials import head_albedo

    return head_albedo(model, full[model.regions["face"]].mean(0), scene.iris)


def render_truth(scene, model, renderer, verts: np.ndarray | None = None, albedo: str = "textured"):
    """The true face of a drawn scene, lit, over its background (:class:`render.renderer.FaceRender`);
    ``verts``: (V, 3) the geometry to draw instead of ``model.vertices(scene.alpha_gt)``; ``albedo``: one of
    :data:`ALBEDO_KINDS` (:func:`scene_albedo`)."""
    return renderer.render_face(scene.alpha_gt, scene.pose, scene_albedo(scene, model, albedo), scene.light,
                                scene.background, verts=verts)


def record_face(rec: dict) -> FaceRecord:
    """A decoded shard record (:func:`datagen.loader.decode_record`) as a :class:`FaceRecord`."""
    p = rec["params"]
    light = Light.from_dict(p["light"])
    return FaceRecord(rec["rgb"], Pose.from_dict(p["pose"]), np.asarray(p["landmarks"], np.float64),
                      np.asarray(p["alpha_gt"], np.float32), np.asarray(p["albedo"], np.float32),
                      np.asarray(p["iris"], np.float32), light, int(p.get("index", -1)),
                      detail_uv=rec.get("detail_uv"), wrinkles=rec.get("wrinkles"))


def shard_faces(data_dir, n: int | None = None) -> Iterator[FaceRecord]:
    """The first ``n`` faces (all without ``n``) of a shard folder, in index order."""
    from .loader import iter_records

    for rec in iter_records(data_dir, limit=n):
        yield record_face(rec)


def face_source(cfg, n: int, seed: int, model, renderer, data_dir=None,
                distance_mm: tuple[float, float] | None = None, albedo: str = "textured") -> Iterator[FaceRecord]:
    """``n`` faces: from the shards in ``data_dir`` when given (rendered as they were: ``albedo`` must be
    ``textured``), else drawn on the fly with ``seed`` (perspective camera distances ``distance_mm``, colouring
    ``albedo``, :func:`online_faces`)."""
    if data_dir is not None:
        if albedo != "textured":
            raise ValueError(f"albedo {albedo!r} renders faces on the fly; shards hold textured renders")
        return shard_faces(data_dir, n)
    return online_faces(cfg, n, seed, model, renderer, distance_mm=distance_mm, albedo=albedo)
