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

from coarse.detect import Detection, ReconstructionInputError
from coarse.frame import frame_map, sfs_frame_pose, warp_to_frame
from coarse.stage import CoarseSettings, coarse_fit
from render.camera import Pose
from render.renderer import FaceRenderer

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
    timings: dict = field(default_factory=dict)


def reconstruct_face(photo: np.ndarray, det: Detection, model, cfg, coarse: CoarseSettings, resolution: int = 256,
                     sfs: bool = True, sfs_params=None, detail=None) -> Reconstruction:
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
    """
    timings = {}
    t0 = time.perf_counter()
    img = photo.astype(np.float32) / 255.0
    cf = coarse_fit(img, det.landmarks, model, coarse, cfg.render, det.detector)
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
            from .sfs import depth_to_normals

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


def refined_mesh(rec: Reconstruction, model) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The refined surface of a reconstruction: what ``refined.obj`` holds and ``refine evaluate-scan`` scores.

    Today the mesh of the refined depth map (the coarse one, plus the detail network's offset when it ran,
    when SfS did not run) over the SfS face mask (:func:`depth_grid_mesh`); ``model`` is for a mesh on the
    model's topology.

    Returns:
        verts (N, 3) mm model frame, triangles (F, 3), uv (T, 2) in the SfS frame image (``rec.sfs_image``),
        tri_uv (F, 3) indices into ``uv``.
    """
    depth = rec.refined_depth if rec.refined_depth is not None else rec.coarse_depth
    verts, tris, uv = depth_grid_mesh(depth, rec.sfs_mask, rec.sfs_frame)
    return verts, tris, uv, tris
