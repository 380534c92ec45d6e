"""The program beside its step: `train_la.py` / `train_acdc.py`'s own loop on real cases against the step benchmark.

    python -m benchmarks.program --dataset LA --root_path DATA/LA --lists_dir LISTS --threads 2
    python -m benchmarks.program --dataset ACDC --root_path DATA/ACDC --lists_dir LISTS --threads 2 --official 1

Each measurement runs in a fresh process, one after the other (as benchmarks/bench.py), so that a process's peak
memory is its own:
* program: the trainer itself (`training.trainer.Training`, what the scripts run: data read and checked, run folder,
  log.txt, TensorBoard scalars and image panels, the training loader with its default workers, resume checkpoints)
  on the cases of --root_path / --lists_dir, --warmup untimed iterations then --iterations timed ones. An
  iteration's time is the interval between two batch requests of the loop, so it holds everything the loop does
  besides the step (waiting for data, logging, summaries, checkpoints). Also: the seconds from this module's
  import (torch already imported) to the first batch (project imports, data check, network) and the peak resident
  set of the process and, separately, of its largest child (worker processes, when --num_workers > 0).
* step: benchmarks/bench.py's default-mode step (and with --official 1 its official mode) on synthetic tensors of
  the same shape and batch, with the same threads.
It prints program / step per iteration and per peak, and writes JSON. Differences that remain by design: the
benchmark's step runs at iteration 10,000 (every loss term weighted), the program's first iterations are in the
warm-up ramp; the program's labels are real (the prototype memory sees their foreground).
Wall-clock figures are only worth comparing on a quiet machine (docs/speed.md says how they were measured).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench import GIB, process_memory_gib, run_worker, serve_job
from dataloaders import get_dataset
from utils.atomic import write_text_atomic
from utils.cli import ScriptParser, int_list

_START = time.perf_counter()  # when this module was imported: torch and numpy already are, the project not yet


class TimedBatches:
    """The trainer's batch stream, recording when each batch is asked for."""

    def __init__(self, batches):
        self.batches, self.requested_at = batches, []

    def __iter__(self):
        return self

    def __next__(self):
        self.requested_at.append(time.perf_counter())
        return next(self.batches)


def top_operators(profiler, rows: int) -> list[dict]:
    """The operators that took the most CPU time of the whole profiled run (warm-up included): name, self CPU %,
    calls; shares, unlike seconds, survive a loaded machine."""
    events = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"operator": e.key, "self_cpu_percent": round(100 * e.self_cpu_time_total / total, 2), "calls": e.count}
            for e in events[:rows]]


