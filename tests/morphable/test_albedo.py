"""Tests of morphable/albedo.py: the generative skin model, its PCA and the HDF5 round trip."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from morphable.albedo import (
    SkinLayout,
    albedo_coeffs,
    fit_albedo_pca,
    polygon_signed_distance,
    sample_skin,
    write_albedo,
)
from morphable.model import AlbedoModel, FaceModel

N = 200
LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def layout(model):
    return SkinLayout.from_model(model)


@pytest.fixture(scope="module")
def samples(layout):
    return sample_skin(layout, N, np.random.Generator(np.random.PCG64(123)))


@pytest.fixture(scope="module")
def pca_full(samples):
    return fit_albedo_pca(samples, N - 1)


@pytest.fixture(scope="module")
def plain_skin(layout):
    """Vertices away from every region: (Vf,) bool."""
    return ((layout.lips < 0.01) & (layout.brows < 0.01) & (layout.beard < 0.01) & (layout.eyelids < 0.05)
            & (layout.cheeks < 0.1) & (layout.nose < 0.1) & (layout.ears < 0.01))


def face_luma(albedo: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(B, Vf, 3) -> (B,) mean luma over the vertices ``where``."""
    return albedo[:, where].mean(1) @ LUMA


# ---------------------------------------------------------------------------- geometry helpers
def test_polygon_signed_distance_square():
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    pts = np.array([[1.0, 1.0], [3.0, 1.0], [1.0, -0.5], [0.5, 1.0]])
    np.testing.assert_allclose(polygon_signed_distance(pts, square), [-1.0, 1.0, 0.5, -0.5], atol=1e-12)


def test_layout_regions_follow_landmarks(model, layout):
    lm = model.landmarks68  # face-area indices = model indices (the face comes first)
    assert layout.n_vertices == len(model.regions["face"])
    for name in ("lips", "eyelids", "cheeks", "nose", "ears", "brows", "beard", "freckle_zone"):
        w = getattr(layout, name)
        assert w.shape == (layout.n_vertices,) and w.min() >= 0.0 and w.max() <= 1.0, name
    inner_lip = lm[[61, 62, 63, 65, 66, 67]]
    assert layout.lips[inner_lip].min() > 0.9
    assert layout.lips[lm[[30, 8, 19, 36]]].max() == 0.0  # nose tip, chin, brow, eye corner
    assert layout.brows[lm[[19, 20, 23, 24]]].min() > 0.5  # the landmarks mark the brows' upper edge
    assert layout.brows[lm[[30, 48, 8, 37]]].max() < 0.01
    assert layout.eyelids[lm[36:48]].min() > 0.5
    assert layout.eyelids[lm[[30, 8, 51]]].max() < 0.01
    assert layout.beard[lm[[8, 7, 9]]].min() > 0.5  # chin
    assert layout.beard[lm[[27, 19, 24, 62, 66]]].max() < 0.05  # nose bridge, brows, inner lips


# ---------------------------------------------------------------------------- generative model
def test_samples_shape_range_and_seed(layout, samples):
    assert samples.shape == (N, layout.n_vertices, 3) and samples.dtype == np.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    a = sample_skin(layout, 3, np.random.Generator(np.random.PCG64(7)))
    b = sample_skin(layout, 3, np.random.Generator(np.random.PCG64(7)))
    c = sample_skin(layout, 3, np.random.Generator(np.random.PCG64(8)))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.05


def test_skin_tone_spans_light_to_dark(samples, plain_skin):
    y = face_luma(samples, plain_skin)
    assert y.min() < 0.25 and y.max() > 0.72, (y.min(), y.max())
    # Evenly enough: every sixth of the generative luma range [0.2, 0.78] holds at least 8 % of the faces.
    counts = np.histogram(y, bins=np.linspace(0.2, 0.78, 7))[0]
    assert counts.min() >= 0.08 * N, counts


def test_lips_redder_than_cheeks(samples, layout):
    def redness(where):
        c = samples[:, where].mean(1)
        return c[:, 0] / (c[:, 1] + c[:, 2])

    lips = redness(layout.lips > 0.9)
    cheeks = redness((layout.cheeks > 0.7) & (layout.lips < 0.01))
    assert np.mean(lips > cheeks) > 0.95


