"""Face detection (coarse.detect.detect_faces) on synthetic renders: the fraction of faces found by each stage
of the cascade, the fraction found, the landmark error and the seconds per image on this machine.

Faces come from ``datagen.sample.make_sample`` (colour render with its background, or gray with ``--gray``;
seed ``--seed``) at ``--size`` pixels. A face counts as found when the first detection's box holds the
centroid of the true inner landmarks (17-67); ``lm_err_iod`` is the median over found faces of the mean
distance between the detected and the true inner landmarks over the true inter-ocular distance (dlib's points
and the model's differ a little by definition, so this is not zero for a perfect detector). Rendering is not
timed.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/detect.py [--n 60] [--size 512] [--seed 12345] [--gray]
        [--set KEY YAML ...]    (a ``detect`` key of pipeline.yaml, e.g. --set cnn_sides "[256, 512]")
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from coarse.detect import LEFT_EYE, RIGHT_EYE, ReconstructionInputError, detect_faces  # noqa: E402
from datagen.sample import make_sample  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from morphable.model import load_model  # noqa: E402
from render.renderer import FaceRenderer  # noqa: E402
from render.shading import to_gray  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="faces")
    ap.add_argument("--size", type=int, default=512, help="render side, pixels")
    ap.add_argument("--seed", type=int, default=12345, help="dataset seed of make_sample")
    ap.add_argument("--gray", action="store_true", help="detect on the gray render (render.shading.to_gray)")
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "YAML"),
                    help="override a detect key, e.g. --set cnn_sides '[160, 256, 512]'")
    args = ap.parse_args()

    overrides = {"render.image_size": args.size, **{f"detect.{k}": yaml.safe_load(v) for k, v in args.set}}
    cfg = load_config(overrides=overrides)
    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, cfg.render)
    faces = []
    for i in tqdm(range(args.n), desc="render"):
        s = make_sample(args.seed, i, model, cfg, renderer)
        R = s.scene.pose.rotation
        image = to_gray(s.rgb) if args.gray else s.rgb
        faces.append(((np.clip(image, 0, 1) * 255).round().astype(np.uint8), np.asarray(s.landmarks, np.float64),
                      float(np.degrees(np.arctan2(-R[2, 0], R[2, 2])))))  # yaw: R = R_z(roll) R_x(pitch) R_y(yaw)
    detect_faces(faces[0][0], cfg.detect)  # loads dlib's models (not timed)
    stages, seconds, errors, yaws_missed, stage_s, stage_err = Counter(), [], [], [], {}, {}
    for photo, truth, yaw in tqdm(faces, desc="detect"):
        t0 = time.perf_counter()
        try:
            det = detect_faces(photo, cfg.detect)[0]
        except ReconstructionInputError:
            det = None
        seconds.append(time.perf_counter() - t0)
        c = truth[17:].mean(0)
        if det is None or not (det.box[0] < c[0] < det.box[2] and det.box[1] < c[1] < det.box[3]):
            stages["missed"] += 1
            yaws_missed.append(round(yaw))
            continue
        stages[det.detector] += 1
        stage_s.setdefault(det.detector, []).append(seconds[-1])
        iod = np.linalg.norm(truth[RIGHT_EYE].mean(0) - truth[LEFT_EYE].mean(0))
        errors.append(float(np.linalg.norm(det.landmarks[17:] - truth[17:], axis=1).mean() / iod))
        stage_err.setdefault(det.detector, []).append(errors[-1])
    n = args.n
    what = (f"detect_faces on {n} {'gray' if args.gray else 'colour'} make_sample renders, {args.size} px, "
            f"seed {args.seed}")
    emit({"benchmark": "detect", "what": what,
          "detect": cfg.to_dict()["detect"],
          "found": 1 - stages["missed"] / n, "by_stage": {k: v / n for k, v in sorted(stages.items())},
          "missed_yaw_deg": yaws_missed, "lm_err_iod_median": float(np.median(errors)) if errors else None,
          "lm_err_iod_median_by_stage": {k: float(np.median(v)) for k, v in sorted(stage_err.items())},
          "s_per_image_mean": float(np.mean(seconds)), "s_per_image_median": float(np.median(seconds)),
          "s_per_image_max": float(np.max(seconds)),
          "s_per_image_by_stage": {k: float(np.mean(v)) for k, v in sorted(stage_s.items())},
          "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")})


if __name__ == "__main__":
    main()
