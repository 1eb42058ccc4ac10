"""Validation on real multi-coil k-space during training (``[data] real_val_path``).

Simulated validation can improve while real scans get worse (measured: a fine-tune that raised simulated
validation by 0.3 dB lost 0.6 dB on real brains), so a long run is judged here. Each real slice is
undersampled with a 5x radial view-ordered mask and with uniform R=3 + 24 ACS lines, with mask seeds
(``REAL_VAL_SEED`` + i) that differ from ``recon-train eval``'s; the maps are ESPIRiT from each undersampled
slice, as on the scanner, and built once.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from recon_plugin.errors import ReconError
from recon_plugin.evaluation import Case, multicoil_cases
from recon_plugin.metrics import snr_db, ssim
from recon_plugin.reconstructors.base import batch_operator
from recon_plugin.reconstructors.rgancs import robust_scale

from .config import DataConfig
from .errors import TrainingConfigError

#: The real fully sampled brains of the shared data folder.
REAL_BRAINS = (
    "marcsous_head_8ch",
    "ugmpi_GE_brain_4ch",
    "ugmpi_MPRAGE_brain_4ch",
    "jiawang_brain_8ch",
    "loraks_MPRAGE_brain_4ch",
)
#: (family, acceleration, calib) of the validation masks.
REAL_VAL_MASKS = (("radial", 5.0, 24), ("uniform", 3.0, 24))
REAL_VAL_SEED = 1000


def real_validation_cases(d: DataConfig) -> list[Case]:
    """The cases of ``[data] real_val_path`` / ``real_val_names`` (every name x every mask of REAL_VAL_MASKS), built
    by :func:`recon_plugin.evaluation.multicoil_cases` as ``recon-train eval`` builds its real slices."""
    folder = Path(d.real_val_path)
    root = folder.parent if folder.name == "multicoil_kspace" else folder
    names = tuple(d.real_val_names or REAL_BRAINS)
    cases = []
    for family, acc, calib in REAL_VAL_MASKS:
        try:
            found = multicoil_cases(root, names, acceleration=acc, seed=REAL_VAL_SEED, calib=calib, family=family)
        except (OSError, ValueError, ReconError) as exc:
            raise TrainingConfigError(f"[data].real_val_path: {root}: {type(exc).__name__}: {exc}") from exc
        for case in found:
            case.name = f"{case.name}/{family}{acc:g}"
        cases += found
    return cases


@torch.no_grad()
def validate_real(
    model: torch.nn.Module, cases: list[Case], percentile: float, device: torch.device, cg_iterations: int = 0
) -> dict[str, float]:
    """Mean SNR / SSIM of ``model`` on the cases (normalised and scaled back exactly as ``RGANCS`` does), with
    ``cg_iterations`` CG steps per copy when > 0 (the model's own setting is restored afterwards)."""
    was_training, config = model.training, model.config
    model.eval()
    if cg_iterations:
        model.config = replace(config, cg_iterations=cg_iterations)
    snrs, ssims = [], []
    try:
        for case in cases:
            op, y = batch_operator([case.problem], device)
            scale = robust_scale(op.adjoint(y), percentile)
            x, _ = model(y / scale[:, None, None, None], op)
            image = (x * scale[:, None, None])[0].cpu().numpy()
            snrs.append(snr_db(case.reference, image))
            ssims.append(ssim(case.reference, image))
    finally:
        model.config = config
        model.train(was_training)
    return {"real_snr_db": float(np.mean(snrs)), "real_ssim": float(np.mean(ssims))}
