"""Small, realistic ISMRMRD raw files simulated from a magnitude volume.

A magnitude object on the *encoded* grid (readout oversampled, last axis) gets a smooth
synthetic phase, is multiplied by simulated receive-coil sensitivities, Fourier transformed
with the project's centred orthonormal FFT and corrupted with correlated complex Gaussian
receiver noise (a fixed, non-diagonal coil covariance, so prewhitening matters). The result
is written as ISMRMRD acquisitions: noise-measurement readouts first, then the imaging
readouts, in raster order or in a mask's view order (prospective undersampling).

Array conventions (ISMRMRD order, readout last):

* 3D: object / truth ``[nz, ny, nx]``, k-space ``[coils, nz, ny, nx_enc]``, coil maps
  ``[coils, nz, ny, nx]``; ky = ``kspace_encode_step_1``, kz = ``kspace_encode_step_2``. A
  ky-kz plane at readout position ``i`` is ``truth[:, :, i].T`` (``[ny, nz]``, the layout of
  :func:`recon_plugin.masks.radial_view_ordered` masks).
* 2D multi-slice: the same with the slice index in place of z (``idx.slice``).
* k-space centre: readout sample ``nx_enc // 2``, ky ``ny // 2``, kz ``nz // 2``.
* Geometry in the ISMRMRD patient frame (LPS, mm): axial orientation, read = (1, 0, 0)
  (right to left), phase = (0, 1, 0) (anterior to posterior), slice = (0, 0, 1) (feet to head).

``truth`` is the noise-free complex object on the reconstruction grid (oversampling cropped);
whitening with the noise scans, inverse FFT, cropping and SENSE combination with ``maps``
(:func:`combine_fully_sampled`) recover it up to the receiver noise.

The sample files in ``sample_data/raw`` are made by ``scripts/make_sample_raw.py`` with
:func:`make_brain3d` and :func:`make_brain2d`; the (large, not bundled) reference exam of the
speed target by :func:`make_reference_exam` (``recon-plugin reference-exam``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import ismrmrd
import numpy as np
from ismrmrd import xsd
from ismrmrd.hdf5 import acquisition_dtype, acquisition_header_dtype
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from .errors import InvalidInputError, ShapeMismatchError
from .masks import MaskResult, radial_view_ordered
from .physics import fft2c, fftc, ifft2c, ifftc
from .sample_data import COLIN_FILE
from .simulate import with_smooth_phase

__all__ = [
    "BRAIN2D",
    "BRAIN3D",
    "DEBIAN_COLIN",
    "REFERENCE_EXAM",
    "Brain2DRecipe",
    "Brain3DRecipe",
    "RawScan",
    "ReferenceExamRecipe",
    "ScanGeometry",
    "SimulatedScan",
    "build_raw",
    "coil_sensitivities",
    "colin_axial_block",
    "colin_npz_volume",
    "colin_volume_block",
    "combine_fully_sampled",
    "correlated_noise",
    "make_acquisitions",
    "make_brain2d",
    "make_brain3d",
    "make_header",
    "make_reference_exam",
    "noise_covariance",
    "simulate_2d",
    "simulate_3d",
    "smooth_phase_3d",
    "write_ismrmrd",
]

DEBIAN_COLIN = Path("/usr/share/mricron/templates/ch2.nii.gz")
"""Colin27 T1 template as installed by the Debian package ``mricron-data``."""

READ_DIR = (1.0, 0.0, 0.0)
PHASE_DIR = (0.0, 1.0, 0.0)
SLICE_DIR = (0.0, 0.0, 1.0)
LARMOR_HZ_PER_T = 42.577478e6
TICK_S = 2.5e-3  # acquisition_time_stamp unit (2.5 ms, as Siemens-converted data)
SOURCE = "Colin27 T1 template (Debian mricron-data, ch2.nii.gz, BSD-3-Clause); simulated coils, phase and noise"


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class ScanGeometry:
    """Where the scan sits: reconstruction matrix, voxel size and slice (or slab) centres.

    ``recon_matrix`` is ``(nx, ny, nz)`` (``nz = 1`` for 2D); ``voxel_mm`` is ``(dx, dy, dz)``
    (``dz`` is the slice thickness for 2D); ``centres_mm`` holds one LPS position per slice
    (one for 3D: the slab centre). The readout is oversampled by ``oversampling``.
    """

    recon_matrix: tuple[int, int, int]
    voxel_mm: tuple[float, float, float]
    centres_mm: tuple[tuple[float, float, float], ...]
    dims: int
    oversampling: int = 2

    @property
    def encoded_nx(self) -> int:
        """Readout samples per line (``oversampling * nx``)."""
        return self.oversampling * self.recon_matrix[0]

    @property
    def slices(self) -> int:
        """Number of slices (1 for 3D)."""
        return len(self.centres_mm)

    @property
    def recon_fov_mm(self) -> tuple[float, float, float]:
        """Reconstructed field of view (x, y, z) in mm; z is the slab or slice thickness."""
        return tuple(float(n * d) for n, d in zip(self.recon_matrix, self.voxel_mm, strict=True))  # type: ignore[return-value]

    def voxel_positions(self, slice_index: int = 0) -> np.ndarray:
        """LPS positions (mm) of the encoded grid, ``[nz, ny, nx_enc, 3]`` (3D) or ``[1, ny, nx_enc, 3]``."""
        _, ny, nz = self.recon_matrix
        dx, dy, dz = self.voxel_mm
        nxe = self.encoded_nx
        ix = (np.arange(nxe) - nxe // 2) * dx
        iy = (np.arange(ny) - ny // 2) * dy
        iz = (np.arange(nz) - nz // 2) * dz if self.dims == 3 else np.zeros(1)
        zz, yy, xx = np.meshgrid(iz, iy, ix, indexing="ij")
        centre = np.asarray(self.centres_mm[slice_index], dtype=np.float64)
        return centre + xx[..., None] * READ_DIR + yy[..., None] * PHASE_DIR + zz[..., None] * SLICE_DIR


# --------------------------------------------------------------------------- simulation pieces


def smooth_phase_3d(shape: Sequence[int], rng: np.random.Generator, max_radians: float = np.pi) -> np.ndarray:
    """Smooth random 3D phase in [-max_radians, max_radians]: coarse noise, upsampled, blurred."""
    shape = tuple(int(s) for s in shape)
    coarse = rng.standard_normal((4, 4, 4))
    field_ = zoom(coarse, [s / 4 for s in shape], order=3, grid_mode=True, mode="grid-mirror")
    field_ = field_[: shape[0], : shape[1], : shape[2]]
    field_ = gaussian_filter(field_, sigma=max(shape) / 16)
    field_ = field_ / (np.abs(field_).max() or 1.0)
    return (max_radians * field_).astype(np.float32)


def coil_sensitivities(
    points_mm: np.ndarray,
    coils: int,
    centre_mm: Sequence[float],
    *,
    ring_radius_mm: float = 130.0,
    width_mm: float = 100.0,
    z_offset_mm: float = 40.0,
) -> np.ndarray:
    """Smooth complex receive sensitivities at ``points_mm`` ``[..., 3]`` (LPS), ``sum |S|^2 = 1``.

    Coil ``c`` sits on a ring of radius ``ring_radius_mm`` in the axial plane around
    ``centre_mm``, at angle ``2 pi (c + 1/2) / coils``, shifted by ``+-z_offset_mm`` along the
    head-foot axis (alternating, when ``coils >= 4``) so sensitivities also vary along z.
    Magnitude falls off as a Gaussian of the distance (``width_mm``); each coil has its own
    constant phase plus a gentle linear phase. Returns complex64 ``[coils, ...]``.
    """
    if coils < 1:
        raise InvalidInputError(f"coils must be >= 1, got {coils}")
    pts = np.asarray(points_mm, dtype=np.float64) - np.asarray(centre_mm, dtype=np.float64)
    maps = []
    for c in range(coils):
        angle = 2 * math.pi * (c + 0.5) / coils
        dz = z_offset_mm * (1 if c % 2 == 0 else -1) if coils >= 4 else 0.0
        pos = np.array([ring_radius_mm * math.cos(angle), ring_radius_mm * math.sin(angle), dz])
        dist2 = ((pts - pos) ** 2).sum(-1)
        direction = pos / np.linalg.norm(pos)
        phase = angle + 0.5 * (pts @ direction) / ring_radius_mm
        maps.append(np.exp(-dist2 / (2 * width_mm**2)) * np.exp(1j * phase))
    stack = np.stack(maps)
    stack /= np.sqrt((np.abs(stack) ** 2).sum(0, keepdims=True))
    return stack.astype(np.complex64)


def noise_covariance(coils: int, noise_std: float = 1.0) -> np.ndarray:
    """The fixed receiver noise covariance ``Psi`` (complex128 ``[coils, coils]``, Hermitian, PD).

    ``Psi = noise_std**2 * D C D`` with per-coil standard deviations ``D = diag(0.8 .. 1.2)``
    (linearly spaced) and correlations ``C[i, j] = 0.4**|i - j| * exp(0.5j * (i - j))``
    (a complex Kac-Murdock-Szego matrix, positive definite).
    """
    if coils < 1:
        raise InvalidInputError(f"coils must be >= 1, got {coils}")
    std = np.linspace(0.8, 1.2, coils) if coils > 1 else np.ones(1)
    lag = np.arange(coils)[:, None] - np.arange(coils)[None, :]
    corr = 0.4 ** np.abs(lag) * np.exp(0.5j * lag)
    return (noise_std**2) * (std[:, None] * corr * std[None, :])


def correlated_noise(covariance: np.ndarray, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Complex Gaussian noise ``[coils, *shape]`` (complex64) with ``E[n n^H] = covariance``."""
    chol = np.linalg.cholesky(covariance)
    coils = covariance.shape[0]
    n = int(np.prod(shape))
    white = (rng.standard_normal((coils, n)) + 1j * rng.standard_normal((coils, n))) / math.sqrt(2)
    return (chol @ white).reshape(coils, *shape).astype(np.complex64)


