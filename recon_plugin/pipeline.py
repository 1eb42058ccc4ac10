"""Exam pipeline shared by every runtime: settings -> reconstructor -> assembled problems -> ISMRMRD images.

Gadgets (Gadgetron external gadgets) and any other runtime call these
functions; they hold no numerics of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import ismrmrd
import torch

from .adaptation import AdaptSettings
from .errors import InvalidInputError, ProtocolError
from .gadget_settings import METHODS, PROPERTIES, SERIES_INDEX, GadgetSettings, RetroSettings, default_weights
from .images import make_image
from .kspace import Assembled, Assembler
from .metrics import snr_db, ssim
from .problem import Problem
from .reconstructors import RGANCS, CoilRoutedRGANCS, Reconstructor, Result, ZeroFilled
from .reconstructors.bart_cs import BartCS
from .timings import RECON_STAGE, StageTimer, meta_name

log = logging.getLogger(__name__)

__all__ = ["METHODS", "PROPERTIES", "GadgetSettings", "RetroSettings", "default_weights"]
_REGULARISERS = {"cs_wavelet": "wavelet", "cs_tv": "tv"}

#: (weights, device, batch_size, fast_path, phase_average, flip_average, adapt_steps, adapt_lr, adapt_split,
#: adapt_splits, adapt_scope) of a resident model.
_Key = tuple[str, str, int, str, int, int, int, float, str | None, int, str | None]
_RESIDENT: dict[_Key, Reconstructor] = {}
#: Routed pairs of resident models, kept like them (one wrapper per pair).
_ROUTED: dict[tuple[_Key, _Key], CoilRoutedRGANCS] = {}


#: torch's intra-op threads when this module was imported: OMP_NUM_THREADS, else torch's own default (the cores).
_PROCESS_THREADS = torch.get_num_threads()
#: The most gadgets a shipped protocol runs side by side (``side_by_side.xml``); the default thread share.
PARALLEL_GADGETS = 4


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. ``taskset``), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity API on this platform
        return os.cpu_count() or 1


def default_threads() -> int:
    """The torch threads of a gadget without a ``threads`` property: ``available_cores() // PARALLEL_GADGETS``,
    at least 1 and at most the process default (``OMP_NUM_THREADS``).

    A gadget cannot see how many gadgets its protocol runs in parallel, so the default is the share of the
    largest shipped protocol: four gadgets never oversubscribe the cores. Oversubscription is the expensive
    side: with one of two cores busy elsewhere, the CPU network took 2.1x as long with 2 threads as with 1
    (145 vs 68 ms per 80x40 plane); a single-gadget protocol may set ``threads`` higher.
    """
    return max(1, min(_PROCESS_THREADS, available_cores() // PARALLEL_GADGETS))


def apply_threads(threads: int = 0) -> int:
    """Set torch's threads for this gadget before its model runs; returns the intra-op count now in force.

    ``threads`` >= 1 caps ``torch.set_num_threads``; 0 takes :func:`default_threads`. The inter-op pool
    follows while torch still allows it (once per process, before any inter-op work), otherwise it stays.
    In the MRD server the gadgets are threads of one process: the intra-op setting holds for the calling
    thread's OpenMP team (and threads started afterwards), the inter-op pool is shared.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ProtocolError(f"threads must be an integer >= 1, or 0 for the default; got {threads!r}")
    count = threads or default_threads()
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(count)
    except RuntimeError:  # too late in this process: leave the inter-op pool as it is
        log.debug("inter-op threads stay at %d", torch.get_num_interop_threads())
    return torch.get_num_threads()


def build_reconstructor(settings: GadgetSettings) -> Reconstructor:
    """The reconstructor for ``settings``; RGANCS models stay resident between exams in this process."""
    if settings.method == "zero_filled":
        return ZeroFilled()
    if settings.method in _REGULARISERS:
        return BartCS(
            _REGULARISERS[settings.method],
            lam=settings.lam,
            iterations=settings.iterations,
            time_limit=settings.time_limit,
            workers=settings.workers,
        )
    multi = _resident_rgancs(settings, settings.weights)
    single = settings.single_coil_weights
    if single is None or Path(single).resolve() == Path(settings.weights).resolve():
        return multi
    key = (_resident_key(settings, settings.weights), _resident_key(settings, single))
    if key not in _ROUTED:
        _ROUTED[key] = CoilRoutedRGANCS(multi=multi, single=_resident_rgancs(settings, single))
    return _ROUTED[key]


def _resident_key(settings: GadgetSettings, weights: Path) -> _Key:
    return (
        str(Path(weights).resolve()),
        settings.device,
        settings.batch_size,
        settings.fast_path,
        settings.phase_average,
        settings.flip_average,
        settings.adapt_steps,
        settings.adapt_lr,
        settings.adapt_split,
        settings.adapt_splits,
        settings.adapt_scope,
    )


