"""Renders/s of our renderer (render_face, render_shading; numba and GL backends) beside a naive pyrender loop
in the same run, and a cProfile breakdown of one render_face + render_shading on the numba backend.

The naive loop is what a first implementation does per frame: a new ``trimesh.Trimesh`` and
``pyrender.Mesh.from_trimesh`` of the same face geometry, pyrender's default shader, an
``OrthographicCamera`` with the same scale and centre, ``OffscreenRenderer(size, size).render(scene)``
(the renderer itself is created once). Our GL rasteriser and pyrender's renderer each hold an OSMesa
context in this one process; both make theirs current before each draw (checked below: our GL frame is
the same before and after the naive loop). Every frame cycles through the same few drawn scenes, and the
geometry (basis product) is computed inside each frame in every variant.

Prints JSON lines (``benchmarks.common.emit``); ``ratio_vs_naive`` = renders/s / naive renders/s.

    .venv/bin/python benchmarks/render.py [--n 40] [--naive-n 20] [--profile-n 20]
"""
from __future__ import annotations

import argparse
import cProfile
import dataclasses
import os
import pstats
import sys
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.common import emit, rate  # noqa: E402
from datagen.scene import draw_scene  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from morphable.model import load_model  # noqa: E402
from render.renderer import FaceRenderer  # noqa: E402

N_SCENES = 8


def naive_renderer(model, size: int):
    """A function frame(scene, albedo) -> (rgb, depth) of the naive pyrender loop, and its renderer."""
    import pyrender
    import trimesh

    r = pyrender.OffscreenRenderer(size, size)

    def frame(s, albedo):
        verts = model.vertices(s.alpha_gt) @ s.pose.rotation.T
        colors = (np.clip(albedo, 0, 1) * 255).astype(np.uint8)
        mesh = trimesh.Trimesh(verts, model.triangles, vertex_colors=colors, process=False)
        scene = pyrender.Scene(ambient_light=[0.5, 0.5, 0.5], bg_color=[0, 0, 0, 0])
        scene.add(pyrender.Mesh.from_trimesh(mesh))
        mag = size / (2 * s.pose.scale)
        cam = pyrender.OrthographicCamera(xmag=mag, ymag=mag, znear=1, zfar=1000)
        cam_pose = np.eye(4)  # the camera centre where our projection puts the image centre
        cam_pose[:3, 3] = [(size / 2 - s.pose.translation[0]) / s.pose.scale,
                           (s.pose.translation[1] - size / 2) / s.pose.scale, 400]
        scene.add(cam, pose=cam_pose)
        scene.add(pyrender.DirectionalLight(intensity=3.0), pose=cam_pose)
        return r.render(scene)

    return frame, r


def profile_numba(model, cfg, scenes, albedos, n: int, top: int = 14) -> list:
    """cProfile of n (render_face + render_shading) pairs: [(function, ms per pair (own time),
    ms per pair (cumulative), calls per pair)] of the top functions by own time."""
    r = FaceRenderer.from_config(model, cfg.render, backend="numba")
    s = scenes[0]
    r.render_face(s.alpha_gt, s.pose, albedos[0], s.light, s.background)  # compile / load the kernels
    prof = cProfile.Profile()
    prof.enable()
    for i in range(n):
        s = scenes[i % len(scenes)]
        r.render_face(s.alpha_gt, s.pose, albedos[i % len(scenes)], s.light, s.background)
        r.render_shading(s.alpha_t, s.pose)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.items():
        where = f"{Path(file).name}:{line}({name})" if file != "~" else name
        rows.append((where, 1000 * tt / n, 1000 * ct / n, nc / n))
    rows.sort(key=lambda x: -x[1])
    total = sum(x[1] for x in rows)
    return [("TOTAL", total, total, 1.0)] + rows[:top]


