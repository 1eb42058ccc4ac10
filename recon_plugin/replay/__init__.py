"""Offline replay: run a Gadgetron protocol's Python gadgets on an ISMRMRD file, as Gadgetron would.

``replay_file`` reads the raw file, starts every ``<external>`` gadget with
``python -m gadgetron PORT MODULE TARGET`` over loopback (see
:mod:`recon_plugin.replay.external`), runs sequential steps and parallel
branches (:mod:`recon_plugin.replay.streams`), groups the images that come
back by ``image_series_index`` and writes them to an ISMRMRD HDF5 file.

The output path is checked before any gadget starts (its folder must exist and be writable;
an existing file is refused unless ``overwrite=True``, and then removed at once, so a failed
replay never leaves an older, complete-looking file there). The images are written under a
temporary name in the same folder and renamed into place when complete. On any failure (a
gadget's ERROR, a crash, a timeout, an illegal message) it raises the named error and writes no
output file; the error carries the images that did arrive (``exc.images``) and every step's
result (``exc.run``). With ``keep_partial=True`` those images are also written to
``<output stem>.partial.h5``, a name that says it is incomplete.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd
from rich.table import Table
from tqdm.auto import tqdm

from ..errors import GadgetFailedError, OutputPathError, ProtocolError, ReconError
from ..gadget_settings import SNR_META, SSIM_META
from ..kspace import check_header_memory
from ..timings import RECON_STAGE, stage_seconds
from .dataset import RawData, check_output_folder, check_output_path, read_images, read_raw, write_images, write_pngs
from .external import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, ExternalRun, Message, attach_results, run_external
from .protocol import ExternalStep, ParallelStep, Protocol, Step, load_protocol, set_gadget_property
from .signals import ReplayTerminated, stop_children_on_signals
from .streams import ParallelRun, RunOptions, StreamRun, input_consumers, run_parallel, run_stream
from .timing import ExamTiming, exam_timings, format_timings

logger = logging.getLogger(__name__)

#: The image attribute that says which method made an image, and its value on a fully sampled reference.
METHOD_META = "Method"
REFERENCE_METHOD = "reference"

__all__ = [
    "ExamTiming",
    "ExternalRun",
    "ExternalStep",
    "ParallelRun",
    "ParallelStep",
    "Protocol",
    "RawData",
    "ReplaySummary",
    "ReplayTerminated",
    "RunOptions",
    "SeriesSummary",
    "Step",
    "StreamRun",
    "check_output_folder",
    "check_output_path",
    "format_summary",
    "format_timings",
    "load_protocol",
    "partial_path",
    "read_images",
    "read_raw",
    "replay_file",
    "run_external",
    "run_parallel",
    "run_stream",
    "set_gadget_property",
    "summary_json",
    "write_images",
    "write_pngs",
]


@dataclass(frozen=True)
class SeriesSummary:
    """One output image series.

    ``shape`` is the images' matrix_size (x, y, z); ``source`` names the branch key(s) or gadget that
    made it and ``seconds`` that stream's wall time (gadget start to exit: model loading, waiting for the data and
    sending included); ``recon_seconds`` is the gadget's own reconstruction stage for the series (the cumulative
    stage meta of its images, :data:`~recon_plugin.timings.RECON_STAGE`; None without such meta);
    ``mean_snr_db`` / ``mean_ssim`` average the
    images' SNR / SSIM meta attributes where present (None when no image has them). ``method`` is what
    the images say they are (their ``Method`` attribute, else ``source``); ``reference`` marks the fully
    sampled reference a gadget sends beside its own series (its ``seconds`` are its stream's, not its own).
    """

    series: int
    count: int
    shape: tuple[int, int, int]
    channels: int
    source: str
    seconds: float
    mean_snr_db: float | None = None
    mean_ssim: float | None = None
    method: str = ""
    reference: bool = False
    recon_seconds: float | None = None


@dataclass(frozen=True)
class ReplaySummary:
    """What a successful replay produced; ``timings``: one :class:`ExamTiming` per output gadget."""

    input: Path
    protocol: Path | None
    output: Path
    acquisitions: int
    waveforms: int
    seconds: float
    series: list[SeriesSummary] = field(default_factory=list)
    pngs: list[Path] = field(default_factory=list)
    timings: list[ExamTiming] = field(default_factory=list)
    overrides: tuple[str, ...] = ()

    @property
    def images(self) -> int:
        return sum(s.count for s in self.series)


def partial_path(output_h5: str | Path) -> Path:
    """Where ``keep_partial=True`` puts the images of a failed replay: ``<stem>.partial.h5``."""
    output_h5 = Path(output_h5)
    return output_h5.with_name(f"{output_h5.stem}.partial.h5")


def replay_file(
    input_h5: str | Path,
    protocol_xml: str | Path | Protocol,
    output_h5: str | Path,
    *,
    png_dir: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    progress: bool = True,
    extra_pythonpath: Sequence[str | Path] = (),
    keep_partial: bool = False,
    overwrite: bool = False,
) -> ReplaySummary:
    """Replay ``input_h5`` through the protocol's gadgets and write the images to ``output_h5``.

    ``timeout`` is each gadget's inactivity limit in seconds, ``connect_timeout`` the limit for a
    started gadget to connect. ``extra_pythonpath`` is added to the gadgets' PYTHONPATH. An existing
    ``output_h5`` is refused unless ``overwrite``; with it, the old file is removed before the gadgets start.
    An ERROR from any gadget stops every gadget of the stream at once, as Gadgetron fails the stream; with
    ``keep_partial`` the other gadgets run to their end instead, and what arrived goes to ``<stem>.partial.h5``.

    Raises:
        OutputExistsError: ``output_h5`` exists and ``overwrite`` is False (checked first).
        OutputPathError: ``output_h5`` is the input, a folder, or its folder is missing or not writable.
        ProtocolError: the protocol cannot be replayed (C++ gadgets, no AcquisitionReader or ImageWriter...), names
            a gadget module or target that does not exist, or gives a project gadget a bad property.
        IsmrmrdFormatError: the input file is not valid ISMRMRD raw data.
        MemoryLimitError: one slice buffer per gadget would not fit in memory (:mod:`recon_plugin.memory`).
        GadgetFailedError: a gadget reported an error, crashed, sent an illegal message, or no image came back.
        StreamTimeoutError: a gadget did not connect, answer or read within its time limit.
    """
    start = time.monotonic()
    input_h5, output_h5 = Path(input_h5), Path(output_h5)
    if output_h5.exists() and input_h5.exists() and os.path.samefile(input_h5, output_h5):
        raise OutputPathError(f"the output {output_h5} is the input file: choose another name for the images")
    check_output_path(output_h5, overwrite=overwrite)
    if png_dir is not None:
        check_output_folder(png_dir, "--png")
    protocol = protocol_xml if isinstance(protocol_xml, Protocol) else load_protocol(protocol_xml)
    _check_replayable(protocol)
    from ..gadget_targets import check_protocol  # here: gadget_targets imports this package's protocol module

    check_protocol(protocol, search_path=extra_pythonpath)  # every target exists, properties parse: before any start
    raw = read_raw(input_h5)
    check_header_memory(raw.header_xml, input_consumers(protocol.steps))  # refused before any gadget starts
    if output_h5.exists() or output_h5.is_symlink():  # overwrite: never leave the older file if this run fails
        output_h5.unlink()
        logger.info("removed the older %s (overwrite)", output_h5)
    waveforms = raw.waveforms
    if waveforms and "WaveformReader" not in protocol.readers:
        logger.warning("protocol has no WaveformReader: the file's %d waveforms are not sent", len(waveforms))
        waveforms = []
    messages: list[Message] = [*raw.acquisitions, *waveforms]

    total = len(raw.acquisitions) * input_consumers(protocol.steps)
    lock = threading.Lock()
    with tqdm(total=total, unit="acq", desc="replay", disable=not progress, leave=False) as bar:

        def on_sent(message: Message) -> None:
            if isinstance(message, ismrmrd.Acquisition):
                with lock:
                    bar.update(1)

        options = RunOptions(
            timeout=timeout,
            connect_timeout=connect_timeout,
            extra_pythonpath=extra_pythonpath,
            on_sent=on_sent,
            # Gadgetron fails the whole stream on an ERROR: so does replay, unless the caller keeps partial results
            cancel=None if keep_partial else threading.Event(),
        )
        with stop_children_on_signals():
            result = run_stream(protocol.steps, raw.header_xml, messages, options)

    failure = result.failure
    if failure is not None:
        if keep_partial and result.images:
            try:
                where = write_images(partial_path(output_h5), _group_by_series(result.images), raw.header_xml)
                logger.warning("replay failed; the %d images that arrived are in %s", len(result.images), where)
            except (OSError, ReconError) as exc:
                logger.warning("replay failed, and its partial images could not be written either: %s", exc)
        raise attach_results(failure, result.images, result)

    labelled = _final_images(result)
    if not labelled:
        leftovers = len(result.outputs)
        raise attach_results(
            GadgetFailedError(
                "the protocol's gadgets closed normally but sent no images"
                + (f" ({leftovers} non-image messages reached the end of the stream)" if leftovers else "")
                + "; nothing was written"
            ),
            [],
            result,
        )
    skipped = len(result.outputs) - len(labelled)
    if skipped:
        logger.info("%d non-image messages reached the end of the stream; only images are written", skipped)

    by_series = _group_by_series([image for _, _, image in labelled])
    write_images(output_h5, by_series, raw.header_xml)
    try:
        pngs = write_pngs(png_dir, by_series) if png_dir is not None else []
    except OSError as exc:  # the replay fails as a whole: no OUT without its PNGs
        output_h5.unlink(missing_ok=True)
        raise OutputPathError(f"--png {png_dir}: cannot write the previews ({exc}); {output_h5} was not kept") from exc
    return ReplaySummary(
        input=input_h5,
        protocol=protocol.path,
        output=output_h5,
        acquisitions=len(raw.acquisitions),
        waveforms=len(waveforms),
        seconds=time.monotonic() - start,
        series=_summarise(labelled),
        pngs=pngs,
        timings=exam_timings(result),
        overrides=protocol.overrides,
    )


def _check_replayable(protocol: Protocol) -> None:
    if "AcquisitionReader" not in protocol.readers:
        raise ProtocolError(
            f"{protocol.path or 'protocol'} has no AcquisitionReader (gadgetron_core_readers): "
            "Gadgetron would refuse the file's acquisitions"
        )
    if "ImageWriter" not in protocol.writers:
        raise ProtocolError(
            f"{protocol.path or 'protocol'} has no ImageWriter (gadgetron_core_writers): no image could be returned"
        )


def _final_images(result: StreamRun) -> list[tuple[str, float, ismrmrd.Image]]:
    """(source, seconds, image) for each image leaving the stream."""
    if not result.runs:
        return []
    last = result.runs[-1]
    if isinstance(last, ExternalRun):
        label = result.key or last.step.name
        return [(label, result.seconds, image) for image in last.images]
    labelled: list[tuple[str, float, ismrmrd.Image]] = []
    for key, branch in last.streams.items():
        for source, seconds, image in _final_images(branch):
            labelled.append((key if source == branch.key else f"{key}/{source}", seconds, image))
    return labelled


def _group_by_series(images: Sequence[ismrmrd.Image]) -> dict[int, list[ismrmrd.Image]]:
    groups: dict[int, list[ismrmrd.Image]] = {}
    for image in images:
        groups.setdefault(int(image.image_series_index), []).append(image)
    return groups


def _summarise(labelled: Sequence[tuple[str, float, ismrmrd.Image]]) -> list[SeriesSummary]:
    groups: dict[int, list[tuple[str, float, ismrmrd.Image]]] = {}
    for entry in labelled:
        groups.setdefault(int(entry[2].image_series_index), []).append(entry)
    summaries = []
    for series in sorted(groups):
        entries = groups[series]
        images = [image for _, _, image in entries]
        sources = list(dict.fromkeys(source for source, _, _ in entries))
        methods = list(dict.fromkeys(m for m in (_meta_text(image, METHOD_META) for image in images) if m))
        summaries.append(
            SeriesSummary(
                series=series,
                count=len(images),
                shape=tuple(int(v) for v in images[0].matrix_size),  # type: ignore[arg-type]
                channels=int(images[0].channels),
                source="+".join(sources),
                seconds=max(seconds for _, seconds, _ in entries),
                mean_snr_db=_mean_meta(images, SNR_META),
                mean_ssim=_mean_meta(images, SSIM_META),
                method="+".join(methods) or "+".join(sources),
                reference=methods == [REFERENCE_METHOD],
                recon_seconds=_recon_seconds(images, methods),
            )
        )
    return summaries


def _recon_seconds(images: Sequence[ismrmrd.Image], methods: list[str]) -> float | None:
    """The reconstruction stage's total for a series: the largest cumulative value its images carry."""
    stages = {RECON_STAGE[m] for m in methods if m in RECON_STAGE}
    if len(stages) != 1:
        return None
    (stage,) = stages
    values = [seconds[stage] for seconds in (stage_seconds(image.meta) for image in images) if stage in seconds]
    return max(values) if values else None


def _meta_text(image: ismrmrd.Image, name: str) -> str:
    value = image.meta.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return "" if value is None else str(value)


def _mean_meta(images: Sequence[ismrmrd.Image], name: str) -> float | None:
    values = []
    for image in images:
        value = image.meta.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        try:
            number = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            values.append(number)
    return sum(values) / len(values) if values else None


def summary_json(summary: ReplaySummary) -> dict[str, Any]:
    """The summary as plain JSON data (``recon-plugin replay --json``); a reference series has ``seconds`` null."""
    return {
        "input": str(summary.input),
        "protocol": None if summary.protocol is None else str(summary.protocol),
        "protocol_overrides": list(summary.overrides),
        "output": str(summary.output),
        "acquisitions": summary.acquisitions,
        "waveforms": summary.waveforms,
        "images": summary.images,
        "seconds": round(summary.seconds, 3),
        "series": [
            {
                "series": s.series,
                "method": s.method,
                "reference": s.reference,
                "source": s.source,
                "images": s.count,
                "matrix": list(s.shape),
                "channels": s.channels,
                "seconds": None if s.reference else round(s.seconds, 3),
                "recon_seconds": None if s.reference or s.recon_seconds is None else round(s.recon_seconds, 3),
                "snr_db": None if s.mean_snr_db is None else round(s.mean_snr_db, 3),
                "ssim": None if s.mean_ssim is None else round(s.mean_ssim, 4),
            }
            for s in summary.series
        ],
        "pngs": [str(p) for p in summary.pngs],
    }


def format_summary(summary: ReplaySummary) -> Table:
    """A rich table of the output series (what the CLI prints after a replay).

    ``method`` is what each series is; ``source`` the branch or gadget that sent it; ``recon s`` the gadget's
    reconstruction stage and ``stream s`` that stream's wall time, gadget start to exit (a reference series
    shows ``-``: it is the fully sampled image, not a reconstruction). The caption says which is which.
    """
    set_on_top = f"; set: {', '.join(summary.overrides)}" if summary.overrides else ""
    table = Table(
        title=f"replay {summary.input.name} -> {summary.output} ({summary.images} images, {summary.seconds:.1f} s"
        f"{set_on_top})",
        caption="recon s: the gadget's reconstruction of the series (its images' stage meta); stream s: the "
        "stream's wall time, gadget start to exit (loading the model, waiting for the data, sending included)",
    )
    for column, justify in (
        ("series", "right"),
        ("method", "left"),
        ("source", "left"),
        ("images", "right"),
        ("matrix x*y*z", "right"),
        ("channels", "right"),
        ("recon s", "right"),
        ("stream s", "right"),
        ("SNR dB", "right"),
        ("SSIM", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for s in summary.series:
        table.add_row(
            str(s.series),
            s.method,
            s.source,
            str(s.count),
            "x".join(str(v) for v in s.shape),
            str(s.channels),
            "-" if s.reference or s.recon_seconds is None else f"{s.recon_seconds:.2f}",
            "-" if s.reference else f"{s.seconds:.2f}",
            "-" if s.mean_snr_db is None else f"{s.mean_snr_db:.2f}",
            "-" if s.mean_ssim is None else f"{s.mean_ssim:.3f}",
        )
    return table
