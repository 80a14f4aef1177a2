"""Typed configuration: ``pipeline.yaml`` loaded into frozen dataclasses, one per stage.

Every default of every stage lives in ``pipeline.yaml`` and only there (the dataclasses have no defaults;
a config file must name every key, so ``load_config(user_file)`` merges a user's file over it); the CLI overrides single values with
``override(cfg, "section.key", value)``. Unknown keys and wrong types raise :class:`ConfigError` with a
one-line message naming the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "pipeline.yaml"


class ConfigError(ValueError):
    """A wrong key, a wrong type or an unreadable config file (one line, names the key)."""


@dataclass(frozen=True)
class ModelConfig:
    path: str
    n_identity: int
    n_expression: int


@dataclass(frozen=True)
class IdentitySampling:
    std: float


@dataclass(frozen=True)
class ExpressionSampling:
    """Expressions are sparse: each blendshape is active with ``active_prob``; an active weight is
    Beta(a, b) distributed in [0, 1]. With probability ``extreme_prob`` one of ``extreme_sets``
    (wide-open jaw, full smile, closed eyes, ...) is pushed to a weight in [extreme_min, 1]."""

    neutral_prob: float
    active_prob: float
    beta_a: float
    beta_b: float
    symmetric_prob: float
    extreme_prob: float
    extreme_min: float
    extreme_sets: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class AlbedoSampling:
    std: float


@dataclass(frozen=True)
class PoseSampling:
    """Weak perspective: rotation angles (degrees) ~ N(0, std), scale (pixels per mm, as a fraction of the
    image size) ~ N(mean, std), translation (pixels, from the image centre) ~ N(0, std * image size); with
    probability ``perspective_prob`` a pinhole camera instead, at a distance (mm) log-uniform in ``distance_mm``."""

    yaw_std_deg: float
    pitch_std_deg: float
    roll_std_deg: float
    max_yaw_deg: float
    scale_mean: float
    scale_std: float
    translation_std: float
    perspective_prob: float
    distance_mm: tuple[float, float]

    def __post_init__(self):
        near, far = self.distance_mm
        if not 0.0 <= self.perspective_prob <= 1.0 or not 0 < near <= far:
            raise ConfigError("sampling.pose needs perspective_prob in [0, 1] and 0 < distance_mm[0] <= "
                              f"distance_mm[1]; got {self.perspective_prob}, {list(self.distance_mm)}")


@dataclass(frozen=True)
class LightSampling:
    """Phong constants drawn around (0.5, 0.7, 0.05); light direction uniform over the frontal hemisphere. What a
    real photo adds: ambient occlusion of strength ~ U[0, ``occlusion_max``], and with probability
    ``shadow_prob`` the shadows the face casts on itself from the light, of strength ~ U[0.5, 1]; with
    probability ``srgb_prob`` shading in linear light, encoded to sRGB as a camera does."""

    ambient_mean: float
    ambient_std: float
    diffuse_mean: float
    diffuse_std: float
    specular_mean: float
    specular_std: float
    shininess: float
    occlusion_max: float
    shadow_prob: float
    srgb_prob: float

    def __post_init__(self):
        if not all(0.0 <= v <= 1.0 for v in (self.occlusion_max, self.shadow_prob, self.srgb_prob)):
            raise ConfigError("sampling.light needs occlusion_max, shadow_prob and srgb_prob in [0, 1]; got "
                              f"{self.occlusion_max}, {self.shadow_prob}, {self.srgb_prob}")


@dataclass(frozen=True)
class SamplingConfig:
    identity: IdentitySampling
    expression: ExpressionSampling
    albedo: AlbedoSampling
    pose: PoseSampling
    light: LightSampling


@dataclass(frozen=True)
class RenderConfig:
    """``backend``: ``auto`` (numba on CPU, gl on a GPU machine with EGL), ``gl`` (pyrender's OSMesa or EGL
    context) or ``numba``. ``gl_platform``: ``auto``, ``osmesa`` or ``egl``."""

    image_size: int
    backend: str
    gl_platform: str
    shading_ambient: float
    shading_diffuse: float
    background: tuple[str, ...]


@dataclass(frozen=True)
class DatagenConfig:
    out: str
    n: int
    seed: int
    shard_size: int
    workers: int
    color_input: bool
    extra_normals: bool
    u_zero_prob: float
    mean_start_prob: float
    depth_scale_mm: float
    jpeg_quality: int
    detail: bool
    detail_uv_size: int
    detail_depth_min_mm: float
    detail_depth_max_mm: float


@dataclass(frozen=True)
class RunConfig:
    """What every training run reads (:mod:`training.loop`): its data (shards ``data``, or generated when
    ``online``), run folder ``out``, optimiser steps, batch, Adam learning rate, device, data workers,
    checkpoint and validation intervals, validation samples, seed; ``average_from``: from this step on (0: never)
    the weights are averaged at every checkpoint, and the average is what ``train export`` ships."""

    data: str
    online: bool
    out: str
    steps: int
    batch: int
    lr: float
    device: str
    workers: int
    checkpoint_every: int
    val_every: int
    val_samples: int
    seed: int
    average_from: int


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly augmentation of cached training pairs (:mod:`training.cache`): a joint shift (of the image
    size) and scale of image and shading; on the image alone gamma, noise, blur, JPEG, random erasing and a
    smooth random albedo field."""

    shift: float
    scale_std: float
    gamma_std: float
    noise_max: float
    blur_max_px: float
    jpeg_prob: float
    jpeg_quality_min: int
    erase_prob: float
    erase_max_area: float
    albedo_std: float
    albedo_cells: int

    def __post_init__(self):
        if min(self.shift, self.scale_std, self.gamma_std, self.noise_max, self.blur_max_px) < 0:
            raise ValueError("shift, scale_std, gamma_std, noise_max and blur_max_px must be >= 0")
        if not 0 <= self.jpeg_prob <= 1 or not 1 <= self.jpeg_quality_min <= 95:
            raise ValueError("jpeg_prob must lie in [0, 1] and jpeg_quality_min in [1, 95]")
        if not 0 <= self.erase_prob <= 1 or not 0.02 <= self.erase_max_area <= 1:
            raise ValueError("erase_prob must lie in [0, 1] and erase_max_area in [0.02, 1]")
        if self.albedo_std < 0 or self.albedo_cells < 2:
            raise ValueError("albedo_std must be >= 0 and albedo_cells >= 2")


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """``train iterative``: the run settings, the network's stage widths, head and initial weights, the loss's alignment and region, the samples' start (``start``: ``fit`` or ``mean``, with
    ``start_fit_prob``, ``start_fit_iterations``, ``start_pose`` and its noise, :mod:`training.starts`), the input mask (``input_mask``: a_t's silhouette, or
    that within the landmarks' face region reaching ``input_forehead`` above the brows), and the cache of
    pre-rendered pairs (``cache`` files, ``cache_chunk`` samples per part, ``augment``)."""

    widths: tuple[int, ...]
    head: str
    init: str
    loss_align: str
    loss_region: str
    start: str
    start_fit_prob: float
    start_fit_iterations: int
    start_pose: str
    start_pose_noise_deg: tuple[float, float, float]
    start_pitch_follow: float
    start_error_scale: tuple[float, float]
    start_landmarks: str
    start_true_noise_mm: float
    input_mask: str
    input_forehead: float
    cache: tuple[str, ...] | str
    cache_chunk: int
    augment: AugmentConfig

    def __post_init__(self):
        if self.start not in ("fit", "photometric", "mean") or self.start_pose not in ("fit", "true"):
            raise ValueError(f"start must be 'fit', 'photometric' or 'mean', start_pose 'fit' or 'true'; got {self.start!r}, "
                             f"{self.start_pose!r}")
        if self.loss_align not in ("similarity", "none"):
            raise ValueError(f"loss_align must be 'similarity' or 'none'; got {self.loss_align!r}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be 4 positive stage widths; got {list(self.widths)}")
        if self.head not in ("mean", "dense"):
            raise ValueError(f"head must be 'mean' or 'dense'; got {self.head!r}")
        if not 0 <= self.start_fit_prob <= 1 or self.start_fit_iterations < 1 or self.cache_chunk < 1:
            raise ValueError("start_fit_prob must lie in [0, 1], start_fit_iterations and cache_chunk be >= 1")
        if not 0 <= self.start_error_scale[0] <= self.start_error_scale[1]:
            raise ValueError(f"start_error_scale must be [low, high] with 0 <= low <= high; got "
                             f"{list(self.start_error_scale)}")
        if self.start_landmarks not in ("detector", "true") or self.start_true_noise_mm < 0:
            raise ValueError(f"start_landmarks must be 'detector' or 'true' and start_true_noise_mm >= 0; got "
                             f"{self.start_landmarks!r}, {self.start_true_noise_mm}")
        if self.input_mask not in ("shading", "landmarks") or not 0 <= self.input_forehead <= 1:
            raise ValueError(f"input_mask must be 'shading' or 'landmarks' and input_forehead lie in [0, 1]; got "
                             f"{self.input_mask!r}, {self.input_forehead}")
        if isinstance(self.cache, str):  # one file (older configs and checkpoints) -> a list of files
            object.__setattr__(self, "cache", (self.cache,) if self.cache else ())


