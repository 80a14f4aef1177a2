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


def photo_scene_config(cfg):
    """The scene sampler's settings for photo-like test faces: the ``evaluate`` section's image size and yaw
    range (textured, random light and background as in training)."""
    from facesynth.config import override

    ev = cfg.evaluate
    cfg = override(cfg, "render.image_size", ev.image_size)
    cfg = override(cfg, "sampling.pose.yaw_std_deg", ev.yaw_std_deg)
    return override(cfg, "sampling.pose.max_yaw_deg", ev.max_yaw_deg)


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


START_HELP = ("a_t of the samples: fit (landmark fit of simulated detector landmarks), photometric (that fit refined "
              "by the photometric fit on a photo-sized render, ~0.3 s a sample) or mean")


def render_options(fn):
    """``--workers`` (render processes, refused below 0) and ``--quiet``, for the commands that render pairs."""
    def check(ctx, param, value):
        if value < 0:
            raise click.ClickException(f"--workers must be >= 0; got {value}")
        return value

    fn = click.option("--quiet", is_flag=True, help="no progress bar")(fn)
    return click.option("--workers", type=int, default=0, show_default=True, callback=check,
                        help="render processes (0: this process)")(fn)


@main.command(help="Train (or resume: the same command again) the iterative network; run folder --out.")
@run_options("train", "shard folder", "generate samples on the fly", "samples per step (per GPU)",
             "initialisation and shuffle seed")
@click.option("--cache", type=click.Path(dir_okay=False), multiple=True,
              help="train on the pairs of a `train cache` file, augmented on the fly; repeat it to train on "
                   "several as one set" + _d("train.cache"))
@click.option("--start", type=click.Choice(["fit", "photometric", "mean"]), default=None, help=START_HELP + _d("train.start"))
@click.option("--init", type=click.Path(dir_okay=False), default=None,
              help="start a new run from these weights (a checkpoint or exported file of the same network)"
                   + _d("train.init"))
@user_errors(TrainingError, CheckpointError)
def iterative(config, quiet, cache, start, init, **run):
    from facesynth.config import override

    from .train import train_iterative

    if cache and (run["data"] is not None or run["online"]):
        raise click.UsageError("give one of --cache, --data and --online")
    cfg = run_config("train", config, run)
    for key, value in (("train.cache", list(cache) or None), ("train.start", start), ("train.init", init)):
        if value is not None:
            cfg = override(cfg, key, value)
    result = train_iterative(cfg, progress=not quiet)
    click.echo(f"step {result['step']}: train loss {result['train_loss']:.4g} mm², validation loss "
               f"{result['val_loss']:.4g} mm²; checkpoint {result['checkpoint']}")


@main.command(help="Render training pairs of the iterative network once, into one file for `train iterative --cache` "
                   "(resumable: the same command again).")
@config_option
@click.option("--n", type=int, required=True, help="samples (0 .. n - 1 of the dataset)")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="cache file (HDF5)")
@click.option("--seed", type=int, default=None, help="dataset seed" + _d("datagen.seed"))
@click.option("--start", type=click.Choice(["fit", "photometric", "mean"]), default=None, help=START_HELP + _d("train.start"))
@click.option("--error-scale", type=float, nargs=2, default=None, metavar="LOW HIGH",
              help="start fit: the simulated detector's error x s ~ U[LOW, HIGH] per pair (1: dlib, 0: exact points)"
                   + _d("train.start_error_scale"))
@click.option("--landmarks", type=click.Choice(["detector", "true"]), default=None,
              help="start fit: landmarks of the simulated detector, or the model's landmark vertices + noise of "
                   "s x train.start_true_noise_mm" + _d("train.start_landmarks"))
@render_options
@user_errors(TrainingError, CheckpointError)
def cache(config, n, out, seed, start, error_scale, landmarks, workers, quiet):
    import time

    from .cache import draw_preview, write_cache

    cfg = load_cfg(config, {"datagen.seed": seed, "train.start": start, "train.start_error_scale": error_scale,
                            "train.start_landmarks": landmarks})
    t0 = time.perf_counter()
    result = write_cache(cfg, out, n, cfg.datagen.seed, workers, progress=not quiet)
    took = time.perf_counter() - t0
    rate = f", {result['rendered'] / took:.3g} samples/s" if result["rendered"] else ""
    png = draw_preview(out, cfg.train.augment, str(out) + ".png")
    click.echo(f"{result['path']}: {result['n']} samples ({result['rendered']} rendered now in {took:.0f} s{rate}); "
               f"preview {png}")


