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

and the shading of a Lambertian surface is ``albedo * (Y(n) . sh)`` with ``sh`` (..., 9) (broadcast against
the normals' leading dimensions) including the convolution with the clamped cosine: a distant light of
intensity E from direction d has ``sh = E * A_l * Y(d)`` with A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4
(:func:`sh_directional`). Helpers on the same convention: :func:`sh_gradient` (d(Y(n) . sh)/dn, for
shape from shading) and :func:`sh_least_squares` (fit ``sh`` to an image).
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


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _relu(x):
    return x.clamp(min=0.0) if _is_torch(x) else np.maximum(x, 0.0)


def phong_shade(
    normals,
    albedo,
    light_dir,
    k_ambient,
    k_diffuse,
    k_specular,
    shininess,
):
    """Phong reflectance (numpy arrays or torch tensors, differentiable in torch).

    Args:
        normals: (..., 3) unit normals, camera frame.
        albedo: (..., C) albedo in [0, 1] (C = 3 for colour, 1 for gray).
        light_dir: (3,) unit vector from the surface towards the light, camera frame; or one per image,
            broadcast against the normals, e.g. (B, 1, 1, 3) for (B, H, W, 3) normals.
        k_ambient, k_diffuse, k_specular, shininess: scalars, or arrays broadcast against the normals'
            leading dimensions, e.g. (B, 1, 1).
    Returns:
        (..., C) intensity, not clipped.
    """
    if _is_torch(normals):
        import torch

        l = torch.as_tensor(light_dir, dtype=normals.dtype, device=normals.device)
        n_dot_l = (normals * l).sum(-1)
    else:
        l = np.asarray(light_dir, np.float32)
        n_dot_l = normals @ l if l.ndim == 1 else (normals * l).sum(-1)
    diffuse = _relu(n_dot_l)
    # r.v with v = (0, 0, 1): r_z = 2 (n.l) n_z - l_z
    r_dot_v = 2.0 * n_dot_l * normals[..., 2] - l[..., 2]
    spec = (n_dot_l > 0) * _power(_relu(r_dot_v), shininess)
    return (k_ambient + k_diffuse * diffuse)[..., None] * albedo + (k_specular * spec)[..., None]


def _power(x, p):
    """x ** p for x >= 0; a whole number p <= 64 (a scalar) by repeated squaring, which is several times
    faster than numpy's float power and the same to float rounding."""
    if not (np.ndim(p) == 0 and float(p).is_integer() and 1 <= p <= 64):
        return x ** p
    p, out, sq = int(p), None, x
    while True:
        if p & 1:
            out = sq if out is None else out * sq
        p >>= 1
        if not p:
            return out
        sq = sq * sq


def displaced_normals(normals, slope_x, slope_y, min_nz: float = 0.3):
    """Normals of a surface displaced along the camera axis by a height field h (numpy or torch).

    To first order the displaced surface z + h has the normal ``n / n_z - (dh/dx, dh/dy, 0)``, normalised
    (``n_z`` clamped at ``min_nz`` so that grazing pixels do not blow up). The renderer displaces detail
    this way (:meth:`render.renderer.FaceRenderer.render_face` with ``displacement_uv``) and the detail
    network's photometric loss re-renders its prediction with it.

    Args:
        normals: (..., 3) camera-frame unit normals of the smooth surface.
        slope_x, slope_y: (...) dh/dx and dh/dy, mm per mm, camera frame (x right, y up: an image row
            going down is -y).
    Returns:
        (..., 3) unit normals.
    """
    if _is_torch(normals):
        import torch

        nz = normals[..., 2].clamp(min=min_nz)
        n = normals / nz[..., None]
        n = torch.stack([n[..., 0] - slope_x, n[..., 1] - slope_y, n[..., 2]], -1)
        return n / torch.linalg.norm(n, dim=-1, keepdim=True).clamp(min=1e-12)
    nz = np.maximum(normals[..., 2], min_nz)
    n = normals / nz[..., None]
    n = np.stack([n[..., 0] - slope_x, n[..., 1] - slope_y, n[..., 2]], -1)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    return n


def shading_image(normals: np.ndarray, mask: np.ndarray, ambient: float, diffuse: float) -> np.ndarray:
    """The network's shading input: constant unit albedo, frontal light l = v = (0, 0, 1), no specular.

    Args:
        normals: (H, W, 3) camera-frame unit normals; mask: (H, W) bool.
    Returns:
        (H, W) float32 in [0, 1], 0 outside the mask.
    """
    s = ambient + diffuse * np.maximum(normals[..., 2], 0.0)
    return np.where(mask, s, 0.0).astype(np.float32)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1), same shape, float32."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values (IEC 61966-2-1), same shape, float32 (clipped to [0, 1])."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055).astype(np.float32)


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
    if _is_torch(normals):
        import torch

        return torch.stack(terms, dim=-1)
    return np.stack(terms, axis=-1)


