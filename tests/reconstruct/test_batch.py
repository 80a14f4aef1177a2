"""refine sfs on a folder (reconstruct/batch.py): one folder and one summary entry per photo, a bad file and a
faceless image as one-line entries with a non-zero exit, re-runs that skip finished photos unless forced, and
the input expansion (folders, quoted globs, clashing names)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "data" / "astronaut.png"
FAST = ("--no-sfs", "--no-detail", "--resolution", "64")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with one small photo of a face, a text file named .png, a faceless gray image and a note."""
    d = tmp_path_factory.mktemp("photos")
    Image.open(PHOTO).convert("RGB").resize((256, 256)).save(d / "face.png")
    (d / "bad.png").write_text("not an image")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(d / "blank.png")
    (d / "notes.txt").write_text("not a photo, not taken from a folder")
    return d


@pytest.fixture(scope="module")
def cli_run(folder):
    out = folder / "refine"
    res = subprocess.run([sys.executable, "-m", "reconstruct.cli", "sfs", str(folder), *FAST], capture_output=True,
                         text=True, timeout=600)
    return res, out


def _entries(out: Path) -> dict:
    return {Path(e["image"]).name: e for e in json.loads((out / "summary.json").read_text())["entries"]}


def test_a_folder_runs_every_photo_and_reports_failures_in_one_line_each(cli_run):
    res, out = cli_run
    assert res.returncode == 1 and "Traceback" not in res.stderr
    e = _entries(out)
    assert set(e) == {"face.png", "bad.png", "blank.png"}  # notes.txt is not a photo
    assert e["face.png"]["status"] == "done" and e["face.png"]["faces"] == 1
    shipped = (Path(__file__).resolve().parents[2] / "data" / "iterative_weights.pt").exists()  # refine's default
    assert e["face.png"]["coarse_method"] == ("iterative_network" if shipped else "photometric_fit")
    assert e["face.png"]["seconds"] > 0
    assert (out / "face" / "params.json").exists() and (out / "face" / "coarse.obj").exists()
    for name, words in (("bad.png", "not an image"), ("blank.png", "no face")):
        assert e[name]["status"] == "failed" and words in e[name]["error"] and "\n" not in e[name]["error"]
        assert f"failed: {e[name]['image']}" in res.stderr
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["image"] for r in rows] == [e[n]["image"] for n in ("bad.png", "blank.png", "face.png")]
    assert "1 done, 0 skipped, 2 failed of 3" in res.stdout


@pytest.fixture(scope="module")
def stack(cfg):
    from reconstruct.models import StackOptions, load_stack

    options = StackOptions(no_detail=True, no_sfs=True, resolution=64)
    return options, load_stack(cfg, options)


def test_a_rerun_skips_finished_photos_and_force_redoes_them(cli_run, folder, cfg, stack):
    from reconstruct.batch import expand_inputs, plan, run_batch

    _, out = cli_run
    options, loaded = stack
    params = out / "face" / "params.json"
    before = params.stat().st_mtime_ns
    jobs = plan(expand_inputs([str(folder)]), out)
    entries = run_batch(jobs, out, cfg, options, stack=loaded, progress=False)
    assert [e["status"] for e in entries] == ["failed", "failed", "skipped"]
    assert params.stat().st_mtime_ns == before and _entries(out)["face.png"]["status"] == "skipped"
    entries = run_batch(jobs, out, cfg, options, force=True, stack=loaded, progress=False)
    assert entries[2]["status"] == "done" and params.stat().st_mtime_ns != before
    # a half-written photo (params.json missing: killed before the last file) is not finished
    params.unlink()
    assert run_batch(jobs[2:], out, cfg, options, stack=loaded, progress=False)[0]["status"] == "done"


def test_a_photo_of_several_faces_is_one_entry_that_names_what_was_done(cfg, stack, tmp_path):
    from reconstruct.batch import plan, run_batch

    options, loaded = stack
    astro = Image.open(PHOTO).convert("RGB")
    photo = Image.new("RGB", (512 + 358, 512), (120, 120, 120))
    photo.paste(astro)
    photo.paste(astro.resize((358, 358)), (512, 0))  # a second face, 0.7 x
    photo.paste(astro.resize((200, 200)), (512, 312))  # a third under detect.min_interocular_px
    photo.save(tmp_path / "group.png")
    jobs = plan([tmp_path / "group.png"], tmp_path / "all")
    entry = run_batch(jobs, tmp_path / "all", cfg, options, stack=loaded, progress=False)[0]
    assert entry["status"] == "done" and entry["faces"] == 2
    assert "2 faces found, all reconstructed" in entry["note"] and "1 face under" in entry["note"]
    assert all((tmp_path / "all" / "group" / f"face-{i:02d}" / "params.json").exists() for i in (0, 1))
    assert next(csv.DictReader((tmp_path / "all" / "summary.csv").open()))["note"] == entry["note"]
    jobs = plan([tmp_path / "group.png"], tmp_path / "one")
    entry = run_batch(jobs, tmp_path / "one", cfg, options, all_faces=False, stack=loaded, progress=False)[0]
    assert entry["faces"] == 1 and "the largest of 2 faces" in entry["note"]
    params = json.loads((tmp_path / "one" / "group" / "params.json").read_text())
    assert params["faces"]["selection"] == "largest" and params["timings_s"]["detect_s"] > 0


def test_inputs_expand_folders_and_quoted_globs_and_clashing_names_get_their_suffix(tmp_path):
    from reconstruct.batch import expand_inputs, is_batch, output_names

    for name in ("x.png", "x.jpg", "y.PNG", "z.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.png").write_bytes(b"")
    found = expand_inputs([str(tmp_path), str(tmp_path / "sub" / "*.png"), str(tmp_path / "x.png")])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["x.jpg", "x.png", "y.PNG", "sub/x.png"]
    assert output_names(found) == ["x-jpg", "x-png", "y", "x-png-2"]
    assert expand_inputs([str(tmp_path / "none-*.png")]) == [tmp_path / "none-*.png"]  # a failed entry of its own
    assert is_batch([str(tmp_path)]) and is_batch([str(tmp_path / "*.png")]) and is_batch(["a.png", "b.png"])
    assert not is_batch([str(tmp_path / "x.png")])


@pytest.mark.skipif(not os.environ.get("FACESYNTH_SLOW_TESTS"),
                    reason="starts two worker processes (~10-25 s on 2 cores); set FACESYNTH_SLOW_TESTS=1")
def test_two_processes_give_the_params_of_one(folder, cfg, stack, tmp_path):
    from reconstruct.batch import plan, run_batch

    options, loaded = stack
    photos = [folder / "face.png", tmp_path / "face2.png"]
    Image.open(PHOTO).convert("RGB").resize((300, 300)).save(photos[1])
    one = run_batch(plan(photos, tmp_path / "one"), tmp_path / "one", cfg, options, stack=loaded, progress=False)
    two = run_batch(plan(photos, tmp_path / "two"), tmp_path / "two", cfg, options, processes=2, progress=False)
    assert [e["status"] for e in one] == [e["status"] for e in two] == ["done", "done"]
    for name in ("face", "face2"):
        p, q = (json.loads((tmp_path / run / name / "params.json").read_text()) for run in ("one", "two"))
        assert p["alpha"] == q["alpha"] and p["pose_photo"] == q["pose_photo"]
