"""Run a protocol's steps: external gadgets in sequence, parallel branches concurrently.

What is supported:

* A stream is a list of steps run one after another. Every message a step
  sends back (images, acquisitions, waveforms) is the input of the next step,
  as in Gadgetron; unlike Gadgetron, a step starts only when the previous one
  has finished (same result for gadgets that only react to their input, no
  pipelining across steps). A stream stops at its first failed step.
* ``<parallel>`` with ``AcquisitionFanout``: every branch (``<stream key=...>``)
  gets a copy of the acquisitions and runs in its own thread, with its own
  gadget process and port; other messages (waveforms, images) bypass the
  branches, as Gadgetron's typed fan-out does. ``UnorderedMerge`` joins the
  branches' outputs (in branch order here, then the bypassed messages). A
  failed branch does not stop or lose the others: every branch's run is kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import ismrmrd

from ..errors import ReconError
from .external import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ExternalRun,
    Message,
    attach_results,
    run_external,
    stop_all_gadgets,
)
from .protocol import ExternalStep, ParallelStep, Step

logger = logging.getLogger(__name__)


@dataclass
class ParallelRun:
    """What a ``<parallel>`` block did: one :class:`StreamRun` per branch key."""

    step: ParallelStep
    streams: dict[str, StreamRun] = field(default_factory=dict)
    bypassed: list[Message] = field(default_factory=list)
    failure: ReconError | None = None
    seconds: float = 0.0

    @property
    def outputs(self) -> list[Message]:
        """The merged outputs: every branch's outputs in branch order, then the bypassed messages."""
        merged = [m for stream in self.streams.values() for m in stream.outputs]
        return merged + self.bypassed

    @property
    def images(self) -> list[ismrmrd.Image]:
        return [m for m in self.outputs if isinstance(m, ismrmrd.Image)]

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_errors(self) -> None:
        """Raise the combined failure (with ``.images`` and ``.run``) if any branch failed."""
        if self.failure is not None:
            raise attach_results(self.failure, self.images, self)


StepRun = ExternalRun | ParallelRun


@dataclass
class StreamRun:
    """What a stream (a list of steps) did; ``runs`` has one entry per step that ran."""

    key: str | None
    runs: list[StepRun] = field(default_factory=list)

    @property
    def outputs(self) -> list[Message]:
        """Messages out of the last step that ran (for a failed stream: what the failing step sent)."""
        return self.runs[-1].outputs if self.runs else []

    @property
    def images(self) -> list[ismrmrd.Image]:
        return [m for m in self.outputs if isinstance(m, ismrmrd.Image)]

    @property
    def failure(self) -> ReconError | None:
        return next((r.failure for r in self.runs if r.failure is not None), None)

    @property
    def cancelled(self) -> bool:
        """The stream failed only because another gadget's error stopped it."""
        failed = next((r for r in self.runs if r.failure is not None), None)
        if isinstance(failed, ParallelRun):
            return all(s.cancelled for s in failed.streams.values() if s.failure is not None)
        return bool(failed is not None and failed.cancelled)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_errors(self) -> None:
        """Raise the stream's failure (with ``.images`` and ``.run``) if a step failed."""
        failure = self.failure
        if failure is not None:
            raise attach_results(failure, self.images, self)


@dataclass(frozen=True)
class RunOptions:
    """Settings shared by every gadget of a replay.

    ``on_image`` sees every image any step sends (also intermediate steps'); with parallel branches it
    is called from several threads at once. ``on_sent`` is called after each input message sent.
    """

    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    extra_pythonpath: Sequence[str | Path] = ()
    on_image: Callable[[ismrmrd.Image], None] | None = None
    on_sent: Callable[[Message], None] | None = None
    #: Shared by all gadgets of a replay: set by the first ERROR; every gadget then stops (Gadgetron's semantics).
    cancel: threading.Event | None = None


def run_stream(
    steps: Sequence[Step],
    header_xml: bytes,
    messages: Sequence[Message],
    options: RunOptions | None = None,
    *,
    key: str | None = None,
) -> StreamRun:
    """Run ``steps`` in order, each fed with the previous step's outputs; stop at the first failure.

    ``options.on_sent`` is passed to the first step only (it counts the stream's own input).
    """
    options = options or RunOptions()
    result = StreamRun(key=key)
    current: Sequence[Message] = messages
    for index, step in enumerate(steps):
        step_options = options if index == 0 else replace(options, on_sent=None)
        if isinstance(step, ExternalStep):
            run: StepRun = run_external(
                step,
                header_xml,
                current,
                timeout=step_options.timeout,
                connect_timeout=step_options.connect_timeout,
                on_image=step_options.on_image,
                on_sent=step_options.on_sent,
                extra_pythonpath=step_options.extra_pythonpath,
                cancel=step_options.cancel,
            )
        else:
            run = run_parallel(step, header_xml, current, step_options)
        result.runs.append(run)
        if run.failure is not None:
            break
        current = run.outputs
    return result


def run_parallel(
    step: ParallelStep, header_xml: bytes, messages: Sequence[Message], options: RunOptions | None = None
) -> ParallelRun:
    """Run every branch of ``step`` concurrently on a copy of the acquisitions; keep each branch's result."""
    options = options or RunOptions()
    start = time.monotonic()
    fanned = [m for m in messages if isinstance(m, ismrmrd.Acquisition)]
    result = ParallelRun(step=step, bypassed=[m for m in messages if not isinstance(m, ismrmrd.Acquisition)])
    crashes: dict[str, BaseException] = {}

    def branch(key: str, steps: Sequence[Step]) -> None:
        try:
            result.streams[key] = run_stream(steps, header_xml, fanned, options, key=key)
        except BaseException as exc:  # a bug, not a gadget failure: re-raised below once all branches end
            crashes[key] = exc

    threads = [
        threading.Thread(target=branch, args=(key, steps), name=f"replay-branch-{key}", daemon=True)
        for key, steps in step.streams.items()
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException:  # e.g. KeyboardInterrupt: no gadget may outlive the replay
        stop_all_gadgets()
        raise
    if crashes:
        key, exc = next(iter(crashes.items()))
        raise RuntimeError(f"replay branch {key!r} crashed") from exc
    result.streams = {key: result.streams[key] for key in step.streams}  # declaration order
    result.seconds = time.monotonic() - start
    result.failure = _combined_failure(result)
    return result


def _combined_failure(result: ParallelRun) -> ReconError | None:
    failed = {key: s.failure for key, s in result.streams.items() if s.failure is not None}
    if not failed:
        return None
    causes = [s.failure for s in result.streams.values() if s.failure is not None and not s.cancelled]
    first = causes[0] if causes else next(iter(failed.values()))
    assert first is not None
    ok = [key for key in result.streams if key not in failed]
    text = "; ".join(f"branch {key!r}: {exc}" for key, exc in failed.items())
    if ok:
        text += f" (branches that succeeded: {', '.join(ok)})"
    return type(first)(text)


def input_consumers(steps: Sequence[Step]) -> int:
    """How many gadgets receive the stream's input acquisitions (for progress totals)."""
    if not steps:
        return 0
    first = steps[0]
    if isinstance(first, ExternalStep):
        return 1
    return sum(input_consumers(branch) for branch in first.streams.values())
