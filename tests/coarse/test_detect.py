"""Photo input: robust image loading (formats, EXIF, broken files) and dlib face + landmark detection (the
cascade: HOG, the CNN, turned copies; gray, rolled and small faces; several faces; the quick pass; the shipped
HOG detector file)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesynth.config import REPO_ROOT, load_config
from coarse.detect import (HOG_DETECTOR_PATH, FaceTooSmallError, NoFaceError, ReconstructionInputError,
                           detect_faces, eye_roll_deg, find_faces, load_image, quick_scale)

ASTRONAUT = REPO_ROOT / "data" / "astronaut.png"


@pytest.fixture(scope="module")
def params():
    return load_config().detect


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return load_image(ASTRONAUT)


@pytest.fixture(scope="module")
def upright(astronaut):
    return detect_faces(astronaut)  # no params: the detect section of pipeline.yaml


def _landmark_error(det, expected: np.ndarray, interocular: float) -> float:
    """Mean distance of the detected landmarks from ``expected`` (68, 2), in units of ``interocular``."""
    return float(np.linalg.norm(det.landmarks - expected, axis=1).mean() / interocular)


def test_astronaut_has_one_face_with_68_landmarks(astronaut, upright):
    assert astronaut.shape == (512, 512, 3) and astronaut.dtype == np.uint8
    assert len(upright) == 1  # the mission patch (HOG scores it ~0.1, the CNN does not confirm it) is refused
    det = upright[0]
    assert det.detector == "hog" and det.score >= 0.5 and det.rotation_deg == 0
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


def test_exif_rotated_jpeg_is_upright(tmp_path, astronaut, params):
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
    lm_up, lm_rot = detect_faces(up, params)[0].landmarks, detect_faces(rot, params)[0].landmarks
    assert np.abs(lm_up - lm_rot).mean() < 2.0


def test_large_image_is_detected_at_reduced_size(astronaut, upright, params):
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    det = detect_faces(big, dataclasses.replace(params, max_search_side=1024))
    assert len(det) == 1
    scale = 2048 / 512
    assert np.abs(det[0].landmarks / scale - upright[0].landmarks).mean() < 2.0
    assert np.abs(det[0].box / scale - upright[0].box).max() < 8


def test_no_face_and_too_small(astronaut, upright, params):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    with pytest.raises(NoFaceError, match="no face") as e:
        detect_faces(noise, params)
    assert "\n" not in str(e.value)
    # inter-ocular ~18 px < min_interocular_px 20: found (faces from min_face_px 40 are searched), refused
    side = round(512 * 0.9 * params.min_interocular_px / upright[0].interocular)
    tiny = np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS))
    with pytest.raises(FaceTooSmallError, match="inter-ocular") as e:
        detect_faces(tiny, params)
    assert "\n" not in str(e.value)
    with pytest.raises(ReconstructionInputError, match="uint8"):
        detect_faces(astronaut.astype(np.float32), params)


def test_gray_photo(astronaut, upright, params):
    gray = np.asarray(Image.fromarray(astronaut).convert("L"))
    det = detect_faces(gray, params)
    assert len(det) == 1 and det[0].detector == "hog"
    assert _landmark_error(det[0], upright[0].landmarks, upright[0].interocular) < 0.05


def _rotated(points: np.ndarray, angle_deg: float, centre: np.ndarray) -> np.ndarray:
    """Image-frame points turned counter-clockwise on screen (y down) by ``angle_deg`` about ``centre``."""
    t = np.deg2rad(angle_deg)
    R = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    return (points - centre) @ R.T + centre


def test_face_rolled_by_30_degrees(astronaut, upright, params):
    rolled = np.asarray(Image.fromarray(astronaut).rotate(30, Image.Resampling.BICUBIC))  # counter-clockwise
    det = detect_faces(rolled, params)
    assert len(det) == 1 and det[0].detector in ("hog", "hog+cnn", "cnn")
    assert det[0].rotation_deg == -30  # the landmarks were predicted in the photo turned back upright
    expected = _rotated(upright[0].landmarks, 30, np.array([256.0, 256.0]))
    assert _landmark_error(det[0], expected, upright[0].interocular) < 0.1


def test_face_on_its_side_with_and_without_the_cnn(astronaut, upright, params):
    crop = astronaut[40:296, 100:356]  # 256 px around the face: the CNN's scans stay cheap
    sideways = np.ascontiguousarray(np.rot90(crop))  # a quarter turn counter-clockwise: pixel (r, c) -> (255 - c, r)
    lm = upright[0].landmarks - [100, 40]
    expected = np.stack([lm[:, 1], 256 - lm[:, 0]], axis=1)
    for p, detectors in ((params, ("cnn", "hog-rotated", "hog+cnn-rotated")),
                         (dataclasses.replace(params, cnn_sides=()), ("hog-rotated",))):
        det = detect_faces(sideways, p)
        assert len(det) == 1 and det[0].detector in detectors
        assert det[0].rotation_deg == -90
        assert _landmark_error(det[0], expected, upright[0].interocular) < 0.1
    with pytest.raises(NoFaceError):  # neither the CNN nor turned copies: HOG alone misses it
        detect_faces(sideways, dataclasses.replace(params, cnn_sides=(), rotations_deg=()))


def test_small_face_in_a_big_photo(astronaut, upright, params):
    f = 80 / (upright[0].box[2] - upright[0].box[0])  # the face's box becomes 80 px wide
    side = round(512 * f)
    photo = np.random.default_rng(1).integers(100, 156, (1500, 2000, 3), dtype=np.uint8)  # noise around mid-gray
    photo[900:900 + side, 1200:1200 + side] = np.asarray(
        Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS))
    det = detect_faces(photo, params)
    assert len(det) == 1 and det[0].detector == "hog"  # the mission patch is refused here as well
    expected = upright[0].landmarks * (side / 512) + [1200, 900]
    assert _landmark_error(det[0], expected, upright[0].interocular * side / 512) < 0.1


def _tiny(astronaut, upright, params) -> np.ndarray:
    """The whole photo shrunk until the face's inter-ocular distance is ~18 px (< min_interocular_px 20): faces
    from min_face_px 40 are searched, so HOG finds it (sure score), and it is too small."""
    side = round(512 * 0.9 * params.min_interocular_px / upright[0].interocular)
    return np.asarray(Image.fromarray(astronaut).resize((side, side), Image.Resampling.LANCZOS))


def test_a_stage_that_finds_only_a_small_face_does_not_end_the_search(astronaut, upright, params):
    # a big face on its side (HOG upright misses it; the CNN finds it) beside a tiny upright one (HOG finds it)
    sideways = np.ascontiguousarray(np.rot90(astronaut[40:296, 100:356]))
    tiny = _tiny(astronaut, upright, params)
    photo = np.full((256, 272 + len(tiny), 3), 120, np.uint8)
    photo[:, :256], photo[:len(tiny), 272:] = sideways, tiny
    found = find_faces(photo, params)
    assert found.stages[:2] == ["hog", "cnn"]  # HOG found only the tiny face: the search went on
    assert len(found.faces) == 1 and found.faces[0].rotation_deg == -90 and found.faces[0].box[2] < 256
    assert found.faces[0].interocular > 35
    assert len(found.small) == 1 and found.small[0].box[0] > 272 and found.small[0].interocular < 20
    with pytest.raises(FaceTooSmallError, match="inter-ocular"):  # the tiny face alone is still refused
        detect_faces(np.ascontiguousarray(photo[:, 256:]), params)


def test_several_faces_largest_first_and_small_ones_skipped(astronaut, upright, params):
    near = np.asarray(Image.fromarray(astronaut).resize((358, 358), Image.Resampling.LANCZOS))  # 0.7 x
    tiny = _tiny(astronaut, upright, params)
    photo = np.full((512, 512 + 358, 3), 120, np.uint8)
    photo[:, :512], photo[:358, 512:], photo[512 - len(tiny):, 512:512 + len(tiny)] = astronaut, near, tiny
    found = find_faces(photo, params)
    assert len(found.faces) == 2 and [d.detector for d in found.faces] == ["hog", "hog"]
    big, second = found.faces
    assert big.box[2] < 512 < second.box[0] and big.area > second.area
    np.testing.assert_allclose(big.landmarks, upright[0].landmarks, atol=1e-9)  # the same box as alone
    assert second.interocular == pytest.approx(0.7 * big.interocular, rel=0.1)
    assert len(found.small) == 1 and found.small[0].box[1] > 512 - len(tiny) - 10
    largest = detect_faces(photo, params, largest=True)
    np.testing.assert_allclose(largest[0].landmarks, big.landmarks, atol=1e-9)


def test_the_quick_pass_keeps_the_full_search_box(astronaut, upright, params):
    assert quick_scale((512, 512), params) == pytest.approx(2 * (5 / 6) ** 3)  # one of the full search's levels
    assert quick_scale((100, 100), params) is None  # no bigger than the full search: no quick pass
    found = find_faces(astronaut, params, largest=True)
    assert found.stages == ["hog-quick"] and found.faces[0].detector == "hog"
    np.testing.assert_allclose(found.faces[0].box, upright[0].box, atol=1.0)  # pixel edges
    assert _landmark_error(found.faces[0], upright[0].landmarks, upright[0].interocular) < 0.02
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.Resampling.BICUBIC))
    found = find_faces(big, params, largest=True)  # a quick pass at <= 640 px instead of the full one at 3072
    assert found.stages == ["hog-quick"]
    assert _landmark_error(found.faces[0], upright[0].landmarks * 4, upright[0].interocular * 4) < 0.05


def test_an_upright_face_keeps_its_box_and_the_eye_line_measures_roll(astronaut, upright, params):
    det = upright[0]
    assert abs(eye_roll_deg(det.landmarks)) < 10  # level: no turned copy was searched
    always = detect_faces(astronaut, dataclasses.replace(params, roll_check_deg=0.0))  # the turns tried, as before
    np.testing.assert_allclose(always[0].landmarks, det.landmarks, atol=1e-9)
    np.testing.assert_allclose(always[0].box, det.box)
    turned = _rotated(det.landmarks, 25, np.array([256.0, 256.0]))  # counter-clockwise on screen
    assert eye_roll_deg(turned) == pytest.approx(eye_roll_deg(det.landmarks) - 25, abs=1e-6)


def test_the_shipped_hog_detector_is_dlibs_own():
    import pickle

    import dlib

    assert HOG_DETECTOR_PATH.is_file()
    assert pickle.dumps(dlib.fhog_object_detector(str(HOG_DETECTOR_PATH))) == pickle.dumps(
        dlib.get_frontal_face_detector())
