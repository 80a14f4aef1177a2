"""Identity from the image: a face-recognition descriptor (:mod:`coarse.recognition`) mapped to the face model's
identity coefficients, as a Gaussian prior for the coarse fits.

A recognition network is trained to tell people apart whatever their pose, light and expression, so its 128
numbers carry the identity that 68 landmarks and the shading barely constrain. :class:`IdentityMap` holds a map
learned on synthetic faces (``train identity``, :mod:`training.identity`): the descriptor, standardised, through
an affine map (ridge regression) or a small network (one hidden layer, ReLU), gives the expected identity
``mean`` (n_id,); the covariance of its error on held-out faces, ``cov`` (n_id, n_id), says how far to trust it.
:meth:`IdentityMap.prior` turns that into the fits' prior (:class:`coarse.fit.CoefficientPrior`): identity ~
N(mean, cov) instead of N(0, I).

Inference is numpy only (no torch): the file (``identity.weights`` in ``pipeline.yaml``, an ``.npz``) holds the
arrays and a JSON record of how it was made.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "facesynth-identity-map/1"


@dataclass(frozen=True)
class IdentityMap:
    """descriptor (D,) -> identity ~ N(mean (n_id,), cov (n_id, n_id)).

    x_mean, x_scale: (D,) standardisation of the descriptor; layers: [(W (in, out), b (out,)), ...] applied in
    turn with a ReLU between them (one layer: an affine map); y_scale: (n_id,) a per-mode factor on the output
    (shrinkage chosen on held-out faces; ones for none); cov: (n_id, n_id) the covariance of the identity's
    error on held-out faces; kind: ``ridge`` or ``mlp``; provenance: how it was made.
    """

    x_mean: np.ndarray
    x_scale: np.ndarray
    layers: list
    y_scale: np.ndarray
    cov: np.ndarray
    kind: str
    provenance: dict = field(default_factory=dict)

    @property
    def n_identity(self) -> int:
        return len(self.y_scale)

    def predict(self, descriptors: np.ndarray) -> np.ndarray:
        """(N, D) or (D,) descriptors -> (N, n_id) or (n_id,) expected identity coefficients."""
        x = np.atleast_2d(np.asarray(descriptors, np.float64))
        h = (x - self.x_mean) / self.x_scale
        for k, (W, b) in enumerate(self.layers):
            h = h @ W + b
            if k < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        out = h * self.y_scale
        return out[0] if np.ndim(descriptors) == 1 else out

    def prior(self, descriptor: np.ndarray, base, n_identity: int | None = None):
        """The fits' prior (:class:`coarse.fit.CoefficientPrior`) ``base`` with its identity block replaced by
        N(:meth:`predict`, ``cov``); with ``n_identity`` only the first that many modes (the out-of-span check:
        the rest keep ``base``'s block)."""
        n = self.n_identity if n_identity is None else int(n_identity)
        mean = self.predict(descriptor)[:n]
        if n == 0:
            return base
        cov = self.cov[:n, :n]
        if n == self.n_identity:
            return base.with_identity(mean, cov)
        full = np.diag(1.0 / np.diag(base.whiten)[:self.n_identity] ** 2)  # base's own (diagonal) identity block
        full[:n, :n] = cov
        full[:n, n:] = full[n:, :n] = 0.0
        return base.with_identity(np.r_[mean, base.mean[n:self.n_identity]], full)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write the map to ``path`` (``.npz``, atomically)."""
        from facesynth.io import atomic_path

        arrays = {"x_mean": self.x_mean, "x_scale": self.x_scale, "y_scale": self.y_scale, "cov": self.cov}
        for k, (W, b) in enumerate(self.layers):
            arrays[f"W{k}"], arrays[f"b{k}"] = W, b
        meta = {"format": FORMAT, "kind": self.kind, "layers": len(self.layers), "provenance": self.provenance}
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{k: np.asarray(v, np.float64) for k, v in arrays.items()})
        return path


def load_identity_map(path: str | Path) -> IdentityMap:
    """Read an :class:`IdentityMap` written by :meth:`IdentityMap.save`; ``ValueError`` for another file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            layers = [(f[f"W{k}"], f[f"b{k}"]) for k in range(int(meta["layers"]))]
            out = IdentityMap(f["x_mean"], f["x_scale"], layers, f["y_scale"], f["cov"], meta["kind"],
                              meta.get("provenance", {}))
    except (OSError, KeyError, ValueError, AttributeError) as e:  # not an .npz, or not ours
        raise ValueError(f"{path} is not a readable identity map ({str(e).splitlines()[0][:80]})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not an identity map (format {meta.get('format')!r})")
    return out
