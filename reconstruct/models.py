"""What ``refine`` loads once per process: the face model, the coarse stage's settings (and the iterative
network when weights exist) and the detail network (when weights exist). A folder of photos or a video loads
them once (:func:`load_stack`), not once per photo; a worker process of ``refine sfs --jobs K`` loads its own.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass


#: Device files of a GPU that torch could use (NVIDIA, NVIDIA under WSL2, AMD ROCm): without any of them,
#: ``auto`` is the CPU without asking torch.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")


def gpu_possible() -> bool:
    """Whether this machine may have a GPU torch can use (a device file of :data:`GPU_DEVICE_FILES`; always
    True off Linux, where there are none to look at). Reads the file system only: no torch import."""
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu (:func:`training.loop.resolve_device`, which also refuses
    cuda without a CUDA device). ``cpu``, and ``auto`` on a machine without a GPU (:func:`gpu_possible`), are
    answered without importing torch (about 1.5 s)."""
    if device == "cpu" or (device == "auto" and not gpu_possible()):
        return "cpu"
    from training.loop import resolve_device as resolve

    return str(resolve(device))


#: A worker process's share of the cores for a network's pass (:func:`set_worker_threads`); 0: the runtimes'
#: defaults (one thread per core).
_WORKER_THREADS = 0


def set_worker_threads(threads: int) -> None:
    """A worker process of ``refine sfs --jobs K``: each network runs on ``threads`` threads (ONNX Runtime's
    threads for the networks it loads from now on; torch's when torch is or gets imported to run one), without
    importing torch for it."""
    global _WORKER_THREADS
    _WORKER_THREADS = int(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_WORKER_THREADS)


def _pick_runtime(key: str, runtime: str, path, device: str, matching) -> tuple[object | None, str, str]:
    """What runs a network whose runtime setting ``key`` (``refine.runtime``, ``detail.runtime``) is
    ``runtime``: ``onnx`` (ONNX Runtime on the CPU, the export beside the weights ``path`` made from that very
    file; a :class:`facesynth.config.ConfigError` without one, or with ``--device cuda``), ``torch``, or
    ``auto`` (ONNX when the device is the CPU and a matching export exists, else torch).

    ``matching(path, threads)``: the network's ``matching_onnx`` (:meth:`facesynth.onnx_model.OnnxModel.matching`).
    Returns (the loaded ONNX export, or None: torch runs it; the device; why torch runs it under ``auto``, ""
    otherwise)."""
    from facesynth.config import ConfigError

    if runtime == "onnx" and device == "cuda":
        raise ConfigError(f"{key} onnx runs on the CPU only: not with --device cuda")
    dev = "cpu" if runtime == "onnx" else resolve_device(device)
    net, why = None, ""
    if runtime != "torch" and dev == "cpu":
        net, why = matching(path, _WORKER_THREADS)
        if net is None and runtime == "onnx":
            raise ConfigError(f"{key} onnx: {why}")
    if net is None and _WORKER_THREADS:  # torch runs it: a worker's share of the cores
        import torch

        torch.set_num_threads(_WORKER_THREADS)
    return net, dev, why


@dataclass(frozen=True)
class NetworkStage:
    """The loaded iterative network: ``network`` (:class:`coarse.network.IterativeWeights` in torch, or its ONNX
    export :class:`coarse.network_runtime.OnnxIterative`), the weights file ``path`` (the ``.pt``), the
    ``runtime`` that runs it (``onnxruntime`` or ``torch``), the ``device`` and ``why`` torch runs it when
    ``refine.runtime`` is ``auto`` (empty otherwise)."""

    network: object
    path: str
    runtime: str
    device: str
    why: str = ""

    def note(self) -> str:
        """What runs it, for the console after the coarse method: ``RUNTIME[, why]``."""
        return self.runtime + (f", {self.why}" if self.why else "")


def load_network_stage(weights: str | None, cfg, device: str = "auto") -> NetworkStage | None:
    """The iterative network (:class:`NetworkStage`), or None when no weights exist. ``weights`` None means
    ``refine.weights`` of the config if that file exists; a path given by the user must exist.

    ``refine.runtime`` picks what runs it, as ``detail.runtime`` does for the detail network
    (:func:`_pick_runtime`; the export: :func:`coarse.network_runtime.matching_onnx`). ONNX Runtime loads it
    without importing torch (about 1 s of start-up less); its coefficients are torch's to ~1e-6.
    """
    from facesynth.config import optional_file

    path = optional_file(cfg, weights, cfg.refine.weights)
    if path is None:
        return None
    from coarse.network_runtime import matching_onnx

    net, dev, why = _pick_runtime("refine.runtime", cfg.refine.runtime, path, device, matching_onnx)
    if net is not None:
        return NetworkStage(net, str(path), "onnxruntime", "cpu")
    from coarse.network import load_iterative

    return NetworkStage(load_iterative(path, dev), str(path), "torch", dev, why)


def load_coarse(weights: str | None, cfg, device: str = "auto", iterations: int | None = None,
                no_network: bool = False, no_photometric: bool = False, no_identity: bool = False):
    """The coarse stage's settings (:class:`coarse.stage.CoarseSettings`) and the loaded network
    (:class:`NetworkStage`: its path, runtime, ...), or None when the fit is the coarse face (no weights, or
    ``no_network``). ``no_photometric``: the landmark fit is not refined by the photo's shading
    (``refine.photometric``); ``no_identity``: no identity prior from the recognition descriptor
    (``identity``). torch is imported only when it runs the network (:func:`load_network_stage`).

    ``weights`` None means ``refine.weights`` of the config (the shipped weights) if that file exists; a path
    given by the user must exist.
    """
    from coarse.stage import CoarseSettings

    network = None if no_network else load_network_stage(weights, cfg, device)
    coarse = CoarseSettings.from_config(cfg, network and network.network, iterations,
                                        photometric=not no_photometric, identity=not no_identity)
    return coarse, network


