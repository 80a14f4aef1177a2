"""Seconds per 256 x 256 image of the detail network's forward pass (``refine``'s detail stage), on the CPU
and on CUDA when there is one: fp32 NCHW as the baseline, then channels_last (and bf16 autocast on CUDA),
each with ``ratio_vs_baseline`` (baseline seconds / seconds: above 1 is faster). The input features
(:func:`training.detail_net.detail_features`, numpy) are timed apart, and ``sfs_refine`` on the same frame
size (the scene of ``benchmarks/sfs.py``) as the reference of the stage that follows.

Times are the best over interleaved rounds of the median of ``--repeats`` calls (other processes may share
the cores).

    .venv/bin/python benchmarks/detail.py [--size 256] [--repeats 5] [--rounds 2] [--batch 1]

Prints one JSON line per measurement (:func:`benchmarks.common.emit`).
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import emit as common_emit  # noqa: E402
from benchmarks.sfs import scene  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from reconstruct.sfs import sfs_refine  # noqa: E402
from render.filters import depth_to_normals  # noqa: E402
from training.detail_net import DetailNet, detail_features  # noqa: E402
from training.loop import autocast  # noqa: E402


def emit(record: dict) -> None:
    common_emit({"benchmark": "detail", **record})


def median_seconds(fn, repeats: int, device=None) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def forward(net: DetailNet, x: torch.Tensor, device, channels_last: bool, amp: bool):
    """A warmed-up forward call of ``net`` on ``x`` (eval mode, no grad)."""
    net = net.to(device).eval()
    x = x.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def run():
        with autocast(device) if amp else contextlib.nullcontext():
            return net(x, 0.67)

    for _ in range(2):  # kernel selection, allocator
        run()
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="frame side (pixels)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is reported")
    ap.add_argument("--batch", type=int, default=1, help="images per forward call")
    args = ap.parse_args()
    cfg = load_config()
    image, coarse, mask, px, _ = scene(args.size)
    normals = depth_to_normals(coarse, px)
    feats = detail_features(image, normals, mask, cfg.detail.highpass_sigma_px)
    torch.manual_seed(0)
    net = DetailNet.from_config(cfg)
    common = {"size": args.size, "batch": args.batch, "torch_threads": torch.get_num_threads(),
              "parameters": sum(p.numel() for p in net.parameters()), "channels": list(cfg.detail.channels)}
    emit({**common, "what": "input features (numpy)", "seconds_per_image":
          min(median_seconds(lambda: detail_features(image, normals, mask, cfg.detail.highpass_sigma_px),
                             args.repeats) for _ in range(args.rounds))})

    x = torch.from_numpy(np.repeat(feats[None], args.batch, 0))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        variants = {"fp32 NCHW": forward(net, x, device, False, False),
                    "fp32 channels_last": forward(net, x, device, True, False)}
        if device.type == "cuda":
            variants["bf16 autocast channels_last"] = forward(net, x, device, True, True)
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.rounds):
            for name, fn in variants.items():
                best[name] = min(best[name], median_seconds(fn, args.repeats, device) / args.batch)
        base = best["fp32 NCHW"]
        for name, sec in best.items():
            emit({**common, "device": str(device), "what": f"forward, {name}" + (" (baseline)" if name == "fp32 NCHW"
                                                                                else ""),
                  "seconds_per_image": sec, "ratio_vs_baseline": base / sec})

    sfs_refine(image, coarse, mask, px, cfg.refine.sfs)  # warm-up (operator cache)
    emit({**common, "what": "sfs_refine, same frame size (reference)", "device": "cpu", "seconds_per_image":
          min(median_seconds(lambda: sfs_refine(image, coarse, mask, px, cfg.refine.sfs), max(1, args.repeats // 2))
              for _ in range(args.rounds))})


if __name__ == "__main__":
    main()
