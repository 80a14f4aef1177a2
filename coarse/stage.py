"""The coarse stage as ``refine`` and ``train evaluate`` run it: a photo's 68 landmarks -> the MAP landmark fit
(:func:`coarse.fit.fit_map`) -> optionally its refinement by the photo's shading
(:func:`coarse.photometric.photometric_fit`, ``refine.photometric``) -> optionally the iterative network's passes
(:func:`coarse.iterative.network_fit`), from that fit or the mean face (``refine.network_start``).

Frames: the photo frame (pixels, x right, y down) for the landmarks and the returned pose; coefficients
``alpha`` (K,) identity first.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from render.camera import Pose

from .fit import fit_map
from .iterative import Predictor, network_fit
from .landmarks import LandmarkModel, load_landmark_model, noisy_landmarks


@dataclass(frozen=True)
class CoarseSettings:
    """What the coarse stage needs besides the photo.

    landmarks: the detector's calibrated landmarks; prior: the fit's prior and noise model (the ``fit`` config
    section, :func:`coarse.fit.fit_map`);
    predict: the iterative network (None: the fit is the coarse face); frame: its network frame
    (:class:`coarse.frame.NetworkFrame`; with ``predict``); iterations: network passes; refit_pose: re-fit the
    pose to the landmarks after each pass; network_start: the first pass's a_t, ``fit`` (the fit) or
    ``mean`` (the mean face); photometric: the ``refine.photometric`` section
    (:func:`coarse.photometric.photometric_fit`, which refines the landmark fit) or None (the landmark fit as is);
    identity: the recognition descriptor's map to the identity (:class:`coarse.identity.IdentityMap`) or None;
    identity_use: how the fits use its prediction, ``prior`` (identity ~ N(prediction, its error covariance):
    the fits may move it) or ``fixed`` (the prediction is the identity; the fits find expression and pose);
    photometric_identity: with the descriptor's identity, ``free`` (the photometric fit moves the identity too,
    under the prior) or ``held`` (it moves expression and pose; the landmark fit's identity stays; without an
    identity map the photometric fit always moves the identity); identity_mirror: the descriptor is the
    mean of the photo's and its mirror image's (:func:`coarse.recognition.face_descriptor`); network_identity:
    with the network, the coarse identity is the network's (``network``) or its start's (``start``: the network
    gives expression and pose).
    """

    landmarks: LandmarkModel
    prior: object
    predict: Predictor | None = None
    frame: object = None
    iterations: int = 3
    refit_pose: bool = True
    network_start: str = "fit"
    photometric: object = None
    identity: object = None
    identity_use: str = "prior"
    photometric_identity: str = "free"
    identity_mirror: bool = False
    network_identity: str = "network"

    def __post_init__(self):
        if self.network_start not in ("fit", "mean"):
            raise ValueError(f"network_start must be 'fit' or 'mean'; got {self.network_start!r}")
        if self.identity_use not in ("prior", "fixed"):
            raise ValueError(f"identity_use must be 'prior' or 'fixed'; got {self.identity_use!r}")
        if self.photometric_identity not in ("free", "held"):
            raise ValueError(f"photometric_identity must be 'free' or 'held'; got {self.photometric_identity!r}")

    def start(self, fit: np.ndarray) -> np.ndarray | None:
        """The network's first a_t for the fit ``fit`` (K,): the fit, or None (the mean face)."""
        return fit if self.network_start == "fit" else None

    @staticmethod
    def from_config(cfg, network=None, iterations: int | None = None, photometric: bool = True,
                    identity: bool = True) -> "CoarseSettings":
        """Settings of a config's ``fit``, ``refine`` and ``identity`` sections; ``network``: the loaded network,
        :class:`coarse.network.IterativeWeights` (torch, on the device it was loaded to) or its ONNX export
        :class:`coarse.network_runtime.OnnxIterative`, or None; ``photometric`` False: no photometric refinement
        whatever ``refine.photometric.weight`` says; ``identity`` False: no identity from the descriptor whatever
        ``identity.use`` says (otherwise its map is loaded from ``identity.weights`` when that file exists)."""
        from facesynth.config import optional_file

        idc = cfg.identity
        path = optional_file(cfg, None, idc.weights) if identity and idc.use != "none" else None
        id_map = None
        if path is not None:
            from .identity import load_identity_map

            id_map = load_identity_map(path)
        return CoarseSettings(load_landmark_model(cfg.resolve_path(cfg.fit.landmarks)), cfg.fit,
                              None if network is None else network.predictor(),
                              None if network is None else network.frame,
                              cfg.refine.iterations if iterations is None else iterations, cfg.refine.refit_pose,
                              cfg.refine.network_start,
                              cfg.refine.photometric if photometric and cfg.refine.photometric.weight > 0 else None,
                              id_map, "prior" if idc.use == "none" else idc.use, idc.photometric_identity,
                              idc.mirror, cfg.refine.network_identity)


@dataclass(frozen=True)
class CoarseFit:
    """The coarse face of one photo.

    alpha: (K,) the coarse coefficients; pose: its pose in the photo frame; method: ``landmark_fit``,
    ``photometric_fit`` or ``iterative_network``; fit: (K,) the landmark fit; start: (K,) the fit the network
    starts from (the photometric fit when it runs, else the landmark fit); steps: (K,) coefficients after each
    network pass (empty without the network); identity_prior: (n_id,) the identity the recognition descriptor
    predicted (None without :attr:`CoarseSettings.identity`).
    """

    alpha: np.ndarray
    pose: Pose
    method: str
    fit: np.ndarray
    start: np.ndarray
    steps: list = field(default_factory=list)
    identity_prior: np.ndarray | None = None


