"""Photo input for reconstruction: read an image file robustly, find faces and their 68 landmarks (dlib).

Frames and units: pixels in the image frame of :mod:`render.camera` (origin at the top-left corner, x to the
right, y down, the centre of pixel (row i, column j) at (x, y) = (j + 0.5, i + 0.5)). dlib reports pixel
indices, so its points are shifted by half a pixel into this frame.

The 68 landmarks are in the Multi-PIE order of ``FaceModel.landmarks68`` (0-16 jaw line, 17-26 brows, 27-35
nose, 36-47 eyes, 48-67 mouth). The detector is dlib's HOG frontal-face detector and the landmark model is
``shape_predictor_68_face_landmarks.dat`` shipped inside the installed ``face_recognition_models`` package
(located without importing it: its ``__init__`` needs ``pkg_resources``). Nothing is downloaded at run time.

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

#: Eye landmarks (Multi-PIE): right eye of the person (image left) 36-41, left eye 42-47.
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)


class ReconstructionInputError(ValueError):
    """The input photo cannot be used (unreadable, no face, face too small); the message says why."""


class NoFaceError(ReconstructionInputError):
    """No face was detected in the image."""


class FaceTooSmallError(ReconstructionInputError):
    """Faces were detected, but all are too small for a reliable reconstruction."""


@dataclass(frozen=True)
class Detection:
    """One detected face, in full-image pixels (image frame: x right, y down, pixel edges at integers).

    box: (4,) float64 (x0, y0, x1, y1), the detector's square around the face (x1, y1 exclusive edges).
    landmarks: (68, 2) float64 pixel x, y of the Multi-PIE landmarks.
    score: dlib HOG detection score (larger = more confident; real faces typically score > 0.5).
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

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
def shape_predictor_path() -> Path:
    """Path of dlib's 68-landmark model inside the installed ``face_recognition_models`` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("package face_recognition_models is not installed (it holds dlib's landmark model)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"dlib landmark model missing: {path}")
    return path


@lru_cache(maxsize=1)
def _dlib_models():
    import dlib

    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(shape_predictor_path()))


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


def detect_faces(image: np.ndarray, max_side: int = 1024, min_score: float = 0.5,
                 min_interocular_px: float = 20.0) -> list[Detection]:
    """Find faces and their 68 landmarks.

    The detector runs on a copy whose longer side is at most ``max_side`` pixels (huge photos are scaled
    down; small ones are upsampled by dlib's pyramid, up to 4x, so that the detection image reaches about
    ``max_side``; dlib's smallest face is 80 px there). Boxes are mapped back and the landmarks are
    predicted on the full-resolution image.

    Args:
        image: (H, W, 3) uint8 RGB (or (H, W) gray), e.g. from :func:`load_image`.
        max_side: longest side of the detection image, pixels.
        min_score: HOG score threshold (the astronaut photo's mission patch scores 0.12, her face 1.2).
        min_interocular_px: faces whose eye centres are closer than this (pixels) are dropped as too small
            for the landmark fit and the shape-from-shading detail.
    Returns:
        Detections, largest box first.
    Raises:
        NoFaceError: nothing scores above ``min_score``.
        FaceTooSmallError: faces were found but all have an inter-ocular distance below ``min_interocular_px``.
        ReconstructionInputError: ``image`` has the wrong shape or dtype.
    """
    import dlib

    image = _check_image(image)
    H, W = image.shape[:2]
    detector, predictor = _dlib_models()
    f = min(1.0, max_side / max(H, W))
    work = image
    if f < 1.0:
        size = (max(1, round(W * f)), max(1, round(H * f)))
        work = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    fx, fy = work.shape[1] / W, work.shape[0] / H
    upsample = int(np.clip(np.floor(np.log2(max_side / max(work.shape[:2]))), 0, 2))
    rects, scores, _ = detector.run(work, upsample, 0.0)

    found: list[Detection] = []
    for rect, score in zip(rects, scores):
        if score < min_score:
            continue
        box = np.array([rect.left() / fx, rect.top() / fy, (rect.right() + 1) / fx, (rect.bottom() + 1) / fy])
        r = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])) - 1, int(round(box[3])) - 1)
        shape = predictor(image, r)
        pts = np.array([(p.x, p.y) for p in shape.parts()], np.float64) + 0.5  # pixel index -> image frame
        found.append(Detection(box, pts, float(score)))
    if not found:
        best = f" (best score {max(scores):.2f} < min_score {min_score})" if len(scores) else ""
        raise NoFaceError(f"no face found in the {W}x{H} image{best}")
    big = [d for d in found if d.interocular >= min_interocular_px]
    if not big:
        iod = max(d.interocular for d in found)
        raise FaceTooSmallError(
            f"face too small: inter-ocular distance {iod:.1f} px < {min_interocular_px:.0f} px; "
            "use a larger or closer photo of the face")
    return sorted(big, key=lambda d: d.area, reverse=True)