def sh_shade(normals, albedo, sh):
    """Lambertian SH shading: albedo * (Y(n) . sh).

    Args:
        normals: (..., 3) camera-frame unit normals (numpy or torch);
        albedo: (...) or scalar (broadcast against the result);
        sh: (..., 9) coefficients broadcast against the normals' leading dimensions: (9,) for one light,
            (B, 1, 1, 9) for a batch of (B, H, W, 3) normals; per colour channel, call once per channel.
    Returns:
        (...) shading.
    """
    return albedo * (sh_basis(normals) * sh).sum(-1)


#: Clamped-cosine convolution factors of the SH bands 0, 1, 2 (Ramamoorthi & Hanrahan 2001), per term.
SH_LAMBERT = np.array([np.pi] + [2 * np.pi / 3] * 3 + [np.pi / 4] * 5)


def sh_directional(direction: np.ndarray, intensity: float = 1.0, ambient: float = 0.0) -> np.ndarray:
    """(9,) coefficients of a distant light: ``intensity`` from unit ``direction`` (camera frame, towards
    the light) convolved with the clamped cosine (so Y(n) . sh ~ intensity max(0, n . d)), plus a
    constant ``ambient`` shading."""
    d = np.asarray(direction, np.float64)
    d = d / max(np.linalg.norm(d), 1e-12)
    sh = intensity * SH_LAMBERT * sh_basis(d)
    sh[0] += ambient / SH_CONSTANTS[0]
    return sh


def sh_gradient(normals: np.ndarray, sh: np.ndarray) -> np.ndarray:
    """Gradient of the SH shading ``Y(n) . sh`` with respect to the normal (the basis as a polynomial in
    x, y, z, unconstrained by |n| = 1).

    Args:
        normals: (..., 3) camera-frame unit normals; sh: (9,) coefficients.
    Returns:
        (..., 3) d(Y(n) . sh) / d(x, y, z).
    """
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    c = SH_CONSTANTS * np.asarray(sh, np.float64)
    gx = c[3] + c[4] * y + c[7] * z + 2 * c[8] * x
    gy = c[1] + c[4] * x + c[5] * z - 2 * c[8] * y
    gz = c[2] + c[5] * y + 6 * c[6] * z + c[7] * x
    return np.stack([gx, gy, gz], axis=-1)


def sh_least_squares(normals: np.ndarray, intensity: np.ndarray, albedo=1.0, weights: np.ndarray | None = None,
                     ridge: float = 0.0) -> np.ndarray:
    """Least-squares SH lighting: argmin_sh sum_p w_p (albedo_p Y(n_p) . sh - I_p)^2 + ridge ||sh||^2.

    Args:
        normals: (N, 3) camera-frame unit normals; intensity: (N,) or (N, C) observed shading;
        albedo: (N,) or scalar; weights: (N,) non-negative (default 1);
        ridge: Tikhonov weight against ill-conditioning when the normals cover a small part of the sphere
            (0: plain least squares, minimum-norm if rank deficient).
    Returns:
        (9,) coefficients, or (C, 9) for (N, C) intensities.
    """
    n = np.asarray(normals, np.float64).reshape(-1, 3)
    I = np.asarray(intensity, np.float64)
    I2 = I.reshape(len(n), -1)
    a = np.broadcast_to(np.asarray(albedo, np.float64), (len(n),))
    w = np.ones(len(n)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if np.count_nonzero(w) < 9:
        raise ValueError(f"an SH fit needs at least 9 weighted samples; got {np.count_nonzero(w)}")
    sw = np.sqrt(w)[:, None]
    A = sw * a[:, None] * sh_basis(n)  # (N, 9)
    b = sw * I2
    if ridge > 0:
        A = np.vstack([A, np.sqrt(ridge) * np.eye(9)])
        b = np.vstack([b, np.zeros((9, b.shape[1]))])
    sh = np.linalg.lstsq(A, b, rcond=None)[0].T  # (C, 9)
    return sh[0] if I.ndim == 1 else sh
