"""A synthetic clip with known truth (the project's sample clip, the video tests' clips), and how well
``refine video`` does on it against fitting every frame on its own.

:func:`make_sample_clip` draws one face (:func:`datagen.scene.draw_scene`: identity, skin, eyes, background),
scripts its head turning and its mouth talking over time (:func:`clip_script`) and renders each frame with the
project's renderer (:meth:`render.renderer.FaceRenderer.render_face`), plus a little sensor noise, encoded by
:class:`reconstruct.video.VideoWriter`; the truth per frame (coefficients, pose, landmarks) goes to a JSON file
beside the clip (:func:`truth_path`). With ``still`` the head and face do not move: all frame-to-frame motion of
a reconstruction is then jitter.

:func:`evaluate_clip` runs :func:`reconstruct.video.process_video` on the clip and, as the baseline, the
detector and the coarse stage of ``refine sfs`` (:func:`coarse.stage.coarse_fit`: free identity) on every frame
alone, and compares both with the truth (:func:`clip_errors`).
"""
from __future__ import annotations

import json
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from coarse.detect import ReconstructionInputError, detect_faces
from coarse.stage import coarse_fit
from datagen.scene import centred_pose, draw_scene, sample_rng
from facesynth.io import write_json
from render.camera import Pose, euler_to_rotation, project
from render.renderer import FaceRenderer, Light

TRUTH_FORMAT = "facesynth-clip-truth/1"
#: The sample clip's light: frontal from a little above and to the side (every frame sees the face lit).
CLIP_LIGHT = Light(np.array([0.3, 0.35, 0.89], np.float32), 0.5, 0.7, 0.05, 10.0)


def truth_path(clip: str | Path) -> Path:
    """Where a clip's truth lives: ``NAME.truth.json`` beside ``NAME.mp4``."""
    clip = Path(clip)
    return clip.with_name(clip.stem + ".truth.json")


