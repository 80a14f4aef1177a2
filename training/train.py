"""Training of the iterative network (``train iterative``): config, data, model, then the shared loop
(:func:`training.loop.run_training`: checkpoints, exact resume, log, NaN stop, DDP).

- Loss: the geometry loss (:class:`training.loss.GeometryLoss`, mm^2 over ``train.loss_region``), after
  similarity alignment with ``train.loss_align: similarity`` (the error the evaluation measures).
- Optimiser: Adam with a fixed learning rate (``train.lr``), as in the paper.
- Data: caches of pre-rendered pairs with on-the-fly augmentation (``train.cache``: one or more files, read as
  one set; their start policies may differ, :mod:`training.cache`),
  online generation (``train.online``) or shards in ``train.data``; the samples' a_t from ``train.start``
  (:mod:`training.starts`); validation on a fixed held-out set of ``train.val_samples`` samples generated once
  with seed ``datagen.seed + VAL_SEED_OFFSET``.
- Run folder ``train.out``: ``ckpt.pt`` (latest checkpoint, written atomically every
  ``train.checkpoint_every`` steps and at the end), ``log.csv`` (step, train_loss, val_loss,
  samples_per_s), ``curves.png``, ``config.json``.
- Resume: the same command after a kill continues from ``ckpt.pt`` (model, optimiser, step, RNG states and
  data position are restored, so the next step is the one an uninterrupted run would take).
- A NaN or infinite loss stops the run with :class:`TrainingError`; ``ckpt.pt`` stays the last good one.
- CUDA: bf16 autocast, channels_last, pinned memory, DataLoader workers; DDP when started by ``torchrun``
  (``WORLD_SIZE`` > 1): ``train.batch`` is per process, rank 0 validates and writes the run folder.
"""
from __future__ import annotations

from pathlib import Path

import torch


from .data import VAL_SEED_OFFSET, fixed_batches, online_loader, shard_loader
from .loop import (BatchFactory, CheckpointError, Job, TrainingError, autocast, data_workers,  # noqa: F401
                   held_out_loss, read_checkpoint, resolve_device, run_training, save_checkpoint, start_run)
from .loss import GeometryLoss
from coarse.frame import NetworkFrame
from coarse.network import FORMAT, IterativeNet


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`train_iterative`; :class:`CheckpointError` if it is not one."""
    return read_checkpoint(path, FORMAT, "iterative-network", map_location)


# ----------------------------------------------------------------------------------------- helpers
def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """(input, alpha_t, alpha_gt) of a batch on ``device``."""
    x = batch["input"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, batch["alpha_t"].to(device, non_blocking=True).float(),
            batch["alpha_gt"].to(device, non_blocking=True).float())


def default_batches(cfg, batch: int, rank: int, world: int, workers: int, pin_memory: bool) -> BatchFactory:
    """The configured training stream: a cache file (``train.cache``, augmented), online generation
    (``train.online``) or shards (``train.data``)."""
    if cfg.train.cache:
        from .cache import cache_loader, check_cache

        paths = [cfg.resolve_path(p) for p in cfg.train.cache]
        for p in paths:  # the same images, model and fit as cfg (then the same input shape); any start
            check_cache(p, cfg, start=False)

        def cached(step: int):
            return cache_loader(paths, cfg.train.augment, cfg.train.seed, batch, step * world, workers, rank, world,
                                pin_memory, spawn=pin_memory, frame=NetworkFrame.from_config(cfg))
        return cached
    if cfg.train.online:
        def online(step: int):
            return online_loader(cfg, cfg.datagen.seed, batch, step * world * batch, workers, rank, world,
                                 pin_memory, spawn=pin_memory)  # CUDA in this process: spawn the workers
        return online
    if cfg.train.input_mask != "shading":
        raise TrainingError("train.input_mask: landmarks needs landmarks with each sample: train from a cache "
                            "(--cache) or online (--online), not from shards")
    data_dir = cfg.resolve_path(cfg.train.data)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"training data folder {data_dir} not found (make it with `datagen render` "
                                "or train with --online)")

    def shards(step: int):
        return shard_loader(data_dir, batch, skip_batches=step, seed=cfg.train.seed, workers=workers)
    return shards


def data_position(cfg, step: int, batch: int, world: int, custom: bool) -> dict:
    """Where the data stream resumes after ``step`` steps (see :mod:`training.data`)."""
    if custom:
        return {"source": "custom", "batches": step}
    if cfg.train.cache:
        files = list(cfg.train.cache)
        return {"source": "cache", "file": files[0] if len(files) == 1 else files, "batches": step * world}
    if cfg.train.online:
        return {"source": "online", "seed": cfg.datagen.seed, "next_index": step * world * batch}
    return {"source": "shards", "batches": step}


def init_weights(net: IterativeNet, path: Path, image_size: int) -> None:
    """Load the weights of ``path`` (``train.init``: a checkpoint or exported file) into ``net``; weights of
    the ``mean`` head into a ``dense``-head ``net`` are converted exactly (:func:`coarse.network.dense_from_mean`
    for inputs of ``image_size``). :class:`TrainingError` when they are another network's."""
    from coarse.network import dense_from_mean, load_iterative

    if not path.is_file():
        raise TrainingError(f"train.init: weights file {path} not found")
    other = load_iterative(path).net
    if net.head == "dense" and other.head == "mean":
        other = dense_from_mean(other, image_size)
    shapes = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in net.state_dict().items()}:
        raise TrainingError(f"train.init: {path} holds another network (train.widths, model size or input channels "
                            "differ)")
    net.load_state_dict(other.state_dict())


