"""Photo input for reconstruction: read an image file robustly, find faces and their 68 landmarks (dlib).

Frames and units: pixels in the image frame of :mod:`render.camera` (origin at the top-left corner, x to the
right, y down, the centre of pixel (row i, column j) at (x, y) = (j + 0.5, i + 0.5)). dlib reports pixel
indices, so its points are shifted by half a pixel into this frame.

The 68 landmarks are in the Multi-PIE order of ``FaceModel.landmarks68`` (0-16 jaw line, 17-26 brows, 27-35
nose, 36-47 eyes, 48-67 mouth). Detection is a cascade of dlib's detectors (:func:`detect_faces`): the HOG
frontal-face detector, then the CNN face detector ``mmod_human_face_detector.dat``, then HOG on the photo
turned by a few angles; the landmark model is ``shape_predictor_68_face_landmarks.dat``. Both model files ship
inside the installed ``face_recognition_models`` package (located without importing it: its ``__init__``
needs ``pkg_resources``). Nothing is downloaded at run time.

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

from facesynth.config import DetectConfig

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


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(shape_predictor_path()))


@lru_cache(maxsize=1)
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
    """A detector's accepted box in the image it was given (image frame), before landmarks."""

    box: np.ndarray
    score: float
    detector: str


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


def _hog(image: np.ndarray, p: DetectConfig) -> tuple[list[_Found], float | None]:
    """HOG at the search scale; boxes under ``hog_sure_score`` must be confirmed by the CNN.

    Returns the accepted boxes and the best score of the unconfirmed ones (None when there were none).
    """
    detector, _ = _dlib_models()
    H, W = image.shape[:2]
    work, fx, fy = _resized(image, min(WINDOW_PX / p.min_face_px, p.max_search_side / max(H, W)))
    rects, scores, _ = detector.run(work, 0, p.hog_min_score)
    found, rejected = [], []
    for rect, score in zip(rects, scores):
        box = _edges(rect, fx, fy)
        if score >= p.hog_sure_score:
            found.append(_Found(box, float(score), "hog"))
            continue
        confirmed = _confirm(image, box, p.cnn_min_score) if p.cnn_sides else None
        if confirmed is None:
            rejected.append(float(score))
        else:
            found.append(_Found(box, confirmed, "hog+cnn"))
    return found, max(rejected, default=None)


#: The CNN confirms a weak HOG box on a crop of twice its side scaled to this many pixels (the box then spans
#: 100 px, above the CNN's ~80-px window; 0.2-0.3 s on one core).
_CONFIRM_CROP_PX = 200


def _confirm(image: np.ndarray, box: np.ndarray, min_score: float) -> float | None:
    """The CNN on a crop about ``box`` (image frame): the best score, at least ``min_score``, of a face it finds
    centred inside ``box``, or None."""
    cx, cy, side = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0]
    crop_box = tuple(int(round(v)) for v in (cx - side, cy - side, cx + side, cy + side))
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


def _cnn(image: np.ndarray, p: DetectConfig) -> list[_Found]:
    """The CNN at each of ``cnn_sides`` in turn (never scaled past HOG's search scale) until one finds faces;
    copies narrower than its window are skipped."""
    H, W = image.shape[:2]
    tried = set()
    for side in p.cnn_sides:
        work, fx, fy = _resized(image, min(WINDOW_PX / p.min_face_px, side / max(H, W)))
        if work.shape in tried or min(work.shape[:2]) < WINDOW_PX:
            continue
        tried.add(work.shape)
        found = [_Found(_edges(d.rect, fx, fy), float(d.confidence), "cnn")
                 for d in _cnn_model()(work, 0) if d.confidence >= p.cnn_min_score]
        if found:
            return found
    return []


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

    _, predictor = _dlib_models()
    r = dlib.rectangle(*(int(round(v)) for v in box[:2]), *(int(round(v)) - 1 for v in box[2:]))
    return np.array([(q.x, q.y) for q in predictor(image, r).parts()], np.float64) + 0.5  # index -> image frame