@dataclass(frozen=True)
class EvaluateConfig:
    """``train evaluate``: network passes, landmark source and noise, error maps, and the online test faces
    (photo-like renders: ``image_size`` pixels, yaw ~ N(0, ``yaw_std_deg``) cut at ``max_yaw_deg``; with
    ``--perspective`` a pinhole camera at a distance drawn in ``perspective_distance_mm``; ``albedo``: their
    colouring, ``textured`` or ``uniform``, :func:`datagen.faces.scene_albedo`)."""

    iterations: int
    landmark_noise_px: float
    error_maps: int
    n: int
    landmarks: str
    image_size: int
    yaw_std_deg: float
    max_yaw_deg: float
    perspective_distance_mm: tuple[float, float]
    albedo: str

    def __post_init__(self):
        if self.albedo not in ("textured", "uniform"):
            raise ValueError(f"albedo must be textured or uniform; got {self.albedo!r}")


@dataclass(frozen=True)
class SfSConfig:
    """Weights and solver settings of :func:`reconstruct.sfs.sfs_refine` (its module docstring has the energy;
    pixel units: depth / pixel_mm; intensities in [0, 1]).

    shading_weight: w_s of the shading term.
    fidelity_weight: lambda inside the mask (per pixel, per pixel-unit^2 of depth change).
    anchor_weight: lambda outside the mask.
    smooth_weight: w_l of the Laplacian of the displacement.
    iterations: Gauss-Newton steps per round.
    rounds: rounds of (lighting and albedo from the current normals, then Gauss-Newton steps).
    light_iterations: alternations of SH fit and albedo per round.
    albedo_smooth, albedo_sigma, albedo_slope_sigma: the albedo smoothing.
    solver: ``cg`` (Jacobi-preconditioned conjugate gradients) or ``direct`` (sparse LU).
    cg_rtol, cg_maxiter: CG stopping rule per Gauss-Newton step.
    margin: pixels kept around the mask's bounding box; the solve runs on that crop, the rest of the image
        is anchored anyway and returned unchanged.
    chroma_edge: colour images only: pixels where the chromaticity gradient exceeds this (per pixel) are
        albedo edges and get no shading term (they keep the coarse shape); 0 switches it off.
    residual_lowpass_mm: Gaussian sigma (mm) of the low-pass of the shading residual that is removed from the
        target each round (model error, not shape); 0 switches it off.
    """

    shading_weight: float
    fidelity_weight: float
    anchor_weight: float
    smooth_weight: float
    iterations: int
    rounds: int
    light_iterations: int
    albedo_smooth: float
    albedo_sigma: float
    albedo_slope_sigma: float
    solver: str
    cg_rtol: float
    cg_maxiter: int
    margin: int
    chroma_edge: float
    residual_lowpass_mm: float

    def __post_init__(self):
        for name in ("shading_weight", "fidelity_weight", "anchor_weight", "smooth_weight", "albedo_smooth",
                     "residual_lowpass_mm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        for name in ("albedo_sigma", "albedo_slope_sigma", "cg_rtol"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0; got {getattr(self, name)}")
        for name, low in (("iterations", 0), ("rounds", 1), ("light_iterations", 1), ("cg_maxiter", 1), ("margin", 1)):
            if int(getattr(self, name)) < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {getattr(self, name)}")
        if self.solver not in ("cg", "direct"):
            raise ValueError(f"solver must be 'cg' or 'direct'; got {self.solver!r}")


