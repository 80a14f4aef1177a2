"""refine video's speed on a 640x480 clip (reconstruct.video.process_video): frames per second coarse-only (with
and without the overlay video) and with the detail network and SfS per frame, where the time goes per frame, and
the same-run baseline: every frame alone (the detector cascade and the full MAP fit, as refine sfs fits a photo).

The clip is data/sample_clip.mp4 (``refine sample-clip``) unless ``--clip`` names another. Models load once,
before the clock starts. Rates are per wall-clock second and per CPU second (cores shared with other jobs make
the first depend on the share this process got).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/video.py [--clip C] [--frames 100] [--detail-frames 10]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import Meter, emit  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from reconstruct.models import StackOptions, load_stack  # noqa: E402
from reconstruct.video import VideoOptions, process_video, video_info  # noqa: E402
from reconstruct.video_eval import independent_fits  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default=str(REPO / "data" / "sample_clip.mp4"))
    ap.add_argument("--frames", type=int, default=100, help="frames of the coarse-only runs")
    ap.add_argument("--detail-frames", type=int, default=10, help="frames of the detail + SfS run")
    ap.add_argument("--baseline-frames", type=int, default=20, help="frames fitted alone")
    ap.add_argument("--resolution", type=int, default=None, help="SfS pixels (default refine.resolution)")
    args = ap.parse_args()

    cfg = load_config()
    info = video_info(args.clip)
    stack = load_stack(cfg, StackOptions())
    base = {"benchmark": "video", "clip": f"{Path(args.clip).name} {info.width}x{info.height} {float(info.fps):g} fps",
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [("coarse-only, overlay.mp4", VideoOptions(max_frames=args.frames)),
                ("coarse-only, no overlay", VideoOptions(overlay=False, max_frames=args.frames)),
                ("coarse + detail network + SfS per frame", VideoOptions(detail=True, max_frames=args.detail_frames,
                                                                        resolution=args.resolution))]
        for i, (what, options) in enumerate(runs):
            with Meter() as m:
                s = process_video(args.clip, Path(tmp) / f"run{i}", cfg, stack, options, progress=False)
            wall, cpu = m.rates(s["frames"])
            emit({**base, "what": what, "frames": s["frames"], "frames_per_s": wall, "frames_per_cpu_s": cpu,
                  "detector_runs": s["detector_runs"], "mean_s_per_frame": s["mean_s"],
                  "resolution": options.resolution or cfg.refine.resolution if options.detail else None})
        with Meter() as m:
            alphas, _, _ = independent_fits(args.clip, cfg, stack, args.baseline_frames, progress=False)
        wall, cpu = m.rates(len(alphas))
        emit({**base, "what": "baseline: each frame alone (detect_faces + fit_map)", "frames": len(alphas),
              "frames_per_s": wall, "frames_per_cpu_s": cpu})


if __name__ == "__main__":
    main()
