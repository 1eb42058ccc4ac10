"""Tiny simulated scans shared by the raw-data, assembly and replay tests."""

from __future__ import annotations

import numpy as np

from recon_plugin import sample_raw as sr

# Tiny 3D scan: recon x 8 (16 readout samples), ky 32, kz 16, 4 coils.
NZ, NY, NXE = 16, 32, 16
VOXEL = (12.0, 8.0, 8.0)
CENTRE = (5.0, -10.0, 30.0)
#: Measured (seeds 1-7): 34.7-34.9 dB (3D) and 31.8-32.0 dB (2D) for these phantoms at noise_std 0.01.
MIN_SNR_DB = 30.0


def phantom(nz: int, ny: int, nxe: int) -> np.ndarray:
    """Nested ellipsoids that reach into the readout-oversampled region (as a head does)."""
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nxe), indexing="ij")
    img = 0.6 * ((x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 <= 1)
    img = img + 0.4 * (((x - 0.1) / 0.3) ** 2 + (y / 0.5) ** 2 + (z / 0.6) ** 2 <= 1)
    img = img - 0.3 * (((x + 0.15) / 0.12) ** 2 + ((y + 0.2) / 0.2) ** 2 + (z / 0.3) ** 2 <= 1)
    return img.astype(np.float32)


def tiny_3d(seed: int = 7) -> sr.SimulatedScan:
    return sr.simulate_3d(phantom(NZ, NY, NXE), VOXEL, CENTRE, coils=4, noise_std=0.01, seed=seed)


def tiny_2d(seed: int = 9) -> sr.SimulatedScan:
    mag = phantom(3, 24, 32)
    centres = [(0.0, 10.0, z) for z in (-20.0, 0.0, 20.0)]
    return sr.simulate_2d(mag, (6.0, 8.0, 4.0), centres, coils=4, noise_std=0.01, seed=seed)
