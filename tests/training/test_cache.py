"""The training cache: pairs rendered once (``train cache``), read back with augmentation
(``train iterative --cache``); round trip, resume after a kill, the stream's exact resume, training from it."""
from __future__ import annotations

import csv
import dataclasses

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from datagen.sample import network_input
from datagen.shards import to_uint8
from facesynth.config import load_config, override
from training.cache import CacheDataset, augment, check_cache, read_cache_info, write_cache
from training.cli import main as cli
from training.data import OnlineDataset
from training.train import TrainingError, load_checkpoint, train_iterative

SIZE = 64
N = 10


@pytest.fixture(scope="module")
def small_cfg(model_path):
    return load_config(overrides={
        "render.image_size": SIZE, "render.backend": "numba", "train.start": "fit", "train.cache_chunk": 4,
        "train.batch": 4, "train.steps": 2, "train.val_samples": 4, "train.val_every": 1,
        "train.checkpoint_every": 1, "train.device": "cpu", "train.workers": 0})


@pytest.fixture(scope="module")
def cache_file(small_cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "pairs.h5"
    result = write_cache(small_cfg, path, N, 3, progress=False)
    assert result == {"path": str(path), "n": N, "rendered": N}
    return path


def test_cache_holds_the_online_samples_in_8_bits(small_cfg, cache_file):
    ds = OnlineDataset(small_cfg, 3)
    with h5py.File(cache_file, "r") as f:
        assert f["inputs"].shape == (N, 2, SIZE, SIZE) and f["inputs"].dtype == np.uint8
        np.testing.assert_array_equal(f["index"][:], np.arange(N))
        for i in (0, 5, N - 1):
            s, draw = ds.sample(i)
            np.testing.assert_array_equal(f["inputs"][i], to_uint8(network_input(s.image, s.shading)))
            np.testing.assert_array_equal(f["alpha_gt"][i], s.scene.alpha_gt.astype(np.float32))
            np.testing.assert_array_equal(f["alpha_t"][i], draw.alpha_t)
            np.testing.assert_array_equal(f["alpha_fit"][i], draw.alpha_fit)
            np.testing.assert_array_equal(f["points"][i], draw.points)
    info = read_cache_info(cache_file)
    assert info["n"] == N and info["seed"] == 3 and info["shape"] == (2, SIZE, SIZE)
    assert not cache_file.with_name(cache_file.name + ".parts").exists()
    assert write_cache(small_cfg, cache_file, N, 3, progress=False)["rendered"] == 0  # done: nothing to do
    with pytest.raises(TrainingError, match="another cache .*seed"):
        write_cache(small_cfg, cache_file, N, 4, progress=False)


def test_a_killed_cache_resumes_with_the_same_bytes(small_cfg, cache_file, tmp_path, monkeypatch):
    import training.cache as cache_module

    real_savez, calls = np.savez, []

    def dying_savez(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_savez(*args, **kwargs)

    path = tmp_path / "pairs.h5"
    monkeypatch.setattr(cache_module.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        write_cache(small_cfg, path, N, 3, progress=False)
    monkeypatch.setattr(cache_module.np, "savez", real_savez)
    parts = sorted(p.name for p in (tmp_path / "pairs.h5.parts").iterdir())
    assert parts == ["meta.json", "part_000000000_000000004.npz"] and not path.exists()
    with pytest.raises(TrainingError, match="parts of another cache"):
        write_cache(override(small_cfg, "train.start_fit_prob", 0.5), path, N, 3, progress=False)
    # resumed with another n: the finished part is kept, the rest rendered
    assert write_cache(small_cfg, path, 8, 3, progress=False)["rendered"] == 4
    with h5py.File(path, "r") as a, h5py.File(cache_file, "r") as b:
        for k in b:
            np.testing.assert_array_equal(a[k][:], b[k][:8])
    with pytest.raises(TrainingError, match="another cache .*n: 8 there, 10 now"):
        write_cache(small_cfg, path, N, 3, progress=False)


def test_augment(small_cfg, cache_file):
    aug = small_cfg.train.augment
    with h5py.File(cache_file, "r") as f:
        x = torch.from_numpy(f["inputs"][:4])
    none = dataclasses.replace(aug, shift=0.0, scale_std=0.0, gamma_std=0.0, noise_max=0.0, blur_max_px=0.0)
    torch.testing.assert_close(augment(x, none, torch.Generator().manual_seed(0)), x.float() / 255)
    heavy = dataclasses.replace(aug, shift=0.05, noise_max=0.1, jpeg_prob=1.0)
    a = augment(x, heavy, torch.Generator().manual_seed(1))
    b = augment(x, heavy, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == x.shape
    assert not torch.equal(a, augment(x, heavy, torch.Generator().manual_seed(2)))
    assert a.min() >= 0 and a.max() <= 1
    assert (a[:, 0][a[:, 1] == 0] == 0).all()  # the image stays masked by the shading's support
    assert ((a[:, 0] - x[:, 0].float() / 255).abs().mean() > 0.01)


def test_random_erasing_covers_part_of_the_image_only():
    """erase_prob 1: one rectangle per sample of the image channel changes (area within the configured range),
    the shading does not; erase_prob 0 draws exactly the augmentation without it."""
    from facesynth.config import load_config

    aug = load_config().train.augment
    x = (torch.rand(16, 2, 64, 64) * 255).to(torch.uint8)
    x[:, 1] = 200
    plain = augment(x, aug, torch.Generator().manual_seed(3))
    assert aug.erase_prob == 0 and torch.equal(plain, augment(x, aug, torch.Generator().manual_seed(3)))
    erased = augment(x, dataclasses.replace(aug, erase_prob=1.0, erase_max_area=0.3), torch.Generator().manual_seed(3))
    assert torch.equal(erased[:, 1], plain[:, 1])
    changed = (erased[:, 0] != plain[:, 0]).float().mean((1, 2))
    assert changed.min() > 0.005 and changed.max() < 0.32
    rows, cols = torch.nonzero(erased[0, 0] != plain[0, 0], as_tuple=True)  # one rectangle
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert len(rows) / box > 0.9


def test_the_albedo_field_is_smooth_multiplicative_and_on_the_image_only():
    """albedo_std > 0: the image is multiplied by a smooth positive field (neighbouring pixels change alike, the
    ratio varies across the face), the shading is untouched; albedo_std 0 draws exactly as without it."""
    from facesynth.config import load_config

    aug = dataclasses.replace(load_config().train.augment, shift=0.0, scale_std=0.0, gamma_std=0.0, noise_max=0.0,
                              blur_max_px=0.0)
    x = torch.full((8, 2, 64, 64), 120, dtype=torch.uint8)
    x[:, 1] = 200
    plain = augment(x, aug, torch.Generator().manual_seed(3))
    assert aug.albedo_std == 0 and torch.allclose(plain[:, 0], torch.full((8, 64, 64), 120 / 255))
    tinted = augment(x, dataclasses.replace(aug, albedo_std=0.5), torch.Generator().manual_seed(3))
    assert torch.equal(tinted[:, 1], plain[:, 1])
    ratio = tinted[:, 0] / plain[:, 0]
    spread = ratio.amax((1, 2)) / ratio.amin((1, 2))
    assert spread.max() > 1.3 and (ratio > 0).all()  # patches of other albedo
    step = (ratio[:, :, 1:] - ratio[:, :, :-1]).abs().amax((1, 2))  # smooth: small pixel-to-pixel change
    assert (step < 0.1 * (spread - 1) + 1e-3).all()


def test_the_cache_stream_resumes_exactly_for_any_worker_count(small_cfg, cache_file):
    aug = small_cfg.train.augment

    def stream(start, workers, k):
        it = iter(DataLoader(CacheDataset(cache_file, aug, 0, 4, start), batch_size=None, num_workers=workers))
        return [next(it) for _ in range(k)]

    ref = stream(0, 0, 5)
    for got, want in zip(stream(2, 0, 3), ref[2:], strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    for got, want in zip(stream(0, 2, 5), ref, strict=True):
        assert all(torch.equal(got[k], want[k]) for k in want)
    seen = torch.cat([b["index"] for b in ref]).tolist()  # 20 positions: two epochs of the 10 samples
    assert sorted(seen[:N]) == list(range(N)) and sorted(seen[N:2 * N]) == list(range(N)) and seen[:N] != seen[N:]


def test_training_from_the_cache_runs_and_resumes(small_cfg, cache_file, tmp_path):
    cfg = override(small_cfg, "train.cache", str(cache_file))
    ref = train_iterative(cfg, tmp_path / "ref", progress=False)
    train_iterative(cfg, tmp_path / "run", steps=1, progress=False)
    result = train_iterative(cfg, tmp_path / "run", progress=False)
    assert result["resumed_from"] == 1 and result["train_loss"] == ref["train_loss"]

    def losses(run):
        with open(run / "log.csv", newline="") as f:
            return [r["train_loss"] for r in csv.DictReader(f)]
    assert losses(tmp_path / "run") == losses(tmp_path / "ref") and len(losses(tmp_path / "ref")) == 2
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["data_position"] == {
        "source": "cache", "file": str(cache_file), "batches": 2}
    with pytest.raises(TrainingError, match="another config .*render.image_size"):
        train_iterative(override(cfg, "render.image_size", 48), tmp_path / "other", progress=False)


def test_training_reads_several_cache_files_as_one_set(small_cfg, cache_file, tmp_path):
    """Files of other start policies and cameras (here: other detector error levels, a pinhole camera with a
    photo's light, another seed) train together: row N + r is row r of the second file; a file of other images is refused."""
    levels = override(override(small_cfg, "train.start_error_scale", [0.0, 1.0]), "sampling.pose.perspective_prob",
                      1.0)
    levels = override(override(levels, "sampling.light.srgb_prob", 1.0), "sampling.light.shadow_prob", 0.5)
    second = tmp_path / "levels.h5"
    write_cache(levels, second, 6, 8, progress=False)
    made = read_cache_info(second)["config"]
    assert made["start"]["start_error_scale"] == [0.0, 1.0] and made["camera"]["perspective_prob"] == 1.0
    assert made["camera"]["srgb_prob"] == 1.0 and "srgb_prob" not in made["sampling"]["light"]
    first = read_cache_info(cache_file)["config"]
    assert "start_error_scale" not in first["start"] and "camera" not in first  # as before the keys
    with pytest.raises(TrainingError, match="camera"):
        check_cache(second, small_cfg)
    both = CacheDataset([cache_file, second], None, 0, 4)
    assert both._arrays()["n"] == N + 6
    with h5py.File(cache_file, "r") as a, h5py.File(second, "r") as b:
        np.testing.assert_array_equal(both.inputs(np.array([N + 2, 1, N + 5])),
                                      np.stack([b["inputs"][2], a["inputs"][1], b["inputs"][5]]))
        np.testing.assert_array_equal(both._arrays()["alpha_gt"][N:], b["alpha_gt"][:])
    seen = torch.cat([both.batch(k)["index"] for k in range(4)]).tolist()  # one epoch of the 16 rows
    assert sorted(seen) == sorted(list(range(N)) + list(range(6)))
    cfg = override(small_cfg, "train.cache", [str(cache_file), str(second)])
    result = train_iterative(cfg, tmp_path / "run", progress=False)
    assert np.isfinite(result["train_loss"]) and load_checkpoint(result["checkpoint"])["data_position"] == {
        "source": "cache", "file": [str(cache_file), str(second)], "batches": 2}
    other = tmp_path / "other.h5"
    write_cache(override(small_cfg, "render.image_size", 48), other, 2, 8, progress=False)
    with pytest.raises(TrainingError, match="another config .*render.image_size"):
        train_iterative(override(cfg, "train.cache", [str(cache_file), str(other)]), tmp_path / "x", progress=False)


def test_cli_makes_a_cache_and_its_preview(tmp_path, model_path):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("render:\n  image_size: 48\n  backend: numba\ntrain:\n  cache_chunk: 2\n")
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(cli, ["cache", "--config", str(cfg), "--n", "3", "--out", str(out), "--start", "mean",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    assert "3 samples (3 rendered now" in r.output and read_cache_info(out)["shape"] == (2, 48, 48)
    assert (tmp_path / "c.h5.png").stat().st_size > 5_000


def test_cli_start_options_and_several_caches(tmp_path, model_path):
    """`train cache --landmarks true --error-scale 0 1` records that start in the file; `train iterative
    --cache A --cache B` trains on both; a bad error scale is a one-line error."""
    cfg = tmp_path / "small.yaml"
    cfg.write_text("render:\n  image_size: 48\n  backend: numba\ntrain:\n  cache_chunk: 2\n  batch: 2\n"
                   "  val_samples: 2\n  val_every: 1\n  checkpoint_every: 1\n  device: cpu\n"
                   "  widths: [4, 8, 8, 16]\n")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for out, extra in ((a, []), (b, ["--landmarks", "true", "--error-scale", "0", "1", "--seed", "4"])):
        r = CliRunner().invoke(cli, ["cache", "--config", str(cfg), "--n", "2", "--out", str(out), "--quiet", *extra])
        assert r.exit_code == 0, r.output
    start = read_cache_info(b)["config"]["start"]
    assert start["start_landmarks"] == "true" and start["start_error_scale"] == [0.0, 1.0]
    r = CliRunner().invoke(cli, ["iterative", "--config", str(cfg), "--cache", str(a), "--cache", str(b), "--out",
                                 str(tmp_path / "run"), "--steps", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["data_position"]["file"] == [str(a), str(b)]
    r = CliRunner().invoke(cli, ["cache", "--config", str(cfg), "--n", "2", "--out", str(tmp_path / "c.h5"),
                                 "--error-scale", "0.9", "0.1"])
    assert r.exit_code != 0 and "start_error_scale" in r.output and "Traceback" not in r.output


def test_cli_errors_are_one_line(cache_file, tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["cache", "--n", "0", "--out", str(tmp_path / "c.h5")])
    assert r.exit_code == 1 and "n >= 1" in r.output and "Traceback" not in r.output
    r = runner.invoke(cli, ["iterative", "--cache", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 1 and "missing.h5 not found" in r.output and len(r.output.strip().splitlines()) == 1
    r = runner.invoke(cli, ["iterative", "--cache", str(cache_file), "--online", "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "one of --cache" in r.output
