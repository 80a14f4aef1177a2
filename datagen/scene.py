"""Scene parameters of one synthetic sample: face, texture, pose, light, background, and the current
estimate a_t of the iterative scheme. Everything is drawn from one ``numpy.random.Generator`` seeded by
(seed, sample index), so sample i depends on nothing else.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from morphable.materials import head_albedo, random_iris

from .detail import DetailMap, sample_detail
from morphable.sampling import sample_albedo_coeffs, sample_shape
from render.background import random_background
from render.camera import Pose, euler_to_rotation, perspective_warp
from render.renderer import Light

#: A flat skin tone for a model without an albedo model (tests of the geometry alone).
DEFAULT_SKIN = np.array([0.62, 0.45, 0.36], np.float32)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``: independent of workers, shards and machines."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def model_centre(model) -> np.ndarray:
    """(3,) the point the pose centres in the image: the centroid of the mean shape's 68 landmarks, mm."""
    return model.mean[model.landmarks68].mean(0)


def sample_pose(rng: np.random.Generator, model, cfg, image_size: int) -> Pose:
    """Weak-perspective pose around a frontal, centred face (spreads in ``sampling.pose``)."""
    yaw = np.clip(rng.normal(0, cfg.yaw_std_deg), -cfg.max_yaw_deg, cfg.max_yaw_deg)
    pitch = rng.normal(0, cfg.pitch_std_deg)
    roll = rng.normal(0, cfg.roll_std_deg)
    R = euler_to_rotation(*np.deg2rad([yaw, pitch, roll]))
    s = max(rng.normal(cfg.scale_mean, cfg.scale_std), cfg.scale_mean * 0.5) * image_size
    shift = rng.normal(0, cfg.translation_std * image_size, 2)
    return centred_pose(model, R, s, image_size, shift)


def centred_pose(model, rotation: np.ndarray, scale: float, image_size: int,
                 shift: np.ndarray = np.zeros(2)) -> Pose:
    """Pose that puts :func:`model_centre` at the image centre plus ``shift`` (pixels)."""
    c = rotation @ model_centre(model)
    t = np.array([image_size / 2 - scale * c[0], image_size / 2 + scale * c[1]]) + shift
    return Pose(float(scale), rotation, t)


def sample_light(rng: np.random.Generator, cfg) -> Light:
    """Phong constants around (0.5, 0.7, 0.05) and a direction uniform over the frontal hemisphere."""
    d = rng.standard_normal(3)
    d[2] = abs(d[2])
    d /= max(np.linalg.norm(d), 1e-12)
    ka = max(rng.normal(cfg.ambient_mean, cfg.ambient_std), 0.05)
    kd = max(rng.normal(cfg.diffuse_mean, cfg.diffuse_std), 0.05)
    ks = max(rng.normal(cfg.specular_mean, cfg.specular_std), 0.0)
    return Light(d.astype(np.float32), float(ka), float(kd), float(ks), float(cfg.shininess))


def sample_u(rng: np.random.Generator, u_zero_prob: float, mean_start_prob: float = 0.0) -> tuple[float, bool]:
    """Interpolation factor of a_t = a_gt + u (a_rand - a_gt), and whether a_rand is the mean face.

    u is 0 with probability ``u_zero_prob`` (the network must learn to stop), else U[0, 1]. With probability
    ``mean_start_prob`` the "random face" is the mean face (a_rand = 0), so a_t = (1 - u) a_gt lies on the
    path from the mean face, where the iterative inference starts, to the truth. Both come from the same two
    uniforms, so ``mean_start_prob`` 0 draws exactly the samples of before."""
    a, b = rng.uniform(size=2)
    if a < u_zero_prob:
        return 0.0, False
    return float(b), bool(a < u_zero_prob + mean_start_prob)


@dataclass(frozen=True)
class SceneParams:
    """Everything drawn for one sample (see :func:`draw_scene`)."""

    index: int
    alpha_gt: np.ndarray  # (K,)
    alpha_rand: np.ndarray  # (K,)
    u: float
    alpha_t: np.ndarray  # (K,)
    albedo_coeffs: np.ndarray  # (Ka,)
    iris: np.ndarray  # (3,)
    pose: Pose
    light: Light
    background: np.ndarray  # (H, W, 3)
    detail: "DetailMap | None" = None  # fine detail of the true face (datagen.detail)
    distance_mm: float | None = None  # a pinhole camera this far from the face's centre; None: weak perspective

    def head_albedo(self, model) -> np.ndarray:
        """(V, 3) per-vertex albedo of the head."""
        if model.albedo_model is None:
            skin = DEFAULT_SKIN
        else:
            skin = model.albedo_model.albedo(self.albedo_coeffs)[0]
        return head_albedo(model, skin, self.iris)


