"""PNG previews: labelled grids of magnitude images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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


def series_comparison(
    images_by_series: dict[int, list[Any]],
    path: str | Path,
    max_rows: int = 4,
    title: str = "",
    tile: int = 256,
) -> Path:
    """One labelled PNG comparing series side by side, for a reader who sees it without the run's output.

    A column per series, headed by its method (``Method`` meta) and its mean SNR / SSIM against the reference
    (``SNR_dB`` / ``SSIM`` meta, where the images carry them); a row per image index (at most ``max_rows``,
    spread over the middle 70 % of a volume, where there is something to see), each tile stamped with its
    index and its own SNR / SSIM; rows share the reference's window (or the first series'). Under ``title``, a
    line says what a tile is: its matrix, pixel size and field of view from the image header. Tiles are
    enlarged by an integer factor until their longer side reaches about ``tile`` pixels.
    """
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
    methods = [str(_meta(d[common[0]], "Method") or f"series {s}") for s, d in zip(series, by_index, strict=True)]
    heads = []
    for method, d in zip(methods, by_index, strict=True):
        snr, ssim = _mean_meta(d.values(), "SNR_dB"), _mean_meta(d.values(), "SSIM")
        quality = "" if snr is None else f"{snr:.2f} dB" + ("" if ssim is None else f" / {ssim:.3f}")
        heads.append((method, "reference" if method == "reference" else quality or "no reference"))
    rows = [[np.abs(d[i].data[0, 0]) for d in by_index] for i in picks]
    ref_col = methods.index("reference") if "reference" in methods else 0
    vmax = [float(np.percentile(row[ref_col], 99.5)) or 1.0 for row in rows]

    ny, nx = rows[0][0].shape
    zoom = max(1, -(-tile // max(ny, nx)))
    th, tw = ny * zoom, nx * zoom
    big, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    lines = [text for text in (title, *_geometry(by_index[ref_col][picks[0]], len(common), len(picks))) if text]
    top = 8 + 22 * len(lines) + 44
    width = max(tw * len(series), 720)
    grid = Image.new("L", (width, top + th * len(rows)), 0)
    draw = ImageDraw.Draw(grid)
    for n, text in enumerate(lines):
        draw.text((6, 6 + 22 * n), text, fill=255, font=big if n == 0 else small)
    for c, (method, quality) in enumerate(heads):
        draw.text((c * tw + 4, top - 40), method, fill=255, font=big)
        draw.text((c * tw + 4, top - 20), quality, fill=200, font=small)
    for r, (row, index) in enumerate(zip(rows, picks, strict=True)):
        for c, image in enumerate(row):
            x0, y0 = c * tw, top + r * th
            tile_image = Image.fromarray(to_uint8(image, vmax[r]))
            grid.paste(tile_image.resize((tw, th), Image.NEAREST) if zoom > 1 else tile_image, (x0, y0))
            stamp = f"#{index}"
            snr, ssim = _meta(by_index[c][index], "SNR_dB"), _meta(by_index[c][index], "SSIM")
            if snr is not None and methods[c] != "reference":
                stamp += f"  {float(snr):.1f} dB" + ("" if ssim is None else f" {float(ssim):.3f}")
            draw.rectangle((x0, y0 + th - 18, x0 + draw.textlength(stamp, font=small) + 6, y0 + th), fill=0)
            draw.text((x0 + 3, y0 + th - 17), stamp, fill=255, font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def _meta(image: Any, name: str) -> Any:
    value = image.meta.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _mean_meta(images: Any, name: str) -> float | None:
    values = []
    for image in images:
        try:
            values.append(float(_meta(image, name)))
        except (TypeError, ValueError):
            continue
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _geometry(image: Any, count: int, shown: int) -> tuple[str, str]:
    """Two lines on what a tile is: matrix, pixel size and field of view from the ISMRMRD image header."""
    head = image.getHead()
    rows, cols = int(head.matrix_size[1]), int(head.matrix_size[0])
    fov_y, fov_x, fov_z = float(head.field_of_view[1]), float(head.field_of_view[0]), float(head.field_of_view[2])
    which = f"{shown} of {count} images (# = image index); dB / SSIM against the fully sampled reference"
    if not (rows and cols and fov_x and fov_y):
        return which, ""
    return (
        f"each tile: {rows} x {cols} pixels of {fov_y / rows:.2g} x {fov_x / cols:.2g} mm, field of view "
        f"{fov_y:.0f} x {fov_x:.0f} mm, {fov_z:.3g} mm thick",
        which,
    )
