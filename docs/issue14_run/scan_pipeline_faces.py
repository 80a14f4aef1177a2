"""Issue 14, session 8: model faces through the scan evaluation (docs/issue14_run.md section 12).

N faces of the model (identity and expression as training draws them, datagen seed 555), each dressed in a skin
of the albedo model baked into a texture, rendered and scored exactly as `refine evaluate-scan` renders and
scores a real scan (pyrender's lighting in sRGB, pinhole cameras at 35 and 85 mm, yaw to 45 degrees, dlib,
NoW-style metric on the face's skin). Other faces than the one real scan, under the scan's conditions: what a
single scan's ratio to the mean face varies by from face to face, and whether a network's gain holds there.

usage: python docs/issue14_run/scan_pipeline_faces.py WEIGHTS|fit N VIEWS OUT.json [KEY=VALUE ...]
(KEY=VALUE: config overrides, e.g. fit.photometric.weight=10000)
"""
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from proxy_scan import synthetic_texture, twin_scan  # noqa: E402

from datagen.scene import draw_scene  # noqa: E402
from facesynth.config import load_config, override  # noqa: E402
from morphable.model import load_model  # noqa: E402
from reconstruct.models import load_coarse  # noqa: E402
from reconstruct.scan_eval import evaluate_scan  # noqa: E402

weights, n, views, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
cfg = override(load_config(), "refine.iterations", 1)
for kv in sys.argv[5:]:
    key, _, value = kv.partition("=")
    cfg = override(cfg, key, yaml.safe_load(value))
model = load_model(cfg.resolve_path(cfg.model.path))
coarse, used = load_coarse(None if weights == "fit" else weights, cfg, "cpu", no_network=weights == "fit")
rows = []
for i in range(n):
    alpha = draw_scene(555, i, model, cfg).alpha_gt
    uv, image = synthetic_texture(model, 1000 + i)
    face = twin_scan(model, alpha, uv, image, Path(f"model_face_{i}"))
    r = evaluate_scan(face, model, cfg, out.parent / f"{out.stem}_face{i}", views, coarse, None, sfs=False,
                      notes={"weights": used}, progress=False)
    rows.append({"face": i, "coarse_mm": r["coarse"]["median_mm"], "mean_face_mm": r["mean_face"]["median_mm"],
                 "found": r["found"]})
    print(rows[-1], flush=True)
ratio = [r["coarse_mm"] / r["mean_face_mm"] for r in rows]
report = {"weights": used, "faces": rows, "views": views, "coarse_over_mean_face": float(np.mean(ratio)),
          "coarse_over_mean_face_sd": float(np.std(ratio, ddof=1)) if n > 1 else None,
          "coarse_mm": float(np.mean([r["coarse_mm"] for r in rows]))}
out.write_text(json.dumps(report, indent=1))
print(json.dumps({k: v for k, v in report.items() if k != "faces"}))
