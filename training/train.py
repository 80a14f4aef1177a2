"""Training of the iterative network (``train iterative``): reads top to bottom as config, data, model, loop.

- Loss: the geometry loss (:class:`training.loss.GeometryLoss`, mm^2 over the ``face`` region).
- Optimiser: Adam with a fixed learning rate (``train.lr``), as in the paper.
- Data: online generation (``train.online``) or shards in ``train.data``; validation on a fixed held-out
  set of ``train.val_samples`` samples generated once with seed ``datagen.seed + VAL_SEED_OFFSET``.
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

import contextlib
import csv
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from facesynth.config import config_from_dict, override

from .data import fixed_batches, online_loader, shard_loader
from .loss import GeometryLoss
from .network import IterativeNet

#: Validation samples come from this seed offset of ``datagen.seed`` (never used for training).
VAL_SEED_OFFSET = 1_000_003
CHECKPOINT, LOG, CURVES = "ckpt.pt", "log.csv", "curves.png"
FORMAT = "facesynth-iterative/1"
#: Config keys that may differ between a run and its resume: they do not change the steps taken.
#: ``train.lr`` may change too: a resumed run may lower it (a manual step schedule); the new value wins.
RESUME_MAY_CHANGE = ("train.steps", "train.out", "train.device", "train.workers", "train.checkpoint_every",
                     "train.val_every", "train.val_samples", "train.lr", "render.backend", "render.gl_platform",
                     "evaluate.")

#: batches(step) -> this process's training batches from step ``step`` on (dicts of tensors, see
#: :mod:`training.data`).
BatchFactory = Callable[[int], Iterable[dict]]


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, a run folder of another config, data of the wrong shape)."""


class CheckpointError(ValueError):
    """A file that is not a readable facesynth checkpoint."""


# ----------------------------------------------------------------------------------------- devices
def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu`` or ``cuda`` -> a torch device."""
    if name not in ("auto", "cpu", "cuda"):
        raise TrainingError(f"device must be auto, cpu or cuda; got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("device cuda asked, but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def ddp_setup() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world, local_rank


def data_workers(requested: int, device: torch.device) -> int:
    """``train.workers``; 0 means in-process on CPU and one per core (per local process) on CUDA."""
    if requested or device.type != "cuda":
        return requested
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 2) // local_world - 1)


# ----------------------------------------------------------------------------------------- checkpoints
def rng_state() -> dict:
    """Every RNG the run could use, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary file in the same folder, then an atomic rename over ``path``."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`train_iterative`; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a foreign or truncated file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a facesynth iterative-network checkpoint")
    return ckpt


def load_network(path: str | Path, map_location="cpu") -> IterativeNet:
    """The trained network of a checkpoint, built from the config saved in it, in eval mode."""
    ckpt = load_checkpoint(path, map_location)
    net = IterativeNet.from_config(config_from_dict(ckpt["config"]))
    net.load_state_dict(ckpt["model"])
    net.image_size = int(ckpt["config"]["render"]["image_size"])  # the network frame it was trained with
    return net.to(map_location).eval()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resumable(saved: dict, cfg) -> None:
    """Refuse to continue a run made with another config (other than :data:`RESUME_MAY_CHANGE`)."""
    old, new = _flat(saved), _flat(cfg.to_dict())
    for key in sorted(set(old) | set(new)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE):
            continue
        if old.get(key) != new.get(key):
            raise TrainingError(f"the run folder holds a run with another config ({key}: {old.get(key)!r} there, "
                                f"{new.get(key)!r} now); use another --out or the same config")


