"""Photo input: robust image loading (formats, EXIF, broken files) and dlib face + landmark detection."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesynth.config import REPO_ROOT
from coarse.detect import (FaceTooSmallError, NoFaceError, ReconstructionInputError, detect_faces,
                                load_image)

ASTRONAUT = REPO_ROOT / "data" / "astronaut.png"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(ASTRONAUT)


@pytest.fixture(scope="module")
def upright(astronaut):
    return detect_faces(astronaut)


def test_astronaut_has_one_face_with_68_landmarks(astronaut, upright):
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    assert len(upright) == 1  # the mission patch (HOG score 0.12) is below min_score
    det = upright[0]
    assert det.landmarks.shape == (68, 2)
    x0, y0, x1, y1 = det.box
    pad = 0.15 * (x1 - x0)  # dlib's box is tight: the chin and jaw may reach just outside it
    assert np.all((det.landmarks[:, 0] > x0 - pad) & (det.landmarks[:, 0] < x1 + pad))
    assert np.all((det.landmarks[:, 1] > y0 - pad) & (det.landmarks[:, 1] < y1 + pad))
    inner = det.landmarks[17:]  # brows, nose, eyes, mouth: inside the box
    assert np.all((inner[:, 0] > x0) & (inner[:, 0] < x1) & (inner[:, 1] > y0) & (inner[:, 1] < y1))
    # Multi-PIE order in image frame: the person's right eye (36-41) is on the image left, eyes above the mouth
    assert det.landmarks[36:42, 0].mean() < det.landmarks[42:48, 0].mean()
    assert det.landmarks[36:48, 1].mean() < det.landmarks[48:68, 1].mean() < det.landmarks[8, 1]
    assert 30 < det.interocular < 60


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_broken_files_raise(tmp_path):
    with pytest.raises(ReconstructionInputError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ReconstructionInputError, match="empty"):
        load_image(_write(tmp_path / "empty.png", b""))
    with pytest.raises(ReconstructionInputError, match="not an image"):
        load_image(_write(tmp_path / "notes.jpg", b"this is a text file, not a photo\n" * 10))
    data = ASTRONAUT.read_bytes()
    with pytest.raises(ReconstructionInputError, match="truncated"):
        load_image(_write(tmp_path / "half.png", data[: len(data) // 2]))


def test_formats_load_as_rgb8(tmp_path, astronaut):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    out = load_image(tmp_path / "gray.png")
    assert out.shape == (512, 512, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], gray)

    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # 16-bit PNG
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    out = load_image(tmp_path / "gray16.png")
    assert out.dtype == np.uint8 and out.shape == (512, 512, 3)
    np.testing.assert_array_equal(out[..., 1], gray)

    rgba = np.dstack([astronaut, np.full(gray.shape, 255, np.uint8)])
    rgba[:100, :100, 3] = 0  # transparent corner -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert out.shape == (512, 512, 3)
    assert np.all(out[:100, :100] == 255)
    np.testing.assert_array_equal(out[200:], astronaut[200:])

    palette = Image.fromarray(astronaut).quantize(256)
    palette.save(tmp_path / "palette.png")
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(load_image(tmp_path / "palette.png"), np.asarray(palette.convert("RGB")))


def test_exif_rotated_jpeg_is_upright(tmp_path, astronaut):
    crop = Image.fromarray(astronaut).crop((0, 0, 400, 512))  # W 400, H 512: orientation shows in the shape
    crop.save(tmp_path / "upright.jpg", quality=95)
    stored = crop.transpose(Image.Transpose.ROTATE_90)  # pixels stored on their side (W 512, H 400)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    up = load_image(tmp_path / "upright.jpg")
    rot = load_image(tmp_path / "rotated.jpg")
    assert rot.shape == up.shape == (512, 400, 3)
    assert np.abs(rot.astype(int) - up.astype(int)).mean() < 4
    lm_up, lm_rot = detect_faces(up)[0].landmarks, detect_faces(rot)[0].landmarks
    assert np.abs(lm_up - lm_rot).mean() < 2.0


def test_large_image_is_detected_at_reduced_size(astronaut, upright):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    det = detect_faces(big, max_side=1024)
    assert len(det) >= 1
    scale = 2048 / 512
    assert np.abs(det[0].landmarks / scale - upright[0].landmarks).mean() < 2.0
    assert np.abs(det[0].box / scale - upright[0].box).max() < 8


def test_no_face_and_too_small(astronaut):
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face"):
        detect_faces(noise)
    tiny = np.asarray(Image.fromarray(astronaut).resize((154, 154), Image.Resampling.LANCZOS))
    with pytest.raises(FaceTooSmallError, match="inter-ocular"):
        detect_faces(tiny)
    with pytest.raises(ReconstructionInputError, match="uint8"):
        detect_faces(astronaut.astype(np.float32))
