"""Sampling masks: acceleration, calibration centre, density, reproducibility, view order, files."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from recon_plugin.errors import MaskSpecError
from recon_plugin.masks import (
    GOLDEN_ANGLE,
    MaskResult,
    make_mask,
    poisson_disc,
    radial_view_ordered,
    variable_density_lines,
    write_mask_files,
)

FAMILIES = ("radial", "poisson", "lines")
CASES = [((200, 100), 5.0), ((256, 256), 4.0), ((256, 256), 8.0), ((128, 64), 3.0)]


@functools.cache
def cached(family: str, shape: tuple[int, int], acceleration: float, seed: int = 0) -> MaskResult:
    """Masks are deterministic, so tests may share them."""
    return make_mask(family, shape, acceleration, seed=seed)


def elliptical_radius(shape: tuple[int, int]) -> np.ndarray:
    ny, nx = shape
    y = (np.arange(ny) - ny // 2) / (ny / 2)
    x = (np.arange(nx) - nx // 2) / (nx / 2)
    return np.hypot(y[:, None], x[None, :])


def annulus_fractions(mask: np.ndarray, edges: np.ndarray) -> np.ndarray:
    rho = elliptical_radius(mask.shape)
    return np.array([mask[(rho >= a) & (rho < b)].mean() for a, b in itertools.pairwise(edges)])


# ----------------------------------------------------------------------------- acceleration


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("shape", "acceleration"), CASES)
def test_acceleration_within_two_percent(family, shape, acceleration):
    result = cached(family, shape, acceleration)
    assert result.mask.shape == shape
    assert result.mask.dtype == np.bool_
    assert result.family == family
    assert result.acceleration_requested == acceleration
    assert abs(result.acceleration / acceleration - 1) <= 0.02
    assert math.isclose(result.sampled_fraction, 1 / result.acceleration)
    if family == "lines":
        assert result.mask[:, 0].sum() == round(shape[0] / acceleration)
    else:  # the 2D families hit the exact point count
        assert result.mask.sum() == round(shape[0] * shape[1] / acceleration)


@pytest.mark.parametrize("family", FAMILIES)
def test_acceleration_one_is_fully_sampled(family):
    result = make_mask(family, (40, 24), 1.0)
    assert result.mask.all()
    assert result.acceleration == 1.0


@pytest.mark.parametrize("family", ["radial", "poisson"])
def test_odd_non_square_grid_exact_count(family):
    result = make_mask(family, (65, 33), 2.5, seed=4)
    assert result.mask.sum() == round(65 * 33 / 2.5)


# ----------------------------------------------------------------------------- centre


@pytest.mark.parametrize("family", ["radial", "poisson"])
def test_calibration_block_fully_sampled_2d(family):
    result = make_mask(family, (200, 100), 5.0, calib=(24, 12), seed=2)
    assert result.calib == (24, 12)
    assert result.mask[100 - 12 : 100 + 12, 50 - 6 : 50 + 6].all()


@pytest.mark.parametrize("family", FAMILIES)
def test_default_calibration_block_fully_sampled(family):
    result = cached(family, (200, 100), 5.0)
    cy, cx = result.calib
    assert cy >= 4
    block = result.mask[100 - cy // 2 : 100 - cy // 2 + cy, 50 - cx // 2 : 50 - cx // 2 + cx]
    assert block.all()
    if family != "lines":
        assert (cy, cx) == (20, 10)  # 10 % of each side


def test_lines_centre_rows_fully_sampled():
    result = variable_density_lines((200, 100), 5.0, calib=16, seed=3)
    assert result.mask[92:108].all()
    assert result.calib[0] == 16


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(64, 48), (65, 33)])
def test_single_point_budget_lands_on_fft_centre(family, shape):
    """With a 1-point calibration and a 1-point (or 1-line) budget only the centre remains."""
    ny, nx = shape
    n = ny if family == "lines" else ny * nx
    result = make_mask(family, shape, float(n), calib=1)
    expected = np.zeros(shape, dtype=bool)
    if family == "lines":
        expected[ny // 2, :] = True
    else:
        expected[ny // 2, nx // 2] = True
    np.testing.assert_array_equal(result.mask, expected)


# ----------------------------------------------------------------------------- density


@pytest.mark.parametrize("family", ["radial", "poisson"])
@pytest.mark.parametrize(("shape", "acceleration"), [CASES[0], CASES[1], CASES[3]])
def test_density_falls_over_elliptical_annuli(family, shape, acceleration):
    edges = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5])
    for seed in (0, 1):
        fractions = annulus_fractions(cached(family, shape, acceleration, seed).mask, edges)
        # No tolerance: every annulus holds hundreds of points, and over 30 seeds the
        # smallest step between neighbours was still a drop of more than 0.006.
        assert np.all(np.diff(fractions) <= 0), fractions
        assert fractions[0] > 0.5
        assert fractions[0] > 4 * fractions[-1], fractions


@pytest.mark.parametrize(("shape", "acceleration"), [((256, 32), 4.0), ((512, 16), 8.0)])
def test_line_density_falls_with_abs_ky(shape, acceleration):
    ny = shape[0]
    dist = np.abs(np.arange(ny) - ny // 2) / (ny / 2)
    edges = np.linspace(0.0, 1.0 + 1e-9, 5)
    for seed in (0, 1, 2):
        lines = variable_density_lines(shape, acceleration, seed=seed).mask[:, 0]
        fractions = np.array([lines[(dist >= a) & (dist < b)].mean() for a, b in itertools.pairwise(edges)])
        assert np.all(np.diff(fractions) <= 0), fractions
        assert fractions[0] > 3 * fractions[-1] > 0, fractions


@pytest.mark.parametrize("family", ["radial", "poisson"])
def test_density_follows_elliptical_radius_on_non_square_grid(family):
    """On 200x100 the density at the ky edge and at the kz edge (both rho ~ 0.9) agree."""
    mask = cached(family, (200, 100), 5.0).mask
    rho = elliptical_radius(mask.shape)
    ring = (rho > 0.8) & (rho < 1.0)
    along_ky = ring & (np.abs(np.arange(200) - 100)[:, None] > 70)
    along_kz = ring & (np.abs(np.arange(100) - 50)[None, :] > 35)
    assert abs(mask[along_ky].mean() - mask[along_kz].mean()) < 0.05


# ----------------------------------------------------------------------------- reproducibility


def _same(a: MaskResult, b: MaskResult) -> bool:
    if not np.array_equal(a.mask, b.mask):
        return False
    if a.view_order is None or b.view_order is None:
        return a.view_order is None and b.view_order is None
    return np.array_equal(a.view_order, b.view_order)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_mask_and_order(family):
    first = make_mask(family, (200, 100), 5.0, seed=11)
    second = make_mask(family, (200, 100), 5.0, seed=11)
    assert _same(first, second)
    assert first.seed == 11


@pytest.mark.parametrize("family", FAMILIES)
def test_different_seed_different_mask(family):
    a = cached(family, (200, 100), 5.0, 0)
    b = cached(family, (200, 100), 5.0, 1)
    assert not np.array_equal(a.mask, b.mask)
    assert a.mask.sum() == b.mask.sum()


# ----------------------------------------------------------------------------- view order


@pytest.mark.parametrize(
    ("shape", "acceleration", "calib"),
    [
        ((200, 100), 5.0, None),
        ((256, 256), 8.0, None),
        ((33, 17), 2.0, (6, 3)),
        ((40, 40), 1.0, None),
        ((64, 64), 20.0, 0),
        ((100, 200), 1.5, (30, 30)),
    ],
)
def test_radial_view_order_visits_each_sampled_point_once(shape, acceleration, calib):
    result = radial_view_ordered(shape, acceleration, calib=calib, seed=5)
    order = result.view_order
    assert order.ndim == 2 and order.shape[1] == 2
    assert order.dtype.kind == "i"
    assert len(order) == result.mask.sum()
    flat = order[:, 0] * shape[1] + order[:, 1]
    assert len(np.unique(flat)) == len(flat)  # no point twice
    assert result.mask[order[:, 0], order[:, 1]].all()  # no unsampled point
    # the first spoke starts at the centre (jitter may move its first point by one pixel)
    assert np.abs(order[0] - (shape[0] // 2, shape[1] // 2)).max() <= 1


def test_radial_spokes_run_from_centre_outward():
    """Acquisition starts near the centre: the first spoke's radii grow, the mean over the
    first tenth of the order is far smaller than over the whole order."""
    result = radial_view_ordered((200, 100), 5.0, seed=0, points_per_spoke=50)
    order = result.view_order
    rho = elliptical_radius((200, 100))[order[:, 0], order[:, 1]]
    first = rho[:10]
    assert np.all(np.diff(first) >= 0), first
    assert rho[: len(rho) // 10].mean() < rho.mean()


def test_radial_angle_step_is_a_parameter():
    a = radial_view_ordered((64, 64), 4.0, seed=0)
    b = radial_view_ordered((64, 64), 4.0, seed=0, angle_step=GOLDEN_ANGLE / 2)
    assert not np.array_equal(a.mask, b.mask)
    assert a.mask.sum() == b.mask.sum()


@pytest.mark.parametrize(("shape", "acceleration"), [((200, 100), 5.0), ((128, 64), 3.0)])
def test_lines_view_order_visits_each_sampled_line_once(shape, acceleration):
    result = variable_density_lines(shape, acceleration, seed=7)
    order = result.view_order
    rows = result.mask.any(axis=1)
    assert np.array_equal(rows, result.mask.all(axis=1))  # whole rows only
    assert order.ndim == 1
    assert len(np.unique(order)) == len(order) == rows.sum()
    assert rows[order].all()
    assert np.all(np.diff(order) > 0)  # linear (ascending ky) acquisition


def test_poisson_has_no_view_order_and_keeps_min_distance():
    result = cached("poisson", (256, 256), 8.0)
    assert result.view_order is None
    outer = result.mask & (elliptical_radius((256, 256)) > 0.6)
    # Beyond rho 0.6 no two samples touch, not even diagonally.
    padded = np.pad(result.mask, 1)
    neighbours = sum(
        padded[1 + dy : 257 + dy, 1 + dx : 257 + dx].astype(int)
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    assert outer.sum() > 1000
    assert not (outer & (neighbours > 0)).any()


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("acceleration", [0.5, 0.0, -2.0, float("nan"), float("inf")])
def test_bad_acceleration_raises(family, acceleration):
    with pytest.raises(MaskSpecError, match="acceleration"):
        make_mask(family, (64, 64), acceleration)


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_larger_than_grid_raises(family):
    calib = 300 if family == "lines" else (300, 10)
    with pytest.raises(MaskSpecError, match="calib"):
        make_mask(family, (200, 100), 2.0, calib=calib)


@pytest.mark.parametrize("family", ["radial", "poisson"])
def test_calibration_over_budget_raises(family):
    # 20x10 = 200 calibration points, but 20000 / 150 allows only 150.
    with pytest.raises(MaskSpecError, match="reduce calib or the acceleration"):
        make_mask(family, (200, 100), 200 * 100 / 150, calib=(20, 10))
    # exactly at the budget is fine: the mask is the calibration block
    result = make_mask(family, (200, 100), 100.0, calib=(20, 10))
    assert result.mask.sum() == 200
    assert result.mask[90:110, 45:55].all()


def test_lines_calibration_over_budget_raises():
    with pytest.raises(MaskSpecError, match="reduce calib or the acceleration"):
        variable_density_lines((200, 100), 11.0, calib=20)  # 18 lines < 20
    assert variable_density_lines((200, 100), 10.0, calib=20).mask[:, 0].sum() == 20


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(0, 10), (10, -4), (10,), (10.0, 10)])
def test_bad_shape_raises(family, shape):
    with pytest.raises(MaskSpecError, match="shape"):
        make_mask(family, shape, 2.0)


def test_acceleration_beyond_grid_raises():
    with pytest.raises(MaskSpecError, match="no points"):
        poisson_disc((8, 8), 200.0, calib=0)


def test_unknown_family_raises():
    with pytest.raises(MaskSpecError, match="unknown mask family"):
        make_mask("spiral", (64, 64), 4.0)


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_seed_raises(family):
    with pytest.raises(MaskSpecError, match="seed"):
        make_mask(family, (64, 64), 4.0, seed=-1)


# ----------------------------------------------------------------------------- result object


def test_mask_result_is_frozen_and_read_only():
    result = cached("radial", (200, 100), 5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        result.mask[0, 0] = not result.mask[0, 0]
    with pytest.raises(ValueError):
        result.view_order[0, 0] = 0


def test_make_mask_dispatch_passes_keywords():
    direct = poisson_disc((64, 32), 3.0, seed=9, calib=(8, 4))
    via = make_mask("Poisson", (64, 32), 3.0, seed=9, calib=(8, 4))
    assert via.family == "poisson"
    assert np.array_equal(direct.mask, via.mask)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("family", FAMILIES)
def test_write_mask_files(family, tmp_path):
    result = cached(family, (200, 100), 5.0)
    paths = write_mask_files(result, tmp_path / "sub" / f"{family}_r5")
    assert set(paths) == {"mask", "view_order", "preview"}
    assert paths["mask"].name == f"{family}_r5.npy"
    assert paths["view_order"].name == f"{family}_r5_view_order.csv"
    assert paths["preview"].name == f"{family}_r5.png"
    assert all(p.is_file() for p in paths.values())

    loaded = np.load(paths["mask"])
    assert loaded.dtype == np.bool_
    np.testing.assert_array_equal(loaded, result.mask)

    lines = paths["view_order"].read_text().splitlines()
    rows = np.loadtxt(paths["view_order"], delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(rows)))
    if family == "lines":
        assert lines[0] == "index,ky"
        assert len(rows) == result.mask[:, 0].sum()
        np.testing.assert_array_equal(rows[:, 1], result.view_order)
    else:
        assert lines[0] == "index,ky,kz"
        assert len(rows) == result.mask.sum()
        assert result.mask[rows[:, 1], rows[:, 2]].all()
        if result.view_order is not None:
            np.testing.assert_array_equal(rows[:, 1:], result.view_order)

    with Image.open(paths["preview"]) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] >= 2 * 200 and pixels.shape[1] >= 2 * 100  # magnified
    assert pixels.max() == 255 and pixels.min() == 0  # white samples on black
    white = np.all(pixels == 255, axis=-1).mean()
    assert 0.05 < white < 0.6


# --------------------------------------------------------------------------- uniform (GRAPPA-style)


def acs_rows(ny: int, n_cal: int) -> set[int]:
    start = ny // 2 - n_cal // 2
    return set(range(start, start + n_cal))


def test_uniform_lines_exact_positions_for_a_known_offset() -> None:
    from recon_plugin.masks import uniform_lines

    res = uniform_lines((32, 8), 4, calib=6, offset=1)
    expected = sorted({1, 5, 9, 13, 17, 21, 25, 29} | {13, 14, 15, 16, 17, 18})
    assert res.view_order.tolist() == expected
    rows = np.flatnonzero(res.mask[:, 0])
    assert rows.tolist() == expected
    assert (res.mask == res.mask[:, :1]).all()  # whole rows, broadcast along axis 1
    assert res.family == "uniform" and res.acceleration_requested == 4 and res.calib == (6, 8)


def test_uniform_lines_acs_block_is_centred_and_holds_the_centre_line() -> None:
    from recon_plugin.masks import uniform_lines

    for ny, n_cal, r in [(256, 24, 3), (255, 7, 4), (64, 1, 5)]:
        for offset in range(r):
            lines = uniform_lines((ny, 16), r, calib=n_cal, offset=offset).mask[:, 0]
            acs = acs_rows(ny, n_cal)
            assert ny // 2 in acs and all(lines[i] for i in acs)
            assert lines[min(acs) - 1] == ((min(acs) - 1 - offset) % r == 0)  # no wider than asked
            assert lines[max(acs) + 1] == ((max(acs) + 1 - offset) % r == 0)
            outside = [i for i in range(ny) if i not in acs]
            assert all(lines[i] == ((i - offset) % r == 0) for i in outside)
    no_acs = uniform_lines((64, 4), 4, calib=0, offset=1)
    assert np.flatnonzero(no_acs.mask[:, 0]).tolist() == list(range(1, 64, 4)) and no_acs.calib == (0, 0)


def test_uniform_lines_are_reproducible_and_seeds_move_the_lattice() -> None:
    from recon_plugin.masks import uniform_lines

    a, b = uniform_lines((128, 32), 4, seed=7), uniform_lines((128, 32), 4, seed=7)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.view_order, b.view_order)
    phases = {int(uniform_lines((128, 32), 4, calib=0, seed=s).view_order[0]) for s in range(20)}
    assert len(phases) >= 2 and phases <= {0, 1, 2, 3}
    assert make_mask("uniform", (128, 32), 4.0, seed=7).mask.tobytes() == a.mask.tobytes()


def test_uniform_lines_achieved_acceleration_is_below_r() -> None:
    from recon_plugin.masks import uniform_lines

    for offset, n_lines in [(0, 102), (1, 101), (2, 101)]:  # 86 or 85 lattice lines + 24 ACS - 8 shared
        res = uniform_lines((256, 256), 3, calib=24, offset=offset)
        assert int(res.mask[:, 0].sum()) == n_lines
        assert res.acceleration == pytest.approx(256 / n_lines)
    assert 2.5 < res.acceleration < 2.55 and res.acceleration_requested == 3
    assert uniform_lines((256, 256), 3.0, calib=0, offset=0).acceleration == pytest.approx(256 / 86)
    assert uniform_lines((16, 4), 1, calib=4).mask.all()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((2.5,), {}, "integer"),
        ((0,), {}, "integer"),
        ((-3,), {}, "integer"),
        ((float("nan"),), {}, "integer"),
        ((True,), {}, "integer"),
        (("x",), {}, "integer"),
        ((3,), {"calib": 65}, "does not fit"),
        ((3,), {"calib": -1}, "does not fit"),
        ((3,), {"calib": (65, 2)}, "does not fit"),
        ((3,), {"offset": 3}, "offset"),
        ((3,), {"offset": -1}, "offset"),
        ((65,), {}, "larger than"),
        ((3,), {"seed": -1}, "seed"),
    ],
)
def test_uniform_lines_refuses_impossible_requests(args, kwargs, match) -> None:
    from recon_plugin.masks import uniform_lines

    with pytest.raises(MaskSpecError, match=match):
        uniform_lines((64, 16), *args, **kwargs)


def test_uniform_calib_pair_counts_its_first_entry() -> None:
    from recon_plugin.masks import uniform_lines

    res = uniform_lines((64, 16), 4, calib=(10, 999), offset=0)
    assert res.calib == (10, 16) and set(np.flatnonzero(res.mask[:, 0])) >= acs_rows(64, 10)


def test_mask_command_writes_uniform_files(tmp_path) -> None:
    import csv

    from typer.testing import CliRunner

    from recon_plugin.cli import app
    from recon_plugin.masks import uniform_lines

    stem = tmp_path / "m"
    args = ["mask", "--family", "uniform", "--shape", "256", "256", "--acceleration", "3", "--calib", "24"]
    res = CliRunner().invoke(app, [*args, "--out", str(stem), "--seed", "5"])
    assert res.exit_code == 0, res.output
    mask = np.load(tmp_path / "m.npy")
    expected = uniform_lines((256, 256), 3, calib=24, seed=5)
    np.testing.assert_array_equal(mask, expected.mask)
    with open(tmp_path / "m_view_order.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["ky"]) for r in rows] == expected.view_order.tolist()
    assert Image.open(tmp_path / "m.png").getextrema() != (0, 0)
    assert f"acceleration {expected.acceleration:.3f} (asked 3)" in " ".join(res.output.split())
    bad = CliRunner().invoke(app, [*args[:-3], "2.5", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "MaskSpecError" in bad.output and not (tmp_path / "bad.npy").exists()


def test_training_accepts_every_mask_family() -> None:
    from recon_plugin.masks import FAMILIES as ALL_FAMILIES
    from training.config import MASK_FAMILIES

    assert "uniform" in ALL_FAMILIES and set(MASK_FAMILIES) == set(ALL_FAMILIES)