def stage_times(model, cfg, scenes, albedos, n: int) -> dict:
    """Milliseconds per frame of each stage of render_face (numba), timed by hand."""
    import time

    from render.camera import project, rotate_normals
    from render.raster import fragments_from_ids
    from render.shading import phong_shade, to_gray

    r = FaceRenderer.from_config(model, cfg.render, backend="numba")
    t = dict.fromkeys(["vertices", "project", "rasterize", "fragments", "vertex_normals", "interp_normals",
                       "interp_albedo", "phong", "composite"], 0.0)
    for i in range(n + 1):
        s, albedo = scenes[i % len(scenes)], albedos[i % len(scenes)]
        c0 = time.perf_counter()
        verts = model.vertices(s.alpha_gt)
        c1 = time.perf_counter()
        vi = project(verts, s.pose)
        c2 = time.perf_counter()
        ids = r.rasterizer.rasterize(vi, model.triangles, r.size, r.size)
        c3 = time.perf_counter()
        frags = fragments_from_ids(ids, vi, model.triangles)
        c4 = time.perf_counter()
        vn = rotate_normals(model.vertex_normals(verts), s.pose)
        c5 = time.perf_counter()
        nrm = frags.interpolate(vn, model.triangles)
        nrm /= np.maximum(np.linalg.norm(nrm, axis=-1, keepdims=True), 1e-12)
        c6 = time.perf_counter()
        a = frags.interpolate(albedo, model.triangles)
        c7 = time.perf_counter()
        lit = phong_shade(nrm, a, s.light.direction, s.light.ambient, s.light.diffuse, s.light.specular,
                          s.light.shininess)
        c8 = time.perf_counter()
        rgb = np.where(frags.mask[..., None], np.clip(lit, 0, 1), s.background).astype(np.float32)
        to_gray(rgb)
        c9 = time.perf_counter()
        if i == 0:
            continue  # warm-up
        for k, (a0, a1) in zip(t, [(c0, c1), (c1, c2), (c2, c3), (c3, c4), (c4, c5), (c5, c6), (c6, c7),
                                   (c7, c8), (c8, c9)]):
            t[k] += a1 - a0
    return {k: 1000 * v / n for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40, help="timed frames per variant of ours")
    ap.add_argument("--naive-n", type=int, default=20, help="timed frames of the naive loop")
    ap.add_argument("--profile-n", type=int, default=20, help="profiled render_face + render_shading pairs")
    ap.add_argument("--no-gl", action="store_true", help="skip the GL backend")
    args = ap.parse_args()

    cfg = load_config()
    size = cfg.render.image_size
    model = load_model(cfg.resolve_path(cfg.model.path))
    scenes = [draw_scene(0, i, model, cfg) for i in range(N_SCENES)]
    albedos = [s.head_albedo(model) for s in scenes]

    def face_fn(r, photo=None):
        lights = [dataclasses.replace(s.light, **photo) if photo else s.light for s in scenes]

        def f(i):
            s = scenes[i % N_SCENES]
            return r.render_face(s.alpha_gt, s.pose, albedos[i % N_SCENES], lights[i % N_SCENES], s.background)
        return f

    def shading_fn(r):
        def f(i):
            s = scenes[i % N_SCENES]
            return r.render_shading(s.alpha_t, s.pose)
        return f

    renderers = {"numba": FaceRenderer.from_config(model, cfg.render, image_size=size, backend="numba")}
    if not args.no_gl:
        try:
            renderers["gl"] = FaceRenderer(model, size, "gl", "osmesa", cfg.render.shading_ambient, cfg.render.shading_diffuse)
        except Exception as e:  # no OSMesa here: report it and go on without GL
            emit({"benchmark": "render", "what": "gl backend unavailable", "error": f"{type(e).__name__}: {e}"})
    before = {name: r.render_shading(scenes[0].alpha_t, scenes[0].pose)[1] for name, r in renderers.items()}

    frame, naive_r = naive_renderer(model, size)
    naive = rate(lambda i: frame(scenes[i % N_SCENES], albedos[i % N_SCENES]), args.naive_n)
    _, naive_depth = frame(scenes[0], albedos[0])
    naive_r.delete()
    mask_px = int(renderers["numba"].render_face(scenes[0].alpha_gt, scenes[0].pose, albedos[0],
                                                 scenes[0].light).mask.sum())
    emit({"benchmark": "render", "what": "naive pyrender loop (new trimesh + pyrender mesh per frame, "
          "default shader, OffscreenRenderer)", "backend": f"pyrender {os.environ['PYOPENGL_PLATFORM']}",
          "size": size, "renders_per_s": naive, "ratio_vs_naive": 1.0, "mask_px": int((naive_depth > 0).sum()),
          "our_mask_px": mask_px})

    for name, r in renderers.items():
        after = r.render_shading(scenes[0].alpha_t, scenes[0].pose)[1]
        if not np.array_equal(before[name], after):
            emit({"benchmark": "render", "what": f"{name}: frame changed after the naive loop's GL context"})
        for what, fn in (("render_face", face_fn(r)), ("render_shading", shading_fn(r))):
            rps = rate(fn, args.n, warmup=2)
            emit({"benchmark": "render", "what": what, "backend": name, "size": size, "renders_per_s": rps,
                  "ratio_vs_naive": rps / naive})
            if what == "render_face":  # the photo light (sampling.light: occlusion, shadows, sRGB) against plain
                photo = rate(face_fn(r, dict(occlusion=1.0, shadow=1.0, srgb=True)), args.n, warmup=2)
                emit({"benchmark": "render", "what": "render_face, photo light (occlusion + cast shadows + sRGB)",
                      "backend": name, "size": size, "renders_per_s": photo, "ratio_vs_naive": photo / naive,
                      "ratio_vs_plain_render_face": photo / rps})
    for r in renderers.values():
        if r.backend == "gl":
            r.rasterizer.close()

    emit({"benchmark": "render", "what": "render_face stages, ms per frame (numba)",
          **stage_times(model, cfg, scenes, albedos, args.profile_n)})
    top = profile_numba(model, cfg, scenes, albedos, args.profile_n)
    emit({"benchmark": "render", "what": "cProfile render_face + render_shading (numba), ms per pair",
          "top": [{"function": f, "own_ms": own, "cum_ms": cum, "calls": calls} for f, own, cum, calls in top]})


if __name__ == "__main__":
    main()
