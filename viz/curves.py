"""Training curves from run folders: TensorBoard events and/or log.txt, readable while the run is going.

The trainer writes every loss term, the warm-up weight, the LR and the selection Dice both to TensorBoard
(flushed every couple of minutes) and to log.txt (one line per iteration, flushed at once). Both are read;
for each series the source that reaches the later iteration wins, so a live run shows its newest steps.
A step logged twice (a resumed run) keeps its last value.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from utils.errors import UserError

Series = tuple[np.ndarray, np.ndarray]  # (iterations, values)

_EVAL_LINE = re.compile(r"iteration (\d+): (\w+) mean Dice ([-+0-9.eEnaif]+)")
_TERMS_LINE = re.compile(r"iteration (\d+): (.*) lr ([-+0-9.eE]+)\s*$")
# log.txt lines are "iteration N: <loss terms> | <monitors> lr X" (training/run_logger.py); logs written before
# the separator existed name their monitors by these prefixes
_OLD_MONITOR_PREFIXES = ("memory", "consistency")


def tag_for_term(name: str, monitor: bool | None = None) -> str:
    if monitor is None:  # an older log.txt without the " | " separator
        monitor = name.startswith(_OLD_MONITOR_PREFIXES)
    return f"train/{name}" if monitor else f"loss/{name}"


def _series(points: dict[int, float]) -> Series:
    steps = np.array(sorted(points), dtype=np.int64)
    return steps, np.array([points[s] for s in steps], dtype=np.float64)


def read_log_scalars(log_path: str | Path) -> dict[str, Series]:
    """Parse log.txt; a half-written last line or foreign lines are skipped."""
    points: dict[str, dict[int, float]] = {}

    def add(tag: str, step: int, value: float) -> None:
        points.setdefault(tag, {})[step] = value

    with open(log_path, errors="replace") as f:
        for line in f:
            if (match := _EVAL_LINE.search(line)) is not None:
                try:
                    add(f"{match[2]}/mean_dice", int(match[1]), float(match[3]))
                except ValueError:
                    pass
                continue
            if (match := _TERMS_LINE.search(line)) is None:
                continue
            step, groups = int(match[1]), match[2].split(" | ")
            try:
                pairs = []
                for position, group in enumerate(groups):
                    words = group.split()
                    monitor = None if len(groups) == 1 else position == 1
                    pairs += [(words[i], float(words[i + 1]), monitor) for i in range(0, len(words) - 1, 2)]
                lr = float(match[3])
            except ValueError:
                continue
            for name, value, monitor in pairs:
                add(tag_for_term(name, monitor), step, value)
            add("train/lr", step, lr)
    return {tag: _series(p) for tag, p in points.items()}


def read_tensorboard_scalars(event_dir: str | Path) -> dict[str, Series]:
    """Every scalar of the event files in event_dir (several files after a resume are read in order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    result = {}
    for tag in accumulator.Tags().get("scalars", []):
        points = {int(e.step): float(e.value) for e in accumulator.Scalars(tag)}
        result[tag] = _series(points)
    return result


def read_run_scalars(run_dir: str | Path) -> dict[str, Series]:
    """Merge TensorBoard and log.txt scalars of one run folder; raise if the folder holds neither."""
    run_dir = Path(run_dir)
    sources = []
    if list((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        sources.append(read_tensorboard_scalars(run_dir / "tensorboard"))
    if (run_dir / "log.txt").is_file():
        sources.append(read_log_scalars(run_dir / "log.txt"))
    if not sources:
        raise FileNotFoundError(f"{run_dir} holds neither tensorboard/ event files nor log.txt; "
                                "pass a run folder written by train_la.py / train_acdc.py")
    merged: dict[str, Series] = {}
    for scalars in sources:
        for tag, (steps, values) in scalars.items():
            if len(steps) and (tag not in merged or steps[-1] > merged[tag][0][-1]):
                merged[tag] = (steps, values)
    return merged


_ORDER = ("loss/total", "loss/supervised", "loss/dice", "loss/ce", "loss/lds", "loss/separation_labeled",
          "loss/separation_unlabeled", "train/consistency_weight", "train/lr")


def tag_order(tags: set[str]) -> list[str]:
    """Loss terms (total first), warm-up weight, LR, selection Dice, then anything else (memory sizes)."""
    def key(tag: str):
        if tag in _ORDER:
            return (0, _ORDER.index(tag), tag)
        if tag.startswith("loss/"):
            return (0, len(_ORDER) - 2.5, tag)  # other loss terms before the weight and LR
        if tag.endswith("mean_dice"):
            return (1, 0, tag)
        return (2, 0, tag)
    return sorted(tags, key=key)


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average with bias correction (weight 0: unchanged)."""
    if weight <= 0 or len(values) == 0:
        return values
    out, average = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        average = weight * average + (1 - weight) * v
        out[i] = average / (1 - weight ** (i + 1))
    return out


def curves_figure(runs: dict[str, dict[str, Series]], *, smoothing: float = 0.9, columns: int = 4,
                  panel_inches: tuple[float, float] = (3.2, 2.4)):
    """One panel per scalar (union over runs), one colour per run; loss terms smoothed over the faint raw curve."""
    import matplotlib.pyplot as plt

    tags = tag_order({t for scalars in runs.values() for t in scalars})
    if not tags:
        raise UserError("the runs hold no scalars yet (no iteration finished?)")
    n_cols = min(columns, len(tags))
    n_rows = math.ceil(len(tags) / n_cols)
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * panel_inches[0], n_rows * panel_inches[1]),
                                squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, tag in enumerate(tags):
        ax = axes.flat[i]
        for r, (name, scalars) in enumerate(runs.items()):
            if tag not in scalars:
                continue
            steps, values = scalars[tag]
            color = colors[r % len(colors)]
            if tag.startswith("loss/") and len(values) > 1:
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.7)
                ax.plot(steps, smooth(values, smoothing), color=color, linewidth=1.3, label=name)
            else:
                ax.plot(steps, values, color=color, linewidth=1.3, marker="o" if len(values) < 30 else None,
                        markersize=3, label=name)
        if tag == "train/lr":
            ax.set_yscale("log")
        ax.set_title(tag, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(tags):]:
        ax.axis("off")
    figure.supxlabel("iteration", fontsize=9)
    figure.tight_layout()  # layout only: the canvas size stays figsize x dpi
    return figure
