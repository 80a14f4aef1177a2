"""refine sfs end to end on the shipped photo, and its one-line errors for bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from morphable.obj import read_obj

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "data" / "astronaut.png"


def _refine(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reconstruct.cli", "sfs", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("astro")
    res = _refine(PHOTO, "--out", out, "--resolution", "128", "--weights", REPO / "data" / "missing.pt")
    assert res.returncode != 0 and "not found" in res.stderr  # a weights path the user gives must exist
    res = _refine(PHOTO, "--out", out, "--resolution", "128")
    assert res.returncode == 0, res.stderr[-800:]
    return out


def test_writes_every_output_and_obj_parses(result):
    from reconstruct.outputs import OUTPUT_FILES

    for f in OUTPUT_FILES:
        assert (result / f).stat().st_size > 0, f
    from morphable.model import load_model

    model = load_model(REPO / "data" / "ict_face_model.h5")
    verts, tris = read_obj(result / "coarse.obj")
    assert verts.shape == (model.n_vertices, 3) and tris.shape == model.triangles.shape
    rv, rt = read_obj(result / "refined.obj")
    assert len(rv) > 1000 and rt.max() < len(rv)
    # the refined mesh lies on the coarse face, in the same frame and units (mm)
    face = verts[model.regions["narrow_face"]]
    assert np.all(rv.min(0) > face.min(0) - 15) and np.all(rv.max(0) < face.max(0) + 15)
    params = json.loads((result / "params.json").read_text())
    assert len(params["alpha"]) == 153 and len(params["landmarks_detected"]) == 68
    assert "texture_s" in params["timings_s"]


def test_refuses_to_overwrite_without_force(result):
    res = _refine(PHOTO, "--out", result, "--resolution", "128", "--no-sfs")
    assert res.returncode != 0 and "--force" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("make", ["noise", "empty", "text"])
def test_bad_input_is_a_one_line_error(tmp_path, make):
    p = tmp_path / "in.png"
    if make == "noise":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(p)
    elif make == "empty":
        p.write_bytes(b"")
    else:
        p.write_text("not an image")
    res = _refine(p, "--out", tmp_path / "out")
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and res.stderr.strip().startswith("Error:")
    assert res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()
