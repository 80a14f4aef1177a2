"""Random faces: identity, expression and albedo coefficients, as configured in ``pipeline.yaml``.

- identity: N(0, std^2) per mode (std = 1: the modes are PCA modes with unit variance);
- expression (weights in [0, 1]): a fraction ``neutral_prob`` of faces is neutral; otherwise each
  blendshape is active with probability ``active_prob`` and an active weight is Beta(a, b); with
  probability ``symmetric_prob`` a face copies each active _L weight to its _R twin (and back), as most
  expressions are symmetric. With probability ``extreme_prob`` one of the ``extreme_sets`` (wide-open jaw,
  full smile, closed eyes, raised brows, ...) is set to U[extreme_min, 1], so extremes are in the data;
- albedo: N(0, std^2) per component of the albedo model.
"""
from __future__ import annotations

import numpy as np


def sample_identity(rng: np.random.Generator, model, cfg) -> np.ndarray:
    """(100,) identity weights."""
    return (rng.standard_normal(model.n_identity) * cfg.std).astype(np.float32)


def _twins(names: list[str]) -> np.ndarray:
    """Index of each blendshape's left/right twin (itself when it has none)."""
    idx = np.arange(len(names))
    for i, n in enumerate(names):
        for a, b in (("_L", "_R"), ("_R", "_L")):
            if n.endswith(a) and n[:-2] + b in names:
                idx[i] = names.index(n[:-2] + b)
    return idx


def sample_expression(rng: np.random.Generator, model, cfg) -> np.ndarray:
    """(53,) expression weights in [0, 1] (see the module docstring for the distribution)."""
    n = model.n_expression
    w = np.zeros(n, np.float32)
    # Draw every random number in a fixed order, whatever the branch, so the stream stays aligned.
    u_neutral, u_sym, u_ext = rng.uniform(size=3)
    active = rng.uniform(size=n) < cfg.active_prob
    weights = rng.beta(cfg.beta_a, cfg.beta_b, size=n)
    ext_set = rng.integers(len(cfg.extreme_sets)) if cfg.extreme_sets else 0
    ext_w = rng.uniform(cfg.extreme_min, 1.0)
    if u_neutral >= cfg.neutral_prob:
        w[active] = weights[active]
        if u_sym < cfg.symmetric_prob:
            twin = _twins(model.expression_names)
            w = np.maximum(w, w[twin])
    if u_ext < cfg.extreme_prob and cfg.extreme_sets:
        for name in cfg.extreme_sets[ext_set]:
            w[model.expression_index(name)] = ext_w
    # Blendshapes that move the same part in opposite directions are not combined at full strength.
    return np.clip(w, 0.0, 1.0)


def sample_shape(rng: np.random.Generator, model, sampling_cfg) -> np.ndarray:
    """(K,) = [identity (100), expression (53)]."""
    return model.join(sample_identity(rng, model, sampling_cfg.identity),
                      sample_expression(rng, model, sampling_cfg.expression))


def sample_albedo_coeffs(rng: np.random.Generator, model, cfg) -> np.ndarray:
    """(Ka,) albedo coefficients (empty when the model has no albedo model)."""
    ka = 0 if model.albedo_model is None else model.albedo_model.n_components
    return (rng.standard_normal(ka) * cfg.std).astype(np.float32)
