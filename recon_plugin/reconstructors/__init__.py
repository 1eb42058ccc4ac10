"""Reconstructors behind one interface: ZeroFilled, RGANCS (BART CS joins later)."""

from .base import Reconstructor, Result, resolve_device
from .rgancs import RGANCS
from .zero_filled import ZeroFilled

__all__ = ["RGANCS", "Reconstructor", "Result", "ZeroFilled", "resolve_device"]
