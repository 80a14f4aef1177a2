"""Samples/s of `datagen render` (1 worker, all cores) beside the naive pyrender loop, in the same run.

The naive loop is what a first implementation does per sample: a new trimesh + pyrender mesh per frame,
pyrender's default shader, two renders (face and shading geometry), PNG/JPEG encodes, a tar write.
Prints JSON lines; `ratio_vs_naive` is per core (our samples/s per worker / naive samples/s).

    .venv/bin/python benchmarks/datagen.py [--n 60] [--naive-n 15]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402


def naive_loop(cfg, n: int) -> float:
    """Samples/s of the naive pyrender loop."""
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

    t0 = time.perf_counter()
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
    dt = time.perf_counter() - t0
    r.delete()
    os.unlink(out.name)
    return n / dt


def ours(cfg, n: int, workers: int) -> tuple[float, int]:
    from datagen.generate import RenderPlan, render_dataset

    with tempfile.TemporaryDirectory() as d:
        plan = RenderPlan(Path(d), 8, 0, 8)
        render_dataset(cfg, plan, workers=1, progress=False)  # warm-up: numba compile cache
    with tempfile.TemporaryDirectory() as d:
        plan = RenderPlan(Path(d), n, 0, max(n // 4, 1))
        t0 = time.perf_counter()
        render_dataset(cfg, plan, workers=workers, progress=False)
        dt = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(d).glob("shard-*.tar"))
    return n / dt, size // n


def stage_profile(cfg, n: int = 20) -> dict:
    """Milliseconds per sample in each stage (one process)."""
    from datagen.sample import make_sample
    from datagen.scene import draw_scene
    from datagen.shards import encode_sample
    from morphable.model import load_model
    from render.renderer import FaceRenderer

    model = load_model(cfg.resolve_path(cfg.model.path))
    r = FaceRenderer.from_config(model, cfg.render)
    make_sample(0, 0, model, cfg, r)
    t = {"draw": 0.0, "render_face": 0.0, "render_shading": 0.0, "sample_total": 0.0, "encode": 0.0}
    for i in range(n):
        a = time.perf_counter()
        s = draw_scene(0, i, model, cfg)
        b = time.perf_counter()
        r.render_face(s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background)
        c = time.perf_counter()
        r.render_shading(s.alpha_t, s.pose)
        d = time.perf_counter()
        sample = make_sample(0, i, model, cfg, r)
        e = time.perf_counter()
        encode_sample(sample, 0, cfg.datagen)
        f = time.perf_counter()
        t["draw"] += b - a
        t["render_face"] += c - b
        t["render_shading"] += d - c
        t["sample_total"] += e - d
        t["encode"] += f - e
    return {k: round(v / n * 1000, 2) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--naive-n", type=int, default=15)
    ap.add_argument("--backend", default="auto")
    args = ap.parse_args()
    cfg = load_config(overrides={"render.backend": args.backend})
    cores = os.cpu_count() or 1
    naive = naive_loop(cfg, args.naive_n)
    emit({"benchmark": "datagen", "what": "naive pyrender loop", "workers": 1, "samples_per_s": naive})
    one, bytes_per = ours(cfg, args.n, 1)
    emit({"benchmark": "datagen", "what": "datagen render", "workers": 1, "samples_per_s": one,
          "ratio_vs_naive": one / naive, "bytes_per_sample": bytes_per})
    allc, _ = ours(cfg, args.n * cores, cores)
    emit({"benchmark": "datagen", "what": "datagen render", "workers": cores, "samples_per_s": allc,
          "ratio_vs_naive": allc / naive, "ratio_vs_naive_per_core": allc / cores / naive,
          "hours_per_million": 1e6 / allc / 3600})
    emit({"benchmark": "datagen", "what": "stage ms per sample (1 process)", **stage_profile(cfg)})


if __name__ == "__main__":
    main()
