"""Identity from the image: what a face-recognition network sees, mapped to the face model's identity.

``train identity-data`` renders photo-like synthetic faces (the ``identity`` section of ``pipeline.yaml``: the
scene sampler's faces, expressions, skins, lights and backgrounds at ``identity.image_size`` pixels, yaw within
refine's range, a share through a pinhole camera, the photo-light options), runs the real front end on each
(:func:`coarse.detect.detect_faces`, dlib's 68 points) and keeps the recognition descriptor
(:func:`coarse.recognition.face_descriptor`) beside the truth. The file (HDF5, :data:`FORMAT`, written in
resumable parts like a ``train cache`` file, :func:`training.cache.write_parts`) holds, for faces 0 .. N-1::

    descriptor  (N, 128) float32    NaN where the detector found no face
    alpha_gt    (N, K) float32      the true coefficients, identity first
    points      (N, 68, 2) float32  the detector's landmarks, pixels (NaN where none)
    found       (N,) bool
    index       (N,) int64

Face i depends on (``identity.seed``, i) only, so the file is the same for any number of workers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import write_parts
from .data import OnlineDataset

FORMAT = "facesynth-identity-faces/1"
ARRAYS = ("descriptor", "alpha_gt", "points", "found", "index")


def identity_scene_config(cfg):
    """``cfg`` with the scene sampler set for the identity faces (the ``identity`` section)."""
    from facesynth.config import override

    idc = cfg.identity
    for key, value in (("render.image_size", idc.image_size), ("sampling.pose.yaw_std_deg", idc.yaw_std_deg),
                       ("sampling.pose.max_yaw_deg", idc.max_yaw_deg),
                       ("sampling.pose.perspective_prob", idc.perspective_prob),
                       ("sampling.light.occlusion_max", idc.occlusion_max),
                       ("sampling.light.shadow_prob", idc.shadow_prob),
                       ("sampling.light.srgb_prob", idc.srgb_prob)):
        cfg = override(cfg, key, value)
    return cfg


def data_config(cfg) -> dict:
    """What the identity faces depend on: the scene sampler's sections (as set by
    :func:`identity_scene_config`), the model and the detector's settings."""
    full = identity_scene_config(cfg).to_dict()
    return {k: full[k] for k in ("model", "sampling", "render", "detect")}


class IdentitySource(OnlineDataset):
    """Records of :data:`ARRAYS` (one rendered, detected, described face each) for :func:`write_parts`."""

    def record(self, index: int) -> dict:
        from coarse.detect import ReconstructionInputError, detect_faces
        from coarse.recognition import DESCRIPTOR_SIZE, face_descriptor
        from datagen.faces import online_faces
        from datagen.shards import to_uint8

        model, renderer = self._renderer()
        face = next(online_faces(self.cfg, 1, self.seed, model, renderer, start=index))
        rgb = to_uint8(face.rgb)
        desc = np.full(DESCRIPTOR_SIZE, np.nan, np.float32)
        points = np.full((68, 2), np.nan, np.float32)
        try:
            det = detect_faces(rgb, self.cfg.detect)[0]
            desc, points = face_descriptor(rgb, det.landmarks), det.landmarks.astype(np.float32)
        except ReconstructionInputError:
            pass
        return {"descriptor": desc, "alpha_gt": np.asarray(face.alpha_gt, np.float32), "points": points,
                "found": np.bool_(np.isfinite(desc).all()), "index": np.int64(index)}

    @staticmethod
    def collate(records: list[dict]) -> dict:
        return {k: np.stack([r[k] for r in records]) for k in ARRAYS}


def write_identity_data(cfg, out: str | Path, n: int, seed: int, workers: int = 0, progress: bool = True) -> dict:
    """Render, detect and describe faces 0 .. ``n`` - 1 of the identity set ``seed`` into ``out`` (module
    docstring); resumable: the same command after a kill does only the missing parts. Returns ``{"path", "n",
    "rendered"}``."""
    scene_cfg = identity_scene_config(cfg)
    meta = {"format": FORMAT, "seed": int(seed), "chunk": int(cfg.identity.chunk), "config": data_config(cfg)}
    return write_parts(out, meta, n, lambda first: IdentitySource(scene_cfg, seed, first, n, batch_size=meta["chunk"]),
                       workers, progress)


def read_identity_data(path: str | Path) -> dict:
    """The arrays of an identity-faces file (:data:`ARRAYS`) and its ``info`` (:func:`training.cache.read_cache_info`)."""
    import h5py

    from .cache import read_cache_info

    info = read_cache_info(path, FORMAT)
    with h5py.File(path, "r") as f:
        out = {k: f[k][...] for k in ARRAYS}
    out["info"] = info
    return out


