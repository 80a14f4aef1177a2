"""``refine sfs`` on many photos: a folder, several paths or a glob, with the models loaded once.

One output folder per photo under the run's folder (named by the photo's stem; ``stem-ext`` and then
``stem-ext-2`` ... when names clash), holding what ``refine sfs`` writes for one photo
(:func:`reconstruct.outputs.write_outputs`; one ``face-NN`` folder per face when several are reconstructed:
:func:`chosen_faces`). The run's folder also gets ``summary.json`` and ``summary.csv``: one entry per photo
(image, status ``done`` / ``skipped`` / ``failed``, faces reconstructed, coarse method, seconds, a one-line
error, a note on the faces found but not reconstructed), rewritten atomically after each photo, so an
interrupted run keeps what it did. A photo that cannot be used (unreadable, no face, face too small) is a
failed entry and the run goes on. A photo whose ``params.json`` is complete is skipped on a re-run unless
``force``. ``jobs`` > 1 runs the photos in that many processes (the ``spawn`` context; each loads the models
once); every photo's result depends on that photo alone, so the outputs are those of one process.

:func:`reconstruct_photo` is the one-photo path that ``refine sfs PHOTO`` runs as well.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from coarse.detect import ReconstructionInputError
from coarse.fit import FitError
from facesynth.io import atomic_write_text, write_json

from .models import Stack, StackOptions, check_weights, load_stack, set_worker_threads

#: File suffixes taken from a folder (lower case; any file given by name is tried whatever its suffix).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
SUMMARY_FORMAT = "facesynth-refine-batch/1"
CSV_FIELDS = ("image", "status", "faces", "coarse_method", "seconds", "error", "out", "note")
#: Errors that make a photo a failed entry (the photo, not the code, is at fault).
PHOTO_ERRORS = (ReconstructionInputError, FitError, OSError)


# ---------------------------------------------------------------------------------------------- inputs
def is_batch(paths: list[str]) -> bool:
    """Whether ``refine sfs`` runs as a batch: several paths, a folder, or a glob pattern that is not itself
    an existing file."""
    return len(paths) != 1 or Path(paths[0]).is_dir() or (glob.has_magic(paths[0]) and not Path(paths[0]).exists())


def expand_inputs(paths: list[str]) -> list[Path]:
    """The photos named by ``paths``, in order, each once: a folder gives its files with an
    :data:`IMAGE_SUFFIXES` suffix (sorted, not recursive); a glob pattern (``*``, ``?``, ``[``; expanded here, so
    a quoted pattern works) gives its matches (folders among them as above); any other path is taken as it is,
    so a missing file or a pattern matching nothing becomes a failed entry of its own."""
    found: list[Path] = []

    def folder(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    for p in paths:
        path = Path(p)
        if path.is_dir():
            found += folder(path)
        elif glob.has_magic(p) and not path.exists():
            matches = [Path(m) for m in sorted(glob.glob(p))]
            found += [f for m in matches for f in (folder(m) if m.is_dir() else [m])] or [path]
        else:
            found.append(path)
    seen, unique = set(), []
    for p in found:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_names(images: list[Path]) -> list[str]:
    """One folder name per photo: its stem; ``stem-ext`` where stems clash; ``-2``, ``-3`` ... after a name
    that still clashes (the same file name in two folders), in input order."""
    stems = Counter(p.stem for p in images)
    names = [p.stem if stems[p.stem] == 1 else f"{p.stem}-{p.suffix.lstrip('.').lower() or 'noext'}"
             for p in images]
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def default_out(images: list[Path]) -> Path:
    """The run's folder when none is given: ``refine/`` in the photos' common folder."""
    parents = [str(p.resolve().parent) for p in images] or [os.getcwd()]
    return Path(os.path.commonpath(parents)) / "refine"


def face_dirs(base: Path, n_faces: int) -> list[Path]:
    """Output folders of a photo's faces: ``base`` for one face, ``base/face-NN`` for several."""
    return [base] if n_faces == 1 else [base / f"face-{i:02d}" for i in range(n_faces)]


def _params(path: Path) -> dict | None:
    """A complete ``params.json`` (written last by :func:`reconstruct.outputs.write_outputs`), or None."""
    try:
        p = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return p if isinstance(p, dict) and isinstance(p.get("alpha"), list) and "image" in p else None


def finished(base: Path) -> dict | None:
    """The first face's params when every face of the photo whose outputs go to ``base`` is complete, else None
    (``faces_in_image`` in each ``params.json`` says how many folders a photo has)."""
    p = _params(base / "params.json")
    if p is not None:
        return p
    first = _params(base / "face-00" / "params.json")
    if first is None:
        return None
    n = int(first.get("faces_in_image", 0))
    done = n > 1 and all(_params(d / "params.json") is not None for d in face_dirs(base, n))
    return first if done else None


# ---------------------------------------------------------------------------------------------- one photo
@dataclass(frozen=True)
class PhotoResult:
    """What :func:`reconstruct_photo` did: output folders, coarse method, per-face console lines, and the note
    on the faces found but not reconstructed (:func:`faces_report`; empty when there is nothing to say)."""

    dirs: list
    coarse_method: str
    lines: list
    note: str = ""


def detect_photo(image: Path, cfg, all_faces: bool):
    """(photo (H, W, 3) uint8, :class:`coarse.detect.FaceSearch` of it; with ``all_faces`` False the search only
    looks for the largest face); one-line :class:`coarse.detect.ReconstructionInputError` for an unusable file or
    no face big enough."""
    from coarse.detect import find_faces, load_image

    photo = load_image(image)
    return photo, find_faces(photo, cfg.detect, largest=not all_faces)


def chosen_faces(found, all_faces: bool) -> list:
    """The faces ``refine sfs`` reconstructs of a :class:`coarse.detect.FaceSearch`: every face above
    ``detect.min_interocular_px`` (``all_faces``, ``refine.faces: all``, the default), or the largest."""
    return list(found.faces) if all_faces else list(found.faces[:1])


def faces_report(found, all_faces: bool, min_interocular_px: float) -> dict:
    """``params.json``'s ``faces``: which faces of the photo were reconstructed and which were not.

    selection: ``all`` or ``largest``; reconstructed: how many (one folder each); found: faces above the size
    limit the search found (with ``largest`` it stops at the first pass that finds one, so smaller faces may not
    have been searched); below_limit: faces found under ``min_interocular_px`` and skipped (box x0, y0, x1, y1
    and inter-ocular distance in photo pixels, the detector)."""
    return {"selection": "all" if all_faces else "largest", "reconstructed": len(chosen_faces(found, all_faces)),
            "found": len(found.faces), "min_interocular_px": float(min_interocular_px),
            "below_limit": [{"box": [round(float(v), 1) for v in d.box], "interocular_px": round(d.interocular, 1),
                             "detector": d.detector} for d in found.small]}


def faces_note(report: dict) -> str:
    """One line on what :func:`faces_report` says was not plain (several faces, a largest kept, small faces
    skipped); empty for one face found and reconstructed."""
    parts = []
    if report["found"] > 1:
        every = report["selection"] == "all"
        parts.append(f"{report['found']} faces found, all reconstructed (face-NN folders)" if every
                     else f"the largest of {report['found']} faces found reconstructed (--largest)")
    small = report["below_limit"]
    if small:
        sizes = ", ".join(f"{s['interocular_px']:.0f}" for s in small)
        parts.append(f"{len(small)} face{'s' if len(small) > 1 else ''} under detect.min_interocular_px "
                     f"{report['min_interocular_px']:.0f} px skipped (inter-ocular {sizes} px)")
    return "; ".join(parts)


def reconstruct_photo(image: Path, photo: np.ndarray, found, base: Path, cfg, stack: Stack, options: StackOptions,
                      all_faces: bool = True, timings: dict | None = None) -> PhotoResult:
    """Reconstruct the :func:`chosen_faces` of ``found`` (:class:`coarse.detect.FaceSearch` of ``photo``) and
    write each one's outputs to :func:`face_dirs` of ``base``; ``params.json`` gets :func:`faces_report` and
    ``timings`` (seconds of what ran for the whole photo, e.g. ``detect_s``) beside the face's own."""
    from .outputs import write_outputs
    from .pipeline import reconstruct_face

    faces = chosen_faces(found, all_faces)
    report = faces_report(found, all_faces, cfg.detect.min_interocular_px)
    resolution = options.resolution or cfg.refine.resolution
    dirs, lines, method = face_dirs(base, len(faces)), [], ""
    for i, (det, d) in enumerate(zip(faces, dirs)):
        rec = reconstruct_face(photo, det, stack.model, cfg, stack.coarse, resolution, sfs=not options.no_sfs,
                               sfs_params=cfg.refine.sfs, detail=stack.detail)
        write_outputs(rec, photo, det, stack.model, d, {**stack.notes, "image": str(image), "face_index": i,
                                                        "faces_in_image": len(faces), "faces": report},
                      timings)
        method = rec.coarse_method
        how = f" ({stack.network_note})" if method == "iterative_network" and stack.network_note else ""
        lines.append(f"{d}: {method}{how}, {stack.detail_note}, {int(rec.visible.sum())} visible vertices, "
                     + ", ".join(f"{k} {v:.2f}" for k, v in {**(timings or {}), **rec.timings}.items()))
    return PhotoResult(dirs, method, lines, faces_note(report))


# ---------------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Job:
    """One photo of a run: ``image`` and its output folder ``out``."""

    image: Path
    out: Path


def plan(images: list[Path], out: Path) -> list[Job]:
    """One :class:`Job` per photo, its folder named by :func:`output_names` under ``out``."""
    return [Job(p, out / n) for p, n in zip(images, output_names(images))]


def run_one(job: Job, cfg, stack: Stack, options: StackOptions, force: bool, all_faces: bool) -> dict:
    """Run one photo of a batch; never raises for a bad photo: returns its summary entry (:data:`CSV_FIELDS`;
    ``note``: :func:`faces_note`; an unexpected error is a failed entry too, with its traceback under
    ``traceback``)."""
    entry = {"image": str(job.image), "status": "done", "faces": 0, "coarse_method": "", "seconds": 0.0,
             "error": "", "out": str(job.out), "note": ""}
    done = None if force else finished(job.out)
    if done is not None:
        return {**entry, "status": "skipped", "faces": int(done.get("faces_in_image", 1)),
                "coarse_method": done.get("coarse_method", "")}
    t0 = time.perf_counter()
    try:
        photo, found = detect_photo(job.image, cfg, all_faces)
        res = reconstruct_photo(job.image, photo, found, job.out, cfg, stack, options, all_faces,
                                {"detect_s": time.perf_counter() - t0})
        entry.update(faces=len(res.dirs), coarse_method=res.coarse_method, note=res.note)
    except PHOTO_ERRORS as e:
        text = str(e).strip()
        entry.update(status="failed", error=text.splitlines()[0] if text else type(e).__name__)
    except Exception as e:  # noqa: BLE001  a bug must not cost the other photos; the traceback is kept
        entry.update(status="failed", error=f"internal error: {type(e).__name__}: {e}".splitlines()[0],
                     traceback=traceback.format_exc())
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


def write_summary(out: Path, entries: list[dict], total: int, settings: dict) -> None:
    """``summary.json`` (counts, settings and the entries) and ``summary.csv`` (:data:`CSV_FIELDS`), atomically."""
    counts = Counter(e["status"] for e in entries)
    write_json(out / "summary.json", {"format": SUMMARY_FORMAT, "images": total, "finished": len(entries),
                                      **{k: counts.get(k, 0) for k in ("done", "skipped", "failed")},
                                      "settings": settings, "entries": entries})
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(entries)
    atomic_write_text(out / "summary.csv", buf.getvalue())


_WORKER: dict = {}


def _init_worker(cfg, options: StackOptions, threads: int) -> None:
    """A worker process: its share of the cores for the networks (:func:`reconstruct.models.set_worker_threads`:
    no torch import when ONNX Runtime runs them), and the models, loaded once."""
    set_worker_threads(threads)
    _WORKER.update(cfg=cfg, options=options, stack=load_stack(cfg, options))


def _work(args: tuple) -> tuple[int, dict]:
    i, job, force, all_faces = args
    w = _WORKER
    return i, run_one(job, w["cfg"], w["stack"], w["options"], force, all_faces)


def run_batch(jobs: list[Job], out: Path, cfg, options: StackOptions, force: bool = False, all_faces: bool = True,
              processes: int = 1, stack: Stack | None = None, progress: bool = True) -> list[dict]:
    """Run every job, writing the summary to ``out`` after each; returns the entries in job order.

    Args:
        jobs: from :func:`plan`; out: the run's folder (created).
        cfg: the config; options: what to load and run (:class:`reconstruct.models.StackOptions`).
        force: redo photos whose outputs are complete; all_faces: every face of a photo above the size limit
            (``refine.faces: all``), not only the largest (:func:`chosen_faces`).
        processes: worker processes (``spawn``; each loads the models once); 1 runs here.
        stack: the loaded models for ``processes`` 1 (None: loaded here).
        progress: show a tqdm bar.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    settings = {**{k: v for k, v in asdict(options).items()}, "force": force, "all_faces": all_faces,
                "jobs": processes}
    done: dict[int, dict] = {}
    bar = tqdm(total=len(jobs), desc="refine", unit="photo", disable=not progress)
    tasks = [(i, j, force, all_faces) for i, j in enumerate(jobs)]

    def record(i: int, entry: dict) -> None:
        done[i] = entry
        write_summary(out, [done[k] for k in sorted(done)], len(jobs), settings)
        bar.update(1)
        bar.set_postfix(failed=sum(e["status"] == "failed" for e in done.values()))

    try:
        if processes <= 1:
            stack = stack or load_stack(cfg, options)
            for i, job, f, a in tasks:
                record(i, run_one(job, cfg, stack, options, f, a))
        else:
            import multiprocessing

            check_weights(cfg, options)
            threads = max(1, (os.cpu_count() or 1) // processes)
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(processes, _init_worker, (cfg, options, threads)) as pool:
                for i, entry in pool.imap_unordered(_work, tasks):
                    record(i, entry)
    finally:
        bar.close()
    return [done[k] for k in sorted(done)]
