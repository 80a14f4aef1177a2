"""The frames a face is seen in, and the maps between them.

All are weak-perspective and share the face's rotation (see :mod:`render.camera`):

- the photo frame: full resolution, the pose fitted to the detected landmarks;
- the network frame: ``render.image_size`` square, the face scaled and centred as in training
  (``sampling.pose.scale_mean``), so the network sees what it was trained on;
- the SfS frame: ``resolution`` square over the face area (a margin around its projected bounding box).

A point's pixel in one frame maps to another by a scale and a shift (:func:`frame_map`), so images are
moved between frames by one resampling (:func:`warp_to_frame`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from datagen.sample import landmark_region
from datagen.scene import centred_pose
from render.camera import Pose, project


@dataclass(frozen=True)
class FrameMap:
    """x_dst = k (x_src - t_src) + t_dst (per axis, pixels) between two frames of the same rotation."""

    k: float
    t_src: np.ndarray
    t_dst: np.ndarray

    def forward(self, pts: np.ndarray) -> np.ndarray:
        return self.k * (pts - self.t_src) + self.t_dst


def frame_map(src: Pose, dst: Pose) -> FrameMap:
    return FrameMap(dst.scale / src.scale, np.asarray(src.translation), np.asarray(dst.translation))


def warp_to_frame(image: np.ndarray, fmap: FrameMap, size: int) -> np.ndarray:
    """Resample ``image`` (H, W[, C]) float into a (size, size[, C]) frame (bilinear; blurred first when
    shrinking, against aliasing)."""
    j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
    x = (j - fmap.t_dst[0]) / fmap.k + fmap.t_src[0]
    y = (i - fmap.t_dst[1]) / fmap.k + fmap.t_src[1]
    coords = np.stack([y - 0.5, x - 0.5])
    sigma = 0.5 / fmap.k - 0.5 if fmap.k < 1.0 else 0.0
    chans = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[-1])]
    out = [map_coordinates(gaussian_filter(c, sigma) if sigma > 0.3 else c, coords, order=1, mode="nearest")
           for c in chans]
    return (out[0] if image.ndim == 2 else np.stack(out, -1)).astype(np.float32)


@dataclass(frozen=True)
class NetworkFrame:
    """The frame the iterative network sees a face in: ``size`` x ``size`` pixels, the face centred at the
    training distribution's mean scale ``scale_mean`` (pixels per mm per pixel of image size), and the mask of
    its inputs (``input_mask``, ``input_forehead``: ``train.input_mask``)."""

    size: int
    scale_mean: float
    input_mask: str = "shading"
    input_forehead: float = 0.0

    @staticmethod
    def from_config(cfg) -> "NetworkFrame":
        """The frame of a training config (``render.image_size``, ``sampling.pose.scale_mean``,
        ``train.input_mask``, ``train.input_forehead``)."""
        return NetworkFrame(int(cfg.render.image_size), float(cfg.sampling.pose.scale_mean),
                            cfg.train.input_mask, float(cfg.train.input_forehead))

    def region(self, points: np.ndarray | None) -> np.ndarray | None:
        """(size, size) bool: where the inputs may show the face beyond a_t's silhouette, from the landmarks
        ``points`` (68, 2) in this frame's pixels (:func:`datagen.sample.landmark_region`); None (no limit)
        with ``input_mask: shading``."""
        if self.input_mask == "shading":
            return None
        return landmark_region(points, self.size, self.input_forehead)

    def pose(self, model, rotation: np.ndarray) -> Pose:
        """The face under ``rotation`` (3, 3), centred in this frame at the mean scale."""
        return centred_pose(model, rotation, self.scale_mean * self.size, self.size)


def sfs_frame_pose(model, verts: np.ndarray, pose_photo: Pose, resolution: int, margin: float = 0.06) -> Pose:
    """A square frame of ``resolution`` pixels around the projected narrow face area."""
    p = project(verts[model.regions["narrow_face"]], pose_photo)[:, :2]
    lo, hi = p.min(0), p.max(0)
    k = resolution * (1 - 2 * margin) / max(float((hi - lo).max()), 1e-6)
    centre = (lo + hi) / 2
    t = k * (np.asarray(pose_photo.translation) - centre) + resolution / 2
    return Pose(pose_photo.scale * k, pose_photo.rotation, t)
