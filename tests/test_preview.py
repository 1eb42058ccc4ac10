"""The replay comparison figure: large enough to read, labelled with the methods' SNR / SSIM, each tile stamped."""

from __future__ import annotations

import ismrmrd
import numpy as np
from PIL import Image

from recon_plugin.preview import series_comparison


def series(method: str, values: list[float], snr: float | None, shape=(40, 20)) -> list[ismrmrd.Image]:
    out = []
    for index, value in enumerate(values):
        image = ismrmrd.Image.from_array(np.full((1, 1, *shape), value, np.float32)[0, 0], image_index=index)
        image.field_of_view[:] = (shape[1] * 3.0, shape[0] * 3.0, 3.0)
        meta = ismrmrd.Meta({"Method": method})
        if snr is not None:
            meta["SNR_dB"], meta["SSIM"] = str(snr + index), "0.9"
        image.attribute_string = meta.serialize()
        out.append(image)
    return out


def test_comparison_is_enlarged_labelled_and_keeps_every_method(tmp_path):
    data = {
        2: series("rgancs", [0.5] * 10, 20.0),
        3: series("cs_wavelet", [0.25] * 10, 18.0),
        9: series("reference", [1.0] * 10, None),
    }
    path = series_comparison(data, tmp_path / "c.png", title="exam through protocol")
    with Image.open(path) as figure:
        pixels = np.asarray(figure)
    zoom = -(-256 // 40)  # 40 x 20 tiles enlarged to at least 256 on the longer side
    th, tw = 40 * zoom, 20 * zoom
    assert th >= 256 and pixels.shape[1] >= max(3 * tw, 720)
    rows = 4  # at most 4 of the 10 indices, from the middle of the volume
    top = pixels.shape[0] - rows * th
    assert top > 60 and pixels[:top].max() == 255  # a header block with text in it
    # tiles: the window is the reference's, so the reference is white and the others grey, away from the stamp
    assert pixels[top + 5, 2 * tw + tw // 2] == 255
    assert abs(int(pixels[top + 5, tw // 2]) - 127) <= 1  # rgancs: half the reference
    assert abs(int(pixels[top + 5, tw + tw // 2]) - 63) <= 1  # cs_wavelet: a quarter
    stamp = pixels[top + th - 15 : top + th - 3, 0 : tw // 2]
    assert stamp.max() == 255 and stamp.min() == 0  # a dark label box with text on each tile


def test_comparison_without_metrics_still_draws(tmp_path):
    data = {1: series("zero_filled", [0.3, 0.4], None), 2: series("rgancs", [0.3, 0.4], None)}
    with Image.open(series_comparison(data, tmp_path / "c.png")) as figure:
        assert figure.size[0] >= 720 and figure.size[1] > 2 * 256
