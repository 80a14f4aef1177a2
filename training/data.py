"""Training batches: generated on the fly (:class:`OnlineDataset`) or read from shards
(:func:`datagen.loader.make_loader`). Both give dicts of batched tensors::

    input     (B, C + 1, H, W) float32 in [0, 1]: masked image channel(s), then the shading image of a_t
    alpha_gt  (B, K) float32
    alpha_t   (B, K) float32
    index     (B,) int64 sample indices

Data position (what a checkpoint stores to resume exactly):

- online: the index of the next sample. Batch k of the stream holds samples ``k B .. k B + B - 1`` of the
  dataset ``seed``; with ``world`` processes (DDP), process ``rank`` takes batches ``rank, rank + world, ...``.
  After ``step`` steps the next sample is ``step * world * B`` and the stream restarts there, whatever the
  number of DataLoader workers.
- shards: the number of batches this process has consumed (= the step), skipped on restart
  (``make_loader(skip_batches=...)``); exact for ``workers = 0`` (the shuffle is seeded).

Online samples are the float images of :func:`datagen.sample.make_sample`; shards hold the same samples
quantised to 8 bits.
"""
from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from coarse.frame import NetworkFrame
from datagen.sample import training_record

from .errors import TrainingError
from .starts import start_policy, start_sample


def collate(records: list[dict]) -> dict:
    """Training records (:func:`datagen.sample.training_record`) -> one batch of tensors."""
    return {
        "input": torch.from_numpy(np.stack([r["input"] for r in records])),
        "alpha_gt": torch.from_numpy(np.stack([r["alpha_gt"] for r in records])),
        "alpha_t": torch.from_numpy(np.stack([r["alpha_t"] for r in records])),
        "index": torch.tensor([r["index"] for r in records], dtype=torch.int64),
    }


class OnlineDataset(IterableDataset):
    """Samples of the dataset ``seed`` generated on the fly by :func:`datagen.sample.make_sample`, their a_t
    from ``train.start`` (:func:`training.starts.start_sample`).

    Each process (DataLoader worker or the main process) loads the model and builds its own
    :class:`render.renderer.FaceRenderer` (its own GL context with backend ``gl``; a context inherited
    through fork is never used) the first time it iterates, and limits BLAS to one thread inside a worker.

    Args:
        cfg: the full :class:`facesynth.config.Config` (``sampling``, ``render``, ``datagen`` are used).
        seed: dataset seed; sample i depends on (seed, i) only.
        start_index: first sample index.
        stop_index: end (exclusive); None = endless.
        batch_size: None: yield single records; worker w of W takes indices start_index + w, + W, ...
            An int B: yield collated batches (:func:`collate`); batch k = indices start_index + k B ...
            and worker w of W takes batches w, w + W, ..., so a DataLoader (``batch_size=None``, which
            visits workers in turn) yields batches 0, 1, 2, ... in order for any number of workers.
        rank, world: with ``batch_size``, this process takes batches rank, rank + world, ... (DDP).
    """

    def __init__(self, cfg, seed: int, start_index: int = 0, stop_index: int | None = None,
                 batch_size: int | None = None, rank: int = 0, world: int = 1):
        super().__init__()
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None; got {batch_size}")
        if not 0 <= rank < world:
            raise ValueError(f"expected 0 <= rank < world; got rank {rank}, world {world}")
        self.cfg, self.seed = cfg, int(seed)
        self.start_index, self.stop_index = int(start_index), stop_index
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self._state: dict | None = None

    def __getstate__(self) -> dict:  # sent to spawned workers without this process's renderer
        return dict(self.__dict__, _state=None)

    def _renderer(self):
        if self._state is None or self._state["pid"] != os.getpid():  # first use in this process
            from morphable.model import load_model
            from render.renderer import FaceRenderer

            if get_worker_info() is not None:
                from threadpoolctl import threadpool_limits

                threadpool_limits(1)  # one thread per worker: BLAS threads would fight the other workers
            model = load_model(self.cfg.resolve_path(self.cfg.model.path))
            renderer = FaceRenderer.from_config(model, self.cfg.render)
            self._state = {"pid": os.getpid(), "model": model, "renderer": renderer}
        return self._state["model"], self._state["renderer"]

    def sample(self, index: int):
        """(:class:`datagen.sample.Sample`, :class:`training.starts.StartDraw` or None) of sample ``index``,
        its a_t from ``train.start`` (:mod:`training.starts`)."""
        model, renderer = self._renderer()
        if "start" not in self._state:
            self._state["start"] = start_policy(self.cfg)
        return start_sample(self.seed, index, model, self.cfg, renderer, self._state["start"])

    def record(self, index: int) -> dict:
        """Training record of sample ``index`` (cut to its landmarks' region with ``train.input_mask:
        landmarks``, :meth:`coarse.frame.NetworkFrame.region`)."""
        s, draw = self.sample(index)
        image, shading = s.image, s.shading
        if self.cfg.train.input_mask != "shading":
            if draw is None:
                raise TrainingError("train.input_mask: landmarks needs samples with landmarks (train.start: fit)")
            region = NetworkFrame.from_config(self.cfg).region(draw.points)
            image, shading = image * (region[..., None] if image.ndim == 3 else region), shading * region
        return training_record(image, shading, s.scene.alpha_gt, s.scene.alpha_t, index)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        w, W = (0, 1) if info is None else (info.id, info.num_workers)
        stop = math.inf if self.stop_index is None else self.stop_index
        if self.batch_size is None:
            i = self.start_index + w
            while i < stop:
                yield self.record(i)
                i += W
            return
        B, j = self.batch_size, w  # j: this process's j-th batch is global batch rank + world j
        while True:
            first = self.start_index + (self.rank + self.world * j) * B
            if first >= stop:
                return
            yield self.collate([self.record(i) for i in range(first, int(min(first + B, stop)))])
            j += W

    collate = staticmethod(collate)  # records -> a batch; subclasses with other records bring their own


