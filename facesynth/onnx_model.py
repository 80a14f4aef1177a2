"""Networks exported to ONNX beside their weights file, run by ONNX Runtime on the CPU without torch.

A network ships as its torch weights file (``NAME.pt``, the source: training, resuming and ``train export``
use it) and, for ``refine``, as an ONNX export beside it (``NAME.onnx``, :func:`onnx_path`), which ONNX Runtime
loads and runs without importing torch (torch's import and loading the weights cost 1-2 s of start-up). An
export is used only for the weights file it was made from: it stores that file's SHA-256 in its metadata
(``source_sha256``), and :meth:`OnnxModel.matching` compares it with the file's.

Stage-free, as :mod:`facesynth.checkpoint` is for weights files: each network's runtime subclasses
:class:`OnnxModel` with its ``FORMAT`` tag (:class:`training.detail_runtime.OnnxDetail`,
:class:`coarse.network_runtime.OnnxIterative`), and each network's export calls :func:`write_onnx`. Importing
this module imports neither torch nor the ``onnx`` package; ``onnxruntime`` is imported when a file is opened,
torch and ``onnx`` when one is written.
"""
from __future__ import annotations

from pathlib import Path


def onnx_path(weights: str | Path) -> Path:
    """Where the ONNX export of the weights file ``weights`` lives: beside it, ``.onnx`` for its suffix."""
    return Path(weights).with_suffix(".onnx")


class OnnxModelError(ValueError):
    """An ONNX file that is not a readable export of the expected network."""


class OnnxModel:
    """An exported network on ONNX Runtime's CPU: the graph and the export's metadata.

    Subclasses set ``FORMAT`` (the ``format`` entry of the metadata their export writes) and ``WHAT`` (the
    network's name in messages).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's threads for one pass (0: its default, one per physical core).
    Attributes:
        path: the file; metadata: its metadata, strings (``format``, ``source_sha256`` and what the network's
            export adds).
    Raises:
        FileNotFoundError: no such file; :class:`OnnxModelError`: not an ONNX file, or not of ``FORMAT``.
    """

    FORMAT = ""
    WHAT = "network"

    def __init__(self, path: str | Path, threads: int = 0):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file {self.path} not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.intra_op_num_threads = int(threads)
        # idle worker threads sleep instead of spinning: the stages after the network need the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._runner = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for a foreign or truncated file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise OnnxModelError(f"{self.path} is not a readable ONNX file ({first})") from None
        self.metadata = dict(self._runner.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format") != self.FORMAT:
            raise OnnxModelError(f"{self.path} is not a facesynth {self.WHAT} export")

    def run(self, output: str, feeds: dict):
        """The graph's output named ``output`` (a numpy array) for the inputs ``feeds`` (name -> numpy array of
        the dtype and shape the graph declares)."""
        return self._runner.run([output], feeds)[0]

    @classmethod
    def matching(cls, weights: str | Path, threads: int = 0):
        """The export beside ``weights`` (:func:`onnx_path`), loaded, when it exists, ONNX Runtime is installed
        and the export was made from this very file (the SHA-256 stored in it is the file's); else None. Returns
        (the loaded export or None, why not: "" when loaded). A retrained ``.pt`` without a new export is thus
        run in torch rather than with stale weights."""
        from .io import file_digest

        path = onnx_path(weights)
        if not path.is_file():
            return None, f"no {path.name}"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return None, "onnxruntime is not installed"
        try:
            net = cls(path, threads)
        except OnnxModelError as e:
            return None, str(e)
        if net.metadata.get("source_sha256") != file_digest(weights):
            return None, f"{path.name} was made from other weights (train export-onnx)"
        return net, ""


def write_onnx(module, example: tuple, weights: str | Path, out: str | Path | None, fmt: str,
               input_names: list[str], output_names: list[str], dynamic_axes: dict, metadata: dict[str, str],
               opset: int = 17) -> dict:
    """Export the torch module ``module`` (eval mode), the network of the weights file ``weights``, to ``out``
    as ONNX, atomically, with the metadata an :class:`OnnxModel` of ``FORMAT`` ``fmt`` reads.

    torch's TorchScript-based exporter (``dynamo=False``: the ``torch.export`` one needs ``onnxscript``), with
    constant folding (BatchNorm folded into the convolutions); the metadata are stored as the model's
    properties (strings) and the file is checked by ``onnx.checker``. Needs torch and the ``onnx`` package.

    Args:
        module: the graph; example: its example inputs (tensors).
        weights: the weights file it was made from: its name (``source``) and SHA-256 (``source_sha256``, what
            :meth:`OnnxModel.matching` compares) are recorded.
        out: the ONNX file (None: beside ``weights``, :func:`onnx_path`).
        fmt: the ``format`` entry; input_names, output_names, dynamic_axes: as ``torch.onnx.export`` takes
            them; metadata: what the network's runtime needs besides (strings); opset: the ONNX operator set.
    Returns:
        the metadata written (with ``exporter``: torch's version, the exporter and the opset), and ``path``.
    """
    import warnings

    import onnx
    import torch

    from .io import atomic_path, file_digest

    out = Path(out) if out is not None else onnx_path(weights)
    meta = {"format": fmt, "source": Path(weights).name, "source_sha256": file_digest(weights), **metadata,
            "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False), opset {opset}"}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module.eval(), example, str(tmp), dynamo=False, input_names=input_names,
                              output_names=output_names, opset_version=opset, do_constant_folding=True,
                              dynamic_axes=dynamic_axes)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, meta)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return {**meta, "path": str(out)}
