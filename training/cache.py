"""Training pairs rendered once and reused over epochs: ``train cache`` writes them, ``train iterative --cache``
reads them back with on-the-fly augmentation.

The file (HDF5, :data:`FORMAT`) holds samples 0 .. N-1 of the dataset ``seed`` exactly as online training
generates them (:class:`training.data.OnlineDataset`: ``train.start``, at ``render.image_size``)::

    inputs     (N, C + 1, H, W) uint8   masked image channel(s), then the shading image of a_t (x / 255)
    alpha_gt   (N, K) float32
    alpha_t    (N, K) float32
    alpha_fit  (N, K) float32           the landmark fit (NaN with start ``mean``)
    points     (N, 68, 2) float32       the simulated detector landmarks, pixels (NaN with start ``mean``)
    index      (N,) int64               sample index in the dataset

and, as attributes, ``format``, ``seed``, ``n`` and ``config`` (JSON of :func:`cache_config`: what the samples
depend on). Writing is resumable: parts of ``train.cache_chunk`` samples go to ``FILE.parts/`` (each written
atomically; the same command after a kill renders only the missing ones, and another ``--n`` keeps the parts
of the same config and seed); when all are there they are copied into ``FILE`` (atomically) and the parts
are removed.

Reading (:class:`CacheDataset`): batch k of the stream holds positions kB .. kB + B - 1 of the endless
sequence of per-epoch permutations of the N samples (epoch e shuffled by (seed, e)), augmented with a
generator seeded by (seed, k) (:func:`augment`), so a stream restarted at batch k continues exactly, for any
number of DataLoader workers; with ``world`` processes, process ``rank`` takes batches rank, rank + world, ...
"""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import IterableDataset, get_worker_info

from datagen.shards import to_uint8
from facesynth.io import atomic_path, write_json

from .data import OnlineDataset, batch_loader
from .errors import TrainingError
from .loop import _flat

FORMAT = "facesynth-pairs/1"
ARRAYS = ("inputs", "alpha_gt", "alpha_t", "alpha_fit", "points", "index")
#: The config key of a file that also holds pairs for the network's later passes (:mod:`training.next_pass`).
NEXT_PASS = "next_pass"
#: A pixel of the (resampled) shading image belongs to the face where it exceeds this (the shading is >=
#: ``render.shading_ambient`` on the face and 0 off it).
MASK_LEVEL = 0.05


#: Start keys added after files were made: :func:`cache_config` records them only when they differ from these,
#: the values every file without them was made with (so such files stay valid).
START_ADDED = {"start_error_scale": [1.0, 1.0], "start_landmarks": "detector"}


def file_start(config: dict) -> dict:
    """The ``train.start*`` keys a cache file was made with, from its ``config`` (those it lacks: :data:`START_ADDED`)."""
    return {**START_ADDED, **config["start"]}


def cache_config(cfg) -> dict:
    """What the cached samples depend on: the datagen sections (:func:`datagen.generate.data_config`), the start
    policy, the camera (``camera``: ``sampling.pose``'s perspective keys and ``sampling.light``'s photo-light keys,
    each only when they are on) and, for ``fit``
    starts, the fit section and the landmark model's file size."""
    from datagen.generate import CAMERA_KEYS, PHOTO_LIGHT_KEYS, data_config, resolved_backend

    tc = cfg.train
    data = data_config(cfg, resolved_backend(cfg))  # like the start policy, files of a run may differ in the camera
    camera = {k: data["sampling"]["pose"].pop(k) for k in CAMERA_KEYS if k in data["sampling"]["pose"]}
    camera.update({k: data["sampling"]["light"].pop(k) for k in PHOTO_LIGHT_KEYS if k in data["sampling"]["light"]})
    out = dict(data, **({"camera": camera} if camera else {}),
               start={"start": tc.start, "start_fit_prob": tc.start_fit_prob,
                      "start_fit_iterations": tc.start_fit_iterations, "start_pose": tc.start_pose,
                      "start_pose_noise_deg": list(tc.start_pose_noise_deg),
                      "start_pitch_follow": tc.start_pitch_follow})
    if list(tc.start_error_scale) != START_ADDED["start_error_scale"]:
        out["start"]["start_error_scale"] = list(tc.start_error_scale)
    if tc.start_landmarks != START_ADDED["start_landmarks"]:
        out["start"].update(start_landmarks=tc.start_landmarks, start_true_noise_mm=tc.start_true_noise_mm)
    if tc.start == "photometric":
        out["photometric"] = {**cfg.to_dict()["refine"]["photometric"], "photo_size": cfg.evaluate.image_size}
    if tc.start in ("fit", "photometric"):
        out["fit"] = cfg.to_dict()["fit"]
        out["fit"]["landmarks_bytes"] = cfg.resolve_path(cfg.fit.landmarks).stat().st_size
    return out


