"""Pure statistics for the reproduction tables: mean ± sd over seeds and paired per-case comparisons.

Pairing (documented in results/README.md): two methods are compared on the same test cases under the same
protocol and budget. Each case's Dice is first averaged over the seeds that *both* methods have finished
(so a seed missing on one side drops out of both), then the per-case differences (reference method minus
the other) are tested. The test case is the unit of replication: seeds of one case are not independent
samples, so they are averaged rather than pooled as extra pairs.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample sd with ddof=1, n) of the finite values; sd is 0 for one value, NaN for none."""
    kept = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if kept.size == 0:
        return math.nan, math.nan, 0
    sd = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    return float(kept.mean()), sd, int(kept.size)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (scipy; exact for small n without ties).

    Zero differences are dropped (Wilcoxon's convention); all zero -> p = 1 (no evidence of a difference);
    no pair -> NaN.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(scipy_stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_mean_ci(differences: Sequence[float], confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean, resampling the pairs (cases) with replacement.

    Seeded, so the same table always prints the same interval.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass
class PairedComparison:
    n_cases: int
    seeds: list[int]  # seeds both methods finished; each case's Dice is averaged over them
    mean_difference: float  # reference - other, in the unit of the inputs
    ci_low: float
    ci_high: float
    p_value: float  # two-sided Wilcoxon signed-rank

    def to_dict(self) -> dict:
        return asdict(self)


def seed_averaged_cases(per_seed: Mapping[int, Mapping[str, float]], seeds: Sequence[int]) -> dict[str, float]:
    """{case: value averaged over `seeds`} for the cases present in every one of those seeds."""
    if not seeds:
        return {}
    common = set.intersection(*(set(per_seed[s]) for s in seeds))
    return {case: float(np.mean([per_seed[s][case] for s in seeds])) for case in sorted(common)}


def paired_comparison(reference: Mapping[int, Mapping[str, float]], other: Mapping[int, Mapping[str, float]],
                      confidence: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> PairedComparison:
    """Compare two methods given {seed: {case: value}} each: pairs = cases, values averaged over shared seeds."""
    seeds = sorted(set(reference) & set(other))
    ref_cases, other_cases = seed_averaged_cases(reference, seeds), seed_averaged_cases(other, seeds)
    cases = sorted(set(ref_cases) & set(other_cases))
    differences = [ref_cases[c] - other_cases[c] for c in cases]
    if not differences:
        return PairedComparison(0, seeds, math.nan, math.nan, math.nan, math.nan)
    low, high = bootstrap_mean_ci(differences, confidence, resamples, seed)
    return PairedComparison(len(cases), seeds, float(np.mean(differences)), low, high, wilcoxon_p(differences))
