"""Random backgrounds behind the face: flat colours, gradients, multi-scale noise and stripe textures.

Every function takes a ``numpy.random.Generator`` and returns an (H, W, 3) float32 image in [0, 1], so a
background is fully determined by the generator's state.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _linear_weights(n_in: int, n_out: int, size: int) -> np.ndarray:
    """(size, n_in) float32: the first ``size`` of ``n_out`` samples linearly interpolated from ``n_in``, ends
    aligned (``scipy.ndimage.zoom(order=1)``'s grid, as a matrix: two small products instead of its spline
    code, several times faster)."""
    c = np.arange(size) * (n_in - 1) / (n_out - 1)
    i0 = np.minimum(np.floor(c).astype(int), n_in - 2)
    w = np.zeros((size, n_in), np.float32)
    w[np.arange(size), i0] = 1 - (c - i0)
    w[np.arange(size), i0 + 1] += c - i0
    return w


def _rgb(plane: np.ndarray, base, gain) -> np.ndarray:
    """(H, W) -> (H, W, 3) float32 ``base + gain * plane`` per channel (channel by channel: numpy is slow
    on a trailing axis of 3)."""
    out = np.empty(plane.shape + (3,), np.float32)
    for c in range(3):
        np.multiply(plane, np.float32(gain[c]), out=out[..., c])
        out[..., c] += np.float32(base[c])
    return out


def flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(rng.uniform(0, 1, 3).astype(np.float32), (h, w, 3)).copy()


def gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (float(np.cos(theta)) * xx / w + float(np.sin(theta)) * yy / h)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return _rgb(t, a, b - a)


def noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sum of value noise at three scales (blobs of ~1/4, 1/16 and 1/64 of the image), random tint."""
    out = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 0.6), (16, 0.3), (64, 0.1)):
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
        rows = _linear_weights(cells + 1, round((cells + 1) * h / cells), h)
        cols = _linear_weights(cells + 1, round((cells + 1) * w / cells), w)
        out += weight * (rows @ grid @ cols.T)
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    amp = rng.uniform(0.1, 0.5)
    return np.clip(_rgb(out, base, amp * rng.uniform(0.5, 1.0, 3).astype(np.float32)), 0, 1)


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Stripes and checks (a few random sinusoid gratings) over a noise base: man-made clutter."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = noise(rng, h, w)
    for _ in range(rng.integers(1, 4)):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 25) * 2 * np.pi / max(h, w)
        g = np.sin(freq * (float(np.cos(theta)) * xx + float(np.sin(theta)) * yy) + rng.uniform(0, 2 * np.pi))
        if rng.uniform() < 0.5:
            g = np.sign(g)
        out += _rgb(g, np.zeros(3), rng.uniform(0.05, 0.25) * rng.uniform(-1, 1, 3).astype(np.float32))
    return np.clip(out, 0, 1)


KINDS = {"flat": flat, "gradient": gradient, "noise": noise, "texture": texture}


def random_background(rng: np.random.Generator, h: int, w: int, kinds: tuple[str, ...]) -> np.ndarray:
    """One background of a kind drawn uniformly from ``kinds``."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown background kind '{unknown[0]}' (known: {', '.join(KINDS)})")
    return KINDS[kinds[rng.integers(len(kinds))]](rng, h, w)
