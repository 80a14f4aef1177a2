"""Shape from shading: operators and frames, SH fit, Jacobian, and detail recovery on a synthetic dome."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from facesynth.config import load_config
from reconstruct.sfs import _DepthProblem, fit_sh, gradient_operators, laplacian_operator, sfs_refine
from render.filters import depth_to_normals
from reconstruct.sfs_scene import dome_scene
from render.shading import sh_basis, sh_directional, sh_gradient, sh_shade

PX = 0.5  # mm per pixel
SFS = load_config().refine.sfs  # pipeline.yaml's SfS settings


def _angle_deg(n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((n1 * n2).sum(-1), -1.0, 1.0)))


def synthetic_face(n: int = 64, seed: int = 0, albedo_patch: bool = True):
    """The dome scene (:func:`reconstruct.sfs_scene.dome_scene`) at PX: (image, coarse depth (0 outside),
    mask, true normals, albedo, sh)."""
    s = dome_scene(n, PX, seed, albedo_patch)
    return s.image, s.coarse, s.mask, s.normals, s.albedo, s.sh


# ---------------------------------------------------------------------------------------------- frames
def test_depth_to_normals_frame():
    """A plane rising to the right (x) and to the top of the image (y up) tilts its normal to -x, -y."""
    H, W = 6, 7
    i, j = np.mgrid[0:H, 0:W]
    a, b = 0.3, -0.2  # dz/dx, dz/dy in camera units
    depth = a * (j * PX) + b * (-i * PX)
    n = depth_to_normals(depth, PX)
    expect = np.array([-a, -b, 1.0]) / np.sqrt(1 + a * a + b * b)
    np.testing.assert_allclose(n, np.broadcast_to(expect, n.shape), atol=1e-12)


def test_dome_normals_point_outwards():
    _, coarse, mask, *_ = synthetic_face(32)
    n = depth_to_normals(coarse, PX)
    inner = ndimage.binary_erosion(mask, iterations=2)
    # right half of the image (x > 0) tilts to +x, upper half (small rows, y > 0) tilts to +y
    assert np.all(n[:, 20:][inner[:, 20:]][:, 0] > 0)
    assert np.all(n[:12][inner[:12]][:, 1] > 0)
    assert np.all(n[inner][:, 2] > 0)


def test_operators_match_numpy_reference():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 7))
    Dx, Dy = gradient_operators(5, 7)
    np.testing.assert_allclose((Dx @ z.ravel()).reshape(5, 7), np.gradient(z, axis=1), atol=1e-12)
    np.testing.assert_allclose((Dy @ z.ravel()).reshape(5, 7), -np.gradient(z, axis=0), atol=1e-12)
    zp = np.pad(z, 1, mode="edge")  # zero-flux border
    lap = zp[:-2, 1:-1] + zp[2:, 1:-1] + zp[1:-1, :-2] + zp[1:-1, 2:] - 4 * z
    np.testing.assert_allclose((laplacian_operator(5, 7) @ z.ravel()).reshape(5, 7), lap, atol=1e-12)


# ---------------------------------------------------------------------------------------------- SH
def _sphere(n: int = 48):
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    x, y = (xx - n / 2) / (n / 2), (n / 2 - yy) / (n / 2)
    mask = x ** 2 + y ** 2 < 0.95
    z = np.sqrt(np.clip(1 - x ** 2 - y ** 2, 0, None))
    return np.stack([x, y, z], -1) * mask[..., None], mask


def test_fit_sh_recovers_known_coefficients():
    normals, mask = _sphere()
    rng = np.random.default_rng(1)
    sh = sh_directional([-0.3, 0.6, 0.74], 0.7, 0.25) + rng.normal(0, 0.05, 9)
    albedo = rng.uniform(0.4, 0.9, mask.shape)
    image = sh_shade(normals, albedo, sh)
    np.testing.assert_allclose(fit_sh(normals, image, albedo, mask), sh, atol=1e-6)
    rgb = np.stack([image, 0.8 * image, 0.5 * image], -1)  # coloured light
    out = fit_sh(normals, rgb, albedo, mask)
    assert out.shape == (3, 9)
    np.testing.assert_allclose(out, [sh, 0.8 * sh, 0.5 * sh], atol=1e-6)


def test_sh_directional_is_clamped_cosine():
    normals, mask = _sphere()
    d = np.array([0.3, -0.4, 0.866])
    d /= np.linalg.norm(d)
    shade = sh_shade(normals[mask], 1.0, sh_directional(d))
    assert np.abs(shade - np.maximum(normals[mask] @ d, 0)).max() < 0.1  # order-2 approximation


def test_sh_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    n = rng.normal(size=(20, 3))
    sh = rng.normal(size=9)
    eps = 1e-6
    num = np.stack([(sh_basis(n + eps * e) @ sh - sh_basis(n - eps * e) @ sh) / (2 * eps) for e in np.eye(3)], -1)
    np.testing.assert_allclose(sh_gradient(n, sh), num, atol=1e-7)


def test_depth_jacobian_matches_finite_differences():
    image, coarse, mask, _, albedo, sh = synthetic_face(16, seed=3)
    zeta = coarse / PX + np.random.default_rng(0).normal(0, 0.3, coarse.shape)
    prob = _DepthProblem(image, albedo, sh, mask, mask, zeta, SFS)
    S, J = prob.linearise(zeta.ravel())
    v = np.random.default_rng(1).normal(size=zeta.size)
    eps = 1e-6
    num = (prob.shading(zeta.ravel() + eps * v)[0] - prob.shading(zeta.ravel() - eps * v)[0]) / (2 * eps)
    np.testing.assert_allclose(J @ v, num, atol=1e-6)


# ---------------------------------------------------------------------------------------------- refinement
@pytest.mark.parametrize("seed", [0, 1])
def test_sfs_recovers_detail(seed):
    image, coarse, mask, n_true, albedo, _ = synthetic_face(64, seed=seed)
    image_in, coarse_in = image.copy(), coarse.copy()
    inner = ndimage.binary_erosion(mask, iterations=2)
    before = _angle_deg(depth_to_normals(coarse, PX), n_true)[inner].mean()
    res = sfs_refine(image, coarse, mask, PX, SFS)
    after = _angle_deg(res.normals, n_true)[inner].mean()
    assert after < 0.7 * before, (before, after)
    assert res.depth.shape == coarse.shape and res.normals.shape == (*coarse.shape, 3) and res.sh.shape == (9,)
    np.testing.assert_array_equal(res.depth[~mask], coarse[~mask].astype(np.float32))  # outside: unchanged
    assert np.all(res.normals[~mask] == 0) and np.all(res.albedo[~mask] == 0)
    assert np.abs(res.depth - coarse)[mask].max() < 3.0  # detail, not a new shape (mm)
    np.testing.assert_array_equal(image, image_in)  # inputs not modified
    np.testing.assert_array_equal(coarse, coarse_in)
    e = np.array(res.energy)
    assert e[-1] < e[0]


def test_residual_lowpass_keeps_slow_model_error_out_of_the_shape():
    """A slow intensity ramp that no SH light of the dome explains (as a specular lobe or an attached shadow
    would be) moves the surface when taken at face value; with the residual low-pass the shape drifts less,
    and the detail is still recovered."""
    image, coarse, mask, n_true, *_ = synthetic_face(64, seed=0, albedo_patch=False)
    n = image.shape[0]
    yy, xx = np.mgrid[0:n, 0:n] / n
    ramped = np.clip(image + 0.12 * np.exp(-((xx - 0.7) ** 2 + (yy - 0.3) ** 2) / (2 * 0.15 ** 2)), 0, 1)
    inner = ndimage.binary_erosion(mask, iterations=2)
    before = _angle_deg(depth_to_normals(coarse, PX), n_true)[inner].mean()
    err = {}
    for lp in (0.0, 2.0):
        res = sfs_refine(ramped, coarse, mask, PX, dataclasses.replace(SFS, residual_lowpass_mm=lp))
        err[lp] = (_angle_deg(res.normals, n_true)[inner].mean(), np.abs(res.depth - coarse)[inner].mean())
    assert err[2.0][1] < 0.8 * err[0.0][1], err  # less drift of the shape (mm)
    assert err[2.0][0] < 0.8 * before, (before, err)  # the detail is still there


def test_sfs_albedo_keeps_the_patch():
    image, coarse, mask, _, albedo, _ = synthetic_face(64, seed=0)
    res = sfs_refine(image, coarse, mask, PX, SFS)
    core = ndimage.binary_erosion(albedo < 0.6, iterations=2)
    skin = ndimage.binary_erosion(mask & (albedo > 0.6), iterations=3)
    ratio = np.median(res.albedo[core]) / np.median(res.albedo[skin])
    assert abs(ratio - 0.45 / 0.7) < 0.1, ratio


def test_sfs_direct_solver_agrees_and_colour_input():
    image, coarse, mask, n_true, *_ = synthetic_face(48, seed=2)
    inner = ndimage.binary_erosion(mask, iterations=2)
    before = _angle_deg(depth_to_normals(coarse, PX), n_true)[inner].mean()
    cg = sfs_refine(image, coarse, mask, PX, SFS)
    direct = sfs_refine(image, coarse, mask, PX, dataclasses.replace(SFS, solver="direct"))
    assert _angle_deg(direct.normals, n_true)[inner].mean() < 0.7 * before
    assert _angle_deg(cg.normals, direct.normals)[inner].mean() < 1.0
    rgb = sfs_refine(np.repeat(image[..., None], 3, -1), coarse, mask, PX, SFS)
    np.testing.assert_allclose(rgb.depth, cg.depth, atol=0.01)  # luma of gray RGB = gray (to rounding)


def test_sfs_rejects_bad_input():
    image, coarse, mask, *_ = synthetic_face(16)
    with pytest.raises(ValueError, match="mask"):
        sfs_refine(image, coarse, mask.astype(np.uint8), PX, SFS)
    with pytest.raises(ValueError, match="image"):
        sfs_refine(image[:8], coarse, mask, PX, SFS)
    with pytest.raises(ValueError, match="NaN"):
        sfs_refine(np.where(mask, np.nan, image), coarse, mask, PX, SFS)
    with pytest.raises(ValueError, match="pixel_mm"):
        sfs_refine(image, coarse, mask, 0.0, SFS)
    with pytest.raises(ValueError, match="empty"):
        sfs_refine(image, coarse, np.zeros_like(mask), PX, SFS)
    with pytest.raises(ValueError, match="solver"):
        dataclasses.replace(SFS, solver="amg")
    with pytest.raises(ValueError, match="rounds"):
        dataclasses.replace(SFS, rounds=0)
