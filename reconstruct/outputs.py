"""Files ``refine sfs`` writes for one face, and the pictures a person looks at.

    coarse.obj/.mtl + coarse_texture.png   the morphable-model mesh, textured from the photo (UV atlas)
    refined.obj/.mtl                       the same mesh (vertices, triangles, UVs, coarse_texture.png) moved
                                           along its normals by the detail and SfS depth offsets where the SfS
                                           frame saw it (:func:`reconstruct.pipeline.refined_mesh`)
    refined_depthmap.obj/.mtl              the mesh of the refined depth map's pixels over the face mask, with
      + refined_texture.png                the photo in the SfS frame as its texture
    face.glb                               glTF 2.0: the fitted identity's neutral head with refined.obj's
                                           detail, coarse_texture.png, and the 53 expression blendshapes as
                                           morph targets with ARKit names, the fitted weights as defaults
                                           (:mod:`reconstruct.gltf`)
    params.json                            coefficients (named), pose, lighting, landmarks, the detection, timings,
                                           the photo's faces: which were reconstructed, which skipped
                                           (``faces``, :func:`reconstruct.batch.faces_report`)
    depth.png, normals.png                 coarse | refined, side by side
    overlay.png                            photo | coarse shading | [+ detail net shading |] refined shading |
                                           coarse mesh over the photo
    detail.png                             (when the detail network ran) its depth offset, diverging colours:
                                           blue deeper (grooves), red nearer, full colour at +-params.json's
                                           detail.png_scale_mm
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datagen.sheet import contact_sheet
from facesynth.io import save_png, write_json
from morphable.obj import write_obj
from render.camera import project
from render.shading import shading_image

from .gltf import HeadSurface, write_face_glb
from .pipeline import depth_grid_mesh, refined_mesh
from .texture import atlas_uv, bake_uv_texture

OUTPUT_FILES = ("coarse.obj", "coarse.mtl", "coarse_texture.png", "refined.obj", "refined.mtl",
                "refined_depthmap.obj", "refined_depthmap.mtl", "refined_texture.png", "face.glb", "params.json",
                "depth.png", "normals.png", "overlay.png")
#: Written only when their stage ran (a stale one is removed).
OPTIONAL_FILES = ("detail.png",)


def existing_outputs(out_dir: Path) -> list[str]:
    return [f for f in OUTPUT_FILES + OPTIONAL_FILES if (out_dir / f).exists()]


def diverging(values: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours: white at 0, blue at -scale, red at +scale (clipped), black
    outside ``mask``."""
    v = np.clip(values / max(scale, 1e-12), -1.0, 1.0)[..., None]
    white, blue, red = np.ones(3), np.array([0.13, 0.35, 0.85]), np.array([0.85, 0.15, 0.12])
    rgb = np.where(v < 0, white + (-v) * (blue - white), white + v * (red - white))
    return np.where(mask[..., None], rgb, 0.0).astype(np.float32)