@main.command("cache-next", help="Add the pairs of the network's later passes to a cache: a_t from a trained network's "
                                 "first pass (training/next_pass.py); resumable: the same command again.")
@config_option
@click.option("--cache", "source", type=click.Path(dir_okay=False), required=True,
              help="the `train cache` file (made with this config; its start policy is the file's)")
@click.option("--weights", type=click.Path(dir_okay=False), required=True, help="the trained network")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="new cache file: the source's pairs, then the next-pass pairs")
@click.option("--n", type=int, default=None, help="at most this many next-pass pairs [default: one per first-pass pair]")
@render_options
@user_errors(TrainingError, CheckpointError)
def cache_next(config, source, weights, out, n, workers, quiet):
    import time

    from .cache import draw_preview
    from .next_pass import write_next_pass

    if not Path(weights).is_file():
        raise click.ClickException(f"weights file {weights} not found")
    cfg = load_cfg(config, {})
    t0 = time.perf_counter()
    result = write_next_pass(cfg, source, weights, out, workers, progress=not quiet, n=n)
    took = time.perf_counter() - t0
    png = draw_preview(out, cfg.train.augment, str(out) + ".png", first=result["n"] - result["next_pass"])
    click.echo(f"{result['path']}: {result['n']} pairs, {result['next_pass']} of them for the next passes "
               f"({result['rendered']} rendered now in {took:.0f} s); preview {png}")


@main.command("identity-data", help="Render photo-like synthetic faces, run the detector and the face-recognition "
                                    "network on each, and keep the descriptors beside the truth (training/identity.py); "
                                    "resumable: the same command again.")
@config_option
@click.option("--n", type=int, default=None, help="faces (0 .. n - 1 of the set)" + _d("identity.n"))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="file (HDF5)" + _d("identity.data"))
@click.option("--seed", type=int, default=None, help="the faces' seed" + _d("identity.seed"))
@render_options
@user_errors(TrainingError)
def identity_data(config, n, out, seed, workers, quiet):
    import time

    from .identity import read_identity_data, write_identity_data

    cfg = load_cfg(config, {"identity.n": n, "identity.data": out, "identity.seed": seed})
    idc = cfg.identity
    path = cfg.resolve_path(idc.data)
    t0 = time.perf_counter()
    result = write_identity_data(cfg, path, idc.n, idc.seed, workers, progress=not quiet)
    took = time.perf_counter() - t0
    found = float(read_identity_data(path)["found"].mean())
    rate = f", {took / result['rendered']:.3g} s per face" if result["rendered"] else ""
    click.echo(f"{result['path']}: {result['n']} faces ({result['rendered']} now in {took:.0f} s{rate}); "
               f"detector found {found:.1%}")


@main.command("identity", help="Learn the map from the face-recognition descriptor to the identity coefficients on "
                               "the faces of `train identity-data` (training/identity.py), report it on held-out "
                               "faces, and write it where refine reads it.")
@config_option
@click.option("--data", type=click.Path(dir_okay=False), default=None, help="identity-faces file" + _d("identity.data"))
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="the map (.npz)" + _d("identity.weights"))
@click.option("--regressor", type=click.Choice(["auto", "ridge", "mlp"]), default=None,
              help="the candidates to try" + _d("identity.regressor"))
@click.option("--report", type=click.Path(file_okay=False), default=None,
              help="folder for identity_report.json and .png [default: beside --out]")
