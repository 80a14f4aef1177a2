"""Reading shards back: one webdataset pipeline for training, evaluation and inspection.

``make_loader(DIR, batch_size)`` yields dicts of batched tensors::

    input     (B, C + 1, H, W) float32 in [0, 1]: masked image channel(s), then the shading image of a_t
    alpha_gt  (B, 153) float32
    alpha_t   (B, 153) float32
    index     (B,) int64 global sample indices

``iter_records(DIR)`` yields decoded single samples (numpy arrays and the params dict) in index order, for
preview, stats and evaluation.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from .sample import training_record
from .shards import decode_depth


def shard_urls(data_dir: str | Path) -> list[str]:
    """Finished shards of a dataset folder, in order."""
    d = Path(data_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"dataset folder {d} not found")
    urls = sorted(str(p) for p in d.glob("shard-*.tar"))
    if not urls:
        raise FileNotFoundError(f"no shards (shard-*.tar) in {d}")
    return urls


def _img(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def decode_record(rec: dict) -> dict:
    """Raw webdataset record (bytes per extension) -> numpy arrays and params.

    Returns keys: ``key``, ``image`` (H, W) or (H, W, 3) float32, ``shading`` (H, W) float32,
    ``mask`` (H, W) bool, ``rgb`` (H, W, 3) float32, ``depth`` (H, W) float32 mm, ``depth_mask`` (H, W)
    bool, ``params`` dict (and ``normals`` (H, W, 3) when present; with fine detail ``displacement``
    (H, W) mm, ``wrinkles`` (H, W) bool, ``detail_uv`` (S, S) mm).
    """
    params = json.loads(rec["params.json"])
    depth, depth_mask = decode_depth(_img(rec["depth.png"]), params["depth_scale_mm"])
    out = {
        "key": rec["__key__"],
        "image": _img(rec["image.png"]).astype(np.float32) / 255.0,
        "shading": _img(rec["shading.png"]).astype(np.float32) / 255.0,
        "mask": _img(rec["mask.png"]) > 127,
        "rgb": _img(rec["rgb.jpg"]).astype(np.float32) / 255.0,
        "depth": depth,
        "depth_mask": depth_mask,
        "params": params,
    }
    if "disp.png" in rec:
        from .shards import DISP_SCALE_MM

        out["displacement"], _ = decode_depth(_img(rec["disp.png"]), DISP_SCALE_MM)
        out["wrinkles"] = _img(rec["wrinkles.png"]) > 127
        out["detail_uv"] = (_img(rec["detailuv.png"]).astype(np.float32) - 32768) * DISP_SCALE_MM
    if "normals.png" in rec:
        out["normals"] = _img(rec["normals.png"]).astype(np.float32) / 127.5 - 1.0
    return out


def _to_training(rec: dict) -> dict:
    p = json.loads(rec["params.json"])
    image = _img(rec["image.png"]).astype(np.float32) / 255.0
    shading = _img(rec["shading.png"]).astype(np.float32) / 255.0
    return training_record(image, shading, p["alpha_gt"], p["alpha_t"], p["index"])


def iter_records(data_dir: str | Path, limit: int | None = None):
    """Decoded samples of a dataset folder in index order (no shuffling)."""
    import webdataset as wds

    ds = wds.WebDataset(shard_urls(data_dir), shardshuffle=False, empty_check=False)
    for i, rec in enumerate(ds):
        if limit is not None and i >= limit:
            return
        yield decode_record(rec)


def make_loader(data_dir: str | Path, batch_size: int, shuffle_buffer: int = 1000, seed: int = 0,
                workers: int = 0, repeat: bool = True, skip_batches: int = 0):
    """Batched training examples from shards (see the module docstring for the keys).

    Shards are shuffled per epoch and samples through a ``shuffle_buffer``, both seeded by ``seed``, so
    the order is reproducible for ``workers == 0``; ``skip_batches`` drops that many batches first (resume).
    With ``repeat`` the data cycles forever (training); else one pass.
    """
    import torch
    import webdataset as wds

    urls = shard_urls(data_dir)
    ds = wds.WebDataset(urls, shardshuffle=len(urls) if shuffle_buffer else False, seed=seed,
                        repeat=repeat, empty_check=False, nodesplitter=wds.split_by_node,
                        workersplitter=wds.split_by_worker)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed)
    ds = ds.map(_to_training).batched(batch_size, partial=not repeat)
    if skip_batches:
        ds = ds.slice(skip_batches, None)
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available())
    return loader
