"""The figure docs/issue14_run/network_inputs_cut.png: what the iterative network sees, [image, shading of a_t]
in its 128-px frame, on renders of the scan (`refine evaluate-scan ... --out DIR` writes DIR/view_XX.png) and on
training pairs, each as the paper masks it (a_t's silhouette) and cut to the landmarks' region
(`train.input_mask: landmarks`).

    python docs/issue14_run/figure_inputs.py WEIGHTS SCAN_EVAL_DIR CACHE.h5 OUT.png
"""
import sys
from dataclasses import replace

import h5py
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coarse.detect import detect_faces, load_image  # noqa: E402
from coarse.network import load_iterative  # noqa: E402
from coarse.stage import CoarseSettings, coarse_fit  # noqa: E402
from facesynth.config import load_config  # noqa: E402
from morphable.model import load_model  # noqa: E402

weights, scan_dir, cache, out = sys.argv[1:5]
cfg = load_config()
model = load_model(cfg.resolve_path(cfg.model.path))
w = load_iterative(weights)
rows = []
for view in (1, 5, 6, 10):
    photo = load_image(f"{scan_dir}/view_{view:02d}.png")
    det = detect_faces(photo, cfg.detect)[0]
    for frame in (replace(w.frame, input_mask="shading"), w.frame):
        seen = []
        predict = w.predictor()
        settings = replace(CoarseSettings.from_config(cfg, w, iterations=1), frame=frame,
                           predict=lambda x, a: (seen.append(x[0]), predict(x, a))[1])
        coarse_fit(photo.astype(np.float32) / 255, det.landmarks, model, settings, cfg.render, det.detector)
        rows.append((f"scan view {view}, {frame.input_mask}", seen[0]))
with h5py.File(cache, "r") as f:
    for r in (0, 3):
        x = f["inputs"][r] / np.float32(255)
        rows.append((f"training pair {r}, shading", x))
        rows.append((f"training pair {r}, landmarks", x * w.frame.region(f["points"][r])))
fig, ax = plt.subplots(len(rows) // 2, 4, figsize=(8, 2.1 * len(rows) // 2))
for i, (title, x) in enumerate(rows):
    for c in range(2):
        a = ax[i // 2, 2 * (i % 2) + c]
        a.imshow(x[c], cmap="gray", vmin=0, vmax=1)
        a.set_title(f"{title}: {'image' if c == 0 else 'shading'}", fontsize=6)
        a.axis("off")
fig.tight_layout()
fig.savefig(out, dpi=110)
