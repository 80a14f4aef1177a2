"""``refine video``: a face through a clip, each frame from the previous one, with one identity for the clip.

Per frame (:func:`process_video`):

1. landmarks: dlib's 68-point predictor in the box the last frame's landmarks give
   (:func:`coarse.detect.landmarks_in_box`); the detector cascade (:func:`coarse.detect.detect_faces`) runs
   only when tracking is lost: on the first frame, when the face jumped (moved more than ``video.lost_jump``
   times its size, or changed size by more than that fraction), or when the fit below explains the landmarks
   badly (RMS residual over ``video.lost_residual_mm`` at the face);
2. smoothing: a One-Euro filter (:class:`OneEuroFilter`) on the landmarks in units of the face's size: a
   low-pass whose cutoff rises with speed, so a still head does not jitter and a turning one does not lag;
3. the coarse face: the MAP landmark fit (:func:`coarse.fit.fit_map`) of expression and pose with the clip's
   identity held, started from the last frame's pose (``video.fit_iterations`` alternations), then refined by
   the frame's shading (:func:`coarse.photometric.photometric_fit` of expression and pose, the identity held;
   ``video.photometric_rounds`` rounds of at most ``video.photometric_iterations`` steps on
   ``video.photometric_samples`` vertices; off with ``--no-photometric`` or ``photometric_rounds: 0``);
4. the identity: fitted jointly over the first ``video.identity_frames`` frames with a face
   (:func:`coarse.fit.fit_map_shared_identity`: one identity, an expression and pose per frame), then held.
   Until then frames are fitted with the first frame's own identity (for the lost test) and kept back; once
   the joint fit is done they are written with its results.

Frames: pixels of the video frame (x right, y down) for landmarks and poses; meshes in the model frame
(millimetres, y up, face along +z; the per-frame pose maps them into the frame, :mod:`render.camera`).

Outputs in the clip's folder (:data:`OUTPUT_FILES`): ``frames.jsonl`` (one JSON object per frame: index, time,
whether a face was found and how (``detected`` / ``tracked``), the coarse method that made it
(``coarse_method``: ``photometric_fit`` or ``landmark_fit``), pose, the 53 named expression weights, the
smoothed landmarks, the landmark fit's residual and timings), ``identity.json`` (the clip's identity coefficients and the
frames it was fitted on), ``neutral.obj`` (that identity with a neutral expression), ``overlay.mp4`` (the fitted
mesh's shading over the frames) and ``summary.json`` (counts, speed); on request ``obj/frame_NNNNNN.obj`` (each
frame's mesh, model frame), ``animation/`` (``neutral.obj`` plus ``coefficients.csv``: pose and expression per
frame; the expression blendshapes are the face model's), ``detail/frame_NNNNNN.obj`` (each frame's refined
mesh after the detail network and shape from shading, :func:`reconstruct.pipeline.reconstruct_face`) and
``animation.glb`` plus ``blendshapes.csv`` (the clip's head with its expressions and pose animated, glTF 2.0, and
the ARKit weights per frame in Live Link Face's CSV layout: :func:`reconstruct.gltf.write_clip_outputs`).

Decoding and encoding use PyAV (FFmpeg inside the wheel): any container and codec FFmpeg reads.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from coarse.detect import Detection, ReconstructionInputError, detect_faces, landmarks_in_box
from coarse.fit import fit_map, fit_map_shared_identity
from coarse.stage import CoarseFit
from facesynth.io import atomic_write_text, temp_path, write_json
from render.camera import Pose, project, rotation_to_euler
from render.renderer import FaceRenderer

OUTPUT_FILES = ("frames.jsonl", "identity.json", "neutral.obj", "overlay.mp4", "summary.json")
#: Encoders tried in turn for overlay.mp4 (the first the PyAV wheel has).
ENCODERS = ("libx264", "h264", "mpeg4")


# ---------------------------------------------------------------------------------------------- smoothing
class OneEuroFilter:
    """The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012), written out here: an exponential low-pass
    whose cutoff rises with the signal's speed, ``cutoff = min_cutoff + beta |dx/dt|``, so slow changes (noise
    on a still signal) are smoothed hard and fast ones pass with little lag. The speed is itself low-passed at
    ``d_cutoff``. Works elementwise on arrays of any fixed shape.

    Args:
        min_cutoff: Hz, the cutoff at rest.
        beta: cutoff rise per unit of speed (Hz per signal unit per second).
        d_cutoff: Hz, the cutoff of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past: the next sample passes unchanged."""
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2.0 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """The filtered value of sample ``x`` at time ``t`` (seconds, increasing)."""
        x = np.asarray(x, np.float64)
        if self.x is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = t - self.t
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * (x - self.x) / dt + (1.0 - a_d) * self.dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        self.x = a * x + (1.0 - a) * self.x
        self.t = float(t)
        return self.x.copy()


# ---------------------------------------------------------------------------------------------- video files
@dataclass(frozen=True)
class VideoInfo:
    """A clip's frame size (pixels), frame rate (frames per second) and frame count (0: not known)."""

    width: int
    height: int
    fps: Fraction
    frames: int


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise ReconstructionInputError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise ReconstructionInputError(f"not a video FFmpeg can read ({e}): {path}") from None
    if not container.streams.video:
        container.close()
        raise ReconstructionInputError(f"no video stream in {path}")
    return container


