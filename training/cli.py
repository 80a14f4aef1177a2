"""``train``: the iterative network and the detail network (a thin click layer over :mod:`training.train`,
:mod:`training.detail` and :mod:`training.evaluate`). Every flag defaults to the ``pipeline.yaml`` value
shown in its help."""
from __future__ import annotations

import json
from pathlib import Path

import click

from facesynth.cli_util import config_option, load_cfg, user_errors
from facesynth.cli_util import yaml_default as _d

from .train import CheckpointError, TrainingError


@click.group(help="Train the iterative network and the detail network on synthetic faces; evaluate.")
def main():
    pass


#: The keys of a training section every training command overrides with a flag of the same name.
RUN_KEYS = ("data", "online", "out", "steps", "batch", "lr", "device", "workers", "seed")


def run_options(section: str, data_help: str, online_help: str, batch_help: str, seed_help: str):
    """The options every training command shares: ``--config``, one flag per :data:`RUN_KEYS` key of
    ``section`` (its help shows the pipeline.yaml value) and ``--quiet``."""
    options = [
        config_option,
        click.option("--data", type=click.Path(file_okay=False), default=None, help=data_help + _d(f"{section}.data")),
        click.option("--online", is_flag=True, default=None, help=online_help + _d(f"{section}.online")),
        click.option("--out", type=click.Path(file_okay=False), default=None, help="run folder" + _d(f"{section}.out")),
        click.option("--steps", type=int, default=None, help="optimiser steps in all" + _d(f"{section}.steps")),
        click.option("--batch", type=int, default=None, help=batch_help + _d(f"{section}.batch")),
        click.option("--lr", type=float, default=None, help="Adam learning rate" + _d(f"{section}.lr")),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
                     help="auto: cuda if available" + _d(f"{section}.device")),
        click.option("--workers", type=int, default=None, help="data workers" + _d(f"{section}.workers")),
        click.option("--seed", type=int, default=None, help=seed_help + _d(f"{section}.seed")),
        click.option("--quiet", is_flag=True, help="no progress bar"),
    ]

    def deco(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return deco


def run_config(section: str, config, values: dict):
    """The config with the training flags of :func:`run_options` applied to ``section`` (``--data`` means
    not online)."""
    if values["data"] is not None and values["online"]:
        raise click.UsageError("give either --data or --online")
    values = dict(values, online=False if values["data"] is not None else values["online"])
    return load_cfg(config, {f"{section}.{k}": values[k] for k in RUN_KEYS})


@main.command(help="Train (or resume: the same command again) the iterative network; run folder --out.")
@run_options("train", "shard folder", "generate samples on the fly", "samples per step (per GPU)",
             "initialisation and shuffle seed")
@user_errors(TrainingError, CheckpointError)
def iterative(config, quiet, **run):
    from .train import train_iterative

    result = train_iterative(run_config("train", config, run), progress=not quiet)
    click.echo(f"step {result['step']}: train loss {result['train_loss']:.4g} mm², validation loss "
               f"{result['val_loss']:.4g} mm²; checkpoint {result['checkpoint']}")


@main.command(help="Train (or resume: the same command again) the detail network; run folder --out.")
@run_options("detail", "shards made with datagen.detail: true", "generate faces on the fly",
             "crops per step (per GPU)", "faces, crops and initialisation seed")
@click.option("--coarse-weights", type=click.Path(dir_okay=False), default=None,
              help="iterative-network weights for the coarse start [default: refine.weights if that file exists, "
                   "else the landmark fit]")
@user_errors(TrainingError, CheckpointError)
def detail(config, quiet, coarse_weights, **run):
    from .detail import coarse_source, train_detail

    cfg = run_config("detail", config, run)
    weights = coarse_source(cfg, coarse_weights)
    click.echo(f"coarse start: {'landmark fit' if weights is None else f'iterative network {weights}'}; data: "
               f"{'on the fly' if cfg.detail.online else cfg.detail.data}", err=True)
    result = train_detail(cfg, coarse_weights=coarse_weights, progress=not quiet)
    click.echo(f"step {result['step']}: train loss {result['train_loss']:.4g}, validation loss "
               f"{result['val_loss']:.4g}; checkpoint {result['checkpoint']} (refine reads {cfg.detail.weights})")


@main.command(help="3D error of the iterative network on synthetic faces; prints one JSON object.")
@config_option
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="weights or checkpoint [default: refine.weights (shipped), else <train.out>/ckpt.pt]")
@click.option("--data", type=click.Path(file_okay=False), default=None, help="shard folder (default: --online)")
@click.option("--online", is_flag=True, help="generate the faces (seed datagen.seed + 2000003)")
@click.option("--n", type=int, default=None, help="faces" + _d("evaluate.n"))
@click.option("--iterations", type=int, default=None, help="network passes" + _d("evaluate.iterations"))
@click.option("--pose", "pose_source", type=click.Choice(["true", "landmarks"]), default="landmarks",
              show_default=True, help="true pose, or fitted to noisy landmarks")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="error-map PNG [default: next to the weights, eval_errors.png]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help=_d("train.device")[1:])
