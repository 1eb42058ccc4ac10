"""BART runner and the BART CS reconstructors: files, conventions, quality, errors, batching."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import crandn

from recon_plugin import bart
from recon_plugin.coils import sense_combine
from recon_plugin.errors import (
    BartFailedError,
    BartNotFoundError,
    BartTimeoutError,
    CoilMapError,
    InvalidInputError,
)
from recon_plugin.masks import make_mask
from recon_plugin.metrics import snr_db
from recon_plugin.physics import fft2c, ifft2c
from recon_plugin.problem import Problem
from recon_plugin.reconstructors import ZeroFilled
from recon_plugin.reconstructors.bart_cs import BartCS, from_bart, normalisation_scale, to_bart
from recon_plugin.simulate import simulate_problem, simulated_coil_maps, with_smooth_phase


def _bart_missing_reason() -> str | None:
    try:
        bart.find_bart()
    except BartNotFoundError as exc:
        return f"BART not installed: {exc}"
    return None


_MISSING = _bart_missing_reason()
needs_bart = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def phantom(rng: np.random.Generator, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Piecewise-constant ellipses with a smooth phase and one bright point."""
    ny, nx = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    img = ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1).astype(np.float32)
    img -= 0.5 * ((yy / 0.3) ** 2 + ((xx - 0.2) / 0.2) ** 2 < 1)
    img += 0.3 * (((yy + 0.4) / 0.15) ** 2 + ((xx + 0.3) / 0.1) ** 2 < 1)
    return with_smooth_phase(img, rng)


def radial_mask(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return make_mask("radial", shape, 5.0, seed=seed, calib=12).mask


# --------------------------------------------------------------------------- .cfl files (no BART needed)


@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 1, 3), (5, 3, 1, 2), (1, 1, 1, 1, 3)])
def test_cfl_round_trip(tmp_path, rng, shape):
    a = crandn(rng, *shape)
    bart.write_cfl(tmp_path / "a", a)
    back = bart.read_cfl(tmp_path / "a")
    trimmed = list(shape)
    while len(trimmed) > 1 and trimmed[-1] == 1:
        trimmed.pop()
    assert back.dtype == np.complex64 and back.shape == tuple(trimmed)
    assert np.array_equal(back.reshape(shape), a)


def test_cfl_is_column_major_with_text_header(tmp_path, rng):
    a = crandn(rng, 3, 5)
    bart.write_cfl(tmp_path / "a.cfl", a)  # a suffix is ignored
    lines = (tmp_path / "a.hdr").read_text().splitlines()
    assert lines[0] == "# Dimensions"
    assert lines[1].split() == ["3", "5"] + ["1"] * 14
    raw = np.fromfile(tmp_path / "a.cfl", dtype=np.complex64)
    assert np.array_equal(raw, a.ravel(order="F"))  # x (dim 0) runs fastest
    (tmp_path / "b.hdr").write_text("# Dimensions\n2 3 1 1 \n")
    a[:2, :3].ravel(order="F").tofile(tmp_path / "b.cfl")
    assert np.array_equal(bart.read_cfl(tmp_path / "b"), a[:2, :3])


def test_cfl_corrupt_files_are_named_errors(tmp_path, rng):
    bart.write_cfl(tmp_path / "a", crandn(rng, 4, 4))
    (tmp_path / "a.cfl").write_bytes(b"\0" * 24)
    with pytest.raises(InvalidInputError, match="header says"):
        bart.read_cfl(tmp_path / "a")
    (tmp_path / "a.hdr").write_text("nonsense\n")
    with pytest.raises(InvalidInputError, match="Dimensions"):
        bart.read_cfl(tmp_path / "a")
    with pytest.raises(InvalidInputError, match="cannot read"):
        bart.read_cfl(tmp_path / "missing")


def test_layout_round_trip(rng):
    k = crandn(rng, 3, 5, 7)
    b = to_bart(k)
    assert b.shape == (7, 5, 1, 3)
    assert np.array_equal(from_bart(b, 5, 7), k)


