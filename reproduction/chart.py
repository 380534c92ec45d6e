"""Per-method box + strip plot of per-case Dice, one panel per protocol and budget, the paper's value marked."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from reproduction.paper import paper_entry
from reproduction.rows import budget_order, case_means, group
from viz.io import save_png


def draw_chart(path: Path, dataset: str, case_rows: list[dict], published: dict, title_note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    protocols = list(dict.fromkeys(r["protocol"] for r in case_rows))
    budgets = sorted({r["budget"] for r in case_rows}, key=budget_order)
    fig, axes = plt.subplots(len(protocols), len(budgets), squeeze=False, sharey=True,
                             figsize=(1.2 + 2.6 * len(budgets), 0.8 + 3.2 * len(protocols)))
    rng = np.random.default_rng(0)  # jitter only
    for i, protocol in enumerate(protocols):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            rows = [r for r in case_rows if r["protocol"] == protocol and r["budget"] == budget]
            per_method: dict[str, list[float]] = defaultdict(list)
            for (method,), rs in sorted(group(rows, "method").items(), key=lambda kv: kv[0][0] != "ss_net"):
                by_seed = {seed: case_means(srs) for (seed,), srs in group(rs, "seed").items()}
                cases = sorted(set.intersection(*(set(v) for v in by_seed.values())))
                per_method[method] = [100.0 * float(np.mean([by_seed[s][c]["dice"] for s in by_seed])) for c in cases]
            names = list(per_method)
            if names:
                ax.boxplot([per_method[n] for n in names], widths=0.5, showfliers=False)
            marked = False
            for k, name in enumerate(names, start=1):
                values = per_method[name]
                ax.scatter(k + rng.uniform(-0.12, 0.12, len(values)), values, s=10, alpha=0.6, color="tab:blue")
                paper = paper_entry(published, dataset, name, budget)
                if paper:
                    ax.scatter([k], [paper["dice"]], marker="D", s=40, color="tab:red", zorder=3,
                               label=None if marked else "paper")
                    marked = True
            ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{protocol}, {budget} labeled", fontsize=9)
            if j == 0:
                ax.set_ylabel("per-case Dice (%), mean over seeds")
            if marked:
                ax.legend(fontsize=7, loc="lower right")
    title = f"{dataset}: per-case test Dice (box + cases{'; red diamond = published mean' if published else ''})"
    finish_chart(fig, path, title, title_note)


def finish_chart(fig, path: Path, title: str, title_note: str = "") -> None:
    """The grid's figures end alike: a run mode other than the full one (quick, shortened) heads the title in red;
    the PNG is written atomically (viz.io.save_png)."""
    unusual = bool(title_note) and title_note != "full"
    fig.suptitle(f"{title_note}\n{title}" if unusual else title, fontsize=10, color="red" if unusual else "black")
    fig.tight_layout()
    save_png(fig, path, dpi=110)