def clip_script(model, n: int, fps: float, still: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Head angles and expression of each of ``n`` frames.

    Moving: yaw swings +-30 degrees (one period over the clip, at least 4 s), pitch +-8 and roll +-5 at other
    rates; the jaw opens and closes as in speech (about 3 syllables a second, 0-0.45), a smile comes and goes,
    the eyes blink every 1.6 s, the brows lift once. Still: a frontal head (yaw 10 degrees) with a slight smile.

    Returns:
        (angles (n, 3) radians yaw, pitch, roll; expression (n, 53) weights in [0, 1]).
    """
    t = np.arange(n) / fps
    T = max(n / fps, 4.0)  # a shorter clip is the start of the 4-s motion
    expr = np.zeros((n, model.n_expression), np.float32)
    ix = model.expression_index
    if still:
        angles = np.tile(np.radians([10.0, 3.0, 0.0]), (n, 1))
        expr[:, ix("mouthSmile_L")] = expr[:, ix("mouthSmile_R")] = 0.2
        return angles, expr
    angles = np.radians(np.stack([30 * np.sin(2 * np.pi * t / T), 8 * np.sin(2 * np.pi * 1.3 * t / T + 0.5),
                                  5 * np.sin(2 * np.pi * 0.7 * t / T + 1.0)], -1))
    syllables = np.clip(np.sin(2 * np.pi * 3.0 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.45 * t)), 0, 1)
    expr[:, ix("jawOpen")] = 0.45 * syllables
    smile = 0.5 * np.clip(np.sin(2 * np.pi * t / T - 1.2), 0, 1)
    expr[:, ix("mouthSmile_L")] = expr[:, ix("mouthSmile_R")] = smile
    blink = np.exp(-0.5 * (((t + 0.4) % 1.6 - 0.8) / 0.05) ** 2)
    expr[:, ix("eyeBlink_L")] = expr[:, ix("eyeBlink_R")] = blink
    brows = np.exp(-0.5 * ((t - 0.6 * T) / 0.25) ** 2)
    expr[:, ix("browInnerUp_L")] = expr[:, ix("browInnerUp_R")] = 0.7 * brows
    return angles, np.clip(expr, 0, 1)


def make_sample_clip(path: str | Path, model, cfg, frames: int = 100, width: int = 640, height: int = 480,
                     fps: int = 25, seed: int = 7, still: bool = False, noise: float = 2.0, crf: int = 28,
                     face_height: float = 0.5, progress: bool = True) -> dict:
    """Render the synthetic clip to ``path`` (MP4) and its truth to :func:`truth_path` (JSON); returns the truth.

    Args:
        model: the face model; cfg: the config (``render`` section; the face's identity, skin, eyes and
            background come from :func:`datagen.scene.draw_scene` of ``seed``, index 0).
        frames, width, height, fps: the clip (pixels; frames per second).
        still: a head that does not move (:func:`clip_script`).
        noise: sensor noise, std in 8-bit grey levels, drawn per frame from (seed, frame).
        crf: x264 quality (lower: better, bigger file).
        face_height: the face's chin-to-brow height as a fraction of the frame height.
    Returns:
        The truth: ``alpha`` (frames, K), ``pose`` (per frame, :meth:`render.camera.Pose.to_dict`, clip pixels),
        ``landmarks`` (frames, 68, 2) the model's landmark vertices projected, the script, size and rate.
    """
    from tqdm import tqdm

    from .video import VideoWriter

    side = max(width, height)
    scene = draw_scene(seed, 0, model, _with_size(cfg, side))  # its background fills the square render
    renderer = FaceRenderer.from_config(model, cfg.render, image_size=side, backend="numba")
    albedo = scene.head_albedo(model)
    angles, expr = clip_script(model, frames, fps, still)
    ident = scene.alpha_gt[:model.n_identity]
    lm = model.mean[model.landmarks68]
    scale = face_height * height / float(lm[19, 1] - lm[8, 1])  # brow to chin, mm -> px
    ox, oy = (side - width) // 2, (side - height) // 2
    truth = {"format": TRUTH_FORMAT, "width": width, "height": height, "fps": fps, "frames": frames, "seed": seed,
             "still": still, "noise": noise, "identity": ident.tolist(), "alpha": [], "pose": [], "landmarks": [],
             "expression_names": list(model.expression_names), "made_by": "reconstruct.video_eval.make_sample_clip"}
    writer = VideoWriter(path, width, height, Fraction(fps), crf)
    ok = False
    try:
        for i in tqdm(range(frames), desc="render clip", unit="frame", disable=not progress):
            alpha = model.join(ident, expr[i])
            drift = np.array([0.04 * width * np.sin(2 * np.pi * i / max(frames, 1)), 0.0]) if not still else 0.0
            pose = centred_pose(model, euler_to_rotation(*angles[i]), scale, side, drift + np.zeros(2))
            fr = renderer.render_face(alpha, pose, albedo, CLIP_LIGHT, scene.background)
            rgb = fr.rgb[oy:oy + height, ox:ox + width] * 255.0
            rgb = rgb + sample_rng(seed, 1000 + i).normal(0.0, noise, rgb.shape)
            writer.write(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
            clip_pose = Pose(pose.scale, pose.rotation, np.asarray(pose.translation) - (ox, oy))
            truth["alpha"].append(np.round(alpha.astype(np.float64), 6).tolist())
            truth["pose"].append(clip_pose.to_dict())
            truth["landmarks"].append(np.round(fr.landmarks - (ox, oy), 3).tolist())
        ok = True
    finally:
        writer.close(ok)
    write_json(truth_path(path), truth, indent=None)
    return truth


def _with_size(cfg, side: int):
    from dataclasses import replace

    return replace(cfg, render=replace(cfg.render, image_size=side))


def load_truth(path: str | Path) -> dict:
    """A clip's truth JSON (:func:`make_sample_clip`); one-line error for a wrong file."""
    try:
        truth = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ReconstructionInputError(f"cannot read clip truth {path}: {e}") from None
    if truth.get("format") != TRUTH_FORMAT:
        raise ReconstructionInputError(f"{path} is not a clip truth file (format {truth.get('format')!r})")
    return truth


# ---------------------------------------------------------------------------------------------- errors
def rotation_error_deg(R: np.ndarray, R_true: np.ndarray) -> float:
    """The angle of the rotation between two (3, 3) rotations, degrees."""
    c = (np.trace(np.asarray(R) @ np.asarray(R_true).T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def posed_vertices_mm(model, alpha: np.ndarray, pose: Pose, scale_true: float) -> np.ndarray:
    """(N, 3) the narrow face under ``pose`` in the frame, in mm at the face (pixels over the true scale; depth
    as it is): what a viewer sees move from frame to frame."""
    p = project(model.vertices(np.asarray(alpha, np.float32), region="narrow_face").astype(np.float64), pose)
    return np.stack([p[:, 0] / scale_true, p[:, 1] / scale_true, p[:, 2]], -1)


def clip_errors(model, alphas: list, poses: list, truth: dict) -> dict:
    """Errors of one method's per-frame fits against the truth (frames without a fit: None, left out).

    Returns: ``rotation_deg`` mean angle error; ``expression_mae`` mean absolute error of the 53 weights;
    ``jaw_open_mae``; ``shape_mm`` mean vertex error of the whole face (identity and expression, narrow face,
    similarity aligned, :func:`training.metrics.coefficient_errors`); ``identity_mm`` that error for the
    identity alone (expression zeroed in both), mean over frames; ``motion_mm`` mean frame-to-frame motion of
    the posed narrow face (:func:`posed_vertices_mm`; on a still head this is the jitter) and the truth's own;
    ``frames`` fitted.
    """
    from training.metrics import coefficient_errors

    n_id = model.n_identity
    ok = [i for i, a in enumerate(alphas) if a is not None]
    if not ok:
        return {"frames": 0}
    A = np.stack([alphas[i] for i in ok]).astype(np.float64)
    T = np.asarray(truth["alpha"], np.float64)[ok]
    P = [Pose.from_dict(truth["pose"][i]) for i in ok]
    jaw = model.expression_index("jawOpen") + n_id
    ident = A.copy()
    ident[:, n_id:] = 0
    ident_t = T.copy()
    ident_t[:, n_id:] = 0
    moves, moves_true = [], []
    prev = prev_t = None
    for k, i in enumerate(ok):
        v = posed_vertices_mm(model, A[k], poses[i], P[k].scale)
        vt = posed_vertices_mm(model, T[k], P[k], P[k].scale)
        if prev is not None and ok[k - 1] == i - 1:
            moves.append(np.linalg.norm(v - prev, axis=1).mean())
            moves_true.append(np.linalg.norm(vt - prev_t, axis=1).mean())
        prev, prev_t = v, vt
    return {"frames": len(ok),
            "rotation_deg": float(np.mean([rotation_error_deg(poses[i].rotation, P[k].rotation)
                                           for k, i in enumerate(ok)])),
            "expression_mae": float(np.abs(A[:, n_id:] - T[:, n_id:]).mean()),
            "jaw_open_mae": float(np.abs(A[:, jaw] - T[:, jaw]).mean()),
            "shape_mm": float(coefficient_errors(model, A.astype(np.float32), T.astype(np.float32)).mean()),
            "identity_mm": float(coefficient_errors(model, ident.astype(np.float32), ident_t.astype(np.float32))
                                 .mean()),
            "motion_mm": float(np.mean(moves)) if moves else None,
            "motion_true_mm": float(np.mean(moves_true)) if moves_true else None}


def independent_fits(clip: str | Path, cfg, stack, max_frames: int | None = None,
                     progress: bool = True) -> tuple[list, list, float]:
    """The baseline: every frame alone, as ``refine sfs`` would fit a photo (the detector cascade, then the coarse
    stage of ``stack``: the full MAP fit with a free identity and, unless turned off, the photometric fit,
    :func:`coarse.stage.coarse_fit`). Returns (alphas, poses: None where no face was found; seconds)."""
    from tqdm import tqdm

    from .video import read_frames

    alphas, poses = [], []
    t0 = time.perf_counter()
    for _, _, rgb in tqdm(read_frames(clip, max_frames), desc="independent", unit="frame", disable=not progress):
        try:
            det = detect_faces(rgb, cfg.detect)[0]
        except ReconstructionInputError:
            alphas.append(None)
            poses.append(None)
            continue
        cf = coarse_fit(rgb.astype(np.float32) / 255.0, det.landmarks, stack.model, stack.coarse, cfg.render,
                        det.detector)
        alphas.append(cf.alpha)
        poses.append(cf.pose)
    return alphas, poses, time.perf_counter() - t0


def read_fits(folder: Path, model) -> tuple[list, list]:
    """Per-frame (alphas, poses) of a ``refine video`` folder (frames.jsonl; None where no face)."""
    alphas, poses = [], []
    ident = np.asarray(json.loads((folder / "identity.json").read_text())["identity"], np.float32)
    for line in (folder / "frames.jsonl").read_text().splitlines():
        r = json.loads(line)
        if not r["face"]:
            alphas.append(None)
            poses.append(None)
            continue
        expr = np.asarray([r["expression"][n] for n in model.expression_names], np.float32)
        alphas.append(model.join(ident, expr))
        poses.append(Pose.from_dict(r["pose"]))
    return alphas, poses


def evaluate_clip(clip: str | Path, truth: dict, cfg, stack, out: Path, max_frames: int | None = None,
                  baseline: bool = True, progress: bool = True) -> dict:
    """``refine video`` on ``clip`` (outputs in ``out``) and, with ``baseline``, every frame fitted alone, both
    scored against ``truth`` (:func:`clip_errors`). Returns ``tracker``, ``independent``, ratios and speed."""
    from .video import VideoOptions, process_video

    summary = process_video(clip, out, cfg, stack, VideoOptions(overlay=True, max_frames=max_frames), progress)
    alphas, poses = read_fits(out, stack.model)
    n = len(alphas)
    sub = {**truth, "alpha": truth["alpha"][:n], "pose": truth["pose"][:n]}
    report = {"clip": str(clip), "frames": n, "still": truth.get("still"),
              "tracker": clip_errors(stack.model, alphas, poses, sub),
              "tracker_speed": {"frames_per_s": summary["frames_per_s"], "detector_runs": summary["detector_runs"]}}
    if baseline:
        a_ind, p_ind, secs = independent_fits(clip, cfg, stack, n, progress)
        ind = clip_errors(stack.model, a_ind, p_ind, sub)
        report["independent"] = ind
        report["independent_speed"] = {"frames_per_s": n / max(secs, 1e-9)}
        tr = report["tracker"]
        report["ratios"] = {
            "motion_tracker_over_independent": (tr["motion_mm"] / ind["motion_mm"]
                                                if tr.get("motion_mm") and ind.get("motion_mm") else None),
            "identity_tracker_over_independent": tr["identity_mm"] / ind["identity_mm"]}
    return report