# --------------------------------------------------------------------------- finding BART


def test_bart_is_installed_in_ci():
    """CI installs BART (README setup): the BART tests must run there, not skip silently."""
    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI (CI=true)")
    if shutil.which("bart") is None and not os.environ.get("TOOLBOX_PATH"):
        pytest.fail("BART is missing in CI (CI=true): the setup must run `apt-get install bart`")
    bart.find_bart()


def test_missing_bart_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TOOLBOX_PATH", str(empty))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BartNotFoundError, match="apt-get install bart"):
        bart.find_bart()
    with pytest.raises(BartNotFoundError, match="TOOLBOX_PATH"):
        BartCS("wavelet")
    monkeypatch.delenv("TOOLBOX_PATH")
    with pytest.raises(BartNotFoundError, match="apt-get install bart"):
        BartCS("tv")


@needs_bart
def test_toolbox_path_is_used(tmp_path, monkeypatch):
    real = bart.find_bart()
    (tmp_path / "bart").symlink_to(real)
    monkeypatch.setenv("TOOLBOX_PATH", str(tmp_path))
    assert bart.find_bart() == tmp_path / "bart"
    assert bart.bart_version().startswith("v")


@needs_bart
def test_environment_of_bart_processes():
    env = bart.bart_env(threads=3)
    assert env["OMP_NUM_THREADS"] == "3"
    assert env["MALLOC_MMAP_THRESHOLD_"] == "67108864" and env["MALLOC_TRIM_THRESHOLD_"] == "268435456"
    assert bart.bart_env()["OMP_NUM_THREADS"] == "1"


# --------------------------------------------------------------------------- conventions


@needs_bart
@pytest.mark.parametrize("shape", [(32, 24), (31, 25), (30, 22)])
def test_bart_fft_matches_fft2c(rng, shape):
    x = crandn(rng, *shape)
    (k,) = bart.run_arrays(["fft", "-u", 3, "x", "k"], {"x": to_bart(x)}, ["k"])
    assert np.allclose(from_bart(k, *shape)[0], fft2c(x), atol=1e-5)
    (back,) = bart.run_arrays(["fft", "-u", "-i", 3, "k", "x"], {"k": to_bart(fft2c(x))}, ["x"])
    assert np.allclose(from_bart(back, *shape)[0], x, atol=1e-5)


