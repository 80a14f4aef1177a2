"""``datagen render``: generate N samples into WebDataset shards, in parallel, resumably, over many nodes.

Layout of an output folder::

    DIR/shard-000000.tar ... shard-SSSSSS.tar     shard j holds samples [j M, min((j + 1) M, N))
    DIR/manifest.json                             single node: config, hash, seed, counts, finished shards
    DIR/manifest.node-R-of-P.json                 node R of P (then `datagen merge-manifests` checks all)

Sample i depends only on (seed, i) (:func:`datagen.scene.sample_rng`), so any number of worker processes
and any split over nodes give byte-identical shards. Node R of P makes the shards j with j % P == R:
a job-array scheduler runs one command per node with no coordination.

Crash safety: a shard exists under its final name only when complete (temporary name, fsync, rename);
the manifest is rewritten atomically after each shard. Running the same command again skips finished
shards, removes this node's stale temporary files and makes the rest. A folder made with another config
(or seed, or shard size) is refused.
"""
from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from facesynth.io import TMP_MARK, write_json

from .shards import ENCODERS, count_records, encode_sample, shard_name, write_shard

#: Shard format. 2: PNGs written by :func:`datagen.shards._png` (Up filter, zlib RLE), geometry from the
#: 16-bit basis (:meth:`morphable.model.FaceModel.draw_vertices`): same keys and meanings as 1, other bytes.
FORMAT = "facesynth-datagen/2"
#: Config sections that change the bytes of a sample (datagen's out, n and workers do not).
_DATA_SECTIONS = ("model", "sampling", "render", "datagen")
_NOT_DATA_KEYS = ("out", "n", "workers", "seed")  # the seed is checked on its own
#: The camera's ``sampling.pose`` keys (recorded only when ``perspective_prob`` > 0).
CAMERA_KEYS = ("perspective_prob", "distance_mm")
#: The ``sampling.light`` keys of the photo light (occlusion, cast shadows, sRGB) (recorded only when one is > 0).
PHOTO_LIGHT_KEYS = ("occlusion_max", "shadow_prob", "srgb_prob")


#: More worker processes than this many per core only add memory and contention: such a number is a typo.
MAX_WORKERS_PER_CORE = 8
MIN_IMAGE_SIZE = 16  # pixels: below this a face is a few pixels


class DatagenError(RuntimeError):
    """A user-facing datagen failure (one line)."""


@dataclass(frozen=True)
class RenderPlan:
    out: Path
    n: int
    seed: int
    shard_size: int
    node_rank: int = 0
    num_nodes: int = 1

    @property
    def num_shards(self) -> int:
        return (self.n + self.shard_size - 1) // self.shard_size

    def shard_range(self, j: int) -> range:
        return range(j * self.shard_size, min((j + 1) * self.shard_size, self.n))

    def my_shards(self) -> list[int]:
        return [j for j in range(self.num_shards) if j % self.num_nodes == self.node_rank]

    @property
    def manifest_path(self) -> Path:
        if self.num_nodes == 1:
            return self.out / "manifest.json"
        return self.out / f"manifest.node-{self.node_rank}-of-{self.num_nodes}.json"


def data_config(cfg, backend: str) -> dict:
    """The part of the config that determines the samples' bytes (plus the resolved render backend)."""
    d = cfg.to_dict()
    data = {k: d[k] for k in _DATA_SECTIONS}
    data["datagen"] = {k: v for k, v in data["datagen"].items() if k not in _NOT_DATA_KEYS}
    data["render"] = dict(data["render"], backend=backend)
    data["render"].pop("gl_platform")
    if data["sampling"]["pose"]["perspective_prob"] == 0.0:  # added later: files made before it stay valid
        for key in CAMERA_KEYS:
            data["sampling"]["pose"].pop(key)
    light = data["sampling"]["light"]
    if all(light[k] == 0.0 for k in PHOTO_LIGHT_KEYS):  # the same
        for key in PHOTO_LIGHT_KEYS:
            light.pop(key)
    return data


def config_hash(data_cfg: dict) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(data_cfg, sort_keys=True).encode()).hexdigest()[:16]


def resolved_backend(cfg) -> str:
    from render.raster import resolve_backend

    return resolve_backend(cfg.render.backend, cfg.render.gl_platform)


