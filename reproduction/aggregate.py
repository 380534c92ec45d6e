"""From per-case test metrics of every cell to the result tables: mean ± sd over seeds, paper numbers beside
them (not in quick mode: tiny synthetic runs are no comparison), paired per-case comparisons of every method against
a reference method (default `supervised` at the same budget, schedule and seeds: "does the unlabeled data help?"),
written as Markdown and CSV, and with several budgets a chart of Dice against the number of labeled cases."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from reproduction.budget_chart import draw_budget_chart
from reproduction.chart import draw_chart
from reproduction.paper import paper_entry
from reproduction.plan import describe_protocol
from reproduction.rows import METRICS, QUICK_MODE, _float, budget_order, case_means, group, scale
from reproduction.stats import mean_sd, paired_comparison, seed_averaged_cases
from utils.atomic import write_text_atomic

CASE_COLUMNS = ("mode", "protocol", "budget", "labelnum", "method", "role", "schedule", "iterations", "seed",
                "checkpoint", "case", "class",
                "class_name", "dice", "jaccard", "hd95", "asd", "assd", "empty_pred", "empty_ref")
REFERENCE_METHOD = "ss_net"  # listed first in the tables
DEFAULT_PAIRED_REFERENCE = "supervised"  # the paired comparisons: every method against the labeled-only run


def seed_means(rows: list[dict]) -> dict[str, float]:
    """One seed's test-set numbers as the test scripts print them: per class the mean over cases, then the mean
    of the classes (Dice/Jaccard in %)."""
    by_class: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        by_class[int(r["class"])].append(r)
    out = {}
    for m in METRICS:
        class_means = [mean_sd([_float(r[m]) for r in rs])[0] for rs in by_class.values()]
        finite = [v for v in class_means if math.isfinite(v)]
        out[m] = float(np.mean(finite)) * scale(m) if finite else math.nan
    return out


def summary_table(case_rows: list[dict], published: dict, dataset: str) -> list[dict]:
    """One row per (protocol, budget, method): mean ± sd over seeds, the paper's number and ours - paper."""
    table = []
    for (protocol, budget, method), rows in group(case_rows, "protocol", "budget", "method").items():
        per_seed = {seed: seed_means(rs) for (seed,), rs in group(rows, "seed").items()}
        paper = paper_entry(published, dataset, method, budget)
        row = {"mode": rows[0]["mode"], "protocol": protocol, "budget": budget,
               "labelnum": rows[0]["labelnum"], "method": method, "role": rows[0]["role"],
               "schedule": rows[0].get("schedule", ""), "iterations": rows[0].get("iterations", ""),
               "n_seeds": len(per_seed), "seeds": " ".join(str(s) for s in sorted(per_seed)),
               "n_cases": len({r["case"] for r in rows})}
        for m in METRICS:
            mean, sd, _ = mean_sd([v[m] for v in per_seed.values()])
            published_value = paper[m] if paper else math.nan
            row.update({f"{m}_mean": mean, f"{m}_sd": sd, f"{m}_paper": published_value,
                        f"{m}_diff": mean - published_value if paper else math.nan})
        row["n_empty_pred"] = sum(str(r["empty_pred"]) == "True" for r in rows)
        row["paper_source"] = paper["source"] if paper else ""
        row["paper_verified"] = paper.get("verified", "") if paper else ""
        table.append(row)
    protocols = {p: i for i, p in enumerate(("paper", "honest-val", "honest-last"))}
    table.sort(key=lambda r: (protocols.get(r["protocol"], 9), budget_order(r["budget"]),
                              r["method"] != REFERENCE_METHOD, r["role"] != "lower_bound", r["method"]))
    return table