@needs_bart
@pytest.mark.parametrize("shape", [(48, 40), (47, 41), (46, 43), (45, 50)])  # every size mod 4 on both axes
@pytest.mark.parametrize("regulariser", ["wavelet", "tv"])
def test_pics_is_pixel_aligned_with_ifft2c(rng, shape, regulariser):
    """Fully sampled, tiny lambda: BART's image is ifft2c(k) (same grid, same phase) for even and odd sizes."""
    x = 0.1 * phantom(rng, shape)
    peak = (shape[0] // 3, shape[1] // 2 + 3)
    x[peak] = 5.0
    problem = Problem(kspace=fft2c(x), mask=np.ones(shape, bool))
    result = BartCS(regulariser, lam=1e-7, iterations=30).reconstruct(problem)
    assert np.unravel_index(np.abs(result.image).argmax(), shape) == peak
    # ADMM (TV) converges more slowly in 30 CG iterations than FISTA; a one-pixel shift would be ~0 dB.
    tolerance = 1e-3 if regulariser == "wavelet" else 3e-2
    assert snr_db(x, result.image) > -20 * np.log10(tolerance)
    err = np.linalg.norm(result.image - ifft2c(problem.kspace[0])) / np.linalg.norm(x)
    assert err < tolerance  # complex, not only the magnitude: no shift, flip or phase
    assert result.meta["dc_residual"] < tolerance


@needs_bart
@pytest.mark.parametrize("shape", [(40, 36), (39, 35)])
def test_ecalib_maps_are_on_our_grid(rng, shape):
    """ESPIRiT maps from BART match sharp band-limited true maps without a shift (up to a phase per pixel)."""
    ks = np.zeros((4, *shape), np.complex64)
    cy, cx = shape[0] // 2, shape[1] // 2
    ks[:, cy - 2 : cy + 3, cx - 2 : cx + 3] = crandn(rng, 4, 5, 5)
    true = ifft2c(ks)
    true /= np.sqrt((np.abs(true) ** 2).sum(0))
    image = (1 + 0.2 * rng.standard_normal(shape)).astype(np.complex64)
    problem = Problem(kspace=fft2c(true * image), mask=np.ones(shape, bool))
    maps, source = BartCS("wavelet").coil_maps(problem)
    assert source == "espirit" and maps.shape == (4, *shape)

    def coherence(m):
        return float(np.abs((np.conj(maps) * m).sum(0)).mean())

    aligned = coherence(true)
    assert aligned > 0.99
    for shift in [(1, 0), (-1, 0), (0, 1), (0, -1)]:
        assert coherence(np.roll(true, shift, (1, 2))) < aligned - 0.02


# --------------------------------------------------------------------------- quality


@needs_bart
@pytest.mark.parametrize("coils", [1, 4])
@pytest.mark.parametrize("regulariser", ["wavelet", "tv"])
def test_cs_beats_zero_filled(rng, regulariser, coils):
    shape = (64, 64)
    x = phantom(rng, shape)
    maps = simulated_coil_maps(shape, coils) if coils > 1 else None
    problem = simulate_problem(x, radial_mask(shape), maps, meta={"slice": 7})
    zero_filled = snr_db(x, ZeroFilled().reconstruct(problem).image)
    result = BartCS(regulariser, lam=3e-3).reconstruct(problem)
    assert result.image.shape == shape and result.image.dtype == np.complex64
    assert snr_db(x, result.image) > zero_filled + 4
    meta = result.meta
    assert meta["method"] == {"wavelet": "cs_wavelet", "tv": "cs_tv"}[regulariser]
    assert meta["slice"] == 7 and meta["lambda"] == 3e-3 and meta["iterations"] == 300
    assert meta["maps"] == ("given" if coils > 1 else "ones")
    assert meta["normalisation"]["scale"] == pytest.approx(normalisation_scale(problem.kspace))
    assert meta["bart_version"].startswith("v") and meta["seconds"] > 0
    assert meta["acceleration"] == pytest.approx(problem.acceleration)
    assert 0 < meta["dc_residual"] < 0.1


@needs_bart
@pytest.mark.parametrize("regulariser", ["wavelet", "tv"])
def test_multicoil_with_bart_espirit_maps(rng, regulariser):
    shape = (64, 64)
    x = phantom(rng, shape)
    true_maps = simulated_coil_maps(shape, 4)
    full = fft2c(true_maps * x)
    problem = Problem(kspace=full, mask=radial_mask(shape))
    recon = BartCS(regulariser, lam=3e-3)
    maps, source = recon.coil_maps(problem)
    assert source == "espirit" and problem.maps is maps  # estimated once, shared with every method
    reference = sense_combine(full, maps)
    zero_filled = snr_db(reference, sense_combine(problem.kspace, maps))
    result = recon.reconstruct(problem)
    assert result.meta["maps"] == "espirit"
    assert snr_db(reference, result.image) > zero_filled + 4


@needs_bart
def test_normalisation_is_undone(rng):
    """Lambda refers to normalised data: scaling k-space scales the image and nothing else."""
    shape = (48, 48)
    problem = simulate_problem(phantom(rng, shape), radial_mask(shape))
    scaled = Problem(kspace=problem.kspace * 1e4, mask=problem.mask)
    recon = BartCS("wavelet", lam=3e-3, iterations=50)
    a, b = recon.reconstruct(problem), recon.reconstruct(scaled)
    assert np.allclose(b.image, a.image * 1e4, rtol=0, atol=1e-3 * np.abs(b.image).max())
    assert b.meta["normalisation"]["scale"] == pytest.approx(a.meta["normalisation"]["scale"] * 1e4, rel=1e-4)


def test_default_lambdas_by_coil_count(rng, monkeypatch):
    monkeypatch.setattr(bart, "find_bart", lambda: Path("/bin/true"))
    monkeypatch.setattr(bart, "bart_version", lambda: "v0")
    from recon_plugin.reconstructors import bart_cs

    shape = (16, 16)
    single = Problem(kspace=crandn(rng, *shape), mask=np.ones(shape, bool))
    multi = Problem(kspace=crandn(rng, 2, *shape), mask=np.ones(shape, bool))
    for reg in ("wavelet", "tv"):
        recon = BartCS(reg)
        assert recon.lambda_for(single) == bart_cs.DEFAULT_LAMBDAS[(reg, "single")]
        assert recon.lambda_for(multi) == bart_cs.DEFAULT_LAMBDAS[(reg, "multi")]
        assert BartCS(reg, lam=0.5).lambda_for(multi) == 0.5
    with pytest.raises(InvalidInputError, match="regulariser"):
        BartCS("l1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="lambda"):
        BartCS("tv", lam=-1.0)


# --------------------------------------------------------------------------- errors, batching


@needs_bart
def test_bart_failure_carries_bart_message(rng):
    shape = (32, 32)
    problem = simulate_problem(phantom(rng, shape), radial_mask(shape))
    with pytest.raises(BartFailedError, match="unrecognized option '--no-such-option'") as info:
        BartCS("wavelet", extra_args=["--no-such-option"]).reconstruct(problem)
    assert "killed by SIGABRT" in str(info.value) or "exit code" in str(info.value)
    # Inconsistent inputs: BART's own assertion text comes through.
    with pytest.raises(BartFailedError, match="pics"):
        bart.run_arrays(
            ["pics", "-R", "W:3:0:0.01", "k", "s", "o"], {"k": np.ones((4, 4, 1, 1)), "s": np.ones((5, 4, 1, 1))}, ["o"]
        )


@needs_bart
def test_corrupt_input_file_is_bart_failure(tmp_path, rng):
    bart.write_cfl(tmp_path / "k", crandn(rng, 4, 4))
    (tmp_path / "k.cfl").write_bytes(b"\0" * 24)
    with pytest.raises(BartFailedError, match="ERROR"):
        bart.run(["fft", "-u", 3, "k", "o"], tmp_path)


@needs_bart
def test_time_limit_is_bart_timeout(rng):
    shape = (64, 64)
    problem = simulate_problem(phantom(rng, shape), radial_mask(shape))
    with pytest.raises(BartTimeoutError, match="did not finish within"):
        BartCS("wavelet", iterations=1_000_000, time_limit=0.3).reconstruct(problem)


@needs_bart
def test_too_small_calibration_is_coil_map_error(rng):
    shape = (32, 32)
    mask = make_mask("radial", shape, 5.0, seed=1, calib=4).mask.copy()
    mask[shape[0] // 2 - 3, shape[1] // 2 - 3] = False  # no 8x8 fully sampled centre
    problem = Problem(kspace=fft2c(simulated_coil_maps(shape, 4) * phantom(rng, shape)), mask=mask)
    with pytest.raises(CoilMapError, match="supply maps"):
        BartCS("wavelet").reconstruct(problem)


@needs_bart
def test_batch_equals_per_slice(rng):
    shape = (40, 40)
    problems = []
    for i, coils in enumerate([1, 4, 1]):
        maps = simulated_coil_maps(shape, coils) if coils > 1 else None
        problems.append(simulate_problem(phantom(rng, shape), radial_mask(shape, seed=i), maps, meta={"slice": i}))
    recon = BartCS("tv", lam=3e-3, iterations=60, workers=2)
    batch = recon.reconstruct_batch(problems)
    assert [r.meta["slice"] for r in batch] == [0, 1, 2]
    for problem, result in zip(problems, batch, strict=True):
        single = recon.reconstruct(problem)
        assert np.array_equal(single.image, result.image)
        assert single.meta["lambda"] == result.meta["lambda"]
