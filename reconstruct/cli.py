"""``refine``: from a real photo to a detailed mesh (a thin click layer over :mod:`reconstruct.pipeline`)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

_IMPORTED = time.perf_counter()

import click

from facesynth.cli_util import config_option, load_cfg, user_errors
from training.errors import CheckpointError, TrainingError

from facesynth.cli_util import yaml_default as _d

# the stages' error types by name (facesynth.cli_util.user_errors): importing their modules here would load
# scipy, Pillow and dlib before any command starts
INPUT_ERROR = "coarse.detect:ReconstructionInputError"
FIT_ERROR = "coarse.fit:FitError"
GLTF_ERROR = "reconstruct.gltf:GltfError"
SCAN_ERROR = "reconstruct.scan:ScanError"


@click.group(help="Reconstruct faces from photos: coarse morphable-model fit, texture, detail network, "
                  "shape from shading.")
def main():
    pass


@main.command(help="Reconstruct the face(s) in IMAGES (a photo, several, a folder or a glob); writes meshes, "
                   "textures and pictures to --out. Several photos: one folder each under --out, a progress bar "
                   "and summary.json / summary.csv; a photo that fails is a summary entry and the run goes on "
                   "(exit code 1 if any failed); finished photos are skipped unless --force.")
@click.argument("images", nargs=-1, required=True)
@config_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder [default: IMAGE's folder / IMAGE's name; several photos: refine/ in their "
                   "common folder]")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="iterative network weights (the landmark fit when absent)" + _d("refine.weights"))
@click.option("--resolution", type=int, default=None, help="SfS pixels over the face" + _d("refine.resolution"))
@click.option("--iterations", type=int, default=None, help="iterative network passes" + _d("refine.iterations"))
@click.option("--no-network", is_flag=True, help="the landmark fit is the coarse face, even with network weights")
@click.option("--network-runtime", type=click.Choice(["auto", "onnx", "torch"]), default=None,
              help="what runs the iterative network: ONNX Runtime (the export beside its weights, made by train "
                   "export-onnx), torch, or auto (onnx on the CPU when that export exists)" + _d("refine.runtime"))
@click.option("--no-photometric", is_flag=True, help="skip the landmark fit's refinement by the photo's shading "
                                                     "(refine.photometric)")
@click.option("--no-identity", is_flag=True, help="no identity from the recognition descriptor (identity.use)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--all/--largest", "all_faces", default=None,
              help="every face above detect.min_interocular_px (one face-NN folder each when there are several; "
                   "smaller faces are skipped with a note), or only the largest" + _d("refine.faces"))
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights (the stage is skipped when absent)" + _d("detail.weights"))
@click.option("--no-detail", is_flag=True, help="skip the detail network")
@click.option("--detail-runtime", type=click.Choice(["auto", "onnx", "torch"]), default=None,
              help="what runs the detail network: ONNX Runtime (the export beside its weights, made by train "
                   "export-onnx), torch, or auto (onnx on the CPU when that export exists)" + _d("detail.runtime"))
@click.option("--no-sfs", is_flag=True, help="skip shape from shading (refined = coarse [+ detail])")
@click.option("--force", is_flag=True, help="overwrite earlier outputs in --out (several photos: redo finished ones)")
@click.option("--jobs", type=int, default=1, show_default=True, help="processes for several photos")
@user_errors(INPUT_ERROR, FIT_ERROR, CheckpointError, TrainingError)
def sfs(images, config, out, weights, resolution, iterations, no_network, network_runtime, no_photometric,
        no_identity, device, detail_weights, no_detail, detail_runtime, all_faces, no_sfs, force, jobs):
    from .models import StackOptions

    cfg = load_cfg(config, {"refine.resolution": resolution, "refine.iterations": iterations,
                            "refine.runtime": network_runtime, "detail.runtime": detail_runtime,
                            "refine.faces": None if all_faces is None else "all" if all_faces else "largest"})
    all_faces = cfg.refine.faces == "all"
    resolution, iterations = cfg.refine.resolution, cfg.refine.iterations
    if resolution < 32 or resolution > 2048:
        raise _input_error(f"--resolution must lie in [32, 2048], got {resolution}")
    if iterations < 1:
        raise _input_error(f"--iterations must be at least 1, got {iterations}")
    if jobs < 1:
        raise _input_error(f"--jobs must be at least 1, got {jobs}")
    options = StackOptions(weights, detail_weights, no_detail, no_sfs, device, iterations, resolution, no_network,
                           no_photometric, no_identity)
    if len(images) == 1 and Path(images[0]).is_file():  # one photo (never a batch): nothing else to import yet
        return _one_photo(Path(images[0]), cfg, options, out, all_faces, force)
    from .batch import default_out, expand_inputs, is_batch, plan, run_batch

    if not is_batch(list(images)):  # one path that is no file: detection says what is wrong with it
        return _one_photo(Path(images[0]), cfg, options, out, all_faces, force)
    found = expand_inputs(list(images))
    if not found:
        raise _input_error(f"no image files in {' '.join(images)} (suffixes .jpg, .png, ...)")
    base = Path(out) if out else default_out(found)
    entries = run_batch(plan(found, base), base, cfg, options, force, all_faces, jobs)
    failed = [e for e in entries if e["status"] == "failed"]
    for e in failed:
        click.echo(f"failed: {e['image']}: {e['error']}", err=True)
    n_done = sum(e["status"] == "done" for e in entries)
    click.echo(f"{base}: {n_done} done, {len(entries) - n_done - len(failed)} skipped, {len(failed)} failed "
               f"of {len(entries)}; summary in {base / 'summary.json'}")
    if failed:
        raise SystemExit(1)


def _input_error(message: str) -> Exception:
    """A :class:`coarse.detect.ReconstructionInputError` (imported here, when one is raised: it loads Pillow)."""
    from coarse.detect import ReconstructionInputError

    return ReconstructionInputError(message)


def _detect(image: Path, detect_cfg, all_faces: bool) -> tuple:
    """``(photo, faces found (coarse.detect.FaceSearch), seconds)``: :func:`reconstruct.batch.detect_photo`
    without the stages' imports (it runs first in a fresh child process), and its wall-clock seconds."""
    t0 = time.perf_counter()
    from coarse.detect import find_faces, load_image

    photo = load_image(image)
    found = find_faces(photo, detect_cfg, largest=not all_faces)
    return photo, found, time.perf_counter() - t0