def _crop_readout(x: np.ndarray, oversampling: int) -> np.ndarray:
    nxe = x.shape[-1]
    nx = nxe // oversampling
    start = nxe // 2 - nx // 2
    return x[..., start : start + nx]


# --------------------------------------------------------------------------- simulated scan


@dataclass(frozen=True, eq=False)
class SimulatedScan:
    """Noisy multi-coil k-space, noise readouts and the ground truth they came from.

    ``kspace`` complex64 ``[coils, nz_or_slices, ny, nx_enc]``; ``noise`` complex64
    ``[noise_scans, coils, nx_enc]``; ``truth`` complex64 ``[nz_or_slices, ny, nx]`` and
    ``maps`` complex64 ``[coils, nz_or_slices, ny, nx]`` on the reconstruction grid;
    ``noise_covariance`` the true ``Psi`` (complex128).
    """

    kspace: np.ndarray
    noise: np.ndarray
    truth: np.ndarray
    maps: np.ndarray
    noise_covariance: np.ndarray
    geometry: ScanGeometry
    noise_std: float
    seed: int

    @property
    def coils(self) -> int:
        """Number of receive channels."""
        return int(self.kspace.shape[0])


def _check_object(magnitude: np.ndarray, oversampling: int) -> np.ndarray:
    mag = np.asarray(magnitude)
    if mag.ndim != 3:
        raise ShapeMismatchError(f"object must be [nz_or_slices, ny, nx_enc], got shape {mag.shape}")
    if mag.shape[-1] % (2 * oversampling):
        raise ShapeMismatchError(f"readout length {mag.shape[-1]} must be a multiple of {2 * oversampling}")
    if not np.isfinite(mag).all():
        raise InvalidInputError("object contains NaN or infinite values")
    return np.abs(mag).astype(np.float32)


