"""reproduce.py: grid planning, resume, statistics and aggregation on hand-made tables, the quick grid."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import reproduce
from data import lists
from dataloaders import la_case_path, read_list
from dataloaders.splits import SPLITS_DIR
from methods import METHODS
from reproduction.aggregate import paired_table, seed_means, summary_table, write_results
from reproduction.budget_chart import budget_curves
from reproduction.grid import QUICK_MODE, GridOptions, run_grid
from reproduction.paper import load_paper_results, paper_entry
from reproduction.plan import (
    DOCUMENTED_MACHINE,
    DOCUMENTED_TIMES,
    TIMING_FILE,
    Run,
    estimate_hours,
    format_plan,
    load_timings,
    plan_grid,
    timing_record,
)
from reproduction.stats import bootstrap_mean_ci, mean_sd, paired_comparison, wilcoxon_p

REPO = Path(__file__).resolve().parents[1]

# ---- statistics on hand-made numbers ---------------------------------------------------------------------------


def test_mean_sd_over_seeds():
    mean, sd, n = mean_sd([0.8, 0.9])
    assert (mean, n) == (pytest.approx(0.85), 2) and sd == pytest.approx(math.sqrt(0.005))
    assert mean_sd([0.7]) == (0.7, 0.0, 1)
    assert mean_sd([1.0, float("nan"), 3.0])[:2] == (2.0, pytest.approx(math.sqrt(2)))
    assert math.isnan(mean_sd([])[0])


def test_wilcoxon_exact_known_answers():
    # n = 5, all positive: T- = 0, the most extreme of 2^5 sign patterns on each side -> p = 2/32
    assert wilcoxon_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    # one negative with the smallest rank: T- = 1 -> P(T <= 1) = 2/32, two-sided 4/32
    assert wilcoxon_p([-1, 2, 3, 4, 5]) == pytest.approx(4 / 32)
    assert wilcoxon_p([0, 0, 0]) == 1.0  # no difference at all
    assert math.isnan(wilcoxon_p([]))


def test_bootstrap_ci_known_answers():
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = bootstrap_mean_ci([0.0, 1.0])  # resampled means are 0, 0.5 or 1 with probability 1/4, 1/2, 1/4
    assert (low, high) == (0.0, 1.0)
    assert bootstrap_mean_ci([0.1, 0.5, 0.9, 0.3], seed=3) == bootstrap_mean_ci([0.1, 0.5, 0.9, 0.3], seed=3)
    low, high = bootstrap_mean_ci(np.random.default_rng(0).normal(1.0, 0.1, 200))
    assert low < 1.0 < high and high - low < 0.05


def test_paired_comparison_averages_shared_seeds_per_case():
    reference = {1: {"a": 90.0, "b": 80.0, "c": 70.0}, 2: {"a": 92.0, "b": 82.0, "c": 72.0}, 3: {"a": 0.0}}
    other = {1: {"a": 85.0, "b": 78.0, "c": 71.0}, 2: {"a": 87.0, "b": 80.0, "c": 73.0}}
    result = paired_comparison(reference, other)
    assert result.seeds == [1, 2]  # seed 3 is unfinished for the other method: left out of both
    assert result.n_cases == 3
    assert result.mean_difference == pytest.approx((5 + 2 - 1) / 3)  # per case: 91-86, 81-79, 71-72
    assert result.p_value == pytest.approx(wilcoxon_p([5, 2, -1]))
    assert result.ci_low <= result.mean_difference <= result.ci_high


# ---- aggregation -----------------------------------------------------------------------------------------------


def case_row(method, seed, case, dice, protocol="paper", budget="8", cls=1, hd95=2.0):
    return {"mode": "full", "protocol": protocol, "budget": budget, "labelnum": int(budget) if budget != "all" else 80,
            "method": method, "role": "lower_bound" if method == "supervised" else "method", "seed": seed,
            "case": case, "class": cls, "dice": dice, "jaccard": dice / (2 - dice), "hd95": hd95, "asd": 1.0,
            "assd": 1.0, "empty_pred": "False", "empty_ref": "False"}


def test_summary_table_mean_sd_over_seeds_with_paper_numbers():
    rows = [case_row("ss_net", 1, "a", 0.90), case_row("ss_net", 1, "b", 0.80),  # seed 1 mean 85 %
            case_row("ss_net", 2, "a", 0.95), case_row("ss_net", 2, "b", 0.85),  # seed 2 mean 90 %
            case_row("supervised", 1, "a", 0.70), case_row("supervised", 1, "b", 0.60)]
    table = summary_table(rows, load_paper_results(), "LA")
    ss = next(r for r in table if r["method"] == "ss_net")
    assert ss["dice_mean"] == pytest.approx(87.5) and ss["dice_sd"] == pytest.approx(math.sqrt(12.5))
    assert ss["n_seeds"] == 2 and ss["dice_paper"] == 88.55 and ss["dice_diff"] == pytest.approx(87.5 - 88.55)
    assert ss["hd95_mean"] == 2.0 and ss["hd95_sd"] == 0.0
    lower = next(r for r in table if r["method"] == "supervised")
    assert lower["dice_paper"] == 82.74 and lower["dice_sd"] == 0.0  # the V-Net lower-bound row


@pytest.mark.parametrize("mode", ["full", QUICK_MODE])
def test_quick_mode_tables_leave_the_published_numbers_out(mode, tmp_path):
    rows = [{**case_row(method, 1, case, dice, budget="all"), "mode": mode}
            for method, case, dice in (("ss_net", "a", 0.70), ("ss_net", "b", 0.66), ("supervised", "a", 0.6),
                                       ("supervised", "b", 0.5))]
    paths = write_results(tmp_path, "LA", rows, load_paper_results(), ["header"], chart=False)
    text, csv_header = paths["md"].read_text(), paths["csv"].read_text().splitlines()[0].split(",")
    table_head = next(line for line in text.splitlines() if line.startswith("| budget"))
    published = "91.44"  # V-Net with all 80 LA scans labeled, data/paper_results.json
    if mode == "full":
        assert "| paper | Δ |" in table_head and published in text and "Δ = ours − paper" in text
        assert {"dice_paper", "dice_diff", "paper_source"} <= set(csv_header)
    else:
        assert "paper" not in table_head and "Δ" not in text and published not in text
        assert not any("paper" in column or "diff" in column for column in csv_header)
        assert "dice_mean" in csv_header and "68.00" in text  # ss_net's mean Dice is still there


def test_seed_means_average_classes_like_the_test_scripts():
    rows = [case_row("ss_net", 1, "a", 0.9, cls=1), case_row("ss_net", 1, "a", 0.7, cls=2),
            case_row("ss_net", 1, "b", 0.5, cls=1), case_row("ss_net", 1, "b", 0.3, cls=2)]
    assert seed_means(rows)["dice"] == pytest.approx(60.0)


def test_paired_table_every_method_against_supervised_or_another_reference():
    rows = []
    for seed in (1, 2):
        for case, ss, sup in (("a", 0.9, 0.8), ("b", 0.8, 0.75), ("c", 0.7, 0.72), ("d", 0.6, 0.5)):
            rows += [case_row("ss_net", seed, case, ss), case_row("supervised", seed, case, sup)]
    per_case = []
    (paired,) = paired_table(rows, per_case=per_case)  # default reference: supervised (labeled only)
    assert paired["method"] == "ss_net" and paired["reference"] == "supervised"
    assert paired["n_cases"] == 4 and paired["seeds"] == "1 2"
    assert paired["mean_difference"] == pytest.approx((10 + 5 - 2 + 10) / 4)  # method - reference: > 0 helps
    assert paired["wilcoxon_p"] == pytest.approx(wilcoxon_p([10, 5, -2, 10]))
    assert [r["case"] for r in per_case] == ["a", "b", "c", "d"]
    assert [r["difference"] for r in per_case] == pytest.approx([10.0, 5.0, -2.0, 10.0])
    assert per_case[0]["method_dice_percent"] == pytest.approx(90.0)
    assert per_case[0]["reference_dice_percent"] == pytest.approx(80.0)
    (against_ss_net,) = paired_table(rows, "ss_net")  # --reference ss_net: the old table, signs reversed
    assert against_ss_net["method"] == "supervised"
    assert against_ss_net["mean_difference"] == pytest.approx(-paired["mean_difference"])
    assert paired_table(rows, "bcp") == []  # a reference that did not run: no pairs


def test_budget_curves_mean_and_spread_over_seeds():
    rows = [case_row("bcp", 1, "a", 0.8, budget="4"), case_row("bcp", 2, "a", 0.6, budget="4"),
            case_row("bcp", 1, "a", 0.9, budget="8"), case_row("supervised", 1, "a", 0.5, budget="8"),
            case_row("supervised", 1, "a", 0.3, budget="4"), case_row("supervised", 1, "b", 0.5, budget="4")]
    curves = budget_curves(rows)["paper"]
    (low, high) = curves["bcp"]
    assert low[0] == 4 and low[1] == pytest.approx(70.0) and low[2] == pytest.approx(math.sqrt(200.0))
    assert low[3] == 2 and high == (8, pytest.approx(90.0), 0.0, 1)
    assert curves["supervised"][0][:2] == (4, pytest.approx(40.0))  # the mean over the seed's cases


def test_paper_lookup_by_registry_name():
    published = load_paper_results()
    assert "source" in published["LA"]["8"]["SS-Net"]
    assert paper_entry(published, "LA", "ss_net", "4")["dice"] == 86.33
    assert paper_entry(published, "ACDC", "supervised", "all")["role"] == "upper_bound"
    assert paper_entry(published, "ACDC", "supervised", "3")["dice"] == 47.83
    assert paper_entry(published, "LA", "ss_net", "2") is None


# ---- planning -------------------------------------------------------------------------------------------------


def test_plan_la_paper_and_honest_are_separate_runs(tmp_path):
    plan = plan_grid("LA", ["4", "all"], ["ss_net", "supervised"], [1337, 1338], ["paper", "honest"], tmp_path,
                     15000)
    # budget 4: 2 methods x 2 seeds x (select test, select val); all: supervised only x 2 seeds x 2
    assert len(plan.runs) == 8 + 4
    assert {r.select for r in plan.runs} == {"test", "val"}
    upper = {r.select: r.labelnum for r in plan.runs if r.budget == "all"}
    assert upper == {"test": 80, "val": 72}  # honest: train.list minus the 8 held-out val cases
    reports = {(e.run.select, e.checkpoint): e.protocols for e in plan.evaluations}
    assert reports == {("test", "best_model.pth"): ("paper",), ("val", "best_model.pth"): ("honest-val",),
                       ("val", "last_model.pth"): ("honest-last",)}
    assert len({r.run_dir for r in plan.runs}) == len(plan.runs)


def test_plan_acdc_shares_one_run_between_protocols(tmp_path):
    plan = plan_grid("ACDC", ["3", "7", "all"], ["ss_net"], [1], ["paper", "honest"], tmp_path, 30000)
    assert [r.select for r in plan.runs] == ["val", "val", "val"]
    assert [r.method for r in plan.runs][-1] == "supervised" and plan.runs[-1].labelnum == 70
    best = next(e for e in plan.evaluations if e.checkpoint == "best_model.pth")
    assert best.protocols == ("paper", "honest-val")  # tested once, reported under both names


def test_plan_checks_methods_against_the_registry(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'ssnet'.*ss_net"):
        plan_grid("LA", ["4"], ["ssnet"], [1], ["paper"], tmp_path, 100)
    plan = plan_grid("LA", ["8"], sorted(METHODS), [1], ["paper"], tmp_path, 100)
    assert {r.method for r in plan.runs} == set(METHODS)
    with pytest.raises(ValueError, match="--labelnum"):
        plan_grid("LA", ["five"], ["ss_net"], [1], ["paper"], tmp_path, 100)


def test_plan_trains_baselines_on_their_recipes_or_on_ss_nets_schedule(tmp_path):
    recipe = plan_grid("LA", ["8"], ["ss_net", "ua_mt", "mc_net"], [1], ["honest"], tmp_path, None)
    runs = {r.method: r for r in recipe.runs}
    assert (runs["ua_mt"].max_iteration, runs["ua_mt"].schedule_label) == (6000, "recipe")
    assert (runs["mc_net"].max_iteration, runs["mc_net"].schedule_label) == (15000, "recipe")
    assert (runs["ss_net"].max_iteration, runs["ss_net"].schedule_label) == (15000, "SS-Net")
    shared = {r.method: r for r in plan_grid("LA", ["8"], ["ss_net", "ua_mt", "mc_net"], [1], ["honest"], tmp_path,
                                             None, schedule="shared").runs}
    assert (shared["ua_mt"].max_iteration, shared["ua_mt"].schedule_label) == (15000, "SS-Net")
    assert shared["ua_mt"].run_dir.name.endswith("_shared") and shared["ua_mt"].run_dir != runs["ua_mt"].run_dir
    assert shared["ss_net"].run_dir == runs["ss_net"].run_dir  # the same schedule: the same run, reused
    assert "recipe" in format_plan(recipe, {}) and "6,000" in format_plan(recipe, {})
    shortened = plan_grid("LA", ["8"], ["ua_mt"], [1], ["honest"], tmp_path, 100)
    assert shortened.runs[0].max_iteration == 100


def fake_run(tmp_path, max_iteration=100) -> Run:
    return Run("LA", "4", 4, "ss_net", 1, "val", max_iteration, tmp_path / "run")


def test_run_status_finished_partial_new(tmp_path):
    run = fake_run(tmp_path)
    assert run.status() == "new" and run.done_iterations() == 0
    (run.run_dir / "checkpoints").mkdir(parents=True)
    (run.run_dir / "checkpoints" / "iter_0000040.pth").write_bytes(b"")
    assert run.status() == "partial" and run.done_iterations() == 40
    (run.run_dir / "result.json").write_text(json.dumps({"finished": True, "max_iteration": 100}))
    assert run.status() == "finished" and run.done_iterations() == 100
    assert fake_run(tmp_path, 200).status() == "partial"  # a longer schedule continues the finished run
    with pytest.raises(ValueError, match="longer"):
        fake_run(tmp_path, 50).status()


def test_dry_run_estimate_needs_a_measurement(tmp_path):
    plan = plan_grid("LA", ["8"], ["ss_net", "supervised"], [1], ["honest"], tmp_path, 1000)
    assert "unknown -- no measured iteration time" in format_plan(plan, {})
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"device_name": "NVIDIA H100", "LA/ss_net": 0.36, "LA/supervised": 0.18}))
    timings = load_timings(tmp_path, timing)
    hours, unknown, sources = estimate_hours(plan, timings)
    assert hours == pytest.approx(1000 * (0.36 + 0.18) / 3600) and not unknown
    text = format_plan(plan, timings)
    assert "NVIDIA H100" in text and "0.15 h" in text and "2,000 still to train" in text


def test_dry_run_projects_from_a_benchmark_report_step_and_window_costs(tmp_path):
    """--timing accepts benchmarks/bench.py's JSON (or gpu_check.json around it): LA = the projected full run
    (15,000 steps + the paper's evaluations) per iteration in the fastest measured mode; ACDC = its step."""
    bench = {"device_name": "NVIDIA H100", "train": {"LA": {}, "ACDC": {"default": {"seconds_per_iteration": 0.2},
                                                                     "fast": {"seconds_per_iteration": 0.1}}},
             "test": {"LA": {}}, "projection_LA_full_run": {"iterations": 15000, "official_s": 9000.0,
                                                             "fast_s": 3000.0}}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps({"seconds": 400, "bench": bench}))
    timings = load_timings(tmp_path, path)
    assert timings[("LA", "ss_net")]["seconds_per_iteration"] == pytest.approx(0.2)
    assert timings[("ACDC", "ss_net")]["seconds_per_iteration"] == pytest.approx(0.1)
    plan = plan_grid("LA", ["8"], ["ss_net"], [1], ["paper"], tmp_path, 15000)
    hours, unknown, sources = estimate_hours(plan, timings)
    assert hours == pytest.approx(3000.0 / 3600) and not unknown and "fast mode" in sources[0]


