"""ARKit's 52 blendshape names, how the face model's 53 expression blendshapes map onto them, and the CSV layout
the Live Link Face iOS app writes (``blendshapes.csv`` of ``refine video --gltf``).

The face model's expressions (ICT-FaceKit) are ARKit's, named ``browDown_L`` where ARKit says ``browDownLeft``;
``_L`` is the face's own left (+x in the model frame, the viewer's right), as ARKit's ``Left``. ICT splits two of
ARKit's shapes in halves: ``browInnerUp_L`` / ``browInnerUp_R`` and ``cheekPuff_L`` / ``cheekPuff_R``, and has no
``tongueOut``. :func:`arkit_name` renames the 53 (the halves become ``browInnerUpLeft`` ... ``cheekPuffRight``);
:func:`arkit_weights` gives ARKit's 52 weights of a frame: a split shape is the mean of its halves (equal
halves ``w`` are ARKit's ``w``), ``tongueOut`` is 0, everything cut to [0, 1].

The CSV (:func:`write_live_link_csv`) has the columns of Live Link Face's recordings, as Unreal's importer
(``LiveLinkFaceImporterFactory``) reads them: ``Timecode``, ``BlendShapeCount`` (61: the 52 shapes and 9 angles),
the 52 shapes in :data:`ARKIT_NAMES` order with capitalised names (``EyeBlinkLeft``), then ``HeadYaw``,
``HeadPitch``, ``HeadRoll``, ``LeftEyeYaw``, ``LeftEyePitch``, ``LeftEyeRoll``, ``RightEyeYaw``, ``RightEyePitch``,
``RightEyeRoll``. See :func:`live_link_timecode` for the time and :func:`write_live_link_csv` for the angles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from facesynth.io import atomic_write_text

#: ARKit's 52 blendshapes (``ARFaceAnchor.BlendShapeLocation``) in the order of Live Link Face's CSV columns.
ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft", "eyeSquintLeft",
    "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight", "jawForward", "jawRight", "jawLeft", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthRight", "mouthLeft", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthPressLeft", "mouthPressRight",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft",
    "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft",
    "cheekSquintRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
)
#: ARKit shapes the model has in two halves: ARKit name -> (left half, right half), the model's names.
SPLIT = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}
#: ARKit shapes the model does not have.
MISSING = ("tongueOut",)
#: The 9 angles after the shapes in Live Link Face's CSV.
ANGLE_COLUMNS = ("HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll", "RightEyeYaw",
                 "RightEyePitch", "RightEyeRoll")
#: Frames per second of the CSV's timecodes (the app's 30 fps setting; see :func:`live_link_timecode`).
TIMECODE_FPS = 30


def arkit_name(name: str) -> str:
    """The model's blendshape name in ARKit's style: ``browDown_L`` -> ``browDownLeft``, ``jawOpen`` unchanged;
    the split halves become ``browInnerUpLeft`` / ``browInnerUpRight`` / ``cheekPuffLeft`` / ``cheekPuffRight``."""
    if name.endswith("_L"):
        return name[:-2] + "Left"
    if name.endswith("_R"):
        return name[:-2] + "Right"
    return name


def arkit_weights(expression_names: list[str], weights: np.ndarray) -> np.ndarray:
    """The model's expression weights (..., 53) -> ARKit's (..., 52) in :data:`ARKIT_NAMES` order, in [0, 1]
    (split shapes: the mean of the halves; ``tongueOut``: 0)."""
    w = np.asarray(weights, np.float64)
    column = {arkit_name(n): i for i, n in enumerate(expression_names)}
    out = np.zeros(w.shape[:-1] + (len(ARKIT_NAMES),))
    for j, name in enumerate(ARKIT_NAMES):
        if name in SPLIT:
            left, right = (expression_names.index(h) for h in SPLIT[name])
            out[..., j] = 0.5 * (w[..., left] + w[..., right])
        elif name not in MISSING:
            out[..., j] = w[..., column[name]]
    return np.clip(out, 0.0, 1.0)


def live_link_timecode(seconds: float, fps: int = TIMECODE_FPS) -> str:
    """``HH:MM:SS:FF.fff``: hours, minutes, seconds, then the frame within the second at ``fps`` with its
    fraction (thousandths of a frame), as Live Link Face writes it. Unreal's importer reads the time back as
    ``h 3600 + m 60 + s + FF.fff / fps``, with fps inferred as 60 when a frame number passes 30, else 30: at
    30 fps every frame number is below 30, so the time is read back exactly (to 1/30000 s)."""
    milli = int(round(max(seconds, 0.0) * fps * 1000))  # thousandths of a frame
    frames, frac = divmod(milli, 1000)
    whole, ff = divmod(frames, fps)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}:{ff:02d}.{frac:03d}"


def write_live_link_csv(path: str | Path, times: np.ndarray, weights: np.ndarray, head_deg: np.ndarray) -> Path:
    """Write frames as a Live Link Face CSV, atomically.

    Args:
        times: (T,) seconds, increasing (one row each, in order).
        weights: (T, 52) ARKit weights in :data:`ARKIT_NAMES` order (:func:`arkit_weights`), in [0, 1].
        head_deg: (T, 3) head yaw, pitch, roll in degrees (:func:`render.camera.rotation_to_euler`: positive yaw
            turns the face towards the image's right, positive pitch down, positive roll counter-clockwise in
            the image). Written as degrees / 180, the [-1, 1] range Unreal's ARKit face support
            (``AppleARKitFaceSupport``) gives the app's head angles; the eye angles are 0 (the model's eyeballs
            do not turn: gaze is in the ``eyeLook*`` shapes).
    """
    times, weights, head_deg = np.asarray(times, float), np.asarray(weights, float), np.asarray(head_deg, float)
    if weights.shape != (len(times), len(ARKIT_NAMES)) or head_deg.shape != (len(times), 3):
        raise ValueError(f"expected (T, 52) weights and (T, 3) angles for {len(times)} times; got "
                         f"{weights.shape} and {head_deg.shape}")
    head = ["Timecode", "BlendShapeCount", *(n[0].upper() + n[1:] for n in ARKIT_NAMES), *ANGLE_COLUMNS]
    count = len(ARKIT_NAMES) + len(ANGLE_COLUMNS)
    rows = [",".join(head)]
    for t, w, a in zip(times, weights, head_deg):
        angles = [*(a / 180.0), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        rows.append(",".join([live_link_timecode(t), str(count), *(f"{v:.6f}" for v in w),
                              *(f"{v:.6f}" for v in angles)]))
    return atomic_write_text(path, "\n".join(rows) + "\n")