def simulate_3d(
    magnitude: np.ndarray,
    voxel_mm: Sequence[float],
    centre_mm: Sequence[float] = (0.0, 0.0, 0.0),
    *,
    coils: int = 4,
    noise_std: float = 0.01,
    noise_scans: int = 8,
    seed: int = 0,
    oversampling: int = 2,
) -> SimulatedScan:
    """Simulate a 3D Cartesian multi-coil scan of ``magnitude`` ``[nz, ny, nx_enc]`` (encoded grid).

    The readout axis (last) spans ``oversampling`` times the reconstruction FOV; the object may
    extend into the oversampled region (as a head does), the truth is its central part.
    ``voxel_mm`` is ``(dx, dy, dz)``, ``centre_mm`` the LPS slab centre. Receiver noise per
    k-space sample has covariance ``noise_covariance(coils, noise_std)`` (in the units of
    ``magnitude``); ``noise_scans`` noise readouts are drawn with the same covariance. Seeded:
    phase, noise and noise readouts all come from ``numpy.random.default_rng(seed)``.
    """
    mag = _check_object(magnitude, oversampling)
    nz, ny, nxe = mag.shape
    geometry = ScanGeometry(
        (nxe // oversampling, ny, nz),
        tuple(float(v) for v in voxel_mm),  # type: ignore[arg-type]
        (tuple(float(v) for v in centre_mm),),  # type: ignore[arg-type]
        dims=3,
        oversampling=oversampling,
    )
    rng = np.random.default_rng(seed)
    obj = (mag * np.exp(1j * smooth_phase_3d(mag.shape, rng))).astype(np.complex64)
    maps_enc = coil_sensitivities(geometry.voxel_positions(), coils, geometry.centres_mm[0])
    kspace = fftc(fft2c(maps_enc * obj[None]), axes=(-3,)).astype(np.complex64)
    return _finish(kspace, obj, maps_enc, geometry, noise_std, noise_scans, seed, rng)


def simulate_2d(
    magnitude: np.ndarray,
    voxel_mm: Sequence[float],
    slice_centres_mm: Sequence[Sequence[float]],
    *,
    coils: int = 4,
    noise_std: float = 0.01,
    noise_scans: int = 4,
    seed: int = 0,
    oversampling: int = 2,
) -> SimulatedScan:
    """Simulate a 2D multi-slice Cartesian scan of ``magnitude`` ``[slices, ny, nx_enc]`` (encoded grid).

    ``voxel_mm`` is ``(dx, dy, slice thickness)``; ``slice_centres_mm`` one LPS centre per slice.
    One coil array (centred on the slice stack) serves every slice; each slice gets its own
    smooth phase (:func:`recon_plugin.simulate.with_smooth_phase`). Noise as in :func:`simulate_3d`.
    """
    mag = _check_object(magnitude, oversampling)
    ns, ny, nxe = mag.shape
    centres = tuple(tuple(float(v) for v in c) for c in slice_centres_mm)
    if len(centres) != ns or any(len(c) != 3 for c in centres):
        raise ShapeMismatchError(f"need one (x, y, z) centre per slice ({ns}), got {slice_centres_mm!r}")
    geometry = ScanGeometry(
        (nxe // oversampling, ny, 1),
        tuple(float(v) for v in voxel_mm),  # type: ignore[arg-type]
        centres,  # type: ignore[arg-type]
        dims=2,
        oversampling=oversampling,
    )
    rng = np.random.default_rng(seed)
    obj = np.stack([with_smooth_phase(m, rng) for m in mag])
    stack_centre = np.mean(np.asarray(centres), axis=0)
    maps_enc = np.concatenate(
        [coil_sensitivities(geometry.voxel_positions(s), coils, stack_centre) for s in range(ns)], axis=1
    )
    kspace = fft2c(maps_enc * obj[None]).astype(np.complex64)
    return _finish(kspace, obj, maps_enc, geometry, noise_std, noise_scans, seed, rng)


def _finish(
    kspace: np.ndarray,
    obj: np.ndarray,
    maps_enc: np.ndarray,
    geometry: ScanGeometry,
    noise_std: float,
    noise_scans: int,
    seed: int,
    rng: np.random.Generator,
) -> SimulatedScan:
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise InvalidInputError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if noise_scans < 1:
        raise InvalidInputError(f"noise_scans must be >= 1 (the noise readouts drive prewhitening), got {noise_scans}")
    coils = kspace.shape[0]
    unit = noise_covariance(coils)  # noise_std = 0 gives noise-free data and all-zero noise scans
    kspace = kspace + noise_std * correlated_noise(unit, kspace.shape[1:], rng)
    noise = np.moveaxis(noise_std * correlated_noise(unit, (noise_scans, geometry.encoded_nx), rng), 0, 1)
    psi = noise_covariance(coils, noise_std)
    os_ = geometry.oversampling
    return SimulatedScan(
        kspace=np.ascontiguousarray(kspace, dtype=np.complex64),
        noise=np.ascontiguousarray(noise, dtype=np.complex64),
        truth=np.ascontiguousarray(_crop_readout(obj, os_), dtype=np.complex64),
        maps=np.ascontiguousarray(_crop_readout(maps_enc, os_), dtype=np.complex64),
        noise_covariance=psi,
        geometry=geometry,
        noise_std=float(noise_std),
        seed=int(seed),
    )


def combine_fully_sampled(
    kspace: np.ndarray, noise: np.ndarray, maps: np.ndarray, dims: int, oversampling: int = 2
) -> np.ndarray:
    """Reference inverse of fully sampled data: whiten, inverse FFT, crop, SENSE-combine.

    ``kspace`` ``[coils, nz_or_slices, ny, nx_enc]``, ``noise`` ``[n, coils, samples]`` (the noise
    readouts; their sample covariance gives the whitening matrix), ``maps`` on the recon grid.
    Returns complex64 ``[nz_or_slices, ny, nx]``.
    """
    if dims not in (2, 3):
        raise InvalidInputError(f"dims must be 2 (multi-slice) or 3, got {dims!r}")
    coils = kspace.shape[0]
    samples = np.moveaxis(noise, 1, 0).reshape(coils, -1)
    psi = samples @ samples.conj().T / samples.shape[1]
    whiten = np.linalg.inv(np.linalg.cholesky(psi))
    kw = np.tensordot(whiten, kspace, axes=1)
    img = ifft2c(kw)
    if dims == 3:
        img = ifftc(img, axes=(-3,))
    img = _crop_readout(img, oversampling)
    maps_w = np.tensordot(whiten, maps, axes=1)
    num = (maps_w.conj() * img).sum(0)
    den = (np.abs(maps_w) ** 2).sum(0)
    return (num / np.maximum(den, np.finfo(np.float32).tiny)).astype(np.complex64)


# --------------------------------------------------------------------------- ISMRMRD header


def _limit(maximum: int, center: int = 0) -> xsd.limitType:
    return xsd.limitType(minimum=0, maximum=int(maximum), center=int(center))


def make_header(
    sim: SimulatedScan,
    *,
    mask: MaskResult | None = None,
    measurement_id: str = "recon_plugin_sample",
    protocol_name: str = "sample",
    field_strength_t: float = 3.0,
    tr_ms: float = 7.5,
    te_ms: float = 3.0,
    flip_deg: float = 8.0,
) -> xsd.ismrmrdHeader:
    """ISMRMRD XML header for ``sim`` (one Cartesian encoding; mask settings in userParameters)."""
    g = sim.geometry
    nx, ny, nz = g.recon_matrix
    fx, fy, fz = g.recon_fov_mm
    os_ = g.oversampling
    limits = xsd.encodingLimitsType(
        kspace_encoding_step_1=_limit(ny - 1, ny // 2),
        kspace_encoding_step_2=_limit(nz - 1, nz // 2) if g.dims == 3 else _limit(0),
        average=_limit(0),
        slice=_limit(g.slices - 1),
        contrast=_limit(0),
        phase=_limit(0),
        repetition=_limit(0),
        set=_limit(0),
        segment=_limit(0),
    )
    encoding = xsd.encodingType(
        encodedSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=g.encoded_nx, y=ny, z=nz),
            fieldOfView_mm=xsd.fieldOfViewMm(x=os_ * fx, y=fy, z=fz),
        ),
        reconSpace=xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=nx, y=ny, z=nz),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fx, y=fy, z=fz),
        ),
        encodingLimits=limits,
        trajectory=xsd.trajectoryType.CARTESIAN,
    )
    longs = [
        xsd.userParameterLongType(name="simulation_seed", value=sim.seed),
        xsd.userParameterLongType(name="noise_scans", value=int(sim.noise.shape[0])),
    ]
    doubles = [xsd.userParameterDoubleType(name="simulation_noise_std", value=sim.noise_std)]
    strings = [xsd.userParameterStringType(name="source", value=SOURCE)]
    if mask is not None:
        strings.append(xsd.userParameterStringType(name="sampling_pattern", value=mask.family))
        doubles.append(xsd.userParameterDoubleType(name="acceleration_requested", value=mask.acceleration_requested))
        longs.append(xsd.userParameterLongType(name="mask_seed", value=mask.seed))
        longs.append(xsd.userParameterLongType(name="sampled_points", value=int(mask.mask.sum())))
    return xsd.ismrmrdHeader(
        measurementInformation=xsd.measurementInformationType(
            measurementID=measurement_id,
            patientPosition=xsd.patientPositionType.HFS,
            protocolName=protocol_name,
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            systemVendor="simulated",
            systemModel="recon_plugin.sample_raw",
            systemFieldStrength_T=field_strength_t,
            relativeReceiverNoiseBandwidth=1.0,
            receiverChannels=sim.coils,
        ),
        experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=round(LARMOR_HZ_PER_T * field_strength_t)
        ),
        encoding=[encoding],
        sequenceParameters=xsd.sequenceParametersType(
            TR=[tr_ms], TE=[te_ms], flipAngle_deg=[flip_deg], sequence_type="Flash"
        ),
        userParameters=xsd.userParametersType(
            userParameterLong=longs, userParameterDouble=doubles, userParameterString=strings
        ),
    )


