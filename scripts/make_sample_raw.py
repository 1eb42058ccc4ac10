#!/usr/bin/env python
"""Write the simulated ISMRMRD raw sample files into sample_data/raw/.

    python scripts/make_sample_raw.py                 # all three files
    python scripts/make_sample_raw.py --only 2d       # without mricron-data: 2D file only
    python scripts/make_sample_raw.py --colin /path/to/ch2.nii.gz

The 3D files need the Colin27 template from the Debian package mricron-data
(``apt-get install mricron-data``); the 2D file uses the bundled
sample_data/colin27_t1_axial.npz. Everything is seeded: re-running writes the same files.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from recon_plugin.errors import ReconError
from recon_plugin.metrics import snr_db
from recon_plugin.sample_data import COLIN_FILE
from recon_plugin.sample_raw import (
    DEBIAN_COLIN,
    RawScan,
    combine_fully_sampled,
    make_brain2d,
    make_brain3d,
    write_ismrmrd,
)

REPO = Path(__file__).resolve().parents[1]


def _summary(path: Path, scan: RawScan) -> str:
    sim = scan.simulation
    g = sim.geometry
    nx, ny, nz = g.recon_matrix
    n_noise = sim.noise.shape[0]
    n_data = len(scan.acquisitions) - n_noise
    snr = snr_db(sim.truth, combine_fully_sampled(sim.kspace, sim.noise, sim.maps, g.dims, g.oversampling))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    shape = f"{g.encoded_nx}x{ny}x{nz}" if g.dims == 3 else f"{g.encoded_nx}x{ny} x {g.slices} slices"
    lines = [
        f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}",
        f"  {g.dims}D, encoded {shape} (recon x {nx}), voxel {g.voxel_mm} mm, {sim.coils} coils",
        f"  {n_noise} noise + {n_data} imaging readouts, {path.stat().st_size / 1e6:.2f} MB, sha256 {digest}",
        f"  reference SNR {snr:.2f} dB (whitened, fully sampled SENSE combination vs. truth"
        + (", of the data this scan was drawn from)" if scan.mask is not None else ")"),
    ]
    if scan.mask is not None:
        lines.append(f"  mask {scan.mask.family}, acceleration {scan.mask.acceleration:.3f}, seed {scan.mask.seed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--colin", type=Path, default=DEBIAN_COLIN, help="Colin27 NIfTI (ch2.nii.gz) for the 3D files")
    parser.add_argument("--npz", type=Path, default=COLIN_FILE, help="bundled axial slices for the 2D file")
    parser.add_argument("--out", type=Path, default=REPO / "sample_data" / "raw", help="output folder")
    parser.add_argument("--only", choices=("all", "3d", "2d"), default="all", help="which files to write")
    args = parser.parse_args(argv)

    try:
        if args.only in ("all", "3d"):
            if not args.colin.is_file():
                print(
                    f"error: {args.colin} not found; install mricron-data (apt-get install mricron-data), "
                    "pass --colin PATH, or use --only 2d",
                    file=sys.stderr,
                )
                return 2
            full, radial = make_brain3d(args.colin)
            for name, scan in (("brain3d_fully_sampled.h5", full), ("brain3d_radial5x.h5", radial)):
                path = write_ismrmrd(args.out / name, scan.header, scan.acquisitions)
                print(_summary(path, scan))
        if args.only in ("all", "2d"):
            scan = make_brain2d(args.npz)
            path = write_ismrmrd(args.out / "brain2d_multislice.h5", scan.header, scan.acquisitions)
            print(_summary(path, scan))
    except ReconError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
