"""Unblinding and statistics on known answers: counts, Wilson interval, Wilcoxon, Cohen's and Fleiss' kappa, CSV."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from review_helpers import write_exam
from scipy import stats

from recon_plugin.review.results import (
    cohen_kappa,
    compute_results,
    fleiss_kappa,
    unblind,
    wilson_interval,
    write_csv,
)
from recon_plugin.review.store import AnswerStore
from recon_plugin.review.study import create_study

PAIR = ("rgancs", "cs_wavelet")


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and high == pytest.approx(0.4345, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_cohen_kappa_known_table():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    first = ["y"] * 25 + ["n"] * 25
    second = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))


def test_fleiss_kappa_known_table():
    # Fleiss (1971) style worked example: 10 items, 14 raters, 5 categories -> kappa 0.210
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    assert math.isnan(fleiss_kappa(np.array([[2, 0], [1, 0]])))  # unequal rater counts


def build(tmp_path, readers, outcomes, scores_a=None, scores_b=None):
    """A study with one pair (RGANCS vs CS-WV) on len(outcomes) slices; answers given in unblinded terms.

    ``outcomes[reader][k]`` is "a", "b" or "tie" for the k-th slice; scores per slice for A and B.
    """
    n = len(next(iter(outcomes.values())))
    exam = write_exam(tmp_path / "e.h5", methods=PAIR, slices=n)
    study = create_study(tmp_path / "s", [exam], readers=readers, pairs=[PAIR], seed=4)
    by_slice = sorted(study.data["items"], key=lambda i: i["slice"])
    store = AnswerStore(study)
    for reader in readers:
        seen = {it.id: it for it in study.reader_items(reader)}
        for k, item in enumerate(by_slice):
            left, right = seen[item["id"]].methods
            wanted = {"a": "rgancs", "b": "cs_wavelet", "tie": None}[outcomes[reader][k]]
            preference = "none" if wanted is None else ("left" if wanted == left else "right")
            score = {"rgancs": (scores_a or [4] * n)[k], "cs_wavelet": (scores_b or [3] * n)[k]}
            row = {"preference": preference}
            for side, method in (("left", left), ("right", right)):
                for c in ("quality", "artefacts", "blurring"):
                    row[f"{side}_{c}"] = score[method]
            store.save(reader, item["id"], row)
    return study


def test_unblinded_counts_interval_and_wilcoxon(tmp_path):
    outcomes = {"alice": ["a"] * 6 + ["b"] * 2 + ["tie"] * 2}
    scores_a = [5, 4, 4, 5, 3, 4, 2, 4, 3, 4]
    scores_b = [3, 3, 4, 2, 3, 2, 3, 1, 3, 2]
    study = build(tmp_path, ["alice"], outcomes, scores_a, scores_b)
    swapped = study.data["readers"]["alice"]["swapped"]
    assert 0 < sum(swapped.values()) < len(swapped)  # sides really were mixed, so unblinding matters
    res = compute_results(tmp_path / "s")
    (pair,) = res.pairs
    assert (pair.method_a, pair.method_b) == PAIR
    assert (pair.n, pair.wins, pair.ties, pair.losses) == (10, 6, 2, 2)
    assert pair.win_fraction == pytest.approx(6 / 8)  # ties left out
    assert (pair.ci_low, pair.ci_high) == pytest.approx(wilson_interval(6, 8))
    expected = stats.wilcoxon(scores_a, scores_b)
    for criterion in ("quality", "artefacts", "blurring"):
        got = pair.criteria[criterion]
        assert got.p_value == pytest.approx(expected.pvalue) and got.statistic == pytest.approx(expected.statistic)
        assert got.mean_a == pytest.approx(np.mean(scores_a)) and got.mean_b == pytest.approx(np.mean(scores_b))
    assert pair.kappa_kind == "" and math.isnan(pair.kappa)


def test_incomplete_answers_do_not_count(tmp_path):
    study = build(tmp_path, ["alice"], {"alice": ["a", "b", "a"]})
    item = study.data["items"][0]["id"]
    AnswerStore(study).save("alice", item, {"preference": "left"})  # overwritten with a partial answer
    answers = unblind(study, AnswerStore(study).answers())
    assert len(answers) == 2 and item not in {u.item for u in answers}


def test_two_readers_cohen_three_readers_fleiss(tmp_path):
    outcomes = {
        "r1": ["a", "a", "b", "tie", "a", "b"],
        "r2": ["a", "b", "b", "tie", "a", "a"],
        "r3": ["a", "a", "b", "b", "tie", "b"],
    }
    build(tmp_path, list(outcomes), outcomes)
    (pair,) = compute_results(tmp_path / "s").pairs
    assert pair.readers == 3 and pair.kappa_kind == "fleiss" and pair.kappa_items == 6
    table = np.array([[sum(outcomes[r][k] == c for r in outcomes) for c in ("a", "b", "tie")] for k in range(6)])
    assert pair.kappa == pytest.approx(fleiss_kappa(table))
    assert (pair.wins, pair.losses, pair.ties) == (8, 7, 3)


def test_two_readers_cohen(tmp_path):
    outcomes = {"r1": ["a", "a", "b", "tie", "a"], "r2": ["a", "b", "b", "tie", "b"]}
    build(tmp_path, list(outcomes), outcomes)
    (pair,) = compute_results(tmp_path / "s").pairs
    assert pair.kappa_kind == "cohen" and pair.kappa_items == 5
    assert pair.kappa == pytest.approx(cohen_kappa(outcomes["r1"], outcomes["r2"]))


def test_csv(tmp_path):
    build(tmp_path, ["alice"], {"alice": ["a", "tie", "b", "a"]})
    written = write_csv(compute_results(tmp_path / "s"), tmp_path / "out" / "results.csv")
    assert [p.name for p in written] == ["results.csv", "results_answers.csv"]
    with written[0].open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["method_a"], row["method_b"], row["wins"], row["ties"], row["losses"]) == (*PAIR, "2", "1", "1")
    assert float(row["win_fraction_ties_excluded"]) == pytest.approx(2 / 3)
    with written[1].open() as handle:
        answers = list(csv.DictReader(handle))
    assert sorted(a["preferred"] for a in answers) == ["cs_wavelet", "rgancs", "rgancs", "tie"]
    assert all(a["method_a"] == "rgancs" and a["a_quality"] == "4" and a["b_quality"] == "3" for a in answers)


def test_cli_new_and_results(tmp_path):
    from typer.testing import CliRunner

    from recon_plugin.review.cli import review_app

    net = write_exam(tmp_path / "net.h5", methods=("rgancs",), slices=2)
    cs = write_exam(tmp_path / "cs.h5", methods=("cs_tv",), slices=2)
    runner = CliRunner()
    made = runner.invoke(review_app, ["new", str(tmp_path / "s"), "--from", str(net), str(cs), "--readers", "a,b"])
    assert made.exit_code == 0, made.output
    assert "2 pairs for 2 reader(s)" in made.output
    again = runner.invoke(review_app, ["new", str(tmp_path / "s"), "--from", str(net)])
    assert again.exit_code == 2 and "StudyExistsError" in again.output
    shown = runner.invoke(review_app, ["results", str(tmp_path / "s"), "--csv", str(tmp_path / "r.csv")])
    assert shown.exit_code == 0, shown.output
    assert "rgancs" in shown.output and (tmp_path / "r.csv").is_file()
    broken = runner.invoke(review_app, ["results", str(tmp_path)])
    assert broken.exit_code == 2 and "StudyFormatError" in broken.output
    assert {c.callback.__name__ for c in review_app.registered_commands} == {"new", "serve", "results", "report"}


def test_single_image_scores(tmp_path):
    exam = write_exam(tmp_path / "e.h5", methods=PAIR, slices=2)
    study = create_study(tmp_path / "s", [exam], readers=["a"], pairs=[PAIR], single=True, seed=0)
    store = AnswerStore(study)
    given = {"rgancs": [5, 3], "cs_wavelet": [2, 2]}
    for item in study.data["items"]:
        if item["kind"] == "single":
            score = given[item["methods"][0]].pop()
            store.save("a", item["id"], {f"left_{c}": score for c in ("quality", "artefacts", "blurring")})
    single = compute_results(tmp_path / "s").single
    assert single["rgancs"] == {"n": 2, "quality": 4.0, "artefacts": 4.0, "blurring": 4.0}
    assert single["cs_wavelet"]["quality"] == 2.0
