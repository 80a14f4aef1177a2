"""morphable/model.py: geometry (batch, single, region, numpy, torch), normals, landmarks, the Gram matrix."""
from __future__ import annotations

import numpy as np
import pytest

from morphable.model import FaceModel

NOSE_TIP = 30  # Multi-PIE landmark (0-based)


def _alphas(model, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ident = rng.standard_normal((n, model.n_identity))
    expr = rng.uniform(0, 1, (n, model.n_expression)) * (rng.uniform(size=(n, model.n_expression)) < 0.2)
    return np.concatenate([ident, expr], axis=1).astype(np.float32)


def test_shapes_and_coefficient_layout(model):
    assert model.basis.shape == (model.n_vertices, 3, model.n_coeffs)
    assert model.n_coeffs == model.n_identity + model.n_expression
    assert model.triangles.min() >= 0 and model.triangles.max() < model.n_vertices
    a = _alphas(model, 2)
    ident, expr = model.split(a)
    assert ident.shape == (2, model.n_identity) and expr.shape == (2, model.n_expression)
    np.testing.assert_array_equal(model.join(ident, expr), a)
    k = model.expression_index("jawOpen")
    assert model.expression_names[k] == "jawOpen"
    with pytest.raises(KeyError, match="nonsense"):
        model.expression_index("nonsense")
    # zero coefficients give the mean shape
    np.testing.assert_array_equal(model.vertices(np.zeros(model.n_coeffs, np.float32)), model.mean)


def test_batch_and_single_geometry_agree(model):
    a = _alphas(model, 3)
    batch = model.vertices(a)
    assert batch.shape == (3, model.n_vertices, 3) and batch.dtype == np.float32
    for i in range(3):
        single = model.vertices(a[i])
        assert single.shape == (model.n_vertices, 3)
        np.testing.assert_allclose(batch[i], single, rtol=0, atol=1e-4)
    # a direct sum over the modes, in float64
    basis = model.basis.astype(np.float64)
    ref = model.mean.astype(np.float64) + np.einsum("vck,k->vc", basis, a[1].astype(np.float64))
    np.testing.assert_allclose(batch[1], ref, rtol=0, atol=1e-3)
    # a region is the same vertices as the full shape
    idx = model.regions["narrow_face"]
    np.testing.assert_allclose(model.vertices(a, region="narrow_face"), batch[:, idx], rtol=0, atol=1e-4)


def test_numpy_and_torch_geometry_agree(model):
    torch = pytest.importorskip("torch")
    a = _alphas(model, 2, seed=1)
    ref = model.vertices(a)
    t = model.vertices(torch.from_numpy(a).double())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == ref.shape
    np.testing.assert_allclose(t.numpy(), ref, rtol=0, atol=1e-3)
    single = model.vertices(torch.from_numpy(a[0]))
    assert single.shape == (model.n_vertices, 3) and single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), ref[0], rtol=0, atol=1e-3)
    face = model.vertices(torch.from_numpy(a), region="face")
    np.testing.assert_allclose(face.numpy(), ref[:, model.regions["face"]], rtol=0, atol=1e-3)
    # gradients flow to the coefficients
    x = torch.from_numpy(a[:1]).double().requires_grad_(True)
    model.landmarks(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_landmarks_are_the_landmark_vertices(model):
    a = _alphas(model, 2, seed=2)
    lm = model.landmarks(a)
    assert lm.shape == (2, 68, 3)
    np.testing.assert_allclose(lm, model.vertices(a)[:, model.landmarks68], rtol=0, atol=1e-4)
    np.testing.assert_allclose(model.landmarks(a[0]), lm[0], rtol=0, atol=1e-4)


def _reference_normals(verts: np.ndarray, triangles: np.ndarray, which) -> np.ndarray:
    """Plain-Python area-weighted vertex normals of the vertices ``which``."""
    which = [int(w) for w in which]
    wanted = set(which)
    acc = {w: [0.0, 0.0, 0.0] for w in which}
    for tri in triangles.tolist():
        hit = wanted.intersection(tri)
        if not hit:
            continue
        p0, p1, p2 = (verts[i].tolist() for i in tri)
        e1 = [p1[k] - p0[k] for k in range(3)]
        e2 = [p2[k] - p0[k] for k in range(3)]
        n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
        for v in hit:
            for k in range(3):
                acc[v][k] += n[k]
    out = []
    for w in which:
        n = acc[w]
        length = sum(c * c for c in n) ** 0.5
        out.append([c / length for c in n])
    return np.array(out)


def test_vertex_normals_match_a_plain_loop_and_are_unit(model):
    a = _alphas(model, 2, seed=3)
    verts = model.vertices(a)
    normals = model.vertex_normals(verts)
    assert normals.shape == verts.shape
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.vertex_normals(verts[1]), normals[1], atol=1e-6)
    which = np.random.default_rng(0).choice(model.n_vertices, 150, replace=False)
    ref = _reference_normals(verts[1].astype(np.float64), model.triangles, which)
    np.testing.assert_allclose(normals[1, which], ref, atol=1e-4)
    # outwards: the nose tip of the neutral face looks at the camera (+z)
    n0 = model.vertex_normals(model.mean)
    assert n0[model.landmarks68[NOSE_TIP], 2] > 0.9
    assert np.mean(n0[model.regions["face"], 2]) > 0.2


