"""The detail network: a small U-Net that adds to a coarse face what the morphable model cannot hold
(wrinkles, folds), as a depth offset in the SfS frame (Richardson et al. 2017, "FineNet", in image space).

Why image space and this frame: the SfS stage already works in a square frame of ``refine.resolution`` pixels
over the face (256 px, about 0.67 mm per pixel), so a 0.5 mm deep wrinkle 2-4 mm wide spans several pixels;
the offset adds to the coarse depth that SfS refines, with no UV unwrap and no visibility bookkeeping; the
network is fully convolutional, so it trains on crops and runs on the whole frame.

Input (:func:`detail_features`), (6, H, W) float32 per image, all in the SfS frame and 0 outside the mask:

    0  gray image / its median inside the mask, minus 1 (removes the light's and the skin's overall scale)
    1  high-pass of channel 0: minus its Gaussian blur (``detail.highpass_sigma_px``, over the mask only)
    2-4 the coarse normals (camera frame: x right, y up, z towards the camera)
    5  the mask (1 inside the face)

Output (:class:`DetailNet`): (B, 1, H, W) float32 depth offset in mm along the camera axis (larger = nearer,
as depth maps), 0 outside the mask. The network predicts it in pixel units (the image shows slopes, and a
slope times the pixel size is a depth), and the output is that times ``pixel_mm``, so the same weights hold
at another resolution.

Loss (:class:`DetailLoss`), the torch loader (:func:`load_detail`, :meth:`DetailWeights.predictor`) and the
export to ONNX (:func:`export_onnx`, what ``refine`` runs without torch: :mod:`training.detail_runtime`, which
also holds :func:`detail_features`) live here too; training is :mod:`training.detail`, its data
:mod:`training.detail_data`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from render.shading import displaced_normals, phong_shade

# the input features and the torch-free runtime live in training.detail_runtime (refine imports no torch)
from .detail_runtime import IN_CHANNELS, MASK_CHANNEL, DetailPredictor, detail_features  # noqa: F401


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, each with BatchNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class DetailNet(nn.Module):
    """U-Net: per level two 3x3 conv-BN-ReLU, 2x2 max-pooling down, 2x2 transposed convolutions up with skip
    connections, a 1x1 convolution to one map. BatchNorm, not GroupNorm: in eval mode its statistics are
    fixed, so a crop and the whole frame see the same per-pixel function (GroupNorm would normalise by each
    image's own statistics, which differ between a training crop and a full frame).

    Args:
        channels: feature maps per level, e.g. (16, 32, 64, 128) (0.47 M parameters).
    Shapes:
        x (B, 6, H, W) from :func:`detail_features` (any H, W: padded to a multiple of 2^(levels-1));
        pixel_mm (B,) tensor or a float -> (B, 1, H, W) depth offset in mm, 0 where x's mask channel is 0.
    """

    def __init__(self, channels=(16, 32, 64, 128)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(f"channels must list at least two positive widths; got {channels}")
        self.channels = channels
        self.down = nn.ModuleList([_block(IN_CHANNELS, channels[0])] +
                                  [_block(a, b) for a, b in zip(channels[:-1], channels[1:])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(channels[:-1], channels[1:])])
        self.merge = nn.ModuleList([_block(2 * a, a) for a in channels[:-1]])
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.head.weight)  # starts at "no detail": the coarse depth unchanged
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, cfg) -> "DetailNet":
        return cls(cfg.detail.channels)

    def forward(self, x: torch.Tensor, pixel_mm) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != IN_CHANNELS:
            raise ValueError(f"expected x (B, {IN_CHANNELS}, H, W); got {tuple(x.shape)}")
        H, W = x.shape[-2:]
        k = self.pad_multiple
        ph, pw = -H % k, -W % k
        h = F.pad(x, (0, pw, 0, ph)) if ph or pw else x
        out = self.unet(h)[..., :H, :W].float()
        px = torch.as_tensor(pixel_mm, dtype=out.dtype, device=out.device).reshape(-1, 1, 1, 1)
        return out * px * x[:, MASK_CHANNEL:MASK_CHANNEL + 1].float()

    @property
    def pad_multiple(self) -> int:
        """:meth:`unet` takes H and W multiples of this (2 ^ (levels - 1)); :meth:`forward` pads to them."""
        return 2 ** (len(self.channels) - 1)

    def unet(self, h: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) features, H and W multiples of :attr:`pad_multiple` -> (B, 1, H, W) offset in pixel
        units (before the pixel size and the mask)."""
        skips = []
        for i, block in enumerate(self.down):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for i in reversed(range(len(self.up))):
            h = self.merge[i](torch.cat([self.up[i](h), skips[i]], 1))
        return self.head(h)


# ----------------------------------------------------------------------------------------- loss
def _interior(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: mask pixels whose 3x3 neighbourhood is inside the mask and the image."""
    inner = 1.0 - F.max_pool2d(1.0 - mask, 3, stride=1, padding=1)
    edge = torch.zeros_like(mask)
    edge[..., 1:-1, 1:-1] = 1.0
    return inner * edge


def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x * w).sum() / w.sum().clamp(min=1.0)


def central_slopes(depth: torch.Tensor, pixel_mm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, H, W) depth (mm) -> camera-frame slopes d/dx, d/dy (mm/mm) by central differences, 0 on the
    image border (as ``numpy.gradient`` inside; rows go down, camera y goes up)."""
    px = pixel_mm.reshape(-1, 1, 1, 1)
    sx, sy = torch.zeros_like(depth), torch.zeros_like(depth)
    sx[..., :, 1:-1] = (depth[..., :, 2:] - depth[..., :, :-2]) / (2 * px)
    sy[..., 1:-1, :] = -(depth[..., 2:, :] - depth[..., :-2, :]) / (2 * px)
    return sx, sy


class DetailLoss(nn.Module):
    """Loss of a predicted depth offset against the true detail (mm), with the weights of ``detail.loss``::

        L = w_d  mean_M |p - t|                                      displacement, mm
          + w_g  mean_{pairs in M} |D p - D t| / pixel_mm             slopes (forward differences), mm/mm
          + w_p  mean_{M'} mean_c |clip(I(p)) - image|                photometric, intensity
          + w_s  mean_{M'} |Lap p|                                    smoothness (5-point Laplacian), mm

    M is the mask, M' its interior (3x3 erosion: every stencil inside the face). I(p) re-renders the sample
    with its own Phong light and per-pixel albedo (:func:`render.shading.phong_shade`) on the normals of the
    smooth true surface displaced by p (:func:`render.shading.displaced_normals`, the renderer's own
    displacement model), so at p = t it reproduces the rendered image exactly (up to 8-bit/JPEG rounding from
    shards).

    Why each weight (``detail.loss``): ``docs/tuning.md``.

    Batch keys (tensors): ``target`` (B, 1, H, W) mm, ``mask`` (B, 1, H, W) float, ``normals`` (B, 3, H, W)
    smooth true normals, ``albedo`` (B, 3, H, W), ``image`` (B, 3, H, W) the render, the sample's Phong light
    ``light_direction`` (B, 3) (camera frame, towards the light) and ``light_ambient``, ``light_diffuse``,
    ``light_specular``, ``light_shininess`` (B,), ``pixel_mm`` (B,).
    """

    def __init__(self, displacement: float, gradient: float, photometric: float, smoothness: float):
        super().__init__()
        self.weights = {"displacement": float(displacement), "gradient": float(gradient),
                        "photometric": float(photometric), "smoothness": float(smoothness)}

    @classmethod
    def from_config(cls, cfg) -> "DetailLoss":
        w = cfg.detail.loss
        return cls(w.displacement, w.gradient, w.photometric, w.smoothness)

    def terms(self, pred: torch.Tensor, batch: dict) -> dict:
        """Each term (unweighted) as a scalar tensor."""
        pred = pred.float()
        t, m, px = batch["target"], batch["mask"], batch["pixel_mm"].float()
        if pred.shape != t.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(t.shape)} differ")
        pxb = px.reshape(-1, 1, 1, 1)
        inner = _interior(m)
        e = pred - t
        mx, my = m[..., :, 1:] * m[..., :, :-1], m[..., 1:, :] * m[..., :-1, :]
        gx = (e[..., :, 1:] - e[..., :, :-1]).abs() / pxb  # slope errors between mask neighbours, mm/mm
        gy = (e[..., 1:, :] - e[..., :-1, :]).abs() / pxb
        grad = ((gx * mx).sum() + (gy * my).sum()) / (mx.sum() + my.sum()).clamp(min=1.0)
        lap = torch.zeros_like(pred)
        lap[..., 1:-1, 1:-1] = (pred[..., 2:, 1:-1] + pred[..., :-2, 1:-1] + pred[..., 1:-1, 2:]
                                + pred[..., 1:-1, :-2] - 4 * pred[..., 1:-1, 1:-1])
        return {"displacement": _masked_mean(e.abs(), m), "gradient": grad,
                "photometric": _masked_mean((self.render(pred, batch) - batch["image"]).abs().mean(1, keepdim=True),
                                            inner),
                "smoothness": _masked_mean(lap.abs(), inner)}

    @staticmethod
    def render(pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """(B, 3, H, W) the sample re-rendered with the smooth true surface displaced by ``pred`` (mm)."""
        sx, sy = central_slopes(pred.float(), batch["pixel_mm"].float())
        n = displaced_normals(batch["normals"].permute(0, 2, 3, 1), sx[:, 0], sy[:, 0])  # (B, H, W, 3)
        k = [batch[f"light_{c}"].float().reshape(-1, 1, 1) for c in ("ambient", "diffuse", "specular", "shininess")]
        shade = phong_shade(n, batch["albedo"].permute(0, 2, 3, 1), batch["light_direction"].float()[:, None, None],
                            *k)
        return shade.clamp(0.0, 1.0).permute(0, 3, 1, 2)

    def forward(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """The weighted sum (scalar)."""
        terms = self.terms(pred, batch)
        return sum(self.weights[k] * v for k, v in terms.items())


# ----------------------------------------------------------------------------------------- inference
FORMAT = "facesynth-detail/1"


@dataclass(frozen=True)
class DetailWeights:
    """A trained detail network and what inference needs to feed it as it was trained.

    net: the :class:`DetailNet`, eval mode; highpass_sigma_px: the blur of its high-pass input channel;
    config: its training config; step: training steps taken; path: the file; provenance: how it was made."""

    net: DetailNet
    highpass_sigma_px: float
    config: object
    step: int
    path: str
    provenance: dict

    def predictor(self, device: str = "cpu", channels_last: bool | None = None) -> DetailPredictor:
        """The network as a :data:`DetailPredictor` for a whole frame on ``device``.

        ``channels_last``: default on CUDA only (on a 2-core CPU it gained nothing for one 256 x 256 frame:
        0.96x, ``benchmarks/detail.py``)."""
        net = self.net.to(device).eval()
        channels_last = str(device).startswith("cuda") if channels_last is None else channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        sigma = self.highpass_sigma_px

        @torch.no_grad()
        def predict(image, coarse_normals, mask, pixel_mm):
            x = torch.from_numpy(detail_features(image, coarse_normals, mask, sigma)[None]).to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return net(x, float(pixel_mm))[0, 0].float().cpu().numpy()

        return predict


def load_detail(path: str | Path, device: str = "cpu") -> DetailWeights:
    """Load a ``train detail`` checkpoint or exported weights file (:class:`facesynth.checkpoint.CheckpointError`
    when it is not one), built from the config saved in it."""
    from facesynth.checkpoint import read_checkpoint
    from facesynth.config import config_from_dict

    ckpt = read_checkpoint(path, FORMAT, "detail-network", device)
    cfg = config_from_dict(ckpt["config"])
    net = DetailNet.from_config(cfg)
    net.load_state_dict(ckpt["model"])
    return DetailWeights(net.to(device).eval(), float(cfg.detail.highpass_sigma_px), cfg, int(ckpt.get("step", 0)),
                         str(path), dict(ckpt.get("provenance", {})))


# ----------------------------------------------------------------------------------------- ONNX export
class _OnnxGraph(nn.Module):
    """What the ONNX file holds: :meth:`DetailNet.unet` times the pixel size and the mask channel, on inputs
    already padded to :attr:`DetailNet.pad_multiple` (the padding and crop stay outside the graph, so its H
    and W are free)."""

    def __init__(self, net: DetailNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, pixel_mm: torch.Tensor) -> torch.Tensor:
        out = self.net.unet(x).float()
        return out * pixel_mm.reshape(-1, 1, 1, 1) * x[:, MASK_CHANNEL:MASK_CHANNEL + 1]


def export_onnx(weights: str | Path, out: str | Path | None = None, opset: int = 17) -> dict:
    """Write the detail network of the weights file ``weights`` as ONNX (what ``refine`` runs with ONNX
    Runtime: :class:`training.detail_runtime.OnnxDetail`), atomically.

    :func:`facesynth.onnx_model.write_onnx` (torch's TorchScript-based exporter, BatchNorm folded into the
    convolutions; it needs the ``onnx`` package), batch, height and width dynamic. The metadata record the
    format, the SHA-256 of ``weights`` (``source_sha256``: refine uses the export only for that file), the
    high-pass blur, the padding multiple, the training step, the channels and the torch version.

    Args:
        weights: a ``train detail`` checkpoint or exported weights file (:func:`load_detail`).
        out: the ONNX file (None: beside ``weights``, :func:`facesynth.onnx_model.onnx_path`).
        opset: the ONNX operator set.
    Returns:
        the metadata written, with ``path``.
    """
    from facesynth.onnx_model import write_onnx

    from .detail_runtime import ONNX_FORMAT, ONNX_INPUTS, ONNX_OUTPUT

    loaded = load_detail(weights, "cpu")
    k = loaded.net.pad_multiple
    example = (torch.zeros(1, IN_CHANNELS, 4 * k, 4 * k), torch.ones(1))
    meta = {"highpass_sigma_px": repr(loaded.highpass_sigma_px), "pad_multiple": str(k),
            "step": str(loaded.step), "channels": ",".join(map(str, loaded.net.channels))}
    return write_onnx(_OnnxGraph(loaded.net), example, weights, out, ONNX_FORMAT, list(ONNX_INPUTS), [ONNX_OUTPUT],
                      {ONNX_INPUTS[0]: {0: "batch", 2: "height", 3: "width"}, ONNX_INPUTS[1]: {0: "batch"},
                       ONNX_OUTPUT: {0: "batch", 2: "height", 3: "width"}}, meta, opset)
