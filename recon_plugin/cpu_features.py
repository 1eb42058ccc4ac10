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


def torch_native_bf16() -> bool:
    """torch's own probe of the same instructions (imports torch)."""
    import torch

    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return False


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles): the one answer behind both the
    gadgets' default bundle and the fast paths' choice. Read from the CPU's flags; where those cannot be read,
    torch's own probe answers."""
    flags = cpu_flags()
    if flags is not None:
        return bool(flags & NATIVE_BF16_FLAGS)
    return torch_native_bf16()
