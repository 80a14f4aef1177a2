"""Where a landmark detector's 68 points lie on the face model, learned from renders whose truth is known.

A detector does not put its points on the vertices the model's authors chose: dlib's chin sits lower, its eyes
higher, its jaw line on the silhouette. A :class:`LandmarkModel` says, per landmark, which model point the
detector marks and how far it scatters:

- inner points (brows, nose, eyes, mouth; and any landmark not on the contour): a surface point, a triangle
  and barycentric weights, so it moves with identity and expression like the skin under it;
- jaw line (0-16): a *contour*: an ordered row of candidate vertices running from the face's middle outwards
  (front view), of which the one furthest out in the image for the current pose is the landmark (the
  silhouette "marches" over the skin as the head turns);
- offset_mm: (68, 2) what stays after that, a mean offset in the image plane (x right, y down), in mm at
  the face (pixels / pose scale);
- sigma_mm: (68,) the scatter (per coordinate, mm) of the detector around the calibrated point: the
  landmark term's noise in :func:`coarse.fit.fit_map`.

Frames: model points in mm (y up, face along +z); image points in pixels (x right, y down), as
:mod:`render.camera`. The calibration itself (:func:`calibrate`) is run by ``train calibrate-landmarks``; the
result ships as JSON beside the face model (``model.landmarks``) with the command that made it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from render.camera import Pose

#: Multi-PIE jaw line (face contour) landmarks: silhouette points.
CONTOUR = np.arange(0, 17)
FORMAT = "facesynth-landmarks/1"


@dataclass(frozen=True)
class LandmarkModel:
    """The detector's 68 landmarks on the face model (module docstring).

    triangles: (68,) int triangle of each surface point (used for landmarks not on the contour);
    bary: (68, 3) float barycentric weights in that triangle;
    contour: (17, M) int candidate vertices of jaw landmarks 0-16, padded with -1 (M >= 1);
    offset_mm: (68, 2) float image-plane offset (x right, y down), mm;
    sigma_mm: (68,) float detector scatter per coordinate, mm (of the detector that found most faces);
    detector_scale: {detector name: factor} the scatter of faces another detector found, relative to sigma_mm
        (e.g. dlib's CNN, which finds the turned faces HOG misses, and whose landmarks are worse);
    provenance: how it was made (command, renders, detector).
    """

    triangles: np.ndarray
    bary: np.ndarray
    contour: np.ndarray
    offset_mm: np.ndarray
    sigma_mm: np.ndarray
    detector_scale: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def sigma(self, detector: str | None = None) -> np.ndarray:
        """(68,) the scatter (mm) of landmarks found by ``detector`` (None: the main one)."""
        return self.sigma_mm * float(self.detector_scale.get(detector, 1.0))

    def vertex_rows(self, model, alpha: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 68 points as linear functions of the coefficients, for the contour choice of ``alpha`` seen
        under ``rotation``.

        Returns:
            (mean (68, 3) float64 mm, basis (68, 3, K) float64) so that the points are ``mean + basis @ a``.
        """
        tri = model.triangles[self.triangles]  # (68, 3)
        w = self.bary[:, :, None]
        mean = (w * model.mean[tri].astype(np.float64)).sum(1)
        basis = np.einsum("lj,ljck->lck", self.bary, model.basis[tri].astype(np.float64))
        idx = self.contour_vertices(model, alpha, rotation)
        mean[CONTOUR] = model.mean[idx]
        basis[CONTOUR] = model.basis[idx]
        return mean, basis

    def contour_vertices(self, model, alpha: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(17,) the candidate of each jaw landmark furthest out in the image (the silhouette) for the face
        ``alpha`` (K,) under ``rotation`` (3, 3)."""
        cand = self.contour
        valid = cand >= 0
        safe = np.where(valid, cand, 0)
        verts = model.mean[safe] + np.einsum("lmck,k->lmc", model.basis[safe], np.asarray(alpha, np.float32))
        R2 = np.asarray(rotation, np.float64)[:2]
        img = verts @ R2.T  # (17, M, 2) camera x, y (y up)
        # outwards: the row's direction in the front view (x, y; from the middle to its end), as the pose shows it
        first, last = model.mean[safe[:, 0]], model.mean[np.take_along_axis(safe, (valid.sum(1) - 1)[:, None], 1)[:, 0]]
        out = (last - first) * np.array([1.0, 1.0, 0.0])
        direction = out @ R2.T
        direction /= np.maximum(np.linalg.norm(direction, axis=-1, keepdims=True), 1e-9)
        reach = np.where(valid, (img * direction[:, None]).sum(-1), -np.inf)
        return np.take_along_axis(safe, reach.argmax(1)[:, None], 1)[:, 0]

    def project(self, model, alpha: np.ndarray, pose: Pose, warp=None) -> np.ndarray:
        """(68, 2) where the detector is expected to put its points for face ``alpha`` under ``pose``, pixels.
        ``warp``: None, or a function of (68, 3) model-frame points (mm) giving those the weak-perspective
        ``pose`` draws where another camera sees them (:func:`datagen.scene.camera_points`)."""
        mean, basis = self.vertex_rows(model, alpha, pose.rotation)
        p = mean + basis @ np.asarray(alpha, np.float64)
        if warp is not None:
            p = warp(p)
        cam = p @ np.asarray(pose.rotation, np.float64)[:2].T
        x = pose.scale * (cam[:, 0] + self.offset_mm[:, 0]) + pose.translation[0]
        y = pose.translation[1] - pose.scale * (cam[:, 1] - self.offset_mm[:, 1])
        return np.stack([x, y], -1)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "triangles": self.triangles.tolist(), "bary": np.round(self.bary, 6).tolist(),
                "contour": self.contour.tolist(), "offset_mm": np.round(self.offset_mm, 4).tolist(),
                "sigma_mm": np.round(self.sigma_mm, 4).tolist(),
                "detector_scale": {k: round(float(v), 4) for k, v in self.detector_scale.items()},
                "provenance": self.provenance}

    @staticmethod
    def from_dict(d: dict) -> "LandmarkModel":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a facesynth landmark model (format {d.get('format')!r}, expected {FORMAT})")
        return LandmarkModel(np.asarray(d["triangles"], np.int64), np.asarray(d["bary"], np.float64),
                             np.asarray(d["contour"], np.int64), np.asarray(d["offset_mm"], np.float64),
                             np.asarray(d["sigma_mm"], np.float64), dict(d.get("detector_scale", {})),
                             dict(d.get("provenance", {})))


def vertex_landmarks(model, sigma_mm: float = 1.0) -> LandmarkModel:
    """The model's own 68 landmark vertices, no offset, ``sigma_mm`` everywhere, each contour row a single
    vertex: the uncalibrated landmarks (for synthetic landmarks projected from those vertices)."""
    # the first corner (in triangle order) that is each landmark vertex: weight 1 there
    hit = np.asarray(model.triangles).reshape(-1)[None, :] == np.asarray(model.landmarks68)[:, None]  # (68, 3F)
    first = hit.argmax(1)
    triangles, corner = first // 3, first % 3
    bary = np.zeros((68, 3))
    bary[np.arange(68), corner] = 1.0
    return LandmarkModel(triangles.astype(np.int64), bary, np.asarray(model.landmarks68)[CONTOUR, None].astype(np.int64),
                         np.zeros((68, 2)), np.full(68, float(sigma_mm)), {}, {"made_by": "vertex_landmarks"})


def load_landmark_model(path: str | Path) -> LandmarkModel:
    """Read a landmark model JSON (:meth:`LandmarkModel.to_dict`)."""
    path = Path(path)
    try:
        return LandmarkModel.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"cannot read landmark model {path}: {e}") from None


# ---------------------------------------------------------------------------------------------- calibration
def contour_rows(model, max_candidates: int = 48, band_mm: float = 3.0) -> np.ndarray:
    """(17, M) candidate vertices of each jaw landmark on the mean face, padded with -1.

    Row k runs, in the front view (x, y), from the face's middle towards ICT's jaw vertex k and a little
    beyond: horizontally for the sides (landmarks 0-5 and 11-16), radially from below the mouth for the chin
    (6-10); narrow-face vertices within ``band_mm`` of that line, ordered outwards.
    """
    P = model.mean.astype(np.float64)
    nf = np.asarray(model.regions["narrow_face"])
    xy = P[nf, :2]
    rows = []
    for k in CONTOUR:
        end = P[model.landmarks68[k], :2]
        start = np.array([0.0, end[1]]) if abs(end[0]) > 35.0 else np.array([0.0, -30.0])
        d = end - start
        length = np.linalg.norm(d)
        d /= length
        rel = xy - start
        t = rel @ d / length
        off = np.abs(rel @ np.array([-d[1], d[0]]))
        keep = (off < band_mm) & (t > 0.35) & (t < 1.08)
        order = nf[keep][np.argsort(t[keep])]
        if len(order) > max_candidates:
            order = order[np.linspace(0, len(order) - 1, max_candidates).round().astype(int)]
        rows.append(order)
    M = max(len(r) for r in rows)
    out = -np.ones((17, M), np.int64)
    for k, r in enumerate(rows):
        out[k, :len(r)] = r
    return out


def _snap_to_surface(model, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) model-frame points -> the closest points of the mean face's narrow area as (triangles (N,),
    barycentric weights (N, 3))."""
    import trimesh

    tri_ids = np.nonzero(np.all(model.triangles < len(model.regions["narrow_face"]), axis=1))[0]
    tris = model.triangles[tri_ids]
    mesh = trimesh.Trimesh(model.mean, tris, process=False)
    closest, _, local = trimesh.proximity.closest_point_naive(mesh, points)
    corners = model.mean[tris[local]]
    bary = trimesh.triangles.points_to_barycentric(corners, closest)
    return tri_ids[local], np.clip(bary, 0.0, 1.0) / np.clip(bary, 0.0, 1.0).sum(1, keepdims=True)


def calibrate(model, records: dict, provenance: dict | None = None) -> LandmarkModel:
    """Learn a :class:`LandmarkModel` from renders with known truth and the detector's points on them.

    Args:
        records: arrays over N renders: ``alpha`` (N, K) true coefficients; ``scale`` (N,), ``rotation``
            (N, 3, 3), ``translation`` (N, 2) true poses; ``detected`` (N, 68, 2) the detector's points
            (pixels; NaN where nothing was found); ``face_id`` (N, 68) the true mesh's triangle under each
            detected point (-1 off the mesh) and ``bary`` (N, 68, 3) its barycentric weights there.
        provenance: stored with the result.
    Returns:
        The calibrated model: surface points for the landmarks off the jaw line (the median over renders of
        the model point under the detected pixel, carried to the mean face), contour rows for the jaw
        line, then per landmark the median image-plane offset and the robust scatter (1.4826 MAD) of what
        is left, in mm.
    """
    found = np.isfinite(records["detected"]).all((1, 2))
    if found.sum() < 10:
        raise ValueError(f"calibration needs at least 10 renders where the detector found the face; got {found.sum()}")
    fid, bary = records["face_id"][found], records["bary"][found]
    on = fid >= 0
    hit = np.einsum("nkj,nkjc->nkc", bary, model.mean[model.triangles[np.maximum(fid, 0)]].astype(np.float64))
    start = vertex_landmarks(model)
    targets = model.mean[model.landmarks68].astype(np.float64)
    for k in range(68):
        if k not in CONTOUR and on[:, k].sum() >= 5:
            targets[k] = np.median(hit[on[:, k], k], axis=0)
    tri, bw = _snap_to_surface(model, targets)
    keep = np.isin(np.arange(68), CONTOUR)
    tri[keep], bw[keep] = start.triangles[keep], start.bary[keep]
    lm = LandmarkModel(tri, bw, contour_rows(model), np.zeros((68, 2)), np.ones(68))
    res = []
    for i in np.nonzero(found)[0]:
        pose = Pose(float(records["scale"][i]), records["rotation"][i], records["translation"][i])
        res.append((records["detected"][i] - lm.project(model, records["alpha"][i], pose)) / pose.scale)
    res = np.stack(res)  # (n, 68, 2) mm, image frame (x right, y down)
    kinds = np.asarray(records.get("detector", np.full(len(found), "main")))[found]
    names, counts = np.unique(kinds, return_counts=True)
    # the reference detector: the most accurate of those that found at least a tenth of the faces
    spread = {k: np.median(np.abs(res[kinds == k] - np.median(res[kinds == k], 0))) for k in names}
    ref = min((k for k, c in zip(names, counts) if c >= 0.1 * len(kinds)), key=spread.get)
    main = kinds == ref
    offset = np.median(res[main], axis=0)
    mad = lambda r: 1.4826 * np.median(np.abs(r - offset), axis=(0, 2))  # noqa: E731  (robust std per landmark)
    sigma = mad(res[main])
    scale = {str(k): float(np.median(mad(res[kinds == k]) / sigma)) for k in names if k != ref}
    prov = dict(provenance or {}, renders=int(len(found)), found=int(found.sum()), main_detector=str(ref),
                residual_rms_mm_before=float(np.sqrt((res[main] ** 2).sum(-1).mean())),
                residual_rms_mm_after=float(np.sqrt(((res[main] - offset) ** 2).sum(-1).mean())),
                residual_median_mm=float(np.median(np.linalg.norm(res[main] - offset, axis=-1))))
    return LandmarkModel(tri, bw, lm.contour, offset, sigma, scale, prov)


def noisy_landmarks(points: np.ndarray, noise_px: float, rng: np.random.Generator) -> np.ndarray:
    """``points`` (N, 2) pixels plus Gaussian noise of ``noise_px`` pixels (std, each coordinate), drawn as one
    ``rng.normal`` call of ``points``' shape: synthetic faces' true landmarks made detector-like."""
    return points + rng.normal(0.0, noise_px, np.shape(points))



# ---------------------------------------------------------------------------------------------- simulation
#: Multi-PIE landmark groups (jaw, brows, nose, eyes, mouth): a detector errs alike within a group.
GROUPS = (range(0, 17), range(17, 27), range(27, 36), range(36, 48), range(48, 68))
_GROUP_OF = np.concatenate([np.full(len(g), i) for i, g in enumerate(GROUPS)])


def _followed(alpha: np.ndarray, n_identity: int, follow) -> np.ndarray:
    a = np.asarray(alpha, np.float64).copy()
    a[:n_identity] *= follow[0]
    a[n_identity:] *= follow[1]
    return a


def detector_noise(lm_model: LandmarkModel, model, records: dict) -> dict:
    """How a detector's points scatter around the calibrated ones, beyond ``sigma``: measured on calibration
    records (the arrays of :func:`calibrate`: ``alpha``, ``scale``, ``rotation``, ``translation``,
    ``detected``, ``detector``), for :func:`simulated_detections`.

    Returns a JSON-ready dict:
        ``follow``: {detector: [identity, expression]} the fraction of the face's deviation from the mean face
        (identity part, expression part) its points follow (least squares over the inner landmarks 17-67, the
        face's mean shift removed; 1 = unbiased, < 1 = pulled towards the mean face);
        ``dof``: Student-t degrees of freedom of the residual (after ``follow``, in units of ``sigma``)
        matching its 95 % / 50 % quantile ratio of |z|;
        ``shared``, ``group``: correlation of two landmarks' residuals (per coordinate, Spearman, averaged over
        pairs): over all pairs, and what pairs within one :data:`GROUPS` entry add.
    """
    from scipy.stats import spearmanr, t

    kinds = np.asarray(records["detector"]).astype(str)
    found = np.isfinite(records["detected"]).all((1, 2)) & (kinds != "none")
    inner = np.arange(17, 68)
    n_id = model.n_identity
    res, dev_id, dev_exp = {}, {}, {}
    for i in np.nonzero(found)[0]:
        pose = Pose(float(records["scale"][i]), records["rotation"][i], records["translation"][i])
        a = np.asarray(records["alpha"][i], np.float64)
        base = lm_model.project(model, np.zeros_like(a), pose)
        ident = lm_model.project(model, _followed(a, n_id, (1.0, 0.0)), pose)
        full = lm_model.project(model, a, pose)
        for store, v in ((res, records["detected"][i] - full), (dev_id, ident - base), (dev_exp, full - ident)):
            store.setdefault(kinds[i], []).append(v / pose.scale)
    follow, z = {}, []
    for k in res:
        r, di, de = (np.stack(d[k]) for d in (res, dev_id, dev_exp))
        centred = [(x - x[:, inner].mean(1, keepdims=True))[:, inner].ravel() for x in (r, di, de)]
        coef = np.linalg.lstsq(np.stack(centred[1:], 1), centred[0], rcond=None)[0]
        follow[k] = [round(float(1.0 + c), 4) for c in coef]
        rest = r - coef[0] * di - coef[1] * de - lm_model.offset_mm
        z.append(rest / lm_model.sigma(k)[:, None])
    z = np.concatenate(z)
    absz = np.abs(z - np.median(z, 0))
    ratio = np.quantile(absz, 0.95) / np.quantile(absz, 0.5)
    dofs = np.arange(2.0, 30.5, 0.5)
    dof = float(dofs[np.argmin(np.abs(t.ppf(0.975, dofs) / t.ppf(0.75, dofs) - ratio))])
    corr = np.mean([spearmanr(z[:, :, c]).correlation for c in (0, 1)], axis=0)
    off = ~np.eye(68, dtype=bool)
    same = (_GROUP_OF[:, None] == _GROUP_OF[None, :]) & off
    shared = float(np.clip(np.nan_to_num(np.nanmean(corr[off])), 0.0, 0.9))
    group = float(np.clip(np.nan_to_num(np.nanmean(corr[same])) - shared, 0.0, 0.9 - shared))
    return {"follow": follow, "dof": dof, "shared": round(shared, 3), "group": round(group, 3),
            "faces": int(found.sum())}


def simulated_detections(lm_model: LandmarkModel, model, alpha: np.ndarray, pose: Pose, rng: np.random.Generator,
                         noise: dict | None = None, error_scale: float = 1.0, warp=None) -> tuple[np.ndarray, str]:
    """Where the calibrated detector would put its 68 points on face ``alpha`` (K,) under ``pose``: for
    training pairs whose start is the landmark fit, without running the detector.

    The detector is drawn from the calibration's shares (``provenance["detectors"]``, faces it missed left
    out; the main detector alone without shares). Its points are :meth:`LandmarkModel.project` of the face
    pulled towards the mean face by the detector's ``follow`` fractions, plus noise: per coordinate, a shared
    term (``shared`` of the variance), one per landmark group (``group``) and one per landmark (the rest),
    Gaussian, times one Student-t scale per face (``dof``), so each point's error is Student-t (heavy tails),
    scaled so that its robust scatter (1.4826 MAD) is the detector's ``sigma`` (mm) times ``pose.scale``
    (px/mm), and the points of one face err together, as measured. ``noise``: that model, a dict of
    :func:`detector_noise` (default the landmark model's ``provenance["noise_model"]``; without one:
    unbiased, independent points, ``dof`` 3). ``error_scale`` s >= 0 scales the detector's error, its noise
    and its pull (a follow fraction f becomes 1 - s (1 - f)): 1 the detector as calibrated, 0 exact points;
    the draws are the same for every s. ``warp``: the camera's, as in :meth:`LandmarkModel.project`.

    Draws, in order: ``rng.choice``; ``rng.standard_normal`` (1, 2), (5, 2), (68, 2); ``rng.chisquare``.

    Returns:
        (points (68, 2) float64 pixels (x right, y down), the detector's name).
    """
    from scipy.stats import norm, t

    nm = dict(lm_model.provenance.get("noise_model", {}) if noise is None else noise)
    shares = {k: v for k, v in lm_model.provenance.get("detectors", {}).items() if k != "none" and v > 0}
    names = sorted(shares)
    if names:
        counts = np.array([shares[k] for k in names], np.float64)
        detector = names[int(rng.choice(len(names), p=counts / counts.sum()))]
    else:
        detector = str(lm_model.provenance.get("main_detector", "main"))
    dof, shared, group = float(nm.get("dof", 3.0)), float(nm.get("shared", 0.0)), float(nm.get("group", 0.0))
    if not (dof > 0 and shared >= 0 and group >= 0 and shared + group <= 1):
        raise ValueError(f"noise model needs dof > 0, shared, group >= 0 and shared + group <= 1; got {nm}")
    z = (np.sqrt(shared) * rng.standard_normal((1, 2))
         + np.sqrt(group) * rng.standard_normal((len(GROUPS), 2))[_GROUP_OF]
         + np.sqrt(1.0 - shared - group) * rng.standard_normal((68, 2)))
    z *= np.sqrt(dof / rng.chisquare(dof))  # one scale per face: each coordinate is Student-t
    mad_to_scale = norm.ppf(0.75) / t.ppf(0.75, dof)  # a t variable of this scale has the normal's MAD
    if error_scale < 0:
        raise ValueError(f"error_scale must be >= 0; got {error_scale}")
    follow = np.asarray(nm.get("follow", {}).get(detector, (1.0, 1.0)), np.float64)
    if error_scale != 1.0:  # not rewritten at 1: 1 - (1 - f) may differ from f in the last bit
        follow = 1.0 - error_scale * (1.0 - follow)
    points = lm_model.project(model, _followed(alpha, model.n_identity, follow), pose, warp)
    return points + z * (error_scale * lm_model.sigma(detector) * pose.scale * mad_to_scale)[:, None], detector
