"""Per-exam stage timings: where the time goes from the first acquisition to the last image sent.

A :class:`StageTimer` accumulates seconds per named stage (a context manager per stage, or
:meth:`StageTimer.add`) and keeps named instants (:meth:`StageTimer.mark`). Stages are reported in
the pipeline's order (:data:`STAGES`), unknown names after them in the order they first appeared.
The clock is ``time.perf_counter``; making GPU work finish inside its stage (CUDA synchronisation)
is the reconstructor's job.

Every image of an exam carries the stages known before sending as ISMRMRD meta
(``Stage<CamelCase>Seconds``, e.g. ``StageCoilMapsSeconds``); :func:`stage_seconds` reads them back.
The gadgets stream the exam batch by batch of slices, each batch stamped just before it is sent: the
stages before the reconstruction are complete on every image, while the reconstruction, ``metrics`` and
``encode`` are summed only over the batches done so far (``send`` never appears). The first image of a
series therefore holds the first batch's share, the last image sent the exam's totals (what replay's
timings report, :func:`recon_plugin.replay.timing.final_stages`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

#: Stages in pipeline order. ``setup``: settings and reconstructor (model load);
#: ``receive``: first to last acquisition arriving; ``assembly_add``: placing lines while receiving
#: (overlaps ``receive``); after the last acquisition: ``assembly`` (whitening, oversampling removal,
#: problems), ``coil_maps``, ``reference`` (the retrospective fully sampled reference), the
#: reconstruction (``network``, ``bart`` or ``zero_filled``), ``metrics`` (SNR/SSIM), ``encode``
#: (ISMRMRD images) and ``send``.
STAGES = (
    "setup",
    "receive",
    "assembly_add",
    "assembly",
    "coil_maps",
    "reference",
    "network",
    "bart",
    "zero_filled",
    "metrics",
    "encode",
    "send",
)
#: Stages that run during acquisition (they overlap the scan, so they are not part of its wait).
DURING_ACQUISITION = ("setup", "receive", "assembly_add")
#: The reconstruction stage of each method.
RECON_STAGE = {"rgancs": "network", "cs_wavelet": "bart", "cs_tv": "bart", "zero_filled": "zero_filled"}

_META_PREFIX = "Stage"
_META_SUFFIX = "Seconds"
_META_PATTERN = re.compile(rf"^{_META_PREFIX}([A-Z][A-Za-z0-9]*){_META_SUFFIX}$")


def meta_name(stage: str) -> str:
    """The ISMRMRD meta name of a stage: ``coil_maps`` -> ``StageCoilMapsSeconds``."""
    return _META_PREFIX + "".join(part.capitalize() for part in stage.split("_")) + _META_SUFFIX


#: Meta names of the known stages (``STAGE_META["coil_maps"] == "StageCoilMapsSeconds"``).
STAGE_META = {stage: meta_name(stage) for stage in STAGES}
_STAGE_OF_META = {name: stage for stage, name in STAGE_META.items()}


def is_stage_meta(name: str) -> bool:
    """True for a stage-timing meta name (they differ between any two runs)."""
    return bool(_META_PATTERN.match(name))


def stage_seconds(meta: Mapping[str, Any]) -> dict[str, float]:
    """Stage seconds from an image's meta (values may be strings or one-element lists), in pipeline order."""
    found: dict[str, float] = {}
    for name, value in meta.items():
        match = _META_PATTERN.match(str(name))
        if not match:
            continue
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        stage = _STAGE_OF_META.get(str(name)) or re.sub(r"(?<!^)([A-Z])", r"_\1", match.group(1)).lower()
        found[stage] = seconds
    return _ordered(found)


def _ordered(stages: Mapping[str, float]) -> dict[str, float]:
    known = [s for s in STAGES if s in stages]
    return {s: stages[s] for s in [*known, *(s for s in stages if s not in STAGES)]}


class StageTimer:
    """Accumulated seconds per stage of one exam, plus named instants.

    >>> timer = StageTimer("zero_filled")
    >>> with timer.stage("coil_maps"):
    ...     pass
    >>> timer.seconds("coil_maps") >= 0
    True
    """

    def __init__(self, label: str = "", clock: Callable[[], float] = time.perf_counter) -> None:
        self.label = label
        self.clock = clock
        self._seconds: dict[str, float] = {}
        self._marks: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block and add it to ``name`` (also when the block raises)."""
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        """Add ``seconds`` (>= 0) to stage ``name``."""
        if seconds < 0:
            raise ValueError(f"stage {name!r}: negative duration {seconds!r}")
        self._seconds[name] = self._seconds.get(name, 0.0) + float(seconds)

    def mark(self, name: str) -> float:
        """Record the instant ``name`` (a later mark of the same name replaces it); returns it."""
        self._marks[name] = now = self.clock()
        return now

    def marked(self, name: str) -> float | None:
        """The instant recorded as ``name``, or None."""
        return self._marks.get(name)

    def between(self, first: str, last: str) -> float | None:
        """Seconds from mark ``first`` to mark ``last``; None when either is missing."""
        if first not in self._marks or last not in self._marks:
            return None
        return self._marks[last] - self._marks[first]

    def since(self, name: str) -> float | None:
        """Seconds since mark ``name``; None when it was never marked."""
        return None if name not in self._marks else self.clock() - self._marks[name]

    def seconds(self, name: str) -> float:
        """Accumulated seconds of ``name`` (0 when it never ran)."""
        return self._seconds.get(name, 0.0)

    @property
    def stages(self) -> dict[str, float]:
        """Every stage that ran, in pipeline order."""
        return _ordered(self._seconds)

    def total(self, names: Iterable[str] | None = None) -> float:
        """Sum of the named stages (default: the stages after the last acquisition)."""
        chosen = set(names) if names is not None else {n for n in self._seconds if n not in DURING_ACQUISITION}
        return sum(self._seconds.get(n, 0.0) for n in chosen)

    def meta(self) -> dict[str, str]:
        """The stages as ISMRMRD meta entries (``StageCoilMapsSeconds`` ...: seconds as text)."""
        return {meta_name(name): f"{seconds:.6f}" for name, seconds in self.stages.items()}

    def summary(self) -> str:
        """One log line: every stage, then the time from the last acquisition to now (when marked)."""
        parts = [f"{name.replace('_', ' ')} {seconds:.3f} s" for name, seconds in self.stages.items()]
        line = f"{self.label + ': ' if self.label else ''}{', '.join(parts) or 'no stages'}"
        waited = self.since("last_acquisition")
        if waited is not None:
            line += f"; last acquisition -> now {waited:.3f} s (stages after it: {self.total():.3f} s)"
        return line
