"""``train calibrate-landmarks``: run the real detector on synthetic renders whose truth is known and learn where
its 68 points lie on the face model (:func:`coarse.landmarks.calibrate`).

The renders are photo-like (the ``evaluate`` section's image size and yaw range, textured, random light and
background); for each detected landmark the true mesh's triangle and barycentric weights under its pixel are
recorded, so the calibration can carry it onto the model's surface.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from .detect import ReconstructionInputError, detect_faces
from .landmarks import LandmarkModel, calibrate, detector_noise


def detector_records(faces: Iterable, detect=detect_faces, progress: bool = False, total: int | None = None) -> dict:
    """Run ``detect`` on each face's render and collect what :func:`coarse.landmarks.calibrate` needs.

    Args:
        faces: :class:`datagen.faces.FaceRecord` s drawn on the fly (they carry ``fragments``).
        detect: ``(H, W, 3) uint8 -> [Detection]`` (largest first), raising ``ReconstructionInputError`` when
            it finds nothing.
    Returns:
        Arrays over the N faces: ``alpha``, ``scale``, ``rotation``, ``translation``, ``detected`` (N, 68, 2)
        (NaN where nothing was found), ``face_id`` (N, 68), ``bary`` (N, 68, 3), ``detector`` (N,) str,
        ``rotation_deg`` (N,), ``score`` (N,).
    """
    keys = ("alpha", "scale", "rotation", "translation", "detected", "face_id", "bary", "detector", "rotation_deg",
            "score")
    out = {k: [] for k in keys}
    if progress:
        from tqdm import tqdm

        faces = tqdm(faces, desc="detect", unit="face", total=total)
    for face in faces:
        if face.fragments is None:
            raise ValueError("calibration needs faces rendered on the fly (with their fragments)")
        image = np.clip(face.rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
        points, fid, bary, kind, turn, score = np.full((68, 2), np.nan), np.full(68, -1), np.zeros((68, 3)), "none", 0.0, 0.0
        try:
            det = detect(image)[0]
        except ReconstructionInputError:
            pass
        else:
            points, kind, turn, score = det.landmarks, det.detector, det.rotation_deg, det.score
            H, W = image.shape[:2]
            i = np.clip(points[:, 1].astype(int), 0, H - 1)
            j = np.clip(points[:, 0].astype(int), 0, W - 1)
            fid, bary = face.fragments.face_id[i, j], face.fragments.bary[i, j]
        for k, v in zip(keys, (face.alpha_gt, face.pose.scale, face.pose.rotation, face.pose.translation, points,
                               fid, bary, kind, turn, score)):
            out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def calibrate_detector(records: dict, model, provenance: dict | None = None) -> LandmarkModel:
    """:func:`coarse.landmarks.calibrate` on the records of :func:`detector_records`, with the detection rate,
    the detectors' share and their noise model (:func:`coarse.landmarks.detector_noise`) in the provenance."""
    kinds, counts = np.unique(records["detector"], return_counts=True)
    prov = dict(provenance or {}, detectors={str(k): int(c) for k, c in zip(kinds, counts)})
    lm = calibrate(model, records, prov)
    lm.provenance["noise_model"] = detector_noise(lm, model, records)
    return lm