@click.option("--quiet", is_flag=True)
@user_errors(TrainingError)
def identity(config, data, out, regressor, report, quiet):
    import datetime

    from facesynth.io import write_json

    from .identity import draw_identity_report, train_identity_map

    cfg = load_cfg(config, {"identity.data": data, "identity.weights": out, "identity.regressor": regressor})
    id_map, rep = train_identity_map(cfg, cfg.resolve_path(cfg.identity.data), progress=not quiet)
    id_map.provenance.update(made=datetime.date.today().isoformat(), command="train identity",
                             test=rep["test"] | {"r2_per_mode": None})
    path = id_map.save(cfg.resolve_path(cfg.identity.weights))
    folder = Path(report) if report else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "identity_report.json", rep, indent=1)
    draw_identity_report(rep, folder / "identity_report.png")
    t = rep["test"]
    click.echo(f"{path}: {rep['chosen']}, {t['explained_identity_variance']:.1%} of the identity's geometric variance "
               f"on {t['faces']} held-out faces (norm {t['prediction_norm']:.2f} vs {t['truth_norm']:.2f}); "
               f"report {folder / 'identity_report.json'}")


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


@main.command(help="3D error of the coarse stage (mean face, landmark fit, network iterations) on synthetic faces "
                   "with known geometry; prints one JSON object.")
@config_option
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="network weights or checkpoint [default: refine.weights when it exists; without weights the "
                   "mean face and the landmark fit are reported]")
@click.option("--no-network", is_flag=True, help="no network passes: the fits are the coarse face, even with network weights")
@click.option("--no-photometric", is_flag=True, help="skip the landmark fit's refinement by the photo's shading "
                                                     "(refine.photometric)")
@click.option("--no-identity", is_flag=True, help="no identity from the recognition descriptor (identity.use)")
@click.option("--data", type=click.Path(file_okay=False), default=None, help="shard folder (default: on the fly)")
@click.option("--online", is_flag=True, help="generate the faces (seed datagen.seed + 2000003; the default)")
@click.option("--n", type=int, default=None, help="faces" + _d("evaluate.n"))
@click.option("--landmarks", type=click.Choice(["detector", "true"]), default=None,
              help="the detector on the render, or the true landmarks + noise" + _d("evaluate.landmarks"))
@click.option("--landmark-noise", type=float, default=None, help="pixels, with --landmarks true"
              + _d("evaluate.landmark_noise_px"))
@click.option("--iterations", type=int, default=None, help="network passes" + _d("evaluate.iterations"))
@click.option("--pose", "pose_source", type=click.Choice(["true", "landmarks"]), default="landmarks",
              show_default=True, help="the network's pose: true, or fitted to the landmarks")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="error-map PNG [default: eval_errors.png next to the weights, else in train.out]")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None, help=_d("train.device")[1:])
@click.option("--no-uncalibrated-fit", is_flag=True, help="skip the older landmark fit (reported for reference)")
@click.option("--perspective", is_flag=True,
              help="perspective camera (distances evaluate.perspective_distance_mm) instead of weak perspective")
@click.option("--fit-identity-modes", type=int, default=None,
              help="out-of-span check: the fit uses only the first N identity modes (faces use all)")
@click.option("--albedo", type=click.Choice(["textured", "uniform"]), default=None,
              help="the faces' colouring: the albedo model's skin, or its mean over the face with eyes and teeth "
                   "as the materials give them (no skin texture)" + _d("evaluate.albedo"))
