"""The geometry loss of Richardson et al. 2016 (Eq. 3): the mean squared distance between the geometries
of two coefficient vectors.

Unaligned (``align=False``, the paper's), it is computed in coefficient space. With A_r the (3|r|, K) basis
rows of the vertices of a region r and d = x - y, the mean squared per-coordinate error over r is
``|A_r d|^2 / (3|r|) = d^T G d`` with ``G = A_r^T A_r / (3|r|)`` (:meth:`morphable.model.FaceModel.gram`). G is
(K, K) and computed once, so the loss never builds a vertex: O(B K^2) instead of O(B V K).

Aligned (``align=True``, ``train.loss_align: similarity``), the prediction's vertices are first moved onto the
truth's by the least-squares similarity transform (scale, rotation, translation; Umeyama 1991), as the
evaluation measures (:mod:`training.metrics`). Under weak perspective a face's size is not in the image (a
larger face further away looks the same) and the landmark fit leaves it at the prior's; about half of the
unaligned error of fit starts is that size and pose part (docs/experiments/iterative-network.md), which no network can learn
and which the aligned loss leaves out. It needs no vertex either: with P and Q the centred vertices of x
and y, the least-squares similarity leaves ``|Q|^2 - (s1 + s2 + d s3)^2 / |P|^2`` (s_k the singular values of
the 3 x 3 cross moment ``Q^T P``, d the sign that keeps the rotation proper; Umeyama 1991), and ``|P|^2``,
``|Q|^2`` and ``Q^T P`` are quadratic in (x, y) with (K, K) matrices precomputed once (float64).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GeometryLoss(nn.Module):
    """Mean over the batch of the mean squared per-coordinate vertex error over the model's region (``face``
    by default, the area the network sees), mm^2: (x - y)^T G (x - y), or after similarity alignment of x's
    vertices onto y's (``align``; module docstring).

    Args:
        model: :class:`morphable.model.FaceModel`.
        region: a key of ``model.regions``.
        align: similarity-align the prediction to the truth first.
    """

    def __init__(self, model, region: str = "face", align: bool = False):
        super().__init__()
        self.region, self.align = region, bool(align)
        self.register_buffer("gram", torch.as_tensor(model.gram(region), dtype=torch.float32))
        if self.align:
            idx = model.regions[region]
            A = model.basis[idx].astype(np.float64)  # (N, 3, K)
            mu = model.mean[idx].astype(np.float64)  # (N, 3)
            A, mu = A - A.mean(0), mu - mu.mean(0)  # centred: translation drops out
            self.n_points = len(idx)
            # cross moments of the centred vertices, coordinates i, j: sum_n P_ni Q_nj as a quadratic form
            self.register_buffer("mm", torch.as_tensor(mu.T @ mu))  # (3, 3) mean x mean
            self.register_buffer("mb", torch.as_tensor(np.einsum("ni,njk->ijk", mu, A)))  # (3, 3, K) mean_i x basis_j
            self.register_buffer("bb", torch.as_tensor(np.einsum("nik,njl->ijkl", A, A)))  # (3, 3, K, K)

    def _cross(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3): sum_n X_ni Y_nj of the centred vertices X of x and Y of y (float64)."""
        by = torch.einsum("ijkl,bl->bijk", self.bb, y)  # (B, 3, 3, K)
        return (self.mm[None] + torch.einsum("ijk,bk->bij", self.mb, y) + torch.einsum("jik,bk->bij", self.mb, x)
                + torch.einsum("bijk,bk->bij", by, x))

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, K) coefficients -> (B,) mean squared per-coordinate error, mm^2 (float32)."""
        K = self.gram.shape[0]
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != K:
            raise ValueError(f"expected x and y (B, {K}); got {tuple(x.shape)} and {tuple(y.shape)}")
        if not self.align:
            d = (x.float() - y.float())
            return ((d @ self.gram) * d).sum(dim=1)
        xd, yd = x.double(), y.double()
        pp = torch.diagonal(self._cross(xd, xd), dim1=1, dim2=2).sum(1)  # |P|^2
        qq = torch.diagonal(self._cross(yd, yd), dim1=1, dim2=2).sum(1)  # |Q|^2
        M = self._cross(yd, xd)  # (B, 3, 3) = Q^T P
        finite = torch.isfinite(M).all(dim=(1, 2))  # a NaN input gives a NaN loss (the SVD would refuse it)
        U, S, Vh = torch.linalg.svd(torch.where(finite[:, None, None], M, torch.eye(3, dtype=M.dtype)))
        sign = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh)).detach()
        trace = S[:, 0] + S[:, 1] + torch.where(sign < 0, -S[:, 2], S[:, 2])
        err = (qq - trace.square() / pp.clamp_min(1e-12)).clamp_min(0.0)
        err = torch.where(finite, err, torch.full_like(err, float("nan")))
        return (err / (3 * self.n_points)).float()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, K) prediction, y: (B, K) truth -> scalar mean squared vertex error, mm^2."""
        return self.per_sample(x, y).mean()
