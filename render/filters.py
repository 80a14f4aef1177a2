"""Image filters shared by the stages that work on (H, W) image-frame maps."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def masked_blur(x: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` pixels) of ``x`` (H, W) over the pixels of ``mask`` (H, W) bool only
    (normalised convolution: pixels outside the mask neither contribute nor dilute). Returns (H, W) float64."""
    m = mask.astype(np.float64)
    return ndimage.gaussian_filter(np.where(mask, x, 0.0), sigma) / np.maximum(ndimage.gaussian_filter(m, sigma), 1e-6)
