"""Unblinding and statistics of a reader study.

Only complete answers count. Per method pair (A, B), in the order the study lists them:

* win / tie / loss of A against B (a loss is a win of B); the win fraction is wins / (wins + losses),
  **ties left out**, with its 95 % Wilson score interval (NaN when every answer is a tie);
* per rubric criterion, the mean scores of A and B and the Wilcoxon signed-rank test (two-sided,
  ``scipy.stats.wilcoxon``, zero differences dropped) on the paired scores, one pair per reader and item;
* agreement of the readers on the preference (A, B or tie) over the items they all answered: Cohen's
  kappa for two readers, Fleiss' kappa for three or more.

Single-image items give the mean rubric scores per method.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .store import AnswerStore, is_complete
from .study import RUBRIC, Study, load_study

Z95 = float(stats.norm.ppf(0.975))
TIE = "tie"


@dataclass(frozen=True)
class Unblinded:
    """One complete answer with sides mapped back to methods."""

    reader: str
    item: str
    kind: str
    methods: tuple[str, ...]  # (A, B) as the study lists the pair, or (method,)
    preferred: str | None  # a method, "tie", or None for single images
    scores: dict[str, dict[str, int]]  # method -> criterion -> score


@dataclass
class CriterionResult:
    n: int
    mean_a: float
    mean_b: float
    statistic: float
    p_value: float


@dataclass
class PairResult:
    method_a: str
    method_b: str
    n: int
    wins: int
    ties: int
    losses: int
    win_fraction: float
    ci_low: float
    ci_high: float
    criteria: dict[str, CriterionResult] = field(default_factory=dict)
    readers: int = 0
    kappa: float = math.nan
    kappa_kind: str = ""
    kappa_items: int = 0


def unblind(study: Study, answers: dict[tuple[str, str], dict[str, Any]]) -> list[Unblinded]:
    """Map every complete answer's sides to methods with the study's per-reader sides."""
    items = study.items
    out = []
    for (reader, item_id), row in sorted(answers.items()):
        item = items.get(item_id)
        if item is None or reader not in study.data["readers"] or not is_complete(item["kind"], row):
            continue
        seen = {it.id: it for it in study.reader_items(reader)}[item_id]  # methods in left, right order
        side_method = dict(zip(("left", "right"), seen.methods, strict=False))
        scores = {m: {c: int(row[f"{side}_{c}"]) for c in RUBRIC} for side, m in side_method.items()}
        preferred = None
        if item["kind"] == "pair":
            preferred = TIE if row["preference"] == "none" else side_method[row["preference"]]
        out.append(Unblinded(reader, item_id, item["kind"], tuple(item["methods"]), preferred, scores))
    return out


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (NaN, NaN) for n = 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items; NaN when chance agreement is 1."""
    if len(first) != len(second) or not first:
        return math.nan
    labels = sorted(set(first) | set(second))
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / len(first)
    expected = sum((first.count(k) / len(first)) * (second.count(k) / len(second)) for k in labels)
    return math.nan if expected >= 1 else (observed - expected) / (1 - expected)


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' kappa of an items x categories table of counts (the same number of raters per item)."""
    table = np.asarray(table, dtype=float)
    if table.ndim != 2 or table.shape[0] == 0:
        return math.nan
    raters = table.sum(axis=1)
    if np.any(raters != raters[0]) or raters[0] < 2:
        return math.nan
    m = raters[0]
    agreement = ((table**2).sum(axis=1) - m) / (m * (m - 1))
    shares = table.sum(axis=0) / table.sum()
    expected = float((shares**2).sum())
    return math.nan if expected >= 1 else (float(agreement.mean()) - expected) / (1 - expected)


def _wilcoxon(a: list[int], b: list[int]) -> tuple[float, float]:
    if not a or all(x == y for x, y in zip(a, b, strict=True)):
        return math.nan, math.nan
    result = stats.wilcoxon(a, b)
    return float(result.statistic), float(result.pvalue)


def pair_results(study: Study, answers: list[Unblinded]) -> list[PairResult]:
    """Win/tie/loss, Wilson interval, Wilcoxon per criterion and kappa for every pair of the study."""
    results = []
    for method_a, method_b in (tuple(p) for p in study.data["pairs"]):
        rows = [u for u in answers if u.kind == "pair" and u.methods == (method_a, method_b)]
        wins = sum(u.preferred == method_a for u in rows)
        losses = sum(u.preferred == method_b for u in rows)
        ties = sum(u.preferred == TIE for u in rows)
        decided = wins + losses
        low, high = wilson_interval(wins, decided)
        result = PairResult(
            method_a, method_b, len(rows), wins, ties, losses, wins / decided if decided else math.nan, low, high
        )
        for criterion in RUBRIC:
            a = [u.scores[method_a][criterion] for u in rows]
            b = [u.scores[method_b][criterion] for u in rows]
            statistic, p = _wilcoxon(a, b)
            mean_a = float(np.mean(a)) if a else math.nan
            mean_b = float(np.mean(b)) if b else math.nan
            result.criteria[criterion] = CriterionResult(len(rows), mean_a, mean_b, statistic, p)
        _agreement(result, rows)
        results.append(result)
    return results


