"""The iterative network without torch: its ONNX export, run by ONNX Runtime.

``refine`` runs the iterative network once or a few times per face; importing torch and loading the weights
cost about 1 s of its start-up, more than the passes. So the network ships a second time as ONNX
(``data/iterative_weights.onnx``, made from ``data/iterative_weights.pt`` by ``train export-onnx``:
:func:`coarse.network.export_onnx`), which ONNX Runtime loads without torch. The ``.pt`` file stays the source
(training, ``train evaluate``, ``--device cuda``), and an ``.onnx`` file is used only for the ``.pt`` file it
was made from (:func:`matching_onnx`: the SHA-256 of that file is stored in it;
:mod:`facesynth.onnx_model` holds what the ONNX runtimes of the project share).

The export carries what :class:`coarse.network.IterativeWeights` carries besides the network: the training
config (JSON, rebuilt by :func:`facesynth.config.config_from_dict` as :func:`coarse.network.load_iterative`
rebuilds it), hence the network frame and the input's colour, the training step and the provenance record.
This module imports neither torch nor the ONNX package (``onnxruntime`` when a file is opened).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facesynth.onnx_model import OnnxModel, OnnxModelError

from .frame import NetworkFrame
from .iterative import Predictor

#: ``format`` in the metadata of an exported ONNX file.
ONNX_FORMAT = "facesynth-iterative-onnx/1"
#: The graph's input and output names: inputs (B, C + 1, S, S) float32 in [0, 1] (the masked image and the
#: shading of a_t, :func:`datagen.sample.network_input`; S = the frame's size), alpha_t (B, K) float32 ->
#: alpha_next (B, K) float32 (:meth:`coarse.network.IterativeNet.forward`).
ONNX_INPUTS = ("inputs", "alpha_t")
ONNX_OUTPUT = "alpha_next"


class OnnxIterative(OnnxModel):
    """The iterative network exported to ONNX (:func:`coarse.network.export_onnx`), on ONNX Runtime's CPU: what
    :class:`coarse.network.IterativeWeights` offers inference, without torch.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's threads for one pass (0: its default, one per physical core).
    Attributes:
        metadata: the export's metadata (strings): ``format``, ``source_sha256`` (of the ``.pt`` it was made
            from), ``config`` (the training config, JSON), ``step``, ``provenance`` (JSON), ...
        frame: the network frame of its training data (:class:`coarse.frame.NetworkFrame`); color_input: colour
            (True) or gray image input; config: its training config (:class:`facesynth.config.Config`);
            step: training steps taken; provenance: how the weights were made ({} when not recorded);
            path: the ``.onnx`` file.
    """

    FORMAT = ONNX_FORMAT
    WHAT = "iterative network"

    def __init__(self, path: str | Path, threads: int = 0):
        from facesynth.config import config_from_dict

        super().__init__(path, threads)
        try:
            saved = json.loads(self.metadata["config"])
            self.step = int(self.metadata["step"])
            self.provenance = dict(json.loads(self.metadata.get("provenance", "{}")))
        except (KeyError, TypeError, ValueError):
            raise OnnxModelError(f"{self.path} lacks the iterative network's config or step") from None
        self.config = config_from_dict(saved)
        self.frame = NetworkFrame.from_config(self.config)
        self.color_input = bool(self.config.datagen.color_input)

    def predictor(self, device: str | None = None) -> Predictor:
        """The network as a numpy :data:`coarse.iterative.Predictor` (the CPU: ``device`` None or ``cpu``)."""
        if device not in (None, "cpu"):
            raise ValueError(f"the ONNX export runs on the CPU only; got device {device!r}")

        def predict(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
            return self.run(ONNX_OUTPUT, {ONNX_INPUTS[0]: np.ascontiguousarray(x, np.float32),
                                          ONNX_INPUTS[1]: np.ascontiguousarray(alpha, np.float32)})

        return predict


def matching_onnx(weights: str | Path, threads: int = 0) -> tuple[OnnxIterative | None, str]:
    """The ONNX export beside ``weights`` (:func:`facesynth.onnx_model.onnx_path`), loaded, when it exists,
    ONNX Runtime is installed and the export was made from this very file; else None and why not
    (:meth:`facesynth.onnx_model.OnnxModel.matching`)."""
    return OnnxIterative.matching(weights, threads)