def _refuse_existing(base: Path, n_faces: int) -> None:
    """Raise the one-line error when ``refine sfs`` without ``--force`` would overwrite outputs in ``base``."""
    from .batch import face_dirs
    from .outputs import existing_outputs

    for d in face_dirs(base, n_faces):
        clash = existing_outputs(d)
        if clash:
            raise _input_error(f"{d / clash[0]} exists: use --force to overwrite or another --out")


#: Seconds ``refine sfs PHOTO`` waits for the forked detection beyond loading the models before it ends the
#: child and detects here (a photo takes about 1 s; only a child stuck on a lock comes near this).
DETECT_CHILD_TIMEOUT_S = 60.0


def _one_photo(image: Path, cfg, options, out, all_faces: bool, force: bool) -> None:
    """``refine sfs PHOTO``: the models (:func:`reconstruct.models.load_stack`), then the detection, then the
    faces. With ``refine.detect_in_background`` (Linux) the face is detected in a forked process
    (:class:`facesynth.background.Background`: reading the photo and loading dlib's models hold Python's lock,
    so a thread would not overlap) while this one imports the stages, loads the models and loads the first
    numba kernel (numba's own start-up, about 0.3 s): on two idle cores they overlap (docs/refine.md). Only in a
    process that has not run dlib yet (:func:`coarse.detect.dlib_has_run`: dlib's thread pool does not survive a
    fork); else the detection runs here, first.

    Prints each face's line and a start-up line; ``params.json`` gets ``timings_s.detect_s`` (photo, dlib's
    models, detectors, landmarks) and ``startup_s``: ``imports`` (process start to this command), ``models``
    (stage imports, face model, coarse settings, detail network), ``detection``, ``waited`` (for the forked
    detection once the models were loaded; 0 without) and ``total`` (process start to the first stage), all
    seconds of wall-clock time."""
    from coarse.detect import dlib_has_run  # both processes need the module (numpy, Pillow, dlib): imported once

    from facesynth.background import Background

    t0 = time.perf_counter()
    imports = _process_seconds()
    base = Path(out) if out else image.with_suffix("")
    fork = cfg.refine.detect_in_background and not dlib_has_run()
    with Background(_detect, image, cfg.detect, all_faces, fork=fork) as detection:
        from .batch import chosen_faces, reconstruct_photo
        from .models import load_stack

        if not force and not all_faces:
            _refuse_existing(base, 1)
        stack = load_stack(cfg, options)
        if detection.forked:  # numba starts (LLVM, its caches) while the child still detects
            stack.model.vertex_normals(stack.model.mean)
        t1 = time.perf_counter()
        photo, found, detect_s = detection.result(timeout=DETECT_CHILD_TIMEOUT_S)
        t2 = time.perf_counter()
    if not force and all_faces:
        _refuse_existing(base, len(chosen_faces(found, all_faces)))
    startup = {"imports": imports, "detection": detect_s, "models": t1 - t0,
               "waited": t2 - t1 if detection.forked else 0.0, "total": imports + t2 - t0,
               "detection_in_background": detection.forked}
    stack = replace(stack, notes={**stack.notes, "startup_s": startup})
    result = reconstruct_photo(image, photo, found, base, cfg, stack, options, all_faces, {"detect_s": detect_s})
    if result.note:
        click.echo(f"{image}: {result.note}")
    for line in result.lines:
        click.echo(line)
    click.echo(f"start-up {startup['total']:.2f} s: imports {imports:.2f}, models {startup['models']:.2f}, detection "
               f"{detect_s:.2f}" + (f" beside them (waited {startup['waited']:.2f})" if detection.forked else "")
               + f"; whole run {imports + time.perf_counter() - t0:.2f} s")
    global _DONE
    _DONE = True


