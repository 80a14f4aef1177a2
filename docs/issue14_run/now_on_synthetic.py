"""Issue 14, session 8: the scan's metric on synthetic faces (docs/issue14_run.md section 12).

For validation faces (datagen.seed 77, dlib's landmarks, one pass) both the training metric (mean per-vertex
error over the narrow face after a similarity, known correspondence) and the scan's NoW-style metric (the true
face's skin points within 95 mm of the nose tip against the reconstructed surface after landmark similarity and
ICP: no correspondence, so only error across the surface counts), for the mean face, the fit and the network.

usage: python docs/issue14_run/now_on_synthetic.py WEIGHTS N OUT.json [photo]
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from proxy_scan import skin_vertices  # noqa: E402

from coarse.detect import ReconstructionInputError, detect_faces
from coarse.fit import fit_map
from coarse.iterative import network_fit
from datagen.faces import EVAL_SEED_OFFSET, online_faces
from facesynth.config import load_config, override
from morphable.model import load_model
from reconstruct.models import load_coarse
from reconstruct.now_metric import crop_scan, scan_to_mesh
from reconstruct.scan_eval import face_triangles
from render.renderer import FaceRenderer
from training.cli import photo_scene_config
from training.metrics import coefficient_errors

weights, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = override(override(load_config(), "datagen.seed", 77), "refine.iterations", 1)
if len(sys.argv) > 4 and sys.argv[4] == "photo":
    for k, v in (("occlusion_max", 1.0), ("shadow_prob", 0.5), ("srgb_prob", 1.0)):
        cfg = override(cfg, f"sampling.light.{k}", v)
model = load_model(cfg.resolve_path(cfg.model.path))
scene_cfg = photo_scene_config(cfg)  # as `train evaluate` draws its faces
renderer = FaceRenderer.from_config(model, scene_cfg.render)
coarse, _ = load_coarse(weights, cfg, "cpu")
tris = face_triangles(model)
skin = np.intersect1d(skin_vertices(model), np.unique(tris))
rows = {"mean_face": [], "fit": [], "net": []}
for face in online_faces(scene_cfg, n, 77 + EVAL_SEED_OFFSET, model, renderer):
    photo = np.asarray(face.rgb, np.float32)
    try:
        det = detect_faces(np.clip(photo * 255 + 0.5, 0, 255).astype(np.uint8), None)[0]
    except ReconstructionInputError:
        continue
    fit, _ = fit_map(model, det.landmarks, coarse.landmarks, coarse.prior, None, detector=det.detector)
    steps, _ = network_fit(coarse.predict, coarse.frame, photo, det.landmarks, model, cfg.render, 1,
                           coarse.refit_pose, alpha0=coarse.start(fit))
    gt_v = np.asarray(model.vertices(face.alpha_gt), np.float64)
    pts = gt_v[skin]
    gt_lm = np.asarray(model.landmarks(face.alpha_gt), np.float64)
    for name, a in (("mean_face", np.zeros_like(face.alpha_gt)), ("fit", fit), ("net", steps[-1][0])):
        score = scan_to_mesh(pts, gt_lm, np.asarray(model.vertices(a), np.float64), tris,
                             np.asarray(model.landmarks(a), np.float64))
        rows[name].append((float(coefficient_errors(model, a[None], face.alpha_gt[None]).mean()),
                           float(np.median(score.distances))))
report = {k: {"faces": len(v), "vertex_mean_mm": float(np.mean([r[0] for r in v])),
              "now_median_of_faces_mm": float(np.median([r[1] for r in v])),
              "now_mean_of_face_medians_mm": float(np.mean([r[1] for r in v]))} for k, v in rows.items()}
json.dump(report, open(out, "w"), indent=1)
for k, v in report.items():
    print(k, {kk: round(vv, 4) for kk, vv in v.items()})
