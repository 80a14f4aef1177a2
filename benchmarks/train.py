"""Training throughput (samples/s) of the iterative network, measured in one run:

- ``loader``: online generation alone (:class:`training.data.OnlineDataset` through a DataLoader);
- ``model``: the network alone on random tensors (forward + backward + Adam step), NCHW fp32 as the
  baseline, then channels_last (and bf16 autocast on CUDA; with ``--compile`` also through ``torch.compile``),
  each with ``ratio_vs_baseline``;
- ``both``: online batches fed to the model (the real training step), ``ratio_vs_model_alone``;
- with ``--recipe CONFIG --cache FILE`` (the CPU recipe, ``configs/iterative_cpu.yaml``): ``recipe``, its training step on
  augmented batches of the cache (``training.cache``), against ``paper``, the paper's network at ``--size``
  fed by online generation, measured in the same interleaved rounds (``ratio_vs_paper``); and ``inference``:
  the seconds per face of ``--iterations`` network passes (:func:`coarse.iterative.network_fit`: warp, render
  the shading of a_t, the network) and of the whole coarse stage (the landmark fit, then the passes) on the
  sample photo, the landmarks found once beforehand.

Rates are the best over interleaved rounds of the median time per step (other processes may share the
cores).

Prints one JSON line per measurement::

    .venv/bin/python benchmarks/train.py [--size 200] [--batch 16] [--steps 5] [--rounds 2] [--workers 0]
        [--compile] [--widths 16 32 64 128]
        [--recipe configs/iterative_cpu.yaml --cache pairs.h5 [--weights FILE] [--iterations 3]]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import emit as common_emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from training.data import online_loader  # noqa: E402
from training.loss import GeometryLoss  # noqa: E402
from coarse.network import IterativeNet  # noqa: E402
from training.train import autocast, resolve_device, to_device  # noqa: E402


def emit(record: dict) -> None:
    common_emit({"benchmark": "train", **record})


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_rate(fn, steps: int, batch: int, device=None) -> float:
    """Samples/s from the median time of ``steps`` calls (robust to other processes on shared cores)."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        if device is not None:
            _sync(device)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def loader_rate(cfg, batch: int, steps: int, workers: int) -> float:
    it = iter(online_loader(cfg, 0, batch, workers=workers))
    next(it)  # workers started, numba kernels loaded
    return median_rate(lambda: next(it), steps, batch)