def _square(centre: np.ndarray, side: float) -> np.ndarray:
    """(4,) x0, y0, x1, y1 of the square of ``side`` about ``centre``."""
    return np.concatenate([centre - side / 2, centre + side / 2])


def detect_faces(image: np.ndarray, params: DetectConfig | None = None) -> list[Detection]:
    """Find faces and their 68 landmarks with a cascade of dlib's detectors; the first stage that finds faces
    ends it.

    Stages (``params``, the ``detect`` section of ``pipeline.yaml``, says which run and their thresholds):
      1. ``hog``: the HOG detector at dlib's own threshold ``hog_min_score`` on a copy scaled so that a face
         ``min_face_px`` wide spans :data:`WINDOW_PX` (small photos are upsampled, big ones searched at full
         resolution or more), the copy's longer side at most ``max_search_side``; boxes scoring under
         ``hog_sure_score`` are kept only when the CNN confirms them on a crop around the box (``hog+cnn``).
      2. ``cnn``: the CNN detector on copies whose longer side is each of ``cnn_sides`` in turn (never scaled
         past stage 1's scale), keeping scores of at least ``cnn_min_score``.
      3. ``hog-rotated``: stage 1 on the photo turned by each of ``rotations_deg``.
    Then each face is turned upright: HOG on a crop about it turned by 0 and each of ``rotations_deg`` picks
    the angle and the box (the CNN finds faces rolled by up to ~90 degrees, the predictor wants them within
    ~30), and the 68 landmarks are predicted at full resolution in the photo turned by that angle, then turned
    back. :class:`Detection` says what each detector's score means.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) gray), e.g. from :func:`load_image`.
        params: detection settings; None reads them from ``pipeline.yaml``.
    Returns:
        The faces of the first stage that finds any, those with an inter-ocular distance of at least
        ``min_interocular_px``, largest box first.
    Raises:
        NoFaceError: no stage found a face.
        FaceTooSmallError: that stage's faces all have an inter-ocular distance below ``min_interocular_px``.
        ReconstructionInputError: ``image`` has the wrong shape or dtype.
    """
    if params is None:
        from facesynth.config import load_config

        params = load_config().detect
    image = _check_image(image)
    H, W = image.shape[:2]
    stages = [("hog", 0.0)] + ([("cnn", 0.0)] if params.cnn_sides else []) + [
        ("hog", float(a)) for a in params.rotations_deg if a % 360]
    weak: list[float] = []
    for kind, angle in stages:
        work, A = (image, None) if angle == 0 else _turn(image, angle)
        if kind == "hog":
            found, best_weak = _hog(work, params)
            weak += [] if best_weak is None else [best_weak]
        else:
            found = _cnn(work, params)
        if not found:
            continue
        dets = [_detection(image, f, angle, A, params) for f in found]
        big = [d for d in dets if d.interocular >= params.min_interocular_px]
        if not big:
            raise FaceTooSmallError(
                f"face too small: inter-ocular distance {max(d.interocular for d in dets):.1f} px < "
                f"{params.min_interocular_px:.0f} px; use a larger or closer photo of the face")
        return sorted(big, key=lambda d: d.area, reverse=True)
    names = ", ".join(dict.fromkeys("HOG" if k == "hog" and a == 0 else "CNN" if k == "cnn" else "turned HOG"
                                    for k, a in stages))
    best = f"; best HOG score {max(weak):.2f} not confirmed by the CNN" if weak and params.cnn_sides else (
        f"; best HOG score {max(weak):.2f} < hog_sure_score {params.hog_sure_score}" if weak else "")
    raise NoFaceError(f"no face found in the {W}x{H} image (faces from {params.min_face_px:.0f} px wide "
                      f"searched with {names}{best})")