def test_dry_run_starts_from_the_times_docs_speed_md_measured(tmp_path):
    """No run measured yet: docs/speed.md's SS-Net step times, with the machine they came from; a run measured here
    replaces them (longest measurement of this grid wins)."""
    speed = (REPO / "docs" / "speed.md").read_text()
    for seconds, _ in DOCUMENTED_TIMES.values():
        assert f"{seconds} s/it" in speed  # the constant stays what the docs state
    plan = plan_grid("LA", ["8"], ["ss_net", "supervised"], [1], ["honest"], tmp_path / "runs", 1000)
    timings = load_timings(tmp_path / "runs", documented=True)
    hours, unknown, _ = estimate_hours(plan, timings)
    assert hours == pytest.approx(1000 * DOCUMENTED_TIMES[("LA", "ss_net")][0] / 3600) and unknown == ["supervised"]
    text = format_plan(plan, timings)
    assert "unknown" not in text and DOCUMENTED_MACHINE in text and "a lower bound: supervised unmeasured" in text
    record = plan.runs[0].run_dir / TIMING_FILE
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(timing_record(plan.runs[0], 10, 5.0, "cuda", "NVIDIA H100")))
    measured = load_timings(tmp_path / "runs", documented=True)[("LA", "ss_net")]
    assert measured["device_name"] == "NVIDIA H100" and measured["seconds_per_iteration"] == 0.5


