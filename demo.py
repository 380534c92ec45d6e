"""Demo on an embedded synthetic dataset (no download): SS-Net vs the labeled-only baseline, trained and tested
with the real LA code path (h5 layout, two-stream sampler, V-Net, sliding window, metrics) on a CPU schedule.

    python demo.py                  # about 7 minutes on an idle 2-core machine here (README: what varies)
    python demo.py --iterations 50  # a quicker look

A synthetic "atrium" (a union of ellipsoids among bright distractors, bias field and noise) replaces the LA
scans; a narrow V-Net (8 base filters) and 48x48x32 crops replace the paper's 16 filters and 112x112x80.
The numbers say whether the machinery works, not what SS-Net achieves on LA (see docs/reproduction.md for that).
It ends with two pictures in <out>/figures/: the training curves of both runs and their predictions on test cases.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from dataloaders import make_synthetic_la
from evaluation import TestOptions, run_test
from methods import check_method_name
from training import make_config, train
from utils.cli import DocstringHelpFormatter, ScriptParser, default_device, run_cli
from utils.report import TABLE_KEYS

TEST_FOLDER = "test_test"  # test_la.py's default output folder, test_<list name>, for data/test.list


def run_demo(out: Path, iterations: int, labeled: int, unlabeled: int, test_cases: int, device: str,
             seed: int, methods: list[str]) -> dict[str, dict]:
    for method in methods:  # before anything is written
        check_method_name(method)
    data = out / "data"
    if not (data / "test.list").is_file():
        print(f"writing the synthetic dataset to {data} ...", flush=True)
        make_synthetic_la(data, n_train=labeled + unlabeled + 2, n_test=test_cases, shape=(64, 64, 48), seed=seed,
                          n_val=2)
    results = {}
    for method in methods:
        # one folder per setting: re-running the same demo reuses finished runs, another setting trains anew
        run_dir = out / f"{method}_{labeled}_labeled_{iterations}it_seed{seed}"
        config = make_config(
            "LA", root_path=str(data), lists_dir=str(data), method=method, labelnum=labeled, max_iteration=iterations,
            patch_size=[48, 48, 32], network_kwargs={"base_filters": 8}, stride=[16, 16, 16], lr_step=0,
            consistency_rampup=max(iterations // 300, 1), eval_every=max(iterations // 4, 1), eval_start=1,
            select="val", num_workers=0, device=device, seed=seed, run_dir=str(run_dir))
        print(f"\n=== training {method}: {iterations} iterations, {labeled} labeled"
              f"{f' + {unlabeled} unlabeled' if method != 'supervised' else ''} synthetic cases ===", flush=True)
        started = time.perf_counter()
        trained = train(config)
        seconds = time.perf_counter() - started
        print(f"\n=== testing {method} on {test_cases} synthetic test cases ===", flush=True)
        summary = run_test(TestOptions(dataset="LA", checkpoint=str(trained.best_checkpoint), root_path=str(data),
                                       list_path=str(data / "test.list"), device=device, progress=False,
                                       save_predictions=True))  # into <run>/test_test/, as test_la.py would
        reused = trained.resumed_from == iterations
        results[method] = {"seconds": None if reused else seconds, "run_dir": run_dir,
                           **{k: summary["mean"][k] for k in TABLE_KEYS}}
    return results


def write_figures(out: Path, data: Path, run_dirs: dict[str, Path], max_cases: int = 2) -> dict[str, Path]:
    """<out>/figures/curves.png (every run's loss terms, weights, LR and validation Dice) and test_cases.png (the
    first test cases: image, truth, each run's prediction with the truth outlined, and its Dice), from the run
    folders and the predictions their tests saved (<run>/test_test/predictions/, test_la.py's default folder)."""
    from dataloaders import get_dataset, read_list
    from viz.curves import curves_figure, read_run_scalars
    from viz.io import save_png
    from viz.overlay import DATASET_LAYOUTS, MontageCase, comparison_montage
    from viz.runs import RunPredictions, describe_source

    task = get_dataset("LA")
    figures = out / "figures"
    curves = save_png(curves_figure({m: read_run_scalars(r) for m, r in run_dirs.items()}), figures / "curves.png")
    predictions = {m: RunPredictions(describe_source(str(r / TEST_FOLDER)), task) for m, r in run_dirs.items()}
    cases = []
    for case in read_list(data / "test.list")[:max_cases]:
        image, label = task.load_case(data, case)
        cases.append(MontageCase(case, image, label, {m: p.labels(case, image) for m, p in predictions.items()}))
    montage = save_png(comparison_montage(cases, list(run_dirs), layout=DATASET_LAYOUTS["LA"]),
                       figures / "test_cases.png")
    return {"curves": curves, "test_cases": montage}


def print_next_steps(figures: dict[str, Path], out: Path) -> None:
    print(f"\nPictures:\n  {figures['curves']}  training curves of both runs (loss terms, weights, LR, validation "
          f"Dice)\n  {figures['test_cases']}  test cases: image, truth, each method's prediction (truth outlined)")
    print(f"Run folders, test results and TensorBoard logs are in {out}/ (tensorboard --logdir {out}).")
    print("Next: train on real LA cases, or on the few you have (docs/data.md#a-subset-of-the-cases); see what the "
          "paper's tables cost: python reproduce.py --dataset LA --dry-run; a quick grid on synthetic data: "
          "python reproduce.py --quick.")


def print_comparison(results: dict[str, dict], labeled: int) -> None:
    print(f"\nSynthetic LA-like demo, {labeled} labeled cases; mean ± sd over the test cases "
          "(checkpoint chosen on 2 validation cases; LCC on; distances in voxels)")
    print(f"{'method':12s}{'Dice (%)':>16s}{'Jaccard (%)':>16s}{'95HD':>16s}{'ASD':>16s}{'train time':>12s}")
    for method, r in results.items():
        cells = []
        for key in TABLE_KEYS:
            scale = 100.0 if key in ("dice", "jaccard") else 1.0
            cells.append(f"{r[key]['mean'] * scale:.2f} ± {r[key]['sd'] * scale:.2f}".rjust(16))
        took = "reused" if r["seconds"] is None else f"{r['seconds']:.0f}s"
        print(f"{method:12s}{''.join(cells)}{took:>12s}")


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_runs"), help="where data, runs and results go")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--labeled", type=int, default=2)
    p.add_argument("--unlabeled", type=int, default=12)
    p.add_argument("--test_cases", type=int, default=6)
    p.add_argument("--methods", nargs="+", default=["supervised", "ss_net"])
    p.add_argument("--device", default=default_device())
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)

    def job():
        results = run_demo(a.out, a.iterations, a.labeled, a.unlabeled, a.test_cases, a.device, a.seed, a.methods)
        print_comparison(results, a.labeled)
        figures = write_figures(a.out, a.out / "data", {m: r["run_dir"] for m, r in results.items()})
        print_next_steps(figures, a.out)

    return run_cli(job, debug=a.debug, cpu_threads=True, huge_pages=True)


if __name__ == "__main__":
    sys.exit(main())