def video_info(path: str | Path) -> VideoInfo:
    """Size, frame rate and frame count of the first video stream; one-line errors for a bad file."""
    with contextlib.closing(_open(path)) as c:
        s = c.streams.video[0]
        fps = s.average_rate or s.guessed_rate or Fraction(25)
        return VideoInfo(s.codec_context.width, s.codec_context.height, Fraction(fps), int(s.frames or 0))


def read_frames(path: str | Path, max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode the first video stream: (index, time in seconds, (H, W, 3) uint8 RGB) per frame, in order.
    Raises :class:`coarse.detect.ReconstructionInputError` for a file that cannot be decoded."""
    import av

    info = video_info(path)
    with contextlib.closing(_open(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for i, frame in enumerate(c.decode(stream)):
                if max_frames is not None and i >= max_frames:
                    return
                t = float(frame.time) if frame.time is not None else i / float(info.fps)
                yield i, t, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise ReconstructionInputError(f"cannot decode {path} ({e})") from None


class VideoWriter:
    """Encode RGB frames to an MP4 file (H.264 where the wheel has it, else MPEG-4 part 2), written under a
    temporary name (:func:`facesynth.io.temp_path`) and renamed on :meth:`close`. Odd sizes are padded by one
    pixel (4:2:0 needs even sides)."""

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction, crf: int = 23):
        import av

        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self.container = av.open(str(self.tmp), "w", format="mp4")
        codec = next(c for c in ENCODERS if c in av.codecs_available)
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(100000))
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        if codec != "mpeg4":
            self.stream.options = {"crf": str(crf), "preset": "veryfast"}
        self.size, self.count = (width, height), 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        if (w, h) != self.size:
            raise ValueError(f"frame of {w}x{h} pixels in a video of {self.size[0]}x{self.size[1]}")
        if w % 2 or h % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self, ok: bool = True) -> None:
        """Flush and rename into place (``ok``), or drop the file."""
        try:
            if ok:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            if ok:
                os.replace(self.tmp, self.path)
            else:
                self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- tracking
def _centre_size(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre (2,), size) of 68 landmarks: their mean, and their RMS distance from it (pixels)."""
    c = landmarks.mean(0)
    return c, float(np.sqrt(((landmarks - c) ** 2).sum(1).mean()))


@dataclass
class Observation:
    """One frame's landmarks: ``raw`` (68, 2) as predicted, ``smooth`` (68, 2) after the filter (pixels),
    ``source`` ``detected`` or ``tracked``, the ``detector`` of the track, its ``box`` and ``rotation_deg``."""

    raw: np.ndarray
    smooth: np.ndarray
    source: str
    detector: str
    box: np.ndarray
    rotation_deg: float
    timings: dict = field(default_factory=dict)


class FaceTracker:
    """Landmarks frame after frame: the predictor in the box the last smoothed landmarks give (the box is
    placed as the detector placed it relative to the landmarks when it last ran), the detector when the track
    is lost or new, and the One-Euro filter in units of the face's size.

    Args:
        detect_cfg: the ``detect`` config section; video_cfg: the ``video`` section.
    """

    def __init__(self, detect_cfg, video_cfg):
        self.detect_cfg, self.cfg = detect_cfg, video_cfg
        self.filter = OneEuroFilter(video_cfg.min_cutoff_hz, video_cfg.beta, video_cfg.d_cutoff_hz)
        self.last: Observation | None = None
        self.box_offset = np.zeros(2)  # detector box centre - landmark centre, / landmark size
        self.box_ratio = 1.0  # detector box side / landmark size
        self.size_ref = 1.0  # pixels per unit of the filtered signal
        self.detections = 0

    def lose(self) -> None:
        """Forget the track: the next frame runs the detector."""
        self.last = None
        self.filter.reset()

    def _smooth(self, raw: np.ndarray, t: float) -> np.ndarray:
        return self.filter(raw / self.size_ref, t) * self.size_ref

    def detect(self, rgb: np.ndarray, t: float) -> Observation | None:
        """Run the detector (largest face); None without a face. Restarts the filter and the box relation."""
        t0 = time.perf_counter()
        self.detections += 1
        try:
            det = detect_faces(rgb, self.detect_cfg)[0]
        except ReconstructionInputError:
            self.lose()
            return None
        c, size = _centre_size(det.landmarks)
        side = float(det.box[2] - det.box[0])
        self.box_offset = ((det.box[:2] + det.box[2:]) / 2 - c) / size
        self.box_ratio, self.size_ref = side / size, side
        self.filter.reset()
        self.last = Observation(det.landmarks, self._smooth(det.landmarks, t), "detected", det.detector, det.box,
                                det.rotation_deg, {"detect_s": time.perf_counter() - t0})
        return self.last

    def track(self, rgb: np.ndarray, t: float) -> Observation | None:
        """The next frame: tracked from the last one when there is one and the face did not jump, else
        detected; None without a face."""
        if self.last is None:
            return self.detect(rgb, t)
        t0 = time.perf_counter()
        c, size = _centre_size(self.last.smooth)
        side = self.box_ratio * size
        centre = c + self.box_offset * size
        box = np.concatenate([centre - side / 2, centre + side / 2])
        raw = landmarks_in_box(rgb, box, self.last.rotation_deg)
        c_new, size_new = _centre_size(raw)
        jump = self.cfg.lost_jump
        H, W = rgb.shape[:2]
        outside = not (0 <= c_new[0] < W and 0 <= c_new[1] < H)
        if outside or np.linalg.norm(c_new - c) > jump * side or abs(np.log(size_new / size)) > np.log1p(jump):
            return self.detect(rgb, t)
        self.last = Observation(raw, self._smooth(raw, t), "tracked", self.last.detector, box,
                                self.last.rotation_deg, {"landmarks_s": time.perf_counter() - t0})
        return self.last


# ---------------------------------------------------------------------------------------------- fitting
def landmark_residual_mm(model, landmarks_model, alpha: np.ndarray, pose: Pose, points: np.ndarray) -> float:
    """RMS distance (mm at the face) between 68 landmarks (68, 2) pixels and where the fitted face ``alpha``
    under ``pose`` puts them (:meth:`coarse.landmarks.LandmarkModel.project`)."""
    d = points - landmarks_model.project(model, alpha, pose)
    return float(np.sqrt((d ** 2).sum(1).mean()) / pose.scale)


@dataclass
class FrameFit:
    """A frame's coarse face: ``alpha`` (K,), ``pose`` (video frame), the landmark fit's ``residual_mm``, and
    the ``method`` that made it (``landmark_fit`` or ``photometric_fit``)."""

    alpha: np.ndarray
    pose: Pose
    residual_mm: float
    method: str = "landmark_fit"


def frame_photometric(photometric, video_cfg):
    """The per-frame photometric fit's settings: ``refine.photometric`` (None: off) in ``video``'s rounds,
    steps and vertex sample; None when ``video.photometric_rounds`` is 0."""
    if photometric is None or video_cfg.photometric_rounds < 1:
        return None
    return replace(photometric, rounds=video_cfg.photometric_rounds, iterations=video_cfg.photometric_iterations,
                   samples=video_cfg.photometric_samples, early_samples=video_cfg.photometric_samples)


class ClipFitter:
    """Expression and pose per frame with the clip's one identity held (:func:`coarse.fit.fit_map` with
    ``identity``), from the last frame's pose, then refined by the frame's shading
    (:func:`coarse.photometric.photometric_fit`, expression and pose only) when ``photometric`` settings are
    given (:func:`frame_photometric`). Before the identity is known (:meth:`set_identity`), the first frame's own
    full landmark fit gives a provisional one (those frames are fitted again once it is known)."""

    def __init__(self, model, landmarks_model, prior, video_cfg, photometric=None):
        self.model, self.lm, self.prior, self.cfg = model, landmarks_model, prior, video_cfg
        self.fast = replace(prior, iterations=video_cfg.fit_iterations)
        self.photometric = photometric
        self.identity: np.ndarray | None = None
        self.held = False
        self.pose: Pose | None = None

    def refine(self, fit: FrameFit, photo: np.ndarray, points: np.ndarray, detector: str,
               previous: FrameFit | None = None) -> FrameFit:
        """``fit`` refined by the frame's shading (expression and pose; the identity held), when this fitter has
        photometric settings and the identity is held; else ``fit``. ``photo``: (H, W, 3) uint8; ``previous``:
        the last frame's refined fit, whose expression the prior leans on (``video.photometric_temporal_std``)."""
        if self.photometric is None or not self.held:
            return fit
        from coarse.fit import CoefficientPrior
        from coarse.photometric import photometric_fit

        m = self.model
        prior = CoefficientPrior.from_config(self.prior, m.n_identity, m.n_expression)
        if previous is not None and previous.method == "photometric_fit" and self.cfg.photometric_temporal_std > 0:
            prior = prior.times_expression(m.n_identity, np.asarray(previous.alpha, np.float64)[m.n_identity:],
                                           self.cfg.photometric_temporal_std)
        alpha, pose = photometric_fit(photo, fit.alpha, fit.pose, points, m, self.lm, self.prior, self.photometric,
                                      detector, free="expression", coefficients=prior)
        return FrameFit(alpha, pose, fit.residual_mm, "photometric_fit")

    def set_identity(self, identity: np.ndarray) -> None:
        self.identity, self.held = np.asarray(identity, np.float64), True

    def fit(self, points: np.ndarray, detector: str, warm: bool = True) -> FrameFit:
        """Fit one frame's landmarks (68, 2); ``warm``: start from the last frame's pose."""
        m = self.model
        if self.identity is None:  # the clip's first face: its own identity, provisionally
            alpha, pose = fit_map(m, points, self.lm, self.prior, detector=detector)
            self.identity = alpha[:m.n_identity].astype(np.float64)
        else:
            alpha, pose = fit_map(m, points, self.lm, self.fast, pose=self.pose if warm else None, detector=detector,
                                  identity=self.identity)
        self.pose = pose
        return FrameFit(alpha, pose, landmark_residual_mm(m, self.lm, alpha, pose, points))

    def joint_identity(self, points: list, poses: list, detector: str,
                       coefficients=None) -> tuple[np.ndarray, list]:
        """The clip's identity from N frames' landmarks (joint MAP fit, under ``coefficients``: a
        :class:`coarse.fit.CoefficientPrior`, e.g. the frames' recognition descriptors' identity; default the
        ``fit`` section's), held from now on; returns it and the N frames' :class:`FrameFit` with it."""
        start = self.identity if coefficients is None else coefficients.mean[:self.model.n_identity]
        ident, alphas, poses = fit_map_shared_identity(self.model, np.stack(points), self.lm, self.fast, poses,
                                                       detector, self.cfg.identity_rounds, start,
                                                       self.cfg.identity_evidence_frames, coefficients)
        self.set_identity(ident)
        fits = [FrameFit(a, p, landmark_residual_mm(self.model, self.lm, a, p, x))
                for a, p, x in zip(alphas, poses, points)]
        self.pose = poses[-1]
        return ident, fits


def clip_identity_prior(coarse, model, frames: list, n: int):
    """The fits' prior (:class:`coarse.fit.CoefficientPrior`) with the identity the recognition descriptors of
    ``n`` of ``frames`` (evenly spread; each with ``rgb`` and ``obs.smooth`` landmarks) predict on average
    (:class:`coarse.identity.IdentityMap`), or None when ``coarse`` has no identity map or ``n`` is 0. The
    covariance stays one photo's: the frames show one face in much the same light, so their errors do not
    average out as independent ones would."""
    if coarse.identity is None or n < 1 or not frames:
        return None
    from coarse.fit import CoefficientPrior
    from coarse.recognition import face_descriptor

    pick = np.unique(np.linspace(0, len(frames) - 1, min(n, len(frames))).round().astype(int))
    mean = np.mean([coarse.identity.predict(face_descriptor(frames[i].rgb, frames[i].obs.smooth,
                                                            mirror=coarse.identity_mirror)) for i in pick], 0)
    base = CoefficientPrior.from_config(coarse.prior, model.n_identity, model.n_expression)
    return base.with_identity(mean, coarse.identity.cov)


# ---------------------------------------------------------------------------------------------- drawing
class OverlayDrawer:
    """The fitted mesh's shading (unit albedo, the renderer's frontal shading light) blended over the narrow
    face area of a frame, rendered in a square crop about the face at the frame's own scale (no resampling;
    renderers cached by crop side, a multiple of 32)."""

    def __init__(self, model, render_cfg, blend: float = 0.55):
        self.model, self.render_cfg, self.blend = model, render_cfg, blend
        self.renderers: dict[int, FaceRenderer] = {}
        self.white = np.ones((model.n_vertices, 3), np.float32)

    def __call__(self, rgb: np.ndarray, alpha: np.ndarray, pose: Pose, verts: np.ndarray | None = None) -> np.ndarray:
        m = self.model
        verts = m.vertices(alpha) if verts is None else verts
        p = project(verts[m.regions["narrow_face"]], pose)[:, :2]
        lo, hi = p.min(0), p.max(0)
        side = int(np.ceil(max(hi - lo) * 1.3 / 32) * 32)
        if side > 4 * max(rgb.shape[:2]) or not np.isfinite(side):
            return rgb
        x0, y0 = np.floor((lo + hi) / 2 - side / 2).astype(int)
        if side not in self.renderers:
            self.renderers[side] = FaceRenderer.from_config(m, self.render_cfg, image_size=side, backend="numba")
        crop_pose = Pose(pose.scale, pose.rotation, np.asarray(pose.translation) - (x0, y0))
        r = self.renderers[side]
        fr = r.render_face(alpha, crop_pose, self.white, r.shading_light, verts=verts)
        shade, mask = fr.gray, r.narrow_face_mask(fr.fragments)
        H, W = rgb.shape[:2]
        ya, yb, xa, xb = max(y0, 0), min(y0 + side, H), max(x0, 0), min(x0 + side, W)
        out = rgb.copy()
        if ya >= yb or xa >= xb:
            return out
        s = shade[ya - y0:yb - y0, xa - x0:xb - x0, None] * 255.0
        k = mask[ya - y0:yb - y0, xa - x0:xb - x0, None] * self.blend
        region = out[ya:yb, xa:xb].astype(np.float32)
        out[ya:yb, xa:xb] = np.clip(region * (1 - k) + s * k + 0.5, 0, 255).astype(np.uint8)
        return out


# ---------------------------------------------------------------------------------------------- the clip
@dataclass(frozen=True)
class VideoOptions:
    """What ``refine video`` writes besides the standard outputs: ``obj`` per-frame meshes; ``animation``
    neutral mesh plus per-frame coefficients; ``detail`` the detail network and SfS per frame (refined meshes);
    ``overlay`` overlay.mp4; ``max_frames`` only the first frames; ``resolution`` SfS pixels for ``detail``;
    ``gltf`` animation.glb and blendshapes.csv."""

    obj: bool = False
    animation: bool = False
    detail: bool = False
    overlay: bool = True
    max_frames: int | None = None
    resolution: int | None = None
    gltf: bool = False


@dataclass
class _Frame:
    index: int
    time: float
    rgb: np.ndarray
    obs: Observation | None = None
    fit: FrameFit | None = None
    timings: dict = field(default_factory=dict)


def _frame_record(fr: _Frame, model) -> dict:
    rec = {"index": fr.index, "time": round(fr.time, 6), "face": fr.fit is not None,
           "source": fr.obs.source if fr.obs is not None else "none"}
    if fr.fit is not None:
        pose = fr.fit.pose
        yaw, pitch, roll = np.degrees(rotation_to_euler(pose.rotation))
        _, expr = model.split(np.asarray(fr.fit.alpha, np.float64))
        rec.update(detector=fr.obs.detector, coarse_method=fr.fit.method, residual_mm=round(fr.fit.residual_mm, 4),
                   pose={**pose.to_dict(), "yaw_deg": float(yaw), "pitch_deg": float(pitch), "roll_deg": float(roll)},
                   expression={n: round(float(v), 5) for n, v in zip(model.expression_names, expr)},
                   landmarks=np.round(fr.obs.smooth, 3).tolist())
    rec["timings_s"] = {k: round(v, 5) for k, v in fr.timings.items()}
    return rec


def existing_outputs(out: Path) -> list[str]:
    return [f for f in OUTPUT_FILES if (out / f).exists()]


def process_video(path: str | Path, out: Path, cfg, stack, options: VideoOptions = VideoOptions(),
                  progress: bool = True) -> dict:
    """Track and fit the face through a clip; writes the outputs of the module docstring to ``out``.

    Args:
        path: the clip (any container and codec FFmpeg reads).
        out: the output folder (created).
        cfg: the config (``video``, ``detect``, ``fit``, ``render`` sections); stack: the loaded models
            (:class:`reconstruct.models.Stack`; its detail network serves ``options.detail``).
        options: :class:`VideoOptions`.
        progress: show a tqdm bar.
    Returns:
        The run's summary (also ``summary.json``).
    Raises:
        ReconstructionInputError: unreadable clip, or no face in any frame.
    """
    from morphable.obj import write_obj
    from tqdm import tqdm

    model, vc = stack.model, cfg.video
    info = video_info(path)
    tracker = FaceTracker(cfg.detect, vc)
    fitter = ClipFitter(model, stack.coarse.landmarks, stack.coarse.prior, vc,
                        frame_photometric(stack.coarse.photometric, vc))
    drawer = OverlayDrawer(model, cfg.render)
    out.mkdir(parents=True, exist_ok=True)
    for sub, on in (("obj", options.obj), ("animation", options.animation), ("detail", options.detail)):
        if on:
            (out / sub).mkdir(exist_ok=True)
    writer = VideoWriter(out / "overlay.mp4", info.width, info.height, info.fps, vc.crf) if options.overlay else None
    pending: list[_Frame] = []  # frames kept back until the clip's identity is fitted
    lines: list[str] = []
    identity_frames: list[int] = []
    state = {"last": None}  # the last frame's fit, for the next frame's photometric prior
    counts: Counter = Counter()
    timings: dict[str, float] = Counter()
    t_start = time.perf_counter()

    def emit(fr: _Frame) -> None:
        t0 = time.perf_counter()
        verts = None if fr.fit is None else model.vertices(fr.fit.alpha)
        if writer is not None:
            writer.write(fr.rgb if fr.fit is None else drawer(fr.rgb, fr.fit.alpha, fr.fit.pose, verts))
        fr.timings["overlay_s"] = time.perf_counter() - t0
        if fr.fit is not None and options.obj:
            t1 = time.perf_counter()
            write_obj(out / "obj" / f"frame_{fr.index:06d}.obj", verts, model.triangles)
            fr.timings["obj_s"] = time.perf_counter() - t1
        if fr.fit is not None and options.detail:
            fr.timings.update(_detail(fr, out, cfg, stack, options))
        counts[fr.obs.source if fr.obs is not None else "none"] += 1
        for k, v in fr.timings.items():
            timings[k] += v
        lines.append(json.dumps(_frame_record(fr, model)))
        fr.rgb = None  # written: drop the pixels

    def settle(frames: list[_Frame]) -> None:
        """The joint identity over the kept-back frames with a face; then they are written."""
        with_face = [f for f in frames if f.fit is not None]
        if with_face:
            t0 = time.perf_counter()
            kind = Counter(f.obs.detector for f in with_face).most_common(1)[0][0]
            prior = clip_identity_prior(stack.coarse, model, with_face, vc.identity_descriptor_frames)
            _, fits = fitter.joint_identity([f.obs.smooth for f in with_face], [f.fit.pose for f in with_face], kind,
                                            prior)
            timings["identity_fit_s"] += time.perf_counter() - t0
            last = None
            for f, fit in zip(with_face, fits):
                t1 = time.perf_counter()
                f.fit = last = fitter.refine(fit, f.rgb, f.obs.smooth, f.obs.detector, last)
                f.timings["photometric_s"] = time.perf_counter() - t1
            state["last"] = last
            identity_frames.extend(f.index for f in with_face)
        for f in frames:
            emit(f)

    ok = False
    try:
        total = info.frames if options.max_frames is None else min(info.frames or options.max_frames,
                                                                    options.max_frames)
        for index, t, rgb in tqdm(read_frames(path, options.max_frames), total=total or None, desc="video",
                                  unit="frame", disable=not progress):
            fr = _Frame(index, t, rgb)
            t0 = time.perf_counter()
            obs = tracker.track(rgb, t)
            if obs is not None:
                fit = fitter.fit(obs.smooth, obs.detector, warm=obs.source == "tracked")
                if obs.source == "tracked" and fit.residual_mm > vc.lost_residual_mm:
                    obs = tracker.detect(rgb, t)  # lost: the landmarks do not look like the face any more
                    fit = None if obs is None else fitter.fit(obs.smooth, obs.detector, warm=False)
                fr.obs, fr.fit = obs, fit
                fr.timings.update(obs.timings if obs is not None else {})
            fr.timings["track_fit_s"] = time.perf_counter() - t0
            if fr.fit is not None and fitter.held:
                t1 = time.perf_counter()
                fr.fit = fitter.refine(fr.fit, rgb, fr.obs.smooth, fr.obs.detector,
                                       state["last"] if fr.obs.source == "tracked" else None)
                fr.timings["photometric_s"] = time.perf_counter() - t1
            state["last"] = fr.fit
            if fitter.held:
                emit(fr)
                continue
            pending.append(fr)
            n_face = sum(f.fit is not None for f in pending)
            if n_face >= vc.identity_frames or len(pending) >= 4 * vc.identity_frames:
                settle(pending)
                pending = []
        if pending:
            settle(pending)
        if not identity_frames:
            raise ReconstructionInputError(f"no face found in any of the {len(lines)} frames of {path}")
        ok = True
    finally:
        if writer is not None:
            writer.close(ok)
    seconds = time.perf_counter() - t_start
    atomic_write_text(out / "frames.jsonl", "\n".join(lines) + "\n")
    ident = fitter.identity.astype(np.float32)
    neutral = model.vertices(model.join(ident, np.zeros(model.n_expression, np.float32)))
    write_obj(out / "neutral.obj", neutral, model.triangles)
    write_json(out / "identity.json", {"identity": ident.tolist(), "frames": identity_frames,
                                       "method": "coarse.fit.fit_map_shared_identity",
                                       "rounds": vc.identity_rounds,
                                       "units": "identity coefficients of the face model (N(0, 1) each); "
                                                "neutral.obj: this identity, neutral expression, mm, y up"})
    if options.animation:
        _write_animation(out / "animation", lines, model, neutral)
    if options.gltf:
        from .gltf import write_clip_outputs

        write_clip_outputs(out, [json.loads(x) for x in lines], model, ident, info.width, info.height)
    n = len(lines)
    summary = {"video": str(path), "frames": n, "width": info.width, "height": info.height, "fps": float(info.fps),
               "frames_with_face": n - counts["none"], "detected": counts["detected"], "tracked": counts["tracked"],
               "detector_runs": tracker.detections, "identity_frames": len(identity_frames),
               "seconds": seconds, "frames_per_s": n / max(seconds, 1e-9),
               "mean_s": {k: v / max(n, 1) for k, v in sorted(timings.items())},
               "options": {k: v for k, v in vars(options).items()}, "video_config": vars(vc)}
    write_json(out / "summary.json", summary)
    return summary


def _detail(fr: _Frame, out: Path, cfg, stack, options: VideoOptions) -> dict:
    """The detail network and SfS on one frame, from its video fit; writes its refined mesh; its timings."""
    from morphable.obj import write_obj

    from .pipeline import reconstruct_face, refined_mesh

    det = Detection(fr.obs.box, fr.obs.smooth, 0.0, fr.obs.detector, fr.obs.rotation_deg)
    given = CoarseFit(fr.fit.alpha, fr.fit.pose, "video_fit", fr.fit.alpha, fr.fit.alpha)
    t0 = time.perf_counter()
    rec = reconstruct_face(fr.rgb, det, stack.model, cfg, stack.coarse, options.resolution or cfg.refine.resolution,
                           sfs=True, sfs_params=cfg.refine.sfs, detail=stack.detail, coarse_result=given)
    verts, tris, _, _ = refined_mesh(rec, stack.model)
    write_obj(out / "detail" / f"frame_{fr.index:06d}.obj", verts, tris)
    return {"detail_sfs_s": time.perf_counter() - t0}


def _write_animation(folder: Path, lines: list[str], model, neutral: np.ndarray) -> None:
    """``neutral.obj`` and ``coefficients.csv`` (per frame: index, time, face, yaw/pitch/roll degrees, scale,
    translation x/y pixels, then the 53 expression weights by name)."""
    from morphable.obj import write_obj

    write_obj(folder / "neutral.obj", neutral, model.triangles)
    head = ["index", "time", "face", "yaw_deg", "pitch_deg", "roll_deg", "scale", "tx", "ty", *model.expression_names]
    rows = [",".join(head)]
    for line in lines:
        r = json.loads(line)
        if r["face"]:
            p, e = r["pose"], r["expression"]
            vals = [p["yaw_deg"], p["pitch_deg"], p["roll_deg"], p["scale"], *p["translation"],
                    *(e[n] for n in model.expression_names)]
        else:
            vals = [""] * (len(head) - 3)
        rows.append(",".join([str(r["index"]), f"{r['time']:.6f}", str(int(r["face"]))] +
                             [v if v == "" else f"{v:.6g}" for v in vals]))
    atomic_write_text(folder / "coefficients.csv", "\n".join(rows) + "\n")
