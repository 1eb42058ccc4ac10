"""Scanner-like training data: mask mixtures, coil-map family, correlated noise, maps from each example's ACS,
config keys, the bundle's record of it, and a short cg training run that learns on multi-coil examples."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ellipse_slices
from scipy import ndimage

from recon_plugin.errors import InvalidInputError, MaskSpecError
from recon_plugin.masks import fully_sampled_centre
from recon_plugin.model import load_bundle
from recon_plugin.physics import fft2c
from recon_plugin.simulate import birdcage_coil_maps, normalise_maps, smooth_phase
from training.config import config_from_dict
from training.datasets import ImageArraySlices
from training.datasets.scanner_sim import (
    CoilModel,
    MaskSpec,
    ScannerSimulation,
    contrast_remap,
    correlated_noise,
    draw_mask,
    kspace_taper,
    parse_mixture,
    real_maps_from_kspace,
)
from training.errors import TrainingConfigError
from training.loop import Trainer

SIZE = 48


def textured_slices(n: int, size: int = SIZE) -> np.ndarray:
    """Ellipses with a smooth texture, so that reconstructions have edges and detail to recover."""
    base = ellipse_slices(n, size, seed=5)
    yy, xx = np.mgrid[:size, :size] / size
    return (base * (1 + 0.3 * np.sin(9 * xx + 4 * yy))).astype(np.float32)


def simulation(**kw) -> ScannerSimulation:
    defaults = {"masks": parse_mixture(["poisson:3-4", "uniform:2-3"]), "coils": CoilModel(coil_range=(4, 6))}
    return ScannerSimulation(**{**defaults, **kw})


# ---------------------------------------------------------------- masks
def test_mixture_entries_parse_and_bad_ones_are_named():
    assert MaskSpec.parse("radial:4-8") == MaskSpec("radial", 4.0, 8.0)
    assert MaskSpec.parse(" Uniform : 3 ") == MaskSpec("uniform", 3.0, 3.0)
    assert str(MaskSpec.parse("lines:3-6")) == "lines:3-6"
    for bad in ("radial", "spiral:4", "radial:8-4", "radial:0.5", "poisson:x"):
        with pytest.raises(MaskSpecError):
            MaskSpec.parse(bad)
    with pytest.raises(MaskSpecError):
        parse_mixture([])


def test_draw_mask_covers_the_mixture_reproducibly():
    specs = parse_mixture(["radial:4-8", "poisson:4-8", "lines:3-6", "uniform:2-4"])
    draws = [draw_mask(specs, (64, 64), np.random.default_rng(s)) for s in range(40)]
    again = [draw_mask(specs, (64, 64), np.random.default_rng(s)) for s in range(40)]
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(draws, again, strict=True))
    families = {info["family"] for _, info in draws}
    assert families == {"radial", "poisson", "lines", "uniform"}
    for mask, info in draws:
        assert fully_sampled_centre(mask) >= 8  # coil maps can always be calibrated
        if info["family"] == "uniform":
            assert info["acceleration"] in (2.0, 3.0, 4.0)
            assert 8 <= info["calib"] <= 48
        else:
            lo, hi = {"lines": (3, 6)}.get(info["family"], (4, 8))
            assert lo <= info["acceleration"] <= hi
            assert mask.size / mask.sum() == pytest.approx(info["acceleration"], rel=0.1)


# ---------------------------------------------------------------- coils and noise
def test_birdcage_draws_follow_the_coil_range_and_are_normalised():
    model = CoilModel(coil_range=(4, 8))
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(12):
        kind, coils, index = model.draw_kind(rng)
        assert kind == "birdcage" and index == -1
        counts.add(coils)
        maps = model.draw_maps(kind, coils, index, (40, 40), rng)
        assert maps.shape == (coils, 40, 40)
        assert np.allclose((np.abs(maps) ** 2).sum(0), 1, atol=1e-4)
    assert counts <= set(range(4, 9)) and len(counts) >= 3


def test_real_maps_are_resampled_augmented_and_normalised(tmp_path: Path):
    maps = birdcage_coil_maps((64, 80), 6)
    image = textured_slices(1, 64)[0][:, :64]
    k = fft2c(maps[:, :, :64] * image[None]).astype(np.complex64)
    np.save(tmp_path / "coil_k.npy", k)
    real = real_maps_from_kspace(tmp_path / "coil_k.npy")
    assert real.shape == (6, 64, 64)
    model = CoilModel(real_maps=[real], real_fraction=1.0)
    rng = np.random.default_rng(1)
    kind, coils, index = model.draw_kind(rng)
    assert (kind, coils, index) == ("real", 6, 0)
    a = model.draw_maps(kind, coils, index, (SIZE, SIZE), rng)
    b = model.draw_maps(kind, coils, index, (SIZE, SIZE), rng)
    assert a.shape == b.shape == (6, SIZE, SIZE)
    assert np.allclose((np.abs(a) ** 2).sum(0), 1, atol=1e-4)
    assert np.abs(a - b).mean() > 0.01  # flips, rotations and shifts differ per draw
    np.save(tmp_path / "real_image.npy", image.astype(np.float32))
    with pytest.raises(Exception, match="coils >= 2"):
        real_maps_from_kspace(tmp_path / "real_image.npy")


def test_correlated_noise_has_the_drawn_covariance():
    rng = np.random.default_rng(3)
    noise, psi = correlated_noise((4, 256, 256), 0.1, rng)
    empirical = np.cov(noise.reshape(4, -1))
    assert np.allclose(empirical, psi, atol=0.0015)
    assert np.abs(psi - np.diag(np.diag(psi))).max() > 1e-4  # the coils are correlated
    assert np.sqrt(np.real(np.trace(psi)) / 4) == pytest.approx(0.1)
    assert not np.allclose(np.diag(psi), np.diag(psi)[0])  # per-coil gains differ


def test_normalise_maps():
    maps = normalise_maps(np.random.default_rng(0).standard_normal((3, 5, 5)).astype(np.complex64))
    assert np.allclose((np.abs(maps) ** 2).sum(0), 1, atol=1e-5)


# ---------------------------------------------------------------- examples
def test_examples_use_maps_estimated_from_their_own_acs():
    ds = ImageArraySlices(textured_slices(4), scanner=simulation(noise_range=(0.0, 0.0)), seed=2, augment=False)
    batch = ds.batch([0, 1])
    draws = ds.last_draws
    assert len(draws) == 2 and all(d["maps"] == "birdcage" and 4 <= d["coils"] <= 6 for d in draws)
    coils = draws[0]["coils"]
    assert batch.y.shape == (2, coils, SIZE, SIZE) and batch.op.coils == coils
    true = birdcage_coil_maps((SIZE, SIZE), coils)
    assert not np.allclose(batch.op.maps[0].numpy(), true, atol=1e-2)  # estimated, not the true maps
    # the reference is the noise-free data combined with those maps: it explains the measurements
    residual = (batch.op.forward(batch.x) - batch.y).norm() / batch.y.norm()
    assert float(residual) < 0.1


def test_examples_are_seeded_and_noise_is_added():
    one = ImageArraySlices(textured_slices(4), scanner=simulation(), seed=7).batch([0, 1])
    two = ImageArraySlices(textured_slices(4), scanner=simulation(), seed=7).batch([0, 1])
    assert torch.equal(one.y, two.y) and torch.equal(one.x, two.x)
    clean = ImageArraySlices(textured_slices(4), scanner=simulation(noise_range=(0.0, 0.0)), seed=7)
    noisy = ImageArraySlices(textured_slices(4), scanner=simulation(noise_range=(0.2, 0.2)), seed=7)
    bc, bn = clean.batch([0]), noisy.batch([0])
    assert noisy.last_draws[0]["noise"] == pytest.approx(0.2)
    assert float((bn.op.forward(bn.x) - bn.y).norm()) > 2 * float((bc.op.forward(bc.x) - bc.y).norm())


def test_single_coil_draws_have_no_maps():
    sim = simulation(coils=CoilModel(coil_range=(4, 6), single_coil_fraction=1.0))
    batch = ImageArraySlices(textured_slices(3), scanner=sim, seed=0).batch([0, 1])
    assert batch.op.coils == 1 and batch.op.maps is None


def _outer_share(img: np.ndarray) -> float:
    """Share of ``img``'s k-space energy beyond a quarter of the matrix from the centre."""
    power = np.abs(fft2c(img)) ** 2
    ny, nx = img.shape
    r = np.hypot((np.arange(ny)[:, None] - ny // 2) / ny, (np.arange(nx)[None, :] - nx // 2) / nx)
    return float(power[r >= 0.25].sum() / power.sum())


def test_kspace_taper_smooths_and_keeps_the_centre():
    img = textured_slices(1)[0].astype(np.complex64)
    wide, narrow = kspace_taper(img, 0.6), kspace_taper(img, 0.15)
    assert _outer_share(narrow) < _outer_share(wide) < _outer_share(img)
    centre = (SIZE // 2, SIZE // 2)
    assert fft2c(narrow)[centre] == pytest.approx(fft2c(img)[centre], rel=1e-5)


def test_smoothed_draws_follow_the_fraction_and_explain_their_data():
    images = textured_slices(4)
    plain = ImageArraySlices(images, scanner=simulation(noise_range=(0.0, 0.0)), seed=3, augment=False)
    off = ImageArraySlices(
        images, scanner=simulation(noise_range=(0.0, 0.0), smooth_fraction=0.0), seed=3, augment=False
    )
    a, b = plain.batch([0, 1, 2]), off.batch([0, 1, 2])
    assert torch.equal(a.y, b.y) and all(d["smooth"] is None for d in off.last_draws)  # 0: nothing drawn
    on = ImageArraySlices(
        images,
        scanner=simulation(noise_range=(0.0, 0.0), smooth_fraction=1.0, smooth_range=(0.15, 0.2)),
        seed=3,
        augment=False,
    )
    s = on.batch([0, 1, 2])
    assert all(0.15 <= d["smooth"] <= 0.2 for d in on.last_draws)
    for smooth, sharp in zip(s.x.numpy(), a.x.numpy(), strict=True):
        assert _outer_share(smooth) < 0.5 * _outer_share(sharp)
    residual = (s.op.forward(s.x) - s.y).norm() / s.y.norm()  # the smoothed image is what was measured
    assert float(residual) < 0.1
    with pytest.raises(InvalidInputError, match="smooth_range"):
        simulation(smooth_fraction=0.5, smooth_range=(0.0, 0.2))


def test_contrast_remap_keeps_phase_zero_and_peak_and_can_reorder_tissues():
    rng = np.random.default_rng(0)
    mag = np.array([[0.0, 0.2, 0.5, 1.0]])
    img = (mag * np.exp(1j * rng.uniform(-3, 3, mag.shape))).astype(np.complex64)
    out = contrast_remap(img, 2.0, 0.0, 1.0, 0.0)  # a plain power curve
    np.testing.assert_allclose(np.abs(out), [[0.0, 0.04, 0.25, 1.0]], atol=1e-6)
    keep = mag > 0
    np.testing.assert_allclose(np.angle(out[keep]), np.angle(img[keep]), atol=1e-5)
    rippled = np.abs(contrast_remap(img, 1.0, 0.5, 1.0, 0.0))  # m (1 + 0.5 sin(2 pi m)) / 1.5
    assert rippled[0, 0] == 0 and rippled[0, 3] == pytest.approx(1.0 / 1.5, rel=1e-5)
    assert rippled[0, 1] > 0 and rippled[0, 2] == pytest.approx(0.5 / 1.5, rel=1e-5)
    order = np.abs(contrast_remap(img, 1.0, 0.9, 0.75, 0.0))  # strong ripple: 0.5 ends above 1.0
    assert order[0, 2] > order[0, 3]
    for gamma, ripple in ((0.0, 0.1), (1.0, 1.0), (1.0, -0.1)):
        with pytest.raises(InvalidInputError):
            contrast_remap(img, gamma, ripple, 1.0, 0.0)
    assert not contrast_remap(np.zeros((2, 2), np.complex64), 2.0, 0.3, 1.0, 0.0).any()


def test_contrast_draws_follow_the_fraction_and_explain_their_data():
    images = textured_slices(4)
    quiet = {"noise_range": (0.0, 0.0)}
    plain = ImageArraySlices(images, scanner=simulation(**quiet), seed=3, augment=False)
    off = ImageArraySlices(images, scanner=simulation(**quiet, contrast_fraction=0.0), seed=3, augment=False)
    a, b = plain.batch([0, 1, 2]), off.batch([0, 1, 2])
    assert torch.equal(a.y, b.y) and not any(d["contrast"] for d in off.last_draws)  # 0: nothing drawn
    on = ImageArraySlices(
        images, scanner=simulation(**quiet, contrast_fraction=1.0, contrast_gamma=(2.0, 3.0)), seed=3, augment=False
    )
    c = on.batch([0, 1, 2])
    assert all(d["contrast"] for d in on.last_draws)
    for remapped, plain_x in zip(c.x.numpy(), a.x.numpy(), strict=True):
        assert not np.allclose(np.abs(remapped), np.abs(plain_x), rtol=0.05, atol=0.05)
    residual = (c.op.forward(c.x) - c.y).norm() / c.y.norm()  # the remapped image is what was measured
    assert float(residual) < 0.1
    with pytest.raises(InvalidInputError, match="contrast_gamma"):
        simulation(contrast_fraction=0.5, contrast_gamma=(0.0, 2.0))
    with pytest.raises(InvalidInputError, match="contrast_fraction"):
        simulation(contrast_fraction=1.5)


def _realness(x: np.ndarray) -> float:
    """|sum x^2| / sum |x|^2 over the object: 1 for an image that is real up to one global phase."""
    v = x[np.abs(x) > 0.1 * np.abs(x).max()]
    return float(np.abs((v**2).sum()) / (np.abs(v) ** 2).sum())


def test_phase_draws_follow_the_fraction_and_explain_their_data():
    images = textured_slices(4).astype(np.complex64)  # complex slices that are real: the SIAT slices nearly are
    quiet = {"noise_range": (0.0, 0.0)}
    plain = ImageArraySlices(images, scanner=simulation(**quiet), seed=3, augment=False)
    off = ImageArraySlices(images, scanner=simulation(**quiet, phase_fraction=0.0), seed=3, augment=False)
    a, b = plain.batch([0, 1, 2]), off.batch([0, 1, 2])
    assert torch.equal(a.y, b.y) and not any(d["phase"] for d in off.last_draws)  # 0: nothing drawn
    assert all(_realness(x) > 0.9 for x in a.x.numpy())
    on = ImageArraySlices(images, scanner=simulation(**quiet, phase_fraction=1.0), seed=3, augment=False)
    p = on.batch([0, 1, 2])
    assert all(d["phase"] for d in on.last_draws)
    for turned, plain_x in zip(p.x.numpy(), a.x.numpy(), strict=True):
        assert _realness(turned) < 0.8  # the phase varies over the object now
        np.testing.assert_allclose(np.abs(turned), np.abs(plain_x), rtol=0.05, atol=0.02 * np.abs(plain_x).max())
    residual = (p.op.forward(p.x) - p.y).norm() / p.y.norm()  # the phased image is what was measured
    assert float(residual) < 0.1
    half = ImageArraySlices(images, scanner=simulation(**quiet, phase_fraction=0.5), seed=3, augment=False)
    drawn: list[bool] = []
    for _ in range(20):
        half.batch([0, 1])
        drawn += [d["phase"] for d in half.last_draws]
    assert 8 <= sum(drawn) <= 32  # about half of 40
    for bad in ({"phase_fraction": 1.5}, {"phase_radians": 0.0}, {"phase_radians": float("nan")}):
        with pytest.raises(InvalidInputError, match="phase_"):
            simulation(**bad)


def _phase_roughness(phase: np.ndarray, sigma: float = 8.0) -> float:
    """RMS of the phase left after a Gaussian blur of the unit phasor (radians): how much it varies within sigma."""
    z = np.exp(1j * phase)
    blurred = ndimage.gaussian_filter(z.real, sigma) + 1j * ndimage.gaussian_filter(z.imag, sigma)
    return float(np.sqrt(np.mean(np.angle(z * np.conj(blurred)) ** 2)))


def test_finer_phase_grids_vary_on_finer_scales_and_one_grid_keeps_the_draws():
    rng = np.random.default_rng(0)
    rough = {g: np.mean([_phase_roughness(smooth_phase((128, 128), rng, grid=g)) for _ in range(6)]) for g in (4, 16)}
    assert rough[16] > 2 * rough[4]  # a 16x16 grid varies within 8 pixels, a 4x4 one hardly
    for grid in (4, 16):
        assert np.abs(smooth_phase((96, 64), np.random.default_rng(1), 2.0, grid=grid)).max() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="grid"):
        smooth_phase((32, 32), rng, grid=1)
    images = textured_slices(4).astype(np.complex64)
    quiet = {"noise_range": (0.0, 0.0), "phase_fraction": 1.0}
    default = ImageArraySlices(images, scanner=simulation(**quiet), seed=3, augment=False)
    one = ImageArraySlices(images, scanner=simulation(**quiet, phase_grids=(4,)), seed=3, augment=False)
    assert torch.equal(default.batch([0, 1]).y, one.batch([0, 1]).y)  # the single-scale phase, same draws
    mixed = ImageArraySlices(images, scanner=simulation(**quiet, phase_grids=(4, 16)), seed=3, augment=False)
    assert not torch.equal(default.batch([0, 1]).y, mixed.batch([0, 1]).y)
    for bad in ((), (1,), (4, 2.5)):
        with pytest.raises(InvalidInputError, match="phase_grids"):
            simulation(phase_grids=bad)


# ---------------------------------------------------------------- config, bundle, learning
def scanner_raw(path: Path, out: Path, **data) -> dict:
    return {
        "model": {
            "copies": 3,
            "blocks": 1,
            "features": 12,
            "data_consistency": "cg",
            "cg_iterations": 2,
            "init": "cg_sense",
            "init_iterations": 4,
        },
        "data": {
            "path": str(path),
            "train_range": [0, 10],
            "val_range": [10, 12],
            "simulation": "scanner",
            "mask_mixture": ["poisson:4-5", "uniform:4"],
            "uniform_calib": [12, 16],
            "coil_range": [4, 6],
            "noise_range": [0.002, 0.01],
            "seed": 1,
            **data,
        },
        "loss": {"eta": 1.0, "fidelity_weight": 0.0},
        "optim": {"lr": 6e-3, "batch_size": 2, "steps": 50, "schedule": "cosine"},
        "run": {
            "out": str(out),
            "checkpoint_every": 0,
            "validate_every": 50,
            "log_every": 1,
            "progress": False,
            "device": "cpu",
            "seed": 0,
        },
    }


def test_scanner_config_keys_are_checked(tmp_path: Path):
    path = tmp_path / "s.npy"
    np.save(path, textured_slices(12))
    cfg = config_from_dict(scanner_raw(path, tmp_path / "run"))
    assert cfg.data.noise_range == [0.002, 0.01] and cfg.model.data_consistency == "cg"
    for data, key in (
        ({"mask_mixture": ["spiral:4"]}, "[data].mask_mixture"),
        ({"coil_range": [1, 4]}, "[data].coil_range"),
        ({"noise_range": [0.1, 0.01]}, "[data].noise_range"),
        ({"simulation": "perfect"}, "[data].simulation"),
        ({"real_map_fraction": 1.5}, "[data].real_map_fraction"),
        ({"smooth_fraction": -0.1}, "[data].smooth_fraction"),
        ({"smooth_range": [0.5, 0.2]}, "[data].smooth_range"),
        ({"smooth_range": [0.0, 0.2]}, "[data].smooth_range"),
        ({"contrast_fraction": 1.1}, "[data].contrast_fraction"),
        ({"contrast_gamma": [2.0, 0.5]}, "[data].contrast_gamma"),
        ({"contrast_gamma": [0.0, 0.5]}, "[data].contrast_gamma"),
        ({"phase_fraction": 2.0}, "[data].phase_fraction"),
        ({"phase_radians": -1.0}, "[data].phase_radians"),
        ({"phase_grids": [4, 1]}, "[data].phase_grids"),
        ({"phase_grids": []}, "[data].phase_grids"),
    ):
        with pytest.raises(TrainingConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
            config_from_dict(scanner_raw(path, tmp_path / "run", **data))
    raw = scanner_raw(path, tmp_path / "run", simulation="simple")
    with pytest.raises(TrainingConfigError, match="only used with simulation"):
        config_from_dict(raw)
    for key in ("smooth_fraction", "contrast_fraction", "phase_fraction"):
        raw = scanner_raw(path, tmp_path / "run", simulation="simple")
        for k in ("mask_mixture", "uniform_calib", "coil_range", "noise_range"):
            raw["data"].pop(k, None)
        raw["data"][key] = 0.5
        with pytest.raises(TrainingConfigError, match=rf"\[data\]\.{key}.*only used with simulation"):
            config_from_dict(raw)


def test_cg_model_learns_on_multicoil_examples(tmp_path: Path):
    """A short CPU run: the loss falls and validation SNR rises above zero-filled and above the untrained model."""
    torch.set_num_threads(1)
    path = tmp_path / "s.npy"
    np.save(path, textured_slices(12))
    trainer = Trainer(config_from_dict(scanner_raw(path, tmp_path / "run")))
    before = trainer.validate()
    after = trainer.fit()
    with open(tmp_path / "run" / "log.csv", newline="") as fh:
        losses = [float(r["loss_g"]) for r in csv.DictReader(fh) if r["kind"] == "train"]
    assert len(losses) == 50
    assert np.mean(losses[-8:]) < 0.85 * np.mean(losses[:8])
    assert after["snr_db"] > after["zero_filled_snr_db"] + 1.5
    assert after["snr_db"] > before["snr_db"] + 2
    sidecar = load_bundle(tmp_path / "run" / "bundle").sidecar
    sim = sidecar["training_data"]["scanner_simulation"]
    assert sim["masks"] == ["poisson:4-5", "uniform:4"] and sim["coil_range"] == [4, 6]
    assert sim["maps_used_by_model"].startswith("ESPIRiT")
    assert sidecar["mask"]["family"] == "mixture" and sidecar["model"]["data_consistency"] == "cg"
    from training.model_card import write_model_card

    card = write_model_card(tmp_path / "run" / "bundle", data_terms="synthetic").read_text()
    assert "mixture poisson:4-5, uniform:4" in card and "cg (2 CG steps per copy)" in card