@user_errors(TrainingError, CheckpointError)
def evaluate(config, weights, no_network, no_photometric, no_identity, data, online, n, landmarks, landmark_noise, iterations,
             pose_source, out, device, no_uncalibrated_fit, perspective, fit_identity_modes, albedo):
    from coarse.network import load_iterative
    from coarse.stage import CoarseSettings
    from datagen.faces import EVAL_SEED_OFFSET, face_source
    from facesynth.config import optional_file
    from morphable.model import load_model
    from render.renderer import FaceRenderer

    from .evaluate import evaluate as run_evaluation
    from .train import resolve_device

    if data is not None and online:
        raise click.UsageError("give either --data or --online")
    if weights is not None and no_network:
        raise click.UsageError("give either --weights or --no-network")
    if data is not None and not Path(data).is_dir():
        raise FileNotFoundError(f"dataset folder {data} not found")
    cfg = load_cfg(config, {"evaluate.n": n, "evaluate.iterations": iterations, "train.device": device,
                            "evaluate.landmarks": landmarks, "evaluate.landmark_noise_px": landmark_noise,
                            "evaluate.albedo": albedo})
    ev = cfg.evaluate
    for key in ("n", "iterations"):
        if getattr(ev, key) < 1:
            raise click.ClickException(f"--{key} must be >= 1; got {getattr(ev, key)}")
    if fit_identity_modes is not None and not 0 <= fit_identity_modes <= cfg.model.n_identity:
        raise click.ClickException(f"--fit-identity-modes must lie in [0, {cfg.model.n_identity}]; got {fit_identity_modes}")
    if ev.landmark_noise_px < 0:
        raise click.ClickException(f"--landmark-noise must be >= 0; got {ev.landmark_noise_px}")
    path = None if no_network else optional_file(cfg, weights, cfg.refine.weights)
    network = None if path is None else load_iterative(path, str(resolve_device(cfg.train.device)))
    model = load_model(cfg.resolve_path(cfg.model.path))
    coarse = CoarseSettings.from_config(cfg, network, ev.iterations, photometric=not no_photometric,
                                        identity=not no_identity)
    # the online test faces: photo-like renders (the scene sampler's settings with the evaluate section's)
    scene_cfg = photo_scene_config(cfg)
    renderer = FaceRenderer.from_config(model, scene_cfg.render)
    if perspective and data is not None:
        raise click.UsageError("--perspective renders faces on the fly: give it without --data")
    if ev.albedo != "textured" and data is not None:
        raise click.UsageError(f"--albedo {ev.albedo} renders faces on the fly: give it without --data")
    faces = face_source(scene_cfg, ev.n, cfg.datagen.seed + EVAL_SEED_OFFSET, model, renderer, data,
                        tuple(ev.perspective_distance_mm) if perspective else None, ev.albedo)
    png = Path(out) if out else (Path(path).parent if path else cfg.resolve_path(cfg.train.out)) / "eval_errors.png"
    report = run_evaluation(faces, model, coarse, cfg.render, ev.landmarks, ev.landmark_noise_px, pose_source,
                            error_maps_png=png, n_maps=ev.error_maps, progress=True,
                            uncalibrated_fit=not no_uncalibrated_fit, detect_params=cfg.detect,
                            fit_identity_modes=fit_identity_modes)
    report["weights"] = None if path is None else str(path)
    report["camera"] = f"perspective {ev.perspective_distance_mm} mm" if perspective else "weak perspective"
    report["albedo"] = ev.albedo
    click.echo(f"error maps: {png}", err=True)
    click.echo(json.dumps(report))


@main.command("calibrate-landmarks", help="Learn where the detector's 68 points lie on the face model from "
                                            "synthetic renders (writes the JSON that fit.landmarks names).")
@config_option
@click.option("--n", type=int, default=300, show_default=True, help="renders")
@click.option("--seed", type=int, default=7_000_001, show_default=True,
              help="seed of the renders (keep it apart from the evaluation's datagen.seed + 2000003)")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="landmark model JSON" + _d("fit.landmarks"))
@click.option("--records", "records_out", type=click.Path(dir_okay=False), default=None,
              help="also save the detector's raw records (.npz) for analysis")
@user_errors(TrainingError, CheckpointError)
def calibrate_landmarks(config, n, seed, out, records_out):
    import sys

    import numpy as np

    from coarse.calibrate import calibrate_detector, detector_records
    from coarse.detect import detect_faces
    from datagen.faces import online_faces
    from facesynth.io import write_json
    from morphable.model import load_model
    from render.renderer import FaceRenderer

    if n < 10:
        raise click.ClickException(f"--n must be >= 10; got {n}")
    cfg = load_cfg(config, {})
    ev = cfg.evaluate
    scene_cfg = photo_scene_config(cfg)
    model = load_model(cfg.resolve_path(cfg.model.path))
    renderer = FaceRenderer.from_config(model, scene_cfg.render)
    records = detector_records(online_faces(scene_cfg, n, seed, model, renderer),
                               lambda image: detect_faces(image, cfg.detect), progress=True, total=n)
    if records_out:
        np.savez_compressed(records_out, **records)
    command = "train calibrate-landmarks " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "train calibrate-landmarks"
    lm = calibrate_detector(records, model, {"command": command, "seed": seed, "image_size": ev.image_size,
                                             "yaw_std_deg": ev.yaw_std_deg, "max_yaw_deg": ev.max_yaw_deg,
                                             "detector": "coarse.detect.detect_faces (dlib HOG, then CNN; 68-point "
                                                         "predictor of face-recognition-models)"})
    path = Path(out) if out else cfg.resolve_path(cfg.fit.landmarks)
    write_json(path, lm.to_dict())
    p = lm.provenance
    click.echo(f"{path}: {p['found']} of {p['renders']} faces found ({p['detectors']}); landmark residual "
               f"{p['residual_rms_mm_before']:.2f} -> {p['residual_rms_mm_after']:.2f} mm rms")


