"""The one report format of scored predictions (test scripts, predict.py --labels, tools.score): the paper-style
table on stdout, a per-case CSV and a JSON summary whose `metrics` block states the units and the rules."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from utils.atomic import write_text_atomic
from utils.metrics import summarize

TABLE_KEYS = ("dice", "jaccard", "hd95", "asd")
CSV_COLUMNS = ("case", "class", "class_name", "dice", "jaccard", "hd95", "asd", "assd", "empty_pred", "empty_ref")


def summarize_rows(rows: list[dict], class_names: dict[int, str]) -> dict:
    """Per class: mean/sd over cases. 'mean': the class means averaged (official), sd over per-case class means."""
    per_class = {}
    for c, name in class_names.items():
        per_class[name] = summarize([r for r in rows if r["class"] == c], TABLE_KEYS + ("assd",))
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    case_means = [{k: float(np.nanmean([r[k] for r in rs])) if not all(math.isnan(r[k]) for r in rs) else math.nan
                   for k in TABLE_KEYS + ("assd",)} for rs in by_case.values()]
    overall = summarize(case_means, TABLE_KEYS + ("assd",))
    for key in overall:
        overall[key]["mean"] = float(np.nanmean([per_class[n][key]["mean"] for n in per_class]))
    return {"per_class": per_class, "mean": overall}


def format_table(summary: dict, units: str, title: str) -> str:
    """Dice / Jaccard in %, distances in `units`, mean ± sd over cases, like the paper's tables."""
    header = f"{'':14s}{'Dice (%)':>16s}{'Jaccard (%)':>16s}{'95HD (' + units + ')':>18s}{'ASD (' + units + ')':>18s}"
    lines = [title, header, "-" * len(header)]

    def row(name: str, stats: dict) -> str:
        cells = []
        for key, width in zip(TABLE_KEYS, (16, 16, 18, 18), strict=True):
            scale = 100.0 if key in ("dice", "jaccard") else 1.0
            cells.append(f"{stats[key]['mean'] * scale:.2f} ± {stats[key]['sd'] * scale:.2f}".rjust(width))
        return f"{name:14s}" + "".join(cells)

    per_class = summary["per_class"]
    for name, stats in per_class.items():
        lines.append(row(name, stats))
    if len(per_class) > 1:
        lines.append(row("mean", summary["mean"]))
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS if k in r})
    write_text_atomic(path, buffer.getvalue())


def write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=float) + "\n")


def empty_rule(empty_policy: str) -> str:
    return ("empty prediction scores dice=jaccard=hd95=asd=0 (official rule)" if empty_policy == "official"
            else "empty prediction: dice 0, distances NaN")


def metrics_block(units: str, spacing, empty_policy: str) -> dict:
    """How the numbers of a report were computed: distance units and voxel size, metric definitions, empty rule.

    units: "voxel" or "mm"; spacing: the voxel size in mm used for every case, None (voxel units) or a text
    such as "each scan's NIfTI voxel size" when it varies per case."""
    return {
        "units": units,
        "spacing": list(spacing) if isinstance(spacing, (tuple, list)) else spacing,
        "dice_jaccard": "fractions in the CSV and here; percent in the printed table",
        "hd95": "95th percentile of the pooled surface distances both ways (medpy hd95)",
        "asd": "directed mean surface distance prediction -> reference (medpy asd); assd = symmetric",
        "empty_policy": empty_policy,
        "empty_rule": empty_rule(empty_policy),
    }


def report(rows: list[dict], class_names: dict[int, str], *, units: str, spacing, empty_policy: str,
           **context) -> dict:
    """The JSON summary: `context` (what was scored), the metrics block, empty predictions, per class and mean."""
    summary = summarize_rows(rows, class_names)
    return {**context, "metrics": metrics_block(units, spacing, empty_policy),
            "empty_predictions": sum(bool(r["empty_pred"]) for r in rows),
            "per_class": summary["per_class"], "mean": summary["mean"]}
