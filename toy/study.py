"""The toy study grid (label counts x noise gamma x method x seeds): accuracy table and the Fig. 1-style figure."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toy.two_moons import TOY_METHODS, ToySettings, accuracy, deep_features, make_two_moons, predict_probs, train_moons
from utils.atomic import write_text_atomic

METHOD_TITLES = {"supervised": "supervised", "ss_net": "SS-Net ideas"}
PLOT_BOUNDS = (-1.6, 2.6, -1.1, 1.6)  # x_min, x_max, y_min, y_max: the moons plus noise
MOON_COLORS = {0: "#2166ac", 1: "#b2182b"}  # the ends of the RdBu_r map that shades p(moon 1)


@dataclass
class ModelView:
    """What the figure shows of one trained model (the first seed of a cell)."""

    boundary_probs: np.ndarray  # (R, R) p(class 1) on the plotting grid
    tsne: np.ndarray  # (T, 2) t-SNE of the deep features of the shown test points
    tsne_labels: np.ndarray  # (T,)
    silhouette: float


@dataclass
class Cell:
    n_labeled: int
    gamma: float
    accuracies: dict[str, list[float]] = field(default_factory=dict)  # method -> test accuracy per seed
    views: dict[str, ModelView] = field(default_factory=dict)
    labeled_x: np.ndarray | None = None
    labeled_y: np.ndarray | None = None
    unlabeled_x: np.ndarray | None = None

    def mean_sd(self, method: str) -> tuple[float, float]:
        values = np.asarray(self.accuracies[method])
        return float(values.mean()), float(values.std())


def boundary_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    x_min, x_max, y_min, y_max = PLOT_BOUNDS
    return np.meshgrid(np.linspace(x_min, x_max, resolution), np.linspace(y_min, y_max, resolution))


def run_study(label_counts: list[int], gammas: list[float], *, seeds: int = 3, settings: ToySettings | None = None,
              methods: tuple[str, ...] = TOY_METHODS, tsne_points: int = 400, resolution: int = 120,
              with_views: bool = True, log=print) -> list[Cell]:
    """Train every (label count, gamma, method, seed); keep the first seed's model views for the figure.

    Seed k uses data seed k and model seed k for both methods, so the methods see identical data.
    """
    from viz.embedding import silhouette, tsne_embedding

    settings = settings or ToySettings()
    cells = []
    xx, yy = boundary_grid(resolution)
    grid_points = np.stack([xx.ravel(), yy.ravel()], 1)
    for gamma in gammas:
        for n_labeled in label_counts:
            cell = Cell(n_labeled, gamma)
            for seed in range(seeds):
                data = make_two_moons(n_labeled, gamma, seed=seed)
                if seed == 0:
                    cell.labeled_x, cell.labeled_y, cell.unlabeled_x = data.labeled_x, data.labeled_y, data.unlabeled_x
                for method in methods:
                    started = time.perf_counter()
                    model = train_moons(data, method, settings, seed=seed)
                    cell.accuracies.setdefault(method, []).append(accuracy(model, data.test_x, data.test_y))
                    if seed == 0 and with_views:
                        shown = np.random.default_rng(seed).choice(len(data.test_y), min(tsne_points,
                                                                                         len(data.test_y)), False)
                        features = deep_features(model, data.test_x[shown])
                        labels = data.test_y[shown]
                        cell.views[method] = ModelView(predict_probs(model, grid_points).reshape(xx.shape),
                                                       tsne_embedding(features, seed=seed), labels,
                                                       silhouette(features, labels))
                    log(f"{n_labeled:4d} labels, gamma {gamma:.2f}, seed {seed}, {method:10s}: test accuracy "
                        f"{cell.accuracies[method][-1]:.3f} ({time.perf_counter() - started:.1f} s)")
            cells.append(cell)
    return cells


def accuracy_table(cells: list[Cell], seeds: int) -> str:
    methods = list(cells[0].accuracies)
    header = "| labels | gamma | " + " | ".join(f"{METHOD_TITLES.get(m, m)} (%)" for m in methods) + " |"
    lines = [f"Test accuracy on 1,000 fresh points, mean ± sd over {seeds} seed(s)", "", header,
             "|---|---|" + "---|" * len(methods)]
    for cell in cells:
        values = " | ".join("{:.1f} ± {:.1f}".format(*(100 * v for v in cell.mean_sd(m))) for m in methods)
        lines.append(f"| {cell.n_labeled} | {cell.gamma:g} | {values} |")
    return "\n".join(lines) + "\n"


def study_figure(cells: list[Cell], *, panel_inches: float = 2.4):
    """Rows: (gamma, label count) cells; per method two panels: decision boundary and t-SNE of deep features."""
    import matplotlib.pyplot as plt

    from viz.embedding import scatter_by_class

    methods = list(cells[0].views)
    n_rows, n_cols = len(cells), 2 * len(methods)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * panel_inches, n_rows * panel_inches),
                                squeeze=False)
    resolution = next(iter(cells[0].views.values())).boundary_probs.shape[0]
    xx, yy = boundary_grid(resolution)
    for row, cell in enumerate(cells):
        for m, method in enumerate(methods):
            view = cell.views[method]
            shown_accuracy = cell.accuracies[method][0]  # the model drawn is seed 0's; the table has the mean
            ax = axes[row, 2 * m]
            ax.contourf(xx, yy, view.boundary_probs, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.35)
            ax.contour(xx, yy, view.boundary_probs, levels=[0.5], colors="k", linewidths=1.2)
            ax.scatter(cell.unlabeled_x[:, 0], cell.unlabeled_x[:, 1], s=1, c="#555555", alpha=0.35, linewidths=0)
            for c in (0, 1):
                chosen = cell.labeled_y == c
                ax.scatter(cell.labeled_x[chosen, 0], cell.labeled_x[chosen, 1], s=40, c=MOON_COLORS[c],
                           edgecolors="k", linewidths=0.8, zorder=3)
            ax.set_xlim(PLOT_BOUNDS[0], PLOT_BOUNDS[1])
            ax.set_ylim(PLOT_BOUNDS[2], PLOT_BOUNDS[3])
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{METHOD_TITLES.get(method, method)}: test acc {100 * shown_accuracy:.1f}%", fontsize=8)
            if m == 0:
                ax.set_ylabel(f"{cell.n_labeled} labels, γ = {cell.gamma:g}", fontsize=9)
            ax = axes[row, 2 * m + 1]
            scatter_by_class(ax, view.tsne, view.tsne_labels, {0: "moon 0", 1: "moon 1"}, size=3, legend=False,
                             colors=MOON_COLORS)
            ax.set_title(f"t-SNE of deep features (silh. {view.silhouette:.2f})", fontsize=8)
    figure.subplots_adjust(left=0.04, right=0.99, bottom=0.01, top=1 - 0.35 / (n_rows * panel_inches),
                           wspace=0.05, hspace=0.18)
    return figure


def write_study(cells: list[Cell], out_dir: str | Path, seeds: int, settings: ToySettings, seconds: float) -> dict:
    """two_moons.png (if the views were computed), two_moons.md (table) and two_moons.json in out_dir."""
    from viz.io import save_png

    out_dir = Path(out_dir)
    table = accuracy_table(cells, seeds)
    write_text_atomic(out_dir / "two_moons.md", table)
    payload = {
        "settings": settings.to_dict(),
        "seeds": seeds,
        "seconds": round(seconds, 1),
        "test_points": 1000,
        "unlabeled_points": 1000,
        "cells": [{"n_labeled": c.n_labeled, "gamma": c.gamma, "accuracy": c.accuracies,
                   "mean": {m: c.mean_sd(m)[0] for m in c.accuracies},
                   "sd": {m: c.mean_sd(m)[1] for m in c.accuracies}} for c in cells],
    }
    write_text_atomic(out_dir / "two_moons.json", json.dumps(payload, indent=2) + "\n")
    paths = {"table": out_dir / "two_moons.md", "json": out_dir / "two_moons.json"}
    if all(c.views for c in cells):
        paths["figure"] = save_png(study_figure(cells), out_dir / "two_moons.png")
    return {"table": table, "paths": paths}
