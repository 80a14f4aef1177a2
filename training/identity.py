"""Identity from the image: what a face-recognition network sees, mapped to the face model's identity.

``train identity-data`` renders photo-like synthetic faces (the ``identity`` section of ``pipeline.yaml``: the
scene sampler's faces, expressions, skins, lights and backgrounds at ``identity.image_size`` pixels, yaw within
refine's range, a share through a pinhole camera, the photo-light options), runs the real front end on each
(:func:`coarse.detect.detect_faces`, dlib's 68 points) and keeps the recognition descriptor
(:func:`coarse.recognition.face_descriptor`) beside the truth. The file (HDF5, :data:`FORMAT`, written in
resumable parts like a ``train cache`` file, :func:`training.cache.write_parts`) holds, for faces 0 .. N-1::

    descriptor  (N, 128) float32    NaN where the detector found no face
    alpha_gt    (N, K) float32      the true coefficients, identity first
    points      (N, 68, 2) float32  the detector's landmarks, pixels (NaN where none)
    found       (N,) bool
    index       (N,) int64

Face i depends on (``identity.seed``, i) only, so the file is the same for any number of workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import write_parts
from .data import OnlineDataset

FORMAT = "facesynth-identity-faces/1"
ARRAYS = ("descriptor", "alpha_gt", "points", "found", "index")


def identity_scene_config(cfg):
    """``cfg`` with the scene sampler set for the identity faces (the ``identity`` section)."""
    from facesynth.config import override

    idc = cfg.identity
    for key, value in (("render.image_size", idc.image_size), ("sampling.pose.yaw_std_deg", idc.yaw_std_deg),
                       ("sampling.pose.max_yaw_deg", idc.max_yaw_deg),
                       ("sampling.pose.perspective_prob", idc.perspective_prob),
                       ("sampling.light.occlusion_max", idc.occlusion_max),
                       ("sampling.light.shadow_prob", idc.shadow_prob),
                       ("sampling.light.srgb_prob", idc.srgb_prob)):
        cfg = override(cfg, key, value)
    return cfg


def data_config(cfg) -> dict:
    """What the identity faces depend on: the scene sampler's sections (as set by
    :func:`identity_scene_config`), the model and the detector's settings."""
    full = identity_scene_config(cfg).to_dict()
    return {k: full[k] for k in ("model", "sampling", "render", "detect")}


class IdentitySource(OnlineDataset):
    """Records of :data:`ARRAYS` (one rendered, detected, described face each) for :func:`write_parts`."""

    def record(self, index: int) -> dict:
        from coarse.detect import ReconstructionInputError, detect_faces
        from coarse.recognition import DESCRIPTOR_SIZE, face_descriptor
        from datagen.faces import online_faces
        from datagen.shards import to_uint8

        model, renderer = self._renderer()
        face = next(online_faces(self.cfg, 1, self.seed, model, renderer, start=index))
        rgb = to_uint8(face.rgb)
        desc = np.full(DESCRIPTOR_SIZE, np.nan, np.float32)
        points = np.full((68, 2), np.nan, np.float32)
        try:
            det = detect_faces(rgb, self.cfg.detect)[0]
            desc, points = face_descriptor(rgb, det.landmarks), det.landmarks.astype(np.float32)
        except ReconstructionInputError:
            pass
        return {"descriptor": desc, "alpha_gt": np.asarray(face.alpha_gt, np.float32), "points": points,
                "found": np.bool_(np.isfinite(desc).all()), "index": np.int64(index)}

    @staticmethod
    def collate(records: list[dict]) -> dict:
        return {k: np.stack([r[k] for r in records]) for k in ARRAYS}


def write_identity_data(cfg, out: str | Path, n: int, seed: int, workers: int = 0, progress: bool = True) -> dict:
    """Render, detect and describe faces 0 .. ``n`` - 1 of the identity set ``seed`` into ``out`` (module
    docstring); resumable: the same command after a kill does only the missing parts. Returns ``{"path", "n",
    "rendered"}``."""
    scene_cfg = identity_scene_config(cfg)
    meta = {"format": FORMAT, "seed": int(seed), "chunk": int(cfg.identity.chunk), "config": data_config(cfg)}
    return write_parts(out, meta, n, lambda first: IdentitySource(scene_cfg, seed, first, n, batch_size=meta["chunk"]),
                       workers, progress)


def read_identity_data(path: str | Path) -> dict:
    """The arrays of an identity-faces file (:data:`ARRAYS`) and its ``info`` (:func:`training.cache.read_cache_info`)."""
    import h5py

    from .cache import read_cache_info

    info = read_cache_info(path, FORMAT)
    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in ARRAYS}
    out["info"] = info
    return out