# ---------------------------------------------------------------------------------------------- the map
def _geometry_metric(model, n_identity: int) -> np.ndarray:
    """(n_id, n_id) G with e^T G e the mean squared per-coordinate vertex error over the narrow face (mm^2) of an
    identity error e (expression zero)."""
    return model.gram("narrow_face")[:n_identity, :n_identity]


def explained(G: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> float:
    """Share of the identity's geometric variance (narrow face, mm^2) that ``pred`` explains: 1 - E e^T G e /
    E y^T G y over faces (truth and pred (N, n_id))."""
    e = truth - pred
    return float(1.0 - np.einsum("ni,ij,nj->", e, G, e) / np.einsum("ni,ij,nj->", truth, G, truth))


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, scale = X.mean(0), X.std(0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_ridge(X: np.ndarray, Y: np.ndarray, lam: float):
    """Ridge regression of Y (N, n) on standardised X (N, D) with an intercept: the :class:`coarse.identity.IdentityMap`
    layers [(W (D, n), b (n,))] and the standardisation (x_mean, x_scale)."""
    x_mean, x_scale = _standardise(X)
    Z = (X - x_mean) / x_scale
    y_mean = Y.mean(0)
    W = np.linalg.solve(Z.T @ Z + lam * np.eye(Z.shape[1]), Z.T @ (Y - y_mean))
    return [(W, y_mean)], x_mean, x_scale


def fit_mlp(X: np.ndarray, Y: np.ndarray, G: np.ndarray, hidden: int, weight_decay: float, epochs: int, seed: int):
    """A one-hidden-layer network (ReLU) from standardised X to Y trained with the geometric loss e^T G e
    (Adam, full batch; torch): its layers [(W1, b1), (W2, b2)] and the standardisation."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x_mean, x_scale = _standardise(X)
    Z = torch.as_tensor((X - x_mean) / x_scale, dtype=torch.float32)
    T = torch.as_tensor(Y, dtype=torch.float32)
    Gt = torch.as_tensor(G, dtype=torch.float32)
    W1 = torch.nn.Parameter(torch.randn(Z.shape[1], hidden, generator=g) * (2.0 / Z.shape[1]) ** 0.5)
    b1 = torch.nn.Parameter(torch.zeros(hidden))
    W2 = torch.nn.Parameter(torch.zeros(hidden, Y.shape[1]))
    b2 = torch.nn.Parameter(T.mean(0).clone())
    opt = torch.optim.AdamW([W1, b1, W2, b2], lr=3e-3, weight_decay=weight_decay)
    for _ in range(epochs):
        opt.zero_grad()
        e = torch.relu(Z @ W1 + b1) @ W2 + b2 - T
        loss = ((e @ Gt) * e).sum(1).mean()
        loss.backward()
        opt.step()
    to = lambda t: t.detach().double().numpy()  # noqa: E731
    return [(to(W1), to(b1)), (to(W2), to(b2))], x_mean, x_scale


def cross_validated(fit, X: np.ndarray, Y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions (N, n) of ``fit(X, Y) -> IdentityMap-like .predict`` over ``folds`` folds
    (a seeded shuffle)."""
    order = np.random.default_rng(seed).permutation(len(X))
    pred = np.empty_like(Y)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        pred[test] = fit(X[train], Y[train]).predict(X[test])
    return pred


class _Fitted:
    """A fitted candidate: its layers and standardisation, with :meth:`predict` (for :func:`cross_validated`)."""

    def __init__(self, layers, x_mean, x_scale, y_scale=None):
        self.layers, self.x_mean, self.x_scale = layers, x_mean, x_scale
        self.y_scale = np.ones(layers[-1][1].shape) if y_scale is None else y_scale

    def predict(self, X):
        from coarse.identity import IdentityMap

        return IdentityMap(self.x_mean, self.x_scale, self.layers, self.y_scale, np.eye(len(self.y_scale)),
                           "").predict(X)


def train_identity_map(cfg, data_path, progress: bool = True) -> tuple[object, dict]:
    """Learn the descriptor -> identity map from an identity-faces file (module docstring) and measure it.

    The faces the detector found are split by index: the last ``identity.test_share`` are held out. On the rest,
    each candidate (ridge regression for each of ``identity.lambdas``; a one-hidden-layer network of
    ``identity.mlp_hidden`` units) is scored by ``identity.folds``-fold cross-validation (the share of the
    identity's geometric variance over the narrow face it explains, :func:`explained`); ``identity.regressor``
    (``auto``: the best of them) is refitted on all of it; each output mode's scale is then set from the
    out-of-fold predictions (least squares: a prediction shrunk too much or too little per mode), and the
    covariance of their error is the map's ``cov``. Returns the :class:`coarse.identity.IdentityMap` and the
    report: per candidate the cross-validated figure, and for the chosen map on the held-out faces the
    explained variance, R^2 per mode and the prediction's norm against the truth's.
    """
    from coarse.identity import IdentityMap
    from morphable.model import load_model

    idc = cfg.identity
    data = read_identity_data(data_path)
    found = data["found"]
    model = load_model(cfg.resolve_path(cfg.model.path))
    n_id = model.n_identity
    X = data["descriptor"][found].astype(np.float64)
    Y = data["alpha_gt"][found][:, :n_id].astype(np.float64)
    n_test = int(round(idc.test_share * len(X)))
    Xtr, Ytr, Xte, Yte = X[:len(X) - n_test], Y[:len(X) - n_test], X[len(X) - n_test:], Y[len(X) - n_test:]
    G = _geometry_metric(model, n_id)

    candidates = {f"ridge lambda={lam:g}": (lambda X_, Y_, lam=lam: _Fitted(*fit_ridge(X_, Y_, lam)))
                  for lam in idc.lambdas}
    candidates[f"mlp hidden={idc.mlp_hidden}"] = (lambda X_, Y_: _Fitted(*fit_mlp(
        X_, Y_, G, idc.mlp_hidden, idc.mlp_weight_decay, idc.mlp_epochs, idc.seed)))
    scores, oof = {}, {}
    for name, fit in candidates.items():
        if idc.regressor != "auto" and not name.startswith(idc.regressor):
            continue
        oof[name] = cross_validated(fit, Xtr, Ytr, idc.folds, idc.seed)
        scores[name] = explained(G, Ytr, oof[name])
        if progress:
            print(f"identity: {name}: cross-validated explained variance {scores[name]:.3f}", flush=True)
    best = max(scores, key=scores.get)
    p = oof[best]
    y_scale = np.clip((p * Ytr).sum(0) / np.maximum((p * p).sum(0), 1e-12), 0.0, 3.0)  # per-mode least squares
    cov = np.cov((Ytr - p * y_scale).T)
    fitted = candidates[best](Xtr, Ytr)
    kind = "ridge" if best.startswith("ridge") else "mlp"
    provenance = {"data": str(data_path), "faces": int(len(X)), "faces_train": int(len(Xtr)),
                  "faces_test": int(n_test), "seed": data["info"]["seed"], "chosen": best,
                  "cross_validated": scores}
    id_map = IdentityMap(fitted.x_mean, fitted.x_scale, fitted.layers, y_scale, cov, kind, provenance)
    pred = id_map.predict(Xte)
    r2 = 1 - ((Yte - pred) ** 2).sum(0) / ((Yte - Yte.mean(0)) ** 2).sum(0)
    report = {"chosen": best, "cross_validated_explained": scores,
              "test": {"faces": int(n_test), "explained_identity_variance": explained(G, Yte, pred),
                       "explained_without_mode_scale": explained(G, Yte, fitted.predict(Xte)),
                       "r2_per_mode": r2.tolist(), "prediction_norm": float(np.linalg.norm(pred, axis=1).mean()),
                       "truth_norm": float(np.linalg.norm(Yte, axis=1).mean())},
              "detector_found": float(found.mean())}
    return id_map, report


def draw_identity_report(report: dict, path) -> None:
    """PNG: R^2 per identity mode on the held-out faces, and each candidate's cross-validated figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from facesynth.io import atomic_path

    fig = Figure(figsize=(11, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    r2 = report["test"]["r2_per_mode"]
    a.bar(np.arange(len(r2)), r2, color="tab:blue")
    a.set_xlabel("identity mode")
    a.set_ylabel("R² on held-out faces")
    a.set_title(f"{report['chosen']}: {report['test']['explained_identity_variance']:.1%} of the identity's "
                f"geometric variance explained ({report['test']['faces']} faces)", fontsize=9)
    names = list(report["cross_validated_explained"])
    b.barh(names, [report["cross_validated_explained"][n] for n in names], color="tab:gray")
    b.set_xlabel("explained variance (cross-validated)")
    b.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
