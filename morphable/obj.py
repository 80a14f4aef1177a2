"""Wavefront OBJ: reading ICT-FaceKit's meshes (and ours) and writing meshes with an MTL and a PNG texture.

Positions are in the file's units: ICT's files are in centimetres; what :func:`write_obj` writes is in the
model frame and units (millimetres, y up, face looking along +z). Indices are 0-based in memory, 1-based in
the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facesynth.io import atomic_write_bytes, atomic_write_text


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


#: The 4-digit decimal strings "0000" .. "9999", 4 ASCII bytes each, as uint32 (indexed by the number).
_QUADS = np.frombuffer("".join(f"{i:04d}" for i in range(10000)).encode("ascii"), np.uint32)
#: The exact path of :func:`_fixed` formats ``|x| * 10**decimals`` below this: there a float64 product is within
#: 6e-8 of the exact one, far inside the 1e-6 margin by which a value counts as a possible tie.
_FIXED_LIMIT = 1e9


def _digits(n: np.ndarray, width: int) -> np.ndarray:
    """(N,) int64 in [0, 10**width) -> (N, width) uint8: the ASCII decimal digits, zero-padded on the left."""
    quads = -(-width // 4)
    out = np.empty((len(n), quads), np.uint32)
    for j in range(quads - 1, -1, -1):
        n, low = np.divmod(n, 10000)
        out[:, j] = _QUADS[low]
    return out.view(np.uint8)[:, 4 * quads - width:]


def _integers(values: np.ndarray) -> np.ndarray:
    """(N,) integers -> (N, W) uint8: ``"%d" % v`` right-aligned, 0 bytes before (see :func:`_rows`)."""
    v = np.asarray(values, np.int64)
    mag = np.abs(v)
    width = len(str(int(mag.max()))) if len(v) else 1
    d = _digits(mag, width)
    d[:, :-1][mag[:, None] < 10 ** np.arange(width - 1, 0, -1)] = 0  # leading zeros
    if not (v < 0).any():
        return d
    return np.concatenate([np.where(v < 0, ord("-"), 0).astype(np.uint8)[:, None], d], 1)


def _integer_fields(columns: np.ndarray) -> list[np.ndarray]:
    """(C, N) integers -> C fields of :func:`_integers`. Indices (0 <= v < C * N) are formatted once each, 0 .. max,
    and looked up (8 bytes a number, one gather per column)."""
    columns = np.asarray(columns, np.int64)
    top = int(columns.max()) if columns.size else 0
    if not columns.size or columns.min() < 0 or top >= min(columns.size, 10 ** 8):
        return [_integers(c) for c in columns]
    table = _integers(np.arange(top + 1))
    width = table.shape[1]
    padded = np.zeros((top + 1, 8), np.uint8)
    padded[:, 8 - width:] = table
    words = padded.view(np.uint64)[:, 0]
    return [words[c].view(np.uint8).reshape(-1, 8)[:, 8 - width:] for c in columns]


def _fixed(values: np.ndarray, decimals: int) -> np.ndarray | None:
    """(N,) floats -> (N, W) uint8: ``"%.{decimals}f" % v`` right-aligned, 0 bytes before (see :func:`_rows`);
    None when some value is not finite or ``|v| * 10**decimals`` reaches :data:`_FIXED_LIMIT`.

    The same text as Python's formatting (the exact binary value rounded half to even): ``rint(|v| * 10**d)``
    is that rounding except within rounding error of a tie, and those few values are formatted by Python."""
    x = np.asarray(values, np.float64)
    y = np.abs(x) * 10.0 ** decimals
    if not np.all(y < _FIXED_LIMIT):  # NaN fails too
        return None
    q = np.rint(y).astype(np.int64)
    for i in np.flatnonzero(np.abs(y - np.floor(y) - 0.5) < 1e-6):
        q[i] = int(("%.*f" % (decimals, abs(x[i]))).replace(".", ""))
    whole = q // 10 ** decimals
    width = len(str(int(whole.max()))) if len(q) else 1
    d = _digits(q, width + decimals)
    out = np.empty((len(x), width + decimals + 2), np.uint8)
    out[:, 0] = np.where(np.signbit(x), ord("-"), 0)  # "-0.00000" for -0.0 and small negatives, as Python
    out[:, 1:width + 1] = d[:, :width]
    out[:, 1:width][whole[:, None] < 10 ** np.arange(width - 1, 0, -1)] = 0  # leading zeros
    out[:, width + 1] = ord(".")
    out[:, width + 2:] = d[:, width:]
    return out


def _rows(*parts: bytes | np.ndarray) -> bytes:
    """Text rows, each the concatenation of ``parts``: bytes (the same in every row) or (N, W) uint8 fields;
    the 0 bytes (the padding of :func:`_integers` and :func:`_fixed`) are left out."""
    n = next(len(p) for p in parts if isinstance(p, np.ndarray))
    widths = [len(p) if isinstance(p, bytes) else p.shape[1] for p in parts]
    buf = np.empty((n, sum(widths)), np.uint8)
    at = 0
    for p, w in zip(parts, widths):
        buf[:, at:at + w] = np.frombuffer(p, np.uint8) if isinstance(p, bytes) else p
        at += w
    return buf[buf != 0].tobytes()


def _float_rows(tag: str, values: np.ndarray, decimals: int) -> bytes:
    """``"{tag} %.{decimals}f %.{decimals}f ...\\n"`` for each row of (N, C) ``values``."""
    values = np.asarray(values, np.float64)
    if not len(values):
        return b""
    fields = [_fixed(values[:, c], decimals) for c in range(values.shape[1])]
    if any(f is None for f in fields):  # non-finite or huge values: Python formats them all
        line = tag + f" %.{decimals}f" * values.shape[1] + "\n"
        return ((line * len(values)) % tuple(values.ravel().tolist())).encode("ascii")
    parts: list = [tag.encode("ascii")]
    for f in fields:
        parts += [b" ", f]
    return _rows(*parts, b"\n")


def _head_lines(path: Path, n_verts: int, n_triangles: int, texture_png: str | None) -> list[str]:
    """The OBJ's first lines: the comment, and with a texture ``mtllib`` and ``usemtl`` (its MTL, naming
    ``texture_png``, is written next to ``path``)."""
    lines = [f"# facesynth mesh: millimetres, y up, face along +z; {n_verts} vertices, {n_triangles} triangles"]
    if texture_png:
        mtl = path.with_suffix(".mtl")
        atomic_write_text(mtl, f"newmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {texture_png}\n")
        lines += [f"mtllib {mtl.name}", "usemtl face"]
    return lines


def write_obj(path: str | Path, verts: np.ndarray, triangles: np.ndarray, uv: np.ndarray | None = None,
              tri_uv: np.ndarray | None = None, texture_png: str | None = None,
              normals: np.ndarray | None = None) -> Path:
    """Write an OBJ (and, with a texture, an MTL next to it that names ``texture_png``), atomically.

    Lines: a comment; ``mtllib`` and ``usemtl`` with a texture; ``v x y z`` (mm, 5 decimals); ``vn`` (5 decimals)
    with normals; ``vt u v`` (6 decimals) with UVs; ``f a b c``, ``f a/ta ...``, ``f a//a ...`` or ``f a/ta/a ...``
    (1-based; a vertex's normal has its index). The text is built by numpy, field by field (:func:`_rows`).

    Args:
        verts: (V, 3) mm; triangles: (F, 3) 0-based; uv: (T, 2) and tri_uv: (F, 3) texture coordinates;
        texture_png: file name of the texture, relative to the OBJ's folder; normals: (V, 3) optional.
    """
    path = Path(path)
    chunks = ["\n".join(_head_lines(path, len(verts), len(triangles), texture_png)).encode("utf-8") + b"\n",
              _float_rows("v", verts, 5)]
    if normals is not None:
        chunks.append(_float_rows("vn", normals, 5))
    has_uv = uv is not None and tri_uv is not None
    if has_uv:
        chunks.append(_float_rows("vt", uv, 6))
    t = np.asarray(triangles, np.int64).reshape(-1, 3) + 1
    if len(t):
        fields = _integer_fields(np.concatenate([t, np.asarray(tri_uv, np.int64) + 1], 1).T if has_uv else t.T)
        vi, ti = fields[:3], fields[3:]
        parts: list = [b"f"]
        for k in range(3):
            parts += [b" ", vi[k]] + ([b"/", ti[k]] if has_uv else [])
            if normals is not None:
                parts += [b"/" if has_uv else b"//", vi[k]]
        chunks.append(_rows(*parts, b"\n"))
    atomic_write_bytes(path, b"".join(chunks))
    return path
