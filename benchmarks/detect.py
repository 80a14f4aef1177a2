"""Face detection (coarse.detect.find_faces) on synthetic renders: per set of faces, the fraction found, by which
stage of the cascade, the landmark error and the seconds per image on this machine; with ``--baseline REV`` the
cascade of git revision REV on the same images in the same run (alternating which goes first), and the ratio.

Faces: the scenes of ``datagen.sample.make_sample`` (seed ``--seed``, ``--size`` pixels, colour over their
background, or gray with ``--gray``) rendered with each ``--albedo`` (``textured``: the albedo model's skin;
``uniform``: its mean over the face, eyes and teeth as the materials give them, datagen.faces.scene_albedo);
with ``--roll DEG`` each render is also turned about its centre by an angle drawn uniformly in [-DEG, DEG].
A face counts as found when the first detection's box holds the centroid of the true inner landmarks (17-67);
``lm_err_iod`` is the mean distance between the detected and the true inner landmarks over the true inter-ocular
distance, median (and mean) over found faces (dlib's points and the model's differ a little by definition, so
this is not zero for a perfect detector); ``same_as_baseline``: the share of the faces both found whose landmarks
did not move, and ``lm_err_iod_both``: the error of each on those faces. ``--mode largest`` runs the cascade as
when only the largest face is wanted (``find_faces(largest=True)``: the quick first pass). dlib's model loading
and rendering are not timed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect.py [--n 60] [--size 512] [--seed 12345] [--gray]
        [--albedo textured uniform] [--roll 0] [--mode all|largest] [--baseline REV]
        [--set KEY YAML ...]    (a ``detect`` key of pipeline.yaml, e.g. --set cnn_sides "[256, 512]")
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from coarse.detect import LEFT_EYE, RIGHT_EYE, ReconstructionInputError, find_faces  # noqa: E402
from datagen.faces import ALBEDO_KINDS, render_truth  # noqa: E402
from datagen.scene import camera_points, draw_scene  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from morphable.model import load_model  # noqa: E402
from render.renderer import FaceRenderer  # noqa: E402
from render.shading import to_gray  # noqa: E402


def baseline_module(rev: str):
    """``coarse/detect.py`` as it was at git revision ``rev``, imported as a module of its own."""
    try:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:coarse/detect.py"], check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"--baseline {rev}: cannot read coarse/detect.py of that revision ({e})")
    path = Path(tempfile.mkdtemp()) / "detect_baseline.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("detect_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def turned(image: np.ndarray, points: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` turned counter-clockwise (as displayed) by ``angle`` degrees about its centre on the same canvas
    (black corners), and (N, 2) image-frame ``points`` turned with it."""
    t = np.deg2rad(angle)
    R = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])  # y down
    c = np.array(image.shape[1::-1], np.float64) / 2
    out = np.asarray(Image.fromarray(image).rotate(angle, Image.Resampling.BILINEAR))
    return out, (points - c) @ R.T + c


def render_sets(args, cfg, model) -> dict[str, list]:
    """{set name: [(photo (H, W, 3) uint8, true landmarks (68, 2), yaw degrees)]} for each ``--albedo``."""
    renderer = FaceRenderer.from_config(model, cfg.render)
    rng = np.random.default_rng(args.seed)
    angles = rng.uniform(-args.roll, args.roll, args.n) if args.roll else np.zeros(args.n)
    sets = {}
    for albedo in args.albedo:
        faces = []
        for i in tqdm(range(args.n), desc=f"render {albedo}"):
            s = draw_scene(args.seed, i, model, cfg)
            f = render_truth(s, model, renderer, camera_points(s, model, model.vertices(s.alpha_gt)), albedo)
            R = s.pose.rotation
            image = (np.clip(to_gray(f.rgb) if args.gray else f.rgb, 0, 1) * 255).round().astype(np.uint8)
            if image.ndim == 2:
                image = np.repeat(image[..., None], 3, axis=-1)
            points = np.asarray(f.landmarks, np.float64)
            if angles[i]:
                image, points = turned(image, points, float(angles[i]))
            faces.append((image, points, float(np.degrees(np.arctan2(-R[2, 0], R[2, 2])))))  # R = Rz Rx Ry(yaw)
        sets[albedo + (f"-rolled-{args.roll:g}" if args.roll else "")] = faces
    return sets


def score(dets: list, truth: np.ndarray):
    """(found, landmark error over the inter-ocular distance or None) of the first detection."""
    if not dets:
        return False, None
    det = dets[0]
    c = truth[17:].mean(0)
    if not (det.box[0] < c[0] < det.box[2] and det.box[1] < c[1] < det.box[3]):
        return False, None
    iod = np.linalg.norm(truth[RIGHT_EYE].mean(0) - truth[LEFT_EYE].mean(0))
    return True, float(np.linalg.norm(det.landmarks[17:] - truth[17:], axis=1).mean() / iod)


