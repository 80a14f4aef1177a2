"""Training of the detail network (``train detail``): config, data, model, then the shared loop
(:func:`training.loop.run_training`: atomic checkpoints, exact resume, log.csv + curves.png, NaN stop, DDP,
bf16 autocast on CUDA).

- Network and loss: :mod:`training.detail_net` (U-Net in the SfS frame; L1 displacement + slopes +
  photometric + smoothness, weights ``detail.loss``).
- Optimiser: Adam with ``detail.lr``.
- Data: :mod:`training.detail_data`: faces drawn on the fly (``detail.online``, seed ``detail.seed``) or read
  from shards made with ``datagen.detail`` (``detail.data``), each cut into ``detail.crops_per_face`` crops of
  ``detail.crop`` pixels; validation on ``detail.val_samples`` fixed crops of on-the-fly faces (seed
  ``detail.seed + VAL_SEED_OFFSET``) in the SfS frame.
- Coarse start of the data: the iterative network when weights are given (``coarse_weights``) or
  ``refine.weights`` exists, else the landmark fit; a resume must use the same.
- Run folder ``detail.out``: ``ckpt.pt`` (format ``facesynth-detail/1``), ``log.csv``, ``curves.png``,
  ``config.json``. ``refine`` reads the weights from ``detail.weights`` (copy ``ckpt.pt`` there).
"""
from __future__ import annotations

from pathlib import Path

import torch

from facesynth.config import optional_file, override
from datagen.synthetic import detail_frame_config

from .data import VAL_SEED_OFFSET, batch_loader, fixed_batches
from .detail_data import DetailDataset
from .detail_net import FORMAT, DetailLoss, DetailNet
from .loop import BatchFactory, Job, TrainingError, autocast, data_workers, held_out_loss, run_training, start_run

#: Keys of other stages' sections that the data depends on: a resume must keep them
#: (:func:`training.loop.resume_may_change`; the coarse start's weights are checked by themselves).
RESUME_READS = ("evaluate.landmark_noise_px",)


def coarse_source(cfg, coarse_weights: str | None) -> Path | None:
    """The iterative-network weights that make the coarse start: ``coarse_weights`` (must exist), else
    ``refine.weights`` when that file exists, else None (the landmark fit)."""
    return optional_file(cfg, coarse_weights, cfg.refine.weights)


def _to_device(batch: dict, device: torch.device) -> dict:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "index"}
    out["input"] = out["input"].contiguous(memory_format=torch.channels_last)
    return out


def train_detail(cfg, out_dir: str | Path | None = None, batches: BatchFactory | None = None,
                 steps: int | None = None, batch: int | None = None, device: str | None = None,
                 coarse_weights: str | None = None, progress: bool = True) -> dict:
    """Train (or resume training) the detail network.

    Args:
        cfg: the full config; ``steps``, ``batch`` and ``device`` override ``detail.*``.
        out_dir: run folder (default ``detail.out``); a checkpoint there is resumed.
        batches: ``batches(step)`` -> this process's training batches from ``step`` on (tests, other
            sources); default: on the fly (``detail.online``) or from shards (``detail.data``).
        coarse_weights: see :func:`coarse_source`.
        progress: tqdm bar (rank 0 only).
    Returns:
        ``{"run_dir", "checkpoint", "step", "train_loss", "val_loss", "resumed_from", "coarse"}``.
    Raises:
        TrainingError: bad values, NaN/inf loss (the last checkpoint is kept), a run folder of another config
            or another coarse start.
    """
    run = start_run(cfg, "detail", out_dir, steps, batch, device)
    cfg, dc, dev = run.cfg, run.cfg.detail, run.device
    for key in ("crop", "crops_per_face", "val_samples"):
        if getattr(dc, key) < 1:
            raise TrainingError(f"detail.{key} must be >= 1; got {getattr(dc, key)}")
    if dc.crop % 2 ** (len(dc.channels) - 1):
        raise TrainingError(f"detail.crop must be a multiple of {2 ** (len(dc.channels) - 1)} (the U-Net's "
                            f"{len(dc.channels)} levels); got {dc.crop}")
    weights = coarse_source(cfg, coarse_weights)
    coarse = "landmark_fit" if weights is None else f"iterative_network:{weights}"

    net = DetailNet.from_config(cfg).to(dev).to(memory_format=torch.channels_last)
    loss_fn = DetailLoss.from_config(cfg).to(dev)

    val_cfg = detail_frame_config(cfg)
    custom = batches is not None
    online = dc.online or custom
    data_dir = None if online else cfg.resolve_path(dc.data)
    if data_dir is not None and not data_dir.is_dir():
        raise FileNotFoundError(f"training data folder {data_dir} not found (make it with `datagen render` and "
                                "datagen.detail: true, or train with --online)")
    data_cfg = val_cfg if data_dir is None else _shard_config(cfg, data_dir)
    if dc.crop > data_cfg.render.image_size:
        raise TrainingError(f"detail.crop {dc.crop} is larger than the {data_cfg.render.image_size} px frame")
    workers = data_workers(dc.workers, dev)

    def stream(step: int):
        ds = DetailDataset(data_cfg, dc.seed, step * run.world * dc.batch, batch_size=dc.batch, rank=run.rank,
                           world=run.world, data_dir=data_dir, coarse_weights=weights)
        return batch_loader(ds, workers, pin_memory=dev.type == "cuda", spawn=dev.type == "cuda")

    def validation():
        val_set = fixed_batches(val_cfg, dc.seed + VAL_SEED_OFFSET, dc.val_samples, dc.batch, DetailDataset,
                                coarse_weights=weights)
        return lambda n: held_out_loss(n, val_set, lambda b: step_loss(n, b))

    def step_loss(model, b: dict):
        b = _to_device(b, dev)
        with autocast(dev):
            pred = model(b["input"], b["pixel_mm"])
        return loss_fn(pred.float(), b), len(pred)

    def data_position(step: int) -> dict:
        if custom:
            return {"source": "custom", "batches": step}
        return {"source": "online" if data_dir is None else "shards", "seed": dc.seed,
                "next_crop": step * run.world * dc.batch}

    job = Job(FORMAT, "detail-network", "train detail", "detail loss (L1 mm + slopes + photometric + smoothness)",
              net, step_loss, validation, batches if custom else stream, data_position, meta={"coarse": coarse},
              reads=RESUME_READS)
    return dict(run_training(run, job, progress), coarse=coarse)


def _shard_config(cfg, data_dir: Path):
    """``cfg`` with detail on and the shards' image size (read from their first record)."""
    from datagen.loader import iter_records

    first = next(iter_records(data_dir, limit=1), None)
    if first is None:
        raise FileNotFoundError(f"no samples in {data_dir}")
    return override(override(cfg, "datagen.detail", True), "render.image_size", int(first["rgb"].shape[0]))
