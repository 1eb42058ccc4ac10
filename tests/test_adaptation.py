"""Scan-specific self-supervised adaptation: a copy of the network fine-tuned on the scan's own k-space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ellipse_slices
from raw_helpers import tiny_3d
from review_helpers import geometry as geometry_of

from recon_plugin.adaptation import (
    AdaptSettings,
    adapt_model,
    line_axis,
    loss_candidates,
    loss_set,
    loss_weights,
    resolve_split,
)
from recon_plugin.errors import InvalidInputError, ProtocolError
from recon_plugin.gadget_settings import GadgetSettings
from recon_plugin.images import image_meta, make_image
from recon_plugin.masks import make_mask
from recon_plugin.model import load_bundle
from recon_plugin.physics import SenseOperator
from recon_plugin.problem import Problem
from recon_plugin.reconstructors import RGANCS
from recon_plugin.reconstructors.rgancs import robust_scale
from recon_plugin.sample_data import DEFAULT_BUNDLE
from recon_plugin.simulate import simulate_problem, simulated_coil_maps, with_smooth_phase

SHAPE = (48, 48)


def phantom_problem(mask: np.ndarray, seed: int = 0, coils: int = 4) -> tuple[Problem, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = with_smooth_phase(ellipse_slices(1, size=SHAPE[0], seed=seed)[0], rng)
    maps = simulated_coil_maps(SHAPE, coils)
    return simulate_problem(image, mask, maps), maps


def normalised(problem: Problem, maps: np.ndarray) -> tuple[torch.Tensor, SenseOperator]:
    op = SenseOperator(torch.from_numpy(problem.mask[None]), torch.from_numpy(maps[None]))
    y = torch.from_numpy(problem.kspace[None])
    return y / robust_scale(op.adjoint(y))[:, None, None, None], op


def params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": -1},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"holdout": 0.0},
        {"holdout": 1.0},
        {"splits": 0},
        {"centre": -1},
        {"density_sigma": 0.0},
        {"cg_iterations": 0},
        {"schedule": "linear"},
        {"split": "rows"},
        {"scope": "series"},
        {"min_coils": 0},
    ],
)
def test_impossible_settings_are_named_errors(bad):
    with pytest.raises(InvalidInputError, match=f"adaptation {next(iter(bad))} must be"):
        AdaptSettings(**bad)


def test_loss_weights_favour_sparse_k_space_and_candidates_skip_the_centre_and_gaps():
    mask = make_mask("radial", (64, 64), 5.0, seed=0, calib=12).mask
    w = loss_weights(mask, 4.0)
    assert w[mask].mean() == pytest.approx(1.0, rel=1e-5)
    assert w[32, 32] < w[mask].min() * 1.01 < w[mask].max()  # the dense centre weighs least
    y = np.ones((2, 64, 64), np.complex64) * mask
    y[:, 0, :] = 0  # a row of samples missing in every coil: a gap, not a measurement
    cand = loss_candidates(y, mask, centre=6)
    assert not cand[27:38, 27:38].any() and not cand[0].any()
    assert cand.sum() == (mask & ~(np.abs(y).sum(0) == 0)).sum() - mask[27:38, 27:38].sum()


def test_line_masks_are_split_by_whole_lines_and_other_masks_by_points():
    rows = make_mask("uniform", (64, 48), 3.0, seed=0, calib=8).mask
    assert line_axis(rows) == 0 and line_axis(rows.T) == 1
    assert line_axis(make_mask("radial", (64, 64), 5.0, seed=0, calib=12).mask) is None
    assert line_axis(np.ones((8, 8), bool)) is None  # fully sampled: no missing line to imitate
    y = np.ones((2, 64, 48), np.complex64) * rows
    cand = loss_candidates(y, rows, centre=4)
    rng = np.random.default_rng(0)
    lines = loss_set(cand, 0, AdaptSettings(split="lines", centre=4), rng)
    per_row = lines.sum(1)
    assert lines.any() and set(per_row[per_row > 0]) == {48}  # whole rows or nothing
    assert not lines[29:36].any()  # the rows nearest the centre stay in the input
    assert 0.2 < lines.sum() / cand.sum() < 0.6
    points = loss_set(cand, 0, AdaptSettings(split="points", centre=4), rng)
    assert (points.sum(1) < 48).any()  # points: rows are broken up
    assert np.array_equal(
        loss_set(cand, None, AdaptSettings(split="lines"), np.random.default_rng(1)),
        loss_set(cand, None, AdaptSettings(split="points"), np.random.default_rng(1)),
    )
    mixed = AdaptSettings(split="mixed", centre=4)
    first, second = (loss_set(cand, 0, mixed, np.random.default_rng(2), k) for k in (0, 1))
    assert ((first.sum(1) > 0) & (first.sum(1) < 48)).any()  # split 0 of a step: points, rows broken up
    assert set(second.sum(1)[second.sum(1) > 0]) == {48}  # split 1: whole rows


def test_auto_split_goes_by_points_above_four_coils_and_mixed_below():
    assert [resolve_split("auto", c) for c in (1, 4, 5, 8, 32)] == ["mixed"] * 2 + ["points"] * 3
    assert all(resolve_split(s, 8) == s for s in ("points", "lines", "mixed"))
    with pytest.raises(InvalidInputError, match="resolve_split"):
        loss_set(np.ones((8, 8), bool), 0, AdaptSettings(split="auto"), np.random.default_rng(0))
    rows = make_mask("uniform", SHAPE, 3.0, seed=0, calib=8).mask
    model = load_bundle(DEFAULT_BUNDLE).model
    for coils, same_as in ((4, "mixed"), (8, "points")):
        y, op = normalised(*phantom_problem(rows, coils=coils))
        auto, report = adapt_model(model, y, op, AdaptSettings(steps=2, seed=3))
        named, _ = adapt_model(model, y, op, AdaptSettings(steps=2, seed=3, split=same_as))
        other, _ = adapt_model(model, y, op, AdaptSettings(steps=2, seed=3, split="lines"))
        assert report.split == same_as and report.summary()["split"] == same_as
        assert all(torch.equal(a, b) for a, b in zip(params(auto), params(named), strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(params(auto), params(other), strict=True))


def test_zero_steps_return_an_unchanged_copy():
    mask = make_mask("poisson", SHAPE, 3.0, seed=1, calib=10).mask
    y, op = normalised(*phantom_problem(mask))
    model = load_bundle(DEFAULT_BUNDLE).model
    net, report = adapt_model(model, y, op, AdaptSettings(steps=0))
    assert net is not model and report.losses == []
    for a, b in zip(params(net), params(model), strict=True):
        assert torch.equal(a, b)


def test_adaptation_predicts_samples_it_never_saw_better_and_leaves_the_bundle_alone():
    """Samples removed from the scan before adapting are predicted better by the adapted copy: it learned the
    scan, not its own loss sets; the bundle's weights are untouched; the same seed gives the same weights."""
    full = make_mask("poisson", SHAPE, 2.5, seed=2, calib=10).mask
    rng = np.random.default_rng(5)
    unseen = full & (rng.random(SHAPE) < 0.2)
    unseen[19:29, 19:29] = False
    problem, maps = phantom_problem(full & ~unseen)
    complete, _ = phantom_problem(full)
    y, op = normalised(problem, maps)
    scale = robust_scale(op.adjoint(torch.from_numpy(problem.kspace[None])))
    target = torch.from_numpy(complete.kspace[None]) / scale[:, None, None, None]
    model = load_bundle(DEFAULT_BUNDLE).model
    before = params(model)
    settings = AdaptSettings(steps=25, lr=2e-4, seed=1)
    net, report = adapt_model(model, y, op, settings)
    assert np.mean(report.losses[-5:]) < np.mean(report.losses[:5])
    for a, b in zip(before, params(model), strict=True):
        assert torch.equal(a, b)
    op_unseen = SenseOperator(torch.from_numpy(unseen[None]), op.maps)

    wanted = target * torch.from_numpy(unseen)[None, None]

    def unseen_error(m: torch.nn.Module) -> float:
        with torch.no_grad():
            x, _ = m.eval()(y, op)
        return float((op_unseen.forward(x) - wanted).abs().square().sum() / wanted.abs().square().sum())

    assert unseen_error(net) < 0.5 * unseen_error(model)  # measured: 0.0124 -> 0.0024
    again, _ = adapt_model(model, y, op, settings)
    for a, b in zip(params(net), params(again), strict=True):
        assert torch.equal(a, b)