@dataclass(frozen=True)
class RefinedMeshConfig:
    """``refined.obj``: how the detail and SfS depth offsets move the coarse mesh's vertices
    (:func:`reconstruct.pipeline.vertex_offset`). fade_mm: mm of surface over which the offset fades in from
    the nearest vertex the SfS frame did not see; facing_from, facing_to: the offset fades in as the vertex
    normal's component towards the camera rises between these; prefilter_mm: Gaussian blur (mm) of the depth
    offset before it is sampled at the vertices (the face's mesh edges are ~2.5 mm)."""

    fade_mm: float
    facing_from: float
    facing_to: float
    prefilter_mm: float


@dataclass(frozen=True)
class PhotometricConfig:
    """The photometric refinement of the coarse face (:func:`coarse.photometric.photometric_fit` explains each
    value); ``weight`` 0 turns it off."""

    weight: float
    robust: float
    blur_mm: float
    albedo_reg: float
    rounds: int
    samples: int
    early_samples: int
    iterations: int
    tolerance: float

    def __post_init__(self):
        if self.rounds < 1 or min(self.samples, self.early_samples) < 50 or self.iterations < 1 or self.tolerance < 0:
            raise ValueError("rounds and iterations must be >= 1, samples and early_samples >= 50, tolerance >= 0")


