"""What this CPU computes in hardware, read without importing torch (protocol checks must not wait for it)."""

from __future__ import annotations

import functools
from pathlib import Path

#: /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 instructions or AMX bf16 tiles.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The first processor's feature flags, or None where ``cpuinfo`` cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware; where the flags cannot be read, torch's own probe answers."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    from .reconstructors.fast_paths import cpu_has_native_bf16

    return cpu_has_native_bf16()