def _process_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``, 10 ms steps), or since this module was imported."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


@main.command(help="Measure the detail network and SfS on synthetic faces with known fine detail (one JSON "
                   "object on stdout).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="shards made with datagen.detail; default: generate --n faces on the fly")
@click.option("--n", type=int, default=20, show_default=True, help="faces (on the fly, or at most from --data)")
@click.option("--coarse", type=click.Choice(["true", "landmarks", "detector"]), default="true", show_default=True,
              help="coarse start: the true smooth face, the old landmark fit of noisy true landmarks, or the real "
                   "front end (the detector on the render, then the calibrated fit, as refine sfs runs it)")
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights (without them only coarse and sfs are reported)" + _d("detail.weights"))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@config_option
@user_errors(INPUT_ERROR, CheckpointError, TrainingError)
def evaluate(data, n, coarse, detail_weights, device, config):
    from .evaluate import evaluate_sfs
    from .models import load_detail_predictor

    cfg = load_cfg(config, {})
    detail, used = load_detail_predictor(detail_weights, cfg, device)
    report = evaluate_sfs(cfg, data, n, coarse, detail=detail)
    report["detail_weights"] = used
    click.echo(json.dumps(report, indent=1))



@main.command("evaluate-scan", help="Render each textured scan (a SCAN_DIR holds one .obj with its texture, and "
                                    "landmarks68.txt in mm, or gets landmarks from head-on renders; a folder of "
                                    "such folders stands for all of them) in many poses and lights, run refine on "
                                    "each render and score every stage NoW-style against the scan; the figure is each "
                                    "stage's median over a scan / the mean face's, averaged over the scans (one "
                                    "JSON object on stdout; renders and pictures in --out/<scan>).")
@click.argument("scan_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--views", type=int, default=None, help="renders per scan" + _d("scan_eval.views"))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for scans.json and one folder per scan (renders, views.png, error_map.png, "
                   "scan_eval.json)" + _d("scan_eval.out"))
@click.option("--image-size", type=int, default=None, help="render side, pixels" + _d("scan_eval.image_size"))
@click.option("--seed", type=int, default=None, help="poses, lights, backgrounds" + _d("scan_eval.seed"))
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="iterative network weights (the landmark fit when absent)" + _d("refine.weights"))
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights (the stage is skipped when absent)" + _d("detail.weights"))
@click.option("--no-detail", is_flag=True, help="skip the detail network")
@click.option("--no-sfs", is_flag=True, help="skip shape from shading")
@click.option("--no-network", is_flag=True, help="the landmark fit is the coarse face, even with network weights")
@click.option("--no-photometric", is_flag=True, help="skip the landmark fit's refinement by the photo's shading "
                                                     "(refine.photometric)")