# --------------------------------------------------------------------------- acquisitions


@dataclass(frozen=True)
class _Readout:
    ky: int
    kz: int
    slice: int
    flags: tuple[int, ...] = field(default_factory=tuple)


def _raster_order(sim: SimulatedScan) -> list[_Readout]:
    """3D: partitions outer, lines inner. 2D: lines outer, slices inner (interleaved: even, then odd)."""
    g = sim.geometry
    ny = g.recon_matrix[1]
    out: list[_Readout] = []
    if g.dims == 3:
        nz = g.recon_matrix[2]
        for kz in range(nz):
            for ky in range(ny):
                flags = []
                if ky == 0:
                    flags.append(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1)
                if ky == ny - 1:
                    flags.append(ismrmrd.ACQ_LAST_IN_ENCODE_STEP1)
                if kz == 0 and ky == 0:
                    flags.append(ismrmrd.ACQ_FIRST_IN_ENCODE_STEP2)
                if kz == nz - 1 and ky == ny - 1:
                    flags.append(ismrmrd.ACQ_LAST_IN_ENCODE_STEP2)
                out.append(_Readout(ky, kz, 0, tuple(flags)))
        return out
    slice_order = list(range(0, g.slices, 2)) + list(range(1, g.slices, 2))
    for ky in range(ny):
        for s in slice_order:
            flags = []
            if ky == 0:
                flags += [ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1, ismrmrd.ACQ_FIRST_IN_SLICE]
            if ky == ny - 1:
                flags += [ismrmrd.ACQ_LAST_IN_ENCODE_STEP1, ismrmrd.ACQ_LAST_IN_SLICE]
            out.append(_Readout(ky, 0, s, tuple(flags)))
    return out