def draw_scene(seed: int, index: int, model, cfg) -> SceneParams:
    """Draw sample ``index`` of the dataset with seed ``seed`` (cfg: the full :class:`Config`)."""
    rng = sample_rng(seed, index)
    size = cfg.render.image_size
    alpha_gt = sample_shape(rng, model, cfg.sampling)
    alpha_rand = sample_shape(rng, model, cfg.sampling)
    u, from_mean = sample_u(rng, cfg.datagen.u_zero_prob, cfg.datagen.mean_start_prob)
    if from_mean:
        alpha_rand = np.zeros_like(alpha_rand)
    alpha_t = (alpha_gt + u * (alpha_rand - alpha_gt)).astype(np.float32)
    albedo = sample_albedo_coeffs(rng, model, cfg.sampling.albedo)
    iris = random_iris(rng)
    pose = sample_pose(rng, model, cfg.sampling.pose, size)
    light = sample_light(rng, cfg.sampling.light)
    background = random_background(rng, size, size, cfg.render.background).astype(np.float32)
    detail = None
    if cfg.datagen.detail:  # drawn last: the other parameters do not depend on this switch
        d = cfg.datagen
        detail = sample_detail(rng, model, d.detail_uv_size, d.detail_depth_min_mm, d.detail_depth_max_mm)
    light = draw_photo_light(seed, index, cfg.sampling.light, light)
    return SceneParams(index, alpha_gt, alpha_rand, u, alpha_t, albedo, iris, pose, light, background, detail,
                       draw_distance(seed, index, cfg.sampling.pose.perspective_prob, cfg.sampling.pose.distance_mm))


def draw_photo_light(seed: int, index: int, cfg, light: Light) -> Light:
    """``light`` with sample ``index``'s ambient occlusion (strength ~ U[0, ``cfg.occlusion_max``]), with
    probability ``cfg.shadow_prob`` cast shadows (strength ~ U[0.5, 1]), and with probability ``cfg.srgb_prob``
    a photo's sRGB encoding; ``cfg``: ``sampling.light``. Drawn from a generator of its own, so that the
    scene's other draws do not depend on these options."""
    if cfg.occlusion_max <= 0.0 and cfg.shadow_prob <= 0.0 and cfg.srgb_prob <= 0.0:
        return light
    rng = np.random.default_rng([int(seed), int(index), 18])
    occlusion = rng.uniform(0.0, cfg.occlusion_max)
    strength = rng.uniform(0.5, 1.0)
    shadowed, srgb = rng.uniform(size=2)
    return dataclasses.replace(light, occlusion=float(occlusion), srgb=bool(srgb < cfg.srgb_prob),
                               shadow=float(strength) if shadowed < cfg.shadow_prob else 0.0)


def draw_distance(seed: int, index: int, prob: float, distance_mm) -> float | None:
    """Sample ``index``'s camera: with probability ``prob`` a pinhole camera at a distance (mm) log-uniform in
    ``distance_mm`` (near, far), else None (weak perspective). Drawn from a generator of its own, so that the
    scene's other draws do not depend on it; the distance is the first draw, so ``prob`` 1 gives the distances
    of ``train evaluate --perspective``."""
    if prob <= 0.0:
        return None
    rng = np.random.default_rng([int(seed), int(index), 17])
    d = float(np.exp(rng.uniform(*np.log(np.asarray(distance_mm, np.float64)))))
    return d if prob >= 1.0 or rng.uniform() < prob else None


def camera_points(scene: SceneParams, model, points: np.ndarray) -> np.ndarray:
    """(..., 3) model-frame points (mm) of ``scene``'s face moved so that the weak-perspective camera
    ``scene.pose`` draws them as the scene's pinhole camera sees them (:func:`render.camera.perspective_warp`
    about :func:`model_centre`); unchanged for a weak-perspective scene. The warp moves the points, so the
    normals (and with them the shading) are those of the warped surface: close to the true ones at these
    distances."""
    if scene.distance_mm is None:
        return points
    return perspective_warp(points, scene.pose, scene.distance_mm, model_centre(model))
