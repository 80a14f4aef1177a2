"""morphable/convert.py: the converted model against ICT-FaceKit's OBJ files and README, and the converter end
to end on a tiny fake ICT folder.

The OBJ files are read here with a parser of their own (a few lines), so a bug in the converter's readers
(morphable/obj.py) cannot hide itself. The full conversion is not re-run (minutes); three OBJ files are read instead.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from morphable import convert as cv
from morphable.model import FaceModel

#: ICT README rows the converted model keeps, in order (teeth: canine to canine, upper then lower).
KEPT_ROWS = [("Face",), ("Mouth socket",), ("Canine upper left", "Canine upper right"),
             ("Canine lower left", "Canine lower right"), ("Sclera left",), ("Iris left",), ("Sclera right",),
             ("Iris right",)]


# ------------------------------------------------------------------------------------------ helpers
def obj_vertices(path: Path) -> np.ndarray:
    """(V, 3) float64 positions of the ``v`` lines."""
    with open(path) as f:
        return np.array([[float(x) for x in line.split()[1:4]] for line in f if line.startswith("v ")])


def obj_polygons(path: Path) -> list[list[int]]:
    """0-based vertex indices of each ``f`` line."""
    with open(path) as f:
        return [[int(c.split("/")[0]) - 1 for c in line.split()[1:]] for line in f if line.startswith("f ")]


def readme_tables(readme: Path) -> dict[str, tuple[int, int, int]]:
    """README table rows: geometry name -> (first vertex, last vertex (inclusive), #vertices)."""
    rows = {}
    for line in readme.read_text().splitlines():
        m = re.match(r"\|\s*#?\d+\s*\|\s*([^|]+?)\s*\|\s*\[(\d+):(\d+)\]\s*\|[^|]*\|\s*(\d+)\s*\|", line)
        if m:
            rows.setdefault(m.group(1).lower(), (int(m.group(2)), int(m.group(3)), int(m.group(4))))
    return rows


def readme_landmarks(readme: Path) -> list[int]:
    text = readme.read_text()
    block = text.split("Multi-PIE 68 point facial landmarks indices:", 1)[1].strip().split("\n\n")[0]
    return [int(x) for x in block.replace(",", " ").split()]


@pytest.fixture(scope="module")
def readme(ict_dir) -> Path:
    path = ict_dir.parent / "README.md"
    if not path.exists():
        pytest.skip(f"ICT README not found at {path}")
    return path


@pytest.fixture(scope="module")
def neutral(ict_dir) -> np.ndarray:
    return obj_vertices(ict_dir / "generic_neutral_mesh.obj")


@pytest.fixture(scope="module")
def h5(model_path):
    with h5py.File(model_path, "r") as f:
        yield {k: f[k][()] for k in ("ict_vertex_index", "identity_names", "expression_names")}


# ------------------------------------------------------------------------------------------ real data
def test_kept_vertices_are_the_readme_ranges(readme, h5, model):
    rows = readme_tables(readme)
    ranges = []
    for names in KEPT_ROWS:
        first, last = rows[names[0].lower()][0], rows[names[-1].lower()][1]
        ranges.append(np.arange(first, last + 1))
    np.testing.assert_array_equal(h5["ict_vertex_index"], np.concatenate(ranges))
    assert model.n_vertices == sum(len(r) for r in ranges)
    # region sizes are the README's vertex counts, and regions sit where the kept order puts them
    sizes = {
        "face": rows["face"][2], "narrow_face": rows["narrow face area"][2], "mouth_interior": rows["mouth socket"][2],
        "sclera_left": rows["sclera left"][2], "iris_left": rows["iris left"][2],
        "sclera_right": rows["sclera right"][2], "iris_right": rows["iris right"][2],
        "teeth": len(ranges[2]) + len(ranges[3]),
    }
    assert sizes["face"] == 9409 and sizes["narrow_face"] == 6706
    for name, n in sizes.items():
        assert len(model.regions[name]) == n, name
    np.testing.assert_array_equal(model.regions["face"], np.arange(sizes["face"]))
    np.testing.assert_array_equal(model.regions["narrow_face"], np.arange(sizes["narrow_face"]))
    start = sum(len(r) for r in ranges[:2])
    np.testing.assert_array_equal(model.regions["teeth"], np.arange(start, start + sizes["teeth"]))
    eye_parts = ("sclera_left", "iris_left", "sclera_right", "iris_right")
    assert len(model.regions["eyes"]) == sum(sizes[k] for k in eye_parts)
    assert model.regions["eyes"].max() == model.n_vertices - 1


def test_landmarks_are_the_readme_list(readme, model):
    lm = readme_landmarks(readme)
    assert len(lm) == 68
    np.testing.assert_array_equal(model.landmarks68, lm)
    assert cv.MULTIPIE_68 == lm


def test_mean_and_modes_are_the_obj_files_in_mm(ict_dir, neutral, h5, model):
    keep = h5["ict_vertex_index"]
    np.testing.assert_allclose(model.mean, neutral[keep] * 10.0, rtol=1e-6, atol=1e-4)
    identity_names = [s.decode() for s in h5["identity_names"]]
    assert len(identity_names) == model.n_identity == len(list(ict_dir.glob("identity*.obj")))
    expressions = json.loads((ict_dir / "vertex_indices.json").read_text())["expressions"]
    assert model.expression_names == [e for e in expressions if not e.startswith("PupilDilate")]
    for name, k in (("identity007", identity_names.index("identity007")),
                    ("jawOpen", model.n_identity + model.expression_index("jawOpen"))):
        mode = obj_vertices(ict_dir / f"{name}.obj")
        expected = (mode - neutral)[keep] * 10.0
        assert np.abs(expected).max() > 1.0  # the mode moves something
        np.testing.assert_allclose(model.basis[..., k], expected, rtol=1e-5, atol=1e-4)


def _canonical(tri) -> tuple[int, ...]:
    """A triangle as its rotation that starts at the smallest index (the winding is kept)."""
    i = tri.index(min(tri))
    return tuple(tri[i:] + tri[:i])


@pytest.fixture(scope="module")
def kept_polygons(ict_dir, h5) -> list[list[int]]:
    """The neutral mesh's polygons whose corners are all kept, in the converted model's vertex indices."""
    new_index = {int(old): new for new, old in enumerate(h5["ict_vertex_index"])}
    return [[new_index[v] for v in poly] for poly in obj_polygons(ict_dir / "generic_neutral_mesh.obj")
            if all(v in new_index for v in poly)]


def _split(poly: list[int]) -> list[set]:
    """The ways a triangle or quad can be split into triangles, with its winding."""
    if len(poly) == 3:
        return [{_canonical(poly)}]
    if len(poly) == 4:
        a, b, c, d = poly
        return [{_canonical([a, b, c]), _canonical([a, c, d])}, {_canonical([b, c, d]), _canonical([b, d, a])}]
    raise AssertionError(f"polygon with {len(poly)} corners in the neutral mesh")


def test_every_kept_polygon_is_split_into_triangles(kept_polygons, model):
    assert sum(len(p) == 4 for p in kept_polygons) > 10000
    tris = {_canonical(t) for t in model.triangles.tolist()}
    assert len(tris) == len(model.triangles)  # no triangle twice
    for p in kept_polygons:
        assert any(s <= tris for s in _split(p)), p


def test_every_triangle_comes_from_a_kept_polygon(kept_polygons, model):
    from_polygons = set().union(*(s for p in kept_polygons for s in _split(p)))
    extra = [t for t in model.triangles.tolist() if _canonical(t) not in from_polygons]
    assert extra == []
    assert len(model.triangles) == sum(len(p) - 2 for p in kept_polygons)


# ------------------------------------------------------------------------------------------ end to end
#: A small "ICT" head: the face a 32 x 33 grid of quads (convert() writes the basis in chunks of 1024
#: vertices, so a smaller model cannot be written), one dropped vertex (like ICT's head and neck), then one
#: vertex for each other kept part, with a triangle over three of them.
GRID = (32, 33)
NF = GRID[0] * GRID[1]
FAKE_RANGES = {"face": (0, NF), "mouth_interior": (NF + 1, NF + 2), "teeth_upper": (NF + 2, NF + 3),
               "teeth_lower": (NF + 3, NF + 4), "sclera_left": (NF + 4, NF + 5), "iris_left": (NF + 5, NF + 6),
               "sclera_right": (NF + 6, NF + 7), "iris_right": (NF + 7, NF + 8)}
FAKE_EXPRESSIONS = ["jawOpen", "PupilDilate_L", "eyeBlink_L"]


def _grid_quads(rows: int, cols: int) -> list[list[int]]:
    return [[r * cols + c, r * cols + c + 1, (r + 1) * cols + c + 1, (r + 1) * cols + c]
            for r in range(rows - 1) for c in range(cols - 1)]


def _write_obj(path: Path, verts: np.ndarray, faces: list[list[int]] | None = None) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    if faces:
        lines += [f"vt {u:.4f} 0.5" for u in np.linspace(0, 1, len(verts))]
        lines += ["f " + " ".join(f"{i + 1}/{i + 1}" for i in f) for f in faces]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fake_ict(tmp_path, monkeypatch):
    """A fake FaceXModel folder, with the converter's ICT constants pointed at it (convert() hard-codes
    ICT's vertex ranges, 100 identities and the 68 landmarks)."""
    rng = np.random.default_rng(0)
    d = tmp_path / "FaceXModel"
    d.mkdir()
    neutral = rng.normal(0, 5, (NF + 8, 3))
    faces = _grid_quads(*GRID) + [[NF - 1, NF - 2, NF], [NF + 1, NF + 2, NF + 3], [NF + 4, NF + 5, NF + 6]]
    _write_obj(d / "generic_neutral_mesh.obj", neutral, faces)
    modes = {}
    for name in ["identity000", "identity001"] + FAKE_EXPRESSIONS:
        modes[name] = neutral + rng.normal(0, 0.5, neutral.shape)
        _write_obj(d / f"{name}.obj", modes[name])
    (d / "vertex_indices.json").write_text(json.dumps({"expressions": FAKE_EXPRESSIONS}))
    monkeypatch.setattr(cv, "KEPT_RANGES", FAKE_RANGES)
    monkeypatch.setattr(cv, "NARROW_FACE", (0, 40))
    monkeypatch.setattr(cv, "N_IDENTITY", 2)
    monkeypatch.setattr(cv, "MULTIPIE_68", [0, 2, 3])
    albedo_calls = []
    monkeypatch.setattr(cv, "_add_albedo", lambda *args: albedo_calls.append(args))
    return d, neutral, modes, albedo_calls


def test_convert_end_to_end_on_a_small_ict_folder(tmp_path, fake_ict):
    d, neutral, modes, albedo_calls = fake_ict
    out = cv.convert(d.parent, tmp_path / "out" / "model.h5")  # the repository root works as well
    assert out.exists() and not list(out.parent.glob("*.tmp*"))
    assert len(albedo_calls) == 1
    m = FaceModel(out)
    keep = np.r_[0:NF, NF + 1:NF + 8]
    assert m.n_vertices == NF + 7 and m.n_identity == 2
    assert m.expression_names == ["jawOpen", "eyeBlink_L"]
    np.testing.assert_allclose(m.mean, neutral[keep] * 10, rtol=1e-6, atol=1e-4)
    for k, name in enumerate(["identity000", "identity001", "jawOpen", "eyeBlink_L"]):
        np.testing.assert_allclose(m.basis[..., k], (modes[name] - neutral)[keep] * 10, rtol=1e-5, atol=1e-4)
    # each quad split in two, the triangle over the dropped vertex gone, the rest re-indexed
    expected = [t for a, b, c, e in _grid_quads(*GRID) for t in ([a, b, c], [a, c, e])]
    expected += [[NF, NF + 1, NF + 2], [NF + 3, NF + 4, NF + 5]]
    np.testing.assert_array_equal(m.triangles, expected)
    np.testing.assert_array_equal(m.landmarks68, [0, 2, 3])
    np.testing.assert_array_equal(m.regions["face"], np.arange(NF))
    np.testing.assert_array_equal(m.regions["narrow_face"], np.arange(40))
    np.testing.assert_array_equal(m.regions["mouth_interior"], [NF])
    np.testing.assert_array_equal(m.regions["teeth"], [NF + 1, NF + 2])
    np.testing.assert_array_equal(m.regions["eyes"], [NF + 3, NF + 5, NF + 4, NF + 6])
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["ict_vertex_index"][()], keep)
        assert f.attrs["units"] == "mm"


def test_convert_refuses_a_wrong_folder_or_mode(tmp_path, fake_ict):
    d, neutral, _, _ = fake_ict
    with pytest.raises(cv.ConversionError, match="generic_neutral_mesh.obj"):
        cv.convert(tmp_path / "nowhere", tmp_path / "x.h5")
    _write_obj(d / "jawOpen.obj", neutral[:-1])
    with pytest.raises(cv.ConversionError, match=f"jawOpen.obj has {len(neutral) - 1} vertices"):
        cv.convert(d, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
