"""facesynth.io: atomic writes leave either the old or the new file, never a partial one or a temporary."""
import json

import numpy as np
import pytest
from PIL import Image

from facesynth.io import atomic_path, atomic_write_text, save_png, temp_path, write_json


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_temporary_is_beside_the_target_and_unique_per_process(tmp_path):
    tmp = temp_path(tmp_path / "shard-000001.tar")
    assert tmp.parent == tmp_path and tmp.name.startswith("shard-000001.tar.tmp-")
    with atomic_path(tmp_path / "b.bin") as t:
        assert t == temp_path(tmp_path / "b.bin") and not (tmp_path / "b.bin").exists()
        t.write_bytes(b"xyz")
    assert (tmp_path / "b.bin").read_bytes() == b"xyz"


def test_write_json_is_json_dumps(tmp_path):
    obj = {"b": [1, 2.5], "a": {"z": None}}
    for kw in ({"indent": 1}, {"indent": 1, "sort_keys": True}, {"indent": None}):
        write_json(tmp_path / "x.json", obj, **kw)
        assert (tmp_path / "x.json").read_text() == json.dumps(obj, **kw)


def test_save_png_float_and_uint8(tmp_path):
    f = np.array([[0.0, 0.5], [1.0, 2.0]])
    back = np.asarray(Image.open(save_png(tmp_path / "sub" / "f.png", f)))
    np.testing.assert_array_equal(back, [[0, 128], [255, 255]])
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(save_png(tmp_path / "c.png", rgb))), rgb)


def test_save_png_level_changes_the_size_not_the_pixels(tmp_path):
    rng = np.random.default_rng(0)
    img = (np.linspace(0, 1, 64)[None, :, None] * np.ones((48, 1, 3)) + rng.normal(0, 0.02, (48, 64, 3)))
    fast, small = save_png(tmp_path / "fast.png", img), save_png(tmp_path / "small.png", img, compress_level=9)
    np.testing.assert_array_equal(np.asarray(Image.open(fast)), np.asarray(Image.open(small)))
    assert fast.stat().st_size >= small.stat().st_size
