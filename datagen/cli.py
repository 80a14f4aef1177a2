"""``datagen``: synthetic training data (a thin click layer over :mod:`datagen.generate`)."""
from __future__ import annotations

from pathlib import Path

import click

from facesynth.cli_util import config_option, load_cfg, user_errors
from facesynth.cli_util import yaml_default as _d

from .generate import MAX_WORKERS_PER_CORE, DatagenError

@click.group(help="Synthetic faces for training: render shards, look at them, check them.")
def main():
    pass


@main.command(help="Render N samples into WebDataset shards DIR/shard-NNNNNN.tar (resumable).")
@config_option
@click.option("--n", type=int, default=None, help="number of samples" + _d("datagen.n"))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="output folder" + _d("datagen.out"))
@click.option("--workers", type=int, default=None,
              help=f"processes, 0 = one per core (at most {MAX_WORKERS_PER_CORE} per core)" + _d("datagen.workers"))
@click.option("--seed", type=int, default=None, help="dataset seed" + _d("datagen.seed"))
@click.option("--shard-size", type=int, default=None, help="samples per shard" + _d("datagen.shard_size"))
@click.option("--image-size", type=int, default=None, help="image side in pixels" + _d("render.image_size"))
@click.option("--backend", type=click.Choice(["auto", "gl", "numba"]), default=None,
              help="rasteriser" + _d("render.backend"))
@click.option("--node-rank", type=int, default=0, show_default=True, help="this node's rank (job arrays)")
@click.option("--num-nodes", type=int, default=1, show_default=True, help="number of nodes")
@click.option("--quiet", is_flag=True, help="no progress bar")
@user_errors(DatagenError)
def render(config, n, out, workers, seed, shard_size, image_size, backend, node_rank, num_nodes, quiet):
    from .generate import RenderPlan, render_dataset

    cfg = load_cfg(config, {"datagen.n": n, "datagen.out": out, "datagen.workers": workers,
                            "datagen.seed": seed, "datagen.shard_size": shard_size,
                            "render.image_size": image_size, "render.backend": backend})
    d = cfg.datagen
    plan = RenderPlan(cfg.resolve_path(d.out), d.n, d.seed, d.shard_size, node_rank, num_nodes)
    m = render_dataset(cfg, plan, workers=d.workers, progress=not quiet)
    click.echo(f"{m['samples_done']} samples in {len(m['shards'])} shards of node {node_rank}/{num_nodes} "
               f"in {plan.out} (complete: {m['complete']})")


@main.command("merge-manifests", help="Check a multi-node output is complete and write DIR/manifest.json.")
@click.argument("data", type=click.Path(file_okay=False))
@user_errors(DatagenError)
def merge(data):
    from .generate import merge_manifests

    m = merge_manifests(Path(data))
    click.echo(f"complete: {m['samples_done']} samples in {len(m['shards'])} shards")


@main.command(help="Contact sheet of samples: colour render, masked input, shading image, mask.")
@click.option("--data", type=click.Path(file_okay=False), required=True)
@click.option("--out", type=click.Path(dir_okay=False), default="preview.png", show_default=True)
@click.option("--n", type=int, default=16, show_default=True, help="samples to show")
@user_errors(DatagenError)
def preview(data, out, n):
    from .inspection import preview_sheet

    path = preview_sheet(Path(data), Path(out), n)
    click.echo(f"wrote {path}")


@main.command(help="Distributions of pose, expression strength, u and skin tone (JSON + PNG histograms).")
@click.option("--data", type=click.Path(file_okay=False), required=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG (default DATA/stats.png)")
@click.option("--limit", type=int, default=None, help="read at most this many samples")
@user_errors(DatagenError)
def stats(data, out, limit):
    import json

    from .inspection import dataset_stats

    result = dataset_stats(Path(data), Path(out) if out else Path(data) / "stats.png", limit)
    click.echo(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
