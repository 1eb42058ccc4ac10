"""BART compressed sensing (CS-Wavelet, CS-TV) behind the one reconstructor interface.

Per slice (never ``pics -L``, which gave wrong results with BART 0.8.00):

1. Normalisation: k-space is divided by ``scale`` = the 99th percentile of the
   root-sum-of-squares zero-filled image ``rss(F^H y)`` (for one coil that is
   ``|zero-filled|``, RGANCS's normalisation). BART's own scaling is switched
   off (``pics -w 1``), so ``lam`` always refers to this normalisation. The
   image is multiplied by ``scale`` afterwards; ``meta["normalisation"]``
   records it.
2. Coil maps: ``Problem.coil_maps()``, the maps every method uses: the
   Problem's own, else ESPIRiT (``bart ecalib -m 1 -c 0`` when BART is present,
   see ``recon_plugin.coils.espirit_maps``) calibrated on the fully sampled
   centre, estimated once per problem; one coil: ones.
3. ``bart pics -w 1 -p mask -R W:3:0:lam -i iters`` (FISTA; ``-i`` = FISTA
   iterations) or ``-R T:3:0:lam -i iters`` (ADMM, BART's only choice for TV;
   here ``-i`` caps the *total* inner CG iterations, not the ADMM iterations:
   ``-i 300`` ran 215 ADMM iterations on a single-coil and 264 on a 4-coil
   256x256 brain slice; ``-u`` (rho) stays at BART's 0.5).
   The mask is always passed (``-p``): BART otherwise takes the sampling
   pattern from the non-zero k-space values, which drops samples that are 0.

Layout and centring (measured with BART 0.8.00, checked in tests/test_bart.py):
our k-space [coils, ny, nx] (C order) is BART's (x=nx, y=ny, z=1, coils)
(column-major), the same bytes. ``bart fft -u`` and ``ecalib`` use our centred
FFT convention (``fft2c``) for every size, but ``pics``' internal FFT does not:
its image is ours circularly shifted by +1 pixel along each odd-sized axis and
multiplied by a global phase (-1 per axis of size 2 mod 4; see
``pics_modulation``). Multiplying the k-space sent to ``pics`` by
``pics_modulation`` (a linear phase ramp on odd axes and a constant) removes
both, so BART's images align pixel-exactly, phase included, with ``ifft2c``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch

from .. import bart
from ..bart import from_bart, to_bart
from ..errors import BartTimeoutError, InvalidInputError
from ..physics import SenseOperator, ifft2c
from ..problem import Problem
from .base import Reconstructor, Result, relative_residual

log = logging.getLogger(__name__)

Regulariser = Literal["wavelet", "tv"]

#: Method names by regulariser.
NAMES: dict[str, str] = {"wavelet": "cs_wavelet", "tv": "cs_tv"}

#: Lambdas tuned on real brain data (docs/bart_tuning.md: 8 single-coil SIAT slices, 3 multi-coil
#: 4/8-channel slices) by (regulariser, "single" | "multi" coil), for the normalisation above, a 5x
#: radial view-ordered mask and 300 iterations. Single and multi coil differ up to 30x (wavelet).
DEFAULT_LAMBDAS: dict[tuple[str, str], float] = {
    ("wavelet", "single"): 1e-4,
    ("wavelet", "multi"): 3e-3,
    ("tv", "single"): 5.6e-3,
    ("tv", "multi"): 1.7e-3,
}

#: Percentile of the root-sum-of-squares zero-filled image the k-space is divided by.
NORMALISATION_PERCENTILE = 99.0

#: BART bitmask of the transformed dims: 0 and 1 (x and y of the slice).
SPATIAL_FLAGS = 3


def pics_modulation(n: int) -> np.ndarray:
    """k-space factor [n] along one axis that aligns ``pics``' image grid and phase with ``fft2c``'s.

    Measured on BART 0.8.00 (n = 16..39, every residue mod 4): ``pics`` returns
    ``g_n * roll(x, s_n)`` for the k-space ``fft2c(x)``, with ``s_n = 1`` for odd
    ``n`` (else 0) and the global phase ``g_n`` = 1 (n % 4 == 0), -1 (n % 4 == 2),
    ``exp(i (pi/2 + pi/(2n)))`` (n % 4 == 3), ``exp(i (-pi/2 + pi/(2n)))`` (n % 4 == 1).
    The factor ``conj(g_n) * exp(2 pi i s_n (m - n//2) / n)`` undoes both.
    """
    m = np.arange(n) - n // 2
    if n % 2 == 0:
        return np.full(n, 1.0 if n % 4 == 0 else -1.0, dtype=np.complex64)
    g = (np.pi / 2 if n % 4 == 3 else -np.pi / 2) + np.pi / (2 * n)
    return np.exp(1j * (2 * np.pi * m / n - g)).astype(np.complex64)


def normalisation_scale(kspace: np.ndarray, percentile: float = NORMALISATION_PERCENTILE) -> float:
    """The given percentile of the root-sum-of-squares zero-filled image (never zero)."""
    mag = np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(0))
    scale = float(np.percentile(mag, percentile))
    if not scale > 0:
        scale = float(mag.max())
    return scale if scale > 0 else 1.0


class BartCS(Reconstructor):
    """CS-Wavelet or CS-TV with BART's ``pics``, one single-threaded BART process per slice.

    ``lam``: regularisation weight for the normalised k-space; None picks
    :data:`DEFAULT_LAMBDAS` by regulariser and coil count. ``iterations``: ``-i``
    (300 as in the paper; see the module docstring for its meaning with TV).
    ``time_limit``: seconds per slice (maps and ``pics``) before a
    BartTimeoutError. ``workers``: BART processes run in parallel over slices.
    ``threads``: OMP_NUM_THREADS per process. ``extra_args``: further ``pics``
    options (e.g. ``["-u", "1"]`` for the ADMM rho). Raises BartNotFoundError at
    construction when BART is missing.
    """

    def __init__(
        self,
        regulariser: Regulariser = "wavelet",
        lam: float | None = None,
        iterations: int = 300,
        time_limit: float = 60.0,
        workers: int = 2,
        threads: int = 1,
        extra_args: Sequence[str] = (),
    ) -> None:
        if regulariser not in NAMES:
            raise InvalidInputError(f"unknown regulariser {regulariser!r}; choose 'wavelet' or 'tv'")
        if lam is not None and not (math.isfinite(lam) and lam >= 0):
            raise InvalidInputError(f"lambda must be a finite number >= 0, got {lam!r}")
        if int(iterations) < 1:
            raise InvalidInputError(f"iterations must be >= 1, got {iterations!r}")
        if not time_limit > 0:
            raise InvalidInputError(f"time_limit must be > 0 seconds, got {time_limit!r}")
        self.regulariser: Regulariser = regulariser
        self.name = NAMES[regulariser]
        self.lam = None if lam is None else float(lam)
        self.iterations = int(iterations)
        self.time_limit = float(time_limit)
        self.workers = max(1, int(workers))
        self.threads = max(1, int(threads))
        self.extra_args = [str(a) for a in extra_args]
        self.binary = bart.find_bart()
        self.version = bart.bart_version()

    def lambda_for(self, problem: Problem) -> float:
        """The lambda used for ``problem``: ``lam``, else the tuned default for its coil count."""
        if self.lam is not None:
            return self.lam
        return DEFAULT_LAMBDAS[(self.regulariser, "single" if problem.coils == 1 else "multi")]

    def reconstruct_batch(self, problems: list[Problem]) -> list[Result]:
        if self.workers == 1 or len(problems) <= 1:
            return [self._reconstruct_one(p) for p in problems]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(problems))) as pool:
            futures = [pool.submit(self._reconstruct_one, p) for p in problems]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def coil_maps(self, problem: Problem) -> tuple[np.ndarray, str]:
        """Maps [coils, ny, nx] for ``problem`` and where they came from ("given", "ones" or "espirit").

        The same maps every other method gets: ``Problem.coil_maps`` (ESPIRiT, by BART's ecalib
        when BART is present), estimated once per problem.
        """
        if problem.coils == 1 and problem.maps is None:
            return np.ones((1, *problem.shape), dtype=np.complex64), "ones"
        maps = problem.coil_maps()
        return maps, problem.maps_source  # type: ignore[return-value]

    def _reconstruct_one(self, problem: Problem) -> Result:
        start = time.perf_counter()
        ny, nx = problem.shape
        lam = self.lambda_for(problem)
        scale = normalisation_scale(problem.kspace)
        y = problem.kspace / scale
        maps, source = self.coil_maps(problem)
        remaining = self.time_limit - (time.perf_counter() - start)
        if remaining <= 0:
            raise BartTimeoutError(
                f"coil maps alone took more than the {self.time_limit:g} s time limit per slice; raise time_limit"
            )
        y_pics = y * pics_modulation(ny)[:, None] * pics_modulation(nx)[None, :]
        kind = "W" if self.regulariser == "wavelet" else "T"
        command: list[str | int | float] = [
            "pics", "-w", 1, "-p", "pattern", "-R", f"{kind}:{SPATIAL_FLAGS}:0:{lam:g}", "-i", self.iterations,
            *self.extra_args, "kspace", "sens", "image",
        ]  # fmt: skip
        (image,) = bart.run_arrays(
            command,
            {"kspace": to_bart(y_pics), "sens": to_bart(maps), "pattern": to_bart(problem.mask.astype(np.complex64))},
            ["image"],
            remaining,
            threads=self.threads,
            binary=self.binary,
        )
        x = (from_bart(image, ny, nx)[0] * scale).astype(np.complex64)
        op = SenseOperator(torch.from_numpy(problem.mask), torch.from_numpy(maps))
        residual = relative_residual(op, torch.from_numpy(x)[None], torch.from_numpy(problem.kspace)[None])[0]
        meta: dict[str, Any] = {
            "method": self.name,
            "seconds": time.perf_counter() - start,
            "dc_residual": residual,
            "acceleration": problem.acceleration,
            "lambda": lam,
            "iterations": self.iterations,
            "algorithm": "fista" if self.regulariser == "wavelet" else "admm",
            "normalisation": {
                "kind": "percentile",
                "of": "rss zero-filled",
                "percentile": NORMALISATION_PERCENTILE,
                "scale": scale,
            },
            "maps": source,
            "bart_version": self.version,
            **problem.meta,
        }
        log.debug("%s slice %s: %.2f s, dc residual %.3g", self.name, problem.meta, meta["seconds"], residual)
        return Result(image=x, meta=meta)
