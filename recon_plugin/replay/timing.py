"""End-to-end timings of a replay: the gadget's stage seconds (image meta) next to the client's clock.

The client-side instants come from :class:`~recon_plugin.replay.external.ExternalRun` (``time.monotonic``
of the replaying process): the last acquisition handed to the socket, the first and the last image
arrived. The headline is "last acquisition -> last image", the scanner's wait for the last image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table

from ..timings import DURING_ACQUISITION, stage_seconds
from .external import ExternalRun
from .streams import StreamRun


@dataclass(frozen=True)
class ExamTiming:
    """Timings of one gadget whose images leave the stream (one per branch).

    ``stages``: the gadget's own stage seconds from its images' meta (empty when it sends none);
    ``run_seconds``: the gadget's wall time from start to exit; the intervals are the client's and
    None when the instants are missing (no acquisition sent, no image arrived).
    """

    source: str
    series: tuple[int, ...]
    images: int
    run_seconds: float
    stages: dict[str, float] = field(default_factory=dict)
    acquisition_to_first_image: float | None = None
    first_to_last_image: float | None = None
    acquisition_to_last_image: float | None = None

    @property
    def post_acquisition_stages(self) -> float:
        """Sum of the gadget's stages after the last acquisition that its images report (sending excluded)."""
        return sum(s for name, s in self.stages.items() if name not in DURING_ACQUISITION)

    @property
    def unaccounted(self) -> float | None:
        """Headline minus the gadget's post-acquisition stages minus first -> last image.

        What neither side timed: the gadget catching up with acquisitions already sent, transfer of the
        first image, untimed work between stages. Not guaranteed >= 0 (two processes' clocks).
        """
        if self.acquisition_to_last_image is None or self.first_to_last_image is None:
            return None
        return self.acquisition_to_last_image - self.post_acquisition_stages - self.first_to_last_image


def exam_timings(result: StreamRun) -> list[ExamTiming]:
    """One :class:`ExamTiming` per gadget whose images leave ``result`` (branch order)."""
    return [_timing(label, run, sent) for label, run, sent in _final_runs(result, None)]


def _final_runs(result: StreamRun, inherited: float | None) -> list[tuple[str, ExternalRun, float | None]]:
    """(label, final gadget run, last acquisition sent into this stream) for each output gadget."""
    if not result.runs:
        return []
    first = result.runs[0]
    sent = inherited
    if sent is None and isinstance(first, ExternalRun):
        sent = first.last_acquisition_sent_at
    last = result.runs[-1]
    if isinstance(last, ExternalRun):
        return [(result.key or last.step.name, last, sent)]
    before = sent if len(result.runs) > 1 else inherited  # a leading <parallel>: each branch has its own
    out = []
    for key, branch in last.streams.items():
        for source, run, branch_sent in _final_runs(branch, before):
            out.append((key if source == branch.key else f"{key}/{source}", run, branch_sent))
    return out


def _timing(label: str, run: ExternalRun, sent: float | None) -> ExamTiming:
    first, last = run.first_image_at, run.last_image_at
    return ExamTiming(
        source=label,
        series=tuple(sorted({int(image.image_series_index) for image in run.images})),
        images=len(run.images),
        run_seconds=run.seconds,
        stages=stage_seconds(dict(run.images[0].meta)) if run.images else {},
        acquisition_to_first_image=None if sent is None or first is None else first - sent,
        first_to_last_image=None if first is None or last is None else last - first,
        acquisition_to_last_image=None if sent is None or last is None else last - sent,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_timings(timings: list[ExamTiming], title: str = "timings (seconds)") -> Table:
    """A rich table: one column per gadget, rows for its stages (from image meta) and the client's intervals."""
    table = Table(title=title, caption="stage rows: the gadget's own seconds (image meta); * overlaps the acquisition")
    table.add_column("stage", justify="left")
    for timing in timings:
        series = ",".join(str(s) for s in timing.series)
        table.add_column(f"{timing.source} (series {series})", justify="right")
    stages = list(dict.fromkeys(name for t in timings for name in t.stages))
    for name in stages:
        during = " *" if name in DURING_ACQUISITION else ""
        table.add_row(f"{name.replace('_', ' ')}{during}", *(_seconds(t.stages.get(name)) for t in timings))
    rows = (
        ("stages after last acquisition (sum)", lambda t: t.post_acquisition_stages if t.stages else None),
        ("last acquisition -> first image", lambda t: t.acquisition_to_first_image),
        ("first -> last image (send + transfer)", lambda t: t.first_to_last_image),
        ("last acquisition -> last image", lambda t: t.acquisition_to_last_image),
        ("unaccounted", lambda t: t.unaccounted),
        ("gadget process wall time", lambda t: t.run_seconds),
    )
    for label, value in rows:
        style = "bold" if label == "last acquisition -> last image" else None
        table.add_row(label, *(_seconds(value(t)) for t in timings), style=style)
    return table
