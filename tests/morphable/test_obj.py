"""morphable/obj.py: reading ICT-style OBJ files (polygons, uv, no vertices) and the write/read round trip."""
from __future__ import annotations

import numpy as np
import pytest

from morphable.obj import ObjError, read_obj, read_obj_topology, read_obj_vertices, write_obj


def test_read_obj_vertices_and_topology(tmp_path):
    p = tmp_path / "m.obj"
    p.write_text(
        "# comment\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0.5 2 1e-1\nvn 0 0 1\n"
        "vt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 1\n"
        "f 1/1/1 2/2/1 3/3/1 4/4/1\nf 4//1 3//1 5//1\nf 1 2 3 5 4\n"
    )
    v = read_obj_vertices(p)
    np.testing.assert_array_equal(v, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 2, 0.1]])
    tris, tri_uv, uv, poly = read_obj_topology(p, with_polygon=True)
    np.testing.assert_array_equal(tris, [[0, 1, 2], [0, 2, 3], [3, 2, 4], [0, 1, 2], [0, 2, 4], [0, 4, 3]])
    np.testing.assert_array_equal(tri_uv[:2], [[0, 1, 2], [0, 2, 3]])
    assert np.all(tri_uv[2:] == -1)
    assert uv.shape == (5, 2)
    np.testing.assert_array_equal(poly, [0, 0, 1, 2, 2, 2])
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\nf 1 2 3\n")
    with pytest.raises(ObjError, match="no vertices"):
        read_obj_vertices(empty)


@pytest.mark.parametrize("with_uv", [False, True])
@pytest.mark.parametrize("with_normals", [False, True])
def test_write_then_read_round_trip(tmp_path, with_uv, with_normals):
    rng = np.random.default_rng(0)
    verts = rng.normal(0, 50, (7, 3))
    tris = rng.integers(0, 7, (5, 3))
    uv = rng.random((4, 2)) if with_uv else None
    tri_uv = rng.integers(0, 4, (5, 3)) if with_uv else None
    normals = rng.normal(size=(7, 3)) if with_normals else None
    path = write_obj(tmp_path / "m.obj", verts, tris, uv, tri_uv, "m.png" if with_uv else None, normals)
    v, t = read_obj(path)
    np.testing.assert_allclose(v, verts, atol=5e-6)
    np.testing.assert_array_equal(t, tris)
    _, back_uv_idx, back_uv = read_obj_topology(path)
    if with_uv:
        np.testing.assert_array_equal(back_uv_idx, tri_uv)
        np.testing.assert_allclose(back_uv, uv, atol=5e-7)
        assert (tmp_path / "m.mtl").read_text().endswith("map_Kd m.png\n")
    else:
        assert np.all(back_uv_idx == -1) and not (tmp_path / "m.mtl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.mtl", "m.obj"] if with_uv else ["m.obj"])


def test_written_text(tmp_path):
    path = write_obj(tmp_path / "t.obj", np.array([[1.0, 2.0, -3.0], [0, 0, 0], [1, 1, 1]]), np.array([[0, 1, 2]]))
    assert path.read_text() == ("# facesynth mesh: millimetres, y up, face along +z; 3 vertices, 1 triangles\n"
                                "v 1.00000 2.00000 -3.00000\nv 0.00000 0.00000 0.00000\nv 1.00000 1.00000 1.00000\n"
                                "f 1 2 3\n")


def _formatted(verts, tris, uv=None, tri_uv=None, normals=None) -> str:
    """The OBJ text by Python's own formatting, line by line (what write_obj writes, without an MTL)."""
    lines = [f"# facesynth mesh: millimetres, y up, face along +z; {len(verts)} vertices, {len(tris)} triangles"]
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in verts]
    lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in normals] if normals is not None else []
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv] if uv is not None else []
    for k, (a, b, c) in enumerate(tris + 1):
        if uv is not None:
            ta, tb, tc = tri_uv[k] + 1
            tail = [f"/{a}", f"/{b}", f"/{c}"] if normals is not None else ["", "", ""]
            lines.append(f"f {a}/{ta}{tail[0]} {b}/{tb}{tail[1]} {c}/{tc}{tail[2]}")
        elif normals is not None:
            lines.append(f"f {a}//{a} {b}//{b} {c}//{c}")
        else:
            lines.append(f"f {a} {b} {c}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_written_numbers_are_pythons_formatting(tmp_path, dtype):
    """The vectorised writer prints what "%.5f" / "%.6f" / "%d" print: rounding ties (half to even of the binary
    value), -0.0 and small negatives ("-0.00000"), wide and huge numbers, NaN; indices past 10**4."""
    rng = np.random.default_rng(3)
    verts = rng.normal(0, 80, (3000, 3))
    verts.reshape(-1)[:12] = [0.0, -0.0, -1e-9, 0.000005, 0.000015, 0.015625, -0.015625, 99999.999995,
                              -1.000005, 1234.567895, 12345678.9, -5e-6]
    k = rng.integers(-10 ** 6, 10 ** 6, 600)
    verts.reshape(-1)[12:612] = (k + 0.5) / 1e5  # decimal ties (up to the binary value)
    verts = verts.astype(dtype)
    tris = rng.integers(0, len(verts), (20000, 3))
    uv = rng.random((2500, 2))
    uv[:3] = [[0.0000005, 0.9999995], [0.25, 0.125], [1.0, -0.0]]
    tri_uv = rng.integers(0, len(uv), (20000, 3))
    normals = rng.normal(size=(3000, 3)).astype(dtype)
    for kw in ({}, {"normals": normals}, {"uv": uv, "tri_uv": tri_uv}, {"uv": uv, "tri_uv": tri_uv, "normals": normals}):
        text = write_obj(tmp_path / "m.obj", verts, tris, **kw).read_text()
        if "uv" in kw:
            text = text.replace("mtllib m.mtl\nusemtl face\n", "")
        assert text == _formatted(verts, tris, **kw), sorted(kw)
    odd = np.array([[np.nan, 1.0, -np.inf], [1e20, -0.0, 2.5]])  # not finite or too wide: Python formats the block
    assert write_obj(tmp_path / "o.obj", odd, np.array([[0, 1, 1]])).read_text() == _formatted(odd, np.array([[0, 1, 1]]))
