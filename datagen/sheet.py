"""Contact sheets: many small images tiled into one, for previews and the docs.

Images are float arrays in [0, 1] ((H, W) gray or (H, W, 3) display RGB); a sheet is (H', W', 3) uint8.
"""
from __future__ import annotations

import numpy as np


def _to_rgb8(tile: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) float in [0, 1] (or uint8) -> (H, W, 3) uint8."""
    t = np.asarray(tile)
    if t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=-1)
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(f"a tile must be (H, W) or (H, W, 3), got {t.shape}")
    if t.dtype == np.uint8:
        return t
    return (np.clip(t, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``img`` (H, W, 3) uint8 with ``text`` on a dark strip at its top left (PIL's default font)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    box = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(im)


def contact_sheet(tiles: list[np.ndarray], cols: int, pad: int = 2, labels: list[str] | None = None,
                  pad_value: int = 255) -> np.ndarray:
    """Tile images on a grid, row by row.

    Args:
        tiles: images (H, W) or (H, W, 3), float in [0, 1] or uint8; sizes may differ (each cell is as
            large as the largest tile, tiles sit at its top left).
        cols: tiles per row (>= 1); the last row may be short.
        pad: pixels between cells and around the sheet.
        labels: optional text per tile, written at its top left.
        pad_value: gray level of the padding, 0..255.
    Returns:
        (rows * (h + pad) + pad, cols * (w + pad) + pad, 3) uint8.
    """
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    if labels is not None and len(labels) != len(tiles):
        raise ValueError(f"{len(labels)} labels for {len(tiles)} tiles")
    rgb = [_to_rgb8(t) for t in tiles]
    if labels is not None:
        rgb = [_label(t, s) if s else t for t, s in zip(rgb, labels)]
    h = max(t.shape[0] for t in rgb)
    w = max(t.shape[1] for t in rgb)
    cols = min(cols, len(rgb))
    rows = -(-len(rgb) // cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, t in enumerate(rgb):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
    return sheet
