"""Where one SS-Net training step spends its time and memory, pass by pass: the official-equivalent step (one
backward) next to the default memory-saving step, each in its own process after warm-up iterations.

    python -m benchmarks.profile_step                                  # LA, full shapes, on the default device
    python -m benchmarks.profile_step --dataset ACDC --operators 15    # + torch.profiler's top operators
    python -m benchmarks.profile_step --tiny                           # seconds on a CPU

Passes are the `utils.profiling.section`s of methods/ss_net.py and utils/losses.py (main forward, memory update,
heads of each batch half, supervised Dice, VAT clean / probe / adversarial forward, the backward(s)) and this
script's "backward" and "SGD step". Per pass: seconds, the peak memory during the pass and the memory held after
it (CPU: the process's resident set, VmHWM reset before each pass, so the peaks include the process's ~0.4 GiB
of code and libraries; CUDA: torch.cuda.max_memory_allocated / memory_allocated). --operators N also prints
torch.profiler's N most expensive operators of the profiled step (self time; CPU memory allocated by the op).
Numbers are measured, never asserted; wall times on a shared machine are noisy (the step is also timed whole).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.bench import (
    GIB,
    build_training,
    current_memory_gib,
    memory_kind,
    process_memory_gib,
    run_worker,
    serve_job,
    synchronize,
)
from dataloaders import get_dataset
from training.config import make_config
from training.optim import zero_gradients
from utils.atomic import write_text_atomic
from utils.autocast import autocast
from utils.cli import ScriptParser, int_list
from utils.profiling import recording, section

MODES = ("official", "default")


class PassRecorder:
    """A utils.profiling recorder: seconds, peak memory during and memory after each section."""

    def __init__(self, device: torch.device):
        self.device = device
        self.rows: list[dict] = []

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: "5" resets the peak resident set size (VmHWM) to the current one
                with open("/proc/self/clear_refs", "w") as refs:
                    refs.write("5")
            except OSError:
                pass

    def peak(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        return process_memory_gib("VmHWM")

    @contextlib.contextmanager
    def __call__(self, name: str):
        synchronize(self.device)
        before = current_memory_gib(self.device)
        self.reset_peak()
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.rows.append({"pass": name, "seconds": time.perf_counter() - start, "before_gib": before,
                          "peak_gib": self.peak(), "after_gib": current_memory_gib(self.device)})


def profile_job(job: dict) -> dict:
    device = torch.device(job["device"])
    step = build_training(job["mode"], job["dataset"], job["network_kwargs"], tuple(job["shape"]),
                          job["batch_size"], job["labeled_bs"], device, job["options"])
    for i in range(job["warmup"]):
        step(10_000 + i)
    recorder = PassRecorder(device)
    iteration = 10_000 + job["warmup"]
    operators = None
    profiler = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU] +
                                       ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else []),
                                       profile_memory=True) if job["operators"] else contextlib.nullcontext())
    synchronize(device)
    start = time.perf_counter()
    with profiler, recording(recorder):
        zero_gradients(step.optimizer)  # the trainer's step, its last two parts named
        with autocast(step.precision.mode, device):
            output = step.method(step.labeled, step.unlabeled, step.context.at(iteration))
        with section("backward"):
            if step.precision.mode == "off":
                output.loss.backward()
            else:
                step.precision.scaler.scale(output.loss).backward()
        with section("SGD step"):
            step.optimizer.step()
    synchronize(device)
    total = time.perf_counter() - start
    if job["operators"]:
        operators = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=job["operators"],
                                                  max_name_column_width=48)
    return {"passes": recorder.rows, "step_seconds": total,
            "peak_memory_gib_step": max(row["peak_gib"] for row in recorder.rows),
            "memory_kind": memory_kind(device), "operators": operators}


def print_passes(mode: str, result: dict) -> None:
    kind = "resident set" if result["memory_kind"] == "peak_rss" else "allocated"
    print(f"{mode}: one step {result['step_seconds']:.2f} s, peak {result['peak_memory_gib_step']:.2f} GiB ({kind})")
    print(f"  {'pass':34s} {'seconds':>8s} {'peak GiB':>9s} {'after GiB':>10s}")
    for row in result["passes"]:
        print(f"  {row['pass']:34s} {row['seconds']:8.2f} {row['peak_gib']:9.2f} {row['after_gib']:10.2f}")
    if result.get("operators"):
        print(result["operators"])


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="LA", choices=("LA", "ACDC"))
    p.add_argument("--modes", default=",".join(MODES), help="comma list of official, default")
    p.add_argument("--shape", type=int_list, default=[], help="training crop (default: the dataset's)")
    p.add_argument("--batch", type=int_list, default=[], help="batch,labeled (default: the dataset's)")
    p.add_argument("--base_filters", type=int, default=16, help="V-Net width")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations before the profiled one")
    p.add_argument("--operators", type=int, default=0, help="print torch.profiler's N top operators")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="32^3 crops / 32x32 slices, 4 filters")
    p.add_argument("--output", default="", help="JSON file to write")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return serve_job(args.worker, profile_job)
    config = make_config(args.dataset)
    adapter = get_dataset(args.dataset)
    kwargs = dict(adapter.network_kwargs)
    if args.dataset == "LA":
        kwargs["base_filters"] = 4 if args.tiny else args.base_filters
    elif args.tiny:
        kwargs["channels"] = [4, 8, 8, 16, 16]
    shape = args.shape or ([32] * len(config.patch_size) if args.tiny else list(config.patch_size))
    batch, labeled = args.batch or [config.batch_size, config.labeled_bs]
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        print(f"error: --modes must list some of {', '.join(MODES)}", file=sys.stderr)
        return 2
    report = {"device": args.device, "torch": torch.__version__, "dataset": args.dataset, "shape": shape,
              "batch_size": batch, "labeled_bs": labeled, "load_average_before": list(os.getloadavg()),
              "modes": {}}
    for mode in modes:
        job = {"kind": "train", "device": args.device, "mode": mode, "dataset": args.dataset, "network_kwargs": kwargs,
               "shape": shape, "batch_size": batch, "labeled_bs": labeled, "warmup": args.warmup,
               "operators": args.operators, "threads": args.threads,
               "options": {"amp": "off", "channels_last": False, "compile": False, "optimizer_impl": "default",
                           "eval_batch_size": 4}}
        report["modes"][mode] = result = run_worker(job, "benchmarks.profile_step")
        print_passes(mode, result)
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
