"""Samples/s of `datagen render` beside naive loops, in the same run; the per-stage profile; the error of the
16-bit basis.

Baselines (each timed in the same rounds as ours, interleaved, so that load from other processes hits
both alike; a ratio is taken within a round and the median over rounds is reported):

- ``naive pyrender loop`` (below): what a first implementation does per sample on this project's model:
  a new trimesh + pyrender mesh per frame, pyrender's default shader, two renders (face and shading
  geometry), PNG/JPEG encodes, a tar write;
- ``shared naive_datagen.py``: ``../shared/tools/naive_datagen.py`` next to the repository when it is
  there (run as a subprocess; it reports its own samples/s), skipped otherwise.

Two measures of each: samples per wall-clock second, and samples per CPU second of the process (and its
threads and children): on cores shared with other jobs the wall-clock rate depends on the share each got,
the CPU rate does not, and it is the per-core figure. The naive loops' OSMesa rasteriser may run more than
one thread, so their wall-clock rate may use more than one core: ``ratio_vs_naive`` (wall clock) is, if
anything, an underestimate of the per-core ratio ``cpu_ratio_vs_naive``.

Prints JSON lines::

    .venv/bin/python benchmarks/datagen.py [--n 150] [--naive-n 12] [--rounds 5] [--profile-n 40]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.common import Meter, emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402

SHARED_NAIVE = REPO.parent / "shared" / "tools" / "naive_datagen.py"


def naive_loop(cfg, n: int) -> tuple[float, float]:
    """(samples/s, samples per CPU second) of the naive pyrender loop."""
    import pyrender
    import trimesh
    from PIL import Image

    from datagen.scene import draw_scene
    from morphable.model import load_model

    model = load_model(cfg.resolve_path(cfg.model.path))
    size = cfg.render.image_size
    r = pyrender.OffscreenRenderer(size, size)
    out = tempfile.NamedTemporaryFile(suffix=".tar", delete=False)
    tar = tarfile.open(out.name, "w")

    def frame(verts, pose, colors):
        v = verts @ pose.rotation.T
        mesh = trimesh.Trimesh(v, model.triangles, vertex_colors=colors, process=False)
        scene = pyrender.Scene(ambient_light=[0.5, 0.5, 0.5], bg_color=[0, 0, 0, 0])
        scene.add(pyrender.Mesh.from_trimesh(mesh))
        mag = size / (2 * pose.scale)
        cam = pyrender.OrthographicCamera(xmag=mag, ymag=mag, znear=1, zfar=1000)
        cam_pose = np.eye(4)
        cam_pose[:3, 3] = [0, 0, 400]
        scene.add(cam, pose=cam_pose)
        scene.add(pyrender.DirectionalLight(intensity=3.0), pose=cam_pose)
        return r.render(scene)

    with Meter() as meter:
        for i in range(n):
            s = draw_scene(0, i, model, cfg)
            colors = (s.head_albedo(model) * 255).astype(np.uint8)
            rgb, depth = frame(model.vertices(s.alpha_gt), s.pose, colors)
            shade, _ = frame(model.vertices(s.alpha_t), s.pose, np.full_like(colors, 200))
            for name, arr, fmt in (("rgb.jpg", rgb, "JPEG"), ("image.png", rgb[..., 0], "PNG"),
                                   ("shading.png", shade[..., 0], "PNG"),
                                   ("depth.png", (depth * 100).astype(np.uint16), "PNG")):
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format=fmt)
                info = tarfile.TarInfo(f"{i:09d}.{name}")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
        tar.close()
    r.delete()
    os.unlink(out.name)
    return meter.rates(n)


def shared_naive(n: int, start_cpu: float = 0.0) -> tuple[float, float, float] | None:
    """(samples/s it reports, samples per CPU second, CPU seconds of the whole run) of
    ``../shared/tools/naive_datagen.py N OUT.tar``; with ``start_cpu``, the CPU of a run with N = 1 (its
    start-up and one sample), the CPU rate is that of the other N - 1 samples. None without the tool, or
    when it fails (e.g. without its ICT files)."""
    if not SHARED_NAIVE.exists():
        return None
    with tempfile.TemporaryDirectory() as d, Meter() as m:
        env = dict(os.environ, PYOPENGL_PLATFORM="osmesa")
        res = subprocess.run([sys.executable, str(SHARED_NAIVE), str(n), str(Path(d) / "naive.tar")],
                             capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        print(f"shared naive_datagen.py failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    wall = float(json.loads(res.stdout.strip().splitlines()[-1])["samples_per_s"])
    return wall, (n - (start_cpu > 0)) / max(m.cpu - start_cpu, 1e-9), m.cpu


def ours(cfg, n: int, workers: int) -> tuple[float, float, int]:
    """(samples/s, samples per CPU second, bytes per sample) of ``render_dataset`` making ``n`` samples into
    4 shards (the CPU of its worker processes included)."""
    from datagen.generate import RenderPlan, render_dataset

    with tempfile.TemporaryDirectory() as d:
        plan = RenderPlan(Path(d), n, 0, max(n // 4, 1))
        with Meter() as m:
            render_dataset(cfg, plan, workers=workers, progress=False)
        size = sum(p.stat().st_size for p in Path(d).glob("shard-*.tar"))
    return *m.rates(n), size // n


def stage_profile(cfg, n: int) -> dict:
    """CPU milliseconds per sample of each stage, in one thread (``time.thread_time``: time this process
    waited for a core does not count): the stages of :func:`datagen.sample.make_sample`, then each
    encode of :func:`datagen.shards.encode_sample` and the tar write."""
    from datagen.sample import make_sample
    from datagen.scene import draw_scene
    from datagen.shards import encode_sample, write_shard
    from morphable.model import load_model
    from render.background import random_background
    from render.renderer import FaceRenderer

    model = load_model(cfg.resolve_path(cfg.model.path))
    r = FaceRenderer.from_config(model, cfg.render)
    size = cfg.render.image_size
    records = [encode_sample(make_sample(0, 0, model, cfg, r), 0, cfg.datagen)]  # kernels loaded
    t: dict[str, float] = {}
    clock = time.thread_time

    def lap(name, t0):
        now = clock()
        t[name] = t.get(name, 0.0) + now - t0
        return now

    for i in range(n):
        c = clock()
        s = draw_scene(0, i, model, cfg)
        c = lap("draw_scene", c)
        random_background(np.random.default_rng(i), size, size, cfg.render.background)
        c = lap("(of which background)", c)
        albedo = s.head_albedo(model)
        c = lap("head_albedo", c)
        v_gt, v_t = model.draw_vertices(np.stack([s.alpha_gt, s.alpha_t]))
        c = lap("vertices (both)", c)
        r.render_face(s.alpha_gt, s.pose, albedo, s.light, s.background, verts=v_gt)
        c = lap("render_face", c)
        r.render_shading(s.alpha_t, s.pose, verts=v_t)
        c = lap("render_shading", c)
        r.rasterize(v_t, s.pose)
        c = lap("(of which rasterize + fragments)", c)
        sample = make_sample(0, i, model, cfg, r)
        c = lap("make_sample (all of the above)", c)
        records.append(encode_sample(sample, 0, cfg.datagen))
        c = lap("encode", c)
    with tempfile.TemporaryDirectory() as d:
        c = clock()
        write_shard(Path(d) / "shard.tar", records)
        lap("tar write", c)
    return {k: round(v / n * 1000, 3) for k, v in t.items()}


def basis_precision(cfg, n: int = 100) -> dict:
    """Vertex error of the basis product in float32, float16 and 16-bit integers (what
    :meth:`FaceModel.draw_vertices` uses) against float64, over ``n`` drawn faces: max and mean in mm
    over all vertices, and the largest image-plane error in pixels at 200 and 512 px for the drawn poses
    (the pose scale grows with the image size)."""
    from datagen.scene import draw_scene
    from morphable.model import LinearBasis, load_model

    model = load_model(cfg.resolve_path(cfg.model.path))
    scenes = [draw_scene(0, i, model, cfg) for i in range(n)]
    alphas = np.stack([s.alpha_gt for s in scenes] + [s.alpha_t for s in scenes])
    A = model.basis.reshape(-1, model.n_coeffs).astype(np.float64)
    exact = model.mean.reshape(-1).astype(np.float64) + alphas.astype(np.float64) @ A.T
    f16 = model.mean.reshape(-1) + alphas.astype(np.float64) @ A.T.astype(np.float16).astype(np.float64)
    int16 = LinearBasis(model.mean.reshape(-1), A)(alphas)  # as draw_vertices
    variants = {"float32": model.vertices(alphas).reshape(len(alphas), -1), "float16": f16, "int16": int16}
    out = {}
    rot = np.stack([s.pose.rotation for s in scenes] * 2)  # (2n, 3, 3)
    scale_px_per_mm_per_px = np.array([s.pose.scale for s in scenes] * 2) / cfg.render.image_size
    for name, v in variants.items():
        d = (np.asarray(v, np.float64) - exact).reshape(len(alphas), -1, 3)
        err = np.linalg.norm(d, axis=-1)
        img = np.linalg.norm(np.einsum("bij,bvj->bvi", rot, d)[..., :2], axis=-1).max(1)  # mm in the image plane
        out[name] = {"max_mm": float(err.max()), "mean_mm": float(err.mean()),
                     "max_px_200": float((img * scale_px_per_mm_per_px * 200).max()),
                     "max_px_512": float((img * scale_px_per_mm_per_px * 512).max())}
    return out


def median(xs):
    return statistics.median(xs) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150, help="samples of each timed `datagen render` run")
    ap.add_argument("--naive-n", type=int, default=12, help="samples of each naive run")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (ratios: median over rounds)")
    ap.add_argument("--profile-n", type=int, default=40, help="samples of the stage profile")
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    cfg = load_config(overrides={"render.backend": args.backend})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    ours(cfg, 8, 1)  # warm-up: model, kernels, encoders
    start = shared_naive(1)  # warm-up (the tool caches the ICT files) and its start-up CPU
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in ("naive", "shared", "ours1", "ours_all")}
    bytes_per = 0
    for _ in range(args.rounds):
        runs["naive"].append(naive_loop(cfg, args.naive_n))
        *one, bytes_per = ours(cfg, args.n, 1)
        runs["ours1"].append(tuple(one))
        shared = shared_naive(args.naive_n * 4, start[2] if start else 0.0)
        if shared is not None:
            runs["shared"].append(shared[:2])
        *allc, _ = ours(cfg, args.n * cores, cores)
        runs["ours_all"].append(tuple(allc))

    def rate(name, k=0):  # median over rounds of the wall (k = 0) or CPU (k = 1) rate
        return median([r[k] for r in runs[name]])

    def ratio(name, base, k=0, per=1):  # within each round, then the median
        per_round = [a[k] / per / b[k] for a, b in zip(runs[name], runs[base])]
        return median(per_round), per_round

    common = {"benchmark": "datagen", "rounds": args.rounds}
    for name, what in (("naive", "naive pyrender loop"), ("shared", "shared naive_datagen.py")):
        if runs[name]:
            emit({**common, "what": what, "workers": 1, "samples_per_s": rate(name),
                  "samples_per_cpu_s": rate(name, 1)})
    line = {**common, "what": "datagen render", "workers": 1, "samples_per_s": rate("ours1"),
            "samples_per_cpu_s": rate("ours1", 1), "bytes_per_sample": bytes_per}
    for base in ("naive", "shared"):
        if runs[base]:
            (w, w_rounds), (c, c_rounds) = ratio("ours1", base), ratio("ours1", base, 1)
            line.update({f"ratio_vs_{base}": w, f"cpu_ratio_vs_{base}": c, f"ratio_vs_{base}_per_round": w_rounds,
                         f"cpu_ratio_vs_{base}_per_round": c_rounds})
    emit(line)
    (w, w_rounds), (c, _) = ratio("ours_all", "naive", per=cores), ratio("ours_all", "naive", 1)
    emit({**common, "what": "datagen render", "workers": cores, "samples_per_s": rate("ours_all"),
          "samples_per_cpu_s": rate("ours_all", 1), "ratio_vs_naive_per_core": w,
          "ratio_vs_naive_per_core_per_round": w_rounds, "cpu_ratio_vs_naive": c,
          "hours_per_million": 1e6 / rate("ours_all") / 3600})
    emit({**common, "what": "stage CPU ms per sample (1 thread)", **stage_profile(cfg, args.profile_n)})
    emit({"benchmark": "datagen", "what": "basis precision (vertex error vs float64)", **basis_precision(cfg)})


if __name__ == "__main__":
    main()