def _first_difference(a: dict, b: dict) -> str | None:
    fa, fb = _flat(a), _flat(b)
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key) != fb.get(key):
            return f"{key}: {fa.get(key)!r} there, {fb.get(key)!r} now"
    return None


# ----------------------------------------------------------------------------------------- writing
class PairSource(OnlineDataset):
    """:class:`training.data.OnlineDataset` whose records are what the cache stores (uint8 inputs, the start's
    fit and landmarks)."""

    def record(self, index: int) -> dict:
        from datagen.sample import network_input

        s, draw = self.sample(index)
        K = len(s.scene.alpha_gt)
        nan_k, nan_p = np.full(K, np.nan, np.float32), np.full((68, 2), np.nan, np.float32)
        return {"inputs": to_uint8(network_input(s.image, s.shading)),
                "alpha_gt": np.asarray(s.scene.alpha_gt, np.float32),
                "alpha_t": np.asarray(s.scene.alpha_t, np.float32),
                "alpha_fit": nan_k if draw is None else draw.alpha_fit,
                "points": nan_p if draw is None else draw.points, "index": np.int64(index)}

    @staticmethod
    def collate(records: list[dict]) -> dict:
        return {k: np.stack([r[k] for r in records]) for k in ARRAYS}


def parts_dir(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _part_path(parts: Path, start: int, stop: int) -> Path:
    return parts / f"part_{start:09d}_{stop:09d}.npz"


def write_cache(cfg, out: str | Path, n: int, seed: int, workers: int = 0, progress: bool = True) -> dict:
    """Render samples 0 .. ``n`` - 1 of dataset ``seed`` into the cache file ``out`` (module docstring).

    Args:
        cfg: the full config (``train.start``, ``train.cache_chunk``, the datagen sections).
        workers: DataLoader processes rendering parts (0: this process).
    Returns:
        ``{"path", "n", "rendered"}`` (rendered: samples rendered by this call).
    Raises:
        TrainingError: ``out`` holds another cache, or its parts folder parts of another config, seed or part
            size; bad ``n``.
    """
    if n < 1:
        raise TrainingError(f"the cache needs n >= 1 samples; got {n}")
    meta = {"format": FORMAT, "seed": int(seed), "chunk": int(cfg.train.cache_chunk), "config": cache_config(cfg)}
    return write_parts(out, meta, n, lambda first: PairSource(cfg, seed, first, n, batch_size=meta["chunk"]),
                       workers, progress)


def write_parts(out: str | Path, meta: dict, n: int, source, workers: int = 0, progress: bool = True,
                head: str | Path | None = None) -> dict:
    """Write rows 0 .. ``n`` - 1 of a pairs file ``out`` in resumable parts (module docstring), then merge them.

    Args:
        meta: ``format``, ``seed``, ``chunk`` (rows per part) and ``config`` of the file.
        source: ``source(first)`` -> a dataset yielding batches of ``chunk`` :data:`ARRAYS` records from row
            ``first`` on (:class:`PairSource`).
        head: a cache file whose rows come first in ``out`` (the written rows follow them).
    Returns:
        ``{"path", "n", "rendered"}``: ``n`` counts the head's rows too.
    """
    from tqdm import tqdm

    out = Path(out)
    total = n + (read_cache_info(head)["n"] if head is not None else 0)
    if out.exists():
        info = read_cache_info(out, meta["format"])
        diff = _first_difference({k: info[k] for k in ("seed", "n", "config")},
                                 {"seed": meta["seed"], "n": total, "config": meta["config"]})
        if diff:
            raise TrainingError(f"{out} holds another cache ({diff}); use another --out")
        return {"path": str(out), "n": total, "rendered": 0}
    parts = parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    meta_path = parts / "meta.json"
    if meta_path.exists():
        diff = _first_difference(json.loads(meta_path.read_text()), json.loads(json.dumps(meta)))
        if diff:
            raise TrainingError(f"{parts} holds parts of another cache ({diff}); remove it or use another --out")
    else:
        write_json(meta_path, meta)
    chunk = meta["chunk"]
    ranges = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    missing = [i for i, (a, b) in enumerate(ranges) if not _part_path(parts, a, b).exists()]
    rendered = 0
    if missing:
        first = missing[0]
        bar = tqdm(total=n, initial=ranges[first][0], desc="cache", unit="sample", disable=not progress,
                   dynamic_ncols=True)
        for (a, b), batch in zip(ranges[first:], batch_loader(source(ranges[first][0]), workers)):
            path = _part_path(parts, a, b)
            if not path.exists():
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.savez(f, **batch)
                rendered += b - a
            bar.update(b - a)
        bar.close()
    _merge_parts(out, parts, ranges, meta, head)
    return {"path": str(out), "n": total, "rendered": rendered}


def _merge_parts(out: Path, parts: Path, ranges: list, meta: dict, head: str | Path | None = None) -> None:
    import h5py

    first = np.load(_part_path(parts, *ranges[0]))
    keys = list(first.files)
    h = None if head is None else h5py.File(head, "r")
    offset = 0 if h is None else int(h[keys[0]].shape[0])
    n = offset + ranges[-1][1]
    try:
        with atomic_path(out) as tmp:
            with h5py.File(tmp, "w") as f:
                for k in keys:
                    shape = (n,) + first[k].shape[1:]
                    f.create_dataset(k, shape, first[k].dtype, chunks=(1,) + shape[1:] if k == "inputs" else None)
                for a in range(0, offset, 1024):  # the head's rows, a slab at a time
                    for k in keys:
                        f[k][a:min(a + 1024, offset)] = h[k][a:min(a + 1024, offset)]
                for a, b in ranges:
                    part = np.load(_part_path(parts, a, b))
                    for k in keys:
                        f[k][offset + a:offset + b] = part[k]
                f.attrs.update({"format": meta["format"], "seed": meta["seed"], "n": n, "config": json.dumps(meta["config"])})
    finally:
        if h is not None:
            h.close()
    shutil.rmtree(parts)


def read_cache_info(path: str | Path, fmt: str = FORMAT) -> dict:
    """The attributes of a cache file of format ``fmt`` (default: training pairs): ``format``, ``seed``, ``n``,
    ``config`` (dict) and ``shape`` of one input (pairs files); :class:`TrainingError` when it is not one."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"cache file {path} not found (make it with `train cache`)")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != fmt:
                raise TrainingError(f"{path} is not a {fmt} file (format {f.attrs.get('format')!r})")
            info = {"format": fmt, "seed": int(f.attrs["seed"]), "n": int(f.attrs["n"]),
                    "config": json.loads(f.attrs["config"])}
            if "inputs" in f:
                info["shape"] = tuple(f["inputs"].shape[1:])
            return info
    except OSError as e:
        raise TrainingError(f"{path} is not a readable training cache ({e})") from None


def check_cache(path: str | Path, cfg, start: bool = True) -> dict:
    """The cache's info (:func:`read_cache_info`) when its samples are what ``cfg`` would generate; else
    :class:`TrainingError` naming the first differing key. ``start=False``: the pairs' start policy
    (``train.start*``) and camera (``sampling.pose.perspective_prob``, ``distance_mm``, ``sampling.light``'s
    ``occlusion_max``, ``shadow_prob``) may differ from
    ``cfg``'s (a training run mixes files of several; the images, the model and the fit must still be the
    same)."""
    info = read_cache_info(path)
    skip = {NEXT_PASS} | (set() if start else {"start", "camera"})  # later passes' pairs: same faces, config
    made = {k: v for k, v in info["config"].items() if k not in skip}
    now = {k: v for k, v in json.loads(json.dumps(cache_config(cfg))).items() if k not in skip}
    diff = _first_difference(made, now)
    if diff:
        raise TrainingError(f"the cache {path} was made with another config ({diff}); train with its config "
                            "(--config) or make another cache")
    return info


# ----------------------------------------------------------------------------------------- augmentation
def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B,) sigmas (pixels; 0: none) -> (B, 2 radius + 1) normalised 1D kernels."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigma.clamp(min=1e-3)[:, None]
    k = torch.exp(-0.5 * (x[None] / s) ** 2)
    return k / k.sum(1, keepdim=True)


def _blur(img: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with one sigma per sample (edges replicated)."""
    B, C, H, W = img.shape
    k = _gaussian_kernels(sigma, radius).repeat_interleave(C, 0)  # (B C, 2r + 1)
    x = F.pad(img.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k[:, None, None, :], groups=B * C)
    x = F.conv2d(x, k[:, None, :, None], groups=B * C)
    return x.reshape(B, C, H, W)


