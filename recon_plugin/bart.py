"""A small runner for the BART command-line tool (Berkeley Advanced Reconstruction Toolbox).

BART is called as a subprocess on .cfl/.hdr files in a private temporary
folder. The binary is ``$TOOLBOX_PATH/bart`` when ``TOOLBOX_PATH`` is set,
else ``bart`` on ``PATH``. The .hdr is text (``# Dimensions`` then the sizes);
the .cfl is raw complex64 in column-major (Fortran) order, BART's dims 0, 1,
2 being x, y, z and dim 3 the coils.

Every process gets glibc allocator settings (large mmap and trim thresholds:
about 30 % faster multi-coil TV, bit-identical output) and ``OMP_NUM_THREADS``
(default 1: several single-threaded processes in parallel give more
throughput than one multi-threaded one at these slice sizes).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BartFailedError, BartNotFoundError, BartTimeoutError, InvalidInputError

log = logging.getLogger(__name__)

#: BART's conventional number of dimensions in a .hdr file.
BART_DIMS = 16

#: glibc malloc settings put into BART's environment (see the module docstring).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}

INSTALL_HINT = (
    "install BART (Debian/Ubuntu: `apt-get install bart`, as root or with sudo) "
    "or set TOOLBOX_PATH to the folder holding the `bart` binary"
)

#: Most characters of BART's output kept in an error message.
_MAX_MESSAGE = 4000


def find_bart() -> Path:
    """Path of the BART binary: ``$TOOLBOX_PATH/bart`` when TOOLBOX_PATH is set, else ``bart`` on PATH."""
    toolbox = os.environ.get("TOOLBOX_PATH")
    if toolbox:
        candidate = Path(toolbox) / "bart"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
        raise BartNotFoundError(f"TOOLBOX_PATH={toolbox!r} holds no executable `bart`; {INSTALL_HINT}")
    found = shutil.which("bart")
    if found is None:
        raise BartNotFoundError(f"the BART command-line tool `bart` is not on PATH; {INSTALL_HINT}")
    return Path(found)


# --------------------------------------------------------------------------- .cfl / .hdr


def _stem(stem: str | Path) -> Path:
    stem = Path(stem)
    return stem.with_suffix("") if stem.suffix in (".cfl", ".hdr") else stem


def write_cfl(stem: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as ``stem.hdr`` + ``stem.cfl`` (complex64, column-major).

    ``array``'s axes are BART's dims 0, 1, 2, ... in that order (trailing
    dims of size 1 are added up to 16 in the header).
    """
    stem = _stem(stem)
    array = np.asarray(array)
    if array.ndim > BART_DIMS:
        raise InvalidInputError(f"BART arrays have at most {BART_DIMS} dims, got {array.ndim}")
    dims = list(array.shape) + [1] * (BART_DIMS - array.ndim)
    stem.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(str(d) for d in dims) + "\n")
    data = np.asarray(array, dtype=np.complex64).ravel(order="F")
    data.tofile(stem.with_suffix(".cfl"))


def read_cfl(stem: str | Path) -> np.ndarray:
    """Read ``stem.hdr`` + ``stem.cfl`` into a complex64 array, trailing size-1 dims dropped.

    The array's axes are BART's dims 0, 1, 2, ... (a scalar comes back with shape (1,)).
    """
    stem = _stem(stem)
    hdr = stem.with_suffix(".hdr")
    try:
        lines = hdr.read_text().splitlines()
    except OSError as exc:
        raise InvalidInputError(f"cannot read BART header {hdr}: {exc}") from exc
    dims: list[int] | None = None
    for i, line in enumerate(lines):
        if line.strip() == "# Dimensions" and i + 1 < len(lines):
            try:
                dims = [int(d) for d in lines[i + 1].split()]
            except ValueError:
                dims = None
            break
    if not dims or any(d < 0 for d in dims):
        raise InvalidInputError(f"BART header {hdr} has no valid '# Dimensions' line")
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    count = int(np.prod(dims))
    data = np.fromfile(stem.with_suffix(".cfl"), dtype=np.complex64)
    if data.size != count:
        raise InvalidInputError(
            f"BART file {stem}.cfl holds {data.size} values but its header says {dims} ({count} values)"
        )
    return data.reshape(dims, order="F")


