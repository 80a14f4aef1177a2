"""The face renderer used by every stage: rasterise (:mod:`render.raster`), then shade (:mod:`render.shading`).

One :class:`FaceRenderer` per process holds the rasteriser (and so the GL context) and is reused for
every frame. Two draws:

- :meth:`FaceRenderer.render_face`: the "photo": Phong-lit colour image over a background, its gray
  version, the silhouette mask, depth, camera-frame normals and the 68 projected landmarks;
- :meth:`FaceRenderer.render_shading`: the network's shading input of any geometry under the same
  projection (constant albedo, frontal light), and its silhouette.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .camera import Pose, project, rotate_normals
from .occlusion import ambient_occlusion, visibility
from .raster import Fragments, NumbaRasterizer, closed_surface_triangles, fragments_from_ids, make_rasterizer
from .shading import displaced_normals, linear_to_srgb, phong_shade, shading_image, srgb_to_linear, to_gray


@lru_cache(maxsize=8)
def _closed_triangles(model) -> np.ndarray:
    """(F,) bool: triangles of the model's closed surfaces, whose back faces are never seen (computed once per
    model: :func:`render.raster.closed_surface_triangles`)."""
    return closed_surface_triangles(model.triangles, model.mean)


#: Side (pixels) of the shadow map of a light's cast shadows, over the head's extent (about 1 mm a pixel).
SHADOW_MAP_SIZE = 256


@lru_cache(maxsize=8)
def _mean_occlusion(model) -> np.ndarray:
    """(V,) ambient occlusion of the model's mean shape (64 directions; computed once per model, 0.25 s): the
    occlusion of every face (sockets, nostrils and ears move little between faces)."""
    mean = np.asarray(model.mean, np.float64)
    return ambient_occlusion(mean, model.vertex_normals(mean), model.triangles)


@dataclass(frozen=True)
class Light:
    """Phong light: ``direction`` (3,) unit vector towards the light in the camera frame, and constants.

    ``occlusion`` in [0, 1]: the ambient term times ``1 - occlusion (1 - AO)``, AO the ambient occlusion of the
    model's mean shape (:func:`render.occlusion.ambient_occlusion`); ``shadow`` in [0, 1]: the diffuse and
    specular terms times ``1 - shadow (1 - S)``, S = 1 where the vertex sees the light
    (:func:`render.occlusion.visibility`, the face's own geometry). Both 0: plain Phong. ``srgb``: the
    albedo is taken as sRGB-encoded, shaded in linear light and the result encoded back to sRGB, as a camera
    writes a photo (and pyrender renders the scans); False: Phong on the display values directly."""

    direction: np.ndarray
    ambient: float
    diffuse: float
    specular: float
    shininess: float
    occlusion: float = 0.0
    shadow: float = 0.0
    srgb: bool = False

    def to_dict(self) -> dict:
        d = {
            "direction": np.asarray(self.direction, float).tolist(),
            "k_a": float(self.ambient),
            "k_d": float(self.diffuse),
            "k_s": float(self.specular),
            "shininess": float(self.shininess),
        }
        if self.occlusion or self.shadow or self.srgb:  # added later: plain Phong lights are written as before
            d.update(occlusion=float(self.occlusion), shadow=float(self.shadow), srgb=bool(self.srgb))
        return d

    @staticmethod
    def from_dict(d: dict) -> "Light":
        return Light(np.asarray(d["direction"], np.float32), d["k_a"], d["k_d"], d["k_s"], d["shininess"],
                     d.get("occlusion", 0.0), d.get("shadow", 0.0), d.get("srgb", False))


@dataclass(frozen=True)
class FaceRender:
    """Everything one draw of a face gives, for an (H, W) image.

    rgb: (H, W, 3) float32 in [0, 1], the face over the background; gray: (H, W) float32;
    mask: (H, W) bool silhouette; depth: (H, W) float32 mm (larger = nearer, 0 outside);
    normals: (H, W, 3) float32 camera-frame unit normals (0 outside); landmarks: (68, 2) pixel x, y;
    fragments: the rasteriser's record; displacement: (H, W) float32 mm of fine detail along the normal
    (zeros without a displacement map). With detail, depth and normals are those of the detailed surface.
    """

    rgb: np.ndarray
    gray: np.ndarray
    mask: np.ndarray
    depth: np.ndarray
    normals: np.ndarray
    landmarks: np.ndarray
    fragments: Fragments
    displacement: np.ndarray


class FaceRenderer:
    """Rasterise-and-shade renderer for one image size.

    Args:
        model: :class:`morphable.model.FaceModel`.
        image_size: H = W in pixels.
        backend: ``auto``, ``gl`` or ``numba`` (see :func:`render.raster.make_rasterizer`).
        gl_platform: ``auto``, ``osmesa`` or ``egl``.
        shading_ambient, shading_diffuse: constants of the shading image.
    """

    def __init__(self, model, image_size: int, backend: str, gl_platform: str, shading_ambient: float,
                 shading_diffuse: float):
        self.model = model
        self.size = image_size
        self.rasterizer = make_rasterizer(backend, image_size, image_size, gl_platform)
        self._cull = _closed_triangles(model)
        self.shading_ambient = shading_ambient
        self.shading_diffuse = shading_diffuse
        self._shadow_rasterizer = NumbaRasterizer()  # shadow maps, whatever the backend (render.occlusion)

    @classmethod
    def from_config(cls, model, render_cfg, image_size: int | None = None, backend: str | None = None
                    ) -> "FaceRenderer":
        """A renderer of the ``render`` config section; ``image_size``/``backend`` override its values."""
        return cls(model, image_size or render_cfg.image_size, backend or render_cfg.backend,
                   render_cfg.gl_platform, render_cfg.shading_ambient, render_cfg.shading_diffuse)

    @property
    def shading_light(self) -> Light:
        """The shading image's light as a Phong :class:`Light`: frontal, ``shading_ambient + shading_diffuse
        max(0, n_z)`` on a unit albedo, no highlight (the coarse face as the pipeline renders it)."""
        return Light(np.array([0.0, 0.0, 1.0], np.float32), self.shading_ambient, self.shading_diffuse, 0.0, 1.0)

    def narrow_face_mask(self, frags: Fragments) -> np.ndarray:
        """(H, W) bool: pixels whose triangle lies in the narrow face area (no ears, neck, eyes or mouth)."""
        model = self.model
        narrow = np.zeros(len(model.triangles) + 1, bool)
        narrow[:-1] = np.all(model.triangles < len(model.regions["narrow_face"]), axis=1)
        return narrow[frags.face_id]

    @property
    def backend(self) -> str:
        return self.rasterizer.name

    def rasterize(self, verts: np.ndarray, pose: Pose) -> tuple[Fragments, np.ndarray]:
        """(V, 3) model-frame vertices -> (fragments, (V, 3) projected vertices)."""
        vi = project(verts, pose)
        ids = self.rasterizer.rasterize(vi, self.model.triangles, self.size, self.size, self._cull)
        return fragments_from_ids(ids, vi, self.model.triangles), vi

    def _normals(self, vertex_normals: np.ndarray, frags: Fragments, pose: Pose) -> np.ndarray:
        """(H, W, 3) camera-frame unit normals interpolated from the (V, 3) model-frame vertex normals (0 outside)."""
        return frags.interpolate(rotate_normals(vertex_normals, pose), self.model.triangles, unit=True)

    def face_uv(self, frags: Fragments) -> np.ndarray:
        """(H, W, 2) UV of each pixel on the face area's UV tile (u in [0, 1)); NaN elsewhere."""
        m = self.model
        uv = frags.interpolate_corners(m.uv[m.tri_uv])
        on_face = np.zeros(len(m.triangles) + 1, bool)
        on_face[:-1] = np.all(m.uv[m.tri_uv][..., 0] < 1.0, axis=1)
        uv[~on_face[frags.face_id]] = np.nan  # face_id -1 indexes the final False
        return uv

    @staticmethod
    def sample_uv_map(uv: np.ndarray, uv_map: np.ndarray, order: int = 1) -> np.ndarray:
        """Look up a map over the face UV tile ((S, S), row 0 at v = 1) at pixel UVs (H, W, 2); 0 at NaN."""
        from scipy.ndimage import map_coordinates

        S = uv_map.shape[0]
        ok = np.isfinite(uv[..., 0])
        rows = (1.0 - uv[..., 1][ok]) * S - 0.5
        cols = uv[..., 0][ok] * S - 0.5
        out = np.zeros(uv.shape[:2], np.float32)
        out[ok] = map_coordinates(uv_map.astype(np.float32), np.stack([rows, cols]), order=order, mode="nearest")
        return out

    def _displace(self, frags: Fragments, normals: np.ndarray, pose: Pose, displacement_uv: np.ndarray):
        """Displace the surface by D(uv) along its normal, per pixel: depth + d / n_z, and the normal of the
        displaced height field n' ~ n / n_z - (dz_d/dx, dz_d/dy, 0) (camera frame, mm;
        :func:`render.shading.displaced_normals`)."""
        d = self.sample_uv_map(self.face_uv(frags), displacement_uv)
        nz = np.maximum(normals[..., 2], 0.3)
        dz = np.where(frags.mask, d / nz, 0.0)
        from scipy.ndimage import binary_erosion

        gy, gx = np.gradient(dz)  # per pixel; rows go down the image, camera y goes up
        inner = binary_erosion(frags.mask)  # no slope across the silhouette, where dz drops to 0
        gx, gy = np.where(inner, gx * pose.scale, 0.0), np.where(inner, -gy * pose.scale, 0.0)
        n = np.where(frags.mask[..., None], displaced_normals(normals, gx, gy), 0.0).astype(np.float32)
        return (frags.depth + dz).astype(np.float32), n, d

    def render_face(self, alpha: np.ndarray, pose: Pose, albedo: np.ndarray, light: Light,
                    background: np.ndarray | None = None, verts: np.ndarray | None = None,
                    displacement_uv: np.ndarray | None = None) -> FaceRender:
        """Render the Phong-lit face.

        Args:
            alpha: (K,) shape coefficients.
            pose: weak-perspective pose.
            albedo: (V, 3) per-vertex albedo of the whole head (:func:`morphable.materials.head_albedo`).
            light: Phong light.
            background: (H, W, 3) image behind the face (default black).
            verts: ``model.vertices(alpha)`` (V, 3) when the caller has it already (batched).
            displacement_uv: (S, S) fine detail in mm over the face UV tile (:mod:`datagen.detail`).
        """
        verts = self.model.vertices(alpha) if verts is None else verts
        frags, vi = self.rasterize(verts, pose)
        vertex_normals = self.model.vertex_normals(verts)
        normals = self._normals(vertex_normals, frags, pose)
        depth, disp = frags.depth, np.zeros(frags.depth.shape, np.float32)
        if displacement_uv is not None:
            depth, normals, disp = self._displace(frags, normals, pose, displacement_uv)
        a = frags.interpolate(albedo, self.model.triangles)
        k_a, k_d, k_s = light.ambient, light.diffuse, light.specular
        if light.occlusion > 0.0 or light.shadow > 0.0:
            k_a, k_d, k_s = self._occluded_light(verts, vertex_normals, frags, pose, light)
        lit = phong_shade(normals, srgb_to_linear(a) if light.srgb else a, light.direction, k_a, k_d, k_s,
                          light.shininess)
        m = frags.mask
        rgb = np.clip(lit, 0.0, 1.0, out=lit.astype(np.float32, copy=False))
        if light.srgb:
            rgb = linear_to_srgb(rgb)
        outside = np.repeat(~m, 3).reshape(rgb.shape)  # (H, W, 3): faster than broadcasting (H, W, 1)
        np.copyto(rgb, 0.0 if background is None else background, where=outside)
        landmarks = vi[self.model.landmarks68, :2].astype(np.float32)
        return FaceRender(rgb, to_gray(rgb), m, depth, normals, landmarks, frags, disp)

    def _occluded_light(self, verts: np.ndarray, vertex_normals: np.ndarray, frags: Fragments, pose: Pose,
                        light: Light):
        """(H, W) maps of the Phong constants (k_a, k_d, k_s) with ``light``'s occlusion and cast shadows
        (``verts``, ``vertex_normals``: (V, 3) model frame, the face drawn)."""
        tris = self.model.triangles
        k_a = np.float32(light.ambient)
        if light.occlusion > 0.0:
            ao = frags.interpolate(_mean_occlusion(self.model)[:, None], tris)[..., 0]
            k_a = k_a * (1.0 - light.occlusion * (1.0 - ao))
        seen = np.float32(1.0)
        if light.shadow > 0.0:
            towards = np.asarray(pose.rotation, np.float64).T @ np.asarray(light.direction, np.float64)  # model frame
            vis = visibility(verts, vertex_normals, tris, towards[None], SHADOW_MAP_SIZE,
                             rasterizer=self._shadow_rasterizer)[0]
            seen = 1.0 - light.shadow * (1.0 - frags.interpolate(vis[:, None], tris)[..., 0])
        return k_a, light.diffuse * seen, light.specular * seen

    def render_shading(self, alpha: np.ndarray, pose: Pose,
                       verts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Shading image of geometry ``alpha`` (K,) under ``pose``: ((H, W) float32 in [0, 1], (H, W) bool mask).
        ``verts``: ``model.vertices(alpha)`` when the caller has it already."""
        verts = self.model.vertices(alpha) if verts is None else verts
        frags, _ = self.rasterize(verts, pose)
        normals = self._normals(self.model.vertex_normals(verts), frags, pose)
        return shading_image(normals, frags.mask, self.shading_ambient, self.shading_diffuse), frags.mask
