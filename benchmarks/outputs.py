"""Seconds of ``refine sfs``'s output writing (:func:`reconstruct.outputs.write_outputs`: coarse.obj, refined.obj,
refined_depthmap.obj, six PNGs, face.glb, params.json) for one reconstruction of a photo, beside a same-run baseline
of the writers as they were: the OBJ writer's line-by-line f-strings (a copy here; the same bytes), Pillow's default
PNG level 6, and face.glb's morph targets as whole arrays, an accessor per target, serialised by pygltflib's
``save_to_bytes`` (the earlier file's numbers and size; the numpy work before the accessors is today's, so the
baseline's glb time is below the earlier writer's), and the UV texture's padding by scipy's ``grey_dilation``;
and each file's size both ways.

The reconstruction runs once (detector, fit, detail network, SfS, as ``refine sfs`` runs them) before any clock
starts; then the two take turns for ``--repeats`` rounds, each into its own temporary folder, each without the
target lists face.glb keeps per face model (as for a process's first photo). Times are the
minimum and the median over the rounds, wall clock and CPU seconds (cores shared with other jobs make the first
depend on the share this process got), in all and per kind of file (``obj``: the three OBJs with their MTLs;
``png``: the six PNGs; ``glb``: face.glb; ``texture``: baking coarse_texture.png's atlas).

    .venv/bin/python benchmarks/outputs.py [--photo data/astronaut.png] [--repeats 5]

Prints one JSON line (:func:`benchmarks.common.emit`): {"benchmark": "outputs", "machine": ..., "seconds": ...,
"baseline_seconds": ..., "speedup_vs_baseline": ..., "seconds_by_kind": {...}, "bytes": {...}, ...}.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pygltflib as gl  # noqa: E402

import reconstruct.gltf as gltf  # noqa: E402
import reconstruct.outputs as outputs  # noqa: E402
import reconstruct.texture as texture  # noqa: E402
from benchmarks.common import Meter, emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from facesynth.io import atomic_write_text, save_png  # noqa: E402
from morphable.obj import _head_lines  # noqa: E402
from reconstruct.batch import detect_photo  # noqa: E402
from reconstruct.models import StackOptions, load_stack  # noqa: E402
from reconstruct.pipeline import reconstruct_face  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
KINDS = {"obj": "write_obj", "png": "save_png", "glb": "write_face_glb", "texture": "bake_uv_texture"}


# ---------------------------------------------------------------------------------------------- the baseline
def baseline_write_obj(path, verts, triangles, uv=None, tri_uv=None, texture_png=None, normals=None) -> Path:
    """morphable.obj.write_obj as it was: an f-string per line (the same bytes as the vectorised writer)."""
    path = Path(path)
    lines = _head_lines(path, len(verts), len(triangles), texture_png)
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in verts]
    if normals is not None:
        lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in normals]
    has_uv = uv is not None and tri_uv is not None
    if has_uv:
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    t = triangles + 1
    if has_uv:
        tu = tri_uv + 1
        if normals is not None:
            lines += [f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}" for (a, b, c), (ta, tb, tc) in zip(t, tu)]
        else:
            lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(t, tu)]
    elif normals is not None:
        lines += [f"f {a}//{a} {b}//{b} {c}//{c}" for a, b, c in t]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in t]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def baseline_save_png(path, img) -> Path:
    """save_png at Pillow's default zlib level."""
    return save_png(path, img, compress_level=6)


def _whole_targets(self: gltf._Builder, lists, bounds: bool) -> list[int]:
    """``_Builder.sparse`` as the targets were written before: an accessor per target over every vertex (a target
    that is all zeros: an accessor with no buffer view). ``lists`` list every vertex (:data:`BASELINE`'s thresholds)."""
    assert np.all(lists.counts == lists.n), "the baseline lists every vertex"
    out = []
    for d in lists.values.reshape(len(lists.counts), lists.n, 3):
        if d.any():
            out.append(self.accessor(d, gl.VEC3, bounds=bounds))
            continue
        acc = gl.Accessor(componentType=gl.FLOAT, count=len(d), type=gl.VEC3, byteOffset=None)
        if bounds:
            acc.min, acc.max = [0.0] * 3, [0.0] * 3
        self.gltf.accessors.append(acc)
        out.append(len(self.gltf.accessors) - 1)
    return out


def _pygltflib_bytes(self: gltf._Builder) -> bytes:
    """``_Builder.to_bytes`` as it was: pygltflib's ``save_to_bytes``."""
    self.pad()
    self.gltf.buffers = [gl.Buffer(byteLength=self.size)]
    self.gltf.set_binary_blob(b"".join(self.chunks))
    return b"".join(self.gltf.save_to_bytes())