def read_manifests(out: Path) -> list[dict]:
    found = []
    for p in sorted(out.glob("manifest*.json")):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise DatagenError(f"{p} is unreadable ({e}); remove it to continue") from None
    return found


def check_compatible(out: Path, plan: RenderPlan, chash: str) -> None:
    """Refuse to mix datasets: every manifest in ``out`` must have our config hash, seed and shard size."""
    for m in read_manifests(out):
        if m.get("format") != FORMAT:
            raise DatagenError(f"{out} holds files of another format; use another --out")
        if m["config_hash"] != chash:
            raise DatagenError(
                f"{out} holds a dataset made with another config (hash {m['config_hash']}, this one {chash}); "
                "use another --out or the same config")
        if m["seed"] != plan.seed or m["shard_size"] != plan.shard_size:
            raise DatagenError(
                f"{out} holds a dataset with seed {m['seed']} and shard size {m['shard_size']}, asked seed "
                f"{plan.seed} and shard size {plan.shard_size}; use another --out")


# --------------------------------------------------------------------------- workers
_WORKER: dict = {}


def _init_worker(cfg, seed: int, pooled: bool = False) -> None:
    """Per process: load the model and create the renderer (and so its own GL context) once.

    Each worker is one single-threaded process: BLAS threads would only fight the other workers. A pool
    worker (``pooled``) dies with its parent, so a killed ``datagen render`` leaves no orphans rendering on.
    """
    if pooled:
        _die_with_parent()
    from threadpoolctl import threadpool_limits

    from morphable.model import load_model
    from render.renderer import FaceRenderer

    _WORKER["blas_limit"] = threadpool_limits(1)
    model = load_model(cfg.resolve_path(cfg.model.path))
    _WORKER.update(cfg=cfg, seed=seed, model=model, renderer=FaceRenderer.from_config(model, cfg.render))


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG); no-op
    elsewhere."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the parent died before the request
        os._exit(1)


def _render_indices(indices: range) -> list[dict]:
    from .sample import make_sample

    w = _WORKER
    return [encode_sample(make_sample(w["seed"], i, w["model"], w["cfg"], w["renderer"]), w["seed"], w["cfg"].datagen)
            for i in indices]


def _chunks(plan: RenderPlan, shards: list[int], chunk: int):
    for j in shards:
        r = plan.shard_range(j)
        for a in range(r.start, r.stop, chunk):
            yield range(a, min(a + chunk, r.stop))