def _jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """(C, H, W) in [0, 1] (C = 1 gray or 3 colour) through a JPEG round trip at ``quality``."""
    from PIL import Image

    arr = to_uint8(img.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="JPEG", quality=int(quality))
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255.0
    return torch.from_numpy(back.reshape(arr.shape)).permute(2, 0, 1)


def augment(inputs: torch.Tensor, aug, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch of cached inputs.

    Args:
        inputs: (B, C + 1, H, W) uint8: image channel(s), then the shading image of a_t.
        aug: the ``train.augment`` section (:class:`facesynth.config.AugmentConfig`).
        generator: the draws' source (a CPU ``torch.Generator``).
    Returns:
        (B, C + 1, H, W) float32 in [0, 1]: image and shading shifted (``shift`` x H, per axis) and scaled
        together (the face elsewhere in the frame, as a photo's pose fit puts it); then on the image alone
        gamma, blur, noise, (with ``jpeg_prob``) a JPEG round trip and (with ``erase_prob``) a random erasing
        (:func:`_erase`) and (with ``albedo_std``) a smooth albedo field (:func:`_albedo_field`); the image masked
        again by the shading's support.
    """
    x = inputs.float() / 255.0
    B = x.shape[0]

    def normal(*shape):
        return torch.randn(*shape, generator=generator)

    def uniform(*shape):
        return torch.rand(*shape, generator=generator)

    scale = torch.exp(aug.scale_std * normal(B))
    shift = 2.0 * aug.shift * normal(B, 2)  # normalised coordinates span 2 across the image
    gamma = torch.exp(aug.gamma_std * normal(B))
    blur = aug.blur_max_px * uniform(B)
    noise = aug.noise_max * uniform(B)
    jpeg = uniform(B) < aug.jpeg_prob
    quality = aug.jpeg_quality_min + (95 - aug.jpeg_quality_min) * uniform(B)
    if aug.shift > 0 or aug.scale_std > 0:
        theta = torch.zeros(B, 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
        theta[:, :, 2] = -shift / scale[:, None]
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    img, shading = x[:, :-1], x[:, -1:]
    mask = shading > MASK_LEVEL
    shading = shading * mask
    img = img.clamp(min=0.0) ** gamma[:, None, None, None]
    radius = int(np.ceil(2.0 * aug.blur_max_px))
    if radius > 0:
        img = _blur(img, blur, radius)
    img = img + noise[:, None, None, None] * normal(*img.shape)
    img = img.clamp(0.0, 1.0)
    for i in torch.nonzero(jpeg).flatten().tolist():
        img[i] = _jpeg(img[i], int(quality[i]))
    if aug.erase_prob > 0:  # drawn after the others: a config without erasing draws as before
        img = _erase(img, aug, uniform)
    if aug.albedo_std > 0:  # drawn last, for the same reason
        img = _albedo_field(img, aug, normal, uniform)
    return torch.cat([img * mask, shading], 1).contiguous()


def _erase(img: torch.Tensor, aug, uniform) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) of the image channel(s) (B, C, H, W): with probability ``erase_prob``
    one rectangle of area U[0.02, ``erase_max_area``] of the image and aspect ratio log-U[1/3, 3] is filled with
    a random gray level and a random noise of up to 0.1: what hair, a beard, a hand or glasses put over a real
    face and no synthetic one has."""
    B, _, H, W = img.shape
    on = uniform(B) < aug.erase_prob
    area = 0.02 + (aug.erase_max_area - 0.02) * uniform(B)
    aspect = torch.exp((2 * uniform(B) - 1) * float(np.log(3.0)))
    h = (torch.sqrt(area * aspect) * H).clamp(max=H)
    w = (torch.sqrt(area / aspect) * W).clamp(max=W)
    top, left = uniform(B) * (H - h), uniform(B) * (W - w)
    level, grain = uniform(B), 0.1 * uniform(B)
    texture = level[:, None, None, None] + grain[:, None, None, None] * (2 * uniform(*img.shape) - 1)
    rows = torch.arange(H, dtype=torch.float32)[None, :, None]
    cols = torch.arange(W, dtype=torch.float32)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + h)[:, None, None]) & (cols >= left[:, None, None])
           & (cols < (left + w)[:, None, None]) & on[:, None, None])[:, None]
    return torch.where(box, texture.clamp(0.0, 1.0), img)


