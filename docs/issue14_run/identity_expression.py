"""Issue 14, session 9: which part of the coarse face does the network get right, identity or expression?
(docs/issue14_run.md section 13)

The network's and the fit's coefficients are swapped part by part, identity (the first ``model.n_identity``)
and expression (the rest), with the truth's where there is one, and every mix is scored:

- ``synthetic``: validation faces (``datagen.seed`` 77, as `train evaluate` draws them), dlib's landmarks, one
  pass; the vertex error of `train evaluate` (similarity-aligned, narrow face, mm). Also the norms of the
  identity parts and, per identity mode, the correlation of the estimates with the truth over the faces.
- ``scan``: the renders of `refine evaluate-scan` (the same views, lights and detector), each mix scored with
  its NoW-style scan-to-mesh metric and pooled over the found views (median, mm).

usage: python docs/issue14_run/identity_expression.py WEIGHTS N_FACES SCAN_DIR VIEWS OUT.json
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from coarse.detect import ReconstructionInputError, detect_faces, load_image
from coarse.stage import coarse_fit
from datagen.faces import EVAL_SEED_OFFSET, online_faces
from facesynth.config import load_config, override
from facesynth.io import save_png
from morphable.model import load_model
from reconstruct.models import load_coarse
from reconstruct.now_metric import scan_to_mesh
from reconstruct.scan import ScanRenderer, load_scan, sample_views
from reconstruct.scan_eval import face_triangles
from render.background import random_background
from render.renderer import FaceRenderer
from training.cli import photo_scene_config
from training.metrics import coefficient_errors


def mixes(fit: np.ndarray, net: np.ndarray, n_identity: int, truth: np.ndarray | None = None) -> dict:
    """Coefficient vectors (K,) named ``<identity>_<expression>`` from the fit, the network, zero and the truth."""
    parts = {"fit": fit, "net": net, "zero": np.zeros_like(fit)}
    if truth is not None:
        parts["true"] = truth
    return {f"{i}id_{e}exp": np.concatenate([a[:n_identity], b[n_identity:]])
            for i, a in parts.items() for e, b in parts.items()}


def detected_faces(cfg, model, n: int):
    """The validation faces as `train evaluate` draws them, each with dlib's first face: yields (face record,
    photo (H, W, 3) float in [0, 1], Detection); faces the detector misses are skipped."""
    scene_cfg = photo_scene_config(cfg)
    renderer = FaceRenderer.from_config(model, scene_cfg.render)
    for face in online_faces(scene_cfg, n, cfg.datagen.seed + EVAL_SEED_OFFSET, model, renderer):
        photo = np.asarray(face.rgb, np.float32)
        try:
            det = detect_faces(np.clip(photo * 255 + 0.5, 0, 255).astype(np.uint8), cfg.detect)[0]
        except ReconstructionInputError:
            continue
        yield face, photo, det


def detected_views(cfg, the_scan, n_views: int):
    """The renders of `refine evaluate-scan` (the same views, lights and backgrounds, through a PNG as it reads
    them), each with dlib's first face: yields (photo (H, W, 3) float in [0, 1], Detection); views the detector
    misses are skipped."""
    sc = cfg.scan_eval
    renderer = ScanRenderer(the_scan, sc.image_size, sc.supersample, cfg.render.gl_platform)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for view in sample_views(n_views, sc):
                bg = random_background(np.random.default_rng(view.background_seed), sc.image_size, sc.image_size,
                                       sc.background)
                save_png(Path(tmp) / "view.png", renderer.render(view, bg).image)
                photo = load_image(Path(tmp) / "view.png")
                try:
                    det = detect_faces(photo, cfg.detect)[0]
                except ReconstructionInputError:
                    continue
                yield photo.astype(np.float32) / 255.0, det
    finally:
        renderer.close()


def synthetic(cfg, model, coarse, n: int) -> dict:
    ni, rows, alphas = model.n_identity, [], []
    for face, photo, det in detected_faces(cfg, model, n):
        cf = coarse_fit(photo, det.landmarks, model, coarse, cfg.render, det.detector)
        truth = np.asarray(face.alpha_gt, np.float32)
        rows.append({k: float(coefficient_errors(model, a[None], truth[None]).mean())
                     for k, a in mixes(cf.fit, cf.alpha, ni, truth).items()})
        alphas.append((truth, cf.fit, cf.alpha))
    g, f, a = (np.array(x) for x in zip(*alphas))
    corr = lambda p, k: float(np.corrcoef(p[:, k], g[:, k])[0, 1])  # noqa: E731
    return {"faces": len(rows), "found_of": n,
            "vertex_error_mm": {k: float(np.mean([r[k] for r in rows])) for k in rows[0]},
            "identity_norm": {"true": float(np.linalg.norm(g[:, :ni], axis=1).mean()),
                              "fit": float(np.linalg.norm(f[:, :ni], axis=1).mean()),
                              "net": float(np.linalg.norm(a[:, :ni], axis=1).mean())},
            "identity_mode_correlation_with_truth": {"fit": [corr(f, k) for k in range(10)],
                                                     "net": [corr(a, k) for k in range(10)]}}


def scan(cfg, model, coarse, scan_dir: str, n_views: int) -> dict:
    sc = cfg.scan_eval
    the_scan = load_scan(scan_dir, model.landmarks(np.zeros(model.n_coeffs)))
    tris, pooled, found = face_triangles(model), {}, 0
    for photo, det in detected_views(cfg, the_scan, n_views):
        found += 1
        cf = coarse_fit(photo, det.landmarks, model, coarse, cfg.render, det.detector)
        for k, a in mixes(cf.fit, cf.alpha, model.n_identity).items():
            s = scan_to_mesh(the_scan.points, the_scan.landmarks, model.vertices(a), tris, model.landmarks(a),
                             sc.crop_radius_mm, sc.icp_iterations, sc.icp_points, sc.seed)
            pooled.setdefault(k, []).append(s.distances)
    return {"views": n_views, "found": found,
            "median_mm": {k: float(np.median(np.concatenate(v))) for k, v in pooled.items()}}


def main(weights: str, n_faces: int, scan_dir: str, n_views: int, out: str) -> None:
    cfg = override(override(load_config(), "datagen.seed", 77), "refine.iterations", 1)
    model = load_model(cfg.resolve_path(cfg.model.path))
    coarse, _ = load_coarse(weights, cfg, "cpu")
    report = {"weights": weights, "synthetic": synthetic(cfg, model, coarse, n_faces),
              "scan": scan(cfg, model, coarse, scan_dir, n_views)}
    Path(out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
