"""``train evaluate``: the coarse stage on synthetic faces with known geometry, as a photo goes through it.

Per face (:class:`datagen.faces.FaceRecord`, the unmasked colour render, textured or of uniform albedo:
:func:`datagen.faces.scene_albedo`): the 68 landmarks come from the real detector and predictor run on the
render (``landmarks="detector"``, the code ``refine`` runs; faces it misses are counted in ``detector_found``
and left out), or are the projected true landmark vertices plus Gaussian noise
of ``noise_px`` pixels (``"true"``). Then the coarse stage of :func:`coarse.stage.coarse_fit`: the MAP landmark
fit, its photometric refinement when the settings have one, and, with a network, its iterations from that fit in
the network frame (pose fitted to the landmarks, or the true pose with ``pose_source="true"``).

Error (:mod:`training.metrics`): similarity alignment to the true geometry, then the per-vertex Euclidean
distance in mm over ``narrow_face``; a face's error is the mean over its vertices; the report gives the mean
and the median over faces of each stage: the mean face (no reconstruction), the landmark fit, the photometric
fit, each network iteration, and the older uncalibrated landmark fit (:func:`coarse.fit.fit_landmarks`) for reference.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from facesynth.io import atomic_path

from .metrics import coefficient_errors, summarize

LANDMARK_SOURCES = ("detector", "true")


def evaluate(faces: Iterable, model, coarse, render_cfg, landmarks: str = "detector", noise_px: float = 1.0,
             pose_source: str = "landmarks", seed: int = 0, error_maps_png: str | Path | None = None,
             n_maps: int = 6, progress: bool = False, uncalibrated_fit: bool = True, detect_params=None,
             fit_identity_modes: int | None = None) -> dict:
    """The coarse stage on faces with known geometry, and its 3D error per stage.

    Args:
        faces: :class:`datagen.faces.FaceRecord` s (:func:`datagen.faces.face_source`).
        model: the face model.
        coarse: :class:`coarse.stage.CoarseSettings` (the fit; the network when it has ``predict``).
        render_cfg: the ``render`` config section (the network frame's renderer).
        landmarks: ``"detector"`` or ``"true"`` (module docstring); with ``"true"`` the fit uses the model's
            own landmark vertices with the noise as its landmark error.
        noise_px: Gaussian noise on the true landmarks (``"true"`` only), pixels.
        pose_source: ``"landmarks"`` or ``"true"``: the network's pose (``"true"`` needs no landmark pose fit).
        seed: seed of the landmark noise (face i uses (seed, i)).
        error_maps_png: where to draw per-vertex error maps of the first ``n_maps`` faces.
        uncalibrated_fit: also report the older landmark fit (about 0.3 s per face).
        detect_params: the detector's settings, the ``detect`` config section (None: ``pipeline.yaml``'s).
        fit_identity_modes: the out-of-span check: the landmark fit uses only the first this many identity
            modes while the faces are drawn from all of them (default: all).
    Returns:
        ``{"faces", "landmarks", "pose_source", "detector_found", "detector_stages" (the share of the faces each
        detector of the cascade found, :class:`coarse.detect.Detection`), "detector_missed" (the missed faces'
        indices; these three with the detector only), "coarse_method", "identity" (how the descriptor's identity
        was used, or None), "mean_face", "landmark_fit", "coarse" (the coarse stage's answer: what ``refine``
        uses), ["descriptor_identity"] (the recognition descriptor's identity with the landmark fit's
        expression), ["photometric_fit"] (with ``coarse.photometric``: the network then starts from it),
        ["landmark_fit_uncalibrated"], ["iterations": [...]], "fit_to_mean_face", "coarse_to_mean_face"}``; each
        stage ``{"mean_mm", "median_mm"}`` over the faces with landmarks.
    """
    from coarse.detect import ReconstructionInputError, detect_faces
    from coarse.fit import fit_landmarks
    from coarse.landmarks import noisy_landmarks, vertex_landmarks
    from coarse.stage import coarse_fit

    if landmarks not in LANDMARK_SOURCES:
        raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}; got {landmarks!r}")
    if pose_source not in ("true", "landmarks"):
        raise ValueError(f"pose_source must be 'true' or 'landmarks'; got {pose_source!r}")
    if progress:
        from tqdm import tqdm

        faces = tqdm(faces, desc="evaluate", unit="face")
    done, gt, stages, total = [], [], {"landmark_fit": [], "landmark_fit_uncalibrated": [], "photometric_fit": [],
                                       "iterations": [], "coarse": [], "descriptor_identity": []}, 0
    detectors, missed = Counter(), []
    for face in faces:
        total += 1
        photo = np.asarray(face.rgb, np.float32)
        settings = coarse
        if landmarks == "detector":
            try:
                dets = detect_faces(np.clip(photo * 255 + 0.5, 0, 255).astype(np.uint8), detect_params)
            except ReconstructionInputError:
                missed.append(int(face.index))
                continue
            points, detector = dets[0].landmarks, dets[0].detector
            detectors[detector] += 1
        else:
            detector = None
            rng = np.random.default_rng([seed, face.index])
            points = noisy_landmarks(face.landmarks, noise_px, rng)
            sigma_mm = max(noise_px, 0.25) / face.pose.scale
            settings = dataclasses.replace(coarse, landmarks=vertex_landmarks(model, sigma_mm))
        cf = coarse_fit(photo, points, model, settings, render_cfg, detector, fit_identity_modes,
                        face.pose if pose_source == "true" else None)
        stages["landmark_fit"].append(cf.fit)
        stages["coarse"].append(cf.alpha)
        if cf.identity_prior is not None:  # the descriptor's identity with the landmark fit's expression
            stages["descriptor_identity"].append(np.r_[cf.identity_prior, cf.fit[model.n_identity:]])
        if settings.photometric is not None:
            stages["photometric_fit"].append(cf.start)
        if uncalibrated_fit:
            stages["landmark_fit_uncalibrated"].append(fit_landmarks(model, points)[0])
        if settings.predict is not None:
            stages["iterations"].append(np.stack(cf.steps))
        gt.append(np.asarray(face.alpha_gt, np.float32))
        done.append(face)
    if not done:
        raise ValueError(f"no faces to evaluate ({total} given, none with landmarks)")

    gt = np.stack(gt)
    errors = {"mean_face": coefficient_errors(model, np.zeros_like(gt), gt),
              "landmark_fit": coefficient_errors(model, np.stack(stages["landmark_fit"]), gt)}
    if uncalibrated_fit:
        errors["landmark_fit_uncalibrated"] = coefficient_errors(model, np.stack(stages["landmark_fit_uncalibrated"]), gt)
    if stages["photometric_fit"]:
        errors["photometric_fit"] = coefficient_errors(model, np.stack(stages["photometric_fit"]), gt)
    if stages["descriptor_identity"]:
        errors["descriptor_identity"] = coefficient_errors(model, np.stack(stages["descriptor_identity"]), gt)
    errors["coarse"] = coefficient_errors(model, np.stack(stages["coarse"]), gt)
    report = {"faces": total, "landmarks": landmarks, "pose_source": pose_source,
              "coarse_method": "iterative_network" if coarse.predict is not None else "photometric_fit"
              if coarse.photometric is not None else "landmark_fit",
              "identity": None if coarse.identity is None else coarse.identity_use}
    if fit_identity_modes is not None:
        report["fit_identity_modes"] = int(fit_identity_modes)
    if landmarks == "detector":
        report["detector_found"] = len(done) / total
        report["detector_stages"] = {k: v / total for k, v in sorted(detectors.items())}
        report["detector_missed"] = missed
    else:
        report["landmark_noise_px"] = noise_px
    report.update({k: summarize(e.mean(1)) for k, e in errors.items()})
    columns = dict(errors)
    if stages["iterations"]:
        per_iter = np.stack(stages["iterations"])  # (N, T, K)
        its = [coefficient_errors(model, per_iter[:, t], gt) for t in range(per_iter.shape[1])]
        report["iterations"] = [summarize(e.mean(1)) for e in its]
        columns[f"iteration {len(its)}"] = its[-1]
    report["fit_to_mean_face"] = report["landmark_fit"]["mean_mm"] / report["mean_face"]["mean_mm"]
    report["coarse_to_mean_face"] = report["coarse"]["mean_mm"] / report["mean_face"]["mean_mm"]
    if error_maps_png is not None and n_maps > 0:
        k = min(n_maps, len(done))
        draw_error_maps(Path(error_maps_png), model, render_cfg, done[:k], gt[:k],
                        {name: e[:k] for name, e in columns.items()})
    return report


def error_image(model, renderer, alpha: np.ndarray, vertex_error: np.ndarray, pose, region: str = "narrow_face"):
    """Per-vertex error drawn on the true geometry.

    Args:
        alpha: (K,) true coefficients; vertex_error: (|region|,) mm; pose: the view (e.g. frontal).
    Returns:
        (error (H, W) float32 mm, NaN off the region; shading (H, W) of the whole face, for the background).
    """
    verts = model.vertices(alpha)
    frags, _ = renderer.rasterize(verts, pose)
    values = np.zeros((model.n_vertices, 2), np.float32)
    idx = model.regions[region]
    values[idx, 0] = vertex_error
    values[idx, 1] = 1.0
    v = frags.interpolate(values, model.triangles)
    inside = frags.mask & (v[..., 1] > 0.999)  # pixels of triangles entirely in the region
    shading, _ = renderer.render_shading(alpha, pose, verts=verts)
    return np.where(inside, v[..., 0], np.nan).astype(np.float32), shading


def draw_error_maps(path: Path, model, render_cfg, faces: list, gt: np.ndarray, columns: dict) -> Path:
    """PNG: one row per face (the photo, then each column's per-vertex error in mm on the true face, frontal)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from datagen.scene import centred_pose
    from render.renderer import FaceRenderer

    size = 160
    frontal = centred_pose(model, np.eye(3), 0.7 * size / 180.0, size)  # a 180 mm wide head fills 70 %
    renderer = FaceRenderer.from_config(model, render_cfg, image_size=size)
    all_err = np.concatenate([np.ravel(e) for e in columns.values()])
    vmax = float(np.percentile(all_err, 99)) or 1.0
    n_cols = 1 + len(columns)
    fig = Figure(figsize=(2.2 * n_cols + 0.8, 2.2 * len(faces)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(faces), n_cols, squeeze=False)
    im = None
    for r, face in enumerate(faces):
        axes[r, 0].imshow(np.clip(face.rgb, 0, 1))
        axes[r, 0].set_title(f"face {face.index}", fontsize=8)
        for c, (name, err) in enumerate(columns.items(), start=1):
            e, shading = error_image(model, renderer, gt[r], err[r], frontal)
            axes[r, c].imshow(shading, cmap="gray", vmin=0, vmax=1)
            im = axes[r, c].imshow(e, cmap="jet", vmin=0, vmax=vmax)
            label = {"landmark_fit_uncalibrated": "old fit", "landmark_fit": "fit"}.get(name, name.replace("_", " "))
            axes[r, c].set_title(f"{label}: {np.mean(err[r]):.2f} mm", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="vertex error (mm, similarity-aligned)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
