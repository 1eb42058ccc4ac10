"""How much memory one exam's k-space buffers may take: what this machine can give, and what its operator allows.

A header declares the matrix and the channels before any data arrive, so the buffers an exam needs are known
up front and refused by name (:class:`~recon_plugin.errors.MemoryLimitError`) instead of failing later in
``MemoryError``. The limit is the smallest of

* :data:`MAX_BUFFER_BYTES` (16 GiB), or the operator's setting: ``--max-buffer`` of ``serve`` and ``replay``,
  the environment variable :data:`MAX_BUFFER_ENV` (``RECON_MAX_BUFFER``, e.g. ``4G``) for gadgets Gadgetron
  starts;
* :data:`AVAILABLE_FRACTION` (a quarter) of the memory available now (psutil's ``available``, and the
  cgroup's limit minus its usage where one applies): the buffers are copied and transformed while the
  slices are reconstructed, so they may not take all of it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import psutil

#: The slice buffers of one exam (channels x encoded matrix, complex64) never exceed this many bytes.
MAX_BUFFER_BYTES = 16 * 2**30
#: Share of the available memory the buffers may take: reconstructing them needs about three more copies
#: (oversampling removal, the masked k-space, the reference and the network's tensors).
AVAILABLE_FRACTION = 0.25
#: Environment variable with the operator's cap, in bytes or with a binary unit (``512M``, ``4G``).
MAX_BUFFER_ENV = "RECON_MAX_BUFFER"

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_CGROUP = Path("/sys/fs/cgroup")


def parse_size(text: str) -> int:
    """``1000000``, ``512K``, ``64M``, ``8G``, ``8GiB`` -> bytes (at least 1).

    Raises:
        ValueError: not a size.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size: give bytes, e.g. 8G, 512M or 1000000")
    value = float(match[1]) * _UNITS[match[2].lower()]
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a size: give bytes, e.g. 8G, 512M or 1000000")
    number = int(value)
    if number < 1:
        raise ValueError(f"{text!r} is not a size: give at least 1 byte")
    return number


def format_size(nbytes: float) -> str:
    """``8.00 GiB``, ``512 MiB``, ``64.0 KiB``, ``100 B``: binary units, about three significant digits."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.3g} {unit}" if nbytes / size < 100 else f"{nbytes / size:.0f} {unit}"
    return f"{nbytes:.0f} B"


def available_bytes() -> int:
    """Memory this process could still get: psutil's ``available``, lowered by a cgroup v2 limit if any."""
    available = int(psutil.virtual_memory().available)
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((_CGROUP / "memory.current").read_text())
            available = min(available, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return available


def operator_cap() -> int:
    """The operator's cap (``RECON_MAX_BUFFER``), else :data:`MAX_BUFFER_BYTES`.

    Raises:
        ValueError: the variable is set but is not a size.
    """
    text = os.environ.get(MAX_BUFFER_ENV, "").strip()
    if not text:
        return MAX_BUFFER_BYTES
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"{MAX_BUFFER_ENV}={text!r}: {exc}") from None


def buffer_limit() -> tuple[int, str]:
    """(bytes the buffers of one exam may take now, what set that limit: for messages)."""
    cap = operator_cap()
    share = int(available_bytes() * AVAILABLE_FRACTION)
    if share < cap:
        available = format_size(share / AVAILABLE_FRACTION)
        return share, f"{AVAILABLE_FRACTION:.0%} of the {available} this machine has available"
    source = "the operator's cap (--max-buffer / RECON_MAX_BUFFER)" if os.environ.get(MAX_BUFFER_ENV) else "the cap"
    return cap, f"{source} of {format_size(cap)}"
