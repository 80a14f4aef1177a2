"""refine sfs on a folder of photos in one command vs one ``refine sfs`` process per photo: seconds per photo
of each and their ratio (the same-run baseline), and the summary's counts.

The folder holds ``--n`` photos: ``--bad`` unusable files (a text file named .jpg, a truncated PNG) and
synthetic faces (datagen.sample.make_sample renders at ``--size`` pixels, seed ``--seed``); a face the detector
misses is a failed entry like the bad files. Both ways run the same pipeline (``--fast``: --no-sfs --no-detail)
as separate processes with the wall clock around them, so start-up (imports, the models) counts as it does for
a user.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/batch.py [--n 20] [--bad 2] [--size 512] [--jobs 1] [--fast]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.common import emit  # noqa: E402
from datagen.sample import make_sample  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from morphable.model import load_model  # noqa: E402
from render.renderer import FaceRenderer  # noqa: E402


def make_folder(folder: Path, n: int, bad: int, size: int, seed: int) -> list[Path]:
    """``n`` photos in ``folder``: ``bad`` unusable ones, the rest rendered faces; returns their paths."""
    cfg = load_config(overrides={"render.image_size": size})
    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, cfg.render)
    paths = []
    for i in range(n - bad):
        s = make_sample(seed, i, model, cfg, renderer)
        p = folder / f"face_{i:03d}.jpg"
        Image.fromarray((np.clip(s.rgb, 0, 1) * 255).round().astype(np.uint8)).save(p, quality=92)
        paths.append(p)
    for j in range(bad):
        p = folder / f"bad_{j}.{'jpg' if j % 2 == 0 else 'png'}"
        if j % 2 == 0:
            p.write_text("not an image")
        else:
            p.write_bytes(paths[0].read_bytes()[:2000] if paths else b"\x89PNG")
        paths.append(p)
    return paths


def refine(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reconstruct.cli", "sfs", *args], capture_output=True, text=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="photos in the folder")
    ap.add_argument("--bad", type=int, default=2, help="of which unusable files")
    ap.add_argument("--size", type=int, default=512, help="render side, pixels")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--jobs", type=int, default=1, help="--jobs of the folder run")
    ap.add_argument("--fast", action="store_true", help="--no-sfs --no-detail in both")
    args = ap.parse_args()
    flags = ["--no-sfs", "--no-detail"] if args.fast else []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        photos = make_folder(folder, args.n, args.bad, args.size, args.seed)
        one = refine(str(folder), "--out", str(Path(tmp) / "batch"), "--jobs", str(args.jobs), *flags)
        summary = json.loads((Path(tmp) / "batch" / "summary.json").read_text())
        separate = sum(refine(str(p), "--out", str(Path(tmp) / "separate" / p.stem), *flags) for p in photos)
    emit({"benchmark": "batch", "what": f"refine sfs on a folder of {args.n} photos ({args.bad} bad files, "
                                        f"{args.size} px renders) vs {args.n} separate refine sfs processes",
          "pipeline": "coarse only (--no-sfs --no-detail)" if args.fast else "full (detail network + SfS)",
          "jobs": args.jobs, "done": summary["done"], "failed": summary["failed"],
          "folder_s": one, "folder_s_per_photo": one / args.n,
          "separate_s": separate, "separate_s_per_photo": separate / args.n,
          "speedup_vs_separate": separate / max(one, 1e-9),
          "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "unset")})


if __name__ == "__main__":
    main()