def summary(rows: list[dict], n: int) -> dict:
    """One set's figures for one cascade: rows hold found, err, detector, seconds, yaw."""
    stages = Counter(r["detector"] for r in rows if r["found"])
    errors = [r["err"] for r in rows if r["found"]]
    s = [r["seconds"] for r in rows]
    by_stage = {k: float(np.mean([r["seconds"] for r in rows if r["found"] and r["detector"] == k]))
                for k in sorted(stages)}
    return {"found": sum(r["found"] for r in rows) / n, "by_stage": {k: v / n for k, v in sorted(stages.items())},
            "missed_yaw_deg": [round(r["yaw"]) for r in rows if not r["found"]],
            "lm_err_iod_median": float(np.median(errors)) if errors else None,
            "lm_err_iod_mean": float(np.mean(errors)) if errors else None,
            "s_per_image_mean": float(np.mean(s)), "s_per_image_median": float(np.median(s)),
            "s_per_image_max": float(np.max(s)), "s_per_image_by_stage": by_stage}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="faces per set")
    ap.add_argument("--size", type=int, default=512, help="render side, pixels")
    ap.add_argument("--seed", type=int, default=12345, help="dataset seed of make_sample's scenes")
    ap.add_argument("--gray", action="store_true", help="detect on the gray render (render.shading.to_gray)")
    ap.add_argument("--albedo", nargs="+", choices=ALBEDO_KINDS, default=list(ALBEDO_KINDS), help="the sets")
    ap.add_argument("--roll", type=float, default=0.0, help="turn each render by U[-DEG, DEG] degrees")
    ap.add_argument("--mode", choices=("all", "largest"), default="all",
                    help="every face (refine's default) or only the largest (find_faces(largest=True))")
    ap.add_argument("--baseline", metavar="REV", default=None,
                    help="also run coarse/detect.py of this git revision on the same images, alternating")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "YAML"),
                    help="override a detect key, e.g. --set cnn_sides '[160, 256, 512]'")
    args = ap.parse_args()

    overrides = {"render.image_size": args.size, **{f"detect.{k}": yaml.safe_load(v) for k, v in args.set}}
    cfg = load_config(overrides=overrides)
    model = load_model(cfg.resolve_path(cfg.model.path))
    sets = render_sets(args, cfg, model)
    largest = args.mode == "largest"
    cascades = {"new": lambda photo: find_faces(photo, cfg.detect, largest).faces}
    refused: tuple = (ReconstructionInputError,)
    if args.baseline:
        old = baseline_module(args.baseline)
        cascades["baseline"] = lambda photo: old.detect_faces(photo, cfg.detect)
        refused += (old.ReconstructionInputError,)
    first = next(iter(sets.values()))[0][0]
    for run in cascades.values():  # loads dlib's models (not timed)
        run(first)
    for name, faces in sets.items():
        rows = {k: [] for k in cascades}
        for i, (photo, truth, yaw) in enumerate(tqdm(faces, desc=f"detect {name}")):
            order = list(cascades) if i % 2 == 0 else list(cascades)[::-1]
            for k in order:
                t0 = time.perf_counter()
                try:
                    dets = cascades[k](photo)
                except refused:
                    dets = []
                seconds = time.perf_counter() - t0
                found, err = score(dets, truth)
                rows[k].append({"found": found, "err": err, "seconds": seconds, "yaw": yaw,
                                "detector": dets[0].detector if found else "missed",
                                "landmarks": dets[0].landmarks if found else None})
        record = {"benchmark": "detect", "what": f"find_faces ({args.mode}) on {len(faces)} "
                  f"{'gray' if args.gray else 'colour'} {name} renders, {args.size} px, seed {args.seed}",
                  "set": name, "mode": args.mode, "detect": cfg.to_dict()["detect"], **summary(rows["new"], len(faces))}
        if args.baseline:
            base, new = rows["baseline"], rows["new"]
            both = [i for i in range(len(faces)) if base[i]["found"] and new[i]["found"]]
            record["baseline"] = {"revision": args.baseline, **summary(base, len(faces))}
            record["time_ratio_baseline_to_new"] = sum(r["seconds"] for r in base) / sum(r["seconds"] for r in new)
            record["same_as_baseline"] = (float(np.mean([np.abs(base[i]["landmarks"] - new[i]["landmarks"]).max() < 1e-6
                                                         for i in both])) if both else None)
            record["lm_err_iod_both"] = ({"new_median": float(np.median([new[i]["err"] for i in both])),
                                          "new_mean": float(np.mean([new[i]["err"] for i in both])),
                                          "baseline_median": float(np.median([base[i]["err"] for i in both])),
                                          "baseline_mean": float(np.mean([base[i]["err"] for i in both]))}
                                         if both else None)
        record["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS", "unset")
        emit(record)


if __name__ == "__main__":
    main()
