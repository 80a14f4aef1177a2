"""Issue 14, session 8: the scan gate's ratio (coarse median / mean face's) on eight model faces through the scan
evaluation, beside the real scan (docs/issue14_run.md section 12).

usage: python docs/issue14_run/figure_scan_spread.py OUT.png FIT.json NET.json [LABEL=NET.json ...]
(the JSONs of scan_pipeline_faces.py); the real scan's figures are the session-8 ones, written below.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: `refine evaluate-scan ../shared/scans/james`: (views, seed) -> (fit, network, mean face) medians, mm.
JAMES = {"james\n12 views (gate)": (0.963, 0.949, 1.018), "james\n36 views, seed 1": (0.970, 0.968, 1.018)}

out, fit_file, net_file = sys.argv[1:4]
series = {"landmark fit": json.load(open(fit_file)), "network (candidate)": json.load(open(net_file))}
for extra in sys.argv[4:]:
    label, path = extra.split("=", 1)
    series[label] = json.load(open(path))
fig, ax = plt.subplots(figsize=(8, 4.2))
width = 0.8 / len(series)
for k, (label, d) in enumerate(series.items()):
    r = [f["coarse_mm"] / f["mean_face_mm"] for f in d["faces"]]
    ax.bar(np.arange(len(r)) + k * width, r, width, label=f"{label}: mean {np.mean(r):.3f}, sd {np.std(r, ddof=1):.3f}")
n = len(next(iter(series.values()))["faces"])
ticks, names = list(np.arange(n) + width / 2), [f"face {i}" for i in range(n)]
for j, (label, (fit, net, mean)) in enumerate(JAMES.items()):
    x = n + 0.4 + j * 1.7
    ax.bar([x, x + width], [fit / mean, net / mean], width, color=["C0", "C1"], hatch="//", edgecolor="k")
    ticks.append(x + width / 2)
    names.append(label)
ax.axhline(0.9, color="k", ls="--", lw=1, label="gate: 0.9 x mean face")
ax.axhline(1.0, color="gray", lw=0.8)
ax.set_xticks(ticks, names, fontsize=7)
ax.set_ylim(0.5, 1.25)
ax.set_ylabel("coarse median / mean face's (scan metric)")
ax.set_title("Model faces through `refine evaluate-scan`'s renders and metric, 12 views each")
ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()
fig.savefig(out, dpi=110)
print(out)