def _albedo_field(img: torch.Tensor, aug, normal, uniform) -> torch.Tensor:
    """The image channel(s) (B, C, H, W) times exp(s G): G a smooth Gaussian field of unit variance (``albedo_cells``
    x ``albedo_cells`` independent values, bicubic upsampled), s ~ U[0, ``albedo_std``] per sample. Darker and
    lighter patches of skin that are not shape (stubble, tan, make-up, blotches): the synthetic albedo model has
    few, and the network must not read them as shading."""
    B, _, H, W = img.shape
    n = aug.albedo_cells
    field = F.interpolate(normal(B, 1, n, n), size=(H, W), mode="bicubic", align_corners=False)
    strength = aug.albedo_std * uniform(B)
    return (img * torch.exp(strength[:, None, None, None] * field)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------------------- reading
class CacheDataset(IterableDataset):
    """Endless batches of one or more cache files (module docstring), augmented on the fly.

    Args:
        path: the cache file, or a list of them: their rows are read as one set (row r of the second file is
            row n_1 + r), so pairs of several start policies train together.
        aug: the ``train.augment`` section, or None (no augmentation).
        frame: the network frame (:class:`coarse.frame.NetworkFrame`); with ``input_mask: landmarks`` each
            input is first cut to the region of its stored landmarks (:meth:`~coarse.frame.NetworkFrame.region`).
        seed: shuffle and augmentation seed; batch_size: B.
        start_batch: first global batch (``step * world`` to resume after ``step`` steps).
        rank, world: this process takes global batches start_batch + rank + world j (DDP).
    Yields:
        ``{"input" (B, C + 1, H, W) float32, "alpha_gt" (B, K), "alpha_t" (B, K), "index" (B,) int64}``.
    """

    def __init__(self, path, aug, seed: int, batch_size: int, start_batch: int = 0, rank: int = 0,
                 world: int = 1, frame=None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.paths = [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]
        if not self.paths:
            raise ValueError("CacheDataset needs at least one cache file")
        self.aug, self.seed = aug, int(seed)
        self.batch_size, self.start_batch, self.rank, self.world = batch_size, int(start_batch), rank, world
        self.frame = None if frame is None or frame.input_mask == "shading" else frame
        self._state: dict | None = None

    def __getstate__(self) -> dict:  # an open HDF5 file does not cross processes
        return dict(self.__dict__, _state=None)

    def _arrays(self) -> dict:
        if self._state is None or self._state["pid"] != os.getpid():
            import h5py

            files = [h5py.File(p, "r") for p in self.paths]
            sizes = [int(f["inputs"].shape[0]) for f in files]
            self._state = {"pid": os.getpid(), "files": files, "inputs": [f["inputs"] for f in files],
                           "starts": np.cumsum([0] + sizes), "n": int(sum(sizes)),
                           **{k: np.concatenate([f[k][:] for f in files])  # points: only to cut the inputs
                              for k in ("alpha_gt", "alpha_t", "index") + (() if self.frame is None else ("points",))},
                           "epochs": {}}
        return self._state

    def inputs(self, rows) -> np.ndarray:
        """(len(rows), C + 1, H, W) uint8 inputs of these rows of the joined files."""
        st = self._arrays()
        which = np.searchsorted(st["starts"], rows, side="right") - 1
        return np.stack([st["inputs"][f][int(r - st["starts"][f])] for f, r in zip(which, rows)])

    def positions(self, k: int) -> np.ndarray:
        """(B,) sample rows of global batch ``k``."""
        st = self._arrays()
        n = st["n"]
        flat = np.arange(k * self.batch_size, (k + 1) * self.batch_size)
        rows = np.empty(len(flat), np.int64)
        for e in np.unique(flat // n):
            if e not in st["epochs"]:
                st["epochs"] = {e: np.random.Generator(np.random.PCG64(
                    np.random.SeedSequence([self.seed, int(e)]))).permutation(n)}
            sel = flat // n == e
            rows[sel] = st["epochs"][e][flat[sel] % n]
        return rows

    def batch(self, k: int) -> dict:
        """Global batch ``k``, augmented with the generator of (seed, k)."""
        st = self._arrays()
        rows = self.positions(k)
        x = torch.from_numpy(self.inputs(rows))  # row by row: 60x h5py's fancy indexing
        if self.frame is not None:
            points = st["points"][rows]
            if not np.isfinite(points).all():
                raise TrainingError("train.input_mask: landmarks needs pairs with landmarks (a cache of start fit)")
            x = x * torch.from_numpy(np.stack([self.frame.region(p) for p in points]))[:, None]
        if self.aug is not None:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, k, 1]).generate_state(1)[0]))
            x = augment(x, self.aug, g)
        else:
            x = x.float() / 255.0
        return {"input": x, "alpha_gt": torch.from_numpy(st["alpha_gt"][rows]),
                "alpha_t": torch.from_numpy(st["alpha_t"][rows]), "index": torch.from_numpy(st["index"][rows])}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        w, W = (0, 1) if info is None else (info.id, info.num_workers)
        j = w
        while True:
            yield self.batch(self.start_batch + self.rank + self.world * j)
            j += W


