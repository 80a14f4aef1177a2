"""Issue 14, session 9: the coarse face's error by where its identity and its expression come from (docs/
issue14_run.md section 13). Two grids: validation faces (vertex error, mm) and the scan's renders (NoW median, mm).

usage: python docs/issue14_run/figure_identity_expression.py OUT.png REPORT.json (of identity_expression.py)
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

NAMES = {"zero": "mean\nface", "fit": "landmark\nfit", "net": "network", "true": "truth"}

out, report = sys.argv[1], json.load(open(sys.argv[2]))
panels = [("validation faces (dlib, one pass): vertex error, mm", report["synthetic"]["vertex_error_mm"]),
          (f"scan {report['scan']['found']} renders: NoW median, mm", report["scan"]["median_mm"])]
fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
for ax, (title, grid) in zip(axes, panels):
    parts = [p for p in NAMES if f"{p}id_{p}exp" in grid]
    m = np.array([[grid[f"{i}id_{e}exp"] for e in parts] for i in parts])
    shown = np.where(m > 1e-6, m, np.nan)  # truth-truth is 0
    ax.imshow(shown, cmap="viridis_r")
    for (r, c), v in np.ndenumerate(m):
        if v > 1e-6:
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", color="w" if v > np.nanmean(shown) else "k")
    ax.set_xticks(range(len(parts)), [NAMES[p] for p in parts])
    ax.set_yticks(range(len(parts)), [NAMES[p] for p in parts])
    ax.set_xlabel("expression from")
    ax.set_ylabel("identity from")
    ax.set_title(title, fontsize=10)
fig.suptitle(f"where the coarse face's error is: {report['weights']}", fontsize=10)
fig.tight_layout()
fig.savefig(out, dpi=110)
