"""What ``refine`` loads once per process: the face model, the coarse stage's settings (and the iterative
network when weights exist) and the detail network (when weights exist). A folder of photos or a video loads
them once (:func:`load_stack`), not once per photo; a worker process of ``refine sfs --jobs K`` loads its own.
"""
from __future__ import annotations

from dataclasses import dataclass


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu (:func:`training.loop.resolve_device`, which also refuses
    cuda without a CUDA device)."""
    from training.loop import resolve_device as resolve

    return str(resolve(device))


def load_coarse(weights: str | None, cfg, device: str = "auto", iterations: int | None = None,
                no_network: bool = False, no_photometric: bool = False):
    """The coarse stage's settings (:class:`coarse.stage.CoarseSettings`) and the network weights' path, or
    None when the fit is the coarse face (no weights, or ``no_network``). ``no_photometric``: the landmark fit
    is not refined by the photo's shading (``refine.photometric``).

    ``weights`` None means ``refine.weights`` of the config (the shipped weights) if that file exists; a path
    given by the user must exist.
    """
    from coarse.network import load_iterative
    from coarse.stage import CoarseSettings
    from facesynth.config import optional_file

    path = None if no_network else optional_file(cfg, weights, cfg.refine.weights)
    network = None if path is None else load_iterative(path, resolve_device(device))
    coarse = CoarseSettings.from_config(cfg, network, iterations, photometric=not no_photometric)
    return coarse, None if path is None else str(path)


def load_detail_predictor(weights: str | None, cfg, device: str = "auto"):
    """The detail network as a :data:`training.detail_net.DetailPredictor` and its path, or (None, None) when
    no weights exist. ``weights`` None means ``detail.weights`` of the config if that file exists; a path given
    by the user must exist."""
    from facesynth.config import optional_file

    path = optional_file(cfg, weights, cfg.detail.weights)
    if path is None:
        return None, None
    from training.detail_net import load_detail

    dev = resolve_device(device)
    return load_detail(path, dev).predictor(dev), str(path)


@dataclass(frozen=True)
class StackOptions:
    """The user's choices of what to load and run (picklable: sent to worker processes).

    weights, detail_weights: paths the user gave (None: the config's files when they exist); no_detail,
    no_sfs: skip those stages; device: ``auto``, ``cpu`` or ``cuda``; iterations: network passes (None:
    ``refine.iterations``); resolution: SfS pixels over the face (None: ``refine.resolution``); no_network: the
    landmark fit is the coarse face even when network weights exist; no_photometric: the landmark fit is not
    refined by the photo's shading.
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


@dataclass(frozen=True)
class Stack:
    """The loaded stages: ``model`` (:class:`morphable.model.FaceModel`), ``coarse``
    (:class:`coarse.stage.CoarseSettings`), ``detail`` (a detail predictor or None), ``notes`` (the weights
    used, for ``params.json``) and ``detail_note`` (one line on the detail stage, for the console)."""

    model: object
    coarse: object
    detail: object
    notes: dict
    detail_note: str


def load_stack(cfg, options: StackOptions) -> Stack:
    """Load everything once (:class:`Stack`); a weights path the user gave must exist (``FileNotFoundError``)."""
    from morphable.model import load_model

    model = load_model(cfg.resolve_path(cfg.model.path))
    coarse, used = load_coarse(options.weights, cfg, options.device, options.iterations, options.no_network,
                               options.no_photometric)
    detail, detail_used = ((None, None) if options.no_detail
                           else load_detail_predictor(options.detail_weights, cfg, options.device))
    note = ("detail off (--no-detail)" if options.no_detail else f"detail {detail_used}" if detail else
            f"detail skipped (no {cfg.detail.weights})")
    return Stack(model, coarse, detail, {"weights": used, "detail_weights": detail_used}, note)


def check_weights(cfg, options: StackOptions) -> None:
    """Raise ``FileNotFoundError`` now for a weights path the user gave that does not exist (before worker
    processes start: a worker that fails to load would be restarted without end)."""
    from facesynth.config import optional_file

    if not options.no_network:
        optional_file(cfg, options.weights, cfg.refine.weights)
    if not options.no_detail:
        optional_file(cfg, options.detail_weights, cfg.detail.weights)
