"""PNG previews: labelled grids of magnitude images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

_LABEL_HEIGHT = 14


def to_uint8(image: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Magnitude scaled to 0..255 with ``vmax`` (default: 99.5th percentile) as white."""
    mag = np.abs(image).astype(np.float32)
    top = float(vmax if vmax is not None else np.percentile(mag, 99.5)) or 1.0
    return (np.clip(mag / top, 0, 1) * 255).astype(np.uint8)


def image_grid(
    rows: list[list[np.ndarray]],
    labels: list[str],
    path: str | Path,
    vmax: list[float] | None = None,
    min_tile: int = 160,
) -> Path:
    """Save a grid (one row per slice, one column per label) as PNG; each row shares a window.

    Tiles smaller than ``min_tile`` pixels are enlarged by an integer factor (nearest neighbour).
    """
    if not rows:
        raise ValueError("nothing to draw")
    zoom = max(1, min_tile // max(rows[0][0].shape))  # small matrices are enlarged to stay legible
    ny, nx = (n * zoom for n in rows[0][0].shape)
    grid = Image.new("L", (nx * len(labels), _LABEL_HEIGHT + ny * len(rows)), 0)
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(labels):
        draw.text((c * nx + 3, 1), label, fill=255)
    for r, row in enumerate(rows):
        top = vmax[r] if vmax else float(np.percentile(np.abs(row[0]), 99.5))
        for c, image in enumerate(row):
            tile = Image.fromarray(to_uint8(image, top))
            if zoom > 1:
                tile = tile.resize((nx, ny), Image.NEAREST)
            grid.paste(tile, (c * nx, _LABEL_HEIGHT + r * ny))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def series_comparison(images_by_series: dict[int, list[Any]], path: str | Path, max_rows: int = 6) -> Path:
    """One PNG comparing series side by side: a column per series (labelled by its Method meta),
    a row per image index (at most ``max_rows``, spread over the middle of a volume); each row shares
    the reference's window (or the first series')."""
    series = sorted(images_by_series)
    by_index = [{int(im.image_index): im for im in images_by_series[s]} for s in series]
    common = sorted(set.intersection(*(set(d) for d in by_index)))
    if not common:
        raise ValueError("the series share no image index; nothing to compare")
    if len(common) > max_rows:  # skip the edges of a volume, where there is little to see
        lo, hi = int(0.15 * len(common)), int(np.ceil(0.85 * len(common))) - 1
    else:
        lo, hi = 0, len(common) - 1
    picks = list(dict.fromkeys(common[round(i)] for i in np.linspace(lo, hi, min(max_rows, len(common)))))
    labels = []
    for s, d in zip(series, by_index, strict=True):
        method = d[common[0]].meta.get("Method", f"series {s}")
        labels.append(str(method))
    rows = [[np.abs(d[i].data[0, 0]) for d in by_index] for i in picks]
    ref_col = labels.index("reference") if "reference" in labels else 0
    vmax = [float(np.percentile(row[ref_col], 99.5)) or 1.0 for row in rows]
    return image_grid(rows, labels, path, vmax=vmax)