def _resident_rgancs(settings: GadgetSettings, weights: Path) -> RGANCS:
    key = _resident_key(settings, weights)
    if key not in _RESIDENT:
        _RESIDENT[key] = RGANCS(
            weights,
            device=settings.device,
            batch_size=settings.batch_size,
            fast_path=settings.fast_path,
            phase_average=settings.phase_average or None,
            adapt=_adapt_settings(settings),
            flip_average=settings.flip_average or None,
        )
    return _RESIDENT[key]


def _adapt_settings(settings: GadgetSettings) -> AdaptSettings:
    """The adaptation the ``adapt_*`` properties ask for (AdaptSettings' defaults for the rest)."""
    given = {"split": settings.adapt_split, "splits": settings.adapt_splits or None, "scope": settings.adapt_scope}
    return AdaptSettings(
        steps=settings.adapt_steps, lr=settings.adapt_lr, **{k: v for k, v in given.items() if v is not None}
    )


def default_rgancs(
    device: str = "auto", weights: str | Path | None = None, adapt: AdaptSettings | None = None, model: str = "auto"
) -> Reconstructor:
    """RGANCS as a gadget without properties runs it: ``weights`` (default :func:`default_weights`) for every
    slice, or, without ``weights``, the default bundle for multi-coil (``model``: ``auto`` by device, ``accurate``
    or ``fast``) and the single-coil default for single-coil slices; ``adapt`` as the ``adapt_steps`` /
    ``adapt_lr`` / ``adapt_split`` / ``adapt_splits`` / ``adapt_scope`` properties would set it (any other field
    away from its default is an InvalidInputError: no property carries it)."""
    props = {"device": device, "model": model}
    if weights is not None:
        props["weights"] = str(weights)
    if adapt is not None and adapt.enabled:
        carried = {
            "steps": adapt.steps,
            "lr": adapt.lr,
            "split": adapt.split,
            "splits": adapt.splits,
            "scope": adapt.scope,
        }
        props |= {f"adapt_{k}": repr(v) if k == "lr" else str(v) for k, v in carried.items()}
        if adapt != replace(AdaptSettings(), **carried):
            raise InvalidInputError(f"{adapt} sets adaptation fields no gadget property carries; use RGANCS(adapt=...)")
    return build_reconstructor(GadgetSettings.from_properties("rgancs", props))


def assemble(
    header: Any,
    acquisitions: Iterable[ismrmrd.Acquisition],
    settings: GadgetSettings,
    timer: StageTimer | None = None,
) -> list[Assembled]:
    """Assemble a whole exam into problems with their coil maps (and retrospective references).

    ``timer`` gets ``receive`` (first to last acquisition taken from ``acquisitions``, marks
    ``first_acquisition`` / ``last_acquisition``), ``assembly_add`` (placing lines, overlapping the
    receive), ``assembly`` (after the last acquisition), ``coil_maps`` and ``reference``.
    """
    timer = timer if timer is not None else StageTimer()
    assembler = Assembler(header, retro=settings.retro, calib_width=settings.calib_width)
    for acq in acquisitions:
        if timer.marked("first_acquisition") is None:
            timer.mark("first_acquisition")
        timer.mark("last_acquisition")
        with timer.stage("assembly_add"):
            assembler.add(acq)
    receive = timer.between("first_acquisition", "last_acquisition")
    if receive is not None:
        timer.add("receive", receive)
    with timer.stage("assembly"):
        assembled = assembler.problems(defer_reference=True)
    prepare_maps(assembled, timer, threads=settings.threads)
    return assembled


def coil_map_workers(pending: int, threads: int = 0) -> int:
    """Parallel ESPIRiT workers for ``pending`` problems: at most the gadget's thread setting (``threads`` as
    :func:`apply_threads` resolves it: >= 1 as given, 0 = :func:`default_threads`), the available cores and
    the problems, at least 1. Four gadgets side by side thus share the cores instead of each taking them all."""
    return max(1, min(pending, threads or default_threads(), available_cores()))


def prepare_maps(assembled: Sequence[Assembled], timer: StageTimer | None = None, threads: int = 0) -> None:
    """Estimate every problem's coil maps now (stage ``coil_maps``), then any deferred reference (``reference``),
    so that the reconstruction stage times the reconstruction alone.

    The maps of several problems are estimated in parallel by :func:`coil_map_workers` workers, capped by the
    gadget's ``threads`` setting (0: :func:`default_threads`)."""
    timer = timer if timer is not None else StageTimer()
    with timer.stage("coil_maps"):
        pending = [item.problem for item in assembled if item.problem.coils > 1 and item.problem.maps is None]
        workers = coil_map_workers(len(pending), threads)
        if workers > 1:  # one single-threaded ESPIRiT (a BART process, or sigpy) per worker
            with ThreadPoolExecutor(workers, thread_name_prefix="coil-maps") as pool:
                list(pool.map(Problem.coil_maps, pending))
        else:
            for problem in pending:
                problem.coil_maps()
    deferred = [item for item in assembled if item.full_kspace is not None]
    if deferred:
        with timer.stage("reference"):
            for item in deferred:
                item.attach_reference()


