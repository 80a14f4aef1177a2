"""The iterative inference of the paper: start from the mean face, render the shading image and the mask of
the current estimate under the face's pose, feed [masked image, shading] to the network, update, repeat.

Used by ``train evaluate`` (synthetic faces) and ``refine sfs`` (photos), so both run the same loop.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from datagen.sample import network_input
from render.camera import Pose

#: predict(inputs (B, C + 1, H, W) float32, alpha_t (B, K) float32) -> alpha_{t+1} (B, K) float32
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_predictor(net, device: str = "cpu", image_size: int | None = None) -> Predictor:
    """Wrap an :class:`training.network.IterativeNet` (eval mode, no grad) as a :data:`Predictor`.

    ``image_size``: the network frame it was trained with (``render.image_size`` of its checkpoint), kept as
    ``predict.image_size`` so that callers render and crop at that size."""
    import torch

    net = net.to(device).eval()

    @torch.no_grad()
    def predict(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        at = torch.from_numpy(np.ascontiguousarray(alpha, np.float32)).to(device)
        return net(xt, at).float().cpu().numpy()

    predict.image_size = image_size
    return predict


def iterative_fit(predict: Predictor, image: np.ndarray, pose: Pose, renderer, iterations: int = 3,
                  alpha0: np.ndarray | None = None, refit_pose: Callable[[np.ndarray], Pose] | None = None
                  ) -> list[tuple[np.ndarray, Pose]]:
    """Run the iterative network on one face.

    Args:
        predict: the network (:func:`torch_predictor`).
        image: (H, W) gray (or (H, W, 3) colour, as the network was trained) in [0, 1], in the network's
            frame (H = W = ``renderer.size``), not masked.
        pose: the face's weak-perspective pose in that frame.
        renderer: :class:`render.renderer.FaceRenderer` of size H.
        iterations: network passes (the paper uses about three).
        alpha0: start (default the mean face, zeros).
        refit_pose: optional ``alpha -> Pose`` (e.g. a landmark pose fit of the current shape), applied
            after each pass.
    Returns:
        [(alpha_t (K,), pose_t)] after each pass.
    """
    K = renderer.model.n_coeffs
    alpha = np.zeros(K, np.float32) if alpha0 is None else np.asarray(alpha0, np.float32)
    out = []
    for _ in range(iterations):
        shading, mask = renderer.render_shading(alpha, pose)
        masked = np.where(mask[..., None] if image.ndim == 3 else mask, image, 0.0)
        x = network_input(masked.astype(np.float32), shading)
        alpha = predict(x[None], alpha[None])[0].astype(np.float32)
        if refit_pose is not None:
            pose = refit_pose(alpha)
        out.append((alpha, pose))
    return out
