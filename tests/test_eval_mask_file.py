"""``recon-train eval --mask-file``: one given mask (an .npy, or one array of an .npz) for every slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ellipse_slices

from recon_plugin.errors import InvalidInputError, ShapeMismatchError
from training.evaluate import run_eval


@pytest.fixture
def images(tmp_path: Path) -> Path:
    path = tmp_path / "img.npy"
    np.save(path, ellipse_slices(3, 32).astype(np.complex64))
    return path


def test_mask_file_is_used_for_every_slice(tmp_path: Path, images: Path) -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((32, 32)) < 0.25
    mask[12:20, 12:20] = True
    np.savez(tmp_path / "masks.npz", a=mask.astype(np.uint8), b=np.ones((32, 32), np.uint8))
    report = run_eval(images, methods="zero_filled", mask_file=f"{tmp_path / 'masks.npz'}:a")
    assert report.settings["family"] == "file:masks:a"
    assert report.settings["acceleration_achieved"] == pytest.approx(mask.size / mask.sum())
    assert len({r["mask"] for r in report.rows}) == 1  # one digest: the same mask everywhere
    full = run_eval(images, methods="zero_filled", mask_file=f"{tmp_path / 'masks.npz'}:b")
    assert full.means[0]["snr_db"] > 60  # fully sampled: zero-filled is the image
    np.save(tmp_path / "m.npy", mask)
    assert (
        run_eval(images, methods="zero_filled", mask_file=tmp_path / "m.npy").rows[0]["mask"] == report.rows[0]["mask"]
    )


@pytest.mark.parametrize(
    ("spec", "array", "error", "match"),
    [
        ("nothing.npy", None, InvalidInputError, "no file"),
        ("masks.npz:c", "npz", InvalidInputError, "no array 'c'"),
        ("masks.npz", "npz", InvalidInputError, ":KEY"),
        ("wrong.npy", np.ones((16, 16), bool), ShapeMismatchError, "16x16"),
        ("zero.npy", np.zeros((32, 32), bool), InvalidInputError, "non-empty"),
        ("grey.npy", np.full((32, 32), 0.5), InvalidInputError, "0/1"),
    ],
)
def test_bad_mask_files_are_named(tmp_path: Path, images: Path, spec: str, array, error, match: str) -> None:
    if isinstance(array, np.ndarray):
        np.save(tmp_path / spec, array)
    elif array == "npz":
        np.savez(tmp_path / "masks.npz", a=np.ones((32, 32), np.uint8))
    with pytest.raises(error, match=match):
        run_eval(images, methods="zero_filled", mask_file=tmp_path / spec)