@dataclass(frozen=True)
class DetailStage:
    """The loaded detail network: ``predictor`` (a :data:`training.detail_runtime.DetailPredictor`), the
    weights file ``path`` (the ``.pt``), the ``runtime`` that runs it (``onnxruntime`` with the ONNX export
    beside the weights, or ``torch``), the ``device`` and ``why`` torch runs it when ``detail.runtime`` is
    ``auto`` (empty otherwise)."""

    predictor: object
    path: str
    runtime: str
    device: str
    why: str = ""

    def note(self) -> str:
        """One line for the console: ``detail PATH (RUNTIME[, why])``."""
        return f"detail {self.path} ({self.runtime}{', ' + self.why if self.why else ''})"


def load_detail_stage(weights: str | None, cfg, device: str = "auto") -> DetailStage | None:
    """The detail network (:class:`DetailStage`), or None when no weights exist. ``weights`` None means
    ``detail.weights`` of the config if that file exists; a path given by the user must exist.

    ``detail.runtime`` picks what runs it (:func:`_pick_runtime`): ``onnx`` (ONNX Runtime on the CPU, the
    export beside the weights, :func:`training.detail_runtime.matching_onnx`; an error without one, or with
    ``--device cuda``), ``torch``, or ``auto``: ONNX when the device is the CPU and a matching export exists,
    else torch. ONNX Runtime starts in about 0.2 s where torch takes about 2 s (import and load); its output is
    torch's to ~1e-6 mm.
    """
    from facesynth.config import optional_file

    path = optional_file(cfg, weights, cfg.detail.weights)
    if path is None:
        return None
    from training.detail_runtime import matching_onnx

    net, dev, why = _pick_runtime("detail.runtime", cfg.detail.runtime, path, device, matching_onnx)
    if net is not None:
        return DetailStage(net.predictor(), str(path), "onnxruntime", "cpu")
    from training.detail_net import load_detail

    return DetailStage(load_detail(path, dev).predictor(dev), str(path), "torch", dev, why)


def load_detail_predictor(weights: str | None, cfg, device: str = "auto"):
    """The detail network as a :data:`training.detail_runtime.DetailPredictor` and its path, or (None, None)
    when no weights exist (:func:`load_detail_stage`)."""
    stage = load_detail_stage(weights, cfg, device)
    return (None, None) if stage is None else (stage.predictor, stage.path)


@dataclass(frozen=True)
class StackOptions:
    """The user's choices of what to load and run (picklable: sent to worker processes).

    weights, detail_weights: paths the user gave (None: the config's files when they exist); no_detail,
    no_sfs: skip those stages; device: ``auto``, ``cpu`` or ``cuda``; iterations: network passes (None:
    ``refine.iterations``); resolution: SfS pixels over the face (None: ``refine.resolution``); no_network: the
    landmark fit is the coarse face even when network weights exist; no_photometric: the landmark fit is not
    refined by the photo's shading; no_identity: no identity prior from the recognition descriptor.
    """

    weights: str | None = None
    detail_weights: str | None = None
    no_detail: bool = False
    no_sfs: bool = False
    device: str = "auto"
    iterations: int | None = None
    resolution: int | None = None
    no_network: bool = False
    no_photometric: bool = False
    no_identity: bool = False


@dataclass(frozen=True)
class Stack:
    """The loaded stages: ``model`` (:class:`morphable.model.FaceModel`), ``coarse``
    (:class:`coarse.stage.CoarseSettings`), ``detail`` (a detail predictor or None), ``notes`` (the weights
    used and the runtimes that run them, for ``params.json``), ``detail_note`` (one line on the detail stage,
    for the console) and ``network_note`` (what runs the iterative network, :meth:`NetworkStage.note`; ""
    without it)."""

    model: object
    coarse: object
    detail: object
    notes: dict
    detail_note: str
    network_note: str = ""


def load_stack(cfg, options: StackOptions) -> Stack:
    """Load everything once (:class:`Stack`); a weights path the user gave must exist (``FileNotFoundError``)."""
    from morphable.model import load_model

    model = load_model(cfg.resolve_path(cfg.model.path))
    coarse, network = load_coarse(options.weights, cfg, options.device, options.iterations, options.no_network,
                                  options.no_photometric, options.no_identity)
    detail = None if options.no_detail else load_detail_stage(options.detail_weights, cfg, options.device)
    note = ("detail off (--no-detail)" if options.no_detail else detail.note() if detail else
            f"detail skipped (no {cfg.detail.weights})")
    notes = {"weights": network and network.path, "network_runtime": network and network.runtime,
             "detail_weights": detail and detail.path, "detail_runtime": detail and detail.runtime,
             "identity": None if coarse.identity is None else f"{cfg.identity.weights} ({coarse.identity_use})"}
    return Stack(model, coarse, detail and detail.predictor, notes, note, "" if network is None else network.note())


def check_weights(cfg, options: StackOptions) -> None:
    """Raise ``FileNotFoundError`` now for a weights path the user gave that does not exist (before worker
    processes start: a worker that fails to load would be restarted without end)."""
    from facesynth.config import optional_file

    if not options.no_network:
        optional_file(cfg, options.weights, cfg.refine.weights)
    if not options.no_detail:
        optional_file(cfg, options.detail_weights, cfg.detail.weights)