@click.option("--no-landmark-fit", is_flag=True, help="skip the landmark-fit baseline (about 1 s per face)")
@user_errors(TrainingError, CheckpointError)
def evaluate(config, weights, data, online, n, iterations, pose_source, out, device, no_landmark_fit):
    from facesynth.config import config_from_dict, override

    from .evaluate import evaluate as run_evaluation
    from .evaluate import online_faces, shard_faces
    from coarse.network import IterativeNet
    from .train import load_checkpoint, resolve_device

    if data is not None and online:
        raise click.UsageError("give either --data or --online")
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"dataset folder {data} not found")
    cfg = load_cfg(config, {"evaluate.n": n, "evaluate.iterations": iterations, "train.device": device})
    for key in ("n", "iterations"):
        if getattr(cfg.evaluate, key) < 1:
            raise click.ClickException(f"--{key} must be >= 1; got {getattr(cfg.evaluate, key)}")
    if weights is not None:
        path = Path(weights)
    else:  # the shipped weights, else the default run folder's checkpoint
        path = cfg.resolve_path(cfg.refine.weights)
        if not path.exists():
            path = cfg.resolve_path(cfg.train.out) / "ckpt.pt"
    dev = resolve_device(cfg.train.device)
    ckpt = load_checkpoint(path, map_location="cpu")
    trained = config_from_dict(ckpt["config"])
    net = IterativeNet.from_config(trained)
    net.load_state_dict(ckpt["model"])
    # The network's input format is the one it was trained with.
    cfg = override(cfg, "render.image_size", trained.render.image_size)
    cfg = override(cfg, "datagen.color_input", trained.datagen.color_input)
    if data is not None:
        faces = shard_faces(data, cfg.evaluate.n, color=cfg.datagen.color_input)
    else:
        faces = online_faces(cfg, cfg.evaluate.n)
    png = Path(out) if out is not None else path.parent / "eval_errors.png"
    report = run_evaluation(net, faces, cfg, pose_source=pose_source, error_maps_png=png, device=str(dev),
                            progress=True, landmark_baseline=not no_landmark_fit)
    click.echo(f"error maps: {png}", err=True)
    click.echo(json.dumps(report))



@main.command(help="Write a checkpoint's weights without the optimiser state (what ships in data/).")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--provenance", "provenance_json", type=click.Path(dir_okay=False), default=None,
              help="a JSON file stored in the weights under 'provenance' (run, data size, evaluation)")
@user_errors(TrainingError, CheckpointError)
def export(checkpoint, out, provenance_json):
    from .loop import export_weights

    prov = None
    if provenance_json is not None:
        try:
            prov = json.loads(Path(provenance_json).read_text())
        except (OSError, ValueError) as e:
            raise click.ClickException(f"{provenance_json}: not a readable JSON file ({e})")
    info = export_weights(checkpoint, out, prov)
    click.echo(f"{out}: {info['format']}, step {info.get('step')}, {Path(out).stat().st_size / 1e6:.1f} MB")

if __name__ == "__main__":
    main()
