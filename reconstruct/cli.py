"""``refine``: from a real photo to a detailed mesh (a thin click layer over :mod:`reconstruct.pipeline`)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from facesynth.cli_util import config_option, load_cfg, user_errors
from training.errors import CheckpointError, TrainingError

from coarse.detect import ReconstructionInputError
from coarse.fit import FitError
from .gltf import GltfError
from .models import load_coarse, load_detail_predictor
from .scan import ScanError

from facesynth.cli_util import yaml_default as _d


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
@click.option("--no-photometric", is_flag=True, help="skip the landmark fit's refinement by the photo's shading "
                                                     "(refine.photometric)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--all", "all_faces", is_flag=True, help="every face (one folder each), not only the largest")
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights (the stage is skipped when absent)" + _d("detail.weights"))
@click.option("--no-detail", is_flag=True, help="skip the detail network")
@click.option("--no-sfs", is_flag=True, help="skip shape from shading (refined = coarse [+ detail])")
@click.option("--force", is_flag=True, help="overwrite earlier outputs in --out (several photos: redo finished ones)")
@click.option("--jobs", type=int, default=1, show_default=True, help="processes for several photos")
@user_errors(ReconstructionInputError, FitError, CheckpointError, TrainingError)
def sfs(images, config, out, weights, resolution, iterations, no_network, no_photometric, device, detail_weights,
        no_detail, all_faces, no_sfs, force, jobs):
    from .batch import default_out, detect_photo, expand_inputs, face_dirs, is_batch, plan, reconstruct_photo, run_batch
    from .models import StackOptions, load_stack
    from .outputs import existing_outputs

    cfg = load_cfg(config, {"refine.resolution": resolution, "refine.iterations": iterations})
    resolution, iterations = cfg.refine.resolution, cfg.refine.iterations
    if resolution < 32 or resolution > 2048:
        raise ReconstructionInputError(f"--resolution must lie in [32, 2048], got {resolution}")
    if iterations < 1:
        raise ReconstructionInputError(f"--iterations must be at least 1, got {iterations}")
    if jobs < 1:
        raise ReconstructionInputError(f"--jobs must be at least 1, got {jobs}")
    options = StackOptions(weights, detail_weights, no_detail, no_sfs, device, iterations, resolution, no_network,
                           no_photometric)
    if is_batch(list(images)):
        found = expand_inputs(list(images))
        if not found:
            raise ReconstructionInputError(f"no image files in {' '.join(images)} (suffixes .jpg, .png, ...)")
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
        return
    image = Path(images[0])
    photo, faces = detect_photo(image, cfg, all_faces)
    base = Path(out) if out else image.with_suffix("")
    if not force:
        for d in face_dirs(base, len(faces)):
            clash = existing_outputs(d)
            if clash:
                raise ReconstructionInputError(f"{d / clash[0]} exists: use --force to overwrite or another --out")
    result = reconstruct_photo(image, photo, faces, base, cfg, load_stack(cfg, options), options)
    for line in result.lines:
        click.echo(line)


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
@user_errors(ReconstructionInputError, CheckpointError, TrainingError)
def evaluate(data, n, coarse, detail_weights, device, config):
    from .evaluate import evaluate_sfs

    cfg = load_cfg(config, {})
    detail, used = load_detail_predictor(detail_weights, cfg, device)
    report = evaluate_sfs(cfg, data, n, coarse, detail=detail)
    report["detail_weights"] = used
    click.echo(json.dumps(report, indent=1))



@main.command("evaluate-scan", help="Render the textured scan in SCAN_DIR (one .obj with its texture, and "
                                    "landmarks68.txt, in mm) in many poses and lights, run refine on each render "
                                    "and score every stage NoW-style against the scan (one JSON object on stdout; "
                                    "renders and pictures in --out).")
@click.argument("scan_dir", type=click.Path(file_okay=False))
@click.option("--views", type=int, default=None, help="renders" + _d("scan_eval.views"))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder for the renders, views.png, error_map.png and scan_eval.json" + _d("scan_eval.out"))
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
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@config_option
@user_errors(ReconstructionInputError, FitError, CheckpointError, TrainingError, ScanError)
def evaluate_scan(scan_dir, views, out, image_size, seed, weights, detail_weights, no_detail, no_sfs, no_network,
                  no_photometric, device, config):
    import numpy as np

    from morphable.model import load_model

    from .scan import load_scan
    from .scan_eval import evaluate_scan as run

    if views is not None and views < 1 or image_size is not None and image_size < 64:
        raise ScanError(f"--views must be >= 1 and --image-size >= 64, got {views} and {image_size}")
    cfg = load_cfg(config, {"scan_eval.views": views, "scan_eval.image_size": image_size, "scan_eval.seed": seed})
    model = load_model(cfg.resolve_path(cfg.model.path))
    scan = load_scan(scan_dir, model.landmarks(np.zeros(model.n_coeffs)))  # a bad folder fails before the networks load
    coarse, used = load_coarse(weights, cfg, device, no_network=no_network, no_photometric=no_photometric)
    detail, detail_used = (None, None) if no_detail else load_detail_predictor(detail_weights, cfg, device)
    report = run(scan, model, cfg, Path(out) if out else cfg.resolve_path(cfg.scan_eval.out), cfg.scan_eval.views,
                 coarse, detail, sfs=not no_sfs, notes={"weights": used, "detail_weights": detail_used})
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
@click.option("--max-frames", type=int, default=None, help="only the first frames")
@click.option("--resolution", type=int, default=None, help="SfS pixels over the face, with --detail"
              + _d("refine.resolution"))
@click.option("--detail-weights", type=click.Path(dir_okay=False), default=None,
              help="detail network weights for --detail" + _d("detail.weights"))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="overwrite earlier outputs in --out")
@user_errors(ReconstructionInputError, FitError, CheckpointError, TrainingError)
def video(clip, config, out, obj, animation, detail, gltf, no_overlay, max_frames, resolution, detail_weights,
          device, force):
    from .models import StackOptions, load_stack
    from .video import VideoOptions, existing_outputs, process_video, video_info

    cfg = load_cfg(config, {"refine.resolution": resolution})
    if max_frames is not None and max_frames < 1:
        raise ReconstructionInputError(f"--max-frames must be at least 1, got {max_frames}")
    video_info(clip)  # a bad file is a one-line error before anything loads
    base = Path(out) if out else Path(clip).with_suffix("")
    clash = existing_outputs(base)
    if clash and not force:
        raise ReconstructionInputError(f"{base / clash[0]} exists: use --force to overwrite or another --out")
    stack = load_stack(cfg, StackOptions(detail_weights=detail_weights, no_detail=not detail, device=device))
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
@user_errors(GltfError)
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
@user_errors(ReconstructionInputError)
def sample_clip(out, frames, size, fps, seed, still, noise, crf, config):
    from morphable.model import load_model

    from .video_eval import make_sample_clip, truth_path

    if frames < 1 or fps < 1 or min(size) < 64:
        raise ReconstructionInputError("--frames and --fps must be >= 1 and --size at least 64 64")
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
@config_option
@user_errors(ReconstructionInputError, FitError)
def evaluate_video(clip, truth, out, max_frames, no_baseline, config):
    from .models import StackOptions, load_stack
    from .video_eval import evaluate_clip, load_truth, truth_path

    cfg = load_cfg(config, {})
    t = load_truth(truth or truth_path(clip))
    stack = load_stack(cfg, StackOptions(no_detail=True))
    report = evaluate_clip(clip, t, cfg, stack, Path(out) if out else Path(clip).with_suffix(""), max_frames,
                           not no_baseline)
    click.echo(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