def coarse_fit(photo: np.ndarray, landmarks: np.ndarray, model, settings: CoarseSettings, render_cfg,
               detector: str | None = None, n_identity: int | None = None, pose: Pose | None = None) -> CoarseFit:
    """Run the coarse stage on one face: with :attr:`CoarseSettings.identity`, the recognition descriptor of the
    face (:func:`coarse.recognition.face_descriptor`) predicts the identity, which becomes the fits' prior
    (``identity_use`` ``prior``) or the identity itself (``fixed``); the landmark fit, the photometric fit when
    set, then the network's passes when set.

    Args:
        photo: (H, W, 3) or (H, W) float in [0, 1] (or uint8), the photo.
        landmarks: (68, 2) the detector's points, photo pixels.
        model: the face model; settings: :class:`CoarseSettings`; render_cfg: the ``render`` config section.
        detector: the detector that found the face (``Detection.detector``: its landmarks' scatter).
        n_identity: the fits use only the first this many identity modes (the out-of-span check); default all.
        pose: the face's true pose in the photo frame, for the network's passes (evaluation); default fitted.
    """
    coefficients, fixed, predicted = None, None, None
    if settings.identity is not None:
        from .fit import CoefficientPrior
        from .recognition import face_descriptor

        image = photo if photo.dtype == np.uint8 else np.clip(np.asarray(photo) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        descriptor = face_descriptor(image, landmarks, mirror=settings.identity_mirror)
        n_id = model.n_identity
        predicted = settings.identity.predict(descriptor).astype(np.float32)
        coefficients = settings.identity.prior(descriptor, CoefficientPrior.from_config(
            settings.prior, n_id, model.n_coeffs - n_id), n_identity)
        if settings.identity_use == "fixed":
            n = n_id if n_identity is None else int(n_identity)
            fixed = np.r_[predicted[:n], np.zeros(n_id - n)]
    alpha, fit_pose = fit_map(model, landmarks, settings.landmarks, settings.prior, n_identity, detector=detector,
                              identity=fixed, coefficients=coefficients)
    fit, method = alpha, "landmark_fit"
    if settings.photometric is not None:
        from .photometric import photometric_fit

        held = fixed is not None or (coefficients is not None and settings.photometric_identity == "held")
        alpha, fit_pose = photometric_fit(photo, alpha, fit_pose, landmarks, model, settings.landmarks,
                                          settings.prior, settings.photometric, detector, n_identity,
                                          free="expression" if held else "all", coefficients=coefficients)
        method = "photometric_fit"
    if settings.predict is None:
        return CoarseFit(alpha, fit_pose, method, fit, alpha, identity_prior=predicted)
    steps, net_pose = network_fit(settings.predict, settings.frame, photo, landmarks, model, render_cfg,
                                  settings.iterations, settings.refit_pose, pose=pose, alpha0=settings.start(alpha))
    final = np.asarray(steps[-1][0], np.float32).copy()
    if settings.network_identity == "start":
        final[:model.n_identity] = alpha[:model.n_identity]
    return CoarseFit(final, net_pose, "iterative_network", fit, alpha, [a for a, _ in steps], predicted)


def synthetic_start(kind: str, model, noise_px: float, render_cfg=None, network=None, iterations: int = 3,
                    refit_pose: bool = True, coarse: CoarseSettings | None = None, detect_params=None):
    """The coarse start of a synthetic face as the pipeline would have it, for
    :func:`datagen.synthetic.render_scene`: a callable ``(face, truth render, rng) -> alpha (K,)``, or None for
    ``kind="true"`` (the true smooth face: measures what comes after alone).

    ``"landmarks"``: the landmark fit (:func:`coarse.fit.fit_landmarks`, jaw line included: synthetic landmarks
    come from the jaw vertices) of the true landmarks plus Gaussian noise of ``noise_px`` pixels;
    ``"network"``: the iterative network (:class:`coarse.network.IterativeWeights` ``network``) run on the
    truth render as on a photo (``iterations`` passes) from those landmarks; ``render_cfg``: its renderer's
    ``render`` config section; ``"detector"``: the real front end, as ``refine`` runs it: the detector
    (``detect_params``, the ``detect`` config section) on the truth render, then :func:`coarse_fit` with
    ``coarse`` (raises :class:`coarse.detect.ReconstructionInputError` when it finds no face).
    """
    from .fit import fit_landmarks

    if kind == "true":
        return None
    if kind == "landmarks":
        def start(face, truth, rng):
            return fit_landmarks(model, noisy_landmarks(truth.landmarks, noise_px, rng), contour_weight=1.0)[0]
        return start
    if kind == "network":
        if network is None:
            raise ValueError("coarse 'network' needs network weights")
        predict = network.predictor("cpu")

        def start(face, truth, rng):
            steps, _ = network_fit(predict, network.frame, truth.rgb, noisy_landmarks(truth.landmarks, noise_px, rng),
                                   model, render_cfg, iterations, refit_pose)
            return steps[-1][0]
        return start
    if kind == "detector":
        from .detect import detect_faces

        def start(face, truth, rng):
            det = detect_faces(np.clip(truth.rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), detect_params)[0]
            return coarse_fit(truth.rgb, det.landmarks, model, coarse, render_cfg, det.detector).alpha
        return start
    raise ValueError(f"coarse must be 'true', 'landmarks', 'detector' or 'network'; got {kind!r}")
