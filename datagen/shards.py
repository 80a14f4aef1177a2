"""Encoding samples to WebDataset records and writing reproducible tar shards.

A record (one sample) holds, under the key ``f"{index:09d}"`` (the global sample index):

==============  =============================================================================
``image.png``   the network's image input: the gray face render masked by a_t's silhouette
                (8-bit; RGB with ``datagen.color_input``)
``shading.png`` the shading image of a_t (8-bit gray)
``mask.png``    a_t's silhouette (8-bit, 0 or 255)
``rgb.jpg``     the unmasked colour render (JPEG, ``datagen.jpeg_quality``)
``depth.png``   16-bit depth of the true face: ``depth_mm / depth_scale_mm + 32768``, 0 = background
``normals.png`` (with ``datagen.extra_normals``) camera-frame normals as RGB = 127.5 (n + 1)
``disp.png``    (with ``datagen.detail``) 16-bit fine-detail displacement along the normal per pixel,
                ``d_mm / 0.001 + 32768`` (0 = background); ``depth.png`` is then the detailed surface
``wrinkles.png`` (with ``datagen.detail``) the wrinkle regions (0 or 255)
``detailuv.png`` (with ``datagen.detail``) the displacement map over the face UV tile, 16-bit as disp.png
``params.json`` ``alpha_gt``, ``alpha_t`` (K = 153: 100 identity, 53 expression), ``u``, ``albedo``
                (albedo coefficients), ``iris``, ``pose`` (scale px/mm, rotation 3x3, translation 2 px),
                ``light`` (direction, k_a, k_d, k_s, shininess), ``landmarks`` (68 x 2 px), ``index``,
                ``seed``, ``depth_scale_mm``; ``distance_mm`` for a face seen by a pinhole camera
                (``sampling.pose.perspective_prob``: the render is the pose's image of the warped face,
                :func:`datagen.scene.camera_points`)
==============  =============================================================================

Shards are byte-identical for the same (seed, config, index range): tar members have mtime 0, fixed
owner and mode, and keys in index order; a shard is written under a temporary name and renamed.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

from facesynth.io import atomic_path

from .sample import Sample

KEY_DIGITS = 9
#: The libraries whose versions fix the bytes of a record (recorded in the manifest): PNGs come from
#: Python's zlib, JPEGs from Pillow's libjpeg-turbo.
ENCODERS = {"zlib": zlib.ZLIB_RUNTIME_VERSION, "pillow": PIL.__version__}
DEPTH_OFFSET = 32768
DISP_SCALE_MM = 0.001  # disp.png and detailuv.png: uint16 = displacement_mm / 0.001 + 32768


def sample_key(index: int) -> str:
    return f"{index:0{KEY_DIGITS}d}"


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(arr: np.ndarray) -> bytes:
    """(H, W) uint8 or uint16 gray, or (H, W, 3) uint8 RGB -> PNG bytes (any PNG reader decodes them).

    Written here rather than by Pillow, which picks a filter per row by trying four of them: that search
    took two thirds of the encode time. Every row here gets the "Up" filter (the difference to the row
    above; our images are smooth or flat) and zlib's run-length strategy: at a third of the time, the 8-bit
    images come out smaller than Pillow's and depth.png 3 % larger. The bytes are those of Python's zlib
    build (``zlib.ZLIB_RUNTIME_VERSION``, recorded in the manifest).
    """
    if not (arr.dtype in (np.uint8, np.uint16) and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3
                                                                       and arr.dtype == np.uint8))):
        raise ValueError(f"expected (H, W) uint8/uint16 or (H, W, 3) uint8; got {arr.shape} {arr.dtype}")
    H, W = arr.shape[:2]
    rows = np.ascontiguousarray(arr, ">u2" if arr.dtype == np.uint16 else np.uint8).view(np.uint8).reshape(H, -1)
    filtered = np.empty((H, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # Up
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    colour_type = 2 if arr.ndim == 3 else 0
    header = struct.pack(">IIBBBBB", W, H, 8 * arr.dtype.itemsize, colour_type, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", header),
                     _png_chunk(b"IDAT", z.compress(filtered) + z.flush()), _png_chunk(b"IEND", b"")])


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 (rounded)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def encode_depth(depth_mm: np.ndarray, mask: np.ndarray, scale_mm: float) -> np.ndarray:
    """(H, W) depth in mm -> uint16 (0 outside ``mask``); inverse: :func:`decode_depth`."""
    q = np.clip(np.rint(depth_mm / scale_mm) + DEPTH_OFFSET, 1, 65535)
    return np.where(mask, q, 0).astype(np.uint16)


def decode_depth(png16: np.ndarray, scale_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """uint16 depth image -> ((H, W) float32 depth in mm, (H, W) bool mask)."""
    mask = png16 > 0
    return np.where(mask, (png16.astype(np.float32) - DEPTH_OFFSET) * scale_mm, 0.0).astype(np.float32), mask


def encode_sample(sample: Sample, seed: int, datagen_cfg) -> dict:
    """A :class:`datagen.sample.Sample` -> a WebDataset record (``__key__`` and bytes per extension)."""
    s = sample.scene
    params = {
        "index": s.index,
        "seed": seed,
        "alpha_gt": s.alpha_gt.tolist(),
        "alpha_t": s.alpha_t.tolist(),
        "u": s.u,
        "albedo": s.albedo_coeffs.tolist(),
        "iris": s.iris.tolist(),
        "pose": s.pose.to_dict(),
        "light": s.light.to_dict(),
        "landmarks": sample.landmarks.tolist(),
        "depth_scale_mm": datagen_cfg.depth_scale_mm,
    }
    if s.distance_mm is not None:
        params["distance_mm"] = s.distance_mm
    jpg = io.BytesIO()
    Image.fromarray(to_uint8(sample.rgb)).save(jpg, format="JPEG", quality=datagen_cfg.jpeg_quality)
    record = {
        "__key__": sample_key(s.index),
        "image.png": _png(to_uint8(sample.image)),
        "shading.png": _png(to_uint8(sample.shading)),
        "mask.png": _png(sample.mask.astype(np.uint8) * 255),
        "rgb.jpg": jpg.getvalue(),
        "depth.png": _png(encode_depth(sample.depth, sample.face_mask, datagen_cfg.depth_scale_mm)),
        "params.json": json.dumps(params, sort_keys=True).encode(),
    }
    if sample.displacement is not None:
        record["disp.png"] = _png(encode_depth(sample.displacement, sample.face_mask, DISP_SCALE_MM))
        record["wrinkles.png"] = _png(sample.wrinkles.astype(np.uint8) * 255)
        record["detailuv.png"] = _png(np.clip(np.rint(s.detail.displacement / DISP_SCALE_MM) + DEPTH_OFFSET,
                                              0, 65535).astype(np.uint16))
    if datagen_cfg.extra_normals:
        record["normals.png"] = _png(to_uint8((sample.normals + 1.0) / 2.0))
    return record


def write_shard(path: Path, records: list[dict]) -> int:
    """Write ``records`` (in order) to ``path`` atomically; returns the size in bytes.

    The tar is written to a temporary name (:func:`facesynth.io.atomic_path`), flushed to disk and renamed,
    so ``path`` only ever exists complete. On failure the temporary file is removed and the error re-raised.
    Members are ``KEY.EXT`` in key order and, within a record, in sorted extension order, with mtime 0 and
    fixed owner and mode: webdataset's ``TarWriter`` layout, written with :mod:`tarfile` itself (importing
    webdataset imports torch, seconds at the start of every ``datagen render``).
    """
    import tarfile

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w|") as tar:
                for r in records:
                    for ext in sorted(k for k in r if not k.startswith("_")):
                        info = tarfile.TarInfo(f"{r['__key__']}.{ext}")
                        info.size, info.mtime, info.mode = len(r[ext]), 0, 0o644
                        info.uname = info.gname = "facesynth"
                        tar.addfile(info, io.BytesIO(r[ext]))
            f.flush()
            os.fsync(f.fileno())
    return path.stat().st_size


def count_records(path: Path) -> int:
    """Number of samples in a finished shard (distinct keys of its members)."""
    import tarfile

    with tarfile.open(path) as t:
        return len({m.name.split(".", 1)[0] for m in t.getmembers()})
