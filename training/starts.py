"""The current estimate a_t of a training sample (``train.start``): where the iterative network starts.

- ``mean``: the scene's a_t (:func:`datagen.scene.draw_scene`): on the path from a random face or the mean face
  (the paper's inference start) to the truth.
- ``fit``: the calibrated landmark fit, as inference starts (:func:`coarse.stage.coarse_fit`): the detector's
  68 points are simulated on the truth render's face and pose (:func:`coarse.landmarks.simulated_detections`:
  the detector's measured pull towards the mean face, heavy tails, correlated errors), the MAP fit
  (:func:`coarse.fit.fit_map`, the ``fit`` section with ``train.start_fit_iterations``) gives a_fit, and
  ``a_t = a_gt + u (a_fit - a_gt)``: u = 0 where the scene drew u = 0 (``datagen.u_zero_prob``: no correction is
  a valid, easy answer); else u = 1 (the fit itself, what the first pass sees) for a share
  ``train.start_fit_prob`` of the samples, and u ~ U[0, 1) for the others (estimates part way to the truth, as
  later passes see), both from the scene's u (no extra draw). With ``train.start_pose: fit`` a_t is rendered
  under the pose inference fits to those landmarks (:func:`coarse.iterative.landmark_pose`), not the true one:
  the image and the shading of a_t are misaligned as a photo's are. The simulated landmarks give half the pose
  error that dlib's give (3.3 against 7 degrees median), so that pose gets extra noise
  (``train.start_pose_noise_deg``, per yaw, pitch and roll) and misses a share ``train.start_pitch_follow`` of the
  true pitch, as the fit to dlib's points does. ``train.start_error_scale`` [low, high] scales all of that
  detector error (landmark noise and pull, extra pose error) by s ~ U[low, high] per sample (its own stream,
  :func:`error_scale_rng`): 1 is dlib as calibrated, 0 exact landmarks, so that pairs of several noise levels
  teach the network to leave a good fit alone. ``train.start_landmarks: true`` replaces the simulated detector
  by the model's own landmark vertices plus Gaussian noise of s x ``train.start_true_noise_mm`` (mm on the face),
  fitted with those vertices as ``train evaluate --landmarks true`` fits them (a front end with accurate
  landmarks: its fit errs differently from the calibrated one), without the detector's extra pose error.

- ``photometric``: as ``fit``, then the photometric fit (:func:`coarse.photometric.photometric_fit`, the
  ``refine.photometric`` section) refines the landmark fit on the sample's true colour render, drawn again at
  ``evaluate.image_size`` pixels (the size of a photo; the landmarks and pose scaled to it), as ``refine`` runs
  the coarse stage; a_t interpolates between it and the truth as above. It costs a render and the fit (about
  0.3 s) per sample.

The simulated detections draw from their own generator (:func:`start_rng`), seeded by (seed, index): a sample
depends on (seed, index) alone, whatever the number of workers.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from coarse.fit import FitError, fit_map
from coarse.iterative import landmark_pose
from coarse.landmarks import (LandmarkModel, load_landmark_model, noisy_landmarks, simulated_detections,
                              vertex_landmarks)
from datagen.sample import Sample, make_sample
from datagen.scene import SceneParams, camera_points, draw_scene
from render.camera import Pose, euler_to_rotation, rotation_to_euler

START_POLICIES = ("mean", "fit", "photometric")
#: The third word of the start generator's seed: its stream differs from every scene's (seed, index).
START_STREAM = 14
#: ``train.start_landmarks: true``: the fit's landmark scatter is at least this (mm; 0.25 px at 512 px, as
#: `train evaluate` floors it at 0.25 px).
MIN_TRUE_SIGMA_MM = 0.14
#: Simulated detections drawn at most this often for one sample (a draw whose fit fails is drawn again).
MAX_DRAWS = 5


def start_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s simulated detections (independent of its scene's generator)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), START_STREAM])))


def pose_error_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s extra pose error (a stream of its own: the landmarks stay as they were)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), START_STREAM, 1])))


def error_scale_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s detector error scale s (``train.start_error_scale``)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), START_STREAM, 2])))


def detector_pose(fitted: Pose, true: Pose, noise_deg, pitch_follow: float, rng: np.random.Generator) -> Pose:
    """``fitted`` with the pose error of dlib's points added: (yaw, pitch, roll) + N(0, ``noise_deg``) degrees,
    and the pitch less ``pitch_follow`` x the true pitch (the fit to dlib's points underestimates pitch)."""
    angles = np.asarray(rotation_to_euler(fitted.rotation))
    angles = angles + np.radians(rng.normal(0.0, 1.0, 3) * np.asarray(noise_deg, float))
    angles[1] -= pitch_follow * rotation_to_euler(true.rotation)[1]
    return Pose(fitted.scale, euler_to_rotation(*angles), np.asarray(fitted.translation))


def fit_u(u: float, fit_prob: float) -> float:
    """The scene's u in [0, 1] -> the fit start's: 0 stays 0; else 1 with probability ``fit_prob`` (for u
    uniform), and u / (1 - fit_prob) in [0, 1) otherwise."""
    if u <= 0.0:
        return 0.0
    if fit_prob >= 1.0:
        return 1.0
    return float(min(1.0, u / (1.0 - fit_prob)))


@dataclass(frozen=True)
class StartDraw:
    """One sample's fit start: alpha_t (K,) float32; alpha_fit (K,) float32 the landmark fit; points (68, 2)
    float32 the simulated detections (pixels of the sample's render); detector: the simulated detector;
    pose_t: the pose to render a_t under (None: the face's own)."""

    alpha_t: np.ndarray
    alpha_fit: np.ndarray
    points: np.ndarray
    detector: str
    pose_t: Pose | None = None


@dataclass(frozen=True)
class FitStart:
    """The ``fit`` policy (module docstring): landmarks, the fit's prior (``fit`` section, its iterations set
    for training), the share of samples that start exactly at the fit, and whether a_t is rendered under the
    pose fitted to the landmarks."""

    landmarks: LandmarkModel
    prior: object
    fit_prob: float
    fitted_pose: bool = True
    pose_noise_deg: tuple = (0.0, 0.0, 0.0)
    pitch_follow: float = 0.0
    error_scale: tuple = (1.0, 1.0)
    true_landmarks: bool = False
    true_noise_mm: float = 1.0
    photometric: object = None
    photo_size: int = 512
    render_cfg: object = None

    @staticmethod
    def from_config(cfg) -> "FitStart":
        tc = cfg.train
        return FitStart(load_landmark_model(cfg.resolve_path(cfg.fit.landmarks)),
                        dataclasses.replace(cfg.fit, iterations=tc.start_fit_iterations), tc.start_fit_prob,
                        tc.start_pose == "fit", tuple(tc.start_pose_noise_deg), tc.start_pitch_follow,
                        tuple(tc.start_error_scale), tc.start_landmarks == "true", tc.start_true_noise_mm,
                        cfg.refine.photometric if tc.start == "photometric" else None, cfg.evaluate.image_size,
                        cfg.render)

    def scale(self, seed: int, index: int) -> float:
        """Sample ``index``'s detector error scale s ~ U[``error_scale``] (1.0 without a draw when it is [1, 1])."""
        low, high = self.error_scale
        if low == high:
            return float(low)
        return float(error_scale_rng(seed, index).uniform(low, high))

    def draw(self, scene: SceneParams, model, seed: int) -> StartDraw:
        """The start of the sample of ``scene`` in dataset ``seed``. Detections whose fit fails (a heavy-tailed
        draw the pose fit cannot follow: :class:`coarse.fit.FitError`) are drawn again from the same generator,
        as the detector would be run again; deterministic in (seed, index)."""
        rng = start_rng(seed, scene.index)
        for attempt in range(MAX_DRAWS):
            try:
                return self._draw(scene, model, seed, rng)
            except FitError:
                if attempt == MAX_DRAWS - 1:
                    raise

    def _draw(self, scene: SceneParams, model, seed: int, rng: np.random.Generator) -> StartDraw:
        warp = None if scene.distance_mm is None else functools.partial(camera_points, scene, model)
        if self.true_landmarks:  # the model's landmark vertices + Gaussian noise, fitted as `train evaluate
            # --landmarks true` fits them
            noise_mm = self.scale(seed, scene.index) * self.true_noise_mm
            landmarks = vertex_landmarks(model, max(noise_mm, MIN_TRUE_SIGMA_MM))
            points = noisy_landmarks(landmarks.project(model, scene.alpha_gt, scene.pose, warp),
                                     noise_mm * scene.pose.scale, rng)
            detector = None
        else:
            landmarks = self.landmarks
            points, detector = simulated_detections(landmarks, model, scene.alpha_gt, scene.pose, rng,
                                                    error_scale=self.scale(seed, scene.index), warp=warp)
        fit, fit_pose = fit_map(model, points, landmarks, self.prior, detector=detector)
        if self.photometric is not None:
            fit = self.refine(scene, model, fit, fit_pose, points, landmarks, detector)
        gt = np.asarray(scene.alpha_gt, np.float32)
        u = fit_u(scene.u, self.fit_prob)
        alpha_t = (gt + u * (fit - gt)).astype(np.float32)
        pose_t = self.pose(points, model, alpha_t, scene, seed) if self.fitted_pose else None
        return StartDraw(alpha_t, fit.astype(np.float32), points.astype(np.float32), detector or "true", pose_t)

    def refine(self, scene: SceneParams, model, fit: np.ndarray, fit_pose: Pose, points: np.ndarray, landmarks,
               detector: str | None) -> np.ndarray:
        """The photometric fit of the landmark fit ``fit`` (K,) on the scene's true colour render at
        ``photo_size`` pixels (its pose, the detections ``points`` and the fit's pose scaled to that size)."""
        from coarse.photometric import photometric_fit
        from datagen.faces import render_truth

        k = self.photo_size / scene.background.shape[0]
        big = dataclasses.replace(scene, pose=_scaled(scene.pose, k), background=_resized(scene.background,
                                                                                          self.photo_size))
        rgb = render_truth(big, model, _photo_renderer(model, self.render_cfg, self.photo_size),
                           camera_points(big, model, model.vertices(scene.alpha_gt))).rgb
        alpha, _ = photometric_fit(np.clip(rgb, 0, 1), fit, _scaled(fit_pose, k), points * k, model, landmarks,
                                   self.prior, self.photometric, detector)
        return alpha

    def pose(self, points: np.ndarray, model, alpha: np.ndarray, scene: SceneParams, seed: int) -> Pose:
        """The pose an estimate ``alpha`` (K,) is drawn under: fitted to the sample's simulated detections
        ``points`` (68, 2) with ``alpha``'s landmark vertices, plus the sample's extra detector pose error (the
        same for every estimate of that sample: :func:`pose_error_rng`, times its error scale)."""
        pose = landmark_pose(points, model, alpha)
        s = 0.0 if self.true_landmarks else self.scale(seed, scene.index)  # true landmarks: no detector's pose error
        if (any(self.pose_noise_deg) or self.pitch_follow) and s > 0:
            pose = detector_pose(pose, scene.pose, tuple(s * np.asarray(self.pose_noise_deg, float)),
                                 s * self.pitch_follow, pose_error_rng(seed, scene.index))
        return pose


def _scaled(pose: Pose, k: float) -> Pose:
    """``pose`` for the image scaled by ``k`` (pixels x k: scale and translation x k)."""
    return Pose(pose.scale * k, pose.rotation, np.asarray(pose.translation) * k)


def _resized(image: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) bilinear resize of a square (H, H, 3) float image."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR)) for c in range(image.shape[-1])], -1)


@functools.lru_cache(maxsize=2)
def _photo_renderer(model, render_cfg, size: int):
    """One renderer per process for the photometric start's photo-sized renders."""
    from render.renderer import FaceRenderer

    return FaceRenderer.from_config(model, render_cfg, image_size=size)


def start_policy(cfg) -> FitStart | None:
    """The policy of ``train.start``: a :class:`FitStart`, or None for ``mean`` (the scene's a_t)."""
    start = cfg.train.start
    if start not in START_POLICIES:
        raise ValueError(f"train.start must be one of {START_POLICIES}; got {start!r}")
    if not 0.0 <= cfg.train.start_fit_prob <= 1.0 or cfg.train.start_fit_iterations < 1:
        raise ValueError("train.start_fit_prob must lie in [0, 1] and train.start_fit_iterations be >= 1")
    return FitStart.from_config(cfg) if start in ("fit", "photometric") else None


def start_sample(seed: int, index: int, model, cfg, renderer, policy: FitStart | None
                 ) -> tuple[Sample, StartDraw | None]:
    """Sample ``index`` of dataset ``seed`` (:func:`datagen.sample.make_sample`) with its a_t from ``policy``
    (:func:`start_policy`; None: the scene's a_t), and the start's draw (None for ``mean``)."""
    if policy is None:
        return make_sample(seed, index, model, cfg, renderer), None
    draw = policy.draw(draw_scene(seed, index, model, cfg), model, seed)
    return make_sample(seed, index, model, cfg, renderer, alpha_t=draw.alpha_t, pose_t=draw.pose_t), draw
