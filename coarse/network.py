"""The iterative ResNet of Richardson et al. 2016 (Fig. 4 and Section 5.1).

Input: the masked face image and the shading image of the current estimate a_t, (B, 2, H, W) in [0, 1]
(200 x 200 in the paper; any size works, the features are averaged over space). The backbone regresses
K values; a linear layer on [backbone output, a_t] (2K -> K) gives the correction, and the network returns
a_{t+1} = a_t + correction::

    layer          stride   output (H = W = 200)
    7x7, 32          2      100 x 100 x 32      (+ BN + ReLU)
    b[32]  x 2       1      100 x 100 x 32
    b[64]  x 2       2       50 x  50 x 64
    b[128] x 2       2       25 x  25 x 128
    b[256] x 2       2       13 x  13 x 256
    3x3, K           1       13 x  13 x K
    average          -       K
    linear [K, a_t]  -       K              (correction)

``b[n]`` is the basic block of ResNet-18/34 (two 3x3 convolutions, identity or 1x1-projection shortcut).

``head="dense"`` (``train.head``) replaces "3x3, K; average" by one linear map of the whole last feature map
(H/16 x H/16 x widths[-1] -> K): the regression then knows where on the face a feature is, which the average
over space forgets. It needs the input size at construction. :func:`dense_from_mean` builds it from the
average head's weights, giving exactly the same outputs, so a trained network can continue with it.
Coefficients are used as they are: identity weights ~ N(0, 1) and expression weights in [0, 1] are on
similar scales. With K = 153 the network has about 3.2 M parameters.

The weights (:func:`load_iterative`) and the export to ONNX (:func:`export_onnx`, what ``refine`` runs without
torch: :mod:`coarse.network_runtime`) live here too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .frame import NetworkFrame


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU.

    The shortcut is the identity, or a strided 1x1 convolution + BN when the stride or width changes.
    """

    def __init__(self, in_maps: int, out_maps: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_maps, out_maps, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_maps)
        self.conv2 = nn.Conv2d(out_maps, out_maps, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_maps)
        self.shortcut = nn.Identity()
        if stride != 1 or in_maps != out_maps:
            self.shortcut = nn.Sequential(nn.Conv2d(in_maps, out_maps, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class IterativeNet(nn.Module):
    """The iterative-error-feedback regressor.

    Args:
        n_coeffs: K, the length of a coefficient vector (153: 100 identity, then 53 expression).
        in_channels: 2 (gray image + shading) or 4 (colour image + shading, ``datagen.color_input``).
        widths: maps of the four stages.
        head: ``mean`` (the paper: a 3x3 convolution to K maps, averaged over space) or ``dense`` (a linear map of
            the whole last feature map; module docstring).
        image_size: the input's H = W, needed by the ``dense`` head.
    """

    def __init__(self, n_coeffs: int = 153, in_channels: int = 2, widths: tuple[int, ...] = (32, 64, 128, 256),
                 head: str = "mean", image_size: int | None = None):
        super().__init__()
        if head not in ("mean", "dense"):
            raise ValueError(f"head must be 'mean' or 'dense'; got {head!r}")
        if head == "dense" and not image_size:
            raise ValueError("the dense head needs image_size")
        self.n_coeffs, self.in_channels, self.widths, self.head = n_coeffs, in_channels, tuple(widths), head
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        blocks, maps = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(maps, w, stride), BasicBlock(w, w)]
            maps = w
        self.blocks = nn.Sequential(*blocks)
        if head == "mean":
            self.regress = nn.Conv2d(maps, n_coeffs, 3, 1, 1)
        else:
            self.feature_size = feature_map_size(image_size, len(widths))
            self.regress = nn.Linear(maps * self.feature_size ** 2, n_coeffs)
        self.correction = nn.Linear(2 * n_coeffs, n_coeffs)
        self._init_weights()

    @classmethod
    def from_config(cls, cfg) -> "IterativeNet":
        """The network for a :class:`facesynth.config.Config` (K from ``model``, channels from ``datagen``, stage
        widths from ``train.widths``)."""
        return cls(cfg.model.n_identity + cfg.model.n_expression, 4 if cfg.datagen.color_input else 2,
                   tuple(cfg.train.widths), cfg.train.head, cfg.render.image_size)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The untrained network returns a_t unchanged: each training step starts from "no correction".
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        nn.init.zeros_(self.regress.bias)

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image + shading -> (B, widths[-1], S, S) the last feature map (S = H/16, rounded up)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W); got {tuple(x.shape)}")
        return self.blocks(self.stem(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image + shading -> (B, K) the regression: K maps averaged over space (``mean``) or one
        linear map of the whole feature map (``dense``)."""
        return self.regression(self.backbone(x))

    def regression(self, f: torch.Tensor) -> torch.Tensor:
        """(B, widths[-1], S, S) feature map of :meth:`backbone` -> (B, K)."""
        if self.head == "mean":
            return self.regress(f).mean(dim=(2, 3))
        if f.shape[-2:] != (self.feature_size, self.feature_size):
            raise ValueError(f"the dense head was built for {self.feature_size}x{self.feature_size} feature maps (its "
                             f"image_size); got {tuple(f.shape[-2:])}")
        return self.regress(f.flatten(1))

    def forward_head(self, features: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        """(B, K) features, (B, K) current estimate -> (B, K) next estimate a_t + correction."""
        if alpha_t.shape != features.shape:
            raise ValueError(f"expected alpha_t {tuple(features.shape)}; got {tuple(alpha_t.shape)}")
        correction = self.correction(torch.cat([features, alpha_t.to(features.dtype)], dim=1))
        return alpha_t + correction.to(alpha_t.dtype)  # the residual stays in alpha_t's precision

    def forward(self, x: torch.Tensor, alpha_t: torch.Tensor) -> torch.Tensor:
        """Args: x (B, C, H, W) float in [0, 1]; alpha_t (B, K) current coefficients.
        Returns: (B, K) next coefficients a_{t+1}."""
        return self.forward_head(self.forward_features(x), alpha_t)


def feature_map_size(image_size: int, stages: int = 4) -> int:
    """Side of the last feature map for an input of ``image_size`` (the stem and each later stage halve it,
    rounding up as a stride-2 convolution with padding does)."""
    size = image_size
    for _ in range(stages):  # the stem, then stages 2..n
        size = (size + 1) // 2
    return size


def dense_from_mean(net: IterativeNet, image_size: int) -> IterativeNet:
    """The ``dense``-head network that computes exactly what the ``mean``-head ``net`` computes on inputs of
    ``image_size``: the 3x3 convolution (zero padding) followed by the average over the S x S map is one linear
    map of the feature map; every other weight is copied. Returns a new network in ``net``'s mode."""
    if net.head != "mean":
        raise ValueError("dense_from_mean needs a network with the mean head")
    out = IterativeNet(net.n_coeffs, net.in_channels, net.widths, "dense", image_size)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("regress.")}
    w = net.regress.weight.detach().double()  # (K, C, 3, 3)
    S = out.feature_size
    dense = torch.zeros(net.n_coeffs, w.shape[1], S + 2, S + 2, dtype=torch.float64)
    for dy in range(3):  # output position (y, x) reads input (y + dy - 1, x + dx - 1): sum over outputs
        for dx in range(3):
            dense[:, :, dy:dy + S, dx:dx + S] += w[:, :, dy, dx, None, None]
    state["regress.weight"] = (dense[:, :, 1:S + 1, 1:S + 1] / S ** 2).flatten(1).to(net.regress.weight.dtype)
    state["regress.bias"] = net.regress.bias.detach().clone()
    out.load_state_dict(state)
    return out.train(net.training)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------- weights
#: The checkpoint format of ``train iterative`` (and of the shipped ``data/iterative_weights.pt``).
FORMAT = "facesynth-iterative/1"


@dataclass(frozen=True)
class IterativeWeights:
    """A trained iterative network and what inference needs to feed it as it was trained.

    net: the :class:`IterativeNet`, eval mode, on the device it was loaded to; frame: the network frame of
    its training data (:class:`coarse.frame.NetworkFrame`); color_input: colour (True) or gray image input;
    config: its training config (:class:`facesynth.config.Config`); step: training steps taken;
    path: the file; provenance: what the file says of how it was made ({} for a raw checkpoint).
    """

    net: IterativeNet
    frame: NetworkFrame
    color_input: bool
    config: object
    step: int
    path: str
    provenance: dict

    def predictor(self, device: str | None = None):
        """The network as a numpy :data:`coarse.iterative.Predictor` on ``device`` (None: the device it was
        loaded to)."""
        from .iterative import torch_predictor

        return torch_predictor(self.net, str(next(self.net.parameters()).device) if device is None else device)


def load_iterative(path: str | Path, device: str = "cpu") -> IterativeWeights:
    """Load a ``train iterative`` checkpoint or exported weights file (:class:`facesynth.checkpoint.CheckpointError`
    when it is not one), built from the config saved in it."""
    from facesynth.checkpoint import read_checkpoint
    from facesynth.config import config_from_dict

    ckpt = read_checkpoint(path, FORMAT, "iterative-network", map_location=device)
    cfg = config_from_dict(ckpt["config"])
    net = IterativeNet.from_config(cfg)
    net.load_state_dict(ckpt["model"])
    return IterativeWeights(net.to(device).eval(), NetworkFrame.from_config(cfg), bool(cfg.datagen.color_input),
                            cfg, int(ckpt.get("step", 0)), str(path), dict(ckpt.get("provenance", {})))


# ----------------------------------------------------------------------------------------- ONNX export
def export_onnx(weights: str | Path, out: str | Path | None = None, opset: int = 17) -> dict:
    """Write the iterative network of the weights file ``weights`` as ONNX (what ``refine`` runs with ONNX
    Runtime: :class:`coarse.network_runtime.OnnxIterative`), atomically.

    The graph is :meth:`IterativeNet.forward` in eval mode (BatchNorm folded into the convolutions) on inputs
    of the network frame's size, the batch dynamic (:func:`facesynth.onnx_model.write_onnx`; it needs the
    ``onnx`` package). The metadata record the format, the SHA-256 of ``weights`` (``source_sha256``: refine
    uses the export only for that file), the training config as JSON (the network frame and the input's
    colour are rebuilt from it), the training step, the provenance record as JSON, the network's shape and
    the torch version.

    Args:
        weights: a ``train iterative`` checkpoint or exported weights file (:func:`load_iterative`).
        out: the ONNX file (None: beside ``weights``, :func:`facesynth.onnx_model.onnx_path`).
        opset: the ONNX operator set.
    Returns:
        the metadata written, with ``path``.
    """
    import json

    from facesynth.onnx_model import write_onnx

    from .network_runtime import ONNX_FORMAT, ONNX_INPUTS, ONNX_OUTPUT

    loaded = load_iterative(weights, "cpu")
    net = loaded.net
    size = loaded.frame.size
    example = (torch.zeros(1, net.in_channels, size, size), torch.zeros(1, net.n_coeffs))
    meta = {"config": json.dumps(loaded.config.to_dict()), "step": str(loaded.step),
            "provenance": json.dumps(loaded.provenance), "n_coeffs": str(net.n_coeffs),
            "in_channels": str(net.in_channels), "image_size": str(size), "head": net.head,
            "widths": ",".join(map(str, net.widths))}
    return write_onnx(net, example, weights, out, ONNX_FORMAT, list(ONNX_INPUTS), [ONNX_OUTPUT],
                      {ONNX_INPUTS[0]: {0: "batch"}, ONNX_INPUTS[1]: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                      meta, opset)