def test_dry_run_reports_missing_data_and_how_to_list_what_is_there(tmp_path, capsys):
    """A root with 5 + 2 of the 100 LA cases: the dry run names what is missing and the data.lists command; the
    launch refuses before its first cell; with lists of the present cases the data is ready."""
    root = tmp_path / "LA"
    cases = read_list(SPLITS_DIR / "LA" / "train.list")[:5] + read_list(SPLITS_DIR / "LA" / "test.list")[:2]
    for case in cases:
        la_case_path(root, case).parent.mkdir(parents=True)
        la_case_path(root, case).write_bytes(b"")
    base = ["--methods", "supervised", "--labelnum", "2", "--seeds", "1", "--protocol", "honest",
            "--runs_dir", str(tmp_path / "runs"), "--root_path", str(root), "--device", "cpu"]
    assert reproduce.main([*base, "--dry-run"]) == 0
    data = [line for line in capsys.readouterr().out.splitlines() if line.startswith("data: ")]
    assert len(data) == 1 and "NOT READY: 93 of 100 LA cases missing" in data[0]
    assert f"python -m data.lists la {root} --out DIR" in data[0] and "--lists_dir DIR" in data[0]
    assert reproduce.main(base) == 2  # the launch: refused at once, nothing trained
    assert "93 of 100 LA cases missing" in capsys.readouterr().err and not (tmp_path / "runs" / "LA").exists()
    assert reproduce.main([*base, "--dry-run", "--root_path", str(tmp_path / "none")]) == 0
    assert "python -m data.download la" in capsys.readouterr().out
    assert lists.main(["la", str(root), "--out", str(tmp_path / "lists")]) == 0
    assert reproduce.main([*base, "--dry-run", "--lists_dir", str(tmp_path / "lists")]) == 0
    out = capsys.readouterr().out
    assert "data: every case of the lists" in out and "NOT READY" not in out


