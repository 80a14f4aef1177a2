"""Wavefront OBJ: reading ICT-FaceKit's meshes (and ours) and writing meshes with an MTL and a PNG texture.

Positions are in the file's units: ICT's files are in centimetres; what :func:`write_obj` writes is in the
model frame and units (millimetres, y up, face looking along +z). Indices are 0-based in memory, 1-based in
the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facesynth.io import atomic_write_text


class ObjError(ValueError):
    """An OBJ file has no vertices."""


def read_obj_vertices(path: str | Path) -> np.ndarray:
    """Read the ``v`` lines of an OBJ file (fast: ICT's 150 mode files are read this way).

    Returns:
        (V, 3) float64 positions in the file's units.
    """
    with open(path, "rb") as f:
        lines = [ln[2:] for ln in f.read().split(b"\n") if ln.startswith(b"v ")]
    if not lines:
        raise ObjError(f"{path}: no vertices")
    return np.array(b" ".join(lines).split(), dtype=np.float64).reshape(-1, 3)


def read_obj_topology(path: str | Path, with_polygon: bool = False):
    """Read the polygons of an OBJ and split them into triangles (fan split, 0-based indices).

    Returns:
        tris: (F, 3) int64 vertex indices; tri_uv: (F, 3) int64 indices into ``uv`` (-1 where a corner has
        none); uv: (T, 2) float64. A quad ``a b c d`` becomes ``a b c`` and ``a c d`` (so triangles 2i, 2i+1
        come from one quad). With ``with_polygon``, also (F,) int64: the polygon each triangle comes from.
    """
    uv, tris, tri_uv, tri_poly = [], [], [], []
    n_poly = 0
    with open(path, "r") as f:
        for line in f:
            if line.startswith("vt "):
                uv.append([float(x) for x in line.split()[1:3]])
            elif line.startswith("f "):
                corners = [c.split("/") for c in line.split()[1:]]
                vi = [int(c[0]) - 1 for c in corners]
                ti = [int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in corners]
                for k in range(1, len(vi) - 1):
                    tris.append([vi[0], vi[k], vi[k + 1]])
                    tri_uv.append([ti[0], ti[k], ti[k + 1]])
                    tri_poly.append(n_poly)
                n_poly += 1
    out = (np.array(tris, np.int64).reshape(-1, 3), np.array(tri_uv, np.int64).reshape(-1, 3),
           np.array(uv, np.float64).reshape(-1, 2))
    return out + (np.array(tri_poly, np.int64),) if with_polygon else out


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The vertices (V, 3) float64 and triangles (F, 3) int64 (0-based, polygons fan-split) of an OBJ."""
    return read_obj_vertices(path), read_obj_topology(path)[0]


def write_obj(path: str | Path, verts: np.ndarray, triangles: np.ndarray, uv: np.ndarray | None = None,
              tri_uv: np.ndarray | None = None, texture_png: str | None = None,
              normals: np.ndarray | None = None) -> Path:
    """Write an OBJ (and, with a texture, an MTL next to it that names ``texture_png``), atomically.

    Args:
        verts: (V, 3) mm; triangles: (F, 3) 0-based; uv: (T, 2) and tri_uv: (F, 3) texture coordinates;
        texture_png: file name of the texture, relative to the OBJ's folder; normals: (V, 3) optional.
    """
    path = Path(path)
    lines = [f"# facesynth mesh: millimetres, y up, face along +z; {len(verts)} vertices, {len(triangles)} triangles"]
    if texture_png:
        mtl = path.with_suffix(".mtl")
        atomic_write_text(mtl, f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_png}\n")
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
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
