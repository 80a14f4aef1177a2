"""Looking at a dataset: a contact sheet of samples and the distributions of its parameters."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facesynth.io import atomic_path, save_png

from .loader import iter_records
from .sheet import contact_sheet


def preview_sheet(data_dir: Path, out: Path, n: int = 16) -> Path:
    """Rows of (colour render, masked network image, shading image of a_t, mask) for ``n`` samples."""
    tiles = []
    for rec in iter_records(data_dir, limit=n):
        tiles += [rec["rgb"], rec["image"], rec["shading"], rec["mask"].astype(np.float32)]
    if not tiles:
        raise FileNotFoundError(f"no samples in {data_dir}")
    cols = 8 if len(tiles) >= 8 else len(tiles)
    save_png(out, contact_sheet(tiles, cols))
    return out


def _skin_tone(rec: dict) -> float:
    """Mean colour-render luma inside the true silhouette (a proxy for skin tone under the light)."""
    rgb, m = rec["rgb"], rec["depth_mask"]
    from render.shading import to_gray

    return float(to_gray(rgb[m]).mean()) if m.any() else float("nan")


def dataset_stats(data_dir: Path, png: Path, limit: int | None = None) -> dict:
    """Distributions of yaw/pitch/roll (deg), scale (px/mm), expression strength (sum of weights),
    u, and skin tone; writes histograms to ``png`` and returns summary numbers."""
    from render.camera import rotation_to_euler

    cols: dict[str, list[float]] = {k: [] for k in
                                    ("yaw_deg", "pitch_deg", "roll_deg", "scale_px_per_mm", "expression_sum",
                                     "u", "skin_luma")}
    for rec in iter_records(data_dir, limit=limit):
        p = rec["params"]
        yaw, pitch, roll = np.rad2deg(rotation_to_euler(np.asarray(p["pose"]["rotation"])))
        cols["yaw_deg"].append(yaw)
        cols["pitch_deg"].append(pitch)
        cols["roll_deg"].append(roll)
        cols["scale_px_per_mm"].append(p["pose"]["scale"])
        cols["expression_sum"].append(float(np.sum(p["alpha_gt"][100:])))
        cols["u"].append(p["u"])
        cols["skin_luma"].append(_skin_tone(rec))
    if not cols["u"]:
        raise FileNotFoundError(f"no samples in {data_dir}")
    summary = {"samples": len(cols["u"])}
    for k, v in cols.items():
        a = np.asarray(v, np.float64)
        summary[k] = {"mean": float(np.nanmean(a)), "std": float(np.nanstd(a)),
                      "p5": float(np.nanpercentile(a, 5)), "p50": float(np.nanpercentile(a, 50)),
                      "p95": float(np.nanpercentile(a, 95))}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, (k, v) in zip(axes.flat, cols.items()):
        ax.hist(np.asarray(v)[np.isfinite(v)], bins=30, color="#4477aa")
        ax.set_title(k)
    axes.flat[-1].axis("off")
    fig.suptitle(f"{data_dir} ({summary['samples']} samples)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    summary["png"] = str(png)
    return summary
