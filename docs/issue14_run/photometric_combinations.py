"""Issue 14, session 10 (docs/issue14_run.md section 14): the landmark fit (F), the network from it (N), the
photometric fit from it (P), the network from P (NP), the photometric fit from N (N_P), and mixes of one
estimate's identity with another's expression, each scored on synthetic faces (vertex error, as `train evaluate`),
on the scan's renders (NoW median, as `refine evaluate-scan`) or on the 8 model faces of scan_pipeline_faces.py.

usage: python docs/issue14_run/photometric_combinations.py WEIGHTS N_FACES VIEWS SCAN_DIR OUT.json [KEY=VALUE ...]
  N_FACES synthetic faces (0: none); VIEWS > 0: the scan's renders; VIEWS < 0: the 8 model faces, -VIEWS each.
"""
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from identity_expression import detected_faces, detected_views  # noqa: E402

from coarse.fit import fit_map  # noqa: E402
from coarse.iterative import network_fit  # noqa: E402
from coarse.photometric import photometric_fit  # noqa: E402
from facesynth.config import load_config, override  # noqa: E402
from morphable.model import load_model  # noqa: E402
from reconstruct.models import load_coarse  # noqa: E402
from reconstruct.now_metric import scan_to_mesh  # noqa: E402
from reconstruct.scan import load_scan  # noqa: E402
from reconstruct.scan_eval import face_triangles  # noqa: E402
from training.metrics import coefficient_errors  # noqa: E402

weights, n_faces, n_views, scan_dir, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
cfg = override(override(load_config(), "datagen.seed", 77), "refine.iterations", 1)
for kv in sys.argv[6:]:
    k, _, v = kv.partition("=")
    cfg = override(cfg, k, yaml.safe_load(v))
model = load_model(cfg.resolve_path(cfg.model.path))
coarse, _ = load_coarse(weights, cfg, "cpu")
ni = model.n_identity
pm = cfg.refine.photometric

def cat(a, b):
    return np.concatenate([a[:ni], b[ni:]]).astype(np.float32)

def estimates(photo, points, det):
    F, Fp = fit_map(model, points, coarse.landmarks, cfg.fit, detector=det)
    steps, Np = network_fit(coarse.predict, coarse.frame, photo, points, model, cfg.render, 1, True, alpha0=F)
    N = steps[-1][0]
    P, Pp = photometric_fit(photo, F, Fp, points, model, coarse.landmarks, cfg.fit, pm, det)
    steps, _ = network_fit(coarse.predict, coarse.frame, photo, points, model, cfg.render, 1, True, alpha0=P)
    NP = steps[-1][0]
    NthenP, _ = photometric_fit(photo, N, Np, points, model, coarse.landmarks, cfg.fit, pm, det)
    out = {"F": F, "N": N, "P": P, "NP": NP, "N_P": NthenP, "Pid_Nexp": cat(P, N), "Pid_NPexp": cat(P, NP), "Pid_Fexp": cat(P, F),
           "Fid_Pexp": cat(F, P), "Nid_Pexp": cat(N, P)}
    return out

res = {}
if n_faces:
    rows = []
    for face, photo, det in detected_faces(cfg, model, n_faces):
        truth = np.asarray(face.alpha_gt, np.float32)
        e = estimates(photo, det.landmarks, det.detector)
        rows.append({k: float(coefficient_errors(model, a[None], truth[None]).mean()) for k, a in e.items()})
        print(len(rows), {k: round(v, 3) for k, v in rows[-1].items()}, flush=True)
    res["synthetic"] = {"faces": len(rows), "mean_mm": {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}}
    print(res["synthetic"], flush=True)
def scan_pooled(the_scan, n_views):
    sc = cfg.scan_eval
    tris, pooled = face_triangles(model), {}
    for photo, det in detected_views(cfg, the_scan, n_views):
        e = estimates(photo, det.landmarks, det.detector)
        e["M"] = np.zeros(model.n_coeffs, np.float32)
        for k, a in e.items():
            s = scan_to_mesh(the_scan.points, the_scan.landmarks, model.vertices(a), tris, model.landmarks(a),
                             sc.crop_radius_mm, sc.icp_iterations, sc.icp_points, sc.seed)
            pooled.setdefault(k, []).append(s.distances)
    return {k: float(np.median(np.concatenate(v))) for k, v in pooled.items()}

if n_views > 0:
    res["scan"] = scan_pooled(load_scan(scan_dir, model.landmarks(np.zeros(model.n_coeffs))), n_views)
    print(res["scan"], flush=True)
if n_views < 0:  # the 8 model faces of scan_pipeline_faces.py
    from proxy_scan import synthetic_texture, twin_scan
    from datagen.scene import draw_scene
    faces = []
    for i in range(8):
        alpha = draw_scene(555, i, model, cfg).alpha_gt
        uv, image = synthetic_texture(model, 1000 + i)
        r = scan_pooled(twin_scan(model, alpha, uv, image, Path(f"model_face_{i}")), -n_views)
        faces.append(r)
        print(i, {k: round(v, 4) for k, v in r.items()}, flush=True)
    res["model_faces"] = {"faces": faces, "ratio_to_mean": {k: float(np.mean([f[k] / f["M"] for f in faces])) for k in faces[0]},
                          "mean_mm": {k: float(np.mean([f[k] for f in faces])) for k in faces[0]}}
    print(res["model_faces"]["ratio_to_mean"], flush=True)
Path(out).write_text(json.dumps(res, indent=1))
