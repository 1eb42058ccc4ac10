"""The torch-free CPU feature probe behind the device-class default bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from recon_plugin import cpu_features


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_features.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # ARM's name for the line
    assert cpu_features.cpu_flags(info) == {"fp", "asimd", "bf16"}
    info.write_text("processor\t: 0\n")
    assert cpu_features.cpu_flags(info) == frozenset()
    assert cpu_features.cpu_flags(tmp_path / "absent") is None


@pytest.mark.parametrize(
    ("flags", "native"),
    [("avx2 avx512f avx512_bf16", True), ("avx2 amx_tile amx_bf16", True), ("avx2 avx512f", False), ("avx2", False)],
)
def test_native_bf16_needs_a_bf16_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: str, native: bool
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"flags\t: fpu {flags}\n")
    read = cpu_features.cpu_flags
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: read(info))
    cpu_features.native_bf16.cache_clear()
    try:
        assert cpu_features.native_bf16() is native
    finally:
        cpu_features.native_bf16.cache_clear()


def test_the_flags_agree_with_torch_on_this_machine() -> None:
    """The CPU's flags (read without torch) and torch's own probe name the same CPU class here."""
    cpu_features.native_bf16.cache_clear()
    assert cpu_features.native_bf16() == cpu_features.torch_native_bf16()
