"""``refine evaluate``: how much the detail network and shape from shading recover, on synthetic faces with
known fine detail.

For each face (drawn by the data generator with ``datagen.detail`` on, in a square frame of the SfS
resolution: :mod:`datagen.synthetic`), the coarse start is either the true smooth face (``coarse="true"``:
measures what comes after alone) or the landmark fit (``"landmarks"``: the pipeline without a network). Each
stage (:data:`STAGES`) is measured on the same faces: ``coarse``, ``sfs`` (SfS from the coarse depth),
``detail`` (coarse + the detail network's offset) and ``detail_sfs`` (SfS from that); the last two only with
a detail network. ``seconds_per_image`` gives the time of SfS and of the detail network (features + forward).
Inside the narrow face area it reports, per stage:

- ``normal_deg_mean`` / ``_median``: angle between estimated and true (detailed) normals, degrees;
- ``wrinkle_normal_deg_mean``: the same inside the wrinkle regions;
- ``depth_rmse_mm``: depth error after removing the mean offset (weak perspective has no absolute depth);
- ``highpass_rmse_mm``: RMSE of depth minus its Gaussian blur (sigma 3 mm): the detail alone;
- ``textured_normal_deg_mean``: normal error where the albedo varies (brows, lips, freckles, stubble),
  i.e. where a shading method could mistake albedo for shape;
- ``smooth_albedo``: the same metrics, per stage, when the face has a flat albedo (no texture to confuse
  SfS);
- ``change_percent`` (SfS), ``change_percent_detail``, ``change_percent_detail_sfs``: each stage's change of
  every metric against the coarse start, percent.
"""
from __future__ import annotations

import time

import numpy as np
from scipy.ndimage import gaussian_filter

from facesynth.config import override
from render.renderer import FaceRenderer
from render.shading import to_gray

#: The reported stages, each from the same coarse start: the coarse depth, SfS on it, the detail network's
#: offset added to it, and SfS on that.
STAGES = ("coarse", "sfs", "detail", "detail_sfs")


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def _metrics(est_depth, true_depth, mask, wrinkles, textured, pixel_mm) -> dict:
    """Metrics of one estimate. Normals are compared as the geometric normals of the depth maps, by the same
    central differences for the estimate and the truth (:func:`render.filters.depth_to_normals`), over the
    mask eroded by 2 pixels (no stencil crosses the silhouette): a renderer's interpolated vertex normals
    are not the normals of the surface it rasterises, and comparing them with a depth map's normals would
    charge every depth-map method about 1.2 degrees for the representation alone."""
    from scipy.ndimage import binary_erosion

    from render.filters import masked_blur

    from render.filters import depth_to_normals

    est_normals = depth_to_normals(np.where(mask, est_depth, true_depth), pixel_mm)
    true_normals = depth_to_normals(true_depth, pixel_mm)
    mask = binary_erosion(mask, iterations=2)
    ang = _angle(est_normals, true_normals)
    dd = (est_depth - true_depth)[mask]
    sigma = 3.0 / pixel_mm
    hp = lambda d: d - masked_blur(d, mask, sigma)  # noqa: E731
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


def evaluate_sfs(cfg, data_dir=None, n: int = 20, coarse: str = "true", resolution: int | None = None,
                 seed: int = 9_000_001, sfs_params=None, detail=None) -> dict:
    """Run the evaluation (see the module docstring); returns the JSON-ready report.

    On-the-fly faces are drawn with the face filling a ``resolution`` frame
    (:func:`datagen.synthetic.detail_frame_config`); ``data_dir`` reads a dataset made with
    ``datagen.detail`` (at its own image size, given by the config's ``render.image_size``). ``detail``: the
    detail network (:data:`training.detail_net.DetailPredictor`), or None to report coarse and SfS only.
    """
    from morphable.model import load_model

    from .sfs import sfs_refine
    from coarse.detect import ReconstructionInputError
    from coarse.stage import CoarseSettings, synthetic_start
    from datagen.synthetic import detail_faces, detail_frame_config, render_scene

    sfs_params = cfg.refine.sfs if sfs_params is None else sfs_params
    cfg = override(cfg, "datagen.detail", True) if data_dir is not None else detail_frame_config(cfg, resolution)
    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, cfg.render, backend="numba")
    settings = CoarseSettings.from_config(cfg) if coarse == "detector" else None
    begin = synthetic_start(coarse, model, cfg.evaluate.landmark_noise_px, cfg.render, coarse=settings,
                            detect_params=cfg.detect)
    stages = STAGES if detail is not None else STAGES[:2]
    rows = {stage + tag: [] for stage in stages for tag in ("", "_smooth")}
    seconds = {"sfs": [], "detail": []}
    count = found = 0
    for i, face in enumerate(detail_faces(cfg, model, renderer.size, data_dir, n, seed)):
        count += 1
        try:
            sc = render_scene(face, model, renderer, begin, np.random.default_rng(i))
        except ReconstructionInputError:  # the detector found no face (coarse "detector")
            continue
        found += 1
        mask, c = sc.mask, sc.coarse
        alb = to_gray(sc.albedo)
        textured = np.abs(alb - gaussian_filter(alb, 2.0)) > 0.015
        for tag, alb_v in (("", face.albedo), ("_smooth", sc.flat_albedo)):
            img = sc.truth.rgb if tag == "" else renderer.render_face(
                face.alpha_gt, face.pose, alb_v, face.light, face.background, displacement_uv=face.displacement_uv).rgb
            starts = {"coarse": c.depth}
            if detail is not None:
                t0 = time.perf_counter()
                starts["detail"] = c.depth + np.where(mask, detail(img, c.normals, mask, sc.pixel_mm), 0.0)
                seconds["detail"].append(time.perf_counter() - t0)
            depths = dict(starts)
            for start, stage in (("coarse", "sfs"), ("detail", "detail_sfs")):
                if start in starts:
                    t0 = time.perf_counter()
                    depths[stage] = sfs_refine(img, starts[start], mask, sc.pixel_mm, sfs_params).depth
                    seconds["sfs"].append(time.perf_counter() - t0)
            for stage in stages:
                rows[stage + tag].append(_metrics(depths[stage], sc.truth.depth, mask, sc.wrinkles, textured,
                                                  sc.pixel_mm))
    if count == 0:
        raise FileNotFoundError(f"no faces to evaluate in {data_dir}")
    if found == 0:
        raise ReconstructionInputError(f"the detector found none of the {count} faces")
    report = {stage: _mean(rows[stage]) for stage in stages}
    report["smooth_albedo"] = {stage: _mean(rows[stage + "_smooth"]) for stage in stages}
    report.update(seconds_per_image={k: float(np.mean(v)) for k, v in seconds.items() if v}, samples=found,
                  coarse_start=coarse, resolution=cfg.render.image_size)
    if coarse == "detector":
        report["detector_found"] = found / count
    c = report["coarse"]
    for stage in stages[1:]:
        f = report[stage]
        key = "change_percent" if stage == "sfs" else f"change_percent_{stage}"
        report[key] = {k: 100.0 * (f[k] - c[k]) / c[k] for k in c if c[k] and np.isfinite(c[k])}
    return report
