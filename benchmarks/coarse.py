"""The coarse stage's fits on one core: the landmark fit and the photometric fit per face, the shipped code against
the code they replaced, in the same run on the same faces, with each one's 3D error.

Faces: ``train evaluate``'s photo-like test faces (512 px, seed ``datagen.seed`` + 2000003), detected once by the
real front end (``coarse.detect.detect_faces``; not timed). Per face, in alternating order:

- ``new``: :func:`coarse.fit.fit_map` (its box least squares) then :func:`coarse.photometric.photometric_fit`
  (Levenberg-Marquardt, analytic Jacobians, a vertex sample);
- ``stage``: the shipped coarse stage as ``refine`` loads it (:func:`reconstruct.models.load_coarse`) and runs it
  (:func:`coarse.stage.coarse_fit`): the recognition descriptor (the photo's and its mirror image's) and its
  identity prior, the same two fits (the photometric fit holding that identity), then the network's pass;
- ``baseline``: the same landmark fit solved by ``scipy.optimize.lsq_linear(method="bvls")``, as it was, then
  :func:`coarse.photometric_reference.reference_fit` (autograd and L-BFGS, 4 rounds x 30 steps, every visible
  vertex), as it was.

One core: BLAS and torch on one thread. Times are CPU seconds of this process per face (wall seconds beside them);
``error_mm``: per-vertex error over the narrow face after similarity alignment (training.metrics), mean and
median over faces.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/coarse.py [--n 20] [--seed-offset 2000003]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.common import emit  # noqa: E402


def _bvls(A, y, lower, upper, x0=None):
    """The landmark fit's bounded least squares as it was solved before (scipy's BVLS)."""
    from scipy.optimize import lsq_linear

    return np.clip(lsq_linear(A, y, bounds=(lower, upper), method="bvls").x, lower, upper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="faces")
    ap.add_argument("--seed-offset", type=int, default=2_000_003, help="faces' seed: datagen.seed + this")
    args = ap.parse_args()

    import torch

    import coarse.fit as fit
    from coarse.detect import ReconstructionInputError, detect_faces
    from coarse.photometric import photometric_fit
    from coarse.photometric_reference import reference_fit
    from coarse.stage import CoarseSettings, coarse_fit
    from datagen.faces import online_faces
    from facesynth.config import load_config
    from morphable.model import load_model
    from render.renderer import FaceRenderer
    from training.cli import photo_scene_config
    from reconstruct.models import load_coarse
    from training.metrics import coefficient_errors

    torch.set_num_threads(1)
    cfg = load_config()
    model = load_model(cfg.resolve_path(cfg.model.path))
    coarse = CoarseSettings.from_config(cfg)
    scene_cfg = photo_scene_config(cfg)
    renderer = FaceRenderer.from_config(model, scene_cfg.render)
    faces = []
    for f in tqdm(online_faces(scene_cfg, args.n, cfg.datagen.seed + args.seed_offset, model, renderer),
                  total=args.n, desc="render, detect"):
        rgb8 = np.clip(f.rgb * 255 + 0.5, 0, 255).astype(np.uint8)
        try:
            det = detect_faces(rgb8, cfg.detect)[0]
        except ReconstructionInputError:
            continue
        faces.append((rgb8.astype(np.float32) / 255, det, f.alpha_gt))

    def timed(fn, *a, **kw):
        c, w = time.process_time(), time.perf_counter()
        out = fn(*a, **kw)
        return out, time.process_time() - c, time.perf_counter() - w

    def new(photo, det):
        (a, p), *t_fit = timed(fit.fit_map, model, det.landmarks, coarse.landmarks, coarse.prior,
                               detector=det.detector)
        (a, _), *t_photo = timed(photometric_fit, photo, a, p, det.landmarks, model, coarse.landmarks, coarse.prior,
                                 coarse.photometric, det.detector)
        return a, t_fit, t_photo

    def baseline(photo, det):
        solver, fit.box_least_squares = fit.box_least_squares, _bvls
        try:
            (a, p), *t_fit = timed(fit.fit_map, model, det.landmarks, coarse.landmarks, coarse.prior,
                                   detector=det.detector)
        finally:
            fit.box_least_squares = solver
        (a, _), *t_photo = timed(reference_fit, photo, a, p, det.landmarks, model, coarse.landmarks, coarse.prior,
                                 coarse.photometric, det.detector)
        return a, t_fit, t_photo

    shipped, network = load_coarse(None, cfg, "cpu")

    def stage(photo, det):
        c, w = time.process_time(), time.perf_counter()
        out = coarse_fit(photo, det.landmarks, model, shipped, cfg.render, detector=det.detector)
        t = (time.process_time() - c, time.perf_counter() - w)
        return out.alpha, (0.0, 0.0), t

    runs = {"new": new, "baseline": baseline, "stage": stage}
    alpha, times = {k: [] for k in runs}, {k: [] for k in runs}  # times: (fit cpu, fit wall, photo cpu, photo wall)
    with threadpool_limits(1):
        for run in runs.values():  # numba kernels, torch and the recognition network warmed up, not timed
            run(*faces[0][:2])
        for i, (photo, det, _) in enumerate(tqdm(faces, desc="fit")):
            for name in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                a, t_fit, t_photo = runs[name](photo, det)
                alpha[name].append(a)
                times[name].append((*t_fit, *t_photo))
    gt = np.stack([f[2] for f in faces])
    record = {"benchmark": "coarse", "what": "landmark fit + photometric fit per face, one core (stage: the shipped "
              "coarse_fit, identity descriptor and network included)", "faces": len(faces),
              "stage_network": None if network is None else f"{network.path} ({network.runtime})", "stage_identity": coarse.identity is not None}
    for name in runs:
        t = np.asarray(times[name])
        err = coefficient_errors(model, np.stack(alpha[name]), gt).mean(1)
        record[name] = {"cpu_s_median": float(np.median(t[:, 0] + t[:, 2])), "cpu_s_mean": float(np.mean(t[:, 0] + t[:, 2])),
                        "wall_s_median": float(np.median(t[:, 1] + t[:, 3])),
                        "error_mm": {"mean": float(err.mean()), "median": float(np.median(err))}}
        if name != "stage":
            record[name].update({"landmark_fit_cpu_s_median": float(np.median(t[:, 0])),
                                 "photometric_fit_cpu_s_median": float(np.median(t[:, 2])),
                                 "photometric_fit_cpu_s_mean": float(np.mean(t[:, 2]))})
    record["speedup_cpu_median"] = record["baseline"]["cpu_s_median"] / record["new"]["cpu_s_median"]
    record["speedup_cpu_total"] = record["baseline"]["cpu_s_mean"] / record["new"]["cpu_s_mean"]
    if "stage" in record:
        record["stage_speedup_cpu_median"] = record["baseline"]["cpu_s_median"] / record["stage"]["cpu_s_median"]
    emit(record)


if __name__ == "__main__":
    main()