def draw_preview(path: str | Path, aug, png: str | Path, n: int = 6, seed: int = 0, first: int = 0) -> Path:
    """PNG of ``n`` pairs of a cache from row ``first`` on: per row the image and the shading of a_t as stored,
    then as augmented (``aug``, the ``train.augment`` section; generator ``seed``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ds = CacheDataset(path, None, 0, 1)
    st = ds._arrays()
    first = min(max(first, 0), st["n"] - 1)
    n = min(n, st["n"] - first)
    raw = torch.from_numpy(ds.inputs(np.arange(first, first + n)))
    shown = [raw.float() / 255.0, augment(raw, aug, torch.Generator().manual_seed(seed))]
    fig = Figure(figsize=(8.0, 2.0 * n), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 4, squeeze=False)
    titles = ("image", "shading of a_t", "image, augmented", "shading, augmented")
    for r in range(n):
        for c, (x, ch) in enumerate(((shown[0], 0), (shown[0], -1), (shown[1], 0), (shown[1], -1))):
            axes[r, c].imshow(x[r, ch].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_axis_off()
            axes[r, c].set_title(f"{titles[c]} (sample {int(st['index'][first + r])})" if c == 0 else titles[c], fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(png)


def cache_loader(path, aug, seed: int, batch_size: int, start_batch: int = 0, workers: int = 0,
                 rank: int = 0, world: int = 1, pin_memory: bool = False, spawn: bool = False, frame=None):
    """A DataLoader of :class:`CacheDataset` batches (``spawn``: as :func:`training.data.online_loader`)."""
    return batch_loader(CacheDataset(path, aug, seed, batch_size, start_batch, rank, world, frame), workers,
                        pin_memory, spawn)