def update_sizes(settings: AdaptSettings) -> list[float]:
    """Size of every Adam step's change of the adapted copy's weights."""
    mask = make_mask("poisson", SHAPE, 3.0, seed=4, calib=10).mask
    y, op = normalised(*phantom_problem(mask, seed=4))
    model = load_bundle(DEFAULT_BUNDLE).model
    last, sizes = params(model), []

    def on_step(step: int, net: torch.nn.Module) -> None:
        now = params(net)
        sizes.append(float(sum((a - b).square().sum() for a, b in zip(now, last, strict=True)).sqrt()))
        last[:] = now

    adapt_model(model, y, op, settings, on_step=on_step)
    return sizes


def test_cosine_schedule_takes_the_steps_down_to_nothing_and_random_phase_changes_the_copy():
    constant = update_sizes(AdaptSettings(steps=8, lr=2e-4))
    cosine = update_sizes(AdaptSettings(steps=8, lr=2e-4, schedule="cosine"))
    assert cosine[0] == pytest.approx(constant[0], rel=1e-4)  # the same first step
    assert cosine[-1] < 0.1 * cosine[0] and constant[-1] > 0.3 * constant[0]
    turned = update_sizes(AdaptSettings(steps=3, lr=2e-4, random_phase=True))
    assert turned == update_sizes(AdaptSettings(steps=3, lr=2e-4, random_phase=True))  # seeded
    assert turned[0] != pytest.approx(constant[0], rel=1e-3)


