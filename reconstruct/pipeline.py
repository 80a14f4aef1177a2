"""Photo in, meshes out: detection -> landmark pose -> iterative network (or the landmark fit) -> texture ->
detail network (adds what the morphable model cannot hold) -> shape from shading on the coarse depth.

Frames (all weak-perspective, sharing the face's rotation; see :mod:`render.camera`):

- the photo frame: full resolution, ``pose_photo`` fitted to the detected landmarks;
- the network frame: ``cfg.render.image_size`` square, the face scaled and centred as in training
  (``sampling.pose.scale_mean``), so the network sees what it was trained on;
- the SfS frame: ``resolution`` square over the face area (a margin around its projected bounding box).

A point's pixel in one frame maps to another by a scale and a shift (:func:`frame_map`), so images are
moved between frames by one resampling (:func:`warp_to_frame`). Meshes are written in the model frame:
millimetres, y up, face along +z.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from coarse.detect import Detection, ReconstructionInputError
from coarse.frame import frame_map, sfs_frame_pose, warp_to_frame
from coarse.stage import CoarseSettings, coarse_fit
from morphable.albedo import _smoothstep
from render.camera import Pose, project, rotate_normals
from render.filters import masked_blur
from render.renderer import FaceRenderer

from .texture import atlas_uv, visible_vertices


@dataclass
class Reconstruction:
    """Everything ``refine sfs`` computes for one face (see :func:`reconstruct_face`)."""

    alpha: np.ndarray  # (K,)
    pose_photo: Pose
    coarse_method: str
    iterations: list = field(default_factory=list)
    vertex_colors: np.ndarray | None = None  # (V, 3)
    visible: np.ndarray | None = None  # (V,)
    sfs_frame: Pose | None = None
    sfs_image: np.ndarray | None = None  # (R, R, 3)
    sfs_mask: np.ndarray | None = None  # (R, R)
    coarse_depth: np.ndarray | None = None
    coarse_normals: np.ndarray | None = None
    refined_depth: np.ndarray | None = None
    refined_normals: np.ndarray | None = None
    sh: np.ndarray | None = None
    albedo: np.ndarray | None = None
    detail_displacement: np.ndarray | None = None  # (R, R) mm depth offset of the detail network (0 outside)
    vertex_offset: np.ndarray | None = None  # (V,) mm along the coarse vertex normals (:func:`vertex_offset`)
    timings: dict = field(default_factory=dict)


def reconstruct_face(photo: np.ndarray, det: Detection, model, cfg, coarse: CoarseSettings, resolution: int = 256,
                     sfs: bool = True, sfs_params=None, detail=None, coarse_result=None) -> Reconstruction:
    """Reconstruct one detected face: coarse fit -> texture -> (detail network) -> (shape from shading).

    Args:
        photo: (H, W, 3) uint8 RGB, full resolution.
        det: its detection (landmarks in photo pixels).
        model: the face model; cfg: the config.
        coarse: the coarse stage's settings (:class:`coarse.stage.CoarseSettings`: the landmark fit, and the
            iterative network when it has one).
        resolution: SfS working resolution (pixels over the face).
        sfs: run shape from shading; sfs_params: its :class:`facesynth.config.SfSConfig` (None: cfg.refine.sfs).
        detail: the detail network as a :data:`training.detail_net.DetailPredictor`, or None. Its depth
            offset (mm, inside the face mask) is added to the coarse depth, and SfS starts from the sum.
        coarse_result: a :class:`coarse.stage.CoarseFit` the caller already has (a video frame fitted with the
            clip's identity), used instead of running the coarse stage.
    """
    timings = {}
    t0 = time.perf_counter()
    img = photo.astype(np.float32) / 255.0
    cf = coarse_result or coarse_fit(img, det.landmarks, model, coarse, cfg.render, det.detector)
    alpha, pose, method, its = cf.alpha, cf.pose, cf.method, [a.tolist() for a in cf.steps]
    timings["coarse_s"] = time.perf_counter() - t0

    from .texture import vertex_texture

    t1 = time.perf_counter()
    verts = model.vertices(alpha)
    colors, visible = vertex_texture(model, img, verts, pose)
    timings["texture_s"] = time.perf_counter() - t1
    rec = Reconstruction(alpha, pose, method, its, colors, visible, timings=timings)

    # coarse depth and normals in the SfS frame
    frame = sfs_frame_pose(model, verts, pose, resolution)
    r = FaceRenderer.from_config(model, cfg.render, image_size=resolution, backend="numba")
    coarse = r.render_face(alpha, frame, np.ones((model.n_vertices, 3), np.float32), r.shading_light, verts=verts)
    rec.sfs_frame = frame
    rec.sfs_image = warp_to_frame(img, frame_map(pose, frame), resolution)
    rec.sfs_mask = r.narrow_face_mask(coarse.fragments)
    rec.coarse_depth, rec.coarse_normals = coarse.depth, coarse.normals
    depth0 = coarse.depth
    if detail is not None:
        t2 = time.perf_counter()
        rec.detail_displacement = np.where(rec.sfs_mask, detail(rec.sfs_image, coarse.normals, rec.sfs_mask,
                                                                1.0 / frame.scale), 0.0).astype(np.float32)
        depth0 = coarse.depth + rec.detail_displacement
        timings["detail_s"] = time.perf_counter() - t2
        if not sfs:  # the refined mesh is the coarse one with the detail
            from render.filters import depth_to_normals

            rec.refined_depth = depth0
            rec.refined_normals = np.where(rec.sfs_mask[..., None], depth_to_normals(depth0, 1.0 / frame.scale),
                                           0.0).astype(np.float32)
    if sfs:
        from .sfs import sfs_refine

        t3 = time.perf_counter()
        try:
            res = sfs_refine(rec.sfs_image, depth0, rec.sfs_mask, 1.0 / frame.scale, sfs_params or cfg.refine.sfs)
        except ValueError as e:  # e.g. a face all saturated or black: no shading to use
            raise ReconstructionInputError(f"shape from shading cannot run on this face ({e}); "
                                           "try --no-sfs") from None
        timings["sfs_s"] = time.perf_counter() - t3
        rec.refined_depth, rec.refined_normals = res.depth, res.normals
        rec.sh, rec.albedo = res.sh, res.albedo
    rec.vertex_offset = vertex_offset(rec, model, cfg.refine.refined, verts)
    return rec


def depth_grid_mesh(depth: np.ndarray, mask: np.ndarray, frame: Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A mesh of the depth map's pixels inside ``mask``, back-projected into the model frame.

    Returns:
        verts (N, 3) mm model frame, triangles (F, 3), uv (N, 2) of each vertex in the frame image.
    """
    H, W = depth.shape
    ii, jj = np.nonzero(mask)
    index = -np.ones((H, W), np.int64)
    index[ii, jj] = np.arange(len(ii))
    x, y = jj + 0.5, ii + 0.5
    cam = np.stack([(x - frame.translation[0]) / frame.scale, (frame.translation[1] - y) / frame.scale,
                    depth[ii, jj]], -1)
    verts = cam @ np.asarray(frame.rotation)  # R^T applied to row vectors
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    quad = (a >= 0) & (b >= 0) & (c >= 0) & (d >= 0)
    # image rows go down: (a, c, b) is counter-clockwise seen from the camera
    tris = np.concatenate([np.stack([a[quad], c[quad], b[quad]], -1), np.stack([b[quad], c[quad], d[quad]], -1)])
    uv = np.stack([x / W, 1.0 - y / H], -1)
    return verts.astype(np.float32), tris, uv.astype(np.float32)


def vertex_offset(rec: Reconstruction, model, fade, verts: np.ndarray | None = None) -> np.ndarray:
    """The refined surface as offsets of the coarse mesh's vertices along their normals.

    The depth offset ``refined_depth - coarse_depth`` (mm along the view axis, SfS frame, inside
    ``rec.sfs_mask``; a masked Gaussian blur of ``fade.prefilter_mm``) is sampled bilinearly at each vertex's projection
    ``dz``. A height-field change dz is a move of ``dz * n_view`` along the unit normal (n_view: its
    component along the view axis, towards the camera), so each vertex moves along its normal by
    ``w * dz * n_view``, with the weight ``w`` in [0, 1] the product of two smooth fades:

    - ``fade.fade_mm`` of geodesic distance from the nearest vertex not seen in the SfS frame (hidden
      (``rec.visible``: occluded or n_view < 0.25), or projecting outside the face mask), so nothing steps at
      the mask's edge or at an occlusion;
    - n_view from ``fade.facing_from`` (0) to ``fade.facing_to`` (1): grazing views give unreliable depth.

    Both fades are cubic smoothsteps.

    So |offset| <= |dz|, and hidden vertices, and those outside the mask, do not move.

    Args:
        rec: a reconstruction with the SfS frame, mask and depths (``refined_depth`` None: all zero).
        model: the face model; fade: the ``refine.refined`` config section (``fade_mm``, ``facing_from``,
            ``facing_to``, ``prefilter_mm``); verts: ``model.vertices(rec.alpha)`` (V, 3) mm when the caller
            has it.
    Returns:
        (V,) float32 mm along the coarse vertex normals (positive: outwards, towards the camera).
    """
    verts = model.vertices(rec.alpha) if verts is None else verts
    mask = rec.sfs_mask
    if rec.refined_depth is None or not mask.any():
        return np.zeros(len(verts), np.float32)
    frame = rec.sfs_frame
    dz = np.where(mask, rec.refined_depth - rec.coarse_depth, 0.0)
    if fade.prefilter_mm > 0:
        dz = np.where(mask, masked_blur(dz, mask, fade.prefilter_mm * frame.scale), 0.0)
    vi = project(verts.astype(np.float64), frame)
    at = np.stack([vi[:, 1] - 0.5, vi[:, 0] - 0.5])  # (row, column) of each vertex
    dz_v = map_coordinates(dz, at, order=1, mode="constant", cval=0.0)
    n_view = rotate_normals(model.vertex_normals(verts), frame)[:, 2].astype(np.float64)

    visible = rec.visible if rec.visible is not None else visible_vertices(model, verts, frame, mask.shape)
    in_mask = map_coordinates(mask.astype(np.float64), at, order=0, mode="constant", cval=0.0) > 0.5
    unseen = np.flatnonzero(~(visible & in_mask))
    if len(unseen):
        e = np.concatenate([model.triangles[:, [0, 1]], model.triangles[:, [1, 2]], model.triangles[:, [2, 0]]])
        length = np.linalg.norm(verts[e[:, 0]] - verts[e[:, 1]], axis=1).astype(np.float64)
        graph = coo_matrix((np.maximum(length, 1e-6), (e[:, 0], e[:, 1])), shape=(len(verts),) * 2).tocsr()
        dist = dijkstra(graph, directed=False, indices=unseen, min_only=True)
        w = _smoothstep(0.0, fade.fade_mm, dist)
    else:
        w = np.ones(len(verts))
    w = w * _smoothstep(fade.facing_from, fade.facing_to, n_view)
    return (w * dz_v * n_view).astype(np.float32)


def refined_mesh(rec: Reconstruction, model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The refined surface of a reconstruction: what ``refined.obj`` holds and ``refine evaluate-scan`` scores.

    The coarse mesh (its vertices, triangles and UVs: the same topology and texture as ``coarse.obj``) with
    each vertex moved along its unit normal by ``rec.vertex_offset`` (:func:`vertex_offset`, set by
    :func:`reconstruct_face`; none: the coarse mesh): the detail network's and SfS's depth offsets where the SfS frame saw the face, faded
    smoothly to zero where it did not. The mesh of the refined depth map itself is :func:`depth_grid_mesh`.

    Returns:
        verts (V, 3) mm model frame, triangles (F, 3) = ``model.triangles``, uv (T, 2) in the baked UV atlas
        (:func:`reconstruct.texture.atlas_uv`), tri_uv (F, 3) = ``model.tri_uv`` indices into ``uv``.
    """
    verts = model.vertices(rec.alpha)
    if rec.vertex_offset is None:
        return verts.astype(np.float32), model.triangles, atlas_uv(model), model.tri_uv
    moved = verts + rec.vertex_offset[:, None] * model.vertex_normals(verts)
    return moved.astype(np.float32), model.triangles, atlas_uv(model), model.tri_uv
