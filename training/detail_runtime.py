"""The detail network without torch: its input features and the network exported to ONNX, run by ONNX Runtime.

``refine`` runs the detail network once per photo. torch's start-up (import and loading the weights, about
2 s on a 2-core CPU) costs more than the pass itself, so the network ships a second time as ONNX
(``data/detail_weights.onnx``, made from ``data/detail_weights.pt`` by ``train export-onnx``:
:func:`training.detail_net.export_onnx`), which ONNX Runtime loads and runs in about 0.2 s in all. The ``.pt``
file stays the source: training, resuming and ``train export`` use it, and an ``.onnx`` file is used only
for the ``.pt`` file it was made from (:func:`matching_onnx`: the SHA-256 of that file is stored in it;
:mod:`facesynth.onnx_model` holds what the ONNX runtimes of the project share).

This module imports neither torch nor the ONNX package (only ``onnxruntime``, when a network is loaded), so
``refine`` starts without them. :mod:`training.detail_net` holds the network itself (torch), its loss,
training-side loading and the export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from facesynth.onnx_model import OnnxModel, onnx_path  # noqa: F401  (onnx_path: importable from here too)
from render.filters import masked_blur
from render.shading import to_gray

#: detail(image (H, W, 3) or (H, W) float in [0, 1], coarse normals (H, W, 3), mask (H, W) bool,
#: pixel_mm) -> (H, W) float32 mm depth offset, 0 outside the mask.
DetailPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]
IN_CHANNELS = 6
#: The input channel holding the mask (:mod:`training.detail_net`): the network's output is 0 where it is 0.
MASK_CHANNEL = 5
#: ``format`` in the metadata of an exported ONNX file.
ONNX_FORMAT = "facesynth-detail-onnx/1"
#: The graph's input and output names: features (B, 6, H, W) float32 with H, W multiples of ``pad_multiple``
#: (metadata), pixel_mm (B,) float32 -> offset (B, 1, H, W) float32 mm.
ONNX_INPUTS = ("features", "pixel_mm")
ONNX_OUTPUT = "offset"


def detail_features(image: np.ndarray, coarse_normals: np.ndarray, mask: np.ndarray,
                    highpass_sigma_px: float) -> np.ndarray:
    """The network's input channels (:mod:`training.detail_net`'s docstring).

    Args:
        image: (H, W, 3) RGB or (H, W) gray in [0, 1], the SfS frame.
        coarse_normals: (H, W, 3) camera-frame unit normals of the coarse face.
        mask: (H, W) bool face pixels.
        highpass_sigma_px: blur of the high-pass channel, pixels (``detail.highpass_sigma_px``).
    Returns:
        (6, H, W) float32.
    """
    mask = np.asarray(mask, bool)
    if image.shape[:2] != mask.shape or coarse_normals.shape != mask.shape + (3,):
        raise ValueError(f"expected image (H, W[, 3]), normals (H, W, 3) and mask (H, W); got {image.shape}, "
                         f"{coarse_normals.shape}, {mask.shape}")
    gray = to_gray(image) if image.ndim == 3 else np.asarray(image, np.float32)
    if not mask.any():
        return np.zeros((IN_CHANNELS,) + mask.shape, np.float32)
    g = np.where(mask, gray / max(float(np.median(gray[mask])), 1e-3) - 1.0, 0.0)
    high = np.where(mask, g - masked_blur(g, mask, highpass_sigma_px), 0.0)
    n = np.where(mask[..., None], coarse_normals, 0.0)
    return np.concatenate([g[None], high[None], np.moveaxis(n, -1, 0), mask[None]]).astype(np.float32)


class OnnxDetail(OnnxModel):
    """The detail network exported to ONNX (:func:`training.detail_net.export_onnx`), on ONNX Runtime's CPU
    (:class:`facesynth.onnx_model.OnnxModel`: opening, metadata, :meth:`~facesynth.onnx_model.OnnxModel.matching`).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's threads for one pass (0: its default, one per physical core).
    Attributes:
        metadata: the export's metadata (strings): ``format``, ``source_sha256`` (of the ``.pt`` it was made
            from), ``highpass_sigma_px``, ``pad_multiple``, ``step``, ``channels``, ...
        highpass_sigma_px: the blur of the high-pass input channel (pixels).
        pad_multiple: the graph takes H, W multiples of this; :meth:`offset` pads with zeros at the bottom and
            right and crops back, as :class:`training.detail_net.DetailNet` does inside its forward pass.
    """

    FORMAT = ONNX_FORMAT
    WHAT = "detail network"

    def __init__(self, path: str | Path, threads: int = 0):
        super().__init__(path, threads)
        self.highpass_sigma_px = float(self.metadata["highpass_sigma_px"])
        self.pad_multiple = int(self.metadata["pad_multiple"])

    def offset(self, features: np.ndarray, pixel_mm: float) -> np.ndarray:
        """(6, H, W) float32 features (:func:`detail_features`) -> (H, W) float32 mm depth offset."""
        _, H, W = features.shape
        k = self.pad_multiple
        x = np.zeros((1, IN_CHANNELS, H + (-H % k), W + (-W % k)), np.float32)
        x[0, :, :H, :W] = features
        out = self.run(ONNX_OUTPUT, {ONNX_INPUTS[0]: x, ONNX_INPUTS[1]: np.array([pixel_mm], np.float32)})
        return np.ascontiguousarray(out[0, 0, :H, :W], np.float32)

    def predictor(self) -> DetailPredictor:
        """The network as a :data:`DetailPredictor` for a whole frame."""
        sigma = self.highpass_sigma_px

        def predict(image, coarse_normals, mask, pixel_mm):
            return self.offset(detail_features(image, coarse_normals, mask, sigma), float(pixel_mm))

        return predict


def matching_onnx(weights: str | Path, threads: int = 0) -> tuple[OnnxDetail | None, str]:
    """The ONNX export beside ``weights`` (:func:`facesynth.onnx_model.onnx_path`), loaded, when it exists,
    ONNX Runtime is installed and the export was made from this very file; else None and why not
    (:meth:`facesynth.onnx_model.OnnxModel.matching`)."""
    return OnnxDetail.matching(weights, threads)
