"""Seeds: every variant of a study once per seed, and whether a difference is beyond seed noise.

With several seeds a study's run `<variant>` becomes `<variant>/seed-<k>`, each its own resumable run
folder; with one seed the layout stays `<variant>`. Over its seeds a variant's score is shown as mean ±
standard deviation (n - 1 in the denominator) and a 95% confidence interval of the mean from Student's
t-distribution. Two variants "differ beyond seed noise" when their intervals do not overlap, else they
are "within seed noise". Non-overlap is a conservative test: "within seed noise" means the seeds run so far
do not show a difference, not that there is none.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

import numpy as np
from scipy import stats

from col775.core.report import Report

C = TypeVar("C")
T = TypeVar("T")

SEED_FOLDER = "/seed-"


def parse_seeds(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; one clear error for anything else."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes whole numbers separated by commas (e.g. 0,1,2), got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least one seed and no seed twice, got {text!r}")
    return seeds


def seeded(runs: Mapping[str, C], seeds: list[int] | None) -> dict[str, C]:
    """Each run once per seed: `<name>/seed-<k>` with `seed` set to k; one seed keeps the names as they are,
    and None keeps the runs as they are (each config's own seed)."""
    if seeds is None:
        return dict(runs)
    if len(seeds) == 1:
        return {name: dataclasses.replace(config, seed=seeds[0]) for name, config in runs.items()}
    return {f"{name}{SEED_FOLDER}{seed}": dataclasses.replace(config, seed=seed)
            for name, config in runs.items() for seed in seeds}


def variant(name: str) -> str:
    """The variant a run folder name belongs to: "norm-bn/seed-2" -> "norm-bn"."""
    return name.split(SEED_FOLDER)[0]


def by_variant(runs: Mapping[str, T]) -> dict[str, dict[str, T]]:
    """Runs grouped by variant, in the order the variants first appear."""
    groups: dict[str, dict[str, T]] = {}
    for name, run in runs.items():
        groups.setdefault(variant(name), {})[name] = run
    return groups


def first_seed(runs: Mapping[str, T]) -> dict[str, tuple[str, T]]:
    """Per variant, the (name, run) of its first seed present: the run a report's detailed sections show."""
    return {key: next(iter(group.items())) for key, group in by_variant(runs).items()}


@dataclass(frozen=True)
class Spread:
    """One score of one variant over its seeds."""

    values: tuple[float, ...]
    confidence: float = 0.95

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        """Sample standard deviation (n - 1); NaN for one value."""
        return float(np.std(self.values, ddof=1)) if self.n > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The t-distribution confidence interval of the mean; NaN bounds for one value."""
        if self.n < 2:
            return math.nan, math.nan
        if self.std == 0:  # identical values: scipy refuses a zero scale
            return self.mean, self.mean
        low, high = stats.t.interval(self.confidence, self.n - 1, loc=self.mean, scale=stats.sem(self.values))
        return float(low), float(high)

    def text(self) -> str:
        """"84.1 ± 1.2" (one decimal, in the values' own unit); the mean alone for one seed."""
        return f"{self.mean:.1f}" if self.n < 2 else f"{self.mean:.1f} ± {self.std:.1f}"

    def interval_text(self) -> str:
        low, high = self.interval
        return "n/a (one seed)" if self.n < 2 else f"{low:.1f} to {high:.1f}"


def verdict(a: Spread, b: Spread) -> str:
    """"differs beyond seed noise" when the two intervals do not overlap, else "within seed noise"."""
    if min(a.n, b.n) < 2:
        return "seed noise unknown (one seed; run the study with --seeds 0,1,2)"
    (a_low, a_high), (b_low, b_high) = a.interval, b.interval
    return "within seed noise" if a_low <= b_high and b_low <= a_high else "differs beyond seed noise"


@dataclass
class SeedNoise:
    """What a study's seed section shows: scores per variant over seeds, and the comparisons it asks about.

    `scores` maps a variant's label to {score label: values over seeds}; each comparison is
    (what is compared, label a, label b, score label).
    """

    scores: dict[str, dict[str, list[float]]]
    comparisons: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add_to(self, report: Report) -> None:
        report.heading("Seed noise")
        names = list(dict.fromkeys(key for scores in self.scores.values() for key in scores))
        headers = ["variant", "seeds"] + [h for key in names for h in (f"{key}: mean ± std", f"{key}: 95% interval")]
        rows: list[list[Any]] = []
        for label, scores in self.scores.items():
            spreads = [Spread(tuple(scores[key])) if key in scores else None for key in names]
            rows.append([label, max(s.n for s in spreads if s)]
                        + [c for s in spreads for c in ((s.text(), s.interval_text()) if s else ("", ""))])
        report.table(headers, rows)
        report.text(
            "Mean ± sample standard deviation over seeds, and the 95% confidence interval of the mean "
            "(Student's t). Two variants differ beyond seed noise when their intervals do not overlap; "
            "the other seeds' settings and provenance are in their run folders (`<variant>/seed-<k>`)."
        )
        sentences = []
        for what, a, b, key in self.comparisons:
            if key in self.scores.get(a, {}) and key in self.scores.get(b, {}):
                left, right = Spread(tuple(self.scores[a][key])), Spread(tuple(self.scores[b][key]))
                sentences.append(f"{what} ({key}): {a} {left.text()} against {b} {right.text()}: "
                                 f"{verdict(left, right)}.")
        if sentences:
            report.text(" ".join(sentences))