@click.option("--no-identity", is_flag=True, help="no identity from the recognition descriptor (identity.use)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@config_option
@user_errors(INPUT_ERROR, FIT_ERROR, CheckpointError, TrainingError, SCAN_ERROR)
def evaluate_scan(scan_dirs, views, out, image_size, seed, weights, detail_weights, no_detail, no_sfs, no_network,
                  no_photometric, no_identity, device, config):
    from .models import StackOptions, load_stack
    from .scan import ScanError
    from .scan_eval import evaluate_scans, scan_folders

    if views is not None and views < 1 or image_size is not None and image_size < 64:
        raise ScanError(f"--views must be >= 1 and --image-size >= 64, got {views} and {image_size}")
    cfg = load_cfg(config, {"scan_eval.views": views, "scan_eval.image_size": image_size, "scan_eval.seed": seed})
    folders = scan_folders(list(scan_dirs))  # a bad folder fails before anything loads
    stack = load_stack(cfg, StackOptions(weights, detail_weights, no_detail, no_sfs, device, no_network=no_network,
                                         no_photometric=no_photometric, no_identity=no_identity))
    report = evaluate_scans(folders, stack.model, cfg, Path(out) if out else cfg.resolve_path(cfg.scan_eval.out),
                            cfg.scan_eval.views, stack.coarse, stack.detail, sfs=not no_sfs, notes=stack.notes)
    click.echo(json.dumps(report, indent=1))


@main.command(help="Track and reconstruct the face through CLIP (any video FFmpeg reads): landmarks tracked from "
                   "frame to frame and smoothed, one identity for the clip, expression and pose per frame. Writes "
                   "frames.jsonl, identity.json, neutral.obj, overlay.mp4 and summary.json to --out.")
@click.argument("clip", type=click.Path(dir_okay=False))
@config_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder [default: CLIP's folder / CLIP's name]")
@click.option("--obj", "obj", is_flag=True, help="also each frame's mesh, obj/frame_NNNNNN.obj (model frame)")
@click.option("--animation", is_flag=True, help="also animation/: neutral.obj and coefficients.csv (pose and the 53 "
                                               "expression weights per frame)")
@click.option("--detail", is_flag=True, help="also the detail network and SfS per frame: detail/frame_NNNNNN.obj")
@click.option("--gltf", is_flag=True, help="also animation.glb (glTF 2.0: the clip's head with the 53 blendshapes as "
                                          "ARKit-named morph targets, their weights and the head's pose animated "
                                          "at the frame times) and blendshapes.csv (Live Link Face's CSV layout)")
@click.option("--no-overlay", is_flag=True, help="skip overlay.mp4")
@click.option("--no-photometric", is_flag=True, help="skip the per-frame refinement by the frame's shading "
                                                     "(video.photometric_rounds)")
@click.option("--max-frames", type=int, default=None, help="only the first frames")
@click.option("--resolution", type=int, default=None, help="SfS pixels over the face, with --detail"
              + _d("refine.resolution"))
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights for --detail" + _d("detail.weights"))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="overwrite earlier outputs in --out")
@user_errors(INPUT_ERROR, FIT_ERROR, CheckpointError, TrainingError)
def video(clip, config, out, obj, animation, detail, gltf, no_overlay, no_photometric, max_frames, resolution,
          detail_weights, device, force):
    from .models import StackOptions, load_stack
    from .video import VideoOptions, existing_outputs, process_video, video_info

    cfg = load_cfg(config, {"refine.resolution": resolution})
    if max_frames is not None and max_frames < 1:
        raise _input_error(f"--max-frames must be at least 1, got {max_frames}")
    video_info(clip)  # a bad file is a one-line error before anything loads
    base = Path(out) if out else Path(clip).with_suffix("")
    clash = existing_outputs(base)
    if clash and not force:
        raise _input_error(f"{base / clash[0]} exists: use --force to overwrite or another --out")
    stack = load_stack(cfg, StackOptions(detail_weights=detail_weights, no_detail=not detail, device=device,
                                         no_photometric=no_photometric))
    options = VideoOptions(obj, animation, detail, not no_overlay, max_frames, cfg.refine.resolution, gltf)
    s = process_video(clip, base, cfg, stack, options)
    click.echo(f"{base}: {s['frames']} frames, {s['frames_with_face']} with a face "
               f"({s['detector_runs']} detector runs), identity from {s['identity_frames']} frames, "
               f"{s['frames_per_s']:.1f} frames/s")


@main.command("gltf-preview", help="Draw GLB (a face.glb or animation.glb that refine wrote) in three panels: "
                                   "the neutral head, jawOpen = 1 and mouthSmileLeft + mouthSmileRight = 1 (its "
                                   "ARKit-named morph targets), as a PNG.")
@click.argument("glb", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="the PNG to write")
@click.option("--size", type=int, default=None, help="pixels (square) of each panel" + _d("gltf.preview_size"))
@config_option
@user_errors(GLTF_ERROR)
def gltf_preview(glb, out, size, config):
    from facesynth.io import save_png

    from .gltf import preview_sheet

    cfg = load_cfg(config, {"gltf.preview_size": size})
    sheet = preview_sheet(glb, cfg.gltf.preview_size, cfg.render.gl_platform)
    save_png(out, sheet)
    click.echo(f"{out}: {sheet.shape[1]}x{sheet.shape[0]} pixels")


@main.command("sample-clip", help="Render the project's synthetic clip to OUT (MP4): a face turning its head and "
                                  "talking, with its truth per frame in OUT's name .truth.json.")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--frames", type=int, default=100, show_default=True)
@click.option("--size", type=(int, int), default=(640, 480), show_default=True, help="width height, pixels")
@click.option("--fps", type=int, default=25, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True, help="the face (datagen.scene.draw_scene)")
@click.option("--still", is_flag=True, help="a head that does not move (for jitter)")
@click.option("--noise", type=float, default=2.0, show_default=True, help="sensor noise, std in grey levels")
@click.option("--crf", type=int, default=28, show_default=True, help="x264 quality (lower: better, bigger)")
@config_option
@user_errors(INPUT_ERROR)
def sample_clip(out, frames, size, fps, seed, still, noise, crf, config):
    from morphable.model import load_model

    from .video_eval import make_sample_clip, truth_path

    if frames < 1 or fps < 1 or min(size) < 64:
        raise _input_error("--frames and --fps must be >= 1 and --size at least 64 64")
    cfg = load_cfg(config, {})
    model = load_model(cfg.resolve_path(cfg.model.path))
    make_sample_clip(out, model, cfg, frames, size[0], size[1], fps, seed, still, noise, crf)
    click.echo(f"{out}: {frames} frames of {size[0]}x{size[1]} at {fps} fps; truth in {truth_path(out)}")


@main.command("evaluate-video", help="Run refine video on CLIP and fit each frame alone (the baseline), and score "
                                     "both against the clip's truth (refine sample-clip): pose, expression, "
                                     "identity and frame-to-frame motion (on a --still clip: jitter). One JSON "
                                     "object on stdout.")
@click.argument("clip", type=click.Path(dir_okay=False))
@click.option("--truth", type=click.Path(dir_okay=False), default=None,
              help="the clip's truth [default: CLIP's name .truth.json]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="refine video's outputs [default: CLIP's folder / CLIP's name]")
@click.option("--max-frames", type=int, default=None, help="only the first frames")
@click.option("--no-baseline", is_flag=True, help="skip fitting each frame alone")
@click.option("--no-photometric", is_flag=True, help="landmark fits only (no refinement by the frames' shading)")
@config_option
@user_errors(INPUT_ERROR, FIT_ERROR)
def evaluate_video(clip, truth, out, max_frames, no_baseline, no_photometric, config):
    from .models import StackOptions, load_stack
    from .video_eval import evaluate_clip, load_truth, truth_path

    cfg = load_cfg(config, {})
    t = load_truth(truth or truth_path(clip))
    stack = load_stack(cfg, StackOptions(no_detail=True, no_photometric=no_photometric))
    report = evaluate_clip(clip, t, cfg, stack, Path(out) if out else Path(clip).with_suffix(""), max_frames,
                           not no_baseline)
    click.echo(json.dumps(report, indent=1))


#: Set by a command whose work is done and whose files are all written and closed: :func:`run` may then skip the
#: interpreter's teardown.
_DONE = False


def run() -> None:
    """The ``refine`` program: :func:`main`, then, after ``refine sfs PHOTO`` succeeded (its files written and
    closed), an exit that skips the interpreter's teardown (freeing numba's LLVM, ONNX Runtime and every
    module one by one: 0.2-0.5 s) by ``os._exit`` once stdout and stderr are flushed. Anything else, an
    error included, exits as usual."""
    import sys

    try:
        main()
    except SystemExit as e:
        if _DONE and e.code in (None, 0):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


if __name__ == "__main__":
    run()
