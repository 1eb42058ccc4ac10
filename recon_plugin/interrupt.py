"""Ctrl-C ends a command with one line, ``interrupted``, and exit status 130, at any moment.

Python turns SIGINT into ``KeyboardInterrupt``, which click reports as "Aborted!" (exit 1) and which, raised
inside a library or a worker's cleanup, leaves tracebacks and follow-on errors ("gadget ... failed: exit status
-9") on the terminal. While :func:`interrupt_as_exit` is active, SIGINT raises :class:`Interrupted` (a
``SystemExit``: ``finally`` blocks and replay's gadget cleanup still run, no traceback is printed) and silences
logging, so nothing the unwinding provokes reaches the terminal.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType

#: The exit status of an interrupted command, as a shell reports a SIGINT (128 + 2).
INTERRUPTED_EXIT = 130


class Interrupted(SystemExit):
    """The user pressed Ctrl-C (SIGINT)."""

    def __init__(self) -> None:
        super().__init__(INTERRUPTED_EXIT)


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """Within the block (main thread only), SIGINT raises :class:`Interrupted` and disables logging."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        logging.disable(logging.CRITICAL)  # the unwinding's warnings (stopped gadgets...) are not news
        raise Interrupted()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_interruptible(entry: Callable[[], object]) -> None:
    """Run a command line's ``entry``; Ctrl-C prints ``interrupted`` on stderr and exits 130."""
    try:
        with interrupt_as_exit():
            entry()
    except (Interrupted, KeyboardInterrupt):  # KeyboardInterrupt: a SIGINT before the handler was installed
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED_EXIT) from None
