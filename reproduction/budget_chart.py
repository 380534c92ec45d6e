"""Dice against the number of labeled cases: one line per method, its spread across seeds, one panel per protocol.

The question it answers is the users' "does the unlabeled data help, and from how many labels on": the gap between
a method's line and `supervised` (labeled only) at each budget. The paired statistics behind each gap are in the
tables (aggregate.paired_table).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from reproduction.chart import finish_chart
from reproduction.rows import case_means, group


def budget_curves(case_rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float, float, int]]]]:
    """{protocol: {method: [(labeled cases, mean Dice %, sd over seeds, seeds), ...]}} sorted by labeled cases.

    Each seed's value is its test-set mean Dice (mean over cases of the case's class mean); the sd is over seeds
    (ddof 1; 0 for one seed)."""
    curves: dict[str, dict[str, list[tuple[int, float, float, int]]]] = {}
    for (protocol, method, labelnum), rows in group(case_rows, "protocol", "method", "labelnum").items():
        per_seed = [100.0 * float(np.nanmean([v["dice"] for v in case_means(rs).values()]))
                    for _, rs in sorted(group(rows, "seed").items())]
        sd = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        curves.setdefault(protocol, {}).setdefault(method, []).append(
            (int(labelnum), float(np.mean(per_seed)), sd, len(per_seed)))
    for methods in curves.values():
        for points in methods.values():
            points.sort()
    return curves


def draw_budget_chart(path: Path, dataset: str, case_rows: list[dict], title_note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = budget_curves(case_rows)
    fig, axes = plt.subplots(1, len(curves), squeeze=False, sharey=True, figsize=(1.5 + 4.2 * len(curves), 4.0))
    for ax, (protocol, methods) in zip(axes[0], curves.items(), strict=True):
        for method, points in sorted(methods.items(), key=lambda kv: (kv[0] != "supervised", kv[0])):
            x, mean, sd = (np.array([p[i] for p in points]) for i in range(3))
            style = {"linestyle": "--", "color": "black"} if method == "supervised" else {}
            ax.errorbar(x, mean, yerr=sd, marker="o", capsize=3, label=method, **style)
            ax.fill_between(x, mean - sd, mean + sd, alpha=0.12, color=style.get("color"))
        ax.set_xticks(sorted({p[0] for points in methods.values() for p in points}))
        ax.set_xlabel("labeled cases")
        ax.set_title(protocol, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("test Dice (%), mean ± sd over seeds")
    finish_chart(fig, path, f"{dataset}: Dice against the number of labeled cases (supervised = labeled only)",
                 title_note)
