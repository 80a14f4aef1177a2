"""Rasterisation: which triangle covers each pixel, and where in it.

Rasterisers only rasterise. Each backend returns the triangle id per pixel for vertices already projected
into the image frame (:mod:`render.camera`); :func:`fragments_from_ids` turns that into a
:class:`Fragments` record (ids, barycentrics, depth) that every shader consumes. With a weak-perspective
(orthographic) camera the 2D barycentrics of the pixel centre are exact, so both backends share this step.

Backends (``make_rasterizer``):
- ``gl``: OpenGL 3.3 core through pyrender's platform layer: OSMesa (llvmpipe) on a CPU, EGL on a GPU.
  One persistent context, one shader writing ``gl_PrimitiveID``, vertex data updated in place.
- ``numba``: a z-buffer scan converter compiled with numba. On a 2-core CPU it is several times faster than
  llvmpipe for our 30k-triangle, 200x200 frames (``benchmarks/render.py``), so it is the CPU default. It
  skips the back faces of closed surfaces (:func:`closed_surface_triangles`), which are never seen.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fragments:
    """Per-pixel rasterisation result for an (H, W) image.

    face_id: (H, W) int32 triangle index, -1 for background.
    bary: (H, W, 3) float32 barycentric weights of the triangle's vertices (0 on background).
    depth: (H, W) float32 interpolated depth in mm (larger = nearer; 0 on background).
    """

    face_id: np.ndarray
    bary: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: pixels covered by the mesh."""
        return self.face_id >= 0

    def interpolate(self, attr: np.ndarray, triangles: np.ndarray, unit: bool = False) -> np.ndarray:
        """Interpolate a per-vertex attribute (V, C) over the covered pixels -> (H, W, C) float32, 0 on
        background; ``unit``: each pixel's vector scaled to unit length (interpolated normals)."""
        H, W = self.face_id.shape
        out = np.zeros((H, W, attr.shape[-1]), np.float32)
        _kernels()["interpolate"](self.face_id, self.bary, np.ascontiguousarray(triangles),
                                  np.ascontiguousarray(attr, np.float32), unit, out)
        return out

    def interpolate_corners(self, attr: np.ndarray) -> np.ndarray:
        """Interpolate a per-corner attribute (F, 3, C) (e.g. UVs, which have seams) -> (H, W, C) float32."""
        H, W = self.face_id.shape
        out = np.zeros((H, W, attr.shape[-1]), np.float32)
        _kernels()["interpolate_corners"](self.face_id, self.bary, np.ascontiguousarray(attr, np.float32), out)
        return out


def fragments_from_ids(face_id: np.ndarray, verts_img: np.ndarray, triangles: np.ndarray) -> Fragments:
    """Barycentrics and depth of each covered pixel centre.

    Args:
        face_id: (H, W) int triangle ids, -1 for background.
        verts_img: (V, 3) projected vertices (pixel x, pixel y, depth mm).
        triangles: (F, 3) vertex indices.
    A pixel that GL covers although its centre lies a rounding error outside the triangle gets its
    barycentrics clamped to [0, 1] and renormalised.
    """
    H, W = face_id.shape
    face_id = np.ascontiguousarray(face_id, np.int32)
    bary = np.zeros((H, W, 3), np.float32)
    depth = np.zeros((H, W), np.float32)
    _kernels()["bary"](face_id, np.ascontiguousarray(verts_img), np.ascontiguousarray(triangles), bary, depth)
    return Fragments(face_id, bary, depth)


