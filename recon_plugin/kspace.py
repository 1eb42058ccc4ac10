"""Acquisition assembly: ISMRMRD header + acquisitions -> per-slice Problems with their geometry.

Handles noise scans (prewhitening), readout oversampling, 2D multi-slice and
3D Cartesian encodings (3D: inverse FFT along the readout, then one ky-kz
problem per readout position), several slices / contrasts / repetitions /
averages, acquisitions in any order. The sampling mask is read from which
lines arrived; fully sampled data can be undersampled retrospectively, keeping
the fully sampled image as the reference.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ismrmrd
import ismrmrd.xsd
import numpy as np

from .errors import (
    EncodingError,
    InvalidInputError,
    IsmrmrdFormatError,
    MemoryLimitError,
    NonFiniteDataError,
    ShapeMismatchError,
)
from .gadget_settings import RetroSettings
from .memory import MAX_BUFFER_BYTES as _MAX_BUFFER_BYTES
from .memory import buffer_limit, format_size

if TYPE_CHECKING:  # numerics (torch) are imported where data are assembled: reading a header stays light
    from .problem import Problem

log = logging.getLogger(__name__)

Key = tuple[int, int, int]  # (slice, contrast, repetition)

#: Largest encoded matrix accepted per axis (x with readout oversampling, y, z) and in total; a header beyond
#: these is refused before any buffer is made (a 65535 x 65535 header would otherwise ask for tens of GiB).
MAX_MATRIX = (8192, 4096, 4096)
MAX_ENCODED_POINTS = 2**27
#: The slice buffers of one exam (channels x encoded matrix, complex64) never hold more (see recon_plugin.memory).
MAX_BUFFER_BYTES = _MAX_BUFFER_BYTES


def slice_buffer_bytes(encoding: EncodingInfo, coils: int) -> int:
    """Bytes of one slice's k-space buffer: channels x encoded matrix, complex64."""
    return coils * math.prod(encoding.encoded) * np.dtype(np.complex64).itemsize


def check_buffer_memory(nbytes: int, what: str) -> None:
    """Refuse ``nbytes`` of buffers, before allocating them, beyond :func:`recon_plugin.memory.buffer_limit`.

    Raises:
        MemoryLimitError: over the limit (the message says which: the machine's memory or the operator's cap).
        ValueError: ``RECON_MAX_BUFFER`` is set but is not a size.
    """
    limit, why = buffer_limit()
    if nbytes > limit:
        raise MemoryLimitError(
            f"{what} need {format_size(nbytes)}, over the {format_size(limit)} an exam's buffers may take "
            f"({why}); nothing was allocated. Reconstruct it on a machine with more memory, or raise --max-buffer / "
            "RECON_MAX_BUFFER if the memory is there"
        )


def check_header_memory(header: ismrmrd.xsd.ismrmrdHeader | bytes | str, consumers: int = 1) -> None:
    """At the header, before any gadget starts: one slice buffer per consuming gadget must fit
    (:func:`check_buffer_memory`); channels from ``receiverChannels`` (1 when not stated). A header whose
    encoding this project does not assemble (non-Cartesian...) passes: its gadgets judge it."""
    header = parse_header(header)
    try:
        encoding = EncodingInfo.from_header(header)
    except EncodingError:  # not an encoding this project assembles: the gadgets that read it judge it
        return
    info = getattr(header, "acquisitionSystemInformation", None)
    coils = int(getattr(info, "receiverChannels", None) or 1)
    nbytes = slice_buffer_bytes(encoding, coils) * max(1, consumers)
    who = f" for each of {consumers} gadgets" if consumers > 1 else ""
    check_buffer_memory(nbytes, f"one slice buffer of {coils} channels x {encoding.encoded}{who}")


def parse_header(header: ismrmrd.xsd.ismrmrdHeader | bytes | str, where: str = "header") -> ismrmrd.xsd.ismrmrdHeader:
    """Parse ISMRMRD XML (or pass a parsed header through); IsmrmrdFormatError when it is not one."""
    if isinstance(header, ismrmrd.xsd.ismrmrdHeader):
        return header
    try:
        return ismrmrd.xsd.CreateFromDocument(header)
    except Exception as exc:  # the xsd binding raises several unrelated types for bad documents
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise IsmrmrdFormatError(f"{where}: the XML header is not a valid ISMRMRD header ({first})") from exc