def test_vertex_normals_on_a_closed_mesh_point_outwards():
    trimesh = pytest.importorskip("trimesh")
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=30.0)
    m = object.__new__(FaceModel)  # only the topology is used by vertex_normals
    m.triangles = np.asarray(sphere.faces, np.int32)
    m.n_vertices = len(sphere.vertices)
    verts = np.asarray(sphere.vertices, np.float32) * np.array([1.0, 1.3, 0.8], np.float32)  # an ellipsoid
    given = verts.copy()
    normals = m.vertex_normals(verts)
    ref = _reference_normals(verts.astype(np.float64), m.triangles, range(m.n_vertices))
    np.testing.assert_allclose(normals, ref, atol=1e-5)
    assert np.all(np.einsum("vc,vc->v", normals, verts) > 0)
    np.testing.assert_array_equal(verts, given)  # the input is not modified


@pytest.mark.parametrize("region", ["face", "narrow_face"])
def test_gram_gives_the_mean_squared_geometry_error(model, region):
    idx = model.regions[region]
    G = model.gram(region)
    K = model.n_coeffs
    assert G.shape == (K, K) and G.dtype == np.float64
    # explicitly: one block per coordinate, A_c = basis[idx, c, :]
    ref = np.zeros((K, K))
    for c in range(3):
        A_c = model.basis[idx, c, :].astype(np.float64)
        ref += A_c.T @ A_c
    ref /= 3 * len(idx)
    np.testing.assert_allclose(G, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(G, G.T)
    # (x - y)^T G (x - y) is the mean squared per-coordinate error of the region's vertices, mm^2
    x, y = _alphas(model, 2, seed=4).astype(np.float64)
    d = x - y
    vx = model.vertices(x, region=region).astype(np.float64)
    vy = model.vertices(y, region=region).astype(np.float64)
    mse = np.mean((vx - vy) ** 2)
    assert mse > 1.0
    np.testing.assert_allclose(d @ G @ d, mse, rtol=1e-4)
    assert model.gram(region, dtype=np.float32).dtype == np.float32


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        FaceModel(tmp_path / "nowhere.h5")


def test_draw_vertices_are_within_their_bound_and_independent_of_the_batch(model):
    a = _alphas(model, 3, seed=5)
    a[1, model.n_identity:] = 0.0  # a neutral face: the expression modes are skipped for it alone
    exact = model.mean.astype(np.float64) + np.einsum("vck,bk->bvc", model.basis.astype(np.float64), a)
    drawn = model.draw_vertices(a)
    assert drawn.shape == (3, model.n_vertices, 3) and drawn.dtype == np.float32
    bound = model.draw_error_bound(a)
    err = np.abs(drawn - exact).reshape(3, -1).max(1)
    assert np.all(err <= bound + 1e-3) and np.all(bound < 0.05), (err, bound)  # far below a pixel (~1.4 mm)
    for i in range(3):  # one pass for the batch gives each face the bits it gets alone
        np.testing.assert_array_equal(model.draw_vertices(a[i]), drawn[i])
    np.testing.assert_array_equal(model.draw_vertices(np.zeros(model.n_coeffs, np.float32)), model.mean)


def test_linear_basis_16_and_32_bits():
    from morphable.model import LinearBasis

    rng = np.random.default_rng(0)
    mean, basis = rng.normal(size=50), rng.normal(size=(50, 7)) * np.array([1, 10, 0.1, 1, 1, 0, 3])
    c = rng.normal(size=(4, 7))
    exact = mean + c @ basis.T
    np.testing.assert_allclose(LinearBasis(mean, basis, bits=32)(c), exact, rtol=0, atol=1e-4)
    b16 = LinearBasis(mean, basis)
    assert b16.table.dtype == np.int16
    assert np.all(np.abs(b16(c) - exact).max(1) <= b16.error_bound(c) + 1e-4)
    with pytest.raises(ValueError, match="coefficients"):
        b16(c[:, :3])
    with pytest.raises(ValueError, match="basis"):
        LinearBasis(mean[:3], basis)


# ------------------------------------------------------------------ the uncompressed copy (read_model_arrays)
def _same_model(a, b):
    for k in ("mean", "basis", "triangles", "tri_uv", "uv", "landmarks68"):
        x, y = getattr(a, k), getattr(b, k)
        assert x.dtype == y.dtype and np.array_equal(x, y), k
    assert a.expression_names == b.expression_names and list(a.regions) == list(b.regions)
    for k in a.regions:
        assert a.regions[k].dtype == b.regions[k].dtype and np.array_equal(a.regions[k], b.regions[k]), k
    np.testing.assert_array_equal(a.albedo_model.basis, b.albedo_model.basis)


@pytest.fixture
def model_copy(model_path, tmp_path):
    import shutil

    path = tmp_path / "m.h5"
    shutil.copy2(model_path, path)
    return path


def test_the_copy_is_made_once_and_holds_the_same_model(model_copy, monkeypatch):
    import morphable.model as mm

    first = FaceModel(model_copy)  # reads the HDF5 file, writes the copy
    cache = mm.model_cache_path(model_copy)
    assert cache == model_copy.parent / ".cache" / "m.h5.npz" and cache.exists()
    assert (cache.parent / ".gitignore").read_text().splitlines()[-1] == "*"
    monkeypatch.setattr(mm, "_read_h5", lambda path: pytest.fail("the HDF5 file was read again"))
    second = FaceModel(model_copy)
    _same_model(first, second)
    assert second.basis.flags.c_contiguous and second.n_coeffs == first.n_coeffs


def test_a_changed_model_file_or_a_damaged_copy_is_read_again(model_copy, monkeypatch):
    import os

    import morphable.model as mm

    FaceModel(model_copy)
    cache = mm.model_cache_path(model_copy)
    reads = []
    real = mm._read_h5
    monkeypatch.setattr(mm, "_read_h5", lambda path: reads.append(path) or real(path))
    st = model_copy.stat()
    os.utime(model_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed (a new conversion)
    FaceModel(model_copy)
    FaceModel(model_copy)
    assert len(reads) == 1  # read once, then the new copy serves
    cache.write_bytes(cache.read_bytes()[:1000])  # a truncated copy
    again = FaceModel(model_copy)
    assert len(reads) == 2
    _same_model(again, FaceModel(model_copy))
    assert len(reads) == 2


def test_a_folder_that_cannot_be_written_only_costs_speed(model_copy, monkeypatch):
    import morphable.model as mm

    def refuse(*args):
        raise PermissionError("read-only")

    monkeypatch.setattr(mm, "_write_cache", refuse)
    model = FaceModel(model_copy)
    assert model.n_vertices > 0 and not mm.model_cache_path(model_copy).exists()


def test_processes_loading_at_once_each_read_a_whole_copy(model_copy):
    """Four processes load a model without a copy at the same time: each writes its own temporary file and
    renames it, so every one (and a later load) sees the whole model."""
    import subprocess
    import sys

    code = ("import sys, numpy as np; from morphable.model import FaceModel; m = FaceModel(sys.argv[1]); "
            "print(float(np.abs(m.basis).sum()), len(m.regions))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(model_copy)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and len(set(outs)) == 1
    import morphable.model as mm

    leftovers = [p.name for p in mm.model_cache_path(model_copy).parent.iterdir()
                 if p.name not in ("m.h5.npz", ".gitignore")]
    assert not leftovers
    ref = FaceModel(model_copy)
    assert outs[0] == f"{float(np.abs(ref.basis).sum())} {len(ref.regions)}"
