"""Issue 14, session 8: is the real head's gap its appearance or its shape? (docs/issue14_run.md section 12)

Fits the face model to the scan's 3D points (the scan's "twin": the model face closest to it), then runs
`refine evaluate-scan`'s own evaluation (the same views, lights, cameras, detector and metric) on the twin dressed
two ways:

- ``real``: the scan's photo texture carried onto the twin (each twin triangle takes its UVs from the scan
  triangle nearest to its centre, extended over the triangle, so no triangle spans two of the texture's charts);
- ``synthetic``: a skin of the albedo model (one draw) baked into a texture over the model's UV layout.

The twin is in the model's span, so what the network loses on ``real`` against ``synthetic`` is the appearance;
what it loses on the real scan against ``real`` is the shape outside the span. The twin's eyes, mouth interior
and teeth are drawn but not scored (the points scored are the twin's skin).

A third case, ``scan_scored_on_twin``: the real scan's renders, scored against the twin: whether the
reconstructions of real images are far from the twin (the images mislead them) or near it (the real shape's
part outside the span is what the score adds).

usage: python docs/issue14_run/proxy_scan.py SCAN_DIR OUT_DIR WEIGHTS VIEWS SEED [CASES, e.g. real,synthetic]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from facesynth.config import load_config, override
from morphable.model import load_model
from reconstruct.models import load_coarse
from reconstruct.now_metric import MeshDistance, Similarity, crop_scan, fit_similarity
from reconstruct.scan import Scan, load_scan
from reconstruct.scan_eval import evaluate_scan, face_triangles


def model_jacobian(model) -> tuple[np.ndarray, np.ndarray]:
    """(V, 3) mean vertices and (V, 3, K) their derivative in the K coefficients (the model is linear)."""
    zero = np.zeros(model.n_coeffs, np.float32)
    mean = np.asarray(model.vertices(zero), np.float64)
    J = np.empty(mean.shape + (model.n_coeffs,))
    for k in range(model.n_coeffs):
        e = zero.copy()
        e[k] = 1.0
        J[..., k] = np.asarray(model.vertices(e), np.float64) - mean
    return mean, J


def fit_to_scan(model, scan: Scan, rounds: int = 15, sigma_mm: float = 0.5) -> tuple[np.ndarray, Similarity, float]:
    """The model face closest to the scan's cropped points: ICP with a similarity, point-to-plane least squares in
    the coefficients (identity prior N(0, I) against a point noise of ``sigma_mm``; expression in [0, 1], or
    held at 0, a neutral face, with ``TWIN_NEUTRAL=1`` in the environment).
    Returns the coefficients (K,), the similarity model -> scan and the median distance (mm)."""
    import os

    from scipy.optimize import lsq_linear
    from scipy.spatial import cKDTree

    tris = face_triangles(model)
    used = np.unique(tris)
    mean, J = model_jacobian(model)
    pts = scan.points[crop_scan(scan.points, scan.landmarks, 95.0)]
    K, n_exp = model.n_coeffs, 53
    top = 1e-9 if os.environ.get("TWIN_NEUTRAL") == "1" else 1.0
    lo, hi = np.r_[np.full(K - n_exp, -np.inf), np.zeros(n_exp)], np.r_[np.full(K - n_exp, np.inf), np.full(n_exp, top)]
    alpha = np.zeros(K)
    T = Similarity.identity()
    for _ in range(rounds):
        verts = mean + J @ alpha
        mesh = MeshDistance(verts, tris)
        _, q = mesh.query(T.inverse_apply(pts), exact=False)
        T = T.then(fit_similarity(T.apply(q), pts))
        local = T.inverse_apply(pts)
        _, q = mesh.query(local)
        vid = used[cKDTree(verts[used]).query(q)[1]]
        n = model.vertex_normals(verts.astype(np.float32)).astype(np.float64)[vid]
        A = np.einsum("pc,pck->pk", n, J[vid]) / sigma_mm
        b = (np.einsum("pc,pc->p", n, local - q) / sigma_mm) + A @ alpha
        alpha = lsq_linear(np.vstack([A, np.eye(K)]), np.r_[b, np.zeros(K)], bounds=(lo, hi)).x
    d, _ = MeshDistance(mean + J @ alpha, tris).query(T.inverse_apply(pts))
    return alpha.astype(np.float32), T, float(np.median(d * T.scale))


def skin_vertices(model) -> np.ndarray:
    """Sorted indices of the model's skin vertices: all but the eyes, the mouth interior and the teeth."""
    not_skin = np.concatenate([model.regions[r] for r in ("eyes", "mouth_interior", "teeth")])
    return np.setdiff1d(np.arange(model.n_vertices), not_skin)