def test_rgancs_adapts_per_call_and_says_so_in_the_image_meta():
    mask = make_mask("poisson", SHAPE, 3.0, seed=3, calib=10).mask
    problem, _ = phantom_problem(mask, seed=1)
    bundle = load_bundle(DEFAULT_BUNDLE)
    before = params(bundle.model)
    plain = RGANCS(bundle, device="cpu", fast_path="fp32").reconstruct(problem)
    adapted = RGANCS(bundle, device="cpu", fast_path="fp32", adapt=AdaptSettings(steps=4)).reconstruct(problem)
    assert "adapt" not in plain.meta and adapted.meta["adapt_steps"] == 4
    assert adapted.meta["adapt"]["steps"] == 4 and adapted.meta["seconds"] > adapted.meta["adapt"]["seconds"] > 0
    assert not np.allclose(plain.image, adapted.image, atol=1e-4 * np.abs(plain.image).max())
    for a, b in zip(before, params(bundle.model), strict=True):
        assert torch.equal(a, b)
    both = RGANCS(bundle, device="cpu", fast_path="fp32", phase_average=2, adapt=AdaptSettings(steps=4))
    assert both.reconstruct(problem).meta["phase_average"] == 2
    assert both._adapted([problem])[0].net.config.phase_average == 2  # the override reaches the adapted copy
    geometry = geometry_of(0, 1)
    meta = image_meta(make_image(adapted, geometry, series_index=1, image_index=1))
    assert meta["AdaptSteps"] == "4" and meta["AdaptSplit"] == "mixed"  # "auto" with 4 coils
    assert not {"AdaptSteps", "AdaptSplit"} & set(
        image_meta(make_image(plain, geometry, series_index=1, image_index=1))
    )


def test_gadget_properties_parse_and_name_bad_values():
    default = GadgetSettings.from_properties("rgancs", {})
    assert default.adapt_steps == 0 and default.adapt_lr == AdaptSettings().lr
    got = GadgetSettings.from_properties("rgancs", {"adapt_steps": "40", "adapt_lr": "1e-4"})
    assert (got.adapt_steps, got.adapt_lr) == (40, 1e-4)
    for name, bad in (("adapt_steps", "-1"), ("adapt_steps", "2.5"), ("adapt_lr", "0"), ("adapt_lr", "inf")):
        with pytest.raises(ProtocolError, match=name):
            GadgetSettings.from_properties("rgancs", {name: bad})
    with pytest.raises(ProtocolError, match="adapt_steps"):  # a typo is named with the right spelling
        GadgetSettings.from_properties("rgancs", {"adapt_step": "40"})
    with pytest.raises(ProtocolError, match="adapt_steps"):  # not a BART property
        GadgetSettings.from_properties("cs_wavelet", {"adapt_steps": "40"})
    assert default.adapt_split is None and AdaptSettings().split == "auto"
    assert GadgetSettings.from_properties("rgancs", {"adapt_split": "points"}).adapt_split == "points"
    assert (
        default.adapt_splits == 0 and GadgetSettings.from_properties("rgancs", {"adapt_splits": "2"}).adapt_splits == 2
    )
    with pytest.raises(ProtocolError, match="adapt_splits='0' must be >= 1"):
        GadgetSettings.from_properties("rgancs", {"adapt_splits": "0"})
    with pytest.raises(ProtocolError, match="adapt_split='rows' must be one of points, lines, mixed, auto"):
        GadgetSettings.from_properties("rgancs", {"adapt_split": "rows"})