def _scipy_max3x3(a: np.ndarray) -> np.ndarray:
    """``reconstruct.texture._max3x3`` as it was: scipy's grey dilation, channel by channel."""
    from scipy.ndimage import grey_dilation

    if a.ndim == 2:
        return grey_dilation(a.astype(np.uint8), size=3).astype(bool) if a.dtype == bool else grey_dilation(a, size=3)
    return np.stack([grey_dilation(a[..., c], size=3) for c in range(a.shape[-1])], -1)


@contextlib.contextmanager
def patched(changes: list[tuple[object, str, object]]):
    """Set ``setattr(owner, name, value)`` for each change inside the block, and restore the originals."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    try:
        for owner, name, value in changes:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


#: What the baseline replaces: the writers, and every delta listed (thresholds below 0) to be written whole.
BASELINE = [(outputs, "write_obj", baseline_write_obj), (outputs, "save_png", baseline_save_png),
            (gltf, "SPARSE_POSITION_M", -1.0), (gltf, "SPARSE_NORMAL", -1.0), (gltf._Builder, "sparse", _whole_targets),
            (gltf._Builder, "to_bytes", _pygltflib_bytes), (texture, "_max3x3", _scipy_max3x3)]


# ---------------------------------------------------------------------------------------------- timing
def timed_write(rec, photo, det, model, out: Path, baseline: bool) -> tuple[float, float, dict[str, float]]:
    """One write_outputs into ``out``: (wall s, CPU s, wall s by kind of file)."""
    by_kind = dict.fromkeys(KINDS, 0.0)

    def clocked(kind, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                by_kind[kind] += time.perf_counter() - t0
        return run

    gltf._part_targets.cache_clear()  # as for a process's first photo (and no lists of the other way)
    try:
        with patched(BASELINE if baseline else []):
            with patched([(outputs, name, clocked(kind, getattr(outputs, name))) for kind, name in KINDS.items()]):
                with Meter() as m:
                    outputs.write_outputs(rec, photo, det, model, out)
    finally:
        gltf._part_targets.cache_clear()
    return m.wall, m.cpu, by_kind


def _summary(runs: list[tuple[float, float, dict[str, float]]]) -> dict:
    wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
    return {"seconds": min(wall), "seconds_median": statistics.median(wall), "cpu_seconds": min(cpu),
            "seconds_by_kind": {k: min(r[2][k] for r in runs) for k in KINDS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default=str(REPO / "data" / "astronaut.png"))
    ap.add_argument("--repeats", type=int, default=5, help="rounds of new and baseline writes, taking turns")
    args = ap.parse_args()

    cfg = load_config()
    stack = load_stack(cfg, StackOptions())
    photo, faces = detect_photo(Path(args.photo), cfg, False)
    rec = reconstruct_face(photo, faces[0], stack.model, cfg, stack.coarse, cfg.refine.resolution,
                           sfs_params=cfg.refine.sfs, detail=stack.detail)
    runs = {"new": [], "baseline": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in runs:  # a first write of each, not timed (imports, caches)
            timed_write(rec, photo, faces[0], stack.model, Path(tmp) / way, way == "baseline")
        for _ in range(args.repeats):
            for way in runs:
                runs[way].append(timed_write(rec, photo, faces[0], stack.model, Path(tmp) / way, way == "baseline"))
        for way in runs:
            sizes[way] = {p.name: p.stat().st_size for p in sorted((Path(tmp) / way).iterdir())}
    new, old = _summary(runs["new"]), _summary(runs["baseline"])
    emit({"benchmark": "outputs", "what": f"write_outputs of {Path(args.photo).name}'s reconstruction (3 OBJ, "
                                          f"6 PNG, face.glb, params.json) vs the writers before vectorising",
          "photo": Path(args.photo).name,
          **new, "baseline_seconds": old["seconds"], "baseline_seconds_median": old["seconds_median"],
          "baseline_cpu_seconds": old["cpu_seconds"], "baseline_seconds_by_kind": old["seconds_by_kind"],
          "speedup_vs_baseline": old["seconds"] / new["seconds"],
          "speedup_by_kind": {k: old["seconds_by_kind"][k] / max(new["seconds_by_kind"][k], 1e-9) for k in KINDS},
          "repeats": args.repeats, "bytes_total": sum(sizes["new"].values()),
          "baseline_bytes_total": sum(sizes["baseline"].values()), "bytes": sizes["new"],
          "baseline_bytes": sizes["baseline"]})


if __name__ == "__main__":
    main()