def paired_table(case_rows: list[dict], reference: str = DEFAULT_PAIRED_REFERENCE,
                 per_case: list[dict] | None = None) -> list[dict]:
    """Every method against `reference` at the same protocol and budget, on per-case Dice (%): method − reference
    (positive = the method scores higher). `per_case`, when given, receives one row per (method, case) with both
    values, averaged over the seeds both finished."""
    out = []
    for (protocol, budget), rows in group(case_rows, "protocol", "budget").items():
        per_method: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        for (method, seed), rs in group(rows, "method", "seed").items():
            per_method[method][seed] = {c: v["dice"] * 100.0 for c, v in case_means(rs).items()}
        if reference not in per_method:
            continue
        for method in sorted(m for m in per_method if m != reference):
            result = paired_comparison(per_method[method], per_method[reference])
            common = {"mode": rows[0]["mode"], "protocol": protocol, "budget": budget, "reference": reference,
                      "method": method}
            out.append({**common, "metric": "dice_percent", "n_cases": result.n_cases,
                        "seeds": " ".join(map(str, result.seeds)), "mean_difference": result.mean_difference,
                        "ci95_low": result.ci_low, "ci95_high": result.ci_high, "wilcoxon_p": result.p_value})
            if per_case is not None:
                ours = seed_averaged_cases(per_method[method], result.seeds)
                theirs = seed_averaged_cases(per_method[reference], result.seeds)
                per_case += [{**common, "seeds": " ".join(map(str, result.seeds)), "case": case,
                              "method_dice_percent": ours[case], "reference_dice_percent": theirs[case],
                              "difference": ours[case] - theirs[case]} for case in sorted(set(ours) & set(theirs))]
    out.sort(key=lambda r: (r["protocol"], budget_order(r["budget"]), r["method"]))
    return out


def to_csv(rows: list[dict], columns: list[str] | tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buffer.getvalue()


def _cell(value: float, sd: float | None = None) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2f} ± {sd:.2f}" if sd is not None and math.isfinite(sd) else f"{value:.2f}"