def test_dry_run_counts_both_stages_of_bcp(tmp_path):
    plan = plan_grid("LA", ["8"], ["bcp"], [1], ["honest"], tmp_path, None)
    (run,) = plan.runs
    assert (run.pretrain_iterations, run.max_iteration, run.total_iterations) == (2000, 15000, 17000)
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps({"device_name": "NVIDIA H100", "LA/bcp": 0.5}))
    text = format_plan(plan, load_timings(tmp_path, timing))
    assert "(2,000 pre-train + 15,000)" in text and "17,000 still to train" in text
    assert estimate_hours(plan, load_timings(tmp_path, timing))[0] == pytest.approx(17000 * 0.5 / 3600)
    # a finished pre-train counts as done
    (run.run_dir / "pretrain").mkdir(parents=True)
    (run.run_dir / "pretrain" / "result.json").write_text("{}")
    assert run.done_iterations() == 2000
    shortened = plan_grid("ACDC", ["7"], ["bcp"], [1], ["honest"], tmp_path, 300).runs[0]
    assert (shortened.pretrain_iterations, shortened.max_iteration) == (300, 300)  # never longer than the run
    assert plan_grid("LA", ["8"], ["ss_net"], [1], ["honest"], tmp_path, None).runs[0].pretrain_iterations == 0


