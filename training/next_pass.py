"""Pairs for the network's later passes: a_t from the network's own first pass.

At inference the second pass starts where the first one ended, an estimate the fit-start pairs
(:mod:`training.starts`) never show: passes 2 and 3 of a network trained on them alone make the face worse
(docs/experiments/iterative-network.md). ``train cache-next`` makes the pairs those passes see. For each pair of a cache whose
a_t is the landmark fit itself (what the first pass sees) it runs a trained network once,
``a_1 = net(image, shading of a_fit)``, and renders the same face again with the shading of a_1, drawn under
the pose inference would use (fitted to the pair's landmarks with a_1's landmark vertices, plus the same
extra detector pose error as the pair's first pass: :func:`training.starts.detector_pose`). The output file
holds the source's pairs, then these (so one file trains every pass), with the source's config plus
``next_pass`` (the weights and the source) in its attributes; :func:`training.cache.check_cache` accepts it
for the source's config. The image is rendered as before ((seed, index) alone decide it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import FORMAT, NEXT_PASS, PairSource, check_cache, file_start, write_parts
from .errors import TrainingError


def first_pass_rows(path: str | Path) -> np.ndarray:
    """Rows of a cache whose a_t is the landmark fit itself (u = 1: what the first pass sees; equal to float32
    rounding), ascending."""
    import h5py

    with h5py.File(path, "r") as f:
        a_t, fit = f["alpha_t"][:], f["alpha_fit"][:]
    return np.flatnonzero(np.all(np.isfinite(fit), axis=1) & np.all(np.abs(a_t - fit) <= 1e-5, axis=1))


class NextPassSource(PairSource):
    """Record j: the next-pass pair of row ``rows[j]`` of the cache ``source`` (module docstring)."""

    def __init__(self, cfg, source: str | Path, rows: np.ndarray, weights: str | Path, seed: int, first: int,
                 batch_size: int):
        super().__init__(cfg, seed, first, len(rows), batch_size=batch_size)
        self.source, self.rows, self.weights = str(source), np.asarray(rows, np.int64), str(weights)

    def _network(self):
        model, renderer = self._renderer()
        if "net" not in self._state:
            import h5py
            import torch
            from torch.utils.data import get_worker_info

            from coarse.network import load_iterative

            from .starts import FitStart

            if get_worker_info() is not None:
                torch.set_num_threads(1)  # one thread per worker, as the renderer's BLAS
            weights = load_iterative(self.weights)
            self._state["net"], self._state["frame"] = weights.net, weights.frame
            self._state["file"] = h5py.File(self.source, "r")
            self._state["fit_start"] = FitStart.from_config(self.cfg)
        return model, renderer, self._state["net"], self._state["file"], self._state["fit_start"]

    def record(self, j: int) -> dict:
        import torch

        from coarse.fit import FitError
        from datagen.sample import make_sample, network_input
        from datagen.scene import draw_scene
        from datagen.shards import to_uint8

        model, renderer, net, f, fit_start = self._network()
        row = int(self.rows[j])
        index = int(f["index"][row])
        points = f["points"][row].astype(np.float64)
        x = f["inputs"][row][None].astype(np.float32) / 255.0
        region = self._state["frame"].region(points)  # as the network was trained (train.input_mask)
        x = torch.from_numpy(x if region is None else x * region)
        a_t = torch.from_numpy(f["alpha_t"][row][None])
        with torch.no_grad():
            a_1 = net(x, a_t)[0].numpy().astype(np.float32)
        pose = None
        if fit_start.fitted_pose:
            scene = draw_scene(self.seed, index, model, self.cfg)
            try:
                pose = fit_start.pose(points, model, a_1, scene, self.seed)
            except FitError:  # a_1's landmark vertices do not fit the points: keep the first pass's pose
                pose = fit_start.pose(points, model, f["alpha_t"][row], scene, self.seed)
        s = make_sample(self.seed, index, model, self.cfg, renderer, alpha_t=a_1, pose_t=pose)
        return {"inputs": to_uint8(network_input(s.image, s.shading)),
                "alpha_gt": f["alpha_gt"][row], "alpha_t": a_1, "alpha_fit": f["alpha_fit"][row],
                "points": f["points"][row], "index": np.int64(index)}


def source_start(cfg, config: dict):
    """``cfg`` with the start policy a cache file was made with (:func:`training.cache.file_start` of its
    ``config``)."""
    from facesynth.config import override

    for key, value in file_start(config).items():
        cfg = override(cfg, f"train.{key}", value)
    return cfg


def write_next_pass(cfg, source: str | Path, weights: str | Path, out: str | Path, workers: int = 0,
                    progress: bool = True, n: int | None = None) -> dict:
    """Write ``out``: the pairs of the cache ``source`` (made with ``cfg``; its own start policy, e.g. its
    detector error levels, is taken from the file), then the next-pass pair of each of
    its first-pass pairs (the first ``n`` of them; None: all) by the network ``weights`` (module docstring).
    Resumable as ``train cache``.

    Returns:
        ``{"path", "n", "rendered", "next_pass"}`` (next_pass: pairs added).
    Raises:
        TrainingError: a source of another config, already holding next-pass pairs, or without fit starts;
            weights of another image size.
    """
    from coarse.network import load_iterative
    from facesynth.io import file_digest

    info = check_cache(source, cfg, start=False)
    cfg = source_start(cfg, info["config"])
    if NEXT_PASS in info["config"]:
        raise TrainingError(f"{source} already holds next-pass pairs; give the cache of the first pass")
    if n is not None and n < 1:
        raise TrainingError(f"--n must be >= 1; got {n}")
    rows = first_pass_rows(source)[:n]
    if len(rows) == 0:
        raise TrainingError(f"{source} has no pairs that start at the landmark fit (train.start: fit)")
    w = load_iterative(weights)
    if w.frame.size != info["shape"][-1] or w.net.in_channels != info["shape"][0]:
        raise TrainingError(f"the network {weights} takes {w.net.in_channels} x {w.frame.size} px inputs, the cache "
                            f"holds {info['shape'][0]} x {info['shape'][-1]} px")
    meta = {"format": FORMAT, "seed": info["seed"], "chunk": int(cfg.train.cache_chunk),
            "config": {**info["config"], NEXT_PASS: {"weights": Path(weights).name, "step": w.step,
                                                     "sha256": file_digest(weights), "source": Path(source).name,
                                                     "source_n": info["n"], "pairs": int(len(rows))}}}
    result = write_parts(out, meta, len(rows),
                         lambda first: NextPassSource(cfg, source, rows, weights, info["seed"], first, meta["chunk"]),
                         workers, progress, head=source)
    return {**result, "next_pass": int(len(rows))}


