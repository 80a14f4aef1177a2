"""Shard round trip: a sample encoded (:func:`datagen.shards.encode_sample`), written
(:func:`datagen.shards.write_shard`) and read back (:func:`datagen.loader.iter_records`) gives its arrays
back: 8-bit images exactly after quantisation, depth and displacement within half a quantisation step,
the parameters equal."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from datagen.loader import iter_records
from datagen.sample import make_sample
from datagen.shards import DISP_SCALE_MM, encode_sample, shard_name, to_uint8, write_shard
from facesynth.config import load_config
from render.camera import Pose

SIZE = 64
SEED = 3


@pytest.fixture(scope="module")
def written(model, tmp_path_factory):
    """Two samples (one with fine detail and normals, one plain) written to one shard each and read back."""
    from render.renderer import FaceRenderer

    out = tmp_path_factory.mktemp("shards")
    samples = []
    for index, extra in enumerate(({"datagen.detail": True, "datagen.detail_uv_size": 64,
                                    "datagen.extra_normals": True}, {})):
        cfg = load_config(overrides={"render.image_size": SIZE, "render.backend": "numba", **extra})
        s = make_sample(SEED, index, model, cfg, FaceRenderer.from_config(model, cfg.render))
        write_shard(out / shard_name(index), [encode_sample(s, SEED, cfg.datagen)])
        samples.append((s, cfg.datagen))
    return samples, list(iter_records(out))


def test_every_sample_comes_back_in_order(written):
    samples, records = written
    assert [r["key"] for r in records] == [f"{s.scene.index:09d}" for s, _ in samples] == ["000000000", "000000001"]
    assert "displacement" in records[0] and "normals" in records[0]
    assert "displacement" not in records[1] and "normals" not in records[1]


def test_images_are_exact_after_8_bit_quantisation(written):
    for (s, dg), r in zip(*written, strict=True):
        np.testing.assert_array_equal(r["image"], to_uint8(s.image) / np.float32(255.0))
        np.testing.assert_array_equal(r["shading"], to_uint8(s.shading) / np.float32(255.0))
        np.testing.assert_array_equal(r["mask"], s.mask)
        # JPEG is lossy: the decoded rgb is the sample's 8-bit rgb through JPEG at datagen.jpeg_quality
        jpg = io.BytesIO()
        Image.fromarray(to_uint8(s.rgb)).save(jpg, format="JPEG", quality=dg.jpeg_quality)
        np.testing.assert_array_equal(r["rgb"], np.asarray(Image.open(jpg)) / np.float32(255.0))
        if s.displacement is not None:
            np.testing.assert_array_equal(r["wrinkles"], s.wrinkles)
            assert np.abs(r["normals"] - s.normals).max() <= 1 / 255 + 1e-6


def test_depth_and_displacement_within_half_a_step(written):
    for (s, dg), r in zip(*written, strict=True):
        m = s.face_mask
        assert m.mean() > 0.1
        np.testing.assert_array_equal(r["depth_mask"], m)
        assert np.abs(r["depth"][m] - s.depth[m]).max() <= dg.depth_scale_mm / 2 + 1e-4
        assert (r["depth"][~m] == 0).all()
        if s.displacement is not None:
            assert np.abs(r["displacement"][m] - s.displacement[m]).max() <= DISP_SCALE_MM / 2 + 1e-6
            assert np.abs(r["detail_uv"] - s.scene.detail.displacement).max() <= DISP_SCALE_MM / 2 + 1e-6


def test_params_are_equal(written):
    for (s, dg), r in zip(*written, strict=True):
        p, sc = r["params"], s.scene
        assert p["index"] == sc.index and p["seed"] == SEED and p["u"] == sc.u
        assert p["depth_scale_mm"] == dg.depth_scale_mm
        for key, value in (("alpha_gt", sc.alpha_gt), ("alpha_t", sc.alpha_t), ("albedo", sc.albedo_coeffs),
                           ("iris", sc.iris), ("landmarks", s.landmarks)):
            got = np.asarray(p[key], np.asarray(value).dtype)
            np.testing.assert_array_equal(got, value, err_msg=key)
        pose = Pose.from_dict(p["pose"])
        assert pose.scale == sc.pose.scale
        np.testing.assert_array_equal(pose.rotation, sc.pose.rotation)
        np.testing.assert_array_equal(pose.translation, sc.pose.translation)
        assert p["light"] == sc.light.to_dict()