def training_step(cfg, face_model, batch: int, device, channels_last: bool, amp: bool, data=None,
                  compiled: bool = False):
    """A warmed-up training step on random tensors (or on ``data``, an iterator of batches); ``compiled``: the
    network through ``torch.compile`` (inductor; compiled during the warm-up)."""
    torch.manual_seed(0)
    net = IterativeNet.from_config(cfg).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    model = torch.compile(net) if compiled else net
    loss_fn = GeometryLoss(face_model).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    size, K = cfg.render.image_size, net.n_coeffs
    fixed = {"input": torch.rand(batch, net.in_channels, size, size), "alpha_t": torch.randn(batch, K),
             "alpha_gt": torch.randn(batch, K)}

    def step():
        x, a_t, a_gt = to_device(next(data) if data is not None else fixed, device, channels_last)
        with autocast(device) if amp else contextlib.nullcontext():
            pred = model(x, a_t)
        loss = loss_fn(pred.float(), a_gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: kernel selection, allocator
        step()
    _sync(device)
    return step


def best_rates(steps_by_name: dict, steps: int, batch: int, device, rounds: int) -> dict:
    """Best-of-``rounds`` median rate of each step function, the rounds interleaved so that load from
    other processes hits every variant alike."""
    best = dict.fromkeys(steps_by_name, 0.0)
    for _ in range(rounds):
        for name, fn in steps_by_name.items():
            best[name] = max(best[name], median_rate(fn, steps, batch, device))
    return best


def recipe_vs_paper(args, paper_cfg, face_model, device, common: dict) -> None:
    """The recipe's training rate (cache + augmentation + its network) against the paper's (online generation
    at ``--size`` + the paper's widths), interleaved; then the recipe network's inference time per face."""
    from coarse.frame import NetworkFrame
    from training.cache import cache_loader, check_cache

    recipe = load_config(args.recipe)
    check_cache(args.cache, recipe)
    paper = load_config(overrides={"render.image_size": args.size, "train.start": "mean",  # the paper's samples
                                   "train.widths": list(load_config().train.widths)})
    cuda = device.type == "cuda"
    batch = recipe.train.batch
    steps = {"paper": training_step(paper, face_model, batch, device, channels_last=cuda, amp=cuda,
                                    data=iter(online_loader(paper, 0, batch, workers=args.workers))),
             "recipe": training_step(recipe, face_model, batch, device, channels_last=True, amp=cuda,
                                     data=iter(cache_loader(args.cache, recipe.train.augment, 0, batch,
                                                            workers=args.workers,
                                                            frame=NetworkFrame.from_config(recipe))))}
    rates = best_rates(steps, args.steps, batch, device, args.rounds)
    base = {**common, "batch": batch}
    emit({**base, "what": "paper: online generation + the paper's network (baseline)",
          "image_size": args.size, "widths": list(paper.train.widths), "samples_per_s": rates["paper"]})
    emit({**base, "what": "recipe: cache + augmentation + its network", "image_size": recipe.render.image_size,
          "widths": list(recipe.train.widths), "head": recipe.train.head, "samples_per_s": rates["recipe"],
          "ratio_vs_paper": rates["recipe"] / rates["paper"]})
    inference(args, recipe, face_model, common)


def inference(args, recipe, face_model, common: dict) -> None:
    """Seconds per face of the coarse stage with the recipe's network on the sample photo (CPU)."""
    import numpy as np

    from coarse.detect import detect_faces, load_image
    from coarse.fit import fit_map
    from coarse.iterative import network_fit, torch_predictor
    from coarse.network import IterativeNet, load_iterative
    from coarse.stage import CoarseSettings, coarse_fit

    if args.weights:
        weights = load_iterative(args.weights)
        net, frame = weights.net, weights.frame
    else:  # timing only: an untrained network of the recipe's shape
        from coarse.frame import NetworkFrame

        net, frame = IterativeNet.from_config(recipe).eval(), NetworkFrame.from_config(recipe)
    net = net.to(memory_format=torch.channels_last)
    rgb8 = load_image(recipe.resolve_path("data/astronaut.png"))
    det = detect_faces(rgb8, recipe.detect)[0]
    photo = rgb8.astype(np.float32) / 255.0
    settings = dataclasses.replace(CoarseSettings.from_config(recipe, iterations=args.iterations),
                                   predict=torch_predictor(net), frame=frame)
    alpha0, _ = fit_map(face_model, det.landmarks, settings.landmarks, settings.prior, detector=det.detector)

    def passes():
        network_fit(settings.predict, frame, photo, det.landmarks, face_model, recipe.render, args.iterations,
                    settings.refit_pose, alpha0=alpha0)

    def whole():
        coarse_fit(photo, det.landmarks, face_model, settings, recipe.render, det.detector)

    for fn in (passes, whole):
        fn()  # warm-up: numba kernels, allocator
    times = {"passes": [], "whole": []}
    for _ in range(max(3, args.steps)):
        for name, fn in (("passes", passes), ("whole", whole)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, what in (("passes", f"inference: {args.iterations} network passes per face"),
                       ("whole", f"inference: coarse stage per face (landmark fit + {args.iterations} passes)")):
        emit({**{k: v for k, v in common.items() if k != "batch"}, "what": what, "image_size": recipe.render.image_size, "widths": list(recipe.train.widths), "head": recipe.train.head,
              "trained": bool(args.weights), "seconds_per_face": float(np.median(times[name]))})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=200, help="image side (pixels)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for online generation")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is reported")
    ap.add_argument("--recipe", help="config of the recipe to compare with the paper's network (with --cache)")
    ap.add_argument("--cache", help="the recipe's `train cache` file")
    ap.add_argument("--weights", help="trained weights for the inference timing (default: untrained, same shape)")
    ap.add_argument("--iterations", type=int, default=3, help="network passes of the inference timing")
    ap.add_argument("--compile", action="store_true", help="also the model through torch.compile (minutes to compile)")
    ap.add_argument("--widths", type=int, nargs=4, help="the network's stage widths (default train.widths)")
    args = ap.parse_args()
    if bool(args.recipe) != bool(args.cache):
        ap.error("--recipe and --cache go together")
    from morphable.model import load_model

    cfg = load_config(overrides={"render.image_size": args.size, "train.widths": args.widths})
    face_model = load_model(cfg.resolve_path(cfg.model.path))
    device = resolve_device(args.device)
    common = {"device": str(device), "image_size": args.size, "batch": args.batch,
              "torch_threads": torch.get_num_threads(), "widths": list(cfg.train.widths)}
    if args.recipe:
        recipe_vs_paper(args, cfg, face_model, device, common)
        return

    rate = loader_rate(cfg, args.batch, args.steps, args.workers)
    emit({**common, "what": "loader alone (online generation)", "workers": args.workers, "samples_per_s": rate})

    cuda = device.type == "cuda"
    variants = {"fp32 NCHW": training_step(cfg, face_model, args.batch, device, False, False),
                "fp32 channels_last": training_step(cfg, face_model, args.batch, device, True, False)}
    if cuda:
        variants["bf16 autocast channels_last"] = training_step(cfg, face_model, args.batch, device, True, True)
    if args.compile:
        variants["fp32 channels_last torch.compile"] = training_step(cfg, face_model, args.batch, device, True, cuda,
                                                                     compiled=True)
    rates = best_rates(variants, args.steps, args.batch, device, args.rounds)
    base = rates["fp32 NCHW"]
    for name, r in rates.items():
        emit({**common, "what": f"model alone, {name}" + (" (baseline)" if name == "fp32 NCHW" else ""),
              "samples_per_s": r, "ratio_vs_baseline": r / base})
    same = "bf16 autocast channels_last" if cuda else "fp32 NCHW"  # what train_iterative runs

    data = iter(online_loader(cfg, 0, args.batch, workers=args.workers, pin_memory=cuda))
    both = best_rates({"both": training_step(cfg, face_model, args.batch, device, channels_last=cuda, amp=cuda,
                                             data=data)}, args.steps, args.batch, device, args.rounds)["both"]
    emit({**common, "what": "both (online generation + training step)", "workers": args.workers,
          "samples_per_s": both, "ratio_vs_model_alone": both / rates[same], "model_alone": same,
          "ratio_vs_loader_alone": both / rate})


if __name__ == "__main__":
    main()
