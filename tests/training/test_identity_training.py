"""train identity-data and train identity (training/identity.py): the faces file of descriptors and truth, written
in resumable parts, and the map learned from it, chosen by cross-validation and reported on held-out faces."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from training.identity import ARRAYS, FORMAT, explained, read_identity_data, train_identity_map


def _small(cfg_path, tmp_path, **identity):
    import yaml

    p = tmp_path / "small.yaml"
    p.write_text(yaml.safe_dump({"identity": {"image_size": 256, "chunk": 2, "n": 4, "folds": 3,
                                              "mlp_epochs": 30, **identity}}))
    return p


def test_identity_data_renders_detects_and_describes_faces(tmp_path):
    from training.cli import main

    cfg = _small(None, tmp_path)
    out = tmp_path / "faces.h5"
    res = CliRunner().invoke(main, ["identity-data", "--config", str(cfg), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output[-800:]
    d = read_identity_data(out)
    assert d["info"]["format"] == FORMAT and d["info"]["n"] == 4 and set(ARRAYS) <= set(d)
    assert d["found"].sum() >= 3 and list(d["index"]) == [0, 1, 2, 3]
    f = d["found"]
    assert np.isfinite(d["descriptor"][f]).all() and np.isnan(d["descriptor"][~f]).all()
    assert np.all(np.abs(np.linalg.norm(d["descriptor"][f], axis=1) - 1) < 0.5)  # dlib's descriptors: ~unit length
    assert d["alpha_gt"].shape == (4, 153) and not (tmp_path / "faces.h5.parts").exists()
    again = CliRunner().invoke(main, ["identity-data", "--config", str(cfg), "--out", str(out), "--quiet"])
    assert again.exit_code == 0 and "0 now" in again.output  # complete: nothing rendered again


def _fake_faces(path, n, seed=0, noise=0.3):
    """An identity-faces file whose descriptors are a fixed linear function of the first 20 identity modes plus
    noise (so a linear map explains most of those modes' variance)."""
    rng = np.random.default_rng(seed)
    alpha = np.zeros((n, 153), np.float32)
    alpha[:, :100] = rng.normal(size=(n, 100))
    A = rng.normal(size=(20, 128))
    desc = (alpha[:, :20] @ A + noise * rng.normal(size=(n, 128))).astype(np.float32)
    found = rng.uniform(size=n) > 0.05
    desc[~found] = np.nan
    with h5py.File(path, "w") as f:
        for k, v in (("descriptor", desc), ("alpha_gt", alpha), ("points", np.zeros((n, 68, 2), np.float32)),
                     ("found", found), ("index", np.arange(n))):
            f[k] = v
        f.attrs.update({"format": FORMAT, "seed": 1, "n": n, "config": json.dumps({})})


def test_the_map_is_chosen_by_cross_validation_and_reported_on_held_out_faces(cfg, model, tmp_path):
    from facesynth.config import override

    path = tmp_path / "fake.h5"
    _fake_faces(path, 600)
    c = override(override(override(cfg, "identity.folds", 3), "identity.mlp_epochs", 40), "identity.test_share", 0.2)
    id_map, rep = train_identity_map(c, path, progress=False)
    assert rep["chosen"] in rep["cross_validated_explained"]
    assert set(rep["cross_validated_explained"]) == {f"ridge lambda={lam:g}" for lam in c.identity.lambdas} | {
        f"mlp hidden={c.identity.mlp_hidden}"}
    t = rep["test"]
    assert t["faces"] == round(0.2 * rep_found(path)) and len(t["r2_per_mode"]) == 100
    assert np.mean(t["r2_per_mode"][:20]) > 0.6 and abs(np.mean(t["r2_per_mode"][20:])) < 0.15
    G = model.gram("narrow_face")[:100, :100]
    d = read_identity_data(path)
    X, Y = d["descriptor"][d["found"]], d["alpha_gt"][d["found"]][:, :100]
    assert explained(G, Y[-t["faces"]:], id_map.predict(X[-t["faces"]:])) == pytest.approx(
        t["explained_identity_variance"])
    w = np.linalg.eigvalsh(id_map.cov)
    assert w.min() > 0 and id_map.cov.shape == (100, 100)  # a covariance the fits can whiten
    ridge_only = override(c, "identity.regressor", "ridge")
    assert train_identity_map(ridge_only, path, progress=False)[1]["chosen"].startswith("ridge")


def rep_found(path) -> int:
    return int(read_identity_data(path)["found"].sum())


def test_train_identity_writes_the_map_and_its_report(tmp_path):
    from coarse.identity import load_identity_map
    from training.cli import main

    path = tmp_path / "fake.h5"
    _fake_faces(path, 300)
    cfg = _small(None, tmp_path, folds=2, mlp_epochs=10, regressor="ridge")
    out = tmp_path / "map.npz"
    res = CliRunner().invoke(main, ["identity", "--config", str(cfg), "--data", str(path), "--out", str(out),
                                    "--quiet"])
    assert res.exit_code == 0, res.output[-800:]
    m = load_identity_map(out)
    assert m.kind == "ridge" and m.provenance["faces"] == rep_found(path) and m.provenance["command"] == "train identity"
    rep = json.loads((tmp_path / "identity_report.json").read_text())
    assert rep["test"]["explained_identity_variance"] > 0.1
    assert (tmp_path / "identity_report.png").stat().st_size > 0
    bad = CliRunner().invoke(main, ["identity", "--data", str(tmp_path / "missing.h5"), "--out", str(out)])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and bad.output.count("\n") <= 1
