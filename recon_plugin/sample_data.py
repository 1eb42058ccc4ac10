"""The bundled sample data: Colin27 T1 axial slices (BSD-3-Clause, see sample_data/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InvalidInputError

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"
COLIN_FILE = SAMPLE_DIR / "colin27_t1_axial.npz"
DEMO_BUNDLE = SAMPLE_DIR / "weights" / "rgancs_demo_cpu"
#: The paper's default architecture (10 copies x 1 block x 128 features, shared), trained on SIAT brain slices.
FULL_BUNDLE = SAMPLE_DIR / "weights" / "rgancs_10x1x128_siat"
MATRIX = (208, 176)
#: Slices kept out of training: the demo and the demo bundle's validation use them.
HELD_OUT = (4, 11, 18, 25)


def load_colin_slices(path: str | Path | None = None, matrix: tuple[int, int] = MATRIX) -> np.ndarray:
    """Axial slices [n, ny, nx] as float32 in [0, 1], centre-cropped to ``matrix``."""
    path = Path(path or COLIN_FILE)
    if not path.is_file():
        raise InvalidInputError(f"sample data {path} not found; run from a checkout of the project")
    slices = np.load(path)["slices"].astype(np.float32) / 255.0
    ny, nx = slices.shape[1:]
    oy, ox = (ny - matrix[0]) // 2, (nx - matrix[1]) // 2
    if oy < 0 or ox < 0:
        raise InvalidInputError(f"matrix {matrix} is larger than the sample slices {ny}x{nx}")
    return np.ascontiguousarray(slices[:, oy : oy + matrix[0], ox : ox + matrix[1]])


def split_held_out(slices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(training slices, held-out slices)."""
    held = np.zeros(len(slices), bool)
    held[list(HELD_OUT)] = True
    return slices[~held], slices[held]