def test_brows_darker_than_forehead(samples, layout, plain_skin, model):
    brow = layout.brows > 0.6
    forehead = plain_skin & (layout.positions[:, 1] > model.mean[model.landmarks68[19], 1] + 10.0)
    assert np.mean(face_luma(samples, brow) < face_luma(samples, forehead)) > 0.9


# ---------------------------------------------------------------------------- PCA
def test_pca_with_all_components_reconstructs_samples(samples, pca_full):
    before = samples.copy()
    m = pca_full.model
    assert m.mean.shape == samples.shape[1:] and m.basis.shape == samples.shape[1:] + (N - 1,)
    a = albedo_coeffs(m, samples)
    recon = m.mean[None] + np.einsum("vck,bk->bvc", m.basis.astype(np.float64), a)
    assert np.abs(recon - samples).max() < 1e-4
    # The coefficients of the data are white: zero mean, unit variance, uncorrelated.
    np.testing.assert_allclose(a.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(a.T), np.eye(N - 1), atol=1e-3)
    np.testing.assert_array_equal(samples, before)  # input not modified


def test_gaussian_coefficients_match_sample_statistics(samples, pca_full):
    m = pca_full.model
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1500, m.n_components)).astype(np.float32)
    draws = m.mean[None] + (a @ m.basis.reshape(-1, m.n_components).T).reshape(len(a), *m.mean.shape)
    s_mean, s_var = samples.mean(0), samples.var(0, ddof=1)
    assert np.abs(draws.mean(0) - s_mean).mean() < 0.01
    ratio = draws.var(0).sum() / s_var.sum()
    assert 0.9 < ratio < 1.1, ratio
    assert np.corrcoef(draws.var(0).ravel(), s_var.ravel())[0, 1] > 0.95


def test_truncated_pca_keeps_the_leading_variance(samples, pca_full):
    k = 20
    p = fit_albedo_pca(samples, k)
    total = samples.reshape(N, -1).var(0, ddof=1).sum()
    kept = (p.model.basis.astype(np.float64) ** 2).sum()
    np.testing.assert_allclose(kept / total, p.explained.sum(), rtol=1e-4)
    assert np.all(np.diff(p.explained) <= 1e-12) and 0.9 < p.explained.sum() < 1.0
    np.testing.assert_allclose(p.explained, pca_full.explained[:k], rtol=1e-4)


def test_pca_model_spans_light_to_dark(pca_full, plain_skin):
    rng = np.random.default_rng(1)
    y = face_luma(pca_full.model.albedo(rng.standard_normal((500, pca_full.model.n_components))), plain_skin)
    lo, hi = np.quantile(y, [0.05, 0.95])
    assert lo < 0.3 and hi > 0.68, (lo, hi)


def test_fit_rejects_bad_input(samples):
    with pytest.raises(ValueError, match="n_components"):
        fit_albedo_pca(samples[:10], 10)
    with pytest.raises(ValueError, match="Vf, 3"):
        fit_albedo_pca(samples[..., :2], 3)


# ---------------------------------------------------------------------------- HDF5
def test_hdf5_round_trip(tmp_path, model_path, samples):
    p = fit_albedo_pca(samples, 12)
    path = tmp_path / "model.h5"
    shutil.copy(model_path, path)
    write_albedo(path, p.model, p.attrs())  # replaces any albedo group already there
    got = FaceModel(path).albedo_model
    assert isinstance(got, AlbedoModel) and got.n_components == 12
    assert got.mean.dtype == np.float32 and got.basis.dtype == np.float32
    np.testing.assert_allclose(got.mean, p.model.mean, atol=2.0 ** -18)
    np.testing.assert_allclose(got.basis, p.model.basis, atol=2.0 ** -18)
    write_albedo(path, p.model, quantum=0.0)
    exact = FaceModel(path).albedo_model
    np.testing.assert_array_equal(exact.basis, p.model.basis)
    np.testing.assert_array_equal(exact.mean, p.model.mean)
    import h5py

    with h5py.File(path, "r") as f:
        assert f["albedo/basis"].compression == "gzip"
        assert "n_samples" not in f["albedo"].attrs  # the second write replaced the group
