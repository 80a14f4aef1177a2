"""Writing meshes: Wavefront OBJ with an MTL and a PNG texture, and reading OBJ back (for tests and users).

Meshes are written in the model frame and units: millimetres, y up, face looking along +z.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_obj(path: str | Path, verts: np.ndarray, triangles: np.ndarray, uv: np.ndarray | None = None,
              tri_uv: np.ndarray | None = None, texture_png: str | None = None,
              normals: np.ndarray | None = None) -> Path:
    """Write an OBJ (and, with a texture, an MTL next to it that names ``texture_png``).

    Args:
        verts: (V, 3) mm; triangles: (F, 3) 0-based; uv: (T, 2) and tri_uv: (F, 3) texture coordinates;
        texture_png: file name of the texture, relative to the OBJ's folder; normals: (V, 3) optional.
    """
    path = Path(path)
    lines = [f"# facesynth mesh: millimetres, y up, face along +z; {len(verts)} vertices, {len(triangles)} triangles"]
    if texture_png:
        mtl = path.with_suffix(".mtl")
        _atomic_write_text(mtl, f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_png}\n")
        lines += [f"mtllib {mtl.name}", "usemtl face"]
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
    _atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the vertices (V, 3) and triangles (F, 3, 0-based) of an OBJ written by :func:`write_obj`
    (or any triangle OBJ)."""
    verts, faces = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(c.split("/")[0]) - 1 for c in line.split()[1:4]])
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64)
