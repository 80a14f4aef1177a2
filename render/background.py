"""Random backgrounds behind the face: flat colours, gradients, multi-scale noise and stripe textures.

Every function takes a ``numpy.random.Generator`` and returns an (H, W, 3) float32 image in [0, 1], so a
background is fully determined by the generator's state.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom


def flat(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return np.broadcast_to(rng.uniform(0, 1, 3).astype(np.float32), (h, w, 3)).copy()


def gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a, b = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(theta) * xx / w + np.sin(theta) * yy / h)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    return a + (b - a) * t[..., None]


def noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Sum of value noise at three scales (blobs of ~1/4, 1/16 and 1/64 of the image), random tint."""
    out = np.zeros((h, w), np.float32)
    for cells, weight in ((4, 0.6), (16, 0.3), (64, 0.1)):
        grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
        up = zoom(grid, (h / cells, w / cells), order=1)[:h, :w]
        out += weight * up
    base = rng.uniform(0.1, 0.9, 3).astype(np.float32)
    amp = rng.uniform(0.1, 0.5)
    return np.clip(base + amp * out[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32), 0, 1)


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Stripes and checks (a few random sinusoid gratings) over a noise base: man-made clutter."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = noise(rng, h, w)
    for _ in range(rng.integers(1, 4)):
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(2, 25) * 2 * np.pi / max(h, w)
        g = np.sin(freq * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 2 * np.pi))
        if rng.uniform() < 0.5:
            g = np.sign(g)
        out = out + rng.uniform(0.05, 0.25) * g[..., None] * rng.uniform(-1, 1, 3).astype(np.float32)
    return np.clip(out, 0, 1)


KINDS = {"flat": flat, "gradient": gradient, "noise": noise, "texture": texture}


def random_background(rng: np.random.Generator, h: int, w: int, kinds: tuple[str, ...]) -> np.ndarray:
    """One background of a kind drawn uniformly from ``kinds``."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown background kind '{unknown[0]}' (known: {', '.join(KINDS)})")
    return KINDS[kinds[rng.integers(len(kinds))]](rng, h, w)