# ---- the grid end to end (quick mode) ------------------------------------------------------------------------


@pytest.mark.slow  # ~10 s; the quick grid's tables and chart are checked in the default suite too
def test_quick_grid_end_to_end_then_reuses_everything(tmp_path, capsys):
    args = ["--quick", "--methods", "ss_net", "supervised", "--max_iteration", "4", "--device", "cpu",
            "--runs_dir", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results")]
    assert reproduce.main(args) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "NOT a reproduction" in out and "honest-val" in out
    # the cells' own output (log lines, test tables) is in each cell's job log, as with --launcher local
    assert "iteration" not in captured.err and "mean Dice" not in captured.err and "run folder" not in out
    logs = sorted((tmp_path / "runs").glob("LA/*/*/*/reproduce_job.log"))
    assert len(logs) == 12 and all("iteration 4: val mean Dice" in log.read_text() for log in logs
                                   if "select_val" in str(log))
    assert all(f"(output: {log})" in out for log in logs)
    results = tmp_path / "results"
    for name in ("LA.md", "LA.csv", "LA_cases.csv", "LA_paired.csv", "LA.png"):
        assert (results / name).is_file(), name
    assert QUICK_MODE in (results / "LA.md").read_text()
    assert "| paper | Δ |" not in (results / "LA.md").read_text() and "| paper | Δ |" not in out
    assert "Published numbers: left out" in out
    for name in ("LA.csv", "LA_cases.csv", "LA_paired.csv"):
        lines = (results / name).read_text().splitlines()
        assert lines[0].startswith("mode,protocol") and all(line.startswith(QUICK_MODE) for line in lines[1:])
    summary = (results / "LA.csv").read_text()
    assert {"paper", "honest-val", "honest-last"} <= {line.split(",")[1] for line in summary.splitlines()[1:]}
    # 2 seeds by default in quick mode; budget 2 + the upper bound
    assert "2,1337 1338" in summary and ",all," in summary

    assert reproduce.main(args) == 0  # the same command again: nothing is trained or tested again
    out = capsys.readouterr().out
    assert "trained or resumed: 0 run(s); reused finished: 12; tested now: 0" in out


def test_quick_grid_compares_every_method_with_supervised_and_draws_the_budget_chart(tmp_path, capsys):
    args = ["--quick", "--methods", "ss_net", "bcp", "supervised", "--seeds", "1337", "--protocol", "honest",
            "--labelnum", "2", "3", "--max_iteration", "2", "--device", "cpu", "--runs_dir", str(tmp_path / "runs"),
            "--results_dir", str(tmp_path / "results")]
    assert reproduce.main(args) == 0
    out = capsys.readouterr().out
    assert "Paired per-case Dice (%), method − supervised" in out
    results = tmp_path / "results"
    paired = (results / "LA_paired.csv").read_text().splitlines()
    assert {(line.split(",")[2], line.split(",")[3], line.split(",")[4]) for line in paired[1:]} >= {
        ("2", "supervised", "bcp"), ("3", "supervised", "bcp"), ("2", "supervised", "ss_net")}
    cases = (results / "LA_paired_cases.csv").read_text().splitlines()
    assert cases[0].endswith("case,method_dice_percent,reference_dice_percent,difference") and len(cases) > 1
    assert (results / "LA_budgets.png").stat().st_size > 0 and "LA_budgets.png" in (results / "LA.md").read_text()
    assert "bcp 2 (after a 2-iteration pre-train)" in out  # the shortened run shortens its pre-train too
    # another reference from the same finished runs; one budget: no budget chart
    assert reproduce.main([*args[:-1], str(tmp_path / "again"), "--reference", "ss_net", "--labelnum", "2"]) == 0
    assert "method − ss_net" in capsys.readouterr().out and not (tmp_path / "again" / "LA_budgets.png").exists()
    assert reproduce.main([*args, "--reference", "ssnet"]) == 2
    assert "--reference: unknown method 'ssnet'" in capsys.readouterr().err


def test_grid_resumes_a_half_finished_run(tmp_path, capsys):
    def grid(max_iteration):
        return run_grid(GridOptions(dataset="LA", budgets=["2"], methods=["supervised"], seeds=[1337],
                                    protocols=["honest"], quick=True, max_iteration=max_iteration,
                                    runs_dir=str(tmp_path / "runs"), results_dir=str(tmp_path / "results")))

    first = grid(2)
    (run_dir,) = first.trained
    second = grid(4)  # the cell was finished at 2 iterations: the longer grid continues the same folder
    assert second.trained == [run_dir]
    assert "resumed from" in (run_dir / "log.txt").read_text()
    assert json.loads((run_dir / "result.json").read_text())["max_iteration"] == 4
    # a crash after the iteration-2 checkpoint: newest checkpoint and the finished marker gone
    for name in ("result.json", "checkpoints/iter_0000004.pth"):
        (run_dir / name).unlink()
    assert grid(4).trained == [run_dir]
    assert (run_dir / "log.txt").read_text().count("resumed from") == 2
    assert grid(4).trained == []
    capsys.readouterr()
    timing = load_timings(tmp_path / "runs")[("LA", "supervised")]  # measured here, used by --dry-run
    assert timing["iterations"] == 2 and timing["seconds_per_iteration"] > 0


@pytest.mark.slow
def test_quick_grid_on_real_acdc_cases(acdc_root, tmp_path):
    result = run_grid(GridOptions(dataset="ACDC", methods=["ss_net", "supervised"], quick=True, max_iteration=2,
                                  seeds=[1, 2], root_path=str(acdc_root), runs_dir=str(tmp_path / "runs"),
                                  results_dir=str(tmp_path / "results")))
    assert result.outputs["md"].is_file() and not result.failed
    text = result.outputs["md"].read_text()
    assert "protocol paper" in text and "same checkpoint as honest-val" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = reproduce.main(["--methods", "ssnet", "--dry-run", "--runs_dir", str(tmp_path)])
    assert code == 2 and "did you mean 'ss_net'" in capsys.readouterr().err
    code = reproduce.main(["--dry-run", "--runs_dir", str(tmp_path), "--train_args", "--nonsense 1"])
    assert code == 2 and "--nonsense 1 is not a flag of train_la.py" in capsys.readouterr().err
    code = reproduce.main(["--dry-run", "--runs_dir", str(tmp_path), "--train_args", "--seed 3"])
    assert code == 2 and "set by reproduce.py" in capsys.readouterr().err
    code = reproduce.main(["--dry-run", "--runs_dir", str(tmp_path), "--train_args", "--base_lr -1"])
    assert code == 2 and "--base_lr must be a positive number" in capsys.readouterr().err  # before any training


def test_a_cells_config_is_what_the_train_script_makes_of_the_same_flags(tmp_path):
    from reproduction.cell import CellSettings, train_config
    from reproduction.grid import quick_train_settings, train_args_settings
    from training.flags import build_train_parser, config_from_args

    quick_flags = ["--lr_step", "0", "--consistency_rampup", "1", "--eval_start", "1", "--eval_every", "2",
                   "--save_every", "2", "--image_every", "0", "--eval_batch_size", "8", "--patch_size", "32,32,16",
                   "--stride", "16,16,8", "--base_filters", "4", "--batch_size", "4", "--labeled_bs", "2"]
    assert quick_train_settings("LA", synthetic=True) == train_args_settings("LA", quick_flags)
    run = Run("LA", "4", 4, "ua_mt", 1338, "test", 120, tmp_path / "run", "shared", "SS-Net")
    settings = CellSettings(device="cpu", num_workers=0, root_path="/data/LA", progress=False,
                            train_settings=train_args_settings("LA", [*quick_flags, "--amp", "bf16"]))
    flags = ["--method", "ua_mt", "--labelnum", "4", "--seed", "1338", "--select", "test", "--run_dir",
             str(run.run_dir), "--max_iteration", "120", "--schedule", "shared", "--device", "cpu", "--num_workers",
             "0", "--exp", "LA_reproduce", "--root_path", "/data/LA", "--no_progress", *quick_flags, "--amp", "bf16"]
    assert train_config(run, settings) == config_from_args(build_train_parser("LA", "").parse_args(flags), "LA")
    assert train_config(run, settings).amp == "bf16" and train_config(run, settings).network_kwargs["base_filters"] == 4