def program_job(job: dict) -> dict:
    """The trainer on real cases: per-iteration seconds of the whole loop, start-up seconds, peak memory."""
    from training.config import make_config
    from training.distributed import distributed_session
    from training.trainer import Training

    total = job["warmup"] + job["iterations"] + 1  # + 1: the last interval would hold the final saves
    with tempfile.TemporaryDirectory() as run_dir:
        given = {"root_path": job["root_path"], "lists_dir": job["lists_dir"] or "", "labelnum": job["labelnum"],
                 "select": "last", "max_iteration": total, "run_dir": run_dir, "device": job["device"],
                 "progress": False, "seed": 1337}
        if job.get("fast"):  # the fast command of docs/speed.md: bf16, channels-last, fused SGD, autotuning
            given.update(amp="bf16", channels_last=True, optimizer_impl="fused", deterministic=0)
        if job.get("num_workers") is not None:
            given["num_workers"] = job["num_workers"]
        if job.get("patch_size"):
            given["patch_size"] = job["patch_size"]  # and a stride that fits it (no evaluation runs)
            given["stride"] = [max(1, p // 2) for p in job["patch_size"]] if job["dataset"] == "LA" else None
        if job.get("network_kwargs"):
            given["network_kwargs"] = job["network_kwargs"]
        config = make_config(job["dataset"], **given)
        with distributed_session(config.device) as ddp:
            training = Training(config, ddp)
            timed = training.batches = TimedBatches(training.batches)
            try:
                if job.get("profile"):
                    from torch.profiler import ProfilerActivity, profile
                    with profile(activities=[ProfilerActivity.CPU]) as profiler:
                        training.run()
                    profile_rows = top_operators(profiler, job["profile"])
                else:
                    training.run()
            finally:
                training.log.close()
        first_batch_s = timed.requested_at[0] - _START
        intervals = [b - a for a, b in zip(timed.requested_at, timed.requested_at[1:], strict=False)]
        timed_s = intervals[job["warmup"]:job["warmup"] + job["iterations"]]
        del training, timed  # worker processes end here, so that their peak is counted below
    full_iterations = make_config(job["dataset"]).max_iteration  # the paper's schedule
    children_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB
    return {"seconds_per_iteration": sum(timed_s) / len(timed_s) if timed_s else math.nan,
            "iteration_seconds": timed_s, "full_run_iterations": full_iterations,
            "projected_training_s": full_iterations * sum(timed_s) / len(timed_s) if timed_s else math.nan,
            "warmup_seconds": intervals[:job["warmup"]],
            "start_to_first_batch_s": first_batch_s, "peak_memory_gib": process_memory_gib("VmHWM"),
            "largest_child_peak_gib": children_gib if config.num_workers else None, "num_workers": config.num_workers,
            "patch_size": list(config.patch_size), "batch_size": config.batch_size, "labeled_bs": config.labeled_bs,
            "network_kwargs": config.network_kwargs, "memory_kind": "peak_rss",
            **({"cuda_max_memory_allocated_gib": torch.cuda.max_memory_allocated() / GIB}
               if torch.device(job["device"]).type == "cuda" else {}),
            **({"profile": profile_rows} if job.get("profile") else {})}


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(prog="python -m benchmarks.program", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="LA", choices=("LA", "ACDC"))
    p.add_argument("--root_path", default="", help="dataset folder with the restored cases (required)")
    p.add_argument("--lists_dir", default="", help="split lists of the cases present (python -m data.lists)")
    p.add_argument("--labelnum", type=int, default=2, help="labeled cases (LA) / patients (ACDC) of the lists")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("--num_workers", type=int, default=None, help="the program's --num_workers (default: its own)")
    p.add_argument("--patch_size", type=int_list, default=[], help="training crop (default: the dataset's)")
    p.add_argument("--base_filters", type=int, default=0, help="LA: a narrower V-Net (0: the paper's 16)")
    p.add_argument("--profile", type=int, default=0, help="also list the N operators that took the most CPU time "
                   "in the program (torch.profiler; slows the program, so its s/iteration is then not comparable)")
    p.add_argument("--fast", type=int, default=0, choices=(0, 1), help="the program with the fast settings (bf16, "
                   "channels-last, fused SGD, --deterministic 0); the step stays the default one")
    p.add_argument("--official", type=int, default=0, choices=(0, 1), help="also the official-mode step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="program.json", help="JSON file to write")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p


def run_program_benchmark(args: argparse.Namespace) -> dict:
    if not args.root_path:
        raise ValueError("--root_path is required: restore a few cases first, e.g. python ../shared/data/restore.py "
                         "DATA --dataset LA --limit 6, then --root_path DATA/LA --lists_dir LISTS")
    network_kwargs = {"base_filters": args.base_filters} if args.base_filters else {}
    job = {"kind": "program", "dataset": args.dataset, "root_path": args.root_path, "lists_dir": args.lists_dir,
           "labelnum": args.labelnum, "iterations": args.iterations, "warmup": args.warmup,
           "threads": args.threads, "device": args.device, "num_workers": args.num_workers,
           "patch_size": list(args.patch_size), "network_kwargs": network_kwargs, "profile": args.profile,
           "fast": args.fast}
    report = {"device": args.device, "torch": torch.__version__, "cpu_threads": args.threads or torch.get_num_threads(),
              "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
              "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker")}}
    program = run_worker(job, module="benchmarks.program")
    report["program"] = program
    print(f"program {args.dataset}: {program['seconds_per_iteration']:.3f} s/it, peak {program['peak_memory_gib']:.2f} "
          f"GiB, {program['num_workers']} worker processes (their largest peak: {program['largest_child_peak_gib']}), "
          f"first batch after {program['start_to_first_batch_s']:.1f} s; {program['full_run_iterations']} iterations "
          f"(no evaluation) would take {program['projected_training_s'] / 3600:.2f} h", flush=True)
    network = {**get_dataset(args.dataset).network_kwargs, **network_kwargs}  # as bench.py builds it
    step_job = {"kind": "train", "dataset": args.dataset, "network_kwargs": network,
                "shape": program["patch_size"], "batch_size": program["batch_size"],
                "labeled_bs": program["labeled_bs"], "iterations": args.iterations, "warmup": args.warmup,
                "device": args.device, "threads": args.threads,
                "options": {"amp": "off", "channels_last": False, "compile": False, "optimizer_impl": "default",
                            "eval_batch_size": 4}}
    for row in program.get("profile", []):
        print(f"  {row['self_cpu_percent']:6.2f} %  {row['calls']:6d} calls  {row['operator']}")
    for mode in ("default", "official") if args.official else ("default",):
        step = run_worker({**step_job, "mode": mode})
        report[f"step_{mode}"] = step
        print(f"step {mode:8s}: {step['seconds_per_iteration']:.3f} s/it, peak {step['peak_memory_gib']:.2f} GiB",
              flush=True)
    for mode in ("default", "official") if args.official else ("default",):
        step = report[f"step_{mode}"]
        report[f"program_over_step_{mode}"] = {
            "time": program["seconds_per_iteration"] / step["seconds_per_iteration"],
            "memory": program["peak_memory_gib"] / step["peak_memory_gib"]}
        ratio = report[f"program_over_step_{mode}"]
        print(f"program / {mode} step: time {ratio['time']:.3f}x, peak memory {ratio['memory']:.3f}x")
    write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return serve_job(args.worker, program_job)
    try:
        run_program_benchmark(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
