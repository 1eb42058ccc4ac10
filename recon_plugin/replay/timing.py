"""End-to-end timings of a replay: the gadget's stage seconds (image meta) next to the client's clock.

The client-side instants come from :class:`~recon_plugin.replay.external.ExternalRun` (``time.monotonic``
of the replaying process): the last acquisition handed to the socket, the first and the last image
arrived. The headline is "last acquisition -> last image", the scanner's wait for the last image.

The gadgets stream: each batch of slices is sent as soon as it is reconstructed, stamped with the stage
seconds known just before it was sent (:func:`~recon_plugin.pipeline.stamp_timings`). The first image
therefore holds only the first batch's reconstruction; the exam's totals are on the last image sent.
:class:`ExamTiming` takes its stages from the image with the largest cumulative stage total, the later
arrival on a tie (:func:`final_stages`). Over one gadget's socket images arrive in the order they were
sent and the totals never decrease, so that is the last image sent; choosing by the total rather than
by position alone also passes over an image without stage meta. "first -> last image" is then the
streaming interval: the reconstruction of the remaining slices plus sending and transfer, and it
overlaps the stage totals, so the unaccounted remainder is the headline minus the stages alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import ismrmrd
from rich.table import Table

from ..timings import DURING_ACQUISITION, stage_seconds
from .external import ExternalRun
from .streams import StreamRun

#: Row of the streaming interval: the slices after the first batch reconstructed, plus sending and transfer.
STREAMING_ROW = "streaming: first -> last image"
#: Row of the remainder: headline minus the stage totals (catch-up, sending, transfer, untimed work).
UNACCOUNTED_ROW = "unaccounted (send, transfer, catch-up)"


@dataclass(frozen=True)
class ExamTiming:
    """Timings of one gadget whose images leave the stream (one per branch).

    ``stages``: the gadget's own stage seconds for the whole exam, from the meta of its last image sent
    (:func:`final_stages`; empty when it sends none or none carries stage meta); ``run_seconds``: the
    gadget's wall time from start to exit; the intervals are the client's and None when the instants are
    missing (no acquisition sent, no image arrived). ``first_to_last_image`` is the streaming interval:
    the reconstruction of the slices after the first batch plus sending and transfer.
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
        """Sum of the gadget's stage totals after the last acquisition (its last image's meta; sending excluded)."""
        return sum(s for name, s in self.stages.items() if name not in DURING_ACQUISITION)

    @property
    def unaccounted(self) -> float | None:
        """Headline (last acquisition -> last image) minus the gadget's post-acquisition stage totals.

        What the image meta does not time: the gadget catching up with acquisitions already sent, sending
        and transfer of every batch, untimed work between stages. ``first_to_last_image`` is not subtracted:
        it holds the later batches' reconstruction, which the totals already count. Not guaranteed >= 0
        (two processes' clocks; a batch's transfer may overlap the next batch's reconstruction).
        """
        if self.acquisition_to_last_image is None:
            return None
        return self.acquisition_to_last_image - self.post_acquisition_stages


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


def final_stages(images: Sequence[ismrmrd.Image]) -> dict[str, float]:
    """The exam's stage totals: the stages of the image with the largest cumulative stage total (the later
    arrival on a tie, i.e. the last image sent); empty when no image carries stage meta.

    Streaming stamps each batch with the stages known just before it was sent, so totals only grow along
    one gadget's stream and the first image holds the first batch's reconstruction alone.
    """
    best: dict[str, float] = {}
    best_total = float("-inf")
    for image in images:
        stages = stage_seconds(dict(image.meta))
        total = sum(stages.values())
        if stages and total >= best_total:
            best, best_total = stages, total
    return best


def _timing(label: str, run: ExternalRun, sent: float | None) -> ExamTiming:
    first, last = run.first_image_at, run.last_image_at
    return ExamTiming(
        source=label,
        series=tuple(sorted({int(image.image_series_index) for image in run.images})),
        images=len(run.images),
        run_seconds=run.seconds,
        stages=final_stages(run.images),
        acquisition_to_first_image=None if sent is None or first is None else first - sent,
        first_to_last_image=None if first is None or last is None else last - first,
        acquisition_to_last_image=None if sent is None or last is None else last - sent,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_timings(timings: list[ExamTiming], title: str = "timings (seconds)") -> Table:
    """A rich table: one column per gadget, rows for its stage totals (last image's meta) and the client's intervals.

    The rows after the stages: their sum, last acquisition -> first image, the streaming interval (first ->
    last image), the headline (last acquisition -> last image), the unaccounted remainder (headline minus the
    stage sum) and the gadget's wall time.
    """
    caption = (
        "stage rows: the gadget's own exam totals (its last image's meta); * overlaps the acquisition; "
        "streaming: the later batches' reconstruction plus send/transfer"
    )
    table = Table(title=title, caption=caption)
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
        (STREAMING_ROW, lambda t: t.first_to_last_image),
        ("last acquisition -> last image", lambda t: t.acquisition_to_last_image),
        (UNACCOUNTED_ROW, lambda t: t.unaccounted),
        ("gadget process wall time", lambda t: t.run_seconds),
    )
    for label, value in rows:
        style = "bold" if label == "last acquisition -> last image" else None
        table.add_row(label, *(_seconds(value(t)) for t in timings), style=style)
    return table