def _agreement(result: PairResult, rows: list[Unblinded]) -> None:
    by_reader: dict[str, dict[str, str]] = {}
    for u in rows:
        by_reader.setdefault(u.reader, {})[u.item] = (
            "a" if u.preferred == result.method_a else ("b" if u.preferred == result.method_b else TIE)
        )
    readers = sorted(by_reader)
    result.readers = len(readers)
    if len(readers) < 2:
        return
    common = sorted(set.intersection(*(set(v) for v in by_reader.values())))
    result.kappa_items = len(common)
    if len(readers) == 2:
        result.kappa_kind = "cohen"
        first, second = ([by_reader[r][i] for i in common] for r in readers)
        result.kappa = cohen_kappa(first, second)
    else:
        result.kappa_kind = "fleiss"
        categories = ["a", "b", TIE]
        table = np.array([[sum(by_reader[r][i] == c for r in readers) for c in categories] for i in common])
        result.kappa = fleiss_kappa(table) if common else math.nan


def single_results(answers: list[Unblinded]) -> dict[str, dict[str, float]]:
    """Mean rubric score per method (and the count ``n``) from single-image items."""
    out: dict[str, dict[str, float]] = {}
    for method in sorted({u.methods[0] for u in answers if u.kind == "single"}):
        rows = [u.scores[method] for u in answers if u.kind == "single" and u.methods[0] == method]
        out[method] = {"n": len(rows), **{c: float(np.mean([r[c] for r in rows])) for c in RUBRIC}}
    return out


@dataclass
class StudyResults:
    pairs: list[PairResult]
    single: dict[str, dict[str, float]]
    answers: list[Unblinded]
    readers: list[str]


def compute_results(study_dir: str | Path) -> StudyResults:
    """Load the study and its answers, unblind and compute every statistic."""
    study = load_study(study_dir)
    answers = unblind(study, AnswerStore(study).answers())
    return StudyResults(
        pair_results(study, answers), single_results(answers), answers, sorted({u.reader for u in answers})
    )


def write_csv(results: StudyResults, path: str | Path) -> list[Path]:
    """``PATH`` (one row per pair), ``PATH_answers.csv`` (every unblinded answer), ``PATH_single.csv`` if any."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path]
    criteria = list(RUBRIC)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        head = ["method_a", "method_b", "n", "wins", "ties", "losses", "win_fraction_ties_excluded", "ci95_low"]
        head += ["ci95_high"]
        for c in criteria:
            head += [f"{c}_mean_a", f"{c}_mean_b", f"{c}_wilcoxon_statistic", f"{c}_wilcoxon_p"]
        writer.writerow([*head, "readers", "kappa_kind", "kappa", "kappa_items"])
        for r in results.pairs:
            row: list[Any] = [
                r.method_a,
                r.method_b,
                r.n,
                r.wins,
                r.ties,
                r.losses,
                r.win_fraction,
                r.ci_low,
                r.ci_high,
            ]
            for c in criteria:
                k = r.criteria[c]
                row += [k.mean_a, k.mean_b, k.statistic, k.p_value]
            writer.writerow([*row, r.readers, r.kappa_kind, r.kappa, r.kappa_items])
    answers_path = path.with_name(f"{path.stem}_answers.csv")
    with answers_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["reader", "item", "kind", "method_a", "method_b", "preferred"]
            + [f"{which}_{c}" for which in ("a", "b") for c in criteria]
        )
        for u in results.answers:
            b = u.methods[1] if len(u.methods) > 1 else ""
            scores = [u.scores[u.methods[0]][c] for c in criteria] + [u.scores[b][c] if b else "" for c in criteria]
            writer.writerow([u.reader, u.item, u.kind, u.methods[0], b, u.preferred or "", *scores])
    written.append(answers_path)
    if results.single:
        single_path = path.with_name(f"{path.stem}_single.csv")
        with single_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["method", "n", *criteria])
            for method, values in results.single.items():
                writer.writerow([method, int(values["n"]), *(values[c] for c in criteria)])
        written.append(single_path)
    return written


def as_dict(result: PairResult) -> dict[str, Any]:
    """A pair result as plain data (for JSON)."""
    return asdict(result)
