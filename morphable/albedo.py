"""The albedo model: a generative skin model on the face-area vertices, and its PCA.

ICT-FaceKit light has no albedo, so we make one. :func:`sample_skin` draws per-vertex albedo from a
hand-built generative model of skin; :func:`fit_albedo_pca` turns N such draws into the linear model
``T = mean + basis a`` with ``a ~ N(0, I)`` that :class:`morphable.model.AlbedoModel` evaluates. All
colours are display RGB in [0, 1] (Phong is applied to them directly, no gamma), one per face-area vertex
(``model.regions['face']``, Vf = 9409); the layout uses the mean shape (mm, y up, face along +z).

The generative skin model (:func:`sample_skin`; one draw = one face; all randomness from one
``numpy.random.Generator``): Beer-Lambert chromophores, ``rgb = BASE * exp(-(M eps_m + H' eps_h + C eps_c))``
per vertex (melanin, haemoglobin shielded by the melanin above it, carotene); a skin tone drawn evenly over
Fitzpatrick types I..VI (:data:`FITZPATRICK_MELANIN`); regions on the mean shape (:class:`SkinLayout`: lips,
eyelids, cheeks, nose, ears, eyebrows, beard); smooth random blotches and freckles.

PCA (:func:`fit_albedo_pca`): the N draws (N, 3 Vf) are centred and decomposed through the eigen-
decomposition of their N x N Gram matrix (the thin SVD ``X = U S V^T``; N << 3 Vf); the basis keeps the
Ka leading columns ``V_k s_k / sqrt(N - 1)``, so ``a ~ N(0, I)`` reproduces the sample covariance on the
kept components.

Each step of the skin model, its constants and what the committed PCA keeps: ``docs/tuning.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import AlbedoModel

#: Defaults of the committed model.
N_SAMPLES = 2000
N_COMPONENTS = 60
SEED = 0

#: Chromophore layer: rgb = BASE * exp(-(M EPS_MELANIN + H EPS_HAEMOGLOBIN + C EPS_CAROTENE)).
BASE = np.array([0.97, 0.90, 0.86])
EPS_MELANIN = np.array([1.00, 1.25, 1.50])
EPS_HAEMOGLOBIN = np.array([0.04, 0.55, 0.38])
EPS_CAROTENE = np.array([0.00, 0.05, 0.40])
#: Melanin at the boundaries of Fitzpatrick types I..VI: type k covers f in [k, k + 1) of the continuous
#: type f ~ U[0, 6), mapped piecewise linearly. Chosen so that the luma of plain skin (haemoglobin 0.25,
#: carotene 0.17) falls evenly from 0.78 (f = 0) to 0.20 (f = 6).
FITZPATRICK_MELANIN = np.array([0.05, 0.16, 0.29, 0.44, 0.63, 0.87, 1.21])
#: Hair colours from black to blond (display RGB), indexed by hair lightness in [0, 1].
HAIR_RAMP = np.array(
    [[0.035, 0.030, 0.028], [0.10, 0.070, 0.050], [0.24, 0.16, 0.10], [0.42, 0.31, 0.20], [0.60, 0.48, 0.33]]
)
RED_HAIR = np.array([0.48, 0.22, 0.10])
GREY_HAIR = np.array([0.52, 0.51, 0.50])
BEARD_PROB = 0.3
#: Haemoglobin is divided by 1 + MELANIN_SHIELD * (the face's melanin).
MELANIN_SHIELD = 1.2
FRECKLE_MAX_SPOTS = 250
_BATCH = 32  # faces generated at once (fixed: the draws depend on it)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``e0``, 1 above ``e1``, cubic in between (e0 > e1 gives the falling edge)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from points to segments, and the position along each segment.

    Args:
        p: (P, D) points; a, b: (S, D) segment ends.
    Returns:
        dist: (P, S); t: (P, S) in [0, 1] (0 at ``a``).
    """
    ab = b - a
    t = np.einsum("psd,sd->ps", p[:, None] - a[None], ab) / np.maximum((ab * ab).sum(-1), 1e-12)
    t = np.clip(t, 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(p[:, None] - closest, axis=-1), t


def polygon_signed_distance(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Signed distance of 2D points to a closed polygon: negative inside.

    Args:
        points: (P, 2); polygon: (Q, 2) corners in order (closed implicitly).
    Returns:
        (P,) distance in the points' units.
    """
    a, b = polygon, np.roll(polygon, -1, axis=0)
    dist = _segment_distance(points, a, b)[0].min(1)
    # Even-odd rule: count the edges a horizontal ray to +x crosses.
    x, y = points[:, :1], points[:, 1:]
    crosses = (a[None, :, 1] > y) != (b[None, :, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[None, :, 0] + (y - a[None, :, 1]) * (b[None, :, 0] - a[None, :, 0]) / (
            b[None, :, 1] - a[None, :, 1])
    inside = (crosses & (x < x_cross)).sum(1) % 2 == 1
    return np.where(inside, -dist, dist)


@dataclass(frozen=True)
class SkinLayout:
    """Where the regions of the skin model are, on the face-area vertices of the mean shape.

    positions: (Vf, 3) mm; every other field (Vf,) float64 weight in [0, 1]: ``lips``, ``eyelids``,
    ``cheeks`` (both cheeks), ``nose`` (tip and alae), ``ears``, ``brows`` (hair coverage of a dense
    brow), ``beard`` (coverage of a full beard), ``freckle_zone`` (where freckles may fall).
    """

    positions: np.ndarray
    lips: np.ndarray
    eyelids: np.ndarray
    cheeks: np.ndarray
    nose: np.ndarray
    ears: np.ndarray
    brows: np.ndarray
    beard: np.ndarray
    freckle_zone: np.ndarray
    freckle_cdf: np.ndarray = field(repr=False)  # (Vf,) cumulative freckle_zone, for centre sampling

    @property
    def n_vertices(self) -> int:
        return len(self.positions)

    @classmethod
    def from_model(cls, model) -> "SkinLayout":
        """Layout of :class:`morphable.model.FaceModel` ``model`` (its mean shape and 68 landmarks)."""
        idx = model.regions["face"]
        return cls.from_geometry(model.mean[idx], model.mean[model.landmarks68])

    @classmethod
    def from_geometry(cls, positions: np.ndarray, landmarks: np.ndarray) -> "SkinLayout":
        """Layout from the face-area vertices and the 68 landmarks of one neutral face.

        Args:
            positions: (Vf, 3) mm, y up, face along +z; landmarks: (68, 3) mm, Multi-PIE order.
        """
        p = np.asarray(positions, np.float64)
        lm = np.asarray(landmarks, np.float64)
        if p.ndim != 2 or p.shape[1] != 3:
            raise ValueError(f"positions must be (Vf, 3), got {p.shape}")
        if lm.shape != (68, 3):
            raise ValueError(f"landmarks must be (68, 3), got {lm.shape}")
        xy, z = p[:, :2], p[:, 2]

        def front_of(ref: np.ndarray, depth: float) -> np.ndarray:
            """1 for vertices not deeper than ``depth`` mm behind the landmarks ``ref``, smooth edge."""
            return _smoothstep(ref[:, 2].min() - depth - 5.0, ref[:, 2].min() - depth, z)

        def blob(centre: np.ndarray, sigma: float) -> np.ndarray:
            """3D Gaussian around the front-most vertex whose x-y is nearest ``centre`` (x, y)."""
            near = np.linalg.norm(xy - centre, axis=1) < 4.0
            c = p[near][np.argmax(z[near])] if near.any() else p[np.argmin(np.linalg.norm(xy - centre, axis=1))]
            return np.exp(-0.5 * ((p - c) ** 2).sum(1) / sigma ** 2)

        # Lips: inside the outer contour, smooth 2.5 mm edge.
        outer_lip = lm[48:60]
        lips = _smoothstep(1.5, -1.0, polygon_signed_distance(xy, outer_lip[:, :2])) * front_of(outer_lip, 18.0)

        # Eyelids: around each eye contour, stronger and wider above the eye.
        eyelids = np.zeros(len(p))
        for eye in (lm[36:42], lm[42:48]):
            d = polygon_signed_distance(xy, eye[:, :2])
            above = _smoothstep(-2.0, 3.0, xy[:, 1] - eye[:, 1].mean())
            width = 4.0 + 5.0 * above
            w = np.exp(-0.5 * (np.maximum(d, 0.0) / width) ** 2) * front_of(eye, 20.0)
            eyelids = np.maximum(eyelids, w * (0.55 + 0.45 * above))

        # Redness: cheeks below the outer eye corners, nose tip and alae, ears.
        eye_y = lm[36:48, 1].mean()
        cheek_y = 0.5 * (eye_y + lm[33, 1])
        cheeks = np.maximum(blob(np.array([0.85 * lm[36, 0], cheek_y]), 14.0),
                            blob(np.array([0.85 * lm[45, 0], cheek_y]), 14.0))
        nose = np.maximum.reduce([blob(lm[30, :2] - [0.0, 3.0], 7.0), blob(lm[31, :2] + [-2.0, 2.0], 5.0),
                                  blob(lm[35, :2] + [2.0, 2.0], 5.0)])
        jaw_top = lm[[0, 16]]
        ear_x, ear_y = np.abs(jaw_top[:, 0]).mean(), jaw_top[:, 1].mean()
        ears = (_smoothstep(ear_x - 4.0, ear_x + 4.0, np.abs(xy[:, 0]))
                * _smoothstep(ear_y - 45.0, ear_y - 30.0, xy[:, 1]))

        # Eyebrows: a band around a centre line 3 mm under the brow landmarks (their upper edge), from the
        # head (inner end, rounded, a little sparse) over the arch to a thin tail.
        brows = np.zeros(len(p))
        rows = np.arange(len(p))
        for brow in (lm[17:22][::-1], lm[22:27]):  # from the head to the tail
            centre = brow[:, :2] - [0.0, 3.0]
            d_seg, t_seg = _segment_distance(xy, centre[:-1], centre[1:])
            k = d_seg.argmin(1)
            s = (k + t_seg[rows, k]) / (len(brow) - 1)  # 0 at the head, 1 at the tail
            half = np.interp(s, [0.0, 0.25, 0.6, 1.0], [3.6, 4.6, 3.8, 1.6])  # half-thickness, mm
            inside = _smoothstep(half + 1.0, half - 1.0, d_seg[rows, k])
            density = (0.7 + 0.3 * _smoothstep(0.0, 0.2, s)) * (1.0 - 0.35 * s ** 2)
            brows = np.maximum(brows, inside * density * front_of(brow, 25.0))

        # Beard: below a cheek line from the nose base over the cheeks up to the ears, above the neck.
        ax = np.abs(xy[:, 0])
        nose_base_y = lm[33, 1]
        line_x = np.array([0.0, 0.2, 0.38, 0.6, 0.8, 0.95]) * ear_x
        line_y = nose_base_y + np.array([0.0, -2.0, -8.0, -2.0, 12.0, 40.0])
        below_line = _smoothstep(6.0, -12.0, xy[:, 1] - np.interp(ax, line_x, line_y))
        chin_y = lm[8, 1]
        above_neck = _smoothstep(chin_y - 28.0, chin_y - 6.0, xy[:, 1])
        not_ear = _smoothstep(ear_x + 2.0, ear_x - 6.0, ax)
        not_lips = 1.0 - _smoothstep(-1.0, 2.5, -polygon_signed_distance(xy, outer_lip[:, :2]) + 2.5)
        beard = below_line * above_neck * not_ear * not_lips

        # Freckles: nose bridge and tip, upper cheeks, a little on the forehead.
        freckle_zone = np.clip(
            np.exp(-0.5 * ((xy[:, 0] / 38.0) ** 2 + ((xy[:, 1] - (eye_y - 18.0)) / 16.0) ** 2))
            + 0.35 * np.exp(-0.5 * ((xy[:, 0] / 45.0) ** 2 + ((xy[:, 1] - (eye_y + 45.0)) / 15.0) ** 2)),
            0.0, 1.0) * front_of(lm[27:36], 30.0) * (1.0 - eyelids) * (1.0 - lips)
        cdf = np.cumsum(freckle_zone)
        return cls(p, lips, eyelids, cheeks, nose, ears, brows, beard, freckle_zone, cdf / cdf[-1])


def fourier_fields(rng: np.random.Generator, positions: np.ndarray, n_fields: int, length_mm: float,
                   n_features: int = 32) -> np.ndarray:
    """Smooth random fields on 3D points: random Fourier features of a Gaussian kernel.

    Args:
        rng: generator; positions: (V, 3) mm; n_fields: how many independent fields;
        length_mm: kernel length (blob size); n_features: cosines per field.
    Returns:
        (n_fields, V) float32, each field roughly N(0, 1) at every point.
    """
    omega = rng.standard_normal((n_fields, 3, n_features)) / length_mm
    phase = rng.uniform(0.0, 2.0 * np.pi, (n_fields, 1, n_features))
    arg = positions.astype(np.float32) @ omega.astype(np.float32) + phase.astype(np.float32)
    return (np.sqrt(2.0 / n_features) * np.cos(arg).sum(-1)).astype(np.float32)


def chromophore_rgb(melanin: np.ndarray, haemoglobin: np.ndarray, carotene: np.ndarray) -> np.ndarray:
    """Display RGB of the layer model: (...,) concentrations (arbitrary units, >= 0) -> (..., 3) in (0, 1)."""
    od = (melanin[..., None] * EPS_MELANIN + haemoglobin[..., None] * EPS_HAEMOGLOBIN
          + carotene[..., None] * EPS_CAROTENE)
    return BASE * np.exp(-od)


def _hair_colour(rng: np.random.Generator, fitz: np.ndarray) -> np.ndarray:
    """(B,) Fitzpatrick type in [0, 6) -> (B, 3) hair colour; darker skin gets darker hair."""
    B = len(fitz)
    lightness = rng.uniform(size=B) ** (1.0 + 1.2 * fitz)
    ramp_x = np.linspace(0.0, 1.0, len(HAIR_RAMP))
    hair = np.stack([np.interp(lightness, ramp_x, HAIR_RAMP[:, c]) for c in range(3)], axis=-1)
    u_red, u_grey, grey_amount = rng.uniform(size=(3, B))
    hair = np.where((u_red < 0.12 * (fitz < 2.5))[:, None], RED_HAIR * rng.uniform(0.7, 1.1, (B, 1)), hair)
    return np.where((u_grey < 0.08)[:, None], hair + (GREY_HAIR - hair) * grey_amount[:, None], hair)


def _sample_batch(layout: SkinLayout, rng: np.random.Generator, B: int) -> np.ndarray:
    """B faces of the generative model: (B, Vf, 3) float32 in [0, 1] (see the module docstring)."""
    L = layout
    V = L.n_vertices
    u = lambda lo, hi: rng.uniform(lo, hi, (B, 1))  # noqa: E731  one value per face, broadcast over vertices

    # Global tone: type f ~ U[0, 6) -> melanin, then haemoglobin and carotene.
    fitz = rng.uniform(0.0, 6.0, B)
    mel0 = np.interp(fitz, np.arange(7), FITZPATRICK_MELANIN)[:, None] * rng.lognormal(0.0, 0.06, (B, 1))
    hb0 = u(0.15, 0.38)
    car = u(0.0, 0.35) * np.ones((1, V))

    # Smooth blotches (relative melanin, absolute haemoglobin).
    fields = fourier_fields(rng, L.positions, 4 * B, 35.0, n_features=16).reshape(B, 4, V)
    fine = fourier_fields(rng, L.positions, 2 * B, 12.0, n_features=24).reshape(B, 2, V)
    mel_var = 1.0 + u(0.03, 0.12) * fields[:, 0] + u(0.0, 0.07) * fine[:, 0]
    hb_var = u(0.02, 0.10) * fields[:, 1] + u(0.0, 0.06) * fine[:, 1]

    # Regions.
    lip_mel = u(0.85, 1.35)
    lip_hb = u(0.7, 1.6)
    lid_dark = u(0.0, 0.45)
    lid_pink = u(0.0, 0.25)
    cheek_red = u(0.0, 0.30) * (1.0 + 0.2 * fields[:, 2])
    nose_red = u(0.0, 0.30)
    ear_red = u(0.05, 0.3)
    melanin = mel0 * mel_var * (1.0 + (lip_mel - 1.0) * L.lips) * (1.0 + lid_dark * L.eyelids)
    haemo = (hb0 + hb_var + lip_hb * L.lips + lid_pink * L.eyelids + cheek_red * L.cheeks
             + nose_red * L.nose + ear_red * L.ears)

    # Freckles: small Gaussian spots at vertices drawn from the freckle zone, on some faces.
    has_freckles = rng.uniform(size=B) < np.where(fitz < 2.0, 0.45, 0.12)
    n_spots = rng.integers(60, FRECKLE_MAX_SPOTS + 1, B)
    centres = np.minimum(np.searchsorted(L.freckle_cdf, rng.uniform(size=(B, FRECKLE_MAX_SPOTS))), V - 1)
    radius = rng.uniform(0.8, 1.6, (B, FRECKLE_MAX_SPOTS))
    used = np.arange(FRECKLE_MAX_SPOTS)[None] < n_spots[:, None]
    strength = rng.uniform(0.3, 1.0, (B, FRECKLE_MAX_SPOTS)) * used
    freckle_mel = u(0.15, 0.4) * (0.3 + mel0)
    zone = np.flatnonzero(L.freckle_zone > 1e-3)
    pz = L.positions[zone]
    for b in np.flatnonzero(has_freckles):  # one face at a time, spots x zone vertices at once
        c = L.positions[centres[b]]  # (S, 3)
        d2 = (pz * pz).sum(1)[None] + (c * c).sum(1)[:, None] - 2.0 * c @ pz.T  # (S, Vz)
        spots = strength[b] @ np.exp(-0.5 * np.maximum(d2, 0.0) / radius[b][:, None] ** 2)
        melanin[b, zone] += freckle_mel[b] * np.minimum(spots, 1.0)

    # Epidermal melanin shields the dermal blood: redness shows less on darker skin.
    rgb = chromophore_rgb(np.maximum(melanin, 0.0), np.maximum(haemo, 0.0) / (1.0 + MELANIN_SHIELD * mel0), car)

    # Hair: eyebrows, then beard / stubble, blended over the skin.
    hair = _hair_colour(rng, fitz)[:, None, :]  # (B, 1, 3)
    brow_hair = hair * rng.uniform(0.6, 1.0, (B, 1, 1))  # brows a little darker than the head hair
    brow_density = u(0.45, 0.9) * np.clip(1.0 + 0.35 * fine[:, 0], 0.0, None)
    a_brow = np.clip(brow_density * L.brows, 0.0, 1.0)[..., None]
    rgb = rgb + (brow_hair - rgb) * a_brow
    has_beard = rng.uniform(size=(B, 1)) < BEARD_PROB
    beard_density = u(0.08, 0.35) * has_beard * np.clip(1.0 + 0.3 * fields[:, 3], 0.0, None)
    a_beard = np.clip(beard_density * L.beard, 0.0, 1.0)[..., None]
    rgb = rgb + (hair - rgb) * a_beard
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def sample_skin(layout: SkinLayout, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` faces of the generative skin model.

    Args:
        layout: :class:`SkinLayout` of the face model; n: number of faces; rng: the only randomness.
    Returns:
        (n, Vf, 3) float32 display RGB in [0, 1].
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return np.concatenate([_sample_batch(layout, rng, min(_BATCH, n - s)) for s in range(0, n, _BATCH)])


@dataclass(frozen=True)
class AlbedoPCA:
    """A fitted albedo PCA: the linear model and what it keeps.

    model: the :class:`AlbedoModel` (mean (Vf, 3), basis (Vf, 3, Ka)); explained: (Ka,) fraction of the
    samples' total variance per kept component; n_samples: N.
    """

    model: AlbedoModel
    explained: np.ndarray
    n_samples: int

    def attrs(self) -> dict:
        """HDF5 attributes describing the model."""
        return {
            "description": "linear albedo T = mean + basis a, a ~ N(0, I); display RGB in [0, 1] per face-area "
                           "vertex (no gamma); PCA of a generative skin model (morphable/albedo.py)",
            "n_samples": int(self.n_samples),
            "n_components": int(self.model.n_components),
            "explained_variance": float(self.explained.sum()),
            "explained_variance_per_component": self.explained.astype(np.float32),
            "basis_scaling": "columns V_k s_k / sqrt(N - 1): a ~ N(0, 1) reproduces the sample covariance",
        }


def fit_albedo_pca(samples: np.ndarray, n_components: int) -> AlbedoPCA:
    """PCA of albedo samples, scaled so that unit-normal coefficients reproduce their covariance.

    Args:
        samples: (N, Vf, 3) albedo draws (not modified); n_components: Ka, at most N - 1.
    Returns:
        :class:`AlbedoPCA` with float32 mean (Vf, 3) and basis (Vf, 3, Ka).
    """
    if samples.ndim != 3 or samples.shape[-1] != 3:
        raise ValueError(f"samples must be (N, Vf, 3), got {samples.shape}")
    N, V, _ = samples.shape
    if not 1 <= n_components <= N - 1:
        raise ValueError(f"n_components must be in [1, N - 1 = {N - 1}], got {n_components}")
    X = samples.reshape(N, -1).astype(np.float64)
    mean = X.mean(0)
    X -= mean  # X is our own copy
    # X = U S V^T; the Gram matrix X X^T = U S^2 U^T is N x N (N << 3 Vf).
    eigval, U = np.linalg.eigh(X @ X.T)
    order = np.argsort(eigval)[::-1]
    eigval, U = np.maximum(eigval[order], 0.0), U[:, order]
    s = np.sqrt(eigval[:n_components])
    if s[-1] <= 1e-9 * s[0]:
        raise ValueError(f"the samples have rank < {n_components}: ask for fewer components")
    Vk = (X.T @ U[:, :n_components]) / s  # (3 Vf, Ka) orthonormal columns
    basis = Vk * (s / np.sqrt(N - 1))
    explained = eigval[:n_components] / eigval.sum()
    model = AlbedoModel(mean.reshape(V, 3).astype(np.float32),
                        basis.reshape(V, 3, n_components).astype(np.float32))
    return AlbedoPCA(model, explained, N)


def albedo_coeffs(albedo_model: AlbedoModel, albedo: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of albedo maps in the model (the basis columns are orthogonal).

    Args:
        albedo: (B, Vf, 3) or (Vf, 3) display RGB.
    Returns:
        (B, Ka) or (Ka,) float64.
    """
    single = albedo.ndim == 2
    Bm = albedo_model.basis.reshape(-1, albedo_model.n_components).astype(np.float64)
    d = (np.atleast_3d(albedo[None] if single else albedo) - albedo_model.mean[None]).reshape(
        1 if single else len(albedo), -1)
    a = (d @ Bm) / (Bm * Bm).sum(0)
    return a[0] if single else a


def build_albedo_pca(model, n_samples: int = N_SAMPLES, n_components: int = N_COMPONENTS,
                     seed: int = SEED) -> AlbedoPCA:
    """Draw ``n_samples`` faces of the generative model on ``model``'s face area and fit the PCA."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return fit_albedo_pca(sample_skin(SkinLayout.from_model(model), n_samples, rng), n_components)


def build_albedo_model(model, n_samples: int = N_SAMPLES, n_components: int = N_COMPONENTS,
                       seed: int = SEED) -> AlbedoModel:
    """The albedo model of :class:`morphable.model.FaceModel` ``model``: Ka = ``n_components`` modes."""
    return build_albedo_pca(model, n_samples, n_components, seed).model


#: write_albedo rounds to multiples of this (far below an 8-bit display step, 1/255): halves the gzip size.
STORE_QUANTUM = 2.0 ** -18


def write_albedo(h5_path, albedo_model: AlbedoModel, attrs: dict | None = None,
                 quantum: float = STORE_QUANTUM) -> None:
    """Write (or replace) the group ``albedo`` of an existing model file.

    Args:
        h5_path: the model file (:class:`morphable.model.FaceModel` reads ``albedo/mean`` (Vf, 3) and
            ``albedo/basis`` (Vf, 3, Ka), both float32, gzip).
        albedo_model: the model to write (not modified).
        attrs: extra attributes of the group (e.g. :meth:`AlbedoPCA.attrs`).
        quantum: values are rounded to multiples of ``quantum`` (0: stored exactly).
    """
    import h5py

    mean, basis = albedo_model.mean, albedo_model.basis
    if mean.ndim != 2 or mean.shape[1] != 3 or basis.ndim != 3 or basis.shape[:2] != mean.shape:
        raise ValueError(f"albedo mean must be (Vf, 3) and basis (Vf, 3, Ka), got {mean.shape}, {basis.shape}")

    def stored(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return (np.round(x / quantum) * quantum if quantum > 0 else x).astype(np.float32)

    comp = dict(compression="gzip", compression_opts=9, shuffle=True)
    with h5py.File(h5_path, "a") as f:
        if "albedo" in f:
            del f["albedo"]
        g = f.create_group("albedo")
        g.create_dataset("mean", data=stored(mean), **comp)
        # One chunk per component: gzip sees a whole smooth field at once.
        g.create_dataset("basis", data=stored(basis), chunks=(len(mean), 3, 1), **comp)
        g.attrs["units"] = "display RGB in [0, 1], no gamma; rows: the model.regions['face'] vertices"
        g.attrs["quantum"] = float(quantum)
        for k, v in (attrs or {}).items():
            g.attrs[k] = v