def _nice_scale(x: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at least ``x`` (a legend-friendly colour scale)."""
    k = 10.0 ** np.floor(np.log10(max(x, 1e-6)))
    return float(next(m * k for m in (1, 2, 5, 10) if m * k >= x))


def _depth_vis(depth: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.where(mask, np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1), 0.0).astype(np.float32)


def _normals_vis(n: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None], (n + 1) / 2, 0.0).astype(np.float32)


def _dots(img: np.ndarray, pts: np.ndarray, color=(0.1, 1.0, 0.2)) -> np.ndarray:
    out = img.copy()
    H, W = out.shape[:2]
    for x, y in pts:
        i, j = int(y), int(x)
        out[max(i - 1, 0):min(i + 2, H), max(j - 1, 0):min(j + 2, W)] = color
    return out


def write_outputs(rec, photo: np.ndarray, det, model, out_dir: Path, extra_params: dict | None = None,
                  timings: dict | None = None) -> list[Path]:
    """Write every output file of one reconstruction into ``out_dir`` (created); ``extra_params`` are added to
    ``params.json``, ``timings`` (seconds, e.g. the photo's ``detect_s``) to its ``timings_s`` before the face's
    own (``rec.timings``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    verts = model.vertices(rec.alpha)

    tex = bake_uv_texture(model, rec.vertex_colors)
    save_png(out_dir / "coarse_texture.png", contact_sheet([tex], 1, pad=0))
    written.append(write_obj(out_dir / "coarse.obj", verts, model.triangles, atlas_uv(model), model.tri_uv,
                             "coarse_texture.png"))

    m = rec.sfs_mask
    refined = rec.refined_depth if rec.refined_depth is not None else rec.coarse_depth
    rverts, rtris, ruv, rtri_uv = refined_mesh(rec, model)
    off = np.einsum("vk,vk->v", rverts - verts, model.vertex_normals(verts))  # mm along the coarse normals
    written.append(write_obj(out_dir / "refined.obj", rverts, rtris, ruv, rtri_uv, "coarse_texture.png"))
    gverts, gtris, guv = depth_grid_mesh(refined, m, rec.sfs_frame)
    save_png(out_dir / "refined_texture.png", contact_sheet([rec.sfs_image], 1, pad=0))
    written.append(write_obj(out_dir / "refined_depthmap.obj", gverts, gtris, guv, gtris, "refined_texture.png"))
    ident, expr = model.split(rec.alpha)
    write_face_glb(out_dir / "face.glb", model, HeadSurface(rverts, expr, rec.vertex_colors,
                                                            (out_dir / "coarse_texture.png").read_bytes()))

    lo, hi = float(rec.coarse_depth[m].min()), float(rec.coarse_depth[m].max())
    rn = rec.refined_normals if rec.refined_normals is not None else rec.coarse_normals
    save_png(out_dir / "depth.png", contact_sheet([_depth_vis(rec.coarse_depth, m, lo, hi),
                                                   _depth_vis(refined, m, lo, hi)], 2))
    save_png(out_dir / "normals.png", contact_sheet([_normals_vis(rec.coarse_normals, m), _normals_vis(rn, m)], 2))
    coarse_shade = shading_image(rec.coarse_normals, m, 0.15, 0.85)
    refined_shade = shading_image(rn, m, 0.15, 0.85)
    frame_lm = project(model.landmarks(rec.alpha), rec.sfs_frame)[:, :2]
    from coarse.frame import frame_map

    det_lm = frame_map(rec.pose_photo, rec.sfs_frame).forward(det.landmarks)
    blend = np.where(m[..., None], 0.45 * rec.sfs_image + 0.55 * coarse_shade[..., None], rec.sfs_image)
    blend = _dots(_dots(blend, det_lm, (1.0, 0.2, 0.1)), frame_lm)
    panels = [rec.sfs_image, coarse_shade]
    if rec.detail_displacement is not None:  # what the detail network alone adds, before SfS
        from render.filters import depth_to_normals

        dn = depth_to_normals(np.where(m, rec.coarse_depth + rec.detail_displacement, rec.coarse_depth),
                              1.0 / rec.sfs_frame.scale)
        panels.append(shading_image(np.where(m[..., None], dn, 0.0), m, 0.15, 0.85))
    panels += [refined_shade, blend]
    save_png(out_dir / "overlay.png", contact_sheet(panels, len(panels)))

    detail = None
    if rec.detail_displacement is not None:
        d = rec.detail_displacement[m] if m.any() else np.zeros(1)
        detail = {"png_scale_mm": _nice_scale(float(np.percentile(np.abs(d), 99))),
                  "min_mm": float(d.min()), "max_mm": float(d.max())}
        save_png(out_dir / "detail.png", contact_sheet([diverging(rec.detail_displacement, m,
                                                                  detail["png_scale_mm"])], 1))
    elif (out_dir / "detail.png").exists():
        (out_dir / "detail.png").unlink()  # from an earlier run with the detail stage

    params = {
        "coarse_method": rec.coarse_method,
        "identity": ident.tolist(),
        "expression": dict(zip(model.expression_names, expr.tolist())),
        "alpha": rec.alpha.tolist(),
        "alpha_per_iteration": rec.iterations,
        "pose_photo": rec.pose_photo.to_dict(),
        "sfs_frame": rec.sfs_frame.to_dict(),
        "sh_lighting": None if rec.sh is None else np.asarray(rec.sh).tolist(),
        "landmarks_detected": det.landmarks.tolist(),
        "detection": {"box": det.box.tolist(), "score": det.score, "detector": det.detector,
                      "rotation_deg": det.rotation_deg},  # coarse.detect.Detection: what the score means
        "visible_vertices": int(rec.visible.sum()),
        "timings_s": {**(timings or {}), **rec.timings},
        "detail": detail,
        "refined_offset": {"min_mm": float(off.min()), "max_mm": float(off.max()),
                           "vertices_moved": int((np.abs(off) > 1e-3).sum())},
        "units": "mm, model frame: y up, face along +z; pixels: x right, y down",
        "legend": {"overlay.png": "photo | coarse shading | [coarse + detail network shading, when it ran |] "
                                  "refined shading | coarse mesh over photo "
                                  "(red: detected landmarks, green: model landmarks)",
                   "refined.obj": "coarse.obj's mesh (same vertices, triangles, UVs and texture), each vertex moved "
                                  "along its normal by refined_offset (mm; vertices_moved: by more than 0.001 mm) "
                                  "where the SfS frame saw it, fading to 0 where it did not; "
                                  "refined_depthmap.obj: the refined depth map's pixels",
                   "face.glb": "glTF 2.0, metres: the identity's neutral head with refined.obj's offsets and "
                               "coarse_texture.png; the 53 expression blendshapes as morph targets with ARKit names "
                               "(mesh.extras.targetNames), default weights = expression (then refined.obj)",
                   "depth.png": "coarse | refined", "normals.png": "coarse | refined",
                   "detail.png": "detail network's depth offset (mm along the view axis): blue deeper, red nearer, "
                                 "full colour at +-detail.png_scale_mm"},
        **(extra_params or {}),
    }
    write_json(out_dir / "params.json", params, indent=1)
    return [out_dir / f for f in OUTPUT_FILES + (OPTIONAL_FILES if detail is not None else ())]
