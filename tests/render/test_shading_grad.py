"""The torch shading of the detail loss (:func:`render.shading.displaced_normals`, :func:`render.shading.phong_shade`,
:func:`training.detail_net.central_slopes`): float64 ``torch.autograd.gradcheck`` on 1 x 5 x 5 inputs, away from the
kinks (n.l > 0, r.v > 0, n_z above the clamp), and the torch path equal to the numpy one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from render.shading import displaced_normals, phong_shade
from training.detail_net import central_slopes

H = W = 5


def _normals(gen: torch.Generator) -> torch.Tensor:
    """(1, H, W, 3) float64 unit normals within ~25 degrees of the camera axis."""
    n = torch.cat([0.4 * (torch.rand(1, H, W, 2, generator=gen, dtype=torch.float64) - 0.5),
                   torch.ones(1, H, W, 1, dtype=torch.float64)], -1)
    return n / n.norm(dim=-1, keepdim=True)


def _light(gen: torch.Generator):
    """Per-image light (B = 1): direction (1, 1, 1, 3) near the camera axis, k_a, k_d, k_s, shininess (1, 1, 1)."""
    d = torch.tensor([[[[0.2, 0.3, 1.0]]]], dtype=torch.float64)
    k = [torch.full((1, 1, 1), v, dtype=torch.float64) for v in (0.3, 0.6, 0.2, 8.0)]
    return [d / d.norm()] + k


def test_phong_shade_gradients():
    gen = torch.Generator().manual_seed(0)
    normals = _normals(gen).requires_grad_()
    albedo = torch.rand(1, H, W, 3, generator=gen, dtype=torch.float64).requires_grad_()
    light = [x.clone().requires_grad_() for x in _light(gen)]
    out = phong_shade(normals, albedo, *light)
    n_dot_l = (normals * light[0]).sum(-1)
    assert (n_dot_l > 0.5).all() and (2 * n_dot_l * normals[..., 2] - light[0][..., 2] > 0.1).all()  # no kinks
    assert out.shape == (1, H, W, 3) and out.dtype == torch.float64
    assert gradcheck(phong_shade, (normals, albedo, *light), eps=1e-6, atol=1e-7)


def test_displaced_normals_gradients():
    gen = torch.Generator().manual_seed(1)
    normals = _normals(gen).requires_grad_()
    sx, sy = (0.3 * torch.randn(1, H, W, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    assert gradcheck(displaced_normals, (normals, sx, sy), eps=1e-6, atol=1e-7)


def test_detail_loss_shading_chain_gradients():
    """Depth offset (1, 1, H, W) mm -> slopes -> displaced normals -> Phong: the chain ``DetailLoss.render``
    runs (before its clip to [0, 1]), differentiated with respect to the offset."""
    gen = torch.Generator().manual_seed(2)
    normals, albedo = _normals(gen), torch.rand(1, H, W, 3, generator=gen, dtype=torch.float64)
    light, px = _light(gen), torch.tensor([0.5], dtype=torch.float64)
    pred = (0.1 * torch.randn(1, 1, H, W, generator=gen, dtype=torch.float64)).requires_grad_()

    def shade(p):
        sx, sy = central_slopes(p, px)
        return phong_shade(displaced_normals(normals, sx[:, 0], sy[:, 0]), albedo, *light)

    assert gradcheck(shade, (pred,), eps=1e-6, atol=1e-7)
    (grad,) = torch.autograd.grad(shade(pred).sum(), pred)
    assert grad.abs().sum() > 0  # the offset does move the shading


@pytest.mark.parametrize("shininess", [8.0, 7.5])  # whole (repeated squaring in numpy) and fractional
def test_torch_and_numpy_paths_agree(shininess):
    gen = torch.Generator().manual_seed(3)
    normals, albedo = _normals(gen), torch.rand(1, H, W, 3, generator=gen, dtype=torch.float64)
    d = _light(gen)[0]
    k = (0.3, 0.6, 0.2, shininess)
    got = phong_shade(normals, albedo, d, *k).numpy()
    want = phong_shade(normals.numpy(), albedo.numpy(), d.numpy(), *k)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
