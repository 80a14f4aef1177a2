"""What every trainer shares (``train iterative``, ``train detail``): devices and DDP, atomic checkpoints with
exact resume, the run folder's log and curves, the progress bar and the NaN stop.

A trainer calls :func:`start_run` (config overrides and checks, device, run folder, the initialisation seed),
builds its network, loss and data, and hands them to :func:`run_training` as a :class:`Job`. The loop:

- Adam with the section's ``lr`` (a resumed run may lower it: the new value wins, the moments are kept);
- resume: a checkpoint in the run folder is continued from (model, optimiser, step, RNG states and data
  position), so the next step is the one an uninterrupted run would take; a run folder of another config
  (other than the keys :func:`resume_may_change` allows) or of another ``Job.meta`` is refused;
- a NaN or infinite loss stops the run with :class:`TrainingError`; ``ckpt.pt`` stays the last good one;
- ``ckpt.pt`` every ``checkpoint_every`` steps and at the end (written atomically), ``log.csv`` (step,
  train_loss, val_loss, samples_per_s), ``curves.png`` at each validation, ``config.json``;
- with ``average_from`` > 0, the running mean of the weights at every checkpoint from that step on
  (:func:`updated_average`, stochastic weight averaging), kept in the checkpoint under ``average`` (so a
  resumed run continues it exactly) and shipped by :func:`export_weights`; validation reports the last weights;
- DDP when started by ``torchrun`` (``WORLD_SIZE`` > 1): the batch is per process, rank 0 validates and
  writes the run folder.

The config section a run reads (``train`` or ``detail``) names: ``out``, ``steps``, ``batch``, ``lr``,
``device``, ``workers``, ``checkpoint_every``, ``val_every``, ``val_samples``, ``seed``, ``average_from``.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from facesynth.config import override
from facesynth.io import atomic_path, write_json

from facesynth.checkpoint import CheckpointError, load_file, read_checkpoint  # noqa: F401  (importable from here)

from .errors import TrainingError

CHECKPOINT, LOG, CURVES = "ckpt.pt", "log.csv", "curves.png"

#: batches(step) -> this process's training batches from step ``step`` on (dicts of tensors).
BatchFactory = Callable[[int], Iterable[dict]]


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
    """The section's ``workers``; 0 means in-process on CPU and one per core (per local process) on CUDA."""
    if requested or device.type != "cuda":
        return requested
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 2) // local_world - 1)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (fp32)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(net: torch.nn.Module):
    """Evaluation mode (BN running statistics) and no gradients inside; the previous mode after."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield net
    finally:
        net.train(was_training)


def held_out_loss(net: torch.nn.Module, batches, forward) -> float:
    """Mean loss per sample over held-out ``batches`` in :func:`eval_mode`; ``forward(batch) -> (mean loss of
    the batch, its size)`` (a trainer's step loss)."""
    total, n = 0.0, 0
    with eval_mode(net):
        for batch in batches:
            loss, size = forward(batch)
            total += loss.item() * size
            n += size
    return total / max(n, 1)


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
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


#: What a shipped weights file keeps of a checkpoint (no optimiser, RNG or data position: not resumable).
WEIGHTS_KEYS = ("format", "config", "model", "step", "train_loss", "val_loss", "init_from")


def updated_average(average: dict | None, net: torch.nn.Module, step: int) -> dict:
    """The running mean of ``net``'s weights with those of ``step`` added: ``{"model": state dict on the CPU,
    "count", "first_step", "last_step"}`` (``average`` None: the first). Floating tensors (weights and the
    batch-norm statistics) are averaged; the others (batch counters) are the last."""
    now = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
    if average is None:
        return {"model": now, "count": 1, "first_step": step, "last_step": step}
    n = average["count"] + 1
    model = {k: a + (now[k] - a) / n if a.is_floating_point() else now[k] for k, a in average["model"].items()}
    return {"model": model, "count": n, "first_step": average["first_step"], "last_step": step}


def export_weights(src: str | Path, dst: str | Path, provenance: dict | None = None, average: bool = True) -> dict:
    """Write the weights of checkpoint ``src`` (either network's format) to ``dst`` atomically, without the
    optimiser state (a quarter of the size), with ``provenance`` (e.g. the run, data size, evaluation) kept
    under that key. A checkpoint with an average of its weights (``average_from``) gives that average, its
    span under ``averaged`` (``count``, ``first_step``, ``last_step``), unless ``average`` is False (the last
    weights). Returns what was written, less the tensors."""
    path = Path(src)
    ckpt = load_file(path, "cpu")
    if not isinstance(ckpt, dict) or not str(ckpt.get("format", "")).startswith("facesynth-"):
        raise CheckpointError(f"{path} is not a facesynth checkpoint")
    out = {k: ckpt[k] for k in WEIGHTS_KEYS if k in ckpt}
    if average and ckpt.get("average") is not None:
        out["model"] = ckpt["average"]["model"]
        out["averaged"] = {k: v for k, v in ckpt["average"].items() if k != "model"}
    out["provenance"] = dict(provenance or {})
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, out)
    return {k: v for k, v in out.items() if k != "model"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


#: Keys of the trained section that a resume may change: they do not change the steps taken. ``lr`` too: a
#: resumed run may lower it (a manual step schedule) and the new value wins; ``average_from``: the average may
#: start with the lower rate (an average already in the checkpoint goes on); ``weights``: where ``refine``
#: reads the trained network.
RESUME_RUN_KEYS = ("steps", "out", "device", "workers", "checkpoint_every", "val_every", "val_samples", "lr", "weights",
                   "average_from")
#: Render keys that choose how, not what, is drawn.
RESUME_RENDER_KEYS = ("render.backend", "render.gl_platform")
#: The stages' config sections: a trainer's run depends on no other stage's keys but those it reads.
STAGE_SECTIONS = ("train", "detail", "evaluate", "refine")


def resume_may_change(key: str, section: str, reads: tuple[str, ...] = ()) -> bool:
    """Whether a resume of the trainer of config ``section`` (``"train"``, ``"detail"``) may change the dotted
    config ``key``: the run keys of its own section (:data:`RESUME_RUN_KEYS`), the render backend
    (:data:`RESUME_RENDER_KEYS`) and the sections of the other stages (:data:`STAGE_SECTIONS`) but for the keys
    in ``reads`` (those the trainer's data depends on, e.g. ``"evaluate.landmark_noise_px"``)."""
    head, _, name = key.partition(".")
    if head == section:
        return name in RESUME_RUN_KEYS
    return key in RESUME_RENDER_KEYS or (head in STAGE_SECTIONS and key not in reads)


def check_resumable(saved: dict, cfg, section: str, reads: tuple[str, ...] = ()) -> None:
    """Refuse to continue a run made with another config, other than the keys :func:`resume_may_change`
    allows. Keys added to ``pipeline.yaml`` since the run was saved count at their current defaults (as
    :func:`facesynth.config.config_from_dict` loads them): a run started before an option existed resumes."""
    from facesynth.config import ConfigError, config_from_dict

    try:
        old = _flat(config_from_dict(saved).to_dict())
    except ConfigError as e:
        raise TrainingError(f"the run folder holds a run whose config this version cannot read ({e})") from None
    new = _flat(cfg.to_dict())
    for key in sorted(set(old) | set(new)):
        if resume_may_change(key, section, reads):
            continue
        if old.get(key) != new.get(key):
            raise TrainingError(f"the run folder holds a run with another config ({key}: {old.get(key)!r} there, "
                                f"{new.get(key)!r} now); use another --out or the same config")


# ----------------------------------------------------------------------------------------- logging
class RunLog:
    """``log.csv`` (one row per step) and ``curves.png`` in the run folder; rows after ``resume_step``
    (written after the last checkpoint of a killed run) are dropped. ``loss_label``: the y axis."""

    FIELDS = ("step", "train_loss", "val_loss", "samples_per_s")

    def __init__(self, run_dir: Path, resume_step: int, loss_label: str = "loss"):
        self.path, self.png, self.loss_label = run_dir / LOG, run_dir / CURVES, loss_label
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
        ax.set_ylabel(self.loss_label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.png) as tmp:
            fig.savefig(tmp, format="png")


# ----------------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Run:
    """One run's setup (:func:`start_run`): the resolved config, its section name, device and DDP ranks,
    and the run folder."""

    cfg: object
    section: str
    device: torch.device
    rank: int
    world: int
    local_rank: int
    run_dir: Path

    @property
    def sec(self):
        """The config section of this run (``cfg.train`` or ``cfg.detail``)."""
        return getattr(self.cfg, self.section)

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT


def start_run(cfg, section: str, out_dir: str | Path | None = None, steps: int | None = None,
              batch: int | None = None, device: str | None = None) -> Run:
    """Apply the overrides to ``<section>.*``, check the values, set up DDP and the device, create the run
    folder (rank 0) and seed the initialisation (``<section>.seed``)."""
    for key, value in (("steps", steps), ("batch", batch), ("device", device)):
        if value is not None:
            cfg = override(cfg, f"{section}.{key}", value)
    if out_dir is not None:
        cfg = override(cfg, f"{section}.out", str(out_dir))
    sec = getattr(cfg, section)
    for key in ("steps", "batch", "checkpoint_every", "val_every"):
        if getattr(sec, key) < 1:
            raise TrainingError(f"{section}.{key} must be >= 1; got {getattr(sec, key)}")
    if sec.lr <= 0:
        raise TrainingError(f"{section}.lr must be > 0; got {sec.lr}")
    rank, world, local_rank = ddp_setup()
    dev = resolve_device(sec.device, local_rank)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest convolution kernels
    run = Run(cfg, section, dev, rank, world, local_rank, cfg.resolve_path(sec.out))
    if run.master:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(sec.seed)
    return run


@dataclass
class Job:
    """What a trainer hands to :func:`run_training`.

    format: checkpoint format key; kind: what the checkpoint holds, for messages (``"iterative-network"``);
    desc: progress-bar label; loss_label: y axis of ``curves.png``;
    net: the network on the run's device (built after :func:`start_run`, so its initialisation is seeded);
    step_loss: ``(model, batch) -> (loss, samples)``, the training loss of one batch (``model`` is ``net``
    or its DDP wrapper; the loop does backward and the optimiser step);
    validation: ``() -> (net -> float)``: builds the validation set (rank 0 only, once the resume checks
    passed and before the training stream starts) and returns the validation loss function (use
    :func:`eval_mode`);
    batches: ``batches(step)`` -> this process's training batches from ``step`` on;
    data_position: ``step -> dict``, where the stream resumes (saved in checkpoints);
    meta: values saved in every checkpoint that a resume must match (e.g. the coarse start of the data);
    reads: keys of other stages' sections that the run depends on: a resume must keep them
    (:func:`resume_may_change`).
    """

    format: str
    kind: str
    desc: str
    loss_label: str
    net: torch.nn.Module
    step_loss: Callable[[torch.nn.Module, dict], tuple[torch.Tensor, int]]
    validation: Callable[[], Callable[[torch.nn.Module], float]]
    batches: BatchFactory
    data_position: Callable[[int], dict]
    meta: dict = field(default_factory=dict)
    reads: tuple[str, ...] = ()


def saved_step(path: Path, fmt: str) -> int | str:
    try:
        return read_checkpoint(path, fmt, "")["step"]
    except (CheckpointError, FileNotFoundError, KeyError):
        return "?"


def run_training(run: Run, job: Job, progress: bool = True) -> dict:
    """Train (or resume) ``job.net`` (see the module docstring).

    Returns:
        ``{"run_dir", "checkpoint", "step", "train_loss", "val_loss", "resumed_from"}``.
    Raises:
        TrainingError: NaN/inf loss (the last checkpoint is kept), a run folder of another config or meta.
    """
    cfg, sec, dev, net = run.cfg, run.sec, run.device, job.net
    optimizer = torch.optim.Adam(net.parameters(), lr=sec.lr)
    start_step, ckpt = 0, None
    if run.ckpt_path.exists():
        ckpt = read_checkpoint(run.ckpt_path, job.format, job.kind, map_location="cpu")  # RNG states stay on CPU
        check_resumable(ckpt["config"], cfg, run.section, job.reads)
        for key, value in job.meta.items():
            if ckpt.get(key) != value:
                raise TrainingError(f"the run folder holds a run with another {key} ({ckpt.get(key)!r} there, "
                                    f"{value!r} now); use another --out or the same settings")
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = sec.lr  # the resumed optimiser keeps its moments, not its old learning rate
        start_step = ckpt["step"]
    model = net
    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[run.local_rank] if dev.type == "cuda" else None)
    if run.master:
        write_json(run.run_dir / "config.json", cfg.to_dict(), indent=1)
    validate = job.validation() if run.master else None
    data = iter(job.batches(start_step)) if start_step < sec.steps else iter(())
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # after the data iterator: its creation draws from the torch RNG

    log = RunLog(run.run_dir, start_step, job.loss_label) if run.master else None
    last_val = ckpt.get("val_loss") if ckpt else None
    average = ckpt.get("average") if ckpt else None
    train_loss = ckpt.get("train_loss") if ckpt else None
    bar = tqdm(total=sec.steps, initial=start_step, disable=not (progress and run.master), dynamic_ncols=True,
               desc=job.desc)
    rate = None
    t_last = time.perf_counter()
    try:
        for step in range(start_step, sec.steps):
            loss, samples = job.step_loss(model, next(data))
            loss_value = loss.detach()
            if run.world > 1:
                import torch.distributed as dist

                dist.all_reduce(loss_value, op=dist.ReduceOp.AVG)
            loss_value = loss_value.item()
            if not math.isfinite(loss_value):
                kept = (f"{run.ckpt_path} (step {saved_step(run.ckpt_path, job.format)})" if run.ckpt_path.exists()
                        else "none written yet")
                raise TrainingError(f"loss is {loss_value} at step {step + 1}: stopped; last good checkpoint: {kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            done = step + 1
            now = time.perf_counter()
            step_rate = samples * run.world / max(now - t_last, 1e-9)
            rate = step_rate if rate is None else 0.9 * rate + 0.1 * step_rate
            t_last = now
            train_loss = loss_value
            val = None
            if run.master and (done % sec.val_every == 0 or done == sec.steps):
                val = last_val = validate(net)
            if run.master:
                log.row(done, train_loss, val, step_rate)
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.3g}", val="-" if last_val is None else f"{last_val:.3g}",
                                samples_s=f"{rate:.3g}")
                if val is not None:
                    log.plot()
                if done % sec.checkpoint_every == 0 or done == sec.steps:
                    if sec.average_from > 0 and done >= sec.average_from:
                        average = updated_average(average, net, done)
                    save_checkpoint(run.ckpt_path, {
                        "format": job.format, "config": cfg.to_dict(), "model": net.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": done, "rng": rng_state(),
                        "data_position": job.data_position(done), "train_loss": train_loss, "val_loss": last_val,
                        **job.meta, **({} if average is None else {"average": average}),
                    })
                t_last = time.perf_counter()  # validation and checkpoint time are not training throughput
    finally:
        bar.close()
        if log is not None:
            log.close()
        del data
        if run.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return {"run_dir": str(run.run_dir), "checkpoint": str(run.ckpt_path), "step": max(start_step, sec.steps),
            "train_loss": train_loss, "val_loss": last_val, "resumed_from": start_step}