def _header(sim: SimulatedScan, slice_index: int, measurement_uid: int) -> ismrmrd.AcquisitionHeader:
    g = sim.geometry
    head = ismrmrd.AcquisitionHeader()
    head.version = 1
    head.measurement_uid = measurement_uid
    head.number_of_samples = g.encoded_nx
    head.available_channels = sim.coils
    head.active_channels = sim.coils
    for c in range(sim.coils):
        head.channel_mask[c // 64] |= 1 << (c % 64)
    head.center_sample = g.encoded_nx // 2
    head.sample_time_us = 2560.0 / g.encoded_nx  # 2.56 ms readout whatever the matrix
    head.position = g.centres_mm[slice_index]
    head.read_dir = READ_DIR
    head.phase_dir = PHASE_DIR
    head.slice_dir = SLICE_DIR
    head.patient_table_position = (0.0, 0.0, 0.0)
    return head


def _acquisition(head: ismrmrd.AcquisitionHeader, data: np.ndarray, flags: Sequence[int]) -> ismrmrd.Acquisition:
    acq = ismrmrd.Acquisition(head)
    acq.data[:] = data
    for f in flags:
        acq.set_flag(f)
    return acq


def make_acquisitions(
    sim: SimulatedScan,
    *,
    view_order: np.ndarray | None = None,
    measurement_uid: int = 1,
    start_time_s: float = 10 * 3600.0,
    tr_ms: float = 7.5,
) -> list[ismrmrd.Acquisition]:
    """Noise readouts, then imaging readouts in raster order or ``view_order`` (3D, ``[n, 2]`` of (ky, kz)).

    Scan counters start at 1; time stamps (2.5 ms ticks) grow by one TR per readout (2D:
    ``TR / slices`` between the slices of one line). The last readout carries
    ``ACQ_LAST_IN_MEASUREMENT``; the first and last imaging readouts of each slice carry
    ``ACQ_FIRST_IN_SLICE`` / ``ACQ_LAST_IN_SLICE`` (and the repetition flags likewise). Raster
    order also flags ``ACQ_FIRST/LAST_IN_ENCODE_STEP1`` on ky = 0 / ny - 1 of each partition
    (2D: of each slice) and, in 3D, ``ACQ_FIRST/LAST_IN_ENCODE_STEP2`` on the first / last
    readout of the partition loop; a view order has no encode-step loops, so no such flags.
    """
    g = sim.geometry
    if view_order is None:
        order = _raster_order(sim)
    else:
        if g.dims != 3:
            raise InvalidInputError("a view order is supported for 3D scans only")
        vo = np.asarray(view_order, dtype=np.int64)
        ny, nz = g.recon_matrix[1], g.recon_matrix[2]
        if vo.ndim != 2 or vo.shape[1] != 2 or (vo < 0).any() or (vo[:, 0] >= ny).any() or (vo[:, 1] >= nz).any():
            raise ShapeMismatchError(f"view order must be [n, 2] of (ky, kz) inside ({ny}, {nz}), got {vo.shape}")
        order = [_Readout(int(ky), int(kz), 0) for ky, kz in vo]
    tick0 = round(start_time_s / TICK_S)
    tr_ticks = tr_ms * 1e-3 / TICK_S
    acqs: list[ismrmrd.Acquisition] = []
    counter = 1
    for i, noise in enumerate(sim.noise):
        head = _header(sim, 0, measurement_uid)
        head.scan_counter = counter
        head.acquisition_time_stamp = tick0 + i
        acqs.append(_acquisition(head, noise, [ismrmrd.ACQ_IS_NOISE_MEASUREMENT]))
        counter += 1
    tick_data = tick0 + len(sim.noise) + 40  # 100 ms pause after the noise scan
    per_line = g.slices if g.dims == 2 else 1
    first_of_slice: dict[int, int] = {}
    last_of_slice: dict[int, int] = {}
    for n, r in enumerate(order):
        first_of_slice.setdefault(r.slice, n)
        last_of_slice[r.slice] = n
    for n, r in enumerate(order):
        head = _header(sim, r.slice, measurement_uid)
        head.scan_counter = counter
        head.acquisition_time_stamp = tick_data + math.floor(n * tr_ticks / per_line)
        head.idx.kspace_encode_step_1 = r.ky
        head.idx.kspace_encode_step_2 = r.kz
        head.idx.slice = r.slice
        flags = set(r.flags)
        if first_of_slice[r.slice] == n:
            flags.add(ismrmrd.ACQ_FIRST_IN_SLICE)
        if last_of_slice[r.slice] == n:
            flags.add(ismrmrd.ACQ_LAST_IN_SLICE)
        if n == 0:
            flags.add(ismrmrd.ACQ_FIRST_IN_REPETITION)
        if n == len(order) - 1:
            flags |= {ismrmrd.ACQ_LAST_IN_REPETITION, ismrmrd.ACQ_LAST_IN_MEASUREMENT}
        data = sim.kspace[:, r.kz if g.dims == 3 else r.slice, r.ky, :]
        acqs.append(_acquisition(head, data, sorted(flags)))
        counter += 1
    return acqs


@dataclass(frozen=True, eq=False)
class RawScan:
    """Everything one raw file holds, plus the simulation (ground truth) behind it."""

    header: xsd.ismrmrdHeader
    acquisitions: list[ismrmrd.Acquisition]
    simulation: SimulatedScan
    mask: MaskResult | None = None

    @property
    def truth(self) -> np.ndarray:
        """Noise-free complex object on the reconstruction grid."""
        return self.simulation.truth


def build_raw(
    sim: SimulatedScan,
    *,
    mask: MaskResult | None = None,
    measurement_uid: int = 1,
    measurement_id: str = "recon_plugin_sample",
    protocol_name: str = "sample",
    tr_ms: float = 7.5,
) -> RawScan:
    """Header and acquisitions for ``sim``; with ``mask`` only its (ky, kz) points, in its view order."""
    view_order = None
    if mask is not None:
        ny, nz = sim.geometry.recon_matrix[1:]
        if mask.mask.shape != (ny, nz):
            raise ShapeMismatchError(f"mask is {mask.mask.shape} but the ky-kz plane is ({ny}, {nz})")
        view_order = mask.view_order if mask.view_order is not None else np.argwhere(mask.mask)
    header = make_header(sim, mask=mask, measurement_id=measurement_id, protocol_name=protocol_name, tr_ms=tr_ms)
    acqs = make_acquisitions(sim, view_order=view_order, measurement_uid=measurement_uid, tr_ms=tr_ms)
    return RawScan(header, acqs, sim, mask)


def write_ismrmrd(path: str | Path, header: xsd.ismrmrdHeader, acquisitions: Sequence[ismrmrd.Acquisition]) -> Path:
    """Write ``header`` and ``acquisitions`` to a new ISMRMRD HDF5 file (replacing ``path``).

    The XML header goes through ``ismrmrd.Dataset.write_xml_header``; the acquisitions are
    stored in one write into the layout ``ismrmrd.Dataset.append_acquisition`` makes
    (``/dataset/data``, ``ismrmrd.hdf5.acquisition_dtype``, chunked, extendible). One write
    packs the variable-length sample arrays densely: appending readouts one by one costs a
    4 KiB HDF5 heap block each, which would double the size of files with short readouts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.unlink(missing_ok=True)
    table = np.empty(len(acquisitions), dtype=acquisition_dtype)
    for i, acq in enumerate(acquisitions):
        table[i]["head"] = np.frombuffer(acq.getHead(), dtype=acquisition_header_dtype)[0]
        table[i]["data"] = np.ascontiguousarray(acq.data, dtype=np.complex64).view(np.float32).reshape(-1)
        table[i]["traj"] = np.ascontiguousarray(acq.traj, dtype=np.float32).reshape(-1)
    dset = ismrmrd.Dataset(str(tmp), "dataset", create_if_needed=True)
    try:
        dset.write_xml_header(header.toXML("utf-8"))
    finally:
        dset.close()
    with h5py.File(tmp, "a") as f:
        f["dataset"].create_dataset("data", data=table, maxshape=(None,), chunks=True)
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- Colin27 sources


def colin_volume_block(
    nifti_path: str | Path,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
    centre_mm: Sequence[float],
) -> np.ndarray:
    """Resample the Colin27 NIfTI onto an axial LPS grid ``shape`` = (nz, ny, nx), values in [0, 1].

    Grid point ``(k, j, i)`` sits at ``centre + (i - nx//2) dx read + (j - ny//2) dy phase +
    (k - nz//2) dz slice`` (template world coordinates, RAS in the file, flipped to LPS);
    isotropic Gaussian anti-alias blur (FWHM = mean target voxel), trilinear interpolation,
    zero outside the template.
    """
    path = Path(nifti_path)
    if not path.is_file():
        raise InvalidInputError(
            f"Colin27 template {path} not found; install it with 'apt-get install mricron-data' or pass its path"
        )
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data /= data.max() or 1.0
    src_mm = float(np.mean(np.sqrt((img.affine[:3, :3] ** 2).sum(0))))
    data = gaussian_filter(data, sigma=float(np.mean(voxel_mm)) / 2.355 / src_mm)
    nz, ny, nx = (int(s) for s in shape)
    geom = ScanGeometry((nx, ny, nz), tuple(voxel_mm), (tuple(centre_mm),), dims=3, oversampling=1)  # type: ignore[arg-type]
    lps = geom.voxel_positions()
    ras = lps * np.array([-1.0, -1.0, 1.0])
    vox = np.linalg.solve(img.affine, np.concatenate([ras, np.ones((*ras.shape[:-1], 1))], -1).reshape(-1, 4).T)[:3]
    out = map_coordinates(data, vox, order=1, mode="constant", cval=0.0)
    return np.clip(out.reshape(nz, ny, nx), 0.0, 1.0).astype(np.float32)


def colin_axial_block(
    npz_path: str | Path,
    indices: Sequence[int],
    shape: Sequence[int],
    pixel_mm: float,
) -> tuple[np.ndarray, list[tuple[float, float, float]]]:
    """Axial slices from the bundled ``colin27_t1_axial.npz`` on an LPS grid ``shape`` = (ny, nx).

    Returns magnitudes ``[len(indices), ny, nx]`` in [0, 1] (rows anterior to posterior,
    columns patient right to left) and each slice's LPS centre (mm, template coordinates:
    the NIfTI origin, voxel (90, 125, 71) of the 1 mm 181 x 217 x 181 grid, is the origin).
    """
    path = Path(npz_path)
    if not path.is_file():
        raise InvalidInputError(f"sample slices {path} not found; run from a checkout of the project")
    with np.load(path) as z:
        slices = z["slices"].astype(np.float32) / 255.0
        axial = z["axial_index"]
    ny, nx = (int(s) for s in shape)
    rows, cols = slices.shape[1:]  # row r is RAS j = rows - 1 - r (anterior first); column c is RAS i
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    ii, jj = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    src_r = cy + (ii - ny // 2) * pixel_mm
    src_c = cx - (jj - nx // 2) * pixel_mm  # readout runs right -> left, RAS columns left -> right
    out, centres = [], []
    for k in indices:
        sl = gaussian_filter(slices[int(k)], sigma=pixel_mm / 2.355)
        out.append(map_coordinates(sl, [src_r, src_c], order=1, mode="constant", cval=0.0))
        # centre voxel of the npz grid in RAS mm: x = cx - 90, y = (rows-1-cy) - 125, z = axial - 71
        ras = np.array([cx - 90.0, (rows - 1 - cy) - 125.0, float(axial[int(k)]) - 71.0])
        centres.append((float(-ras[0]) + 0.0, float(-ras[1]) + 0.0, float(ras[2]) + 0.0))
    return np.clip(np.stack(out), 0.0, 1.0).astype(np.float32), centres


def colin_npz_volume(
    npz_path: str | Path,
    shape: Sequence[int],
    voxel_mm: Sequence[float],
    centre_mm: Sequence[float],
) -> np.ndarray:
    """The bundled axial slices (every 3 mm) resampled onto an axial LPS grid ``shape`` = (nz, ny, nx).

    The grid is laid out as in :func:`colin_volume_block` (no NIfTI template needed); in-plane
    Gaussian anti-alias blur (FWHM = target voxel), trilinear interpolation between the slices,
    zero outside them. Values in [0, 1].
    """
    path = Path(npz_path)
    if not path.is_file():
        raise InvalidInputError(f"sample slices {path} not found; run from a checkout of the project")
    with np.load(path) as z:
        slices = z["slices"].astype(np.float32) / 255.0
        axial = z["axial_index"].astype(np.float64)
    dx, dy, _ = (float(v) for v in voxel_mm)
    volume = gaussian_filter(slices, sigma=(0.0, dy / 2.355, dx / 2.355))
    nz, ny, nx = (int(s) for s in shape)
    geom = ScanGeometry((nx, ny, nz), tuple(voxel_mm), (tuple(centre_mm),), dims=3, oversampling=1)  # type: ignore[arg-type]
    lps = geom.voxel_positions().reshape(-1, 3)
    rows = slices.shape[1]
    # template mm (NIfTI origin at voxel (90, 125, 71)): column = 90 + RAS x, row = rows - 1 - (125 + RAS y)
    column = 90.0 - lps[:, 0]
    row = rows - 126.0 + lps[:, 1]
    plane = np.interp(lps[:, 2] + 71.0, axial, np.arange(len(axial)), left=-2.0, right=len(axial) + 1.0)
    out = map_coordinates(volume, [plane, row, column], order=1, mode="constant", cval=0.0)
    return np.clip(out.reshape(nz, ny, nx), 0.0, 1.0).astype(np.float32)


def _pad_readout(x: np.ndarray, oversampling: int = 2) -> np.ndarray:
    nx = x.shape[-1]
    nxe = oversampling * nx
    before = nxe // 2 - nx // 2
    pad = [(0, 0)] * (x.ndim - 1) + [(before, nxe - nx - before)]
    return np.pad(x, pad)


# --------------------------------------------------------------------------- the sample files


@dataclass(frozen=True)
class Brain3DRecipe:
    """How brain3d_fully_sampled.h5 and brain3d_radial5x.h5 are made (3 mm isotropic axial slab)."""

    recon_matrix: tuple[int, int, int] = (32, 80, 40)  # (x readout, y = ky, z = kz)
    voxel_mm: tuple[float, float, float] = (3.0, 3.0, 3.0)
    centre_mm: tuple[float, float, float] = (0.0, 15.0, 25.0)  # LPS: mid-line, head centre AP, Z = +25 mm
    coils: int = 4
    noise_std: float = 0.01
    noise_scans: int = 8
    seed: int = 20251
    acceleration: float = 5.0
    mask_seed: int = 5
    mask_calib: int = 12  # fully sampled centre, large enough for ESPIRiT coil maps


@dataclass(frozen=True)
class Brain2DRecipe:
    """How brain2d_multislice.h5 is made (four 3 mm axial slices, 1.75 mm in-plane)."""

    recon_matrix: tuple[int, int] = (112, 128)  # (x readout, y)
    pixel_mm: float = 1.75
    slice_thickness_mm: float = 3.0
    npz_indices: tuple[int, ...] = (4, 11, 18, 25)  # the demo's held-out slices
    coils: int = 4
    noise_std: float = 0.01
    noise_scans: int = 4
    seed: int = 20252


@dataclass(frozen=True)
class ReferenceExamRecipe:
    """The speed target's reference 3D exam: ``planes`` ky-kz planes of ``plane`` = (ky, kz), ``coils`` coils.

    ``planes`` is the readout length after oversampling removal (the file holds twice as many
    samples per readout). The field of view is fixed, so a smaller exam (tests) covers the same
    head with larger voxels. Fully sampled, raster order; replay it with a ``*_retro5x`` protocol.
    """

    planes: int = 128
    plane: tuple[int, int] = (200, 100)
    coils: int = 8
    fov_mm: tuple[float, float, float] = (154.0, 220.0, 90.0)  # readout (R-L), ky (A-P), kz (F-H)
    centre_mm: tuple[float, float, float] = (0.0, 17.0, 18.0)  # LPS; the bundled slices span Z -25 .. 62 mm
    noise_std: float = 0.01
    noise_scans: int = 16
    seed: int = 20253

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """(dx, dy, dz) in mm."""
        ny, nz = self.plane
        return (self.fov_mm[0] / self.planes, self.fov_mm[1] / ny, self.fov_mm[2] / nz)


BRAIN3D = Brain3DRecipe()
BRAIN2D = Brain2DRecipe()
REFERENCE_EXAM = ReferenceExamRecipe()


def make_brain3d(nifti_path: str | Path = DEBIAN_COLIN, recipe: Brain3DRecipe = BRAIN3D) -> tuple[RawScan, RawScan]:
    """(fully sampled, radial view-ordered 5x) 3D scans of a Colin27 slab; both share one simulation."""
    r = recipe
    nx, ny, nz = r.recon_matrix
    mag = colin_volume_block(nifti_path, (nz, ny, 2 * nx), r.voxel_mm, r.centre_mm)
    sim = simulate_3d(
        mag, r.voxel_mm, r.centre_mm, coils=r.coils, noise_std=r.noise_std, noise_scans=r.noise_scans, seed=r.seed
    )
    full = build_raw(sim, measurement_uid=301, measurement_id="brain3d_fully_sampled", protocol_name="brain3d")
    mask = radial_view_ordered((ny, nz), r.acceleration, seed=r.mask_seed, calib=r.mask_calib)
    radial = build_raw(
        sim, mask=mask, measurement_uid=302, measurement_id="brain3d_radial5x", protocol_name="brain3d_radial5x"
    )
    return full, radial


def make_brain2d(npz_path: str | Path = COLIN_FILE, recipe: Brain2DRecipe = BRAIN2D) -> RawScan:
    """Fully sampled 2D multi-slice scan of Colin27 axial slices from the bundled npz."""
    r = recipe
    nx, ny = r.recon_matrix
    mag, centres = colin_axial_block(npz_path, r.npz_indices, (ny, nx), r.pixel_mm)
    sim = simulate_2d(
        _pad_readout(mag),
        (r.pixel_mm, r.pixel_mm, r.slice_thickness_mm),
        centres,
        coils=r.coils,
        noise_std=r.noise_std,
        noise_scans=r.noise_scans,
        seed=r.seed,
    )
    return build_raw(
        sim, measurement_uid=201, measurement_id="brain2d_multislice", protocol_name="brain2d", tr_ms=250.0
    )


def make_reference_exam(recipe: ReferenceExamRecipe = REFERENCE_EXAM, npz_path: str | Path = COLIN_FILE) -> RawScan:
    """Fully sampled 3D scan of the bundled Colin27 slices with the recipe's size (default: 128 planes of
    200 x 100, 8 coils: about 330 MB of raw data). InvalidInputError for an impossible size."""
    r = recipe
    ny, nz = (int(v) for v in r.plane)
    if r.planes < 2 or r.planes % 2 or ny < 2 or nz < 2 or r.coils < 1:
        raise InvalidInputError(
            f"reference exam needs an even number of planes >= 2, a plane of at least 2 x 2 and >= 1 coil; "
            f"got {r.planes} planes of {ny} x {nz}, {r.coils} coils"
        )
    mag = colin_npz_volume(npz_path, (nz, ny, 2 * r.planes), r.voxel_mm, r.centre_mm)
    sim = simulate_3d(
        mag, r.voxel_mm, r.centre_mm, coils=r.coils, noise_std=r.noise_std, noise_scans=r.noise_scans, seed=r.seed
    )
    return build_raw(sim, measurement_uid=401, measurement_id="reference_exam", protocol_name="reference_exam")
