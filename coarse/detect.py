"""Photo input for reconstruction: read an image file robustly, find faces and their 68 landmarks (dlib).

Frames and units: pixels in the image frame of :mod:`render.camera` (origin at the top-left corner, x to the
right, y down, the centre of pixel (row i, column j) at (x, y) = (j + 0.5, i + 0.5)). dlib reports pixel
indices, so its points are shifted by half a pixel into this frame.

The 68 landmarks are in the Multi-PIE order of ``FaceModel.landmarks68`` (0-16 jaw line, 17-26 brows, 27-35
nose, 36-47 eyes, 48-67 mouth). Detection is a cascade of dlib's detectors (:func:`find_faces`,
:func:`detect_faces`): the HOG frontal-face detector, then the CNN face detector ``mmod_human_face_detector.dat``,
then HOG on the photo turned by a few angles; the landmark model is ``shape_predictor_68_face_landmarks.dat``.
Both model files ship inside the installed ``face_recognition_models`` package (located without importing it:
its ``__init__`` needs ``pkg_resources``); the HOG detector is dlib's own, read from
:data:`HOG_DETECTOR_PATH`. Each model is loaded on first use. Nothing is downloaded at run time.

Errors: every problem with the input (unreadable file, no face, face too small) raises a subclass of
:class:`ReconstructionInputError` (a ``ValueError``) with a one-line message.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facesynth.config import REPO_ROOT, DetectConfig

#: Eye landmarks (Multi-PIE): right eye of the person (image left) 36-41, left eye 42-47.
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)

#: Side (pixels of the scanned image) of the smallest face dlib's HOG and CNN detectors find: both scan
#: windows of about 80 px and only search downscaled copies, so a face must be this wide where it is scanned.
WINDOW_PX = 80


class ReconstructionInputError(ValueError):
    """The input photo cannot be used (unreadable, no face, face too small); the message says why."""


class NoFaceError(ReconstructionInputError):
    """No face was detected in the image."""


class FaceTooSmallError(ReconstructionInputError):
    """Faces were detected, but all are too small for a reliable reconstruction."""


@dataclass(frozen=True)
class Detection:
    """One detected face, in full-image pixels (image frame: x right, y down, pixel edges at integers).

    box: (4,) float64 (x0, y0, x1, y1), the square around the face (x1, y1 exclusive edges) that the landmarks
        were predicted in: an upright HOG detection's own box, else HOG's box in the face's upright crop; when
        that crop was turned (``rotation_deg`` != 0), the square of the same side about its centre.
    landmarks: (68, 2) float64 pixel x, y of the Multi-PIE landmarks.
    score: the confidence of the detector that accepted the face; its scale depends on ``detector``:
        ``hog``: dlib's HOG + linear SVM score (distance past the SVM's margin; > 0 is a detection at dlib's
        own threshold, upright frontal faces mostly score 0.5-2.5); accepted at ``hog_sure_score`` or more.
        ``hog+cnn``: a weaker HOG box that the CNN confirmed on a crop around it; the score is the CNN's.
        ``cnn``: dlib's MMOD CNN detection score (> 0 is dlib's own threshold; faces mostly score 0.3-1.2).
        A ``-rotated`` suffix (``hog-rotated``, ``hog+cnn-rotated``): found only in a turned copy of the photo;
        the scores are those above.
        ``given``: made by a caller, not by :func:`detect_faces` (e.g. known landmarks).
    detector: which stage found the face (above).
    rotation_deg: the landmarks were predicted in the photo turned counter-clockwise (as displayed) by this
        angle, degrees, where the face stood most upright (about minus its roll, to the nearest step of
        ``rotations_deg``; 0 upright); box and landmarks are in the unturned photo.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float
    detector: str = "given"
    rotation_deg: float = 0.0

    @property
    def interocular(self) -> float:
        """Distance between the two eye centres (means of landmarks 36-41 and 42-47), pixels."""
        return float(np.linalg.norm(self.landmarks[RIGHT_EYE].mean(0) - self.landmarks[LEFT_EYE].mean(0)))

    @property
    def area(self) -> float:
        """Box area in pixels^2."""
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


