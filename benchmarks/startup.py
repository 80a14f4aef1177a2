"""Whole-process wall-clock seconds of ``refine sfs PHOTO`` (a fresh Python process: imports, models, detection,
coarse fit, texture, detail network, SfS, outputs, exit), against a baseline in the same run.

Variants, taking turns for ``--rounds`` rounds (each run a new process writing to its own temporary folder):

- ``default``: the command as shipped (``pipeline.yaml``: the detail network on ONNX Runtime, the face model
  from its uncompressed copy, detection then models one after the other).
- ``torch`` (the baseline): the same command with ``--detail-runtime torch --network-runtime torch``, the detail
  and iterative networks in torch as every run had them before: torch's import (~1.5 s) and loading the ``.pt``
  weights. Everything else is the same code, so the ratio is what ONNX Runtime alone saves; ``benchmarks/startup.py`` on an older checkout measures
  the rest.
- ``background``: ``refine.detect_in_background: true``: the detection in a forked process beside the
  imports and the model loading (it only pays with a core to spare).

Each variant's median and minimum wall clock and median CPU seconds (its process and children: on cores shared
with other jobs the wall clock depends on the share a run got, the CPU seconds much less), ``ratio_vs_baseline``
(baseline median / median: above 1 is faster), and the medians of what the runs' ``params.json`` report
(``startup_s`` and ``timings_s``). Then two parts on their own, each in fresh processes taking turns: the detail
network's start (import, load, one 256 x 256 pass) on ONNX Runtime and in torch, and reading the face model
from its HDF5 file and from the uncompressed copy (``morphable.model.read_model_arrays``).

    .venv/bin/python benchmarks/startup.py [--photo data/astronaut.png] [--rounds 5] [--no-parts]

Prints one JSON line per result (:func:`benchmarks.common.emit`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import emit  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = {"default": [], "torch": ["--detail-runtime", "torch", "--network-runtime", "torch"], "background": None}
BASELINE = "torch"

#: One fresh process each: the detail network's start on ONNX Runtime or torch (import, load, one pass).
DETAIL_START = """
import sys, time
t0 = time.perf_counter()
import numpy as np
x = np.random.default_rng(0).standard_normal((6, 256, 256)).astype(np.float32); x[5] = 1
if sys.argv[1] == "onnxruntime":
    from training.detail_runtime import OnnxDetail
    net = OnnxDetail("data/detail_weights.onnx"); t1 = time.perf_counter()
    y = net.offset(x, 0.67)
else:
    import torch
    from training.detail_net import load_detail
    net = load_detail("data/detail_weights.pt").net; t1 = time.perf_counter()
    with torch.no_grad():
        y = net(torch.from_numpy(x[None]), 0.67)[0, 0].numpy()
print(t1 - t0, time.perf_counter() - t1)
"""
#: One fresh process each: the face model's arrays from the HDF5 file or from the uncompressed copy.
MODEL_READ = """
import sys, time
from pathlib import Path
import numpy as np
import morphable.model as mm
path = Path("data/ict_face_model.h5")
mm.read_model_arrays(path)  # the copy exists
t0 = time.perf_counter()
a = mm._read_h5(path) if sys.argv[1] == "hdf5" else mm.read_model_arrays(path)
print(time.perf_counter() - t0)
"""


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(args: list[str], cwd: Path = REPO) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds, the finished process) of one fresh Python process."""
    env = dict(os.environ, PYOPENGL_PLATFORM=os.environ.get("PYOPENGL_PLATFORM", "osmesa"))
    c0, t0 = child_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, child_cpu() - c0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return wall, cpu, proc


def medians(dicts: list[dict]) -> dict:
    keys = [k for k in dicts[0] if all(isinstance(d.get(k), (int, float)) and not isinstance(d.get(k), bool)
                                       for d in dicts)]
    return {k: statistics.median(d[k] for d in dicts) for k in keys}


def whole_runs(photo: Path, rounds: int, work: Path) -> None:
    config = work / "background.yaml"
    config.write_text("refine:\n  detect_in_background: true\n")
    variants = {k: (v if v is not None else ["--config", str(config)]) for k, v in VARIANTS.items()}
    runs = {k: [] for k in variants}
    for name, extra in variants.items():  # a first run each, not timed: file caches, numba's caches
        run(["-m", "reconstruct.cli", "sfs", str(photo), "--out", str(work / name), "--force", *extra])
    for _ in range(rounds):
        for name, extra in variants.items():
            wall, cpu, _ = run(["-m", "reconstruct.cli", "sfs", str(photo), "--out", str(work / name), "--force",
                                *extra])
            params = json.loads((work / name / "params.json").read_text())
            runs[name].append((wall, cpu, params.get("startup_s") or {}, params.get("timings_s") or {},
                               params.get("detail_runtime")))
    base = statistics.median(r[0] for r in runs[BASELINE])
    for name, rs in runs.items():
        walls = [r[0] for r in rs]
        emit({"benchmark": "startup", "what": f"refine sfs {photo.name}, whole process", "variant": name,
              "baseline": f"{BASELINE}: the same command with --detail-runtime torch --network-runtime torch",
              "detail_runtime": rs[-1][4], "rounds": rounds, "wall_s_median": statistics.median(walls),
              "wall_s_min": min(walls), "cpu_s_median": statistics.median(r[1] for r in rs),
              "ratio_vs_baseline": base / statistics.median(walls),
              "startup_s_median": medians([r[2] for r in rs]), "timings_s_median": medians([r[3] for r in rs]),
              "load_average": os.getloadavg()[0]})


def parts(rounds: int) -> None:
    start = {"onnxruntime": [], "torch": []}
    read = {"hdf5": [], "copy": []}
    for _ in range(rounds):
        for name in start:
            wall, _, proc = run(["-c", DETAIL_START, name])
            load, forward = map(float, proc.stdout.split())
            start[name].append((wall, load, forward))
        for name in read:
            read[name].append(float(run(["-c", MODEL_READ, name])[2].stdout))
    base = statistics.median(r[0] for r in start["torch"])
    for name, rs in start.items():
        wall = statistics.median(r[0] for r in rs)
        emit({"benchmark": "startup", "what": "detail network: fresh process, import + load + one 256x256 pass",
              "variant": name, "baseline": "torch", "rounds": rounds, "process_s_median": wall,
              "import_load_s_median": statistics.median(r[1] for r in rs),
              "forward_s_median": statistics.median(r[2] for r in rs), "ratio_vs_baseline": base / wall})
    base = statistics.median(read["hdf5"])
    for name, ts in read.items():
        emit({"benchmark": "startup", "what": "face model arrays: data/ict_face_model.h5 (gzip) or its copy",
              "variant": name, "baseline": "hdf5", "rounds": rounds, "read_s_median": statistics.median(ts),
              "ratio_vs_baseline": base / statistics.median(ts)})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", type=Path, default=REPO / "data" / "astronaut.png")
    ap.add_argument("--rounds", type=int, default=5, help="turns of each variant (medians over them)")
    ap.add_argument("--no-parts", action="store_true", help="only the whole-process runs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        whole_runs(args.photo.resolve(), args.rounds, Path(tmp))
    if not args.no_parts:
        parts(args.rounds)


if __name__ == "__main__":
    main()
