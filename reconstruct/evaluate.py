"""``refine evaluate``: how much shape from shading recovers, on synthetic faces with known fine detail.

For each face (drawn by the data generator with ``datagen.detail`` on, in a square frame of the SfS
resolution), the coarse start is either the true smooth face (``coarse="true"``: measures SfS alone) or the
landmark fit (``"landmarks"``: the pipeline without a network). Inside the narrow face area it reports:

- ``normal_deg_mean`` / ``_median``: angle between estimated and true (detailed) normals, degrees;
- ``wrinkle_normal_deg_mean``: the same inside the wrinkle regions;
- ``depth_rmse_mm``: depth error after removing the mean offset (weak perspective has no absolute depth);
- ``highpass_rmse_mm``: RMSE of depth minus its Gaussian blur (sigma 3 mm): the detail alone;
- ``textured_normal_deg_mean``: normal error where the albedo varies (brows, lips, freckles, stubble),
  i.e. where a shading method could mistake albedo for shape;
- ``smooth_albedo``: the same metrics when the face has a flat albedo (no texture to confuse SfS).
"""
from __future__ import annotations

import time

import numpy as np
from scipy.ndimage import gaussian_filter

from datagen.scene import draw_scene
from facesynth.config import override
from render.renderer import FaceRenderer
from render.shading import to_gray

from .detect import ReconstructionInputError
from .pipeline import FRONTAL, narrow_face_mask


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def _metrics(est_depth, est_normals, true_depth, true_normals, mask, wrinkles, textured, pixel_mm) -> dict:
    """Metrics of one estimate. Normals are compared as the geometric normals of the depth maps, by the same
    central differences for the estimate and the truth (:func:`reconstruct.sfs.depth_to_normals`), over the
    mask eroded by 2 pixels (no stencil crosses the silhouette): a renderer's interpolated vertex normals
    are not the normals of the surface it rasterises, and comparing them with a depth map's normals would
    charge every depth-map method about 1.2 degrees for the representation alone. ``est_normals`` and
    ``true_normals`` are not used (kept for callers' symmetry)."""
    from scipy.ndimage import binary_erosion

    from .sfs import depth_to_normals

    est_normals = depth_to_normals(np.where(mask, est_depth, true_depth), pixel_mm)
    true_normals = depth_to_normals(true_depth, pixel_mm)
    mask = binary_erosion(mask, iterations=2)
    ang = _angle(est_normals, true_normals)
    dd = (est_depth - true_depth)[mask]
    sigma = 3.0 / pixel_mm
    hp = lambda d: d - gaussian_filter(np.where(mask, d, 0), sigma) / np.maximum(  # noqa: E731
        gaussian_filter(mask.astype(np.float64), sigma), 1e-6)
    hp_err = (hp(est_depth) - hp(true_depth))[mask]
    return {
        "normal_deg_mean": float(ang[mask].mean()),
        "normal_deg_median": float(np.median(ang[mask])),
        "wrinkle_normal_deg_mean": float(ang[mask & wrinkles].mean()) if (mask & wrinkles).any() else float("nan"),
        "depth_rmse_mm": float(np.sqrt(np.mean((dd - dd.mean()) ** 2))),
        "highpass_rmse_mm": float(np.sqrt(np.mean(hp_err ** 2))),
        "textured_normal_deg_mean": float(ang[mask & textured].mean()) if (mask & textured).any() else float("nan"),
    }


def _mean(dicts: list[dict]) -> dict:
    return {k: float(np.nanmean([d[k] for d in dicts])) for k in dicts[0]}


def _faces(cfg, model, renderer, data_dir, n: int, seed: int):
    """(alpha_gt, pose, albedo (V, 3), light, background, detail displacement (S, S), wrinkles) per face,
    from a dataset made with ``datagen.detail`` or drawn on the fly; wrinkles is ("uv", (S, S) bool) or
    ("image", (H, W) bool)."""
    from render.camera import Pose
    from render.renderer import Light

    if data_dir is None:
        for i in range(n):
            s = draw_scene(seed, i, model, cfg)
            yield (s.alpha_gt, s.pose, s.head_albedo(model), s.light, s.background, s.detail.displacement,
                   ("uv", s.detail.wrinkles))
        return
    from datagen.loader import iter_records
    from morphable.materials import head_albedo

    for rec in iter_records(data_dir, limit=n):
        if "detail_uv" not in rec:
            raise FileNotFoundError(f"{data_dir} was made without datagen.detail: no fine-detail ground truth")
        p = rec["params"]
        if rec["rgb"].shape[0] != renderer.size:
            raise ReconstructionInputError(f"{data_dir} has {rec['rgb'].shape[0]} px images; use --config with "
                             f"render.image_size: {rec['rgb'].shape[0]}")
        skin = model.albedo_model.albedo(np.asarray(p["albedo"], np.float32))[0]
        li = p["light"]
        light = Light(np.asarray(li["direction"], np.float32), li["k_a"], li["k_d"], li["k_s"], li["shininess"])
        yield (np.asarray(p["alpha_gt"], np.float32), Pose.from_dict(p["pose"]),
               head_albedo(model, skin, np.asarray(p["iris"], np.float32)), light, None, rec["detail_uv"],
               ("image", rec["wrinkles"]))


