"""``refine evaluate-scan``: the photo pipeline measured on real geometry.

A textured scan (:mod:`reconstruct.scan`) is rendered in ``scan_eval.views`` poses, lenses and lights; each
render goes through the real ``refine`` (detection, coarse fit, texture, detail network, SfS), and each
stage's surface is scored against the scan NoW-style (:mod:`reconstruct.now_metric`):

- ``mean_face``: the model's mean face (needs no detection: the same mesh for every view);
- ``coarse``: the coarse morphable-model face, ``model.vertices(rec.alpha)``;
- ``refined``: :func:`reconstruct.pipeline.refined_mesh` (what ``refined.obj`` holds).

Meshes on the model's topology are scored over the face area (triangles whose three vertices are in
``model.regions["face"]``: no eyeballs, teeth or mouth socket); the reconstruction's landmarks for the initial
alignment are the model landmarks of ``rec.alpha`` (the refined mesh lies on the coarse face, in the same
frame).

Outputs in ``out``: ``view_XX.png`` (the renders), ``views.png`` (contact sheet with each view's scores),
``error_map.png`` (the scan seen head-on, coloured by each stage's distance for the most frontal found view)
and ``scan_eval.json`` (the report, also returned). Each ``per_view`` entry holds the view's parameters
(:class:`reconstruct.scan.ScanView`), ``found`` (or the one-line ``error`` of a view the pipeline refused), and
for a found view the ``coarse`` and ``refined`` figures with the ICP's scale, the pipeline's timings and
``detected_vs_scan_landmarks_px``: the mean image distance between the detected landmarks 27-59 and the
scan's own (menpo's annotation, projected), which mixes detector error with the two annotations' conventions.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from coarse.detect import ReconstructionInputError, detect_faces, load_image
from coarse.fit import FitError
from datagen.sheet import contact_sheet
from facesynth.io import save_png, write_json
from render.background import random_background

from .now_metric import ALIGN_LANDMARKS, ScanScore, scan_to_mesh, summary
from .pipeline import reconstruct_face, refined_mesh
from .scan import Scan, ScanRenderer, ScanView, sample_views

#: Distance at full colour in error_map.png, mm.
ERROR_MAP_MAX_MM = 5.0


def face_triangles(model) -> np.ndarray:
    """(F', 3) the model's triangles whose three vertices lie in ``model.regions["face"]``."""
    return model.region_triangles("face")


def scored_triangles(triangles: np.ndarray, model, face: np.ndarray) -> np.ndarray:
    """The triangles of a stage's mesh that are scored: ``face`` (:func:`face_triangles`) for a mesh on the
    model's topology, else all of them."""
    return face if np.array_equal(triangles, model.triangles) else triangles


def _error_colors(scan, score: ScanScore) -> np.ndarray:
    """(V, 3) colours of the scan's mesh vertices: viridis over [0, ERROR_MAP_MAX_MM] mm, gray outside the
    crop."""
    from matplotlib import colormaps

    d = np.full(len(scan.points), np.nan)
    d[score.crop] = score.distances
    dv = d[scan.point_index]
    colors = colormaps["viridis"](np.clip(np.nan_to_num(dv) / ERROR_MAP_MAX_MM, 0, 1))[:, :3]
    return np.where(np.isnan(dv)[:, None], 0.7, colors)


def _label(i: int, view: ScanView, entry: dict) -> str:
    head = f"{i:02d} yaw {view.yaw_deg:+.0f} {view.focal_mm:.0f}mm"
    if not entry["found"]:
        return head + ": not found"
    return head + f": c {entry['coarse']['median_mm']:.2f} r {entry['refined']['median_mm']:.2f}"


def evaluate_scan(scan: Scan, model, cfg, out: str | Path, n_views: int, coarse=None, detail=None,
                  sfs: bool = True, notes: dict | None = None, progress: bool = True) -> dict:
    """Render ``scan``, reconstruct each render and score every stage (module docstring).

    Args:
        scan: the scan (:func:`reconstruct.scan.load_scan`); model: the face model; cfg: the config
            (``scan_eval`` for the renders and the metric, ``refine`` for the pipeline).
        out: output folder (created); n_views: renders.
        coarse: the coarse stage (:class:`coarse.stage.CoarseSettings`; default from ``cfg``, the landmark fit);
        detail: the detail network or None (as in ``refine sfs``); sfs: run SfS.
        notes: more entries for the report's ``settings`` (e.g. the weights files).
    Returns:
        the report written to ``out/scan_eval.json``: ``views``, ``found``, per stage ``median_mm``,
        ``mean_mm``, ``std_mm`` (pooled over the cropped scan points of the found views; ``mean_face`` over
        every view), ``per_view`` and the settings.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    sc = cfg.scan_eval
    out = Path(out)
    zeros = np.zeros(model.n_coeffs, np.float32)
    views = sample_views(n_views, sc)
    out.mkdir(parents=True, exist_ok=True)
    tris = face_triangles(model)
    if coarse is None:
        from coarse.stage import CoarseSettings

        coarse = CoarseSettings.from_config(cfg)

    def score(verts, triangles, alpha) -> ScanScore:
        return scan_to_mesh(scan.points, scan.landmarks, verts, triangles, model.landmarks(alpha),
                            sc.crop_radius_mm, sc.icp_iterations, sc.icp_points, sc.seed)

    scores = {"mean_face": score(model.vertices(zeros), tris, zeros)}
    pooled = {"coarse": [], "refined": []}
    per_view, tiles, best = [], [], None
    renderer = ScanRenderer(scan, sc.image_size, sc.supersample, cfg.render.gl_platform)
    try:
        for i, view in enumerate(tqdm(views, desc="scan views", disable=not progress)):
            bg = random_background(np.random.default_rng(view.background_seed), sc.image_size, sc.image_size,
                                   sc.background)
            shot = renderer.render(view, bg)
            name = f"view_{i:02d}.png"
            save_png(out / name, shot.image)
            photo = load_image(out / name)
            entry = {"view": i, "image": name, **view.to_dict(), "found": False, "error": None}
            try:
                det = detect_faces(photo, cfg.detect)[0]
                rec = reconstruct_face(photo, det, model, cfg, coarse, cfg.refine.resolution, sfs=sfs,
                                       sfs_params=cfg.refine.sfs, detail=detail)
            except (ReconstructionInputError, FitError) as e:
                entry["error"] = str(e).splitlines()[0]
            else:
                rverts, rtris, _, _ = refined_mesh(rec, model)
                view_scores = {"coarse": score(model.vertices(rec.alpha), tris, rec.alpha),
                               "refined": score(rverts, scored_triangles(rtris, model, tris), rec.alpha)}
                entry.update(found=True, coarse_method=rec.coarse_method, timings_s=rec.timings,
                             detected_vs_scan_landmarks_px=float(np.linalg.norm(
                                 det.landmarks[ALIGN_LANDMARKS] - shot.landmarks[ALIGN_LANDMARKS], axis=1).mean()))
                for k, s in view_scores.items():
                    entry[k] = {**s.summary(), "icp_scale": s.transform.scale}
                    pooled[k].append(s.distances)
                if best is None or abs(view.yaw_deg) < abs(best[0].yaw_deg):
                    best = (view, view_scores, i)
            per_view.append(entry)
            tiles.append((shot.image, _label(i, view, entry)))
        if tiles:
            save_png(out / "views.png", contact_sheet([t for t, _ in tiles], min(4, len(tiles)),
                                                      labels=[s for _, s in tiles]))
        if best is not None:
            front = ScanView(0.0, 0.0, 0.0, 85.0, 800.0, (0.0, 0.0, 1.0), 3.0, 0.4, 0)  # head-on, close
            maps = {"mean_face": scores["mean_face"], **best[1]}
            panels = [renderer.render_colors(_error_colors(scan, s), front) for s in maps.values()]
            save_png(out / "error_map.png", contact_sheet(
                panels, len(panels), labels=[f"view {best[2]:02d} {k}: median {s.summary()['median_mm']:.2f} mm "
                                             f"(0-{ERROR_MAP_MAX_MM:g} mm)" for k, s in maps.items()]))
    finally:
        renderer.close()

    found = sum(e["found"] for e in per_view)
    report = {
        "scan": str(scan.source),
        "views": len(views),
        "found": found,
        "mean_face": {**scores["mean_face"].summary(),
                      "scored_on": "every view (the same mesh for each, so also its figure over the found views)"},
        **{k: {**summary(np.concatenate(v) if v else np.zeros(0)), "scored_on": "found views, pooled"}
           for k, v in pooled.items()},
        "scan_points_scored": int(scores["mean_face"].crop.sum()),
        "per_view": per_view,
        "settings": {"crop_radius_mm": sc.crop_radius_mm, "icp_iterations": sc.icp_iterations,
                     "icp_points": sc.icp_points, "align_landmarks": "27-59 (nose, eyes, outer lips)",
                     "image_size": sc.image_size, "seed": sc.seed, "sfs": sfs,
                     "refine_resolution": cfg.refine.resolution,
                     "error_map_png": f"scan seen head-on, viridis 0-{ERROR_MAP_MAX_MM:g} mm, gray: outside the crop",
                     **(notes or {})},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out / "scan_eval.json", report, indent=1)
    return report


# ---------------------------------------------------------------------------------------------- many scans
def scan_folders(paths: list) -> list[Path]:
    """The scan folders named by ``paths``: a folder holding an ``.obj`` is a scan; any other folder stands for
    its sub-folders that hold one (a folder of scans), in name order."""
    from .scan import ScanError

    folders = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ScanError(f"scan folder {p} not found")
        if any(p.glob("*.obj")):
            folders.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and any(d.glob("*.obj")))
        if not subs:
            raise ScanError(f"{p} holds no scan (a folder with one .obj, its texture and optionally landmarks68.txt)")
        folders += subs
    names = [f.name for f in folders]
    if len(set(names)) != len(names):
        raise ScanError(f"two scans share a folder name ({', '.join(sorted(n for n in names if names.count(n) > 1))})")
    return folders


def scan_landmarks(folder: Path, out: Path, detect_params=None) -> tuple[np.ndarray | None, str]:
    """A scan's landmarks: None (its own ``landmarks68.txt`` is used) or, for a folder without one, those
    :func:`reconstruct.scan.place_landmarks` finds, kept in ``out/landmarks68.txt`` for the next run; and where
    they came from."""
    from facesynth.io import atomic_write_text

    from .scan import LANDMARKS_FILE, place_landmarks, read_landmarks

    if (folder / LANDMARKS_FILE).is_file():
        return None, str(folder / LANDMARKS_FILE)
    kept = out / LANDMARKS_FILE
    if kept.is_file():
        return read_landmarks(kept), f"{kept} (placed: detector on head-on renders)"
    lm = place_landmarks(folder, detect_params)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(kept, "# 68 landmarks placed by reconstruct.scan.place_landmarks (detector on head-on renders, "
                            "carried onto the scan by depth); x y z in the OBJ's frame and units\n"
                      + "\n".join(f"{x:.4f} {y:.4f} {z:.4f}" for x, y, z in lm) + "\n")
    return lm, f"{kept} (placed: detector on head-on renders)"


def evaluate_scans(folders: list, model, cfg, out: str | Path, n_views: int, coarse=None, detail=None,
                   sfs: bool = True, notes: dict | None = None, progress: bool = True) -> dict:
    """:func:`evaluate_scan` on each scan folder (outputs in ``out/<folder name>/``), and the figure to judge by:
    each stage's median over a scan divided by the mean face's on that scan, averaged over the scans.

    Returns the report written to ``out/scans.json``: ``scans`` (per scan: its folder, landmarks' source,
    views found, each stage's ``median_mm`` and ``ratio_to_mean_face``), ``mean_ratio_to_mean_face`` per stage,
    ``max_ratio_to_mean_face`` per stage, and the settings.
    """
    from .scan import load_scan

    out = Path(out)
    rows = []
    for folder in map(Path, folders):
        sub = out / folder.name
        lm, source = scan_landmarks(folder, sub, cfg.detect)
        scan = load_scan(folder, model.landmarks(np.zeros(model.n_coeffs)), lm)
        r = evaluate_scan(scan, model, cfg, sub, n_views, coarse, detail, sfs, notes, progress)
        base = r["mean_face"]["median_mm"]
        rows.append({"scan": folder.name, "folder": str(folder), "landmarks": source, "views": r["views"],
                     "found": r["found"],
                     **{k: {"median_mm": r[k]["median_mm"],
                            "ratio_to_mean_face": r[k]["median_mm"] / base if r[k]["median_mm"] == r[k]["median_mm"]
                            else None}
                        for k in ("mean_face", "coarse", "refined")}})
    stages = ("coarse", "refined")
    ratios = {k: [row[k]["ratio_to_mean_face"] for row in rows if row[k]["ratio_to_mean_face"] is not None]
              for k in stages}
    report = {"scans": rows,
              "mean_ratio_to_mean_face": {k: float(np.mean(v)) if v else None for k, v in ratios.items()},
              "max_ratio_to_mean_face": {k: float(np.max(v)) if v else None for k, v in ratios.items()},
              "figure": "per scan, the stage's NoW-style median over its found views / the mean face's median; "
                        "mean over the scans",
              "views_per_scan": n_views, "settings": notes or {}}
    write_json(out / "scans.json", report, indent=1)
    return report
