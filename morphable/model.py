"""The face model: S = mean + A_id a_id + A_exp a_exp, on batches, in numpy and torch.

Units: millimetres; frame: y up, face looking along +z (the model frame of ICT-FaceKit).
Coefficients ``alpha`` are (B, K) with K = 153: 100 identity weights (N(0, 1)), then 53 expression
weights in [0, 1] in the order of :attr:`FaceModel.expression_names`. :class:`FaceParams` names the parts,
so no caller slices fixed offsets by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

try:  # torch is optional for the numpy path (datagen workers never need it)
    import torch
except ImportError:  # pragma: no cover
    torch = None


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

    def albedo(self, beta: np.ndarray) -> np.ndarray:
        """(B, Ka) coefficients -> (B, Vf, 3) albedo, clipped to [0, 1]."""
        beta = np.atleast_2d(beta)
        out = self.mean[None] + np.einsum("vck,bk->bvc", self.basis, beta, optimize=True)
        return np.clip(out, 0.0, 1.0)


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
        import h5py

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"face model {path} not found (run `python -m morphable.convert`)")
        with h5py.File(path, "r") as f:
            self.mean = f["mean"][()].astype(np.float32)
            self.basis = f["basis"][()].astype(np.float32)
            self.triangles = f["triangles"][()].astype(np.int32)
            self.tri_uv = f["tri_uv"][()].astype(np.int32)
            self.uv = f["uv"][()].astype(np.float32)
            self.landmarks68 = f["landmarks68"][()].astype(np.int32)
            self.expression_names = [s.decode() for s in f["expression_names"][()]]
            self.regions = {k: f["regions"][k][()].astype(np.int64) for k in f["regions"]}
            self.regions["landmarks68"] = self.landmarks68.astype(np.int64)
            self.albedo_model = (
                AlbedoModel(f["albedo/mean"][()].astype(np.float32), f["albedo/basis"][()].astype(np.float32))
                if "albedo" in f
                else None
            )
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
        if torch is not None and isinstance(alpha, torch.Tensor):
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

    def _torch_tensors(self, region, device, dtype):
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
    @cached_property
    def _vertex_face_matrix(self) -> sp.csr_matrix:
        """(V, F) sparse incidence matrix: vertex normal = sum of its faces' area-weighted normals."""
        F = len(self.triangles)
        rows = self.triangles.reshape(-1)
        cols = np.repeat(np.arange(F), 3)
        return sp.csr_matrix((np.ones_like(rows, np.float32), (rows, cols)), shape=(self.n_vertices, F))

    def vertex_normals(self, verts: np.ndarray) -> np.ndarray:
        """Unit vertex normals (area-weighted face normals summed by a sparse product).

        Args:
            verts: (B, V, 3) or (V, 3) positions (numpy).
        Returns:
            same shape, unit length, pointing out of the face.
        """
        single = verts.ndim == 2
        v = verts[None] if single else verts
        t = self.triangles
        e1 = v[:, t[:, 1]] - v[:, t[:, 0]]  # (B, F, 3)
        e2 = v[:, t[:, 2]] - v[:, t[:, 0]]
        B, F, _ = e1.shape
        fn = np.empty((F, B, 3), np.float32)  # face normals (area-weighted), laid out for the sparse product
        fn[..., 0] = (e1[..., 1] * e2[..., 2] - e1[..., 2] * e2[..., 1]).T
        fn[..., 1] = (e1[..., 2] * e2[..., 0] - e1[..., 0] * e2[..., 2]).T
        fn[..., 2] = (e1[..., 0] * e2[..., 1] - e1[..., 1] * e2[..., 0]).T
        vn = (self._vertex_face_matrix @ fn.reshape(F, B * 3)).reshape(-1, B, 3).transpose(1, 0, 2)
        norm = np.sqrt(np.einsum("bvc,bvc->bv", vn, vn))[..., None]
        vn = vn / np.maximum(norm, 1e-12)
        return (vn[0] if single else vn).astype(np.float32, copy=False)

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


_MODEL_CACHE: dict[str, FaceModel] = {}


def load_model(path: str | Path) -> FaceModel:
    """Load (and cache per process) the converted model."""
    key = str(Path(path).resolve())
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = FaceModel(path)
    return _MODEL_CACHE[key]