def closed_surface_triangles(triangles: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """(F,) bool: the triangles of closed, outward-oriented surfaces (the model's eyeballs and teeth).

    A view ray meets such a surface first where it enters it, on a triangle that faces the camera, so the
    triangles of it that face away are hidden behind its own front at every pixel and a rasteriser may skip
    them: the picture is the same. A surface is a connected set of triangles in which every directed edge
    has its reverse exactly once (closed, consistently oriented) and whose signed volume at ``verts`` (V, 3)
    is positive (normals point out); the topology, so the answer, is the same for every shape of a model.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t = np.asarray(triangles, np.int64)
    V = int(t.max()) + 1 if len(t) else 0
    edges = np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]])  # (3F, 2) directed, triangle f at f + kF
    n, label = connected_components(coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(V, V)),
                                    directed=False)
    key, reverse = edges[:, 0] * V + edges[:, 1], edges[:, 1] * V + edges[:, 0]
    uniq, count = np.unique(key, return_counts=True)
    paired = np.isin(reverse, uniq) & (count[np.searchsorted(uniq, key)] == 1)
    comp = label[t[:, 0]]
    is_open = np.zeros(n, bool)
    np.logical_or.at(is_open, np.tile(comp, 3), ~paired)
    p = np.asarray(verts, np.float64)[t]  # (F, 3, 3)
    volume = np.bincount(comp, np.einsum("fc,fc->f", p[:, 0], np.cross(p[:, 1], p[:, 2])), n) / 6.0
    return ~is_open[comp] & (volume[comp] > 0)


_KERNELS: dict = {}


def _kernels() -> dict:
    """numba kernels, compiled on first use (and cached on disk). Vertex positions are read as float64
    whatever their dtype (float32 arrays are not copied), so a float32 and a float64 input give the same
    bits; index arrays may be int32 or int64."""
    if _KERNELS:
        return _KERNELS
    import numba

    @numba.njit(cache=True, nogil=True)
    def bary_kernel(face_id, verts, tris, bary, depth):
        H, W = face_id.shape
        for i in range(H):
            py = i + 0.5
            for j in range(W):
                f = face_id[i, j]
                if f < 0:
                    continue
                a, b, c = tris[f, 0], tris[f, 1], tris[f, 2]
                ax, ay = np.float64(verts[a, 0]), np.float64(verts[a, 1])
                bx, by = np.float64(verts[b, 0]), np.float64(verts[b, 1])
                cx, cy = np.float64(verts[c, 0]), np.float64(verts[c, 1])
                px = j + 0.5
                det = (bx - ax) * (cy - ay) - (cx - ax) * (by - ay)
                if abs(det) < 1e-12:
                    det = 1e-12
                inv = 1.0 / det
                w1 = ((px - ax) * (cy - ay) - (cx - ax) * (py - ay)) * inv
                w2 = ((bx - ax) * (py - ay) - (px - ax) * (by - ay)) * inv
                w0 = min(max(1.0 - w1 - w2, 0.0), 1.0)
                w1 = min(max(w1, 0.0), 1.0)
                w2 = min(max(w2, 0.0), 1.0)
                s = w0 + w1 + w2
                if s != 1.0:  # clamped: a centre a rounding error outside (GL)
                    s = 1.0 / max(s, 1e-12)
                    w0, w1, w2 = w0 * s, w1 * s, w2 * s
                bary[i, j, 0], bary[i, j, 1], bary[i, j, 2] = w0, w1, w2
                depth[i, j] = w0 * np.float64(verts[a, 2]) + w1 * np.float64(verts[b, 2]) + w2 * np.float64(verts[c, 2])

    @numba.njit(cache=True, nogil=True)
    def interp_kernel(face_id, bary, tris, attr, unit, out):
        H, W = face_id.shape
        C = attr.shape[1]
        for i in range(H):
            for j in range(W):
                f = face_id[i, j]
                if f < 0:
                    continue
                v0, v1, v2 = tris[f, 0], tris[f, 1], tris[f, 2]
                w0, w1, w2 = bary[i, j, 0], bary[i, j, 1], bary[i, j, 2]
                n2 = 0.0
                for ch in range(C):
                    x = w0 * attr[v0, ch] + w1 * attr[v1, ch] + w2 * attr[v2, ch]
                    out[i, j, ch] = x
                    n2 += np.float64(x) ** 2
                if unit:
                    inv = 1.0 / max(np.sqrt(n2), 1e-12)
                    for ch in range(C):
                        out[i, j, ch] = out[i, j, ch] * inv

    @numba.njit(cache=True, nogil=True)
    def raster(verts, tris, H, W, face_id, zbuf, cull):
        # Most triangles of a 200x200 face cover no pixel centre: reject them on the bounding box first.
        # Pixel centres j + 0.5 inside [lo, hi] <=> j in [ceil(lo - 0.5), floor(hi - 0.5)].
        # With the image's y down, a triangle facing the camera (counter-clockwise seen from outside) has
        # det < 0; the back faces of closed surfaces (cull) are skipped.
        for f in range(tris.shape[0]):
            i0 = tris[f, 0]
            i1 = tris[f, 1]
            i2 = tris[f, 2]
            x0, y0 = np.float64(verts[i0, 0]), np.float64(verts[i0, 1])
            x1, y1 = np.float64(verts[i1, 0]), np.float64(verts[i1, 1])
            x2, y2 = np.float64(verts[i2, 0]), np.float64(verts[i2, 1])
            xmin = int(np.ceil(min(x0, x1, x2) - 0.5))
            xmax = int(np.floor(max(x0, x1, x2) - 0.5))
            if xmin > xmax:
                continue
            ymin = int(np.ceil(min(y0, y1, y2) - 0.5))
            ymax = int(np.floor(max(y0, y1, y2) - 0.5))
            if ymin > ymax:
                continue
            det = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
            if det == 0.0 or (det > 0.0 and cull[f]):
                continue
            inv = 1.0 / det
            z0, z1, z2 = np.float64(verts[i0, 2]), np.float64(verts[i1, 2]), np.float64(verts[i2, 2])
            xmin, ymin = max(xmin, 0), max(ymin, 0)
            xmax, ymax = min(xmax, W - 1), min(ymax, H - 1)
            for i in range(ymin, ymax + 1):
                py = i + 0.5
                for j in range(xmin, xmax + 1):
                    px = j + 0.5
                    w1 = ((px - x0) * (y2 - y0) - (x2 - x0) * (py - y0)) * inv
                    w2 = ((x1 - x0) * (py - y0) - (px - x0) * (y1 - y0)) * inv
                    w0 = 1.0 - w1 - w2
                    if w0 < 0.0 or w1 < 0.0 or w2 < 0.0:
                        continue
                    z = w0 * z0 + w1 * z1 + w2 * z2
                    if z > zbuf[i, j]:
                        zbuf[i, j] = z
                        face_id[i, j] = f

    @numba.njit(cache=True, nogil=True)
    def interp_corner_kernel(face_id, bary, attr, out):
        H, W = face_id.shape
        C = attr.shape[2]
        for i in range(H):
            for j in range(W):
                f = face_id[i, j]
                if f < 0:
                    continue
                for k in range(3):
                    w = bary[i, j, k]
                    for ch in range(C):
                        out[i, j, ch] += w * attr[f, k, ch]

    _KERNELS.update(bary=bary_kernel, interpolate=interp_kernel, raster=raster,
                    interpolate_corners=interp_corner_kernel)
    return _KERNELS


# --------------------------------------------------------------------------- numba backend
class NumbaRasterizer:
    """Z-buffer scan conversion of projected triangles (numba, one core)."""

    name = "numba"

    def __init__(self):
        self._zbuf = np.empty((0, 0))  # scratch depth buffer, reused by every frame of this size

    def rasterize(self, verts_img: np.ndarray, triangles: np.ndarray, height: int, width: int,
                  cull: np.ndarray | None = None) -> np.ndarray:
        """(V, 3) projected vertices, (F, 3) triangles -> (H, W) int32 triangle ids (-1 background).
        ``cull``: (F,) bool, :func:`closed_surface_triangles`, whose back faces are skipped (same picture)."""
        kernel = _kernels()["raster"]
        face_id = np.full((height, width), -1, np.int32)
        if self._zbuf.shape != (height, width):
            self._zbuf = np.empty((height, width))
        self._zbuf.fill(-np.inf)
        if cull is None:
            cull = np.zeros(len(triangles), bool)
        kernel(np.ascontiguousarray(verts_img), np.ascontiguousarray(triangles), height, width, face_id, self._zbuf,
               cull)
        return face_id


# --------------------------------------------------------------------------- OpenGL backend
_VERTEX_SHADER = """
#version 330 core
layout(location = 0) in vec3 position;   // pixel x, pixel y (down), depth mm (larger = nearer)
uniform vec2 viewport;                    // width, height in pixels
uniform vec2 depth_range;                 // min, max depth of this frame
void main() {
    float zn = 1.0 - 2.0 * (position.z - depth_range.x) / (depth_range.y - depth_range.x);
    gl_Position = vec4(2.0 * position.x / viewport.x - 1.0, 1.0 - 2.0 * position.y / viewport.y, zn, 1.0);
}
"""
_FRAGMENT_SHADER = """
#version 330 core
layout(location = 0) out int face_id;
void main() { face_id = gl_PrimitiveID; }
"""


def gl_platform_name(requested: str = "auto") -> str:
    """The PyOpenGL platform to use: ``osmesa`` or ``egl`` (``auto``: the environment's
    ``PYOPENGL_PLATFORM`` if set, EGL when an NVIDIA GPU is visible, else OSMesa)."""
    if requested != "auto":
        return requested
    env = os.environ.get("PYOPENGL_PLATFORM")
    if env:
        return env
    return "egl" if os.path.exists("/dev/nvidia0") else "osmesa"


class GLRasterizer:
    """Triangle-id rasteriser on an OpenGL 3.3 core context created by pyrender's platform classes.

    The context, shader program, framebuffer and buffers are created once; each frame uploads the
    projected vertices with ``glBufferSubData`` (and the triangles only when they change).
    This is the one place where ``PYOPENGL_PLATFORM`` is chosen, before OpenGL is first imported.
    """

    name = "gl"

    def __init__(self, height: int, width: int, platform: str = "auto"):
        platform = gl_platform_name(platform)
        current = os.environ.get("PYOPENGL_PLATFORM")
        import sys

        if "OpenGL.GL" in sys.modules and current and current != platform:
            raise RuntimeError(f"OpenGL already initialised for '{current}', cannot switch to '{platform}'")
        os.environ["PYOPENGL_PLATFORM"] = platform
        from OpenGL import GL as gl

        if platform == "osmesa":
            from pyrender.platforms.osmesa import OSMesaPlatform

            self._platform = OSMesaPlatform(width, height)
        elif platform == "egl":
            from pyrender.platforms.egl import EGLPlatform

            self._platform = EGLPlatform(width, height)
        else:
            raise ValueError(f"unknown GL platform '{platform}' (osmesa or egl)")
        self._platform.init_context()
        self._platform.make_current()
        self.gl = gl
        self.platform = platform
        self.height, self.width = height, width
        from OpenGL.GL import shaders

        self._program = shaders.compileProgram(
            shaders.compileShader(_VERTEX_SHADER, gl.GL_VERTEX_SHADER),
            shaders.compileShader(_FRAGMENT_SHADER, gl.GL_FRAGMENT_SHADER),
            validate=False,
        )
        self._u_viewport = gl.glGetUniformLocation(self._program, "viewport")
        self._u_depth = gl.glGetUniformLocation(self._program, "depth_range")
        self._fbo = gl.glGenFramebuffers(1)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self._fbo)
        self._rb_color, self._rb_depth = gl.glGenRenderbuffers(2)
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, self._rb_color)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_R32I, width, height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_COLOR_ATTACHMENT0, gl.GL_RENDERBUFFER, self._rb_color)
        gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, self._rb_depth)
        gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, gl.GL_DEPTH_COMPONENT24, width, height)
        gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, gl.GL_DEPTH_ATTACHMENT, gl.GL_RENDERBUFFER, self._rb_depth)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"OpenGL framebuffer incomplete (status {status})")
        self._vao = gl.glGenVertexArrays(1)
        gl.glBindVertexArray(self._vao)
        self._vbo, self._ebo = gl.glGenBuffers(2)
        self._n_verts = 0
        self._tris_key = None
        self._n_index = 0
        gl.glViewport(0, 0, width, height)
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDepthFunc(gl.GL_LESS)
        gl.glDisable(gl.GL_CULL_FACE)
        gl.glUseProgram(self._program)
        gl.glUniform2f(self._u_viewport, float(width), float(height))

    def rasterize(self, verts_img: np.ndarray, triangles: np.ndarray, height: int, width: int,
                  cull: np.ndarray | None = None) -> np.ndarray:
        """(V, 3) projected vertices, (F, 3) triangles -> (H, W) int32 triangle ids (-1 background).
        ``cull`` is accepted for the numba backend's sake: GL draws every triangle (the same picture)."""
        gl = self.gl
        if (height, width) != (self.height, self.width):
            raise ValueError(f"this GL rasteriser draws {self.height}x{self.width}, asked {height}x{width}")
        self._platform.make_current()
        v = np.ascontiguousarray(verts_img, np.float32)
        gl.glBindVertexArray(self._vao)
        gl.glBindBuffer(gl.GL_ARRAY_BUFFER, self._vbo)
        if len(v) != self._n_verts:
            gl.glBufferData(gl.GL_ARRAY_BUFFER, v.nbytes, v, gl.GL_DYNAMIC_DRAW)
            gl.glEnableVertexAttribArray(0)
            gl.glVertexAttribPointer(0, 3, gl.GL_FLOAT, gl.GL_FALSE, 12, None)
            self._n_verts = len(v)
        else:
            gl.glBufferSubData(gl.GL_ARRAY_BUFFER, 0, v.nbytes, v)
        key = (triangles.__array_interface__["data"][0], triangles.shape)
        if key != self._tris_key:
            t = np.ascontiguousarray(triangles, np.uint32)
            gl.glBindBuffer(gl.GL_ELEMENT_ARRAY_BUFFER, self._ebo)
            gl.glBufferData(gl.GL_ELEMENT_ARRAY_BUFFER, t.nbytes, t, gl.GL_STATIC_DRAW)
            self._tris_key, self._n_index = key, t.size
        zmin, zmax = float(v[:, 2].min()) - 1.0, float(v[:, 2].max()) + 1.0
        gl.glUniform2f(self._u_depth, zmin, zmax)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self._fbo)
        gl.glClearBufferiv(gl.GL_COLOR, 0, np.array([-1, -1, -1, -1], np.int32))
        gl.glClear(gl.GL_DEPTH_BUFFER_BIT)
        gl.glDrawElements(gl.GL_TRIANGLES, self._n_index, gl.GL_UNSIGNED_INT, None)
        gl.glReadBuffer(gl.GL_COLOR_ATTACHMENT0)
        buf = gl.glReadPixels(0, 0, width, height, gl.GL_RED_INTEGER, gl.GL_INT)
        ids = np.frombuffer(buf, np.int32).reshape(height, width)
        return np.ascontiguousarray(ids[::-1])

    def close(self) -> None:
        if self._platform is not None:
            self._platform.delete_context()
            self._platform = None


def resolve_backend(backend: str, gl_platform: str = "auto") -> str:
    """``auto`` -> ``gl`` with EGL on a GPU machine, ``numba`` on a CPU (see module docstring)."""
    if backend != "auto":
        return backend
    return "gl" if gl_platform_name(gl_platform) == "egl" else "numba"


def make_rasterizer(backend: str, height: int, width: int, gl_platform: str = "auto"):
    """The rasteriser of ``backend`` (``auto``: :func:`resolve_backend`)."""
    backend = resolve_backend(backend, gl_platform)
    if backend == "numba":
        return NumbaRasterizer()
    if backend == "gl":
        return GLRasterizer(height, width, gl_platform)
    raise ValueError(f"unknown render backend '{backend}' (auto, gl or numba)")
