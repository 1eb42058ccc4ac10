"""glibc's allocator, set for the large tensors of a reconstruction or a training step.

glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and returns it with
``munmap`` when freed, so each such tensor costs one page fault per 4 KiB page, every time. The 128-feature
single-coil model's activations on a 256x256 slice are 32 MiB each: on a 2-core CPU this made half of the
process's time kernel time, and :func:`keep_freed_memory` (which serves large blocks from the heap and keeps
what is freed for the next slice) made the single-coil default 1.9x faster per 256x256 slice and a whole-slice
training step of it 1.4x faster (docs/performance.md, "The allocator"). Smaller tensors (the 32-feature
multi-coil default, 128x128 training crops) were under the threshold already and are unchanged.

The price is memory kept: the process holds its peak heap instead of returning it between slices. The
entry points that own their process call it (``recon-plugin``, ``recon-train``, the Gadgetron gadgets); code
that imports the package into its own process is left alone. The environment variable :data:`ENV`
(``RECON_KEEP_FREED_MEMORY=0``) turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: Set to 0 / false / no / off to leave glibc's allocator as it is.
ENV = "RECON_KEEP_FREED_MEMORY"
#: ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Freed memory at the top of the heap is returned to the system only beyond this (mallopt takes an int).
TRIM_THRESHOLD = 2**31 - 1

_applied = False


def _enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no", "off"}


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory in this process; True where it now holds.

    Does nothing (False) off Linux/glibc, where ``mallopt`` is missing or refuses, or when :data:`ENV` turns it
    off. Calling it again is harmless.
    """
    global _applied
    if _applied:
        return True
    if not _enabled():
        log.debug("%s is off: glibc's allocator left as it is", ENV)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1 or mallopt(M_MMAP_MAX, 0) != 1:
        log.debug("mallopt refused: glibc's allocator left as it is")
        return False
    _applied = True
    log.debug("glibc: large blocks from the heap, freed memory kept")
    return True