@main.command(help="Write a checkpoint's weights without the optimiser state (what ships in data/).")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--provenance", "provenance_json", type=click.Path(dir_okay=False), default=None,
              help="a JSON file stored in the weights under 'provenance' (run, data size, evaluation)")
@click.option("--last", is_flag=True,
              help="the checkpoint's last weights, not their average (a run with train.average_from)")
@user_errors(TrainingError, CheckpointError)
def export(checkpoint, out, provenance_json, last):
    from .loop import export_weights

    prov = None
    if provenance_json is not None:
        try:
            prov = json.loads(Path(provenance_json).read_text())
        except (OSError, ValueError) as e:
            raise click.ClickException(f"{provenance_json}: not a readable JSON file ({e})")
    info = export_weights(checkpoint, out, prov, average=not last)
    avg = info.get("averaged")
    span = f", the average of {avg['count']} checkpoints (steps {avg['first_step']}-{avg['last_step']})" if avg else ""
    click.echo(f"{out}: {info['format']}, step {info.get('step')}{span}, {Path(out).stat().st_size / 1e6:.1f} MB")


@main.command("export-onnx", help="Write the network of each WEIGHTS file as ONNX (the iterative or the detail "
                                  "network, recognised by the file's format), which refine runs with ONNX Runtime "
                                  "instead of torch (quicker to start); refine uses an export only for the WEIGHTS "
                                  "file it was made from (its SHA-256 is stored in it). Default: the weights refine "
                                  "uses, refine.weights and detail.weights, those that exist.")
@click.argument("weights", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="the ONNX file, with one WEIGHTS [default: WEIGHTS with the suffix .onnx]")
@config_option
@user_errors(CheckpointError)
def export_onnx(weights, out, config):
    cfg = load_cfg(config, {})
    if not weights:
        weights = [str(p) for p in (cfg.resolve_path(cfg.refine.weights), cfg.resolve_path(cfg.detail.weights))
                   if p.exists()]
        if not weights:
            raise click.ClickException(f"neither {cfg.refine.weights} nor {cfg.detail.weights} exists: give WEIGHTS")
    if out is not None and len(weights) > 1:
        raise click.UsageError("--out needs exactly one WEIGHTS")
    for path in weights:
        meta = _onnx_exporter(path)(path, out)
        click.echo(f"{meta['path']}: {meta['format']} of {path} (step {meta['step']}, sha256 "
                   f"{meta['source_sha256'][:12]}...), {Path(meta['path']).stat().st_size / 1e6:.1f} MB")


def _onnx_exporter(path: str):
    """The ONNX export function for the weights file ``path``, by its format tag: the iterative network's
    (:func:`coarse.network.export_onnx`) or the detail network's (:func:`training.detail_net.export_onnx`);
    :class:`CheckpointError` for a file of neither."""
    from coarse.network import FORMAT as ITERATIVE
    from coarse.network import export_onnx as export_iterative
    from facesynth.checkpoint import load_file

    from .detail_net import FORMAT as DETAIL
    from .detail_net import export_onnx as export_detail

    ckpt = load_file(path)
    exporters = {ITERATIVE: export_iterative, DETAIL: export_detail}
    fmt = ckpt.get("format") if isinstance(ckpt, dict) else None
    if fmt not in exporters:
        raise CheckpointError(f"{path} is neither an iterative nor a detail network checkpoint")
    return exporters[fmt]


if __name__ == "__main__":
    main()