def render_dataset(cfg, plan: RenderPlan, workers: int = 0, progress: bool = True, chunk: int = 16) -> dict:
    """Make every missing shard of this node; returns the manifest written.

    Args:
        cfg: the full :class:`facesynth.config.Config`.
        plan: output folder, N, seed, shard size and this node's place.
        workers: processes (0: one per core).
    Raises:
        DatagenError: the folder holds another dataset, or cannot be written (full disk, permissions).
    """
    if plan.n <= 0:
        raise DatagenError(f"--n must be positive, got {plan.n}")
    if plan.shard_size <= 0:
        raise DatagenError(f"--shard-size must be positive, got {plan.shard_size}")
    if plan.seed < 0:
        raise DatagenError(f"--seed must be >= 0, got {plan.seed}")
    if cfg.render.image_size < MIN_IMAGE_SIZE:
        raise DatagenError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {cfg.render.image_size}")
    if plan.num_nodes < 1:
        raise DatagenError(f"--num-nodes must be at least 1, got {plan.num_nodes}")
    if not 0 <= plan.node_rank < plan.num_nodes:
        raise DatagenError(f"--node-rank must lie in [0, {plan.num_nodes}), got {plan.node_rank}")
    cores = os.cpu_count() or 1
    if not 0 <= workers <= MAX_WORKERS_PER_CORE * cores:
        raise DatagenError(f"--workers must lie in [0, {MAX_WORKERS_PER_CORE * cores}] (0: one per core, "
                           f"{cores} cores here), got {workers}")
    backend = resolved_backend(cfg)
    dcfg = data_config(cfg, backend)
    chash = config_hash(dcfg)
    out = plan.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DatagenError(f"cannot write to {out}: {e.strerror or e}") from None
    check_compatible(out, plan, chash)

    mine = plan.my_shards()
    # Stale temporary files of this node's shards and manifest come from a killed run: nobody else writes them.
    for name in [shard_name(j) for j in mine] + [plan.manifest_path.name]:
        for tmp in out.glob(name + TMP_MARK + "*"):
            tmp.unlink(missing_ok=True)

    previous = {}
    if plan.manifest_path.exists():
        previous = json.loads(plan.manifest_path.read_text()).get("shards", {})
    done: dict[str, dict] = {}
    todo = []
    for j in mine:
        name = shard_name(j)
        path = out / name
        expected = len(plan.shard_range(j))
        if path.exists():
            count = previous.get(name, {}).get("samples") or count_records(path)
            if count >= expected:
                done[name] = {"samples": count, "bytes": path.stat().st_size}
                continue
        todo.append(j)

    manifest = {
        "format": FORMAT,
        "encoders": ENCODERS,
        "config": cfg.to_dict(),
        "data_config": dcfg,
        "config_hash": chash,
        "seed": plan.seed,
        "n": plan.n,
        "shard_size": plan.shard_size,
        "num_shards": plan.num_shards,
        "node_rank": plan.node_rank,
        "num_nodes": plan.num_nodes,
        "shards": done,
        "complete": False,
    }

    def save_manifest():
        manifest["samples_done"] = sum(s["samples"] for s in manifest["shards"].values())
        manifest["complete"] = len(manifest["shards"]) == len(mine)
        write_json(plan.manifest_path, manifest, indent=1, sort_keys=True)

    total = sum(len(plan.shard_range(j)) for j in todo)
    workers = workers or cores
    bar = tqdm(total=total, unit="sample", desc=f"datagen node {plan.node_rank}/{plan.num_nodes}",
               disable=not progress, smoothing=0.05)
    pool = None
    try:
        save_manifest()
        if workers == 1 or total <= chunk:
            _init_worker(cfg, plan.seed)
            results = map(_render_indices, _chunks(plan, todo, chunk))
        else:
            pool = mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(cfg, plan.seed, True))
            results = pool.imap(_render_indices, _chunks(plan, todo, chunk))
        results = iter(results)
        for j in todo:
            records: list[dict] = []
            while len(records) < len(plan.shard_range(j)):
                got = next(results)
                records.extend(got)
                bar.update(len(got))
            size = write_shard(out / shard_name(j), records)
            manifest["shards"][shard_name(j)] = {"samples": len(records), "bytes": size}
            save_manifest()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
            raise DatagenError(f"cannot write to {out}: {e.strerror}; finished shards are kept, rerun to resume") from None
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    return manifest


def merge_manifests(out: Path) -> dict:
    """Check that the node manifests in ``out`` cover every shard and write ``out/manifest.json``.

    Raises:
        DatagenError: no manifests, mixed datasets, or missing/incomplete shards (listed).
    """
    nodes = [m for m in read_manifests(out) if m.get("num_nodes", 1) > 1]
    if not nodes:
        single = out / "manifest.json"
        if single.exists():
            return json.loads(single.read_text())
        raise DatagenError(f"no manifest in {out}")
    first = nodes[0]
    for m in nodes[1:]:
        for k in ("config_hash", "seed", "n", "shard_size", "num_nodes"):
            if m[k] != first[k]:
                raise DatagenError(f"node manifests disagree on {k}: {first[k]} vs {m[k]}")
    plan = RenderPlan(out, first["n"], first["seed"], first["shard_size"], 0, 1)
    shards = {}
    for m in nodes:
        shards.update(m["shards"])
    missing = [shard_name(j) for j in range(plan.num_shards)
               if shards.get(shard_name(j), {}).get("samples", 0) < len(plan.shard_range(j))
               or not (out / shard_name(j)).exists()]
    ranks = sorted(m["node_rank"] for m in nodes)
    absent = sorted(set(range(first["num_nodes"])) - set(ranks))
    if absent or missing:
        raise DatagenError(
            f"incomplete: nodes without a manifest {absent}, {len(missing)} shards missing"
            + (f" (first: {missing[0]})" if missing else ""))
    merged = dict(first, node_rank=0, num_nodes=1, shards=shards, complete=True,
                  samples_done=sum(s["samples"] for s in shards.values()), merged_from=first["num_nodes"])
    write_json(out / "manifest.json", merged, indent=1, sort_keys=True)
    return merged
