"""Shading: plain functions over per-pixel normals and albedo, shared by datagen, SfS and the detail loss.

All normals are unit vectors in the camera frame (x right, y up, z towards the camera; see
:mod:`render.camera`); the view vector is v = (0, 0, 1) (orthographic camera).

Phong (the data generator's reflectance, the paper's eq. 2)::

    I = k_a a + k_d a max(0, n.l) + k_s max(0, r.v)^shininess,   r = 2 (n.l) n - l

The specular term is counted only where n.l > 0 (a surface facing away from the light has no highlight).

Spherical harmonics (second order, 9 terms, the order and normalisation used everywhere in this project)::

    Y = [c0,  c1 y,  c1 z,  c1 x,  c2 x y,  c2 y z,  c3 (3 z^2 - 1),  c2 x z,  c4 (x^2 - y^2)]
    c0 = 1 / (2 sqrt(pi)), c1 = sqrt(3) / (2 sqrt(pi)), c2 = sqrt(15) / (2 sqrt(pi)),
    c3 = sqrt(5) / (4 sqrt(pi)), c4 = sqrt(15) / (4 sqrt(pi))

and the shading of a Lambertian surface is ``albedo * (Y(n) . sh)`` with ``sh`` (9,) or (B, 9) including
the convolution with the clamped cosine.
"""
from __future__ import annotations

import numpy as np

_SQRT_PI = np.sqrt(np.pi)
SH_CONSTANTS = np.array(
    [
        1 / (2 * _SQRT_PI),
        np.sqrt(3) / (2 * _SQRT_PI),
        np.sqrt(3) / (2 * _SQRT_PI),
        np.sqrt(3) / (2 * _SQRT_PI),
        np.sqrt(15) / (2 * _SQRT_PI),
        np.sqrt(15) / (2 * _SQRT_PI),
        np.sqrt(5) / (4 * _SQRT_PI),
        np.sqrt(15) / (2 * _SQRT_PI),
        np.sqrt(15) / (4 * _SQRT_PI),
    ]
)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")


def phong_shade(
    normals: np.ndarray,
    albedo: np.ndarray,
    light_dir: np.ndarray,
    k_ambient: float,
    k_diffuse: float,
    k_specular: float,
    shininess: float,
) -> np.ndarray:
    """Phong reflectance.

    Args:
        normals: (..., 3) unit normals, camera frame.
        albedo: (..., C) albedo in [0, 1] (C = 3 for colour, 1 for gray).
        light_dir: (3,) unit vector from the surface towards the light, camera frame.
        k_ambient, k_diffuse, k_specular, shininess: scalars.
    Returns:
        (..., C) intensity, not clipped.
    """
    l = np.asarray(light_dir, np.float32)
    n_dot_l = normals @ l
    diffuse = np.maximum(n_dot_l, 0.0)
    # r.v with v = (0, 0, 1): r_z = 2 (n.l) n_z - l_z
    r_dot_v = 2.0 * n_dot_l * normals[..., 2] - l[2]
    spec = np.where(n_dot_l > 0, np.maximum(r_dot_v, 0.0) ** shininess, 0.0)
    return (k_ambient + k_diffuse * diffuse)[..., None] * albedo + (k_specular * spec)[..., None]


def shading_image(normals: np.ndarray, mask: np.ndarray, ambient: float, diffuse: float) -> np.ndarray:
    """The network's shading input: constant unit albedo, frontal light l = v = (0, 0, 1), no specular.

    Args:
        normals: (H, W, 3) camera-frame unit normals; mask: (H, W) bool.
    Returns:
        (H, W) float32 in [0, 1], 0 outside the mask.
    """
    s = ambient + diffuse * np.maximum(normals[..., 2], 0.0)
    return np.where(mask, s, 0.0).astype(np.float32)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) linear RGB -> (...) luma (BT.601 weights)."""
    return rgb @ LUMA


def sh_basis(normals):
    """(..., 3) unit normals -> (..., 9) SH basis values in the documented order (numpy or torch)."""
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    one = x * 0 + 1
    c = SH_CONSTANTS
    terms = [c[0] * one, c[1] * y, c[2] * z, c[3] * x, c[4] * x * y, c[5] * y * z,
             c[6] * (3 * z * z - 1), c[7] * x * z, c[8] * (x * x - y * y)]
    try:
        import torch

        if isinstance(normals, torch.Tensor):
            return torch.stack(terms, dim=-1)
    except ImportError:  # pragma: no cover
        pass
    return np.stack(terms, axis=-1)


def sh_shade(normals, albedo, sh):
    """Lambertian SH shading: albedo * (Y(n) . sh).

    Args:
        normals: (..., 3) camera-frame unit normals; albedo: (...) or (..., 1) or scalar;
        sh: (9,) coefficients (per colour channel: call once per channel).
    Returns:
        (...) shading.
    """
    return albedo * (sh_basis(normals) @ sh)