def stream_batch_size(reconstructor: Reconstructor) -> int:
    """Slices reconstructed (and then sent) together: RGANCS's ``batch_size`` (1 on a CPU, 16 on a GPU by
    default), BART CS's ``workers`` (its slices run in parallel), otherwise 1."""
    for name in ("batch_size", "workers"):
        value = getattr(reconstructor, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
    return 1


def stream_exam(
    assembled: Sequence[Assembled],
    reconstructor: Reconstructor,
    settings: GadgetSettings,
    timer: StageTimer | None = None,
    batch_size: int | None = None,
) -> Iterator[list[ismrmrd.Image]]:
    """Reconstruct the exam batch by batch and yield each batch's encoded images as soon as they are ready.

    Batches are consecutive problems in exam order, ``batch_size`` (default :func:`stream_batch_size`) at a
    time, so a caller can send one batch before the next is reconstructed. Images, their order, numbering
    (``image_index`` = problem index + 1, ``settings.series_index``) and meta are those of
    :func:`reconstruct_exam`. With ``settings.send_reference`` the fully sampled reference image follows
    each image, as series ``SERIES_INDEX["reference"]``. ``timer`` accumulates the reconstruction stage
    (``RECON_STAGE[method]``), ``metrics`` and ``encode`` over the batches; nothing the caller does while a
    batch is yielded (sending) is counted in them.
    """
    timer = timer if timer is not None else StageTimer()
    stage = RECON_STAGE.get(settings.method, settings.method)
    size = max(1, int(batch_size or stream_batch_size(reconstructor)))
    with timer.stage(stage):  # e.g. one network adapted to the whole exam (adapt_scope "exam")
        reconstructor = reconstructor.for_exam([a.problem for a in assembled])
    for start in range(0, len(assembled), size):
        chunk = assembled[start : start + size]
        with timer.stage(stage):
            results = reconstructor.reconstruct_batch([a.problem for a in chunk])
        with timer.stage("metrics"):
            metas = [_result_meta(item, result) for item, result in zip(chunk, results, strict=True)]
        with timer.stage("encode"):
            images = _encode(chunk, results, metas, settings, first_index=start + 1)
        yield images
    log.info("%s: %d slices in %.2f s", settings.method, len(assembled), timer.seconds(stage))


def reconstruct_exam(
    assembled: Sequence[Assembled],
    reconstructor: Reconstructor,
    settings: GadgetSettings,
    timer: StageTimer | None = None,
) -> list[ismrmrd.Image]:
    """Reconstruct every problem and encode ISMRMRD images (with SNR/SSIM when a reference exists).

    The whole exam at once: every batch of :func:`stream_exam`, in order. ``timer`` gets the reconstruction
    stage (``RECON_STAGE[method]``), ``metrics`` and ``encode``.
    """
    return [image for batch in stream_exam(assembled, reconstructor, settings, timer) for image in batch]


def _encode(
    chunk: Sequence[Assembled],
    results: Sequence[Result],
    metas: Sequence[dict[str, Any]],
    settings: GadgetSettings,
    first_index: int,
) -> list[ismrmrd.Image]:
    images: list[ismrmrd.Image] = []
    for offset, (item, result, meta) in enumerate(zip(chunk, results, metas, strict=True)):
        index = first_index + offset
        images.append(
            make_image(
                replace(result, meta=meta),
                item.geometry,
                series_index=settings.series_index,
                image_index=index,
                complex_output=settings.complex_output,
            )
        )
        ref = item.problem.reference
        if settings.send_reference and ref is not None:
            reference = Result(image=ref, meta={"method": "reference", "acceleration": 1.0})
            images.append(
                make_image(
                    reference,
                    item.geometry,
                    series_index=SERIES_INDEX["reference"],
                    image_index=index,
                    complex_output=settings.complex_output,
                )
            )
    return images


def _result_meta(item: Assembled, result: Result) -> dict[str, Any]:
    meta = dict(result.meta)
    meta["retrospective"] = item.retrospective
    ref = item.problem.reference
    if ref is not None:
        meta["snr_db"] = snr_db(ref, result.image)
        meta["ssim"] = ssim(ref, result.image)
    return meta


def stamp_timings(images: Iterable[ismrmrd.Image], timer: StageTimer, exclude: Iterable[str] = ("send",)) -> None:
    """Add the stage seconds known so far (``Stage...Seconds``) to every image's meta.

    When streaming, each batch is stamped just before it is sent: its images carry the stages up to and
    including their own batch (reconstruction, metrics and encode summed over the batches done so far),
    never later ones. ``send`` is left out by default: while streaming it would hold only the earlier
    batches' sending; the gadget logs the exam's total instead.
    """
    skip = {meta_name(name) for name in exclude}
    entries = {name: value for name, value in timer.meta().items() if name not in skip}
    for image in images:
        for name, value in entries.items():
            image.meta[name] = value