@dataclass(frozen=True)
class RefineConfig:
    """``refine sfs``: weights of the iterative network (the landmark fit when the file is absent), SfS
    working resolution, network passes, the photometric refinement of the fit, and the SfS energy;
    ``detect_in_background``: ``refine sfs PHOTO`` detects the face in a forked process while the models load
    (Linux; :func:`reconstruct.cli._one_photo`); ``faces``: which faces of a photo are reconstructed, ``all``
    (above ``detect.min_interocular_px``) or ``largest`` (:func:`reconstruct.batch.chosen_faces`); ``runtime``:
    what runs the network (``auto``, ``onnx`` or ``torch``: :func:`reconstruct.models.load_network_stage`)."""

    weights: str
    runtime: str
    resolution: int
    iterations: int
    network_start: str
    network_identity: str
    refit_pose: bool
    faces: str
    detect_in_background: bool
    photometric: PhotometricConfig
    refined: RefinedMeshConfig
    sfs: SfSConfig

    def __post_init__(self):
        if self.runtime not in ("auto", "onnx", "torch"):
            raise ConfigError(f"refine.runtime must be auto, onnx or torch; got {self.runtime!r}")
        if self.network_start not in ("fit", "mean"):
            raise ValueError(f"network_start must be 'fit' or 'mean'; got {self.network_start!r}")
        if self.network_identity not in ("network", "start"):
            raise ValueError(f"network_identity must be 'network' or 'start'; got {self.network_identity!r}")
        if self.faces not in ("all", "largest"):
            raise ValueError(f"faces must be 'all' or 'largest'; got {self.faces!r}")


@dataclass(frozen=True)
class DetailLossWeights:
    """Weights of the detail network's loss (:class:`training.detail_net.DetailLoss` explains each term)."""

    displacement: float
    gradient: float
    photometric: float
    smoothness: float


@dataclass(frozen=True)
class DetailConfig(RunConfig):
    """``train detail`` and the detail stage of ``refine``: the image-space detail network
    (:mod:`training.detail_net`), its training data (:mod:`training.detail_data`) and its run
    (:mod:`training.detail`; ``batch`` counts crops). ``weights``: the trained network ``refine`` uses (the
    stage is skipped without the file); ``crop``: training crops' side in pixels of the SfS frame
    (``refine.resolution``); ``crops_per_face``: crops cut from each rendered face; ``channels``: feature
    maps per U-Net level; ``highpass_sigma_px``: the high-pass input's blur; ``frame_scale``,
    ``frame_yaw_std_deg``: the synthetic faces' scale and yaw spread in the SfS frame
    (:func:`datagen.synthetic.detail_frame_config`); ``runtime``: what runs the network in ``refine``
    (``auto``, ``onnx`` or ``torch``: :func:`reconstruct.models.load_detail_stage`)."""

    weights: str
    crop: int
    crops_per_face: int
    channels: tuple[int, ...]
    highpass_sigma_px: float
    frame_scale: float
    frame_yaw_std_deg: float
    loss: DetailLossWeights
    runtime: str

    def __post_init__(self):
        if self.runtime not in ("auto", "onnx", "torch"):
            raise ConfigError(f"detail.runtime must be auto, onnx or torch; got {self.runtime!r}")