# ---------------------------------------------------------------------------------------------- image files
def load_image(path: str | Path) -> np.ndarray:
    """Read a photo into an RGB array, upright.

    Handles EXIF orientation (``ImageOps.exif_transpose``), grayscale and bilevel (replicated to 3 channels),
    palette images, alpha (composited over white), 16-bit and 32-bit integer images (scaled to 8 bits) and
    float images (assumed in [0, 1] when their maximum is <= 1, else in [0, 255]).

    Args:
        path: image file (any format Pillow reads).
    Returns:
        (H, W, 3) uint8 RGB.
    Raises:
        ReconstructionInputError: missing, empty, not an image, truncated or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise ReconstructionInputError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ReconstructionInputError(f"image file is empty (0 bytes): {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb8(im)
    except UnidentifiedImageError:
        raise ReconstructionInputError(f"not an image file Pillow can read: {path}") from None
    except Image.DecompressionBombError as e:
        raise ReconstructionInputError(f"image is too large to read safely ({e}): {path}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt data (Pillow raises these three)
        raise ReconstructionInputError(f"image file is truncated or corrupt ({e}): {path}") from None


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB (alpha composited over white)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.max(initial=0) > 255 or mode.startswith("I;16"):  # 16-bit range (PNG 16-bit gray opens as I;16 or I)
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "F":
        a = np.asarray(im, np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.max(initial=0) <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"), np.uint8)
    return np.array(im.convert("RGB"), np.uint8)


# ---------------------------------------------------------------------------------------------- detection
def _model_path(name: str) -> Path:
    """Path of a dlib model file inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package face_recognition_models is not installed (it holds dlib's face models)")
    path = Path(spec.submodule_search_locations[0]) / "models" / name
    if not path.is_file():
        raise RuntimeError(f"dlib model missing: {path}")
    return path


def shape_predictor_path() -> Path:
    """Path of dlib's 68-landmark model inside the installed ``face_recognition_models`` package."""
    return _model_path("shape_predictor_68_face_landmarks.dat")


def cnn_detector_path() -> Path:
    """Path of dlib's CNN (MMOD) face detector inside the installed ``face_recognition_models`` package."""
    return _model_path("mmod_human_face_detector.dat")


#: dlib's HOG frontal-face detector, ``dlib.get_frontal_face_detector()`` written by its own ``save`` (the same
#: detector, byte for byte; dlib rebuilds it from a compressed string in ~0.5 s, this file loads in ~2 ms).
HOG_DETECTOR_PATH = REPO_ROOT / "data" / "dlib_frontal_face_detector.svm"


#: The loaders of dlib's models, each cached (:func:`dlib_model`).
_DLIB_MODELS: list = []


def dlib_model(load):
    """Decorator: ``load`` (the loader of one of dlib's models) cached, and counted by :func:`dlib_has_run`."""
    cached = lru_cache(maxsize=1)(load)
    _DLIB_MODELS.append(cached)
    return cached


def dlib_has_run() -> bool:
    """Whether this process has loaded one of dlib's models (a detector, the 68-point predictor, the recognition
    network), and so may have started dlib's thread pool. The pool does not survive a fork: a child forked after
    it started can wait on it forever. Forking to run dlib (``refine.detect_in_background``) is therefore for a
    process where this is False (a fresh ``refine sfs PHOTO``)."""
    return any(f.cache_info().currsize for f in _DLIB_MODELS)


@dlib_model
def _hog_model():
    import dlib

    if HOG_DETECTOR_PATH.is_file():
        return dlib.fhog_object_detector(str(HOG_DETECTOR_PATH))
    return dlib.get_frontal_face_detector()


@dlib_model
def _predictor():
    import dlib

    return dlib.shape_predictor(str(shape_predictor_path()))  # ~100 MB: 0.7-1 s on one core


def _dlib_models():
    """(HOG detector, 68-point predictor), each loaded on first use."""
    return _hog_model(), _predictor()


@dlib_model
def _cnn_model():
    import dlib

    return dlib.cnn_face_detection_model_v1(str(cnn_detector_path()))


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ReconstructionInputError(
            f"expected an (H, W, 3) uint8 RGB image (see load_image); got shape {image.shape} dtype {image.dtype}")
    if min(image.shape[:2]) < 8:
        raise ReconstructionInputError(f"image of {image.shape[1]}x{image.shape[0]} pixels is too small")
    return np.ascontiguousarray(image)


@dataclass(frozen=True)
class _Found:
    """A detector's accepted box in the image it was given (image frame), before landmarks.

    kind: HOG's sub-detector (:data:`_HOG_ROLL_DEG`), -1 for the CNN; landmarks: (68, 2) predicted in ``box`` of
    that image, when they were (HOG boxes), else None."""

    box: np.ndarray
    score: float
    detector: str
    kind: int = -1
    landmarks: np.ndarray | None = None


def _resized(image: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    """``image`` scaled by about ``scale`` (bilinear, antialiased when shrinking) and the exact x, y factors."""
    H, W = image.shape[:2]
    size = (max(1, round(W * scale)), max(1, round(H * scale)))
    if size == (W, H):
        return image, 1.0, 1.0
    work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return work, size[0] / W, size[1] / H


def _edges(rect, fx: float, fy: float) -> np.ndarray:
    """A dlib rectangle (inclusive pixel indices) in an image scaled by (fx, fy) -> (x0, y0, x1, y1) edges."""
    return np.array([rect.left() / fx, rect.top() / fy, (rect.right() + 1) / fx, (rect.bottom() + 1) / fy])


#: dlib's image pyramids (HOG's and the CNN's) shrink by this factor from one level to the next.
_PYRAMID_STEP = 5 / 6


def search_scale(shape: tuple[int, ...], p: DetectConfig) -> float:
    """HOG's full search scale for an image of ``shape`` (H, W, ...): a face ``min_face_px`` wide spans
    :data:`WINDOW_PX`, the copy's longer side at most ``max_search_side`` (scaled copy pixels per image pixel)."""
    return min(WINDOW_PX / p.min_face_px, p.max_search_side / max(shape[:2]))


def quick_scale(shape: tuple[int, ...], p: DetectConfig) -> float | None:
    """The scale of the quick first HOG pass (:func:`find_faces` with ``largest``): the full search scale times
    :data:`_PYRAMID_STEP` to the power of the fewest steps that bring the copy's longer side to at most
    ``quick_search_side``, so that its pyramid levels are those of the full search and a face found by both gets
    the same box (to about half a pixel). None when the full search is no bigger (nothing to save)."""
    s0, side = search_scale(shape, p), max(shape[:2])
    if p.quick_search_side <= 0 or s0 * side <= p.quick_search_side:
        return None
    steps = int(np.ceil(np.log(p.quick_search_side / (s0 * side)) / np.log(_PYRAMID_STEP) - 1e-9))
    return s0 * _PYRAMID_STEP ** steps


def _hog_boxes(image: np.ndarray, scale: float, p: DetectConfig) -> list[tuple[np.ndarray, float, int]]:
    """HOG at dlib's threshold ``hog_min_score`` on ``image`` scaled by ``scale``: (box in ``image``'s frame,
    score, sub-detector) for each box, the highest scores first."""
    work, fx, fy = _resized(image, scale)
    rects, scores, kinds = _hog_model().run(work, 0, p.hog_min_score)
    found = [(_edges(r, fx, fy), float(sc), int(k)) for r, sc, k in zip(rects, scores, kinds)]
    return sorted(found, key=lambda f: -f[1])


#: The CNN confirms a weak HOG box on a square crop of this many times the box's side about its centre, scaled
#: to _CONFIRM_CROP_PX pixels (the box then spans 94 px, above the CNN's ~80-px window). On 24 faces of weak HOG
#: boxes (synthetic, textured and uniform albedo) it confirms every one, scores 0.92-1.1 against 0.97-1.1 for a
#: crop of 2 sides at 200 px, in half the time (~0.2 s on one core).
_CONFIRM_CROP_SIDES = 1.6
_CONFIRM_CROP_PX = 150


def _confirm(image: np.ndarray, box: np.ndarray, min_score: float) -> float | None:
    """The CNN on a crop about ``box`` (image frame): the best score, at least ``min_score``, of a face it finds
    centred inside ``box``, or None."""
    cx, cy, half = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, _CONFIRM_CROP_SIDES * (box[2] - box[0]) / 2
    crop_box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    crop = Image.fromarray(image).crop(crop_box)  # black outside the image
    crop = np.asarray(crop.resize((_CONFIRM_CROP_PX, _CONFIRM_CROP_PX), Image.Resampling.BILINEAR))
    f = _CONFIRM_CROP_PX / (crop_box[2] - crop_box[0])
    best = None
    for d in _cnn_model()(crop, 0):
        b = _edges(d.rect, f, f) + np.array(crop_box[:2] * 2)
        inside = box[0] < (b[0] + b[2]) / 2 < box[2] and box[1] < (b[1] + b[3]) / 2 < box[3]
        if inside and d.confidence >= min_score and (best is None or d.confidence > best):
            best = float(d.confidence)
    return best


def _cnn_sides(image: np.ndarray, p: DetectConfig):
    """The CNN at each of ``cnn_sides`` in turn (never scaled past HOG's search scale; copies narrower than its
    window are skipped): one list of :class:`_Found` (image frame) per copy scanned."""
    H, W = image.shape[:2]
    tried = set()
    for side in p.cnn_sides:
        work, fx, fy = _resized(image, min(search_scale(image.shape, p), side / max(H, W)))
        if work.shape in tried or min(work.shape[:2]) < WINDOW_PX:
            continue
        tried.add(work.shape)
        yield [_Found(_edges(d.rect, fx, fy), float(d.confidence), "cnn")
               for d in _cnn_model()(work, 0) if d.confidence >= p.cnn_min_score]


def _turn(image: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned counter-clockwise (as displayed) by ``angle_deg`` about its centre, on a canvas that
    holds all of it (black corners), and the (2, 3) affine map of image-frame points into the turned image."""
    H, W = image.shape[:2]
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    R = np.array([[c, s], [-s, c]])  # y down: counter-clockwise on screen
    Wt = int(np.ceil(abs(c) * W + abs(s) * H - 1e-6))
    Ht = int(np.ceil(abs(s) * W + abs(c) * H - 1e-6))
    A = np.hstack([R, (np.array([Wt, Ht]) / 2 - R @ np.array([W, H]) / 2)[:, None]])
    inv = np.linalg.inv(np.vstack([A, [0, 0, 1]]))[:2]  # turned -> photo, what Pillow samples with
    turned = Image.fromarray(image).transform((Wt, Ht), Image.Transform.AFFINE, tuple(inv.ravel()),
                                              Image.Resampling.BILINEAR)
    return np.asarray(turned), A


def _landmarks(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 points for the face in ``box`` (image frame), (68, 2) float64 image-frame pixels."""
    import dlib

    r = dlib.rectangle(*(int(round(v)) for v in box[:2]), *(int(round(v)) - 1 for v in box[2:]))
    return np.array([(q.x, q.y) for q in _predictor()(image, r).parts()], np.float64) + 0.5  # index -> image frame


def _interocular(landmarks: np.ndarray) -> float:
    """Distance between the eye centres of (68, 2) landmarks, pixels."""
    return float(np.linalg.norm(landmarks[LEFT_EYE].mean(0) - landmarks[RIGHT_EYE].mean(0)))


def eye_roll_deg(landmarks: np.ndarray) -> float:
    """The eye line's angle (degrees, in (-180, 180]) of (68, 2) image-frame landmarks: 0 when the person's left
    eye (42-47) lies straight right of the right eye (36-41) in the image, positive when it lies lower (the face
    turned clockwise as displayed). The 68-point predictor keeps the eye line within a few degrees up to ~35
    degrees of roll; beyond, its points are meaningless."""
    d = landmarks[LEFT_EYE].mean(0) - landmarks[RIGHT_EYE].mean(0)
    return float(np.degrees(np.arctan2(d[1], d[0])))


def _square(centre: np.ndarray, side: float) -> np.ndarray:
    """(4,) x0, y0, x1, y1 of the square of ``side`` about ``centre``."""
    return np.concatenate([centre - side / 2, centre + side / 2])


@dataclass(frozen=True)
class FaceSearch:
    """What :func:`find_faces` found in a photo (boxes and landmarks in the photo's image frame, pixels).

    faces: the faces with an inter-ocular distance of at least ``min_interocular_px``, largest box first (with
        ``largest``: the first is the largest face; smaller ones may be missing).
    small: faces found below that distance (not reconstructable), largest first, from every stage that ran;
        their landmarks come from one predictor pass in the detector's box (no roll search).
    stages: the stages that ran, in order (``hog-quick``, ``hog``, ``cnn``, ``hog-rotated``).
    """

    faces: list[Detection]
    small: list[Detection]
    stages: list[str]


def find_faces(image: np.ndarray, params: DetectConfig | None = None, largest: bool = False) -> FaceSearch:
    """Find faces and their 68 landmarks with a cascade of dlib's detectors; the first stage that finds a face
    above ``min_interocular_px`` ends it (a stage that finds only smaller faces does not).

    Stages (``params``, the ``detect`` section of ``pipeline.yaml``, says which run and their thresholds):
      0. ``hog-quick``, with ``largest`` only: HOG on a copy of longer side at most ``quick_search_side``
         (:func:`quick_scale`: at one of stage 1's pyramid levels, so boxes are stage 1's), keeping only sure
         boxes (``hog_sure_score``) above its smallest level: faces from about 1.1 x :data:`WINDOW_PX` / that
         scale wide. When one is big enough the search ends there: smaller faces are not searched.
      1. ``hog``: the HOG detector at dlib's own threshold ``hog_min_score`` on a copy scaled so that a face
         ``min_face_px`` wide spans :data:`WINDOW_PX` (small photos are upsampled, big ones searched at full
         resolution or more), the copy's longer side at most ``max_search_side``; boxes scoring under
         ``hog_sure_score`` are kept only when the CNN confirms them on a crop around the box (``hog+cnn``), and
         only when the landmarks predicted in the box make a face big enough (smaller ones are confirmed only when
         no stage finds a big face, to tell "too small" from "no face"); with ``largest``, only boxes a
         pyramid level bigger than the biggest face found so far.
      2. ``cnn``: the CNN detector on copies whose longer side is each of ``cnn_sides`` in turn (never scaled
         past stage 1's scale), keeping scores of at least ``cnn_min_score``, until one finds a big face.
      3. ``hog-rotated``: stage 1 on the photo turned by each of ``rotations_deg`` in turn.
    Then each face is turned upright for its landmarks (the predictor fails beyond ~35 degrees of roll): a face
    HOG found upright (sub-detectors 0-2) whose eye line, from the landmarks in its box, lies within
    ``roll_check_deg`` of level keeps its box and those landmarks; any other face goes through the roll search
    (HOG on a crop about it turned by 0 and each of ``rotations_deg`` picks the angle and the box; for a CNN
    face, HOG's upright box of it ends the search when it scores at least ``hog_min_score`` and its eye line is
    level), and the 68 landmarks are predicted at full resolution in the photo turned by that angle, then
    turned back. :class:`Detection` says what each detector's score means.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) gray), e.g. from :func:`load_image`.
        params: detection settings; None reads them from ``pipeline.yaml``.
        largest: only the largest face is wanted (stage 0 runs; see above).
    Returns:
        :class:`FaceSearch`: the big faces of the stage that ended the search, and the small ones seen on the way.
    Raises:
        NoFaceError: no stage found a face.
        FaceTooSmallError: faces were found, all with an inter-ocular distance below ``min_interocular_px``.
        ReconstructionInputError: ``image`` has the wrong shape or dtype.
    """
    if params is None:
        from facesynth.config import load_config

        params = load_config().detect
    p, image = params, _check_image(image)
    H, W = image.shape[:2]
    quick = quick_scale(image.shape, p) if largest else None
    s0 = search_scale(image.shape, p)
    stages = ([("hog-quick", 0.0, quick)] if quick else []) + [("hog", 0.0, s0)] + (
        [("cnn", 0.0, None)] if p.cnn_sides else []) + [
        ("hog-rotated", float(a), None) for a in p.rotations_deg if a % 360]
    ran: list[str] = []
    small: list[Detection] = []
    unconfirmed: list[tuple[np.ndarray, _Found, float, np.ndarray | None]] = []  # small weak HOG boxes
    weak: list[float] = []  # scores of HOG boxes the CNN did not confirm
    for name, angle, scale in stages:
        ran.append(name)
        work, A = (image, None) if angle == 0 else _turn(image, angle)
        if name == "cnn":
            big = []
            for found in _cnn_sides(work, p):
                dets = [_detection(image, f, 0.0, None, p) for f in found]
                big = [d for d in dets if d.interocular >= p.min_interocular_px]
                small += [d for d in dets if d.interocular < p.min_interocular_px]
                if big:
                    break
        else:
            scale = search_scale(work.shape, p) if scale is None else scale  # a turned copy: its own canvas
            big = _hog_stage(image, work, angle, A, scale, p, largest, small, unconfirmed, weak, name == "hog-quick")
        if big:
            faces = sorted(big, key=lambda d: d.area, reverse=True)
            return FaceSearch(faces, _distinct(small, faces), ran)
    for work, f, angle, A in unconfirmed:  # no big face anywhere: is a small weak box a face after all?
        if p.cnn_sides and _confirm(work, f.box, p.cnn_min_score) is not None:
            small.append(_small(f, angle, A))
    if small:
        small = _distinct(small, [])
        raise FaceTooSmallError(
            f"face too small: inter-ocular distance {small[0].interocular:.1f} px < {p.min_interocular_px:.0f} px; "
            "use a larger or closer photo of the face")
    names = ", ".join(dict.fromkeys({"hog-quick": "HOG", "hog": "HOG", "cnn": "CNN"}.get(n, "turned HOG")
                                    for n in ran))
    best = f"; best HOG score {max(weak):.2f} not confirmed by the CNN" if weak and p.cnn_sides else (
        f"; best HOG score {max(weak):.2f} < hog_sure_score {p.hog_sure_score}" if weak else "")
    raise NoFaceError(f"no face found in the {W}x{H} image (faces from {p.min_face_px:.0f} px wide "
                      f"searched with {names}{best})")


def detect_faces(image: np.ndarray, params: DetectConfig | None = None, largest: bool = False) -> list[Detection]:
    """The faces :func:`find_faces` finds above ``min_interocular_px``, largest box first (with ``largest``: the
    first is the largest; use it when only that one is wanted, it is faster on big photos). Raises as
    :func:`find_faces`."""
    return find_faces(image, params, largest).faces


def _hog_stage(photo: np.ndarray, work: np.ndarray, angle: float, A: np.ndarray | None, scale: float,
               p: DetectConfig, largest: bool, small: list, unconfirmed: list, weak: list,
               quick: bool = False) -> list[Detection]:
    """One HOG stage of :func:`find_faces` on ``work`` (``photo`` turned by ``angle``, ``A``: photo -> work, None
    for the photo itself) scanned at ``scale``: its big faces; small faces, small weak boxes and the scores of
    weak boxes the CNN did not confirm are appended to ``small``, ``unconfirmed`` and ``weak``. ``quick`` (the
    quick pass): only sure boxes above the scan's smallest pyramid level count (a face a little smaller than the
    scan's window is found there in a box too big for it, at a weak score); the rest is left to the full
    search."""
    boxes = []
    for box, score, kind in _hog_boxes(work, scale, p):
        if quick and (score < p.hog_sure_score or box[2] - box[0] < WINDOW_PX / scale / _PYRAMID_STEP ** 0.5):
            continue  # the full search decides: a weak box, or one at the smallest level (maybe a smaller face)
        pts = _landmarks(work, box)
        f = _Found(box, score, "hog", kind, pts)
        if _interocular(pts) < p.min_interocular_px:
            if score >= p.hog_sure_score:
                small.append(_small(f, angle, A))
            else:
                unconfirmed.append((work, f, angle, A))
        else:
            boxes.append(f)
    big = [_detection(photo, f, angle, A, p) for f in boxes if f.score >= p.hog_sure_score]
    for f in sorted((f for f in boxes if f.score < p.hog_sure_score), key=lambda f: -(f.box[2] - f.box[0])):
        if largest and big and f.box[2] - f.box[0] < max(d.box[2] - d.box[0] for d in big) / _PYRAMID_STEP ** 0.5:
            continue  # not a pyramid level above the largest face (boxes of one level differ by rounding only)
        score = _confirm(work, f.box, p.cnn_min_score) if p.cnn_sides else None
        if score is None:
            weak.append(f.score)
        else:
            big.append(_detection(photo, _Found(f.box, score, "hog+cnn", f.kind, f.landmarks), angle, A, p))
    small += [d for d in big if d.interocular < p.min_interocular_px]  # smaller once turned upright
    return [d for d in big if d.interocular >= p.min_interocular_px]


def _small(f: _Found, angle: float, A: np.ndarray | None) -> Detection:
    """A face below the size limit as a :class:`Detection` in the photo frame: the landmarks predicted in its
    box of the copy turned by ``angle`` (``A``: photo -> copy, None: the photo), turned back."""
    if A is None:
        return Detection(f.box, f.landmarks, f.score, f.detector, 0.0)
    centre = ((f.box[:2] + f.box[2:]) / 2 - A[:, 2]) @ A[:, :2]
    return Detection(_square(centre, f.box[2] - f.box[0]), (f.landmarks - A[:, 2]) @ A[:, :2], f.score,
                     f.detector + "-rotated", angle)


def _distinct(faces: list[Detection], taken: list[Detection]) -> list[Detection]:
    """``faces`` without those that are one of ``taken`` or of each other (:func:`_same_face`), largest first."""
    out: list[Detection] = []
    for d in sorted(faces, key=lambda d: d.area, reverse=True):
        c, side = (d.box[:2] + d.box[2:]) / 2, d.box[2] - d.box[0]
        if not any(_same_face(c, side, (t.box[:2] + t.box[2:]) / 2, t.box[2] - t.box[0]) for t in taken + out):
            out.append(d)
    return out


#: The roll search scales the face's square to this side (pixels; above HOG's 80-px window).
_ROLL_SEARCH_BOX_PX = 100
#: dlib's HOG face detector has five sub-detectors: 0 frontal, 1 turned left, 2 turned right (upright faces),
#: 3 and 4 frontal faces rolled by about 30 degrees one way and the other. A face that sub-detector k finds in
#: a copy turned by angle stands upright in the copy turned by angle + _HOG_ROLL_DEG[k] (degrees).
_HOG_ROLL_DEG = (0.0, 0.0, 0.0, -30.0, 30.0)
#: HOG score by which a box in a turned copy must beat the upright copy's best to be taken (turned copies of an
#: unrolled, turned-away face give spurious boxes at low scores).
_TURN_MARGIN = 0.3


def _level(kind: int, landmarks: np.ndarray | None, p: DetectConfig) -> bool:
    """Whether a face HOG's sub-detector ``kind`` found upright stands upright enough for the predictor as it is:
    an upright sub-detector (0-2) and the eye line of ``landmarks`` (predicted in that box) within
    ``roll_check_deg`` of level."""
    return (p.roll_check_deg > 0 and 0 <= kind <= 2 and landmarks is not None
            and abs(eye_roll_deg(landmarks)) <= p.roll_check_deg)


def _roll_search(photo: np.ndarray, centre: np.ndarray, side: float, p: DetectConfig,
                 turned_min_score: float = 0.5) -> tuple[float, np.ndarray, float] | None:
    """Turn the face in the square (``side``, ``centre``, photo frame) upright: HOG at any score (down to -1) on a
    crop about it turned by 0 and each of ``rotations_deg`` (degrees, counter-clockwise); its best-scoring box
    near the crop's centre and the turn that stands that face upright (the box's turn, corrected by the roll its
    sub-detector is made for, :data:`_HOG_ROLL_DEG`). The CNN finds faces rolled by up to ~90 degrees and
    HOG's boxes of rolled faces sit askew, while the landmark predictor wants an upright box.

    A box in a turned copy is taken only when it scores at least ``turned_min_score`` and beats the upright
    copy's best by :data:`_TURN_MARGIN` (turned copies of a turned-away, upright face give spurious boxes). The
    turned copies are not searched when the upright copy's best box scores at least ``hog_min_score`` and stands
    level (:func:`_level`: a real upright detection; a face rolled by 90 degrees gives boxes below dlib's
    threshold there).

    Returns (angle, centre (2,) in the photo frame, side in photo pixels) of that box, or None (no HOG box).
    """
    detector = _hog_model()
    n = _ROLL_SEARCH_BOX_PX
    x0, y0 = np.round(centre - 1.5 * side).astype(int)
    x1, y1 = np.round(centre + 1.5 * side).astype(int)
    patch = Image.fromarray(photo).crop((x0, y0, x1, y1))  # black outside the photo
    patch = np.asarray(patch.resize((3 * n, 3 * n), Image.Resampling.BILINEAR))
    f = np.array([3 * n / (x1 - x0), 3 * n / (y1 - y0)])  # photo -> patch: (p - (x0, y0)) * f
    best = None
    for angle in (0.0, *p.rotations_deg):
        turned, A = _turn(patch, angle)
        mid = A[:, :2] @ np.full(2, 1.5 * n) + A[:, 2]
        ox, oy = np.round(mid).astype(int) - n
        window = np.ascontiguousarray(turned[oy:oy + 2 * n, ox:ox + 2 * n])
        rects, scores, kinds = detector.run(window, 0, -1.0)
        for rect, score, kind in zip(rects, scores, kinds):
            b = _edges(rect, 1.0, 1.0) + np.array([ox, oy, ox, oy])
            c = (b[:2] + b[2:]) / 2
            if angle != 0 and (score < turned_min_score or best is not None and best[0] >= score - _TURN_MARGIN):
                continue  # a turned copy wins only with a real detection clearly above the upright one
            if np.linalg.norm(c - mid) < n / 2 and (best is None or score > best[0]):
                upright = (angle + _HOG_ROLL_DEG[int(kind)] + 180) % 360 - 180
                best = (score, upright, ((c - A[:, 2]) @ A[:, :2]) / f + (x0, y0), (b[2] - b[0]) / f[0], int(kind), b)
        if angle == 0 and best is not None and best[0] >= p.hog_min_score and _level(
                best[4], _landmarks(turned, best[5]), p):
            break  # a real upright detection that stands level: the turned copies are not searched
    return None if best is None else best[1:4]


#: dlib's CNN (MMOD) box -> its HOG box of the same face: centre shift (x, y) in units of the CNN box's side, and
#: side ratio; medians over 23 synthetic 512-px faces that both found (HOG's box is 9 % larger and 13 % lower).
_CNN_TO_HOG = (0.0, 0.127, 1.09)


def _same_face(centre: np.ndarray, side: float, ref_centre: np.ndarray, ref_side: float) -> bool:
    """Whether a box (``centre``, ``side``) found by the roll search is the face of the box it started from: centres
    within a third of its side, sides within a factor 1.5."""
    return bool(np.linalg.norm(np.asarray(centre) - ref_centre) < ref_side / 3 and 1 / 1.5 < side / ref_side < 1.5)


def _turned_landmarks(photo: np.ndarray, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    """dlib's 68 points for the face in the square (``side``, ``centre``, photo frame) of the photo turned by
    ``angle`` (degrees, counter-clockwise), predicted on a full-resolution crop about it turned by ``angle``;
    (68, 2) photo-frame pixels."""
    x0, y0 = np.floor(centre - 1.5 * side).astype(int)
    x1, y1 = np.ceil(centre + 1.5 * side).astype(int)
    turned, T = _turn(np.asarray(Image.fromarray(photo).crop((x0, y0, x1, y1))), angle)
    c = T[:, :2] @ (centre - (x0, y0)) + T[:, 2]
    return (_landmarks(turned, _square(c, side)) - T[:, 2]) @ T[:, :2] + (x0, y0)  # rotation: R^-1 = R^T


def _detection(photo: np.ndarray, found: _Found, angle: float, A: np.ndarray | None,
               p: DetectConfig) -> Detection:
    """Landmarks for a box found in the photo turned by ``angle`` (``A``: (2, 3) photo -> turned; None for the
    photo itself). An upright HOG box that stands level (:func:`_level`) keeps its box and landmarks; otherwise
    :func:`_roll_search` picks the angle and square the 68 points are predicted in, except for an upright HOG
    box it finds upright (then the detector's own box). The returned box is that square in the photo (for a
    turned one, the square of the same side about its turned-back centre)."""
    if A is None and found.detector != "cnn" and _level(found.kind, found.landmarks, p):
        return Detection(found.box, found.landmarks, found.score, found.detector, 0.0)
    side = found.box[2] - found.box[0]
    centre = (found.box[:2] + found.box[2:]) / 2
    if A is not None:
        centre = (centre - A[:, 2]) @ A[:, :2]  # A's rotation part R: R^-1 = R^T
    upright = _roll_search(photo, centre, side, p, p.hog_sure_score)
    if upright is not None and not _same_face(upright[1], upright[2], centre, side):
        upright = None  # a HOG box elsewhere in the crop (another face, or none at all): not this face
    if upright is None and found.detector == "cnn":  # the MMOD box in the convention the predictor was trained on
        centre, side = centre + np.array([_CNN_TO_HOG[0], _CNN_TO_HOG[1]]) * side, side * _CNN_TO_HOG[2]
        found = _Found(_square(centre, side), found.score, found.detector)
    keep = upright is None or (A is None and found.detector != "cnn" and upright[0] == 0)
    if not keep:
        angle, centre, side = upright
    if angle == 0:
        box = found.box if keep else _square(centre, side)
        pts = found.landmarks if keep and A is None and found.landmarks is not None else _landmarks(photo, box)
    else:
        box = _square(centre, side)
        pts = _turned_landmarks(photo, centre, side, angle)
    return Detection(box, pts, found.score, found.detector + ("-rotated" if A is not None else ""), angle)


def landmarks_in_box(image: np.ndarray, box: np.ndarray, rotation_deg: float = 0.0) -> np.ndarray:
    """dlib's 68 points for a face known to lie in the square ``box`` (4,) (x0, y0, x1, y1, image frame),
    predicted in the image turned by ``rotation_deg`` as :class:`Detection` says, without detecting: a video
    tracker's next frame, with the box from the last frame's landmarks. Returns (68, 2) image-frame pixels."""
    image, box = _check_image(image), np.asarray(box, np.float64)
    if rotation_deg == 0:
        return _landmarks(image, box)
    return _turned_landmarks(image, (box[:2] + box[2:]) / 2, float(box[2] - box[0]), rotation_deg)
