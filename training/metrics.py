"""3D reconstruction error as in Richardson et al. 2016 (Section 8): align each reconstruction to the
ground truth by the optimal similarity transform (Umeyama 1991), then measure the Euclidean distance
between corresponding vertices, in mm, over the model's ``narrow_face`` region (the face the image shows).
"""
from __future__ import annotations

import numpy as np


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (scale, rotation, translation) of ``src`` onto ``dst``.

    Args:
        src: (B, N, 3) or (N, 3) points to move (mm).
        dst: same shape, corresponding target points.
    Returns:
        ``src`` transformed, same shape (float64): ``c R src + t`` minimising ``sum |c R src + t - dst|^2``
        with R a proper rotation (Umeyama 1991).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.shape[-1] != 3 or src.ndim not in (2, 3):
        raise ValueError(f"expected src and dst (B, N, 3) or (N, 3) of equal shape; got {src.shape} and {dst.shape}")
    single = src.ndim == 2
    s, d = (src[None], dst[None]) if single else (src, dst)
    mu_s, mu_d = s.mean(1, keepdims=True), d.mean(1, keepdims=True)
    sc, dc = s - mu_s, d - mu_d
    cov = np.einsum("bni,bnj->bij", dc, sc) / s.shape[1]  # (B, 3, 3) = E[dst src^T]
    U, S, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U) * np.linalg.det(Vt))
    sign[sign == 0] = 1.0
    D = np.ones((len(s), 3))
    D[:, 2] = sign
    R = np.einsum("bij,bj,bjk->bik", U, D, Vt)
    var_s = (sc ** 2).sum((1, 2)) / s.shape[1]
    c = (S * D).sum(1) / np.maximum(var_s, 1e-300)
    out = c[:, None, None] * np.einsum("bij,bnj->bni", R, sc) + mu_d
    return out[0] if single else out


def vertex_errors(pred: np.ndarray, true: np.ndarray, model=None, region: str | None = "narrow_face",
                  align: bool = True) -> np.ndarray:
    """Per-vertex Euclidean error (mm) of predicted geometry after similarity alignment to the truth.

    Args:
        pred, true: (B, V, 3) or (V, 3) vertices of the whole model (mm), or already restricted to a region
            when ``model`` is None.
        model: :class:`morphable.model.FaceModel` whose ``regions[region]`` selects the vertices (alignment
            and error both use only them).
        region: region name (used with ``model``).
        align: similarity-align ``pred`` to ``true`` first.
    Returns:
        (B, N) or (N,) errors in mm, N = number of selected vertices.
    """
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape; got {pred.shape} and {true.shape}")
    if model is not None and region is not None:
        idx = model.regions[region]
        pred, true = pred[..., idx, :], true[..., idx, :]
    if align:
        pred = similarity_align(pred, true)
    return np.linalg.norm(pred - true, axis=-1)


def coefficient_errors(model, alpha_pred: np.ndarray, alpha_true: np.ndarray,
                       region: str = "narrow_face") -> np.ndarray:
    """(B, K) predicted and true coefficients -> (B, N) per-vertex errors (mm) over ``region``, aligned."""
    a_p, a_t = np.atleast_2d(alpha_pred), np.atleast_2d(alpha_true)
    return vertex_errors(model.vertices(a_p, region=region), model.vertices(a_t, region=region))


def summarize(per_sample_mm: np.ndarray) -> dict:
    """(B,) per-sample mean vertex errors -> ``{"mean_mm", "median_mm"}`` over the samples."""
    x = np.asarray(per_sample_mm, np.float64)
    return {"mean_mm": float(x.mean()), "median_mm": float(np.median(x))}