@dataclass(frozen=True)
class ScanEvalConfig:
    """``refine evaluate-scan`` (:mod:`reconstruct.scan_eval`): renders of a textured scan and the NoW-style
    score of each stage. ``views`` renders of ``image_size`` pixels (rendered ``supersample`` times larger
    and averaged down), drawn from ``seed``: yaw evenly over +-``yaw_max_deg``, pitch and roll uniform in
    +-their maxima; ``cameras`` are [35 mm-equivalent focal length mm, nearest, farthest distance mm], used
    in turn; a directional light within ``light_max_angle_deg`` of the camera axis of intensity in
    ``light_intensity`` [min, max] (pyrender units) plus ``ambient`` [min, max]; ``background`` kinds of
    :mod:`render.background`. Scoring: scan points within ``crop_radius_mm`` of the nose tip,
    ``icp_iterations`` ICP rounds on ``icp_points`` of them. ``out``: the default output folder."""

    out: str
    views: int
    image_size: int
    supersample: int
    seed: int
    yaw_max_deg: float
    pitch_max_deg: float
    roll_max_deg: float
    cameras: tuple[tuple[float, ...], ...]
    light_max_angle_deg: float
    light_intensity: tuple[float, ...]
    ambient: tuple[float, ...]
    background: tuple[str, ...]
    crop_radius_mm: float
    icp_iterations: int
    icp_points: int

    def __post_init__(self):
        if self.views < 1 or self.image_size < 16 or self.supersample < 1 or self.icp_points < 3:
            raise ValueError("views and supersample must be >= 1, image_size >= 16, icp_points >= 3")
        if not self.cameras or any(len(c) != 3 or not 0 < c[1] <= c[2] or c[0] <= 0 for c in self.cameras):
            raise ValueError("cameras must be a non-empty list of [focal_mm > 0, near_mm > 0, far_mm >= near_mm]")
        for name in ("light_intensity", "ambient"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"{name} must be [min, max] with 0 <= min <= max")


@dataclass(frozen=True)
class DetectConfig:
    """Face detection of a photo (:func:`coarse.detect.detect_faces` runs the cascade; its ``Detection`` says what
    each score means). ``min_face_px``: the smallest face searched (detector box side, photo pixels);
    ``max_search_side``: the longer side of HOG's scaled copy at most this (pixels); ``hog_min_score``: HOG's
    threshold; ``hog_sure_score``: weaker HOG boxes need the CNN's confirmation; ``cnn_sides``: longer sides
    (pixels) of the copies the CNN scans in turn, [] switches the CNN off; ``cnn_min_score``: the CNN's
    threshold; ``rotations_deg``: angles the photo is turned by when nothing upright is found, and the turns
    tried to stand each face upright for its landmarks, [] for none; ``roll_check_deg``: a face HOG finds upright
    whose eye line lies within this of level (degrees) is not turned, 0 always tries the turns;
    ``quick_search_side``: when only the largest face is wanted, HOG first scans a copy of longer side at most
    this (pixels), 0 for no quick pass; ``min_interocular_px``: smaller faces are refused as too small."""

    min_face_px: float
    max_search_side: int
    hog_min_score: float
    hog_sure_score: float
    cnn_sides: tuple[int, ...]
    cnn_min_score: float
    rotations_deg: tuple[float, ...]
    roll_check_deg: float
    quick_search_side: int
    min_interocular_px: float

    def __post_init__(self):
        if not self.min_face_px > 0 or self.max_search_side < 64 or any(s < 64 for s in self.cnn_sides):
            raise ValueError("min_face_px must be > 0, max_search_side and every cnn_sides entry >= 64")
        if self.roll_check_deg < 0 or self.quick_search_side < 0:
            raise ValueError("roll_check_deg and quick_search_side must be >= 0")
        if not self.hog_sure_score >= self.hog_min_score:
            raise ValueError(f"hog_sure_score must be >= hog_min_score; got {self.hog_sure_score}")