def evaluate_sfs(cfg, data_dir=None, n: int = 20, coarse: str = "true", resolution: int | None = None,
                 seed: int = 9_000_001, sfs_params=None) -> dict:
    """Run the evaluation (see the module docstring); returns the JSON-ready report.

    On-the-fly faces are drawn with the face filling a ``resolution`` frame; ``data_dir`` reads a dataset
    made with ``datagen.detail`` (at its own image size, given by the config's ``render.image_size``).
    """
    from morphable.model import load_model

    from .fit import fit_landmarks
    from .sfs import sfs_refine

    sfs_params = cfg.refine.sfs if sfs_params is None else sfs_params
    cfg = override(cfg, "datagen.detail", True)
    if data_dir is None:
        cfg = override(cfg, "render.image_size", resolution or cfg.refine.resolution)
        cfg = override(cfg, "sampling.pose.scale_mean", 0.0058)  # the face fills the frame, as in refine
        cfg = override(cfg, "sampling.pose.yaw_std_deg", 15.0)
    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer(model, cfg.render.image_size, backend="numba")
    rows = {"coarse": [], "sfs": [], "coarse_smooth": [], "sfs_smooth": []}
    seconds = []
    count = 0
    for i, (alpha_gt, pose, albedo, light, background, disp_uv, wrinkles_in) in enumerate(
            _faces(cfg, model, renderer, data_dir, n, seed)):
        count += 1
        verts_gt = model.vertices(alpha_gt)
        face = model.regions["face"]
        flat = albedo.copy()
        flat[face] = np.median(albedo[face], axis=0)
        truth = renderer.render_face(alpha_gt, pose, albedo, light, background, verts=verts_gt,
                                     displacement_uv=disp_uv)
        if coarse == "true":
            alpha_c = alpha_gt
        else:
            lm = truth.landmarks + np.random.default_rng(i).normal(0, cfg.evaluate.landmark_noise_px, (68, 2))
            alpha_c, _ = fit_landmarks(model, lm, contour_weight=1.0)
        c = renderer.render_face(alpha_c, pose, flat, FRONTAL)
        mask = narrow_face_mask(model, truth.fragments) & c.mask
        space, wr = wrinkles_in
        if space == "image":
            wrinkles = wr
        else:
            uv = renderer.face_uv(truth.fragments)
            wrinkles = renderer.sample_uv_map(uv, wr.astype(np.float32), order=0) > 0.5
        alb = to_gray(truth.fragments.interpolate(albedo, model.triangles))
        textured = np.abs(alb - gaussian_filter(alb, 2.0)) > 0.015
        pixel_mm = 1.0 / pose.scale
        for tag, alb_v in (("", albedo), ("_smooth", flat)):
            img = truth.rgb if tag == "" else renderer.render_face(
                alpha_gt, pose, alb_v, light, background, verts=verts_gt, displacement_uv=disp_uv).rgb
            t0 = time.perf_counter()
            res = sfs_refine(img, c.depth, mask, pixel_mm, sfs_params)
            seconds.append(time.perf_counter() - t0)
            rows["coarse" + tag].append(_metrics(c.depth, c.normals, truth.depth, truth.normals, mask, wrinkles,
                                                 textured, pixel_mm))
            rows["sfs" + tag].append(_metrics(res.depth, res.normals, truth.depth, truth.normals, mask, wrinkles,
                                              textured, pixel_mm))
    if count == 0:
        raise FileNotFoundError(f"no faces to evaluate in {data_dir}")
    report = {"coarse": _mean(rows["coarse"]), "sfs": _mean(rows["sfs"]),
              "smooth_albedo": {"coarse": _mean(rows["coarse_smooth"]), "sfs": _mean(rows["sfs_smooth"])},
              "seconds_per_image": {"sfs": float(np.mean(seconds))}, "samples": count, "coarse_start": coarse,
              "resolution": cfg.render.image_size}
    c, f = report["coarse"], report["sfs"]
    report["change_percent"] = {k: 100.0 * (f[k] - c[k]) / c[k] for k in c if c[k] and np.isfinite(c[k])}
    return report
