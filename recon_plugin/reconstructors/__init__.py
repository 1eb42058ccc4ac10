"""Reconstructors behind one interface: ZeroFilled, RGANCS, BartCS (CS-Wavelet, CS-TV)."""

from .bart_cs import BartCS
from .base import Reconstructor, Result, resolve_device
from .coil_routed import CoilRoutedRGANCS
from .rgancs import RGANCS
from .zero_filled import ZeroFilled

__all__ = ["RGANCS", "BartCS", "CoilRoutedRGANCS", "Reconstructor", "Result", "ZeroFilled", "resolve_device"]