def twin_scan(model, alpha: np.ndarray, corner_uv: np.ndarray, texture: np.ndarray, source: Path) -> Scan:
    """A :class:`Scan` of the model face ``alpha`` (model frame), every triangle corner its own vertex with UV
    ``corner_uv`` (F, 3, 2) into ``texture`` (H, W, 3) uint8; the scored points are the skin's vertices."""
    import trimesh
    from PIL import Image
    from trimesh.visual import TextureVisuals
    from trimesh.visual.material import SimpleMaterial

    verts = np.asarray(model.vertices(alpha), np.float64)
    F = model.triangles
    corners = verts[F].reshape(-1, 3)
    mesh = trimesh.Trimesh(corners, np.arange(len(corners)).reshape(-1, 3), process=False,
                           visual=TextureVisuals(uv=corner_uv.reshape(-1, 2),
                                                 material=SimpleMaterial(image=Image.fromarray(texture))))
    welded = trimesh.Trimesh(verts, F, process=False)
    mesh.vertex_normals = np.asarray(welded.vertex_normals)[F.reshape(-1)]
    skin = skin_vertices(model)
    row = np.clip(np.searchsorted(skin, F.reshape(-1)), 0, len(skin) - 1)  # eyes etc.: some skin row (colours only)
    return Scan(mesh, np.asarray(model.landmarks(alpha), np.float64), verts[skin], row,
                Similarity.identity(), source)


def real_texture_uv(model, alpha: np.ndarray, T: Similarity, scan: Scan) -> np.ndarray:
    """(F, 3, 2) UVs of the twin's corners in the scan's texture: the barycentrics of each corner in the plane
    of the scan triangle nearest to the twin triangle's centre, applied to that triangle's UVs."""
    from scipy.spatial import cKDTree

    verts = T.apply(np.asarray(model.vertices(alpha), np.float64))  # the twin in the scan's frame
    tri = verts[model.triangles]  # (F, 3, 3)
    sv = np.asarray(scan.mesh.vertices)
    sf = np.asarray(scan.mesh.faces)
    suv = np.asarray(scan.mesh.visual.uv)
    nearest = cKDTree(sv[sf].mean(1)).query(tri.mean(1))[1]
    a, b, c = (sv[sf[nearest, i]] for i in range(3))
    out = np.empty(tri.shape[:2] + (2,))
    for j in range(3):
        p = tri[:, j]
        v0, v1, v2 = b - a, c - a, p - a
        d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
        d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
        den = np.where(np.abs(d00 * d11 - d01 ** 2) < 1e-12, 1e-12, d00 * d11 - d01 ** 2)
        w1, w2 = (d11 * d20 - d01 * d21) / den, (d00 * d21 - d01 * d20) / den
        w1, w2 = np.clip(w1, -0.5, 1.5), np.clip(w2, -0.5, 1.5)
        w0 = 1.0 - w1 - w2
        out[:, j] = (w0[:, None] * suv[sf[nearest, 0]] + w1[:, None] * suv[sf[nearest, 1]]
                     + w2[:, None] * suv[sf[nearest, 2]])
    return out


