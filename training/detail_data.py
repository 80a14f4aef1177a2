"""Training data of the detail network: synthetic faces in the SfS frame (:mod:`datagen.synthetic`), each
rendered once and cut into ``detail.crops_per_face`` random crops of ``detail.crop`` pixels.

One face gives one full-frame example (:func:`face_example`):

- the truth: the detailed, textured face under the sample's Phong light over its background;
- the target: detailed minus smooth true depth (mm, along the camera axis) inside the mask;
- the coarse start the pipeline would have: the landmark fit of landmarks with ``evaluate.landmark_noise_px``
  noise, or the iterative network (``coarse_weights``), rendered as the pipeline renders it (flat albedo,
  frontal light) -> the coarse normals of the input;
- the mask: the true narrow face area inside the coarse silhouette;
- for the photometric loss: the smooth true normals, the per-pixel albedo, the light.

The coarse shape is posed with the true pose (as in ``refine evaluate``): the network learns the detail on a
coarse shape that is wrong in the way a fit from landmarks is wrong, not a pose error.

Crop records (:func:`random_crops`; numpy, collated into tensors with a batch dimension)::

    input     (6, c, c) float32   :func:`training.detail_net.detail_features`
    target    (1, c, c) float32   mm
    mask      (1, c, c) float32   0 or 1
    normals   (3, c, c) float32   smooth true normals, camera frame
    albedo    (3, c, c) float32
    image     (3, c, c) float32   the render, in [0, 1]
    light_direction  (3,) float32  the sample's Phong light (:class:`render.renderer.Light`): unit vector
                                   towards the light, camera frame
    light_ambient, light_diffuse, light_specular, light_shininess  () float32  its constants
    pixel_mm  () float32
    index     int                 crop index in the stream

Stream and resume: crop c of the stream ``seed`` is crop ``c % C`` of face ``c // C`` (C = crops_per_face),
and face f, its landmark noise and its crop positions depend on (seed, f) only; batches follow
:class:`training.data.OnlineDataset` (batch k holds crops kB .. kB + B - 1; DataLoader worker w and DDP
process rank take their share), so after ``step`` steps the stream restarts at crop ``step * world * B``.
From shards (``data_dir``, made with ``datagen.detail``), face f is record ``f mod N`` in index order.
"""
from __future__ import annotations

import numpy as np
import torch

from coarse.stage import synthetic_start
from datagen.synthetic import DetailScene, draw_face, render_scene, shard_face

from .data import OnlineDataset
from .detail_net import detail_features

#: The per-pixel arrays of a record, (C, H, W) each (cropped); the other keys hold one value per face.
IMAGE_KEYS = ("input", "target", "mask", "normals", "albedo", "image")
LIGHT_KEYS = ("light_direction", "light_ambient", "light_diffuse", "light_specular", "light_shininess")
KEYS = IMAGE_KEYS + LIGHT_KEYS + ("pixel_mm",)


def face_example(scene: DetailScene, highpass_sigma_px: float) -> dict:
    """Full-frame arrays of one rendered face (the crop record's keys: :data:`IMAGE_KEYS` (C, H, W) each, the
    light and ``pixel_mm``; see the module docstring). ``scene`` must hold the smooth render
    (``render_scene(..., smooth=True)``)."""
    light = scene.face.light
    chw = lambda a: np.ascontiguousarray(np.moveaxis(a, -1, 0), np.float32)  # noqa: E731
    return {
        "input": detail_features(scene.truth.rgb, scene.coarse.normals, scene.mask, highpass_sigma_px),
        "target": scene.target[None],
        "mask": scene.mask[None].astype(np.float32),
        "normals": chw(scene.smooth.normals),
        "albedo": chw(scene.albedo),
        "image": chw(scene.truth.rgb),
        "light_direction": np.asarray(light.direction, np.float32),
        "light_ambient": np.float32(light.ambient),
        "light_diffuse": np.float32(light.diffuse),
        "light_specular": np.float32(light.specular),
        "light_shininess": np.float32(light.shininess),
        "pixel_mm": np.float32(scene.pixel_mm),
    }