def _diff(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "—"


def _p(value: float) -> str:
    if not math.isfinite(value):
        return "—"
    return f"{value:.2g}" if value >= 1e-4 else "<1e-4"


def markdown(dataset: str, table: list[dict], paired: list[dict], header_lines: list[str],
             chart_name: str = "", with_paper: bool = True, budget_chart_name: str = "") -> str:
    """with_paper=False (quick mode) leaves the published numbers and the differences out."""
    lines = [f"# {dataset}: SS-Net reproduction", ""] + header_lines + [""]
    units = "Dice / Jaccard in %, 95HD / ASD in voxels"
    for protocol in dict.fromkeys(r["protocol"] for r in table):
        paper_words = "paper = published number (data/paper_results.json); Δ = ours − paper; " if with_paper else ""
        lines += [f"## protocol {protocol}", "", f"*{describe_protocol(protocol, dataset)}*", "",
                  f"{units}; ours = mean ± sd over seeds (each seed: the test-set mean) under protocol "
                  f"{protocol}; {paper_words}empty pred. "
                  "= (case, class, seed) pairs with an empty prediction, which score 0 on every metric (official "
                  "rule; flatters 95HD / ASD).", ""]
        head = "| budget | labeled | method | schedule | seeds |"
        rule = "|---|---|---|---|---|"
        for name in ("Dice (%)", "Jaccard (%)", "95HD", "ASD"):
            head += f" {name} | paper | Δ |" if with_paper else f" {name} |"
            rule += "---|---|---|" if with_paper else "---|"
        head += " empty pred. |"
        rule += "---|"
        lines += [head, rule]
        for r in (r for r in table if r["protocol"] == protocol):
            role = {"lower_bound": " (labeled only)", "upper_bound": " (all labels)"}.get(r["role"], "")
            iterations = f", {int(r['iterations']):,} it" if str(r.get("iterations", "")).isdigit() else ""
            cells = (f"| {r['budget']} | {r['labelnum']} | {r['method']}{role} | {r.get('schedule', '')}{iterations} |"
                     f" {r['n_seeds']} |")
            for m in METRICS:
                cells += f" {_cell(r[m + '_mean'], r[m + '_sd'])} |"
                if with_paper:
                    cells += f" {_cell(r[m + '_paper'])} | {_diff(r[m + '_diff'])} |"
            lines.append(cells + f" {r['n_empty_pred']} |")
        rows = [r for r in paired if r["protocol"] == protocol]
        if rows:
            lines += ["", f"Paired per-case Dice (%), method − {rows[0]['reference']} (same budget, schedule and "
                      f"seeds; positive = the method scores higher), protocol {protocol}: each case averaged over "
                      "the seeds both finished; 95 % CI by case bootstrap (10,000 resamples, seed 0); two-sided "
                      "Wilcoxon signed-rank p.", "",
                      "| budget | method | cases | seeds | mean difference | 95 % CI | Wilcoxon p |",
                      "|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['budget']} | {r['method']} | {r['n_cases']} | {r['seeds']} | "
                             f"{_diff(r['mean_difference'])} | [{_diff(r['ci95_low'])}, {_diff(r['ci95_high'])}] | "
                             f"{_p(r['wilcoxon_p'])} |")
        lines.append("")
    if chart_name:
        lines += [f"![per-case Dice]({chart_name})", ""]
    if budget_chart_name:
        lines += [f"![Dice against the number of labeled cases]({budget_chart_name})", ""]
    return "\n".join(lines)


SUMMARY_COLUMNS = ["mode", "protocol", "budget", "labelnum", "method", "role", "schedule", "iterations", "n_seeds",
                   "seeds", "n_cases",
                   *[f"{m}_{k}" for m in METRICS for k in ("mean", "sd", "paper", "diff")],
                   "n_empty_pred", "paper_source", "paper_verified"]
PAPER_COLUMNS = {*(f"{m}_{k}" for m in METRICS for k in ("paper", "diff")), "paper_source", "paper_verified"}
PAIRED_COLUMNS = ["mode", "protocol", "budget", "reference", "method", "metric", "n_cases", "seeds",
                  "mean_difference", "ci95_low", "ci95_high", "wilcoxon_p"]
PAIRED_CASE_COLUMNS = ["mode", "protocol", "budget", "reference", "method", "seeds", "case", "method_dice_percent",
                       "reference_dice_percent", "difference"]


def write_results(results_dir: Path, dataset: str, case_rows: list[dict], published: dict,
                  header_lines: list[str], chart: bool = True, reference: str = DEFAULT_PAIRED_REFERENCE
                  ) -> dict[str, Path]:
    """results/<dataset>.md, .csv, _cases.csv, _paired.csv, _paired_cases.csv, .png and, with several budgets,
    _budgets.png; returns the paths written."""
    results_dir = Path(results_dir)
    with_paper = not any(r["mode"] == QUICK_MODE for r in case_rows)
    published = published if with_paper else {}
    table = summary_table(case_rows, published, dataset)
    paired_cases: list[dict] = []
    paired = paired_table(case_rows, reference, paired_cases)
    paths = {"md": results_dir / f"{dataset}.md", "csv": results_dir / f"{dataset}.csv",
             "cases": results_dir / f"{dataset}_cases.csv", "paired": results_dir / f"{dataset}_paired.csv",
             "paired_cases": results_dir / f"{dataset}_paired_cases.csv"}
    chart_name = budget_chart_name = ""
    if chart and case_rows:
        paths["png"] = results_dir / f"{dataset}.png"
        draw_chart(paths["png"], dataset, case_rows, published, title_note=case_rows[0]["mode"])
        chart_name = paths["png"].name
        if len({r["budget"] for r in case_rows}) > 1:
            paths["budgets_png"] = results_dir / f"{dataset}_budgets.png"
            draw_budget_chart(paths["budgets_png"], dataset, case_rows, title_note=case_rows[0]["mode"])
            budget_chart_name = paths["budgets_png"].name
    columns = SUMMARY_COLUMNS if with_paper else [c for c in SUMMARY_COLUMNS if c not in PAPER_COLUMNS]
    write_text_atomic(paths["csv"], to_csv(table, columns))
    write_text_atomic(paths["cases"], to_csv(case_rows, CASE_COLUMNS))
    write_text_atomic(paths["paired"], to_csv(paired, PAIRED_COLUMNS))
    write_text_atomic(paths["paired_cases"], to_csv(paired_cases, PAIRED_CASE_COLUMNS))
    write_text_atomic(paths["md"], markdown(dataset, table, paired, header_lines, chart_name, with_paper,
                                            budget_chart_name))
    return paths