@dataclass(frozen=True)
class FitConfig:
    """The coarse landmark fit (:func:`coarse.fit.fit_map`): the detector's calibrated landmarks and the prior
    (:func:`coarse.fit.fit_map` explains each value)."""

    landmarks: str
    identity_std: float
    expression_mean: float
    expression_std: float
    sigma_scale: float
    sigma_min_mm: float
    contour_weight: float
    iterations: int


@dataclass(frozen=True)
class VideoConfig:
    """``refine video`` (:mod:`reconstruct.video`): the One-Euro filter of the landmarks (``min_cutoff_hz``,
    ``beta`` per face size per second, ``d_cutoff_hz``), the clip's one identity (fitted jointly over the first
    ``identity_frames`` frames with a face, ``identity_rounds`` block-descent rounds, the frames counting as
    ``identity_evidence_frames`` independent ones; with an identity map, its prior from the recognition
    descriptors of ``identity_descriptor_frames`` of those frames, 0: none), ``fit_iterations`` per
    frame once it is held, the photometric fit per frame (``photometric_rounds`` rounds, 0: off, of at most
    ``photometric_iterations`` steps on ``photometric_samples`` vertices, expression and pose only, the expression
    prior also N(last frame's, ``photometric_temporal_std``^2), 0: not), when
    tracking is lost (``lost_residual_mm``, ``lost_jump``) and the overlay's ``crf``."""

    min_cutoff_hz: float
    beta: float
    d_cutoff_hz: float
    identity_frames: int
    identity_rounds: int
    identity_evidence_frames: float
    identity_descriptor_frames: int
    fit_iterations: int
    photometric_rounds: int
    photometric_iterations: int
    photometric_samples: int
    photometric_temporal_std: float
    lost_residual_mm: float
    lost_jump: float
    crf: int

    def __post_init__(self):
        if not (self.min_cutoff_hz > 0 and self.d_cutoff_hz > 0 and self.beta >= 0):
            raise ValueError("min_cutoff_hz and d_cutoff_hz must be > 0, beta >= 0")
        if self.identity_frames < 1 or self.identity_rounds < 1 or self.fit_iterations < 1:
            raise ValueError("identity_frames, identity_rounds and fit_iterations must be >= 1")


@dataclass(frozen=True)
class IdentityConfig:
    """Identity from the image (``train identity-data``, ``train identity``; :mod:`coarse.identity`): the
    recognition descriptor's map to the identity coefficients (``weights``), how the coarse stage uses it
    (``use``: ``prior``, ``fixed`` or ``none``; ``photometric_identity``: ``free`` or ``held``; ``mirror``: the
    descriptor averaged with the mirror image's; :class:`coarse.stage.CoarseSettings`), and the synthetic faces it
    learns from
    (photo-like renders of ``image_size`` pixels, yaw ~ N(0, ``yaw_std_deg``) cut at ``max_yaw_deg``, a pinhole
    camera with ``perspective_prob``, the photo-light options of ``sampling.light`` given here)."""

    weights: str
    use: str
    photometric_identity: str
    mirror: bool
    data: str
    n: int
    seed: int
    chunk: int
    image_size: int
    yaw_std_deg: float
    max_yaw_deg: float
    perspective_prob: float
    occlusion_max: float
    shadow_prob: float
    srgb_prob: float
    regressor: str
    lambdas: tuple[float, ...]
    mlp_hidden: int
    mlp_weight_decay: float
    mlp_epochs: int
    folds: int
    test_share: float

    def __post_init__(self):
        if self.regressor not in ("auto", "ridge", "mlp") or self.folds < 2 or not 0 < self.test_share < 1:
            raise ValueError("regressor must be auto, ridge or mlp; folds >= 2; 0 < test_share < 1")
        if self.n < 1 or self.chunk < 1 or self.image_size < 64:
            raise ValueError("n and chunk must be >= 1, image_size >= 64")
        if self.use not in ("prior", "fixed", "none") or self.photometric_identity not in ("free", "held"):
            raise ValueError("use must be prior, fixed or none; photometric_identity free or held")


