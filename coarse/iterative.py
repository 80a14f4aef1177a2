"""The iterative inference of the paper: start from the mean face (or the landmark fit), render the shading
image and the mask of the current estimate under the face's pose, feed [masked image, shading] to the network,
update, repeat.

Used by ``train evaluate`` (synthetic faces) and ``refine sfs`` (photos), so both run the same loop.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from datagen.sample import network_input
from render.camera import Pose
from render.renderer import FaceRenderer
from render.shading import to_gray

from .fit import fit_pose, landmark_weights
from .frame import NetworkFrame, frame_map, warp_to_frame

#: predict(inputs (B, C + 1, H, W) float32, alpha_t (B, K) float32) -> alpha_{t+1} (B, K) float32
Predictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def torch_predictor(net, device: str = "cpu") -> Predictor:
    """Wrap an :class:`coarse.network.IterativeNet` (eval mode, no grad) as a :data:`Predictor`."""
    import torch

    net = net.to(device).eval()

    @torch.no_grad()
    def predict(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        at = torch.from_numpy(np.ascontiguousarray(alpha, np.float32)).to(device)
        return net(xt, at).float().cpu().numpy()

    return predict


def iterative_fit(predict: Predictor, image: np.ndarray, pose: Pose, renderer, iterations: int = 3,
                  alpha0: np.ndarray | None = None, refit_pose: Callable[[np.ndarray], Pose] | None = None,
                  region: np.ndarray | None = None) -> list[tuple[np.ndarray, Pose]]:
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
        region: optional (H, W) bool: image and shading are kept only there (``train.input_mask: landmarks``,
            :meth:`coarse.frame.NetworkFrame.region`).
    Returns:
        [(alpha_t (K,), pose_t)] after each pass.
    """
    K = renderer.model.n_coeffs
    alpha = np.zeros(K, np.float32) if alpha0 is None else np.asarray(alpha0, np.float32)
    out = []
    for _ in range(iterations):
        shading, mask = renderer.render_shading(alpha, pose)
        if region is not None:
            mask = mask & region
            shading = shading * mask
        masked = np.where(mask[..., None] if image.ndim == 3 else mask, image, 0.0)
        x = network_input(masked.astype(np.float32), shading)
        alpha = predict(x[None], alpha[None])[0].astype(np.float32)
        if refit_pose is not None:
            pose = refit_pose(alpha)
        out.append((alpha, pose))
    return out


def landmark_pose(landmarks: np.ndarray, model, alpha: np.ndarray) -> Pose:
    """The pose the network's passes use: fitted to ``landmarks`` (68, 2) pixels with the model's own 68
    landmark vertices of face ``alpha`` (K,), the jaw line left out (:func:`coarse.fit.fit_pose`)."""
    return fit_pose(landmarks, model.landmarks(np.asarray(alpha, np.float32)).astype(np.float64), landmark_weights(0.0))


def network_fit(predict: Predictor, frame: NetworkFrame, photo: np.ndarray, landmarks: np.ndarray, model,
                render_cfg, iterations: int = 3, refit_pose: bool = True, pose: Pose | None = None,
                alpha0: np.ndarray | None = None) -> tuple[list, Pose]:
    """The iterative network on one face of a photo, in the network frame.

    Args:
        predict: the network (:data:`Predictor`); frame: the network frame it was trained with.
        photo: (H, W, 3) or (H, W) float in [0, 1], the photo frame.
        landmarks: (68, 2) landmarks in photo pixels (the jaw line is left out of the pose fits).
        model: the face model; render_cfg: the ``render`` config section (shading constants, backend).
        iterations: network passes; refit_pose: re-fit the pose to the landmarks of each new shape.
        pose: the face's pose in the photo frame when it is known (evaluation with the true pose: no pose
            fits); default fitted to the landmarks.
        alpha0: (K,) the first pass's a_t (e.g. the landmark fit, as ``train.start: fit`` trains); default the
            mean face.
    Returns:
        ([(alpha_t (K,), pose_t in the network frame)] per pass, the final shape's pose in the photo frame).
    """
    known = pose is not None
    start = np.zeros(model.n_coeffs, np.float32) if alpha0 is None else np.asarray(alpha0, np.float32)
    if not known:
        pose = landmark_pose(landmarks, model, start)
    net_pose = frame.pose(model, pose.rotation)
    fmap = frame_map(pose, net_pose)
    gray = warp_to_frame(to_gray(photo) if photo.ndim == 3 else photo, fmap, frame.size)
    renderer = FaceRenderer.from_config(model, render_cfg, image_size=frame.size, backend="numba")

    def refit(a):  # the new shape's landmark pose, carried into the frame the photo was warped into once
        p = landmark_pose(landmarks, model, a)
        return Pose(p.scale * fmap.k, p.rotation, fmap.forward(np.asarray(p.translation, np.float64)))

    steps = iterative_fit(predict, gray, net_pose, renderer, iterations, alpha0=start,
                          refit_pose=refit if refit_pose and not known else None,
                          region=frame.region(fmap.forward(np.asarray(landmarks, np.float64))))
    return steps, pose if known else landmark_pose(landmarks, model, steps[-1][0])
