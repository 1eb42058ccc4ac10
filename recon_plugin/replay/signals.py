"""Stop replay's gadget processes when replay itself is told to stop (SIGTERM, SIGHUP), not only on Ctrl-C.

Python's default action for SIGTERM and SIGHUP ends the process without running ``finally`` blocks or
``atexit`` handlers, so the ``python -m gadgetron`` children would outlive it. While :func:`stop_children_on_signals`
is active, these signals raise :class:`ReplayTerminated` in the main thread instead; the replay's cleanup then
stops every gadget (:func:`~recon_plugin.replay.external.stop_all_gadgets`) before the exception propagates.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from .external import stop_all_gadgets

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class ReplayTerminated(SystemExit):
    """Replay received SIGTERM or SIGHUP; the exit status is 128 + the signal number, as a shell reports it."""


@contextlib.contextmanager
def stop_children_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM/SIGHUP stop all gadget processes and raise :class:`ReplayTerminated`.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_all_gadgets()
        raise ReplayTerminated(128 + signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