def synthetic_texture(model, seed: int, size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """A skin of the albedo model baked over the model's UV layout: (F, 3, 2) corner UVs in [0, 1] and the
    (size, size, 3) uint8 texture (per-vertex albedo interpolated inside each UV triangle)."""
    from morphable.materials import head_albedo, random_iris
    from morphable.sampling import sample_albedo_coeffs
    from render.raster import NumbaRasterizer, fragments_from_ids

    cfg = load_config()
    rng = np.random.default_rng(seed)
    skin = model.albedo_model.albedo(sample_albedo_coeffs(rng, model, cfg.sampling.albedo))[0]
    albedo = head_albedo(model, skin, random_iris(rng))
    uv = np.asarray(model.uv, np.float64)[model.tri_uv]  # (F, 3, 2)
    lo, hi = uv.reshape(-1, 2).min(0), uv.reshape(-1, 2).max(0)
    uv01 = (uv - lo) / (hi - lo).max()
    corners = np.zeros((uv.shape[0] * 3, 3))
    corners[:, 0] = uv01[..., 0].reshape(-1) * size
    corners[:, 1] = (1.0 - uv01[..., 1].reshape(-1)) * size
    tris = np.arange(len(corners)).reshape(-1, 3)
    frags = fragments_from_ids(NumbaRasterizer().rasterize(corners, tris, size, size), corners, tris)
    img = frags.interpolate(albedo[model.triangles].reshape(-1, 3), tris)
    from scipy.ndimage import distance_transform_edt

    idx = distance_transform_edt(~frags.mask, return_distances=False, return_indices=True)
    img = img[idx[0], idx[1]]  # pad the charts outwards so bilinear lookups at the seams do not bleed black
    return uv01, (np.clip(img, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)


def scan_scored_on_twin(scan: Scan, twin: Scan, T: Similarity) -> Scan:
    """The real scan's renders, scored against the twin (its skin points and landmarks moved onto the scan by
    ``T``): how far the reconstructions of the real images are from the model face closest to the scan."""
    from scipy.spatial import cKDTree

    points = T.apply(twin.points)
    row = cKDTree(points).query(np.asarray(scan.mesh.vertices))[1]  # error colours only
    return Scan(scan.mesh, T.apply(twin.landmarks), points, row, scan.to_model, scan.source)


def main(scan_dir: str, out: str, weights: str, views: int, seed: int) -> None:
    cfg = override(override(load_config(), "scan_eval.seed", seed), "refine.iterations", 1)
    model = load_model(cfg.resolve_path(cfg.model.path))
    scan = load_scan(scan_dir, model.landmarks(np.zeros(model.n_coeffs)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fit_file = out / "twin_alpha.npy"
    if fit_file.exists():
        alpha = np.load(fit_file)
        T = Similarity(**{k: np.asarray(v) if k != "scale" else v
                          for k, v in json.loads((out / "twin_similarity.json").read_text()).items()})
    else:
        alpha, T, median = fit_to_scan(model, scan)
        np.save(fit_file, alpha)
        (out / "twin_similarity.json").write_text(json.dumps(
            {"scale": T.scale, "rotation": T.rotation.tolist(), "translation": T.translation.tolist()}))
        (out / "twin_fit.json").write_text(json.dumps({"median_mm": median, "identity_norm":
                                                       float(np.linalg.norm(alpha[:-53]))}))
        print(f"twin: median {median:.3f} mm from the scan, |identity| {np.linalg.norm(alpha[:-53]):.2f}")
    tex = np.asarray(scan.mesh.visual.material.image.convert("RGB"))
    dressed = {"real": (real_texture_uv(model, alpha, T, scan), tex),
               "synthetic": synthetic_texture(model, 11)}
    scans = {name: twin_scan(model, alpha, uv, image, Path(scan_dir)) for name, (uv, image) in dressed.items()}
    scans["scan_scored_on_twin"] = scan_scored_on_twin(scan, scans["real"], T)
    only = sys.argv[6].split(",") if len(sys.argv) > 6 else list(scans)
    for name in only:
        twin = scans[name]
        for label, w, no_net in (("fit", None, True), ("net", weights, False)):
            coarse, used = load_coarse(w, cfg, "cpu", no_network=no_net)
            report = evaluate_scan(twin, model, cfg, out / f"{name}_{label}", views, coarse, None, sfs=False,
                                   notes={"weights": used}, progress=False)
            print(name, label, "coarse median", round(report["coarse"]["median_mm"], 4), "mean face",
                  round(report["mean_face"]["median_mm"], 4), "found", report["found"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