def online_loader(cfg, seed: int, batch_size: int, start_index: int = 0, workers: int = 0, rank: int = 0,
                  world: int = 1, pin_memory: bool = False, spawn: bool = False) -> DataLoader:
    """Endless stream of online batches from sample ``start_index`` on (see the module docstring).

    ``spawn``: start workers with spawn instead of fork (use it once CUDA or a GL context lives in this
    process: neither survives a fork safely)."""
    ds = OnlineDataset(cfg, seed, start_index, batch_size=batch_size, rank=rank, world=world)
    return batch_loader(ds, workers, pin_memory, spawn)


def batch_loader(ds: IterableDataset, workers: int = 0, pin_memory: bool = False, spawn: bool = False) -> DataLoader:
    """A DataLoader over a dataset that yields whole batches (:class:`OnlineDataset` with ``batch_size``)."""
    return DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None,
                      multiprocessing_context="spawn" if spawn and workers else None)


def shard_loader(data_dir, batch_size: int, skip_batches: int = 0, seed: int = 0, workers: int = 0):
    """Endless stream of shuffled batches from shards (:func:`datagen.loader.make_loader`), as tensors."""
    from datagen.loader import make_loader

    for batch in make_loader(data_dir, batch_size, seed=seed, workers=workers, skip_batches=skip_batches):
        yield {k: torch.as_tensor(np.asarray(batch[k])) for k in ("input", "alpha_gt", "alpha_t", "index")}


#: Validation sets come from this offset of a run's data seed (``datagen.seed``, ``detail.seed``), never used
#: for training.
VAL_SEED_OFFSET = 1_000_003


def fixed_batches(cfg, seed: int, n: int, batch_size: int, dataset: type = OnlineDataset, **kwargs) -> list[dict]:
    """The first ``n`` samples of dataset ``seed``, generated once in this process, as batches (a fixed
    held-out set for validation); ``dataset``: an :class:`OnlineDataset` class, ``kwargs`` its other
    arguments."""
    ds = dataset(cfg, seed, 0, stop_index=n, batch_size=batch_size, **kwargs)
    return list(ds)