# ----------------------------------------------------------------------------------------- training
def train_iterative(cfg, out_dir: str | Path | None = None, batches: BatchFactory | None = None,
                    steps: int | None = None, batch: int | None = None, device: str | None = None,
                    progress: bool = True) -> dict:
    """Train (or resume training) the iterative network.

    Args:
        cfg: the full :class:`facesynth.config.Config`; ``steps``, ``batch`` and ``device`` override
            ``train.*`` (the config saved in checkpoints is the one used).
        out_dir: run folder (default ``train.out``); a checkpoint there is resumed.
        batches: ``batches(step)`` -> this process's training batches from ``step`` on (for tests and
            other sources); default: online (``train.online``) or shards (``train.data``).
        progress: tqdm bar (rank 0 only).
    Returns:
        ``{"run_dir", "checkpoint", "step", "train_loss", "val_loss", "resumed_from"}``.
    Raises:
        TrainingError: NaN/inf loss (the last checkpoint is kept), a run folder of another config,
            training data of another image size.
    """
    run = start_run(cfg, "train", out_dir, steps, batch, device)
    cfg, tc, dev = run.cfg, run.cfg.train, run.device
    from morphable.model import load_model

    face_model = load_model(cfg.resolve_path(cfg.model.path))
    net = IterativeNet.from_config(cfg)
    if tc.init and not run.ckpt_path.exists():  # a resumed run continues from its own checkpoint
        init_weights(net, cfg.resolve_path(tc.init), cfg.render.image_size)
    net = net.to(dev)
    # channels_last on every device: 1.2-1.45x on a 2-core CPU as well (benchmarks/train.py)
    net = net.to(memory_format=torch.channels_last)
    if tc.loss_region not in face_model.regions:
        raise TrainingError(f"train.loss_region must be a region of the face model ({', '.join(face_model.regions)}); "
                            f"got {tc.loss_region!r}")
    loss_fn = GeometryLoss(face_model, tc.loss_region, align=tc.loss_align == "similarity").to(dev)

    custom = batches is not None
    workers = data_workers(tc.workers, dev)
    factory = batches if custom else default_batches(cfg, tc.batch, run.rank, run.world, workers,
                                                     pin_memory=dev.type == "cuda")
    val = {"first": True}

    def validation():
        val["set"] = fixed_batches(cfg, cfg.datagen.seed + VAL_SEED_OFFSET, tc.val_samples, tc.batch)
        return lambda n: held_out_loss(n, val["set"], lambda b: forward(n, b))

    def forward(model, b: dict):
        x, a_t, a_gt = to_device(b, dev, True)
        with autocast(dev):
            pred = model(x, a_t)
        return loss_fn(pred.float(), a_gt), len(x)

    def step_loss(model, b: dict):
        if val["first"] and val.get("set"):  # rank 0: the training data must match the config's input
            expected = tuple(val["set"][0]["input"].shape[1:])
            if tuple(b["input"].shape[1:]) != expected:
                raise TrainingError(f"training batches have inputs {tuple(b['input'].shape[1:])} but the config "
                                    f"(render.image_size, datagen.color_input) gives {expected}")
        val["first"] = False
        return forward(model, b)

    job = Job(FORMAT, "iterative-network", "train iterative", "geometry loss (mm², mean squared vertex error)",
              net, step_loss, validation, factory,
              lambda step: data_position(cfg, step, tc.batch, run.world, custom))
    return run_training(run, job, progress)