def test_the_split_reaches_the_gadgets_reconstructor_and_unsupported_fields_are_refused():
    from recon_plugin.pipeline import default_rgancs

    routed = default_rgancs("cpu", adapt=AdaptSettings(steps=2, split="lines", splits=2))
    assert routed.multi.adapt == AdaptSettings(steps=2, split="lines", splits=2)
    assert default_rgancs("cpu", adapt=AdaptSettings(steps=2)).multi.adapt.split == "auto"
    with pytest.raises(InvalidInputError, match="no gadget property carries"):
        default_rgancs("cpu", adapt=AdaptSettings(steps=2, holdout=0.3))


def test_an_fft_first_run_under_inference_mode_can_still_be_differentiated():
    """The centred FFT caches a checkerboard per shape; one first built under inference mode (a reconstruction)
    must not break autograd later in the process (an adaptation of the same shape)."""
    from recon_plugin.physics import fftc

    with torch.inference_mode():
        fftc(torch.ones(2, 38, 46, dtype=torch.complex64))
    x = torch.ones(2, 38, 46, dtype=torch.complex64, requires_grad=True)
    fftc(x).abs().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad.abs()).all()


@pytest.fixture
def adapt_calls(monkeypatch) -> list[int]:
    """RGANCS's adaptations, recorded: the number of slices each one adapted to (the adaptation itself runs)."""
    from recon_plugin.reconstructors import rgancs as rgancs_module

    calls: list[int] = []

    def counting(model, y, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(int(y.shape[0]))
        return adapt_model(model, y, *args, **kwargs)

    monkeypatch.setattr(rgancs_module, "adapt_model", counting)
    return calls


def test_exam_scope_adapts_one_copy_per_exam_and_shares_its_time(adapt_calls):
    calls = adapt_calls
    mask = make_mask("poisson", SHAPE, 3.0, seed=3, calib=10).mask
    problems = [phantom_problem(mask, seed=s)[0] for s in (1, 2)]
    bundle = load_bundle(DEFAULT_BUNDLE)
    settings = AdaptSettings(steps=3, scope="exam")
    rec = RGANCS(bundle, device="cpu", fast_path="fp32", adapt=settings)
    joint = rec.reconstruct_batch(problems)  # a direct call is one exam: one copy for both slices
    assert calls == [2] and rec._exam is None  # the (resident) reconstructor itself keeps no exam state
    for result in joint:
        assert result.meta["adapt_scope"] == "exam" and result.meta["adapt"]["slices"] == 2
        assert result.meta["seconds"] > result.meta["adapt"]["seconds"] / 2 > 0
    exam = rec.for_exam(problems)
    assert exam is not rec and calls == [2, 2]
    apart = [exam.reconstruct_batch([p])[0] for p in problems]  # batch by batch, as the gadget streams
    assert calls == [2, 2]  # no further adaptation: the exam's copy serves every batch
    for a, b in zip(joint, apart, strict=True):
        np.testing.assert_allclose(a.image, b.image, rtol=0, atol=1e-5 * np.abs(a.image).max())
    per_slice = RGANCS(bundle, device="cpu", fast_path="fp32", adapt=AdaptSettings(steps=3))
    assert per_slice.for_exam(problems) is per_slice
    per_slice.reconstruct_batch(problems)
    assert calls == [2, 2, 1, 1]
    wide = with_smooth_phase(np.pad(ellipse_slices(1, size=40, seed=5)[0], ((0, 0), (4, 4))), np.random.default_rng(5))
    wide_mask = make_mask("poisson", (40, 48), 3.0, seed=4, calib=10).mask
    other = simulate_problem(wide, wide_mask, simulated_coil_maps((40, 48), 4))
    exam.reconstruct_batch([other])  # a shape the exam did not have gets its own copy, kept for the exam
    exam.reconstruct_batch([other])
    assert calls == [2, 2, 1, 1, 1]


def test_the_gadget_adapts_once_per_exam_with_the_scope_property(adapt_calls):
    from recon_plugin import sample_raw
    from recon_plugin.pipeline import assemble, build_reconstructor, stream_exam

    calls = adapt_calls
    props = {"retro_acceleration": "4", "calib": "8", "adapt_steps": "2", "adapt_scope": "exam", "device": "cpu"}
    settings = GadgetSettings.from_properties("rgancs", props)
    assert settings.adapt_scope == "exam"
    scan = sample_raw.build_raw(tiny_3d())  # 8 planes
    problems = assemble(scan.header, scan.acquisitions, settings)
    reconstructor = build_reconstructor(settings)
    batches = list(stream_exam(problems, reconstructor, settings, batch_size=3))
    assert calls == [len(problems)] and sum(len(b) for b in batches) == len(problems)
    metas = [image_meta(image) for batch in batches for image in batch]
    assert {m["AdaptScope"] for m in metas} == {"exam"} and {m["AdaptSteps"] for m in metas} == {"2"}
    list(stream_exam(problems, reconstructor, settings, batch_size=3))  # the next exam adapts afresh
    assert calls == [len(problems)] * 2
    with pytest.raises(ProtocolError, match="adapt_scope='series' must be one of slice, exam"):
        GadgetSettings.from_properties("rgancs", {"adapt_scope": "series"})
    assert GadgetSettings.from_properties("rgancs", {}).adapt_scope is None and AdaptSettings().scope == "slice"


def test_the_scope_reaches_both_routed_models_and_the_evaluation_groups_exams():
    from recon_plugin.evaluation import compare, image_case
    from recon_plugin.pipeline import default_rgancs
    from recon_plugin.reconstructors import ZeroFilled

    routed = default_rgancs("cpu", adapt=AdaptSettings(steps=2, scope="exam"))
    assert routed.multi.adapt.scope == routed.single.adapt.scope == "exam"
    mask = make_mask("poisson", SHAPE, 3.0, seed=3, calib=10).mask
    problem, _ = phantom_problem(mask, seed=1)
    exam = routed.for_exam([problem])
    assert exam is not routed and exam.single is routed.single and set(exam.multi._exam) != set()
    assert default_rgancs("cpu", adapt=AdaptSettings(steps=2)).for_exam([problem]) is not None

    seen: list[int] = []

    class Recording(ZeroFilled):
        def for_exam(self, problems):  # type: ignore[no-untyped-def]
            seen.append(len(problems))
            return self

    image = ellipse_slices(1, size=SHAPE[0], seed=0)[0].astype(np.complex64)
    cases = [image_case(f"s{i}", image, mask) for i in range(5)]
    assert len(compare(cases, [Recording()], exam_size=2)) == 5 and seen == [2, 2, 1]
    compare(cases, [Recording()])
    assert seen == [2, 2, 1, 5]
    with pytest.raises(InvalidInputError, match="exam_size"):
        compare(cases, [Recording()], exam_size=0)


def test_single_coil_slices_keep_the_bundles_network(adapt_calls):
    calls = adapt_calls
    mask = make_mask("poisson", SHAPE, 3.0, seed=3, calib=10).mask
    multi, _ = phantom_problem(mask, seed=1)
    image = with_smooth_phase(ellipse_slices(1, size=SHAPE[0], seed=2)[0], np.random.default_rng(2))
    single = simulate_problem(image, mask)
    assert single.coils == 1
    bundle = load_bundle(DEFAULT_BUNDLE)
    plain = RGANCS(bundle, device="cpu", fast_path="fp32").reconstruct(single)
    for scope in ("slice", "exam"):
        rec = RGANCS(bundle, device="cpu", fast_path="fp32", adapt=AdaptSettings(steps=2, scope=scope))
        one, several = rec.reconstruct_batch([single, multi])
        assert "adapt" not in one.meta and several.meta["adapt_steps"] == 2
        np.testing.assert_array_equal(one.image, plain.image)
        assert rec.for_exam([single]) is rec
    assert calls == [1, 1]  # the multi-coil slice, once per scope
