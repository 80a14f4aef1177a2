"""Seconds of `sfs_refine` at 256 x 256 on this CPU, beside a same-run baseline: the same energy and
Gauss-Newton steps solved by scipy's sparse direct solver (`spsolve`, SuperLU) instead of our
Jacobi-preconditioned CG, so the ratio is comparable across noisy machines.

Scene: a sphere cap ("coarse depth") plus Gaussian bumps and a wrinkle band of 0.3-1 mm, a dark albedo patch,
a directional SH light; the mask covers 64 % of the image (a face crop covers less). Also prints the mean
normal-angle error inside the mask before and after, for both solvers.

    .venv/bin/python benchmarks/sfs.py [--size 256] [--repeats 5] [--no-baseline]

Prints one JSON line (:func:`benchmarks.common.emit`): {"benchmark": "sfs", "machine": ..., "resolution": 256,
"seconds": ..., "baseline_direct_seconds": ..., "speedup_vs_direct": ..., ...}.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from reconstruct.sfs import sfs_refine  # noqa: E402
from render.filters import depth_to_normals  # noqa: E402
from reconstruct.sfs_scene import dome_scene  # noqa: E402


def scene(n: int, seed: int = 0):
    """(image, coarse depth (0 outside), mask, pixel_mm, true normals) of
    :func:`reconstruct.sfs_scene.dome_scene`; 57 mm wide dome at any n."""
    s = dome_scene(n, 64 * 0.5 / n, seed)
    return s.image, s.coarse, s.mask, s.pixel_mm, s.normals


def _error_deg(normals: np.ndarray, n_true: np.ndarray, mask: np.ndarray) -> float:
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, iterations=2)
    cos = np.clip((normals * n_true).sum(-1), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos))[inner].mean())


@click.command()
@click.option("--size", default=256, show_default=True, help="image side, pixels")
@click.option("--repeats", default=5, show_default=True, help="timed runs of our solver (min and median reported)")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="also time the spsolve baseline")
def main(size: int, repeats: int, baseline: bool) -> None:
    image, coarse, mask, px, n_true = scene(size)
    params = load_config().refine.sfs
    sfs_refine(image, coarse, mask, px, params)  # warm-up (operator cache, imports)
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = sfs_refine(image, coarse, mask, px, params)
        times.append(time.perf_counter() - t0)
    out = {"benchmark": "sfs", "resolution": size, "mask_fraction": round(float(mask.mean()), 3),
           "seconds": round(min(times), 4), "seconds_median": round(float(np.median(times)), 4),
           "repeats": repeats, "cg_iterations": list(res.linear_iterations),
           "normal_error_deg_coarse": round(_error_deg(depth_to_normals(coarse, px), n_true, mask), 3),
           "normal_error_deg": round(_error_deg(res.normals, n_true, mask), 3)}
    if baseline:
        t0 = time.perf_counter()
        ref = sfs_refine(image, coarse, mask, px, dataclasses.replace(params, solver="direct"))
        out["baseline_direct_seconds"] = round(time.perf_counter() - t0, 4)
        out["baseline_direct_normal_error_deg"] = round(_error_deg(ref.normals, n_true, mask), 3)
        out["speedup_vs_direct"] = round(out["baseline_direct_seconds"] / out["seconds"], 2)
    emit(out)


if __name__ == "__main__":
    main()
