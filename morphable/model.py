"""The face model: S = mean + A_id a_id + A_exp a_exp, on batches, in numpy and torch.

Units: millimetres; frame: y up, face looking along +z (the model frame of ICT-FaceKit).
Coefficients ``alpha`` are (B, K) with K = 153: 100 identity weights (N(0, 1)), then 53 expression
weights in [0, 1] in the order of :attr:`FaceModel.expression_names`. :class:`FaceParams` names the parts,
so no caller slices fixed offsets by hand.

Two products: :meth:`FaceModel.vertices` (float32 basis, BLAS; any batch, numpy or torch) and
:meth:`FaceModel.draw_vertices` (a 16-bit copy of the basis, :class:`LinearBasis`), the data generator's:
the product reads the whole basis for a couple of faces, so it is bound by memory and half the bytes is
about twice the speed; its error is a few thousandths of a millimetre (``benchmarks/datagen.py`` measures it).
The numpy kernels are compiled with numba on first use (one thread: one process per core is the model).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np



def _is_torch(x) -> bool:
    """A torch tensor? (torch is imported only by callers that use it: it would add seconds to the start of
    every data worker, which never needs it)."""
    return type(x).__module__.startswith("torch")


class LinearBasis:
    """``x = mean + coeffs @ basis.T`` for a few coefficient vectors at once, the basis stored for speed.

    The basis is stored in int16 with one scale per mode (``bits=16``: half the bytes of float32, so about
    half the time of this memory-bound product; each entry is off by at most half its mode's step
    ``max|basis[:, k]| / 32767``) or in float32 (``bits=32``), as ``table`` (T, K, TILE): tile t holds
    entries t TILE .. (t + 1) TILE - 1 of every mode, so one pass reads memory front to back while a tile of
    each output stays in the L1 cache. The sum runs over k in order, element by element (no reassociation),
    so a result has the same bits on every run and machine; modes whose coefficient is 0 in every vector of
    the batch are skipped (most expression weights are 0).

    Args:
        mean: (N,) float; basis: (N, K) float.
    """

    TILE = 1024

    def __init__(self, mean: np.ndarray, basis: np.ndarray, bits: int = 16):
        if basis.ndim != 2 or mean.shape != basis.shape[:1]:
            raise ValueError(f"expected mean (N,) and basis (N, K); got {mean.shape} and {basis.shape}")
        if bits not in (16, 32):
            raise ValueError(f"bits must be 16 or 32; got {bits}")
        self.mean = np.ascontiguousarray(mean, np.float32)
        (N, K), tiles = basis.shape, -(-basis.shape[0] // self.TILE)
        bt = np.zeros((K, tiles * self.TILE))  # transposed, padded to whole tiles
        bt[:, :N] = np.asarray(basis, np.float64).T
        if bits == 16:
            peak = np.abs(bt).max(axis=1)
            self.step = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)  # (K,) value of one unit
            bt = np.rint(bt / self.step[:, None]).astype(np.int16)
        else:
            self.step = np.ones(K, np.float32)
            bt = bt.astype(np.float32)
        self.table = np.ascontiguousarray(bt.reshape(K, tiles, self.TILE).transpose(1, 0, 2))
        self.bits = bits

    @property
    def n_coeffs(self) -> int:
        return self.table.shape[1]

    def __call__(self, coeffs: np.ndarray) -> np.ndarray:
        """(B, K) coefficients -> (B, N) float32."""
        c = np.atleast_2d(np.asarray(coeffs, np.float32))
        if c.shape[-1] != self.n_coeffs:
            raise ValueError(f"expected (B, {self.n_coeffs}) coefficients; got {c.shape}")
        out = np.empty((len(c), len(self.mean)), np.float32)
        _kernels()["linear"](self.mean, self.table, np.ascontiguousarray(c * self.step), out)
        return out

    def error_bound(self, coeffs: np.ndarray) -> np.ndarray:
        """(B,) bound on |x - exact| of any entry from the 16-bit rounding: sum_k |c_k| step_k / 2 (float32
        rounding aside; 0 for ``bits=32``)."""
        c = np.atleast_2d(np.asarray(coeffs, np.float64))
        return 0.0 * c[:, 0] if self.bits == 32 else np.abs(c) @ (self.step.astype(np.float64) / 2)


@dataclass(frozen=True)
class AlbedoModel:
    """Linear per-vertex albedo T = mean + basis a (display RGB in [0, 1]), on the face-area vertices.

    mean: (Vf, 3); basis: (Vf, 3, Ka) so that coefficients a ~ N(0, 1) give plausible skin.
    """

    mean: np.ndarray
    basis: np.ndarray

    @property
    def n_components(self) -> int:
        return self.basis.shape[-1]

    @cached_property
    def _linear(self) -> LinearBasis:
        return LinearBasis(self.mean.reshape(-1), self.basis.reshape(-1, self.n_components))

    def albedo(self, beta: np.ndarray) -> np.ndarray:
        """(B, Ka) coefficients -> (B, Vf, 3) albedo, clipped to [0, 1] (16-bit basis: error < 1e-4, far
        below a step of an 8-bit image)."""
        beta = np.atleast_2d(beta)
        out = self._linear(beta).reshape(len(beta), -1, 3)
        return np.clip(out, 0.0, 1.0, out=out)


class FaceModel:
    """The converted ICT-FaceKit light model (see :mod:`morphable.convert`).

    Attributes:
        mean: (V, 3) float32 mean shape, mm.
        basis: (V, 3, K) float32 modes, identity first.
        triangles: (F, 3) int32, counter-clockwise seen from outside.
        landmarks68: (68,) int32 Multi-PIE landmark vertex indices.
        regions: name -> vertex indices (``face``, ``narrow_face``, ``mouth_interior``, ``teeth``,
            ``sclera``, ``iris``, ``eyes`` ...).
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"face model {path} not found (run `python -m morphable.convert`)")
        a = read_model_arrays(path)
        self.mean, self.basis = a["mean"], a["basis"]
        self.triangles, self.tri_uv, self.uv = a["triangles"], a["tri_uv"], a["uv"]
        self.landmarks68 = a["landmarks68"]
        self.expression_names = [str(s) for s in a["expression_names"]]
        self.regions = {k[len("regions."):]: v for k, v in a.items() if k.startswith("regions.")}
        self.regions["landmarks68"] = self.landmarks68.astype(np.int64)
        self.albedo_model = AlbedoModel(a["albedo.mean"], a["albedo.basis"]) if "albedo.mean" in a else None
        self.path = path
        self.n_vertices = len(self.mean)
        self.n_identity = self.basis.shape[-1] - len(self.expression_names)
        self.n_expression = len(self.expression_names)
        self.n_coeffs = self.basis.shape[-1]
        self._basis_flat = np.ascontiguousarray(self.basis.reshape(-1, self.n_coeffs))  # (3V, K)
        self._torch_cache: dict = {}

    # ------------------------------------------------------------------ geometry
    def vertices(self, alpha, region: str | None = None):
        """Geometry of a batch of coefficient vectors.

        Args:
            alpha: (B, K) or (K,) numpy array or torch tensor.
            region: restrict to a named vertex region (default: all vertices).
        Returns:
            (B, V, 3) (or (V, 3) for a single vector), mm, same library and dtype as ``alpha``.
        """
        single = alpha.ndim == 1
        if _is_torch(alpha):
            a = alpha[None] if single else alpha
            mean, basis = self._torch_tensors(region, a.device, a.dtype)
            out = mean[None] + (a @ basis.T).view(a.shape[0], -1, 3)
        else:
            a = np.atleast_2d(np.asarray(alpha, np.float32))
            if region is None:
                mean, basis = self.mean, self._basis_flat
            else:
                idx = self.regions[region]
                mean, basis = self.mean[idx], self.basis[idx].reshape(-1, self.n_coeffs)
            out = mean[None] + (a @ basis.T).reshape(a.shape[0], -1, 3)
        return out[0] if single else out

    @cached_property
    def _draw_basis(self) -> LinearBasis:
        return LinearBasis(self.mean.reshape(-1), self._basis_flat)

    def draw_vertices(self, alpha: np.ndarray) -> np.ndarray:
        """Geometry for drawing: (B, K) or (K,) numpy -> (B, V, 3) (or (V, 3)) float32 mm, from the 16-bit
        basis (:class:`LinearBasis`; each coordinate within :meth:`draw_error_bound` of :meth:`vertices`).
        All vectors of the batch come from one pass over the basis."""
        a = np.asarray(alpha)
        out = self._draw_basis(a).reshape(-1, self.n_vertices, 3)
        return out[0] if a.ndim == 1 else out

    def draw_error_bound(self, alpha: np.ndarray) -> np.ndarray:
        """(B,) mm: bound on the coordinate error of :meth:`draw_vertices` for each coefficient vector."""
        return self._draw_basis.error_bound(alpha)

    def _torch_tensors(self, region, device, dtype):
        import torch

        key = (region, str(device), dtype)
        if key not in self._torch_cache:
            if region is None:
                mean, basis = self.mean, self._basis_flat
            else:
                idx = self.regions[region]
                mean, basis = self.mean[idx], self.basis[idx].reshape(-1, self.n_coeffs)
            self._torch_cache[key] = (
                torch.as_tensor(mean, dtype=dtype, device=device),
                torch.as_tensor(basis, dtype=dtype, device=device),
            )
        return self._torch_cache[key]

    def landmarks(self, alpha):
        """(B, K) -> (B, 68, 3) Multi-PIE landmark positions, mm (numpy or torch, as given)."""
        return self.vertices(alpha, region="landmarks68")

    # ------------------------------------------------------------------ normals
    def vertex_normals(self, verts: np.ndarray) -> np.ndarray:
        """Unit vertex normals: the area-weighted normals of each vertex's triangles, summed in float64 (a
        numba loop over the triangles).

        Args:
            verts: (B, V, 3) or (V, 3) positions (numpy; not modified).
        Returns:
            same shape, float32, unit length, pointing out of the face.
        """
        single = verts.ndim == 2
        v = np.ascontiguousarray(verts[None] if single else verts)
        out = np.empty(v.shape, np.float32)
        _kernels()["normals"](v, self.triangles, out)
        return out[0] if single else out

    def region_triangles(self, region: str, local: bool = False) -> np.ndarray:
        """(F', 3) int: the triangles whose three vertices lie in ``regions[region]``; ``local``: indexed into
        the region's vertices (as ``vertices(alpha, region)`` returns them) instead of the whole mesh."""
        idx = self.regions[region]
        tris = self.triangles[np.isin(self.triangles, idx).all(1)]
        if not local:
            return tris
        where = np.full(self.n_vertices, -1, np.int64)
        where[idx] = np.arange(len(idx))
        return where[tris]

    # ------------------------------------------------------------------ loss
    def gram(self, region: str = "face", dtype=np.float64) -> np.ndarray:
        """G = A_r^T A_r / (3 |r|): (K, K), so that (x - y)^T G (x - y) is the mean squared per-coordinate
        geometry error (mm^2) over the vertices of ``region``, without building any vertex."""
        idx = self.regions[region]
        A = self.basis[idx].reshape(-1, self.n_coeffs).astype(np.float64)
        return (A.T @ A / A.shape[0]).astype(dtype)

    # ------------------------------------------------------------------ coefficients
    def split(self, alpha):
        """(…, K) -> (identity (…, 100), expression (…, 53))."""
        return alpha[..., : self.n_identity], alpha[..., self.n_identity :]

    def join(self, identity, expression):
        """Inverse of :meth:`split` (numpy)."""
        return np.concatenate([identity, expression], axis=-1).astype(np.float32)

    def expression_index(self, name: str) -> int:
        """Column of blendshape ``name`` in the expression block."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"unknown expression blendshape '{name}'") from None


def mesh_normals(verts, triangles):
    """Unit area-weighted vertex normals of a mesh, numpy or torch (differentiable), as given.

    Args:
        verts: (V, 3) positions; triangles: (F, 3) int indices into them, counter-clockwise seen from outside.
    Returns:
        (V, 3) unit normals pointing out (a vertex of no triangle gets zero).
    """
    e1 = verts[triangles[:, 1]] - verts[triangles[:, 0]]
    e2 = verts[triangles[:, 2]] - verts[triangles[:, 0]]
    if _is_torch(verts):
        import torch

        fn = torch.linalg.cross(e1, e2, dim=1)
        idx = torch.as_tensor(triangles, dtype=torch.long, device=verts.device).reshape(-1)
        n = torch.zeros_like(verts).index_add_(0, idx, fn.repeat_interleave(3, 0))
        return n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fn = np.cross(e1, e2)
    n = np.zeros_like(verts)
    for j in range(3):
        np.add.at(n, triangles[:, j], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


_KERNELS: dict = {}


def _kernels() -> dict:
    """numba kernels, compiled on first use (and cached on disk)."""
    if _KERNELS:
        return _KERNELS
    import numba

    @numba.njit(cache=True, nogil=True)
    def linear_kernel(mean, table, coeffs, out):
        # out[b, j] = mean[j] + sum_k coeffs[b, k] table[t, k, j - t TILE], k in order, tile by tile: the
        # table streams through once for the whole batch while the tile of the outputs stays in L1
        T, K, tile = table.shape
        B, N = out.shape
        for t in range(T):
            j0 = t * tile
            n = min(tile, N - j0)
            m = mean[j0:j0 + n]
            for b in range(B):
                o = out[b, j0:j0 + n]
                for j in range(n):
                    o[j] = m[j]
            for k in range(K):
                used = False  # a mode that no vector of the batch uses is not read (adding 0 changes no bit)
                for b in range(B):
                    used = used or coeffs[b, k] != 0.0
                if not used:
                    continue
                row = table[t, k]
                for b in range(B):
                    c = coeffs[b, k]
                    o = out[b, j0:j0 + n]
                    for j in range(n):
                        o[j] += c * np.float32(row[j])

    @numba.njit(cache=True, nogil=True)
    def normals_kernel(verts, tris, out):
        B, V = verts.shape[0], verts.shape[1]
        acc = np.zeros((V, 3))
        for b in range(B):
            acc[:] = 0.0
            for f in range(tris.shape[0]):
                i0, i1, i2 = tris[f, 0], tris[f, 1], tris[f, 2]
                ox, oy, oz = np.float64(verts[b, i0, 0]), np.float64(verts[b, i0, 1]), np.float64(verts[b, i0, 2])
                ax, ay, az = verts[b, i1, 0] - ox, verts[b, i1, 1] - oy, verts[b, i1, 2] - oz
                bx, by, bz = verts[b, i2, 0] - ox, verts[b, i2, 1] - oy, verts[b, i2, 2] - oz
                nx, ny, nz = ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx
                for i in (i0, i1, i2):
                    acc[i, 0] += nx
                    acc[i, 1] += ny
                    acc[i, 2] += nz
            for i in range(V):
                n = max(np.sqrt(acc[i, 0] ** 2 + acc[i, 1] ** 2 + acc[i, 2] ** 2), 1e-12)
                out[b, i, 0], out[b, i, 1], out[b, i, 2] = acc[i, 0] / n, acc[i, 1] / n, acc[i, 2] / n

    _KERNELS.update(linear=linear_kernel, normals=normals_kernel)
    return _KERNELS


# ------------------------------------------------------------------ reading the file
#: ``format`` of the uncompressed copy :func:`read_model_arrays` keeps (another value: the copy is rebuilt).
CACHE_FORMAT = "facesynth-model-cache/1"


def _read_h5(path: Path) -> dict[str, np.ndarray]:
    """The arrays :class:`FaceModel` holds, from the converted HDF5 file, in the dtypes it keeps them: float32
    geometry, int32 topology, int64 region indices, str expression names; keys ``regions.NAME`` and
    ``albedo.mean`` / ``albedo.basis`` (when the file has an albedo model)."""
    import h5py

    with h5py.File(path, "r") as f:
        a = {"mean": f["mean"][()].astype(np.float32), "basis": f["basis"][()].astype(np.float32),
             "triangles": f["triangles"][()].astype(np.int32), "tri_uv": f["tri_uv"][()].astype(np.int32),
             "uv": f["uv"][()].astype(np.float32), "landmarks68": f["landmarks68"][()].astype(np.int32),
             "expression_names": np.array([s.decode() for s in f["expression_names"][()]], dtype=str)}
        a.update({f"regions.{k}": f["regions"][k][()].astype(np.int64) for k in f["regions"]})
        if "albedo" in f:
            a["albedo.mean"] = f["albedo/mean"][()].astype(np.float32)
            a["albedo.basis"] = f["albedo/basis"][()].astype(np.float32)
    return a


def model_cache_path(path: str | Path) -> Path:
    """Where :func:`read_model_arrays` keeps the uncompressed copy of the model file ``path``:
    ``.cache/NAME.npz`` in its folder (the ``.cache`` folder holds a ``.gitignore`` of ``*``)."""
    path = Path(path)
    return path.parent / ".cache" / f"{path.name}.npz"


def _stamp(path: Path) -> np.ndarray:
    """(2,) int64: the file's size (bytes) and modification time (ns), what the cached copy was made from."""
    st = path.stat()
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def read_model_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """The model file's arrays (:func:`_read_h5`), through an uncompressed copy beside it.

    The HDF5 file (gzip, small chunks) takes about 0.4 s to read; an uncompressed ``.npz`` copy
    (:func:`model_cache_path`, 37 MB) about 0.05 s. The copy is written on first use and used while the
    HDF5 file's size and modification time are those it was made from (as Python's ``.pyc`` files); any other
    file, a copy of another :data:`CACHE_FORMAT` or an unreadable one is replaced. It is written to a
    temporary name and renamed (:func:`facesynth.io.atomic_path`), so processes loading at once each read a
    whole file; a folder that cannot be written only costs the speed. The HDF5 file stays the source.
    """
    path = Path(path)
    cache, stamp = model_cache_path(path), _stamp(path)
    try:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["_format"]) == CACHE_FORMAT and np.array_equal(z["_source"], stamp):
                return {k: z[k] for k in z.files if not k.startswith("_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # none yet, another format or a damaged file: made again below
    arrays = _read_h5(path)
    try:
        _write_cache(cache, arrays, stamp)
    except OSError:
        pass  # a read-only folder: no copy, the next load reads the HDF5 file again
    return arrays


def _write_cache(cache: Path, arrays: dict[str, np.ndarray], stamp: np.ndarray) -> None:
    from facesynth.io import atomic_path, atomic_write_text

    cache.parent.mkdir(parents=True, exist_ok=True)
    ignore = cache.parent / ".gitignore"
    if not ignore.exists():
        atomic_write_text(ignore, "# made by morphable.model.read_model_arrays\n*\n")
    with atomic_path(cache) as tmp, open(tmp, "wb") as f:
        np.savez(f, _format=np.array(CACHE_FORMAT), _source=stamp, **arrays)


_MODEL_CACHE: dict[str, FaceModel] = {}


def load_model(path: str | Path) -> FaceModel:
    """Load (and cache per process) the converted model."""
    key = str(Path(path).resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = FaceModel(path)
    return _MODEL_CACHE[key]