@dataclass(frozen=True)
class EncodingInfo:
    """What the assembly needs from the header's first encoding."""

    encoded: tuple[int, int, int]  # (x with oversampling, y, z)
    recon: tuple[int, int, int]
    encoded_fov: tuple[float, float, float]
    recon_fov: tuple[float, float, float]
    ky_center: int
    kz_center: int
    #: Inclusive (minimum, maximum) of kspace_encode_step_1 and _2 from encodingLimits (None: not stated).
    ky_limits: tuple[int, int] | None = None
    kz_limits: tuple[int, int] | None = None

    @property
    def is_3d(self) -> bool:
        """True for a 3D (ky-kz) encoding."""
        return self.encoded[2] > 1

    @classmethod
    def from_header(cls, header: ismrmrd.xsd.ismrmrdHeader) -> EncodingInfo:
        """Read the first encoding; EncodingError when it is missing, non-Cartesian or has no limits."""
        if not header.encoding:
            raise EncodingError("the ISMRMRD header has no <encoding>; cannot reconstruct")
        enc = header.encoding[0]
        trajectory = getattr(enc.trajectory, "value", enc.trajectory)
        if trajectory != "cartesian":
            raise EncodingError(f"trajectory '{trajectory}' is not supported: this plugin reconstructs Cartesian data")
        limits = enc.encodingLimits
        if limits is None or limits.kspace_encoding_step_1 is None:
            raise EncodingError("the header's encodingLimits lack kspace_encoding_step_1; cannot place the lines")
        try:
            e, r = enc.encodedSpace, enc.reconSpace
            encoded = (int(e.matrixSize.x), int(e.matrixSize.y), int(e.matrixSize.z or 1))
            recon = (int(r.matrixSize.x), int(r.matrixSize.y), int(r.matrixSize.z or 1))
            efov = (float(e.fieldOfView_mm.x), float(e.fieldOfView_mm.y), float(e.fieldOfView_mm.z))
            rfov = (float(r.fieldOfView_mm.x), float(r.fieldOfView_mm.y), float(r.fieldOfView_mm.z))
        except (AttributeError, TypeError) as exc:
            raise EncodingError(f"the header's encoded/recon space is incomplete: {exc}") from exc
        if min(encoded) < 1 or min(recon) < 1 or recon[0] > encoded[0]:
            raise EncodingError(f"invalid matrices: encoded {encoded}, recon {recon}")
        too_big = [f"{axis}={n}" for axis, n, top in zip("xyz", encoded, MAX_MATRIX, strict=True) if n > top]
        if too_big or math.prod(encoded) > MAX_ENCODED_POINTS:
            raise EncodingError(
                f"the header's encoded matrix {encoded[0]}x{encoded[1]}x{encoded[2]} is beyond what this plugin "
                f"reconstructs (at most {MAX_MATRIX[0]}x{MAX_MATRIX[1]}x{MAX_MATRIX[2]} and {MAX_ENCODED_POINTS:,} "
                f"points{'; too large: ' + ', '.join(too_big) if too_big else ''}); refused before allocating"
            )
        ky_center = limits.kspace_encoding_step_1.center
        step2 = limits.kspace_encoding_step_2
        if encoded[2] > 1 and step2 is None:
            raise EncodingError("3D encoding without kspace_encoding_step_2 limits")
        kz_center = step2.center if step2 is not None and step2.center is not None else encoded[2] // 2
        return cls(
            encoded=encoded,
            recon=recon,
            encoded_fov=efov,
            recon_fov=rfov,
            ky_center=int(ky_center if ky_center is not None else encoded[1] // 2),
            kz_center=int(kz_center),
            ky_limits=_limits(limits.kspace_encoding_step_1),
            kz_limits=_limits(step2),
        )


def _limits(limit: object) -> tuple[int, int] | None:
    """(minimum, maximum) of an ISMRMRD limitType, None when absent or incomplete."""
    low, high = getattr(limit, "minimum", None), getattr(limit, "maximum", None)
    return None if low is None or high is None else (int(low), int(high))


@dataclass(frozen=True)
class SliceGeometry:
    """Where an image lies: ISMRMRD position and directions of its columns / rows / normal."""

    position: tuple[float, float, float]
    read_dir: tuple[float, float, float]  # direction of increasing column index
    phase_dir: tuple[float, float, float]  # direction of increasing row index
    slice_dir: tuple[float, float, float]
    patient_table_position: tuple[float, float, float]
    fov: tuple[float, float, float]  # (columns mm, rows mm, thickness mm)
    slice: int
    contrast: int
    repetition: int
    partition: int = -1  # readout position of a 3D plane, -1 for 2D
    acquisition_time_stamp: int = 0
    measurement_uid: int = 0


@dataclass
class Assembled:
    """One reconstruction problem with its geometry; ``retrospective`` when its mask was applied by us.

    ``full_kspace`` holds the fully sampled k-space while the reference is deferred
    (``Assembler.problems(defer_reference=True)``) until :meth:`attach_reference`.
    """

    problem: Problem
    geometry: SliceGeometry
    retrospective: bool = False
    full_kspace: np.ndarray | None = field(default=None, repr=False)

    def attach_reference(self) -> None:
        """Compute a deferred reference (estimating the coil maps if needed) and drop the full k-space."""
        if self.full_kspace is not None:
            self.problem.reference = _reference(self.full_kspace, self.problem)
            self.full_kspace = None


@dataclass
class _Buffer:
    data: np.ndarray  # [coils, ny, nz, nx_enc]
    counts: np.ndarray  # [ny, nz] acquisitions summed per line
    first: ismrmrd.AcquisitionHeader
    centre: ismrmrd.AcquisitionHeader | None = None


@dataclass
class Assembler:
    """Collects acquisitions of one exam and turns them into Problems."""

    header: ismrmrd.xsd.ismrmrdHeader | bytes | str
    retro: RetroSettings | None = None
    calib_width: int = 24
    noise: list[np.ndarray] = field(default_factory=list)
    _buffers: dict[Key, _Buffer] = field(default_factory=dict)
    _coils: int | None = None
    _noise_dwell: float | None = None
    _data_dwell: float | None = None

    def __post_init__(self) -> None:
        self.header = parse_header(self.header)
        self.encoding = EncodingInfo.from_header(self.header)

    @property
    def acquisitions(self) -> int:
        """Number of imaging acquisitions received (noise scans excluded)."""
        return int(sum(b.counts.sum() for b in self._buffers.values()))

    def add(self, acq: ismrmrd.Acquisition) -> None:
        """Take one acquisition: a noise scan, or a k-space line placed in its slice's buffer."""
        data = np.asarray(acq.data)
        if data.ndim != 2:
            raise IsmrmrdFormatError(f"acquisition {acq.scan_counter} has data of shape {data.shape}")
        if not np.isfinite(data).all():
            raise NonFiniteDataError(
                f"acquisition {acq.scan_counter} (line {acq.idx.kspace_encode_step_1}) contains NaN or "
                "infinite samples; the raw data are corrupt"
            )
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            self._check_coils(data.shape[0], acq)
            self.noise.append(data.astype(np.complex64))
            self._noise_dwell = float(acq.sample_time_us) or None
            return
        skip = (ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA, ismrmrd.ACQ_IS_DUMMYSCAN_DATA)
        if any(acq.is_flag_set(f) for f in skip):
            return
        if acq.trajectory_dimensions:
            raise EncodingError(
                f"acquisition {acq.scan_counter} carries a {acq.trajectory_dimensions}-D trajectory: "
                "non-Cartesian data are not supported"
            )
        self._check_coils(data.shape[0], acq)
        self._check_encoding(acq, data.shape[1])
        self._data_dwell = float(acq.sample_time_us) or self._data_dwell
        nx_enc, ny, nz = self.encoding.encoded
        row = acq.idx.kspace_encode_step_1 - self.encoding.ky_center + ny // 2
        col = (acq.idx.kspace_encode_step_2 - self.encoding.kz_center + nz // 2) if nz > 1 else 0
        if not (0 <= row < ny and 0 <= col < nz):
            raise EncodingError(
                f"acquisition {acq.scan_counter} has encode steps ({acq.idx.kspace_encode_step_1}, "
                f"{acq.idx.kspace_encode_step_2}) outside the {ny}x{nz} encoded matrix"
            )
        samples = data.shape[1]
        start = nx_enc // 2 - int(acq.center_sample)
        if start < 0 or start + samples > nx_enc:
            raise EncodingError(
                f"acquisition {acq.scan_counter} has {samples} samples centred at {acq.center_sample}, which "
                f"does not fit the encoded readout of {nx_enc}"
            )
        key = (int(acq.idx.slice), int(acq.idx.contrast), int(acq.idx.repetition))
        buf = self._buffers.get(key)
        if buf is None:
            self._check_memory(data.shape[0])
            buf = _Buffer(
                data=np.zeros((data.shape[0], ny, nz, nx_enc), np.complex64),
                counts=np.zeros((ny, nz), np.int32),
                first=acq.getHead(),
            )
            self._buffers[key] = buf
        buf.data[:, row, col, start : start + samples] += data
        buf.counts[row, col] += 1
        if row == ny // 2 and col == nz // 2:
            buf.centre = acq.getHead()

    def _check_encoding(self, acq: ismrmrd.Acquisition, samples: int) -> None:
        """The line agrees with the header: centre sample inside its data, encode steps inside the limits, kz = 0
        in a 2D exam. EncodingError otherwise (such a line would be placed somewhere plausible but wrong)."""
        enc = self.encoding
        ky, kz = int(acq.idx.kspace_encode_step_1), int(acq.idx.kspace_encode_step_2)
        if not 0 <= int(acq.center_sample) < samples:
            raise EncodingError(
                f"acquisition {acq.scan_counter} has {samples} samples but its centre sample is "
                f"{acq.center_sample}: the k-space centre lies outside its data"
            )
        if not enc.is_3d and kz != 0:
            raise EncodingError(
                f"acquisition {acq.scan_counter} has kspace_encode_step_2 = {kz} in a 2D exam (the header's encoded "
                "matrix has z = 1); is the header's encoding wrong?"
            )
        for name, step, limits in (("1", ky, enc.ky_limits), ("2", kz, enc.kz_limits if enc.is_3d else None)):
            if limits is not None and not limits[0] <= step <= limits[1]:
                raise EncodingError(
                    f"acquisition {acq.scan_counter} has kspace_encode_step_{name} = {step}, outside the header's "
                    f"encodingLimits [{limits[0]}, {limits[1]}]"
                )

    def _check_memory(self, coils: int) -> None:
        """Refuse a new slice buffer (header matrix x channels) before allocating it when the exam's buffers
        would exceed what this machine can give (:func:`check_buffer_memory`)."""
        count = len(self._buffers) + 1
        total = slice_buffer_bytes(self.encoding, coils) * count
        check_buffer_memory(total, f"{count} slice buffer(s) of {coils} channels x {self.encoding.encoded}")

    def _check_coils(self, coils: int, acq: ismrmrd.Acquisition) -> None:
        if self._coils is None:
            self._coils = coils
        elif coils != self._coils:
            raise IsmrmrdFormatError(
                f"acquisition {acq.scan_counter} has {coils} channels, earlier ones had {self._coils}"
            )

    def whitening_matrix(self) -> np.ndarray | None:
        """Prewhitening matrix W (data <- W data) from the noise scans, or None without noise scans.

        The noise covariance is scaled by the ratio of noise to data dwell time
        (noise variance grows with bandwidth); W = inverse Cholesky factor, so
        whitened noise has unit variance and no coil correlation.
        """
        if not self.noise:
            return None
        samples = np.concatenate(self.noise, axis=1)
        cov = samples @ samples.conj().T / samples.shape[1]
        if self._noise_dwell and self._data_dwell:
            cov = cov * (self._noise_dwell / self._data_dwell)
        try:
            chol = np.linalg.cholesky(cov.astype(np.complex128))
        except np.linalg.LinAlgError as exc:
            raise InvalidInputError(
                "the noise scans give a singular coil noise covariance (a dead or duplicated channel?)"
            ) from exc
        return np.linalg.inv(chol).astype(np.complex64)

    def problems(self, *, defer_reference: bool = False) -> list[Assembled]:
        """All Problems of the exam, ordered by (repetition, contrast, slice, partition).

        A retrospective reference needs the coil maps; with ``defer_reference`` neither is computed
        here: call :meth:`Assembled.attach_reference` on each item (after timing the coil maps apart).
        """
        if not self._buffers:
            raise IsmrmrdFormatError("no imaging acquisitions arrived; nothing to reconstruct")
        nz = self.encoding.encoded[2]
        if nz > 1 and all(int((b.counts.sum(0) > 0).sum()) == 1 for b in self._buffers.values()):
            raise EncodingError(
                f"the header declares a 3D encoding with {nz} partitions (z), but every line arrived in one "
                "partition: a 2D exam with a 3D header? Fix the header's encodedSpace/encodingLimits"
            )
        whiten = self.whitening_matrix()
        out: list[Assembled] = []
        for key in sorted(self._buffers, key=lambda k: (k[2], k[1], k[0])):
            out.extend(self._problems_for(key, self._buffers[key], whiten, defer_reference))
        return out

    def _problems_for(self, key: Key, buf: _Buffer, whiten: np.ndarray | None, defer: bool) -> list[Assembled]:
        from .physics import fftc  # torch: imported when data are assembled, not when a header is read
        from .problem import Problem

        sampled = buf.counts > 0
        data = buf.data / np.maximum(buf.counts, 1)[None, :, :, None]  # average repeated lines
        if whiten is not None:
            data = np.einsum("ij,j...->i...", whiten, data).astype(np.complex64)
        hybrid = _remove_oversampling(data, self.encoding.recon[0])  # [coils, ny, nz, nx] image along x
        nx = hybrid.shape[-1]
        head = buf.centre or buf.first
        if self.encoding.is_3d:
            planes = [(hybrid[:, :, :, x], x) for x in range(nx)]  # k-space [coils, ky, kz]
            mask = sampled
        else:
            kspace_2d = fftc(hybrid[:, :, 0, :], axes=(-1,))  # [coils, ky, kx]
            planes = [(kspace_2d, -1)]
            mask = np.repeat(sampled[:, :1], nx, axis=1)
        full = bool(sampled.all())
        mask, retro = self._retro_mask(mask, full)
        out = []
        for kspace, partition in planes:
            meta = {"slice": key[0], "contrast": key[1], "repetition": key[2]}
            if partition >= 0:
                meta["partition"] = partition
            problem = Problem(kspace=kspace * mask, mask=mask, meta=meta, calib_width=self.calib_width)
            item = Assembled(problem, self._geometry(head, key, partition, nx), retrospective=retro)
            if retro:
                item.full_kspace = kspace
                if not defer:
                    item.attach_reference()
            out.append(item)
        return out

    def _retro_mask(self, sampled: np.ndarray, full: bool) -> tuple[np.ndarray, bool]:
        from .masks import make_mask

        if self.retro is None:
            return sampled, False
        if not full:
            log.warning(
                "retrospective undersampling asked for, but the data are already undersampled: "
                "reconstructing the lines that arrived, without a reference"
            )
            return sampled, False
        shape = sampled.shape
        if self.retro.mask_file is not None:
            mask = np.load(self.retro.mask_file, allow_pickle=False)
            if mask.shape != shape:
                raise ShapeMismatchError(f"mask file {self.retro.mask_file} is {mask.shape}, the data need {shape}")
            return mask.astype(bool), True
        family = self.retro.family or ("radial" if self.encoding.is_3d else "lines")
        calib = min(self.retro.calib, *shape) if family != "lines" else self.retro.calib
        result = make_mask(family, shape, self.retro.acceleration, seed=self.retro.seed, calib=calib)
        return np.array(result.mask), True

    def _geometry(self, head: ismrmrd.AcquisitionHeader, key: Key, partition: int, nx: int) -> SliceGeometry:
        read, phase, slc = (tuple(float(v) for v in d) for d in (head.read_dir, head.phase_dir, head.slice_dir))
        position = np.array(head.position, dtype=np.float64)
        rfov, efov = self.encoding.recon_fov, self.encoding.encoded_fov
        if partition < 0:
            cols, rows = read, phase
            fov = (rfov[0], efov[1], rfov[2])
        else:  # a ky-kz plane at one readout position: columns along kz (slice dir), rows along ky
            dx = rfov[0] / nx
            position = position + (partition - nx // 2) * dx * np.array(read)
            cols, rows = slc, phase
            fov = (efov[2], efov[1], dx)
        normal = tuple(float(v) for v in np.cross(cols, rows))
        return SliceGeometry(
            position=tuple(float(v) for v in position),  # type: ignore[arg-type]
            read_dir=cols,  # type: ignore[arg-type]
            phase_dir=rows,  # type: ignore[arg-type]
            slice_dir=normal,  # type: ignore[arg-type]
            patient_table_position=tuple(float(v) for v in head.patient_table_position),  # type: ignore[arg-type]
            fov=fov,
            slice=key[0] if partition < 0 else partition,
            contrast=key[1],
            repetition=key[2],
            partition=partition,
            acquisition_time_stamp=int(head.acquisition_time_stamp),
            measurement_uid=int(head.measurement_uid),
        )


def _remove_oversampling(data: np.ndarray, nx_recon: int) -> np.ndarray:
    """Inverse FFT along the readout (last axis) and keep the central ``nx_recon`` samples."""
    from .physics import ifftc

    image = ifftc(data, axes=(-1,))
    start = image.shape[-1] // 2 - nx_recon // 2
    return np.ascontiguousarray(image[..., start : start + nx_recon])


def _reference(full_kspace: np.ndarray, problem: Problem) -> np.ndarray:
    """Fully sampled image, coil-combined with the same maps the reconstruction uses."""
    from .coils import sense_combine
    from .physics import ifft2c

    maps = problem.coil_maps()
    if maps is None:
        return ifft2c(full_kspace[0])
    return sense_combine(full_kspace, maps)
