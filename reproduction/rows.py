"""Per-case result rows (one per case, class, seed and protocol): grouping, ordering and averaging helpers shared
by the tables (aggregate.py) and the chart (chart.py)."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

# the `mode` column: what kind of grid produced a row (quick and shortened rows are never a reproduction)
QUICK_MODE = "QUICK MODE: NOT a reproduction"
SHORTENED_MODE = "SHORTENED schedule: NOT the paper's setting"
FULL_MODE = "full"

METRICS = ("dice", "jaccard", "hd95", "asd")
PERCENT = ("dice", "jaccard")  # fractions in the test CSVs, percent in the tables (as the paper)
def budget_order(budget: str) -> tuple[int, int]:
    return (1, 0) if budget == "all" else (0, int(budget))


def scale(metric: str) -> float:
    return 100.0 if metric in PERCENT else 1.0


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def case_means(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{case: {metric: mean over the case's classes}} (LA: the one class; ACDC: RV, Myo, LV)."""
    by_case: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_case[r["case"]].append(r)
    out = {}
    for case, rs in by_case.items():
        out[case] = {}
        for m in METRICS:
            values = [_float(r[m]) for r in rs if math.isfinite(_float(r[m]))]
            out[case][m] = float(np.mean(values)) if values else math.nan
    return out


def group(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        grouped[tuple(r[k] for k in keys)].append(r)
    return grouped