# ----------------------------------------------------------------------------------------- logging
class RunLog:
    """``log.csv`` (one row per step) and ``curves.png`` in the run folder; rows after ``resume_step``
    (written after the last checkpoint of a killed run) are dropped."""

    FIELDS = ("step", "train_loss", "val_loss", "samples_per_s")

    def __init__(self, run_dir: Path, resume_step: int):
        self.path, self.png = run_dir / LOG, run_dir / CURVES
        rows = []
        if self.path.exists() and resume_step > 0:
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.file = open(self.path, "w", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def row(self, step: int, train_loss: float, val_loss: float | None, samples_per_s: float) -> None:
        self.writer.writerow({"step": step, "train_loss": f"{train_loss:.6g}",
                              "val_loss": "" if val_loss is None else f"{val_loss:.6g}",
                              "samples_per_s": f"{samples_per_s:.4g}"})
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def plot(self) -> None:
        """Training loss (and a running mean) and validation loss against the step, log scale."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        step = np.array([int(r["step"]) for r in rows])
        train = np.array([float(r["train_loss"]) for r in rows])
        val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
        fig = Figure(figsize=(7, 4.2), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(step, train, color="0.75", lw=0.8, label="train (per step)")
        k = max(1, len(train) // 50)
        if k > 1:
            smooth = np.convolve(train, np.ones(k) / k, mode="valid")
            ax.plot(step[k - 1:], smooth, color="C0", lw=1.5, label=f"train (mean of {k})")
        if val:
            ax.plot(*zip(*val), "o-", color="C1", ms=3, label="validation")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("geometry loss (mm², mean squared vertex error)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.png.with_name(f"{self.png.stem}.tmp-{os.getpid()}.png")
        fig.savefig(tmp)
        os.replace(tmp, self.png)


# ----------------------------------------------------------------------------------------- helpers
def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    """(input, alpha_t, alpha_gt) of a batch on ``device``."""
    x = batch["input"].to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, batch["alpha_t"].to(device, non_blocking=True).float(),
            batch["alpha_gt"].to(device, non_blocking=True).float())


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(net, loss_fn, batches: list[dict], device: torch.device, channels_last: bool) -> float:
    """Mean geometry loss (mm^2) over the held-out batches, in eval mode (BN running statistics)."""
    was_training = net.training
    net.eval()
    total, n = 0.0, 0
    for batch in batches:
        x, a_t, a_gt = to_device(batch, device, channels_last)
        with autocast(device):
            pred = net(x, a_t)
        total += loss_fn.per_sample(pred.float(), a_gt).sum().item()
        n += len(x)
    net.train(was_training)
    return total / max(n, 1)


def default_batches(cfg, batch: int, rank: int, world: int, workers: int, pin_memory: bool) -> BatchFactory:
    """The configured training stream: online generation (``train.online``) or shards (``train.data``)."""
    if cfg.train.online:
        def online(step: int):
            return online_loader(cfg, cfg.datagen.seed, batch, step * world * batch, workers, rank, world,
                                 pin_memory, spawn=pin_memory)  # CUDA in this process: spawn the workers
        return online
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
    if cfg.train.online:
        return {"source": "online", "seed": cfg.datagen.seed, "next_index": step * world * batch}
    return {"source": "shards", "batches": step}


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
    # ---- config
    for key, value in (("train.steps", steps), ("train.batch", batch), ("train.device", device)):
        if value is not None:
            cfg = override(cfg, key, value)
    if out_dir is not None:
        cfg = override(cfg, "train.out", str(out_dir))
    tc = cfg.train
    for key in ("steps", "batch", "checkpoint_every", "val_every"):
        if getattr(tc, key) < 1:
            raise TrainingError(f"train.{key} must be >= 1; got {getattr(tc, key)}")
    if tc.lr <= 0:
        raise TrainingError(f"train.lr must be > 0; got {tc.lr}")
    rank, world, local_rank = ddp_setup()
    dev = resolve_device(tc.device, local_rank)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convolution kernels
    master = rank == 0
    run_dir = cfg.resolve_path(tc.out)
    ckpt_path = run_dir / CHECKPOINT
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)

    # ---- model, loss, optimiser (resumed when the run folder has a checkpoint)
    from morphable.model import load_model

    face_model = load_model(cfg.resolve_path(cfg.model.path))
    torch.manual_seed(tc.seed)
    net = IterativeNet.from_config(cfg).to(dev)
    # channels_last on every device: 1.2-1.45x on a 2-core CPU as well (benchmarks/train.py)
    net = net.to(memory_format=torch.channels_last)
    loss_fn = GeometryLoss(face_model, "face").to(dev)
    optimizer = torch.optim.Adam(net.parameters(), lr=tc.lr)
    start_step, ckpt = 0, None
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")  # RNG states must stay CPU tensors
        check_resumable(ckpt["config"], cfg)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = tc.lr  # the resumed optimiser keeps its moments, not its old learning rate
        start_step = ckpt["step"]
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[local_rank] if cuda else None)
    if master:
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))

    # ---- data: training stream from the resumed position, fixed validation set
    custom = batches is not None
    workers = data_workers(tc.workers, dev)
    factory = batches if custom else default_batches(cfg, tc.batch, rank, world, workers, pin_memory=cuda)
    val_set = fixed_batches(cfg, cfg.datagen.seed + VAL_SEED_OFFSET, tc.val_samples, tc.batch) if master else []
    expected_shape = tuple(val_set[0]["input"].shape[1:]) if val_set else None
    data = iter(factory(start_step)) if start_step < tc.steps else iter(())
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # after the data iterator: its creation draws from the torch RNG

    # ---- loop
    log = RunLog(run_dir, start_step) if master else None
    last_val = ckpt.get("val_loss") if ckpt else None
    train_loss = ckpt.get("train_loss") if ckpt else None
    bar = tqdm(total=tc.steps, initial=start_step, disable=not (progress and master), dynamic_ncols=True,
               desc="train iterative")
    rate = None
    t_last = time.perf_counter()
    try:
        for step in range(start_step, tc.steps):
            b = next(data)
            if expected_shape is not None and step == start_step and tuple(b["input"].shape[1:]) != expected_shape:
                raise TrainingError(f"training batches have inputs {tuple(b['input'].shape[1:])} but the config "
                                    f"(render.image_size, datagen.color_input) gives {expected_shape}")
            x, a_t, a_gt = to_device(b, dev, True)
            with autocast(dev):
                pred = model(x, a_t)
            loss = loss_fn(pred.float(), a_gt)
            loss_value = loss.detach()
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
            loss_value = loss_value.item()
            if not math.isfinite(loss_value):
                kept = f"{ckpt_path} (step {_saved_step(ckpt_path)})" if ckpt_path.exists() else "none written yet"
                raise TrainingError(f"loss is {loss_value} at step {step + 1}: stopped; last good checkpoint: {kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            done = step + 1
            now = time.perf_counter()
            step_rate = len(x) * world / max(now - t_last, 1e-9)
            rate = step_rate if rate is None else 0.9 * rate + 0.1 * step_rate
            t_last = now
            train_loss = loss_value
            val = None
            if master and (done % tc.val_every == 0 or done == tc.steps):
                val = last_val = estimate_loss(net, loss_fn, val_set, dev, True)
            if master:
                log.row(done, train_loss, val, step_rate)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3g}", val="-" if last_val is None else f"{last_val:.3g}",
                                samples_s=f"{rate:.3g}")
                if val is not None:
                    log.plot()
                if done % tc.checkpoint_every == 0 or done == tc.steps:
                    save_checkpoint(ckpt_path, {
                        "format": FORMAT, "config": cfg.to_dict(), "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": done, "rng": rng_state(),
                        "data_position": data_position(cfg, done, tc.batch, world, custom),
                        "train_loss": train_loss, "val_loss": last_val,
                    })
                t_last = time.perf_counter()  # validation and checkpoint time are not training throughput
    finally:
        bar.close()
        if log is not None:
            log.close()
        del data
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return {"run_dir": str(run_dir), "checkpoint": str(ckpt_path), "step": max(start_step, tc.steps),
            "train_loss": train_loss, "val_loss": last_val, "resumed_from": start_step}


def _saved_step(path: Path) -> int | str:
    try:
        return load_checkpoint(path)["step"]
    except (CheckpointError, FileNotFoundError, KeyError):
        return "?"