# --------------------------------------------------------------------------- running


def bart_env(threads: int = 1) -> dict[str, str]:
    """Environment for a BART process: ours plus the glibc settings and OMP_NUM_THREADS."""
    env = dict(os.environ)
    env.update(MALLOC_ENV)
    env["OMP_NUM_THREADS"] = str(max(1, int(threads)))
    return env


def _text(data: bytes | str | None, limit: int | None = None) -> str:
    """Decoded output without BART's colour codes; the last ``limit`` characters when given."""
    if data is None:
        return ""
    text = data.decode(errors="replace") if isinstance(data, bytes) else data
    text = text.replace("\x1b[31m", "").replace("\x1b[0m", "").strip()
    return text if limit is None or len(text) <= limit else "..." + text[-limit:]


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run(
    args: Sequence[str | Path | int | float],
    cwd: str | Path,
    timeout: float | None = None,
    *,
    threads: int = 1,
    binary: Path | None = None,
) -> str:
    """Run ``bart *args`` in ``cwd`` and return its stdout.

    A non-zero exit is a BartFailedError carrying BART's stderr and stdout;
    running past ``timeout`` seconds is a BartTimeoutError (the process is killed).
    """
    exe = binary or find_bart()
    cmd = [str(exe), *(str(a) for a in args)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=str(cwd), env=bart_env(threads), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BartTimeoutError(
            f"`bart {' '.join(cmd[1:])}` did not finish within {timeout:g} s and was stopped; "
            "raise the time limit or lower the iterations"
        ) from exc
    except OSError as exc:
        raise BartNotFoundError(f"cannot start {exe}: {exc}; {INSTALL_HINT}") from exc
    log.debug("bart %s: %.3f s", " ".join(cmd[1:]), time.perf_counter() - start)
    if proc.returncode != 0:
        parts = (_text(proc.stderr, _MAX_MESSAGE), _text(proc.stdout, _MAX_MESSAGE))
        output = "\n".join(t for t in parts if t) or "(no output)"
        raise BartFailedError(f"`bart {' '.join(cmd[1:])}` failed ({_exit_status(proc.returncode)}): {output}")
    return _text(proc.stdout)


def run_arrays(
    command: Sequence[str | int | float],
    inputs: dict[str, np.ndarray],
    outputs: Sequence[str],
    timeout: float | None = None,
    *,
    threads: int = 1,
    binary: Path | None = None,
) -> list[np.ndarray]:
    """Write ``inputs`` (name -> array in BART's dim order), run ``bart *command``, read ``outputs``.

    Everything happens in a private temporary folder that is removed afterwards;
    ``command`` names the files by the same names as ``inputs`` and ``outputs``.
    """
    with tempfile.TemporaryDirectory(prefix="recon_bart_") as tmp:
        for name, array in inputs.items():
            write_cfl(Path(tmp) / name, array)
        run(command, tmp, timeout, threads=threads, binary=binary)
        return [read_cfl(Path(tmp) / name) for name in outputs]


def to_bart(array: np.ndarray) -> np.ndarray:
    """[coils, ny, nx] (or [ny, nx]) -> BART dims (x=nx, y=ny, z=1, coils) (same memory order)."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    return array.transpose(2, 1, 0)[:, :, None, :]


def from_bart(array: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """BART dims (x=nx, y=ny, 1, coils...) -> [coils, ny, nx]."""
    return np.asarray(array).reshape(nx, ny, -1, order="F").transpose(2, 1, 0)


@functools.cache
def _version(binary: str) -> str:
    with tempfile.TemporaryDirectory(prefix="recon_bart_") as tmp:
        return run(["version"], tmp, timeout=30, binary=Path(binary)).strip()


def bart_version() -> str:
    """BART's version string, e.g. ``v0.8.00`` (BartNotFoundError when BART is missing)."""
    return _version(str(find_bart()))
