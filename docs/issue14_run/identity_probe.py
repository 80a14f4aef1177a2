"""Issue 14, session 9: is the face's identity in the network's last features? (docs/issue14_run.md section 13)

A linear probe: the shipped candidate's last feature map (``pool`` x ``pool`` average-pooled; 1: the whole 8 x 8
map), with a_t, regressed by ridge onto the identity correction (a_gt - a_t, first ``model.n_identity``) on the
first half of N cached pairs the network never trained on, and scored on the second half with the true
expression: the vertex error of `train evaluate` (similarity-aligned, narrow face, mm). Beside it: zero identity,
a_t's identity and the network's own. If a probe trained on identity alone cannot do much better than the
network, the features do not hold the identity, whatever the head.

usage: python docs/issue14_run/identity_probe.py CACHE.h5 N POOL [WEIGHTS]
"""
import sys

import numpy as np
import torch

from coarse.network import load_iterative
from morphable.model import load_model
from training.cache import CacheDataset
from training.metrics import coefficient_errors

cache, n, pool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = load_iterative(sys.argv[4] if len(sys.argv) > 4 else "data/iterative_candidate.pt")
net, model = w.net.eval(), load_model(w.config.resolve_path(w.config.model.path))
ni = model.n_identity
feats, a_t, a_gt, a_net = [], [], [], []
with torch.no_grad():
    for b in CacheDataset(cache, None, 0, 64, frame=w.frame):  # no augmentation, inputs cut as in training
        f = net.backbone(b["input"])  # once: the probe's features and the network's own answer
        feats.append((f if pool == 1 else torch.nn.functional.avg_pool2d(f, pool)).flatten(1).numpy())
        a_t.append(b["alpha_t"].numpy())
        a_gt.append(b["alpha_gt"].numpy())
        a_net.append(net.forward_head(net.regression(f), b["alpha_t"].float()).numpy())
        if sum(map(len, feats)) >= n:
            break
F, T, G, P = (np.concatenate(a)[:n] for a in (feats, a_t, a_gt, a_net))
half, test = n // 2, np.arange(n // 2, n)
X = np.concatenate([F, T], 1).astype(np.float64)
X = (X - X[:half].mean(0)) / (X[:half].std(0) + 1e-6)
Y = (G - T)[:, :ni].astype(np.float64)


def error(identity: np.ndarray) -> float:
    """Mean vertex error (mm) of the test pairs with this identity and the true expression."""
    a = G[test].copy()
    a[:, :ni] = identity
    return float(coefficient_errors(model, a, G[test]).mean())


print(f"{n} pairs of {cache}, features {F.shape[1]}; test half, identity from: zero {error(np.zeros_like(T[test, :ni])):.3f}, "
      f"a_t {error(T[test, :ni]):.3f}, network {error(P[test, :ni]):.3f}", flush=True)
gram, rhs = X[:half].T @ X[:half], X[:half].T @ Y[:half]
for lam in (1e1, 1e2, 1e3, 1e4, 1e5):
    probe = T[test, :ni] + X[test] @ np.linalg.solve(gram + lam * np.eye(len(gram)), rhs)
    print(f"ridge {lam:g}: probe {error(probe):.3f}", flush=True)
