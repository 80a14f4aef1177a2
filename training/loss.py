"""The geometry loss of Richardson et al. 2016 (Eq. 3): the mean squared distance between the geometries
of two coefficient vectors, computed in coefficient space.

With A_r the (3|r|, K) basis rows of the vertices of a region r and d = x - y, the mean squared
per-coordinate error over r is ``|A_r d|^2 / (3|r|) = d^T G d`` with ``G = A_r^T A_r / (3|r|)``
(:meth:`morphable.model.FaceModel.gram`). G is (K, K) and computed once, so the loss never builds a
vertex: O(B K^2) instead of O(B V K).
"""
from __future__ import annotations

import torch
from torch import nn


class GeometryLoss(nn.Module):
    """Mean over the batch of (x - y)^T G (x - y): mm^2, the mean squared per-coordinate vertex error over
    the model's region (``face`` by default, the area the network sees).

    Args:
        model: :class:`morphable.model.FaceModel`.
        region: a key of ``model.regions``.
    """

    def __init__(self, model, region: str = "face"):
        super().__init__()
        self.region = region
        self.register_buffer("gram", torch.as_tensor(model.gram(region), dtype=torch.float32))

    def per_sample(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: (B, K) coefficients -> (B,) mean squared per-coordinate error, mm^2 (float32)."""
        K = self.gram.shape[0]
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != K:
            raise ValueError(f"expected x and y (B, {K}); got {tuple(x.shape)} and {tuple(y.shape)}")
        d = (x.float() - y.float())
        return ((d @ self.gram) * d).sum(dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: (B, K) prediction, y: (B, K) truth -> scalar mean squared vertex error, mm^2."""
        return self.per_sample(x, y).mean()