#: The roll search scales the face's square to this side (pixels; above HOG's 80-px window).
_ROLL_SEARCH_BOX_PX = 100
#: dlib's HOG face detector has five sub-detectors: 0 frontal, 1 turned left, 2 turned right (upright faces),
#: 3 and 4 frontal faces rolled by about 30 degrees one way and the other. A face that sub-detector k finds in
#: a copy turned by angle stands upright in the copy turned by angle + _HOG_ROLL_DEG[k] (degrees).
_HOG_ROLL_DEG = (0.0, 0.0, 0.0, -30.0, 30.0)
#: HOG score by which a box in a turned copy must beat the upright copy's best to be taken (turned copies of an
#: unrolled, turned-away face give spurious boxes at low scores).
_TURN_MARGIN = 0.3


def _roll_search(photo: np.ndarray, centre: np.ndarray, side: float, angles: tuple[float, ...],
                 turned_min_score: float = 0.5) -> tuple[float, np.ndarray, float] | None:
    """Turn the face in the square (``side``, ``centre``, photo frame) upright: HOG at any score (down to -1) on a
    crop about it turned by 0 and each of ``angles`` (degrees, counter-clockwise); its best-scoring box near
    the crop's centre and the turn that stands that face upright (the box's turn, corrected by the roll its
    sub-detector is made for, :data:`_HOG_ROLL_DEG`). The CNN finds faces rolled by up to ~90 degrees and
    HOG's boxes of rolled faces sit askew, while the landmark predictor wants an upright box.

    A box in a turned copy is taken only when it scores at least ``turned_min_score`` and beats the upright
    copy's best by :data:`_TURN_MARGIN` (turned copies of a turned-away, upright face give spurious boxes).

    Returns (angle, centre (2,) in the photo frame, side in photo pixels) of that box, or None (no HOG box).
    """
    detector, _ = _dlib_models()
    n = _ROLL_SEARCH_BOX_PX
    x0, y0 = np.round(centre - 1.5 * side).astype(int)
    x1, y1 = np.round(centre + 1.5 * side).astype(int)
    patch = Image.fromarray(photo).crop((x0, y0, x1, y1))  # black outside the photo
    patch = np.asarray(patch.resize((3 * n, 3 * n), Image.Resampling.BILINEAR))
    f = np.array([3 * n / (x1 - x0), 3 * n / (y1 - y0)])  # photo -> patch: (p - (x0, y0)) * f
    best = None
    for angle in (0.0, *angles):
        turned, A = _turn(patch, angle)
        mid = A[:, :2] @ np.full(2, 1.5 * n) + A[:, 2]
        ox, oy = np.round(mid).astype(int) - n
        rects, scores, kinds = detector.run(np.ascontiguousarray(turned[oy:oy + 2 * n, ox:ox + 2 * n]), 0, -1.0)
        for rect, score, kind in zip(rects, scores, kinds):
            b = _edges(rect, 1.0, 1.0) + np.array([ox, oy, ox, oy])
            c = (b[:2] + b[2:]) / 2
            if angle != 0 and (score < turned_min_score or best is not None and best[0] >= score - _TURN_MARGIN):
                continue  # a turned copy wins only with a real detection clearly above the upright one
            if np.linalg.norm(c - mid) < n / 2 and (best is None or score > best[0]):
                upright = (angle + _HOG_ROLL_DEG[int(kind)] + 180) % 360 - 180
                best = (score, upright, ((c - A[:, 2]) @ A[:, :2]) / f + (x0, y0), (b[2] - b[0]) / f[0])
    return None if best is None else best[1:]


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
    photo itself). :func:`_roll_search` picks the angle and square the 68 points are predicted in, except for
    an upright HOG box it finds upright (then the detector's own box). The returned box is that square in the
    photo (for a turned one, the square of the same side about its turned-back centre)."""
    side = found.box[2] - found.box[0]
    centre = (found.box[:2] + found.box[2:]) / 2
    if A is not None:
        centre = (centre - A[:, 2]) @ A[:, :2]  # A's rotation part R: R^-1 = R^T
    upright = _roll_search(photo, centre, side, p.rotations_deg, p.hog_sure_score)
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
        pts = _landmarks(photo, box)
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