def random_crops(example: dict, crop: int, count: int, rng: np.random.Generator) -> list[dict]:
    """``count`` crops of ``crop`` x ``crop`` pixels of the :data:`IMAGE_KEYS`, each centred on a random mask
    pixel (shifted to stay inside the image); the per-face values are shared."""
    mask = example["mask"][0] > 0
    H, W = mask.shape
    if crop > min(H, W):
        raise ValueError(f"crop {crop} is larger than the {H} x {W} frame")
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("the face mask is empty: nothing to crop")
    out = []
    for k in rng.integers(0, len(rows), count):
        i0 = int(np.clip(rows[k] - crop // 2, 0, H - crop))
        j0 = int(np.clip(cols[k] - crop // 2, 0, W - crop))
        out.append({key: (v[:, i0:i0 + crop, j0:j0 + crop].copy() if key in IMAGE_KEYS else v)
                    for key, v in example.items()})
    return out


def collate(records: list[dict]) -> dict:
    """Crop records -> one batch of tensors with a batch dimension: ``light_direction`` (B, 3), the other light
    constants and ``pixel_mm`` (B,), ``index`` (B,) int64."""
    batch = {k: torch.from_numpy(np.stack([r[k] for r in records])) for k in KEYS}
    batch["index"] = torch.tensor([r["index"] for r in records], dtype=torch.int64)
    return batch


class DetailDataset(OnlineDataset):
    """Crops of the detail stream ``seed`` (module docstring), generated where they are iterated.

    Args:
        cfg: the full config, framed for detail (:func:`datagen.synthetic.detail_frame_config`; from
            shards, its ``render.image_size`` is the shards'); ``detail.crop``, ``detail.crops_per_face``,
            ``detail.highpass_sigma_px`` and ``evaluate.landmark_noise_px`` are used.
        seed, start_index, stop_index, batch_size, rank, world: as :class:`training.data.OnlineDataset`,
            counted in crops.
        data_dir: shards made with ``datagen.detail`` (None: faces drawn on the fly).
        coarse_weights: iterative-network weights for the coarse start (None: the landmark fit); loaded on the
            CPU of each process that generates.
    """

    collate = staticmethod(collate)

    def __init__(self, cfg, seed: int, start_index: int = 0, stop_index: int | None = None,
                 batch_size: int | None = None, rank: int = 0, world: int = 1, data_dir=None, coarse_weights=None):
        super().__init__(cfg, seed, start_index, stop_index, batch_size, rank, world)
        self.data_dir = None if data_dir is None else str(data_dir)
        self.coarse_weights = None if coarse_weights is None else str(coarse_weights)
        self._local = None  # per process: predictor, shard cursor, last face's crops

    def __getstate__(self) -> dict:
        return dict(super().__getstate__(), _local=None)

    def _process_state(self) -> dict:
        import os

        if self._local is None or self._local["pid"] != os.getpid():
            network = None
            if self.coarse_weights is not None:
                from torch.utils.data import get_worker_info

                from coarse.network import load_iterative

                if get_worker_info() is not None:
                    torch.set_num_threads(1)
                network = load_iterative(self.coarse_weights, "cpu")
            cfg = self.cfg
            start = synthetic_start("network" if network is not None else "landmarks", self._renderer()[0],
                                    cfg.evaluate.landmark_noise_px, cfg.render, network, cfg.refine.iterations,
                                    cfg.refine.refit_pose)
            self._local = {"pid": os.getpid(), "start": start, "records": None, "pos": 0, "n": 0, "faces": {}}
        return self._local

    def _face(self, f: int, model, size: int):
        """Face ``f`` of the stream: drawn on the fly, or record ``f mod N`` of the shards (read in order;
        a pass restarts when a process asks for an earlier record)."""
        if self.data_dir is None:
            return draw_face(self.cfg, model, self.seed, f)
        from datagen.faces import shard_faces

        st = self._process_state()
        while True:
            r = f % st["n"] if st["n"] else f
            if st["records"] is None or r < st["pos"]:
                st["records"], st["pos"] = shard_faces(self.data_dir), 0
            for rec in st["records"]:
                st["pos"] += 1
                if st["pos"] - 1 == r:
                    return shard_face(rec, model, size, self.data_dir)
            if st["pos"] == 0:
                raise FileNotFoundError(f"no samples in {self.data_dir}")
            st["n"], st["records"] = st["pos"], None  # one pass done: N records

    def face_crops(self, f: int) -> list[dict]:
        """The ``crops_per_face`` crop records of face ``f``."""
        model, renderer = self._renderer()
        st = self._process_state()
        if f not in st["faces"]:
            dc = self.cfg.detail
            face = self._face(f, model, renderer.size)
            scene = render_scene(face, model, renderer, st["start"], np.random.default_rng([self.seed, f, 1]),
                                 smooth=True)
            crops = random_crops(face_example(scene, dc.highpass_sigma_px), dc.crop, dc.crops_per_face,
                                 np.random.default_rng([self.seed, f, 2]))
            st["faces"] = {f: crops}  # the batches of one process walk the stream forwards: keep the last face
        return st["faces"][f]

    def record(self, index: int) -> dict:
        C = self.cfg.detail.crops_per_face
        return dict(self.face_crops(index // C)[index % C], index=int(index))