@dataclass(frozen=True)
class GltfConfig:
    """The glTF export (:mod:`reconstruct.gltf`: ``face.glb`` of ``refine sfs``, ``animation.glb`` of ``refine
    video --gltf``) and ``refine gltf-preview``: ``preview_size`` pixels (square) of each panel."""

    preview_size: int

    def __post_init__(self):
        if self.preview_size < 32:
            raise ValueError("preview_size must be at least 32")


@dataclass(frozen=True)
class Config:
    model: ModelConfig
    sampling: SamplingConfig
    render: RenderConfig
    datagen: DatagenConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    detect: DetectConfig
    fit: FitConfig
    refine: RefineConfig
    detail: DetailConfig
    scan_eval: ScanEvalConfig
    video: VideoConfig
    identity: IdentityConfig
    gltf: GltfConfig

    def to_dict(self) -> dict:
        return _to_plain(self)

    def resolve_path(self, p: str) -> Path:
        """Paths in the config are relative to the repository root unless absolute."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else REPO_ROOT / path


def _to_plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return {f.name: _to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (tuple, list)):
        return [_to_plain(v) for v in x]
    return x


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, str, bool, tuple[...], dataclass)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__}")
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _coerce(value, alt, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key '{key}' must be null")
        return None
    raise ConfigError(f"config key '{key}' has an unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data]
    if missing:
        raise ConfigError(f"missing config key '{prefix}{missing[0]}'")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass that checks its own values (e.g. SfSConfig)
        raise ConfigError(f"config section '{prefix.rstrip('.') or 'root'}': {e}") from None


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections")
    return data


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load ``pipeline.yaml``, merge ``path`` over it (a user's file may name only the keys it changes),
    then apply dotted ``overrides`` (``{"datagen.n": 10}``; ``None`` values are skipped)."""
    data = _read_yaml(DEFAULT_CONFIG)
    if path is not None and Path(path).resolve() != DEFAULT_CONFIG.resolve():
        data = _merge(data, _read_yaml(Path(path)))
    cfg = _build(Config, data)
    for key, value in (overrides or {}).items():
        if value is not None:
            cfg = override(cfg, key, value)
    return cfg


def override(cfg: Any, dotted_key: str, value: Any, _prefix: str = "") -> Any:
    """Return a copy of ``cfg`` with ``dotted_key`` (``"train.lr"``) set to ``value``, type-checked."""
    head, _, rest = dotted_key.partition(".")
    names = {f.name for f in dataclasses.fields(cfg)}
    if head not in names:
        raise ConfigError(f"unknown config key '{_prefix}{dotted_key}'")
    if rest:
        return dataclasses.replace(cfg, **{head: override(getattr(cfg, head), rest, value, f"{_prefix}{head}.")})
    tp = typing.get_type_hints(type(cfg))[head]
    try:
        return dataclasses.replace(cfg, **{head: _coerce(value, tp, _prefix + dotted_key)})
    except ConfigError:
        raise
    except ValueError as e:  # a section that checks its own values
        raise ConfigError(f"config section '{_prefix.rstrip('.') or 'root'}': {e}") from None


def optional_file(cfg: Config, given: str | None, default: str) -> Path | None:
    """A weights file: the path the user ``given`` (it must exist: ``FileNotFoundError``), else the config's
    ``default`` path when that file exists, else None (the stage that needs it is skipped)."""
    path = cfg.resolve_path(given or default)
    if path.exists():
        return path
    if given is not None:
        raise FileNotFoundError(f"weights file {given} not found")
    return None


def config_from_dict(data: dict) -> Config:
    """Rebuild a :class:`Config` saved with ``to_dict()`` (manifests, checkpoints). Keys added to
    ``pipeline.yaml`` since it was saved take their current defaults; keys no longer known are refused."""
    return _build(Config, _merge(_read_yaml(DEFAULT_CONFIG), data))
