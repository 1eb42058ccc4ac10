"""What the command lines hand to people: consoles that never cut a table, log levels, readable output files.

Every ``recon-plugin`` and ``recon-train`` command prints through :func:`make_console`. On a terminal it
behaves like rich's own console; when the output is piped or logged it renders at :data:`PIPE_WIDTH` columns
without wrapping text, so tables keep full method names and numbers (rich would otherwise cut them at 80).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console, ConsoleDimensions

#: Columns when the output is not a terminal: wide enough that no table is squeezed.
PIPE_WIDTH = 1000
#: The log format of both command lines (on stderr).
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class OutputConsole(Console):
    """A rich console whose width is :data:`PIPE_WIDTH` whenever it is not writing to a terminal (``COLUMNS``,
    which rich would also apply to a pipe, counts on a terminal only); an explicit ``width`` always wins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fixed_width = kwargs.get("width") is not None

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size on a terminal; :data:`PIPE_WIDTH` columns otherwise (unless a width was given)."""
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        if self._fixed_width or self.is_terminal:
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]
        self._fixed_width = True

    @property
    def width(self) -> int:
        """Columns: see :attr:`size`."""
        return self.size.width

    @width.setter
    def width(self, width: int) -> None:
        Console.width.fset(self, width)  # type: ignore[attr-defined]
        self._fixed_width = True


def make_console(*, stderr: bool = False, **kwargs: Any) -> Console:
    """The console a command prints with (``stderr=True`` for error lines): see :class:`OutputConsole`."""
    return OutputConsole(stderr=stderr, **kwargs)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def verbosity_level(verbose: int) -> int:
    """``-v`` count to a log level: none WARNING, one INFO, two or more DEBUG."""
    return logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG


def configure_logging(verbose: int = 0, fmt: str = LOG_FORMAT) -> None:
    """Log at the level ``verbose`` asks for (see :func:`verbosity_level`), to stderr in ``fmt``.

    The stderr handler is installed (or an earlier call's replaced) only where no other handler is on the root
    logger: an application or test harness that embeds the command keeps its own and just gets the level.
    """
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StderrHandler)]
    if len(ours) == len(root.handlers):
        for handler in ours:
            root.removeHandler(handler)
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    root.setLevel(verbosity_level(verbose))


def one_line(text: str, limit: int | None = None) -> str:
    """Whitespace (newlines included) collapsed to single spaces; cut at ``limit`` characters when given."""
    flat = " ".join(text.split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 3] + "..."


def error_line(exc: BaseException) -> str:
    """``ErrorName: message`` on one line (see :func:`one_line`): how a command ends."""
    return f"{type(exc).__name__}: {one_line(str(exc))}"


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0666 less the process umask (0644 under umask 022)."""
    return 0o666 & ~_umask()


def make_readable(path: str | Path) -> Path:
    """Give a file written through a private temporary file (mode 0600) the usual mode, so that others (a
    Gadgetron service account, a PACS exporter) can read it as they could any file the user writes."""
    os.chmod(path, default_file_mode())
    return Path(path)
