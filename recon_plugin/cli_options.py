"""Checks of numeric command-line options, shared by the ``recon-plugin`` commands.

Each raises :class:`typer.BadParameter`, which typer prints as a one-line usage error naming the
option (exit status 2), never a traceback. Integer ranges use typer's own ``min=`` / ``max=``; the
callbacks here cover what those cannot: finite, strictly positive numbers and byte sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated

import typer

#: Port ranges: a server may ask for any free port (0); a client needs a real one.
SERVER_PORT = {"min": 0, "max": 65535}
CLIENT_PORT = {"min": 1, "max": 65535}


def positive_seconds(value: float | None) -> float | None:
    """A time limit: a finite number of seconds > 0 (None passes: "not given")."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a time limit: give a finite number of seconds > 0")
    return value


def acceleration_factor(value: float) -> float:
    """An undersampling factor: finite and >= 1 (1 = fully sampled)."""
    if not (math.isfinite(value) and value >= 1):
        raise typer.BadParameter(f"{value:g} is not an acceleration: give a finite number >= 1 (1 = fully sampled)")
    return value


def byte_size(text: str | int) -> int:
    """A size in bytes, ``1000000`` or with a binary unit: ``512K``, ``64M``, ``8G``, ``8GiB``, ``1T``; at least 1."""
    from .memory import parse_size

    if isinstance(text, int):
        if text < 1:
            raise typer.BadParameter(f"{text!r} is not a size: give at least 1 byte")
        return text
    try:
        return parse_size(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def model_choice(value: str | None) -> str | None:
    """The rgancs gadget's ``model`` property: ``auto``, ``accurate`` or ``fast`` (None passes: "not given")."""
    if value is None:
        return None
    import difflib

    from .gadget_settings import MODEL_CHOICES

    choice = value.strip().lower()
    if choice not in MODEL_CHOICES:
        close = difflib.get_close_matches(choice, MODEL_CHOICES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise typer.BadParameter(f"{value!r} is not a model{hint}: give one of {', '.join(MODEL_CHOICES)}")
    return choice


def root_callback(prog: str, doc: str) -> Callable[..., None]:
    """The app callback both command lines share: eager ``--version`` (``PROG VERSION (rgancs-recon-plugin)``) and
    ``-v/--verbose`` (counted: INFO, then DEBUG); register it with ``app.callback()(root_callback(...))``."""
    from . import __version__
    from .console import configure_logging

    def show_version(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {__version__} (rgancs-recon-plugin)")
            raise typer.Exit()

    def root(version: bool = False, verbose: int = 0) -> None:
        configure_logging(verbose)

    # Real objects, not strings: this module postpones annotations, and the callback is local.
    root.__annotations__ = {
        "version": Annotated[
            bool, typer.Option("--version", callback=show_version, is_eager=True, help="print the version and exit")
        ],
        "verbose": Annotated[
            int, typer.Option("--verbose", "-v", count=True, help="log progress (INFO); -vv: DEBUG too")
        ],
        "return": None,
    }
    root.__doc__ = doc
    return root
