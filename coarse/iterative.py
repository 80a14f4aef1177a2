"""The iterative inference of the paper: start from the mean face (or the landmark fit), render the shading
image and the mask of the current estimate under the face's pose, feed [masked image, shading] to the network,
update, repeat.

Used by ``train evaluate`` (synthetic faces) and ``refine sfs`` (photos), so both run the same loop.
"""
from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class FrameView:
    """One view of a face in the network frame: image (H, W) gray or (H, W, 3) colour in [0, 1], not masked
    (H = W = the renderer's size); pose: the face's weak-perspective pose in it; region: None or (H, W) bool,
    where the inputs are kept (``train.input_mask: landmarks``, :meth:`coarse.frame.NetworkFrame.region`);
    refit: None or ``alpha -> Pose``, the pose of a new shape in this view (e.g. fitted to the landmarks)."""

    image: np.ndarray
    pose: Pose
    region: np.ndarray | None = None
    refit: Callable[[np.ndarray], Pose] | None = None


def iterative_fit(predict: Predictor, views: list[FrameView], renderer, iterations: int = 3,
                  alpha0: np.ndarray | None = None) -> list[tuple[np.ndarray, Pose]]:
    """Run the iterative network on one face seen in one or more views.

    Each pass renders the shading of the current estimate in every view, runs the network on all views as one
    batch and takes the mean of their predictions as the next estimate (with several views: the test-time
    average over shifts and scales the network was trained to ignore, :meth:`coarse.frame.NetworkFrame.views`);
    then each view's pose is re-fitted to the new shape when it has a ``refit``.

    Args:
        predict: the network (:func:`torch_predictor`); views: the :class:`FrameView` s (view 0 the plain one).
        renderer: :class:`render.renderer.FaceRenderer` of the views' size.
        iterations: network passes (the paper uses about three); alpha0: start (default the mean face, zeros).
    Returns:
        [(alpha_t (K,), pose_t of view 0)] after each pass.
    """
    K = renderer.model.n_coeffs
    alpha = np.zeros(K, np.float32) if alpha0 is None else np.asarray(alpha0, np.float32)
    poses = [v.pose for v in views]
    out = []
    for _ in range(iterations):
        inputs = []
        for v, pose in zip(views, poses):
            shading, mask = renderer.render_shading(alpha, pose)
            if v.region is not None:
                mask = mask & v.region
                shading = shading * mask
            masked = np.where(mask[..., None] if v.image.ndim == 3 else mask, v.image, 0.0)
            inputs.append(network_input(masked.astype(np.float32), shading))
        pred = predict(np.stack(inputs), np.repeat(alpha[None], len(views), 0))
        alpha = pred.astype(np.float64).mean(0).astype(np.float32)
        poses = [pose if v.refit is None else v.refit(alpha) for v, pose in zip(views, poses)]
        out.append((alpha, poses[0]))
    return out


def landmark_pose(landmarks: np.ndarray, model, alpha: np.ndarray) -> Pose:
    """The pose the network's passes use: fitted to ``landmarks`` (68, 2) pixels with the model's own 68
    landmark vertices of face ``alpha`` (K,), the jaw line left out (:func:`coarse.fit.fit_pose`)."""
    return fit_pose(landmarks, model.landmarks(np.asarray(alpha, np.float32)).astype(np.float64), landmark_weights(0.0))


def network_fit(predict: Predictor, frame: NetworkFrame, photo: np.ndarray, landmarks: np.ndarray, model,
                render_cfg, iterations: int = 3, refit_pose: bool = True, pose: Pose | None = None,
                alpha0: np.ndarray | None = None, views: int = 1) -> tuple[list, Pose]:
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
        views: the face is seen in this many network frames (:meth:`coarse.frame.NetworkFrame.views`), their
            predictions averaged; 1: the plain frame alone.
    Returns:
        ([(alpha_t (K,), pose_t in the network frame)] per pass, the final shape's pose in the photo frame).
    """
    known = pose is not None
    start = np.zeros(model.n_coeffs, np.float32) if alpha0 is None else np.asarray(alpha0, np.float32)
    if not known:
        pose = landmark_pose(landmarks, model, start)
    gray = to_gray(photo) if photo.ndim == 3 else photo
    points = np.asarray(landmarks, np.float64)
    renderer = FaceRenderer.from_config(model, render_cfg, image_size=frame.size, backend="numba")

    def view(net_pose: Pose) -> FrameView:
        fmap = frame_map(pose, net_pose)

        def refit(a):  # the new shape's landmark pose, carried into the frame the photo was warped into once
            p = landmark_pose(landmarks, model, a)
            return Pose(p.scale * fmap.k, p.rotation, fmap.forward(np.asarray(p.translation, np.float64)))

        return FrameView(warp_to_frame(gray, fmap, frame.size), net_pose, frame.region(fmap.forward(points)),
                         refit if refit_pose and not known else None)

    steps = iterative_fit(predict, [view(p) for p in frame.views(model, pose.rotation, views)], renderer,
                          iterations, alpha0=start)
    return steps, pose if known else landmark_pose(landmarks, model, steps[-1][0])
