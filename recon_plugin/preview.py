"""PNG previews: labelled grids of magnitude images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14


def to_uint8(image: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Magnitude scaled to 0..255 with ``vmax`` (default: 99.5th percentile) as white."""
    mag = np.abs(image).astype(np.float32)
    top = float(vmax if vmax is not None else np.percentile(mag, 99.5)) or 1.0
    return (np.clip(mag / top, 0, 1) * 255).astype(np.uint8)


def image_grid(
    rows: list[list[np.ndarray]], labels: list[str], path: str | Path, vmax: list[float] | None = None
) -> Path:
    """Save a grid (one row per slice, one column per label) as PNG; each row shares a window."""
    if not rows:
        raise ValueError("nothing to draw")
    ny, nx = rows[0][0].shape
    grid = Image.new("L", (nx * len(labels), _LABEL_HEIGHT + ny * len(rows)), 0)
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        draw.text((c * nx + 3, 1), label, fill=255)
    for r, row in enumerate(rows):
        top = vmax[r] if vmax else float(np.percentile(np.abs(row[0]), 99.5))
        for c, image in enumerate(row):
            tile = Image.fromarray(to_uint8(image, top))
            grid.paste(tile, (c * nx, _LABEL_HEIGHT + r * ny))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
