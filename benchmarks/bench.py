"""Speed and memory benchmark: SS-Net training (LA and ACDC shapes) and LA test-volume throughput in three modes,
side by side in one run on the current device: seconds per iteration (per volume), peak memory, the ratios to the
official-equivalent mode, a projected full LA run and (--fits_gb) the largest LA batch that fits a memory budget;
writes JSON. Synthetic tensors on the device (no dataset needed): it measures compute, not I/O.

    python -m benchmarks.bench                                   # full shapes on the default device
    python -m benchmarks.bench --device cuda --fits_gb 24 --output bench_gpu.json
    python -m benchmarks.bench --tiny                            # seconds on a CPU (a smoke test)

Modes
* official: the official code's costs: fp32; training runs SS-Net's official sequence of passes (main, clean
  target, VAT probe forward + backward, adversarial forward) with ONE backward and PyTorch's default SGD,
  cuDNN deterministic without autotuning; testing runs the official loop: one window at a time copied from a
  host (numpy) volume to the device, softmax copied back, probabilities and counts accumulated on the host.
* default: what train_la.py / test_la.py do without speed flags: the same fp32 math; training with the
  memory-saving step (--low_memory 1: the main pass backpropagated before the VAT passes, head activations
  recomputed in backward, VAT's clean target from the main pass's encoder trunk; gradients equal bit for bit),
  testing with the Predictor's default path (--batch_size 4 windows per forward under torch.inference_mode, on
  a copy with BatchNorm folded into the convolutions: --fold_bn 1).
* fast: --amp (bf16), --channels_last, optionally --compile, fused SGD, cuDNN autotuning, the memory-saving
  step; testing under bf16 with --eval_batch_size windows per forward.

Every mode runs in its own process, one after the other, repeated --repeats times, so that a process's peak
memory is its mode's (CPU: peak resident set size, VmHWM, what /usr/bin/time -v reports; CUDA:
torch.cuda.max_memory_allocated) and a change of machine load hits every mode alike. --fits_gb G tries LA
batches of 2, 4, 6, ... (half labeled) in each training mode, two iterations each, and reports the largest whose
peak stays within G GiB (CUDA: the allocator is capped at G; CPU: a process passing G is stopped). Numbers are
measured, never asserted.

The projection: LA = 15,000 iterations + 66 in-training evaluations (every 200 iterations from 2,000) of the 20
test scans = 1,128 windows each (stride 18,18,4); with --eval_stride the window count is scaled by the ratio of
windows on the benchmark volume.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dataloaders import get_dataset
from inference import InferenceSettings, Predictor
from methods import METHODS, Batch, Method, StepContext, build_method
from networks import build_network
from networks.speed import prepare_network
from training.config import OPTIMIZER_IMPLS, make_config
from training.optim import build_sgd, zero_gradients
from training.precision import Precision
from utils.atomic import write_text_atomic
from utils.autocast import PRECISION_MODES
from utils.cli import ScriptParser, int_list
from utils.machine import use_huge_pages
from utils.sliding_window import count_windows, window_starts

MODES = ("official", "default", "fast")
LA_ITERATIONS = 15000
LA_EVALUATIONS = (LA_ITERATIONS - 2000) // 200 + 1  # 66: every 200 iterations from 2,000
LA_TEST_WINDOWS = 1128  # windows of the 20 LA test scans at patch 112,112,80, stride 18,18,4
ACDC_ITERATIONS = 30000
DOES_NOT_FIT = 3  # exit code of a worker whose memory passed the --fits_gb budget
GIB = 2**30


# -- memory ---------------------------------------------------------------------------------------------------
def process_memory_gib(field: str = "VmHWM") -> float:
    """This process's resident memory from /proc (VmHWM = peak, VmRSS = now); getrusage's peak elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: kB


def memory_kind(device: torch.device) -> str:
    return "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss"


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return process_memory_gib("VmHWM")


def current_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GIB
    return process_memory_gib("VmRSS")


def cap_memory(device: torch.device, budget_gib: float) -> None:
    """--fits_gb: CUDA caps the caching allocator (an allocation past it raises OutOfMemoryError); on the CPU a
    watchdog thread ends the process with DOES_NOT_FIT as soon as its resident set passes the budget."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * GIB / total), device)
        return

    def watch() -> None:
        while True:
            if process_memory_gib("VmRSS") > budget_gib:
                os._exit(DOES_NOT_FIT)
            time.sleep(0.005)

    threading.Thread(target=watch, daemon=True).start()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_backends(fast: bool) -> None:
    """official / default: cuDNN deterministic, no autotuning (the official scripts, --deterministic 1); fast:
    autotuning (--deterministic 0)."""
    torch.backends.cudnn.deterministic = not fast
    torch.backends.cudnn.benchmark = fast


def synthetic_batch(batch_size: int, shape: tuple[int, ...], num_classes: int, device: torch.device,
                    seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 1, *shape) = a centred ball of class 1 (further classes as shells) + noise; labels (B, *shape)."""
    generator = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = torch.sqrt(sum(a * a for a in axes))
    labels = torch.zeros(shape, dtype=torch.int64)
    for c in range(1, num_classes):
        labels[radius < 0.7 - 0.15 * (c - 1)] = c
    labels = labels.expand(batch_size, *shape).clone()
    images = labels.unsqueeze(1).float() + 0.5 * torch.randn((batch_size, 1, *shape), generator=generator)
    return images.to(device), labels.to(device)


# -- training -------------------------------------------------------------------------------------------------
@dataclass
class TrainingStep:
    """One SS-Net training iteration as the trainer runs it (in-place zeroing, loss, backward, SGD step)."""

    method: Method
    optimizer: torch.optim.Optimizer
    precision: Precision
    labeled: Batch
    unlabeled: Batch
    context: StepContext  # the backward of --low_memory 1 for the default and fast modes, as the trainer gives it

    def __call__(self, iteration: int) -> None:
        zero_gradients(self.optimizer)
        with self.precision.autocast():
            output = self.method(self.labeled, self.unlabeled, self.context.at(iteration))
        self.precision.backward_and_step(output.loss, self.optimizer, iteration)


def build_training(mode: str, dataset: str, network_kwargs: dict, shape: tuple[int, ...], batch_size: int,
                   labeled_bs: int, device: torch.device, options: dict, method: str = "ss_net") -> TrainingStep:
    """The step of `method` (SS-Net by default; --method) in `mode` on synthetic data already on the device."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from: {', '.join(MODES)}")
    fast = mode == "fast"
    set_backends(fast)
    torch.manual_seed(0)
    adapter = get_dataset(dataset)
    config = make_config(dataset, method=method)  # the method's recipe (BCP: its self-train step, the costlier)
    network = build_network(adapter.network, **{**network_kwargs, **config.network_kwargs,
                                                **network_kwargs}).to(device)
    if fast:
        prepare_network(network, channels_last=options["channels_last"], compile=options["compile"])
    precision = Precision(options["amp"] if fast else "off", device)
    method = build_method(method, network, config)
    context = StepContext(0, backward=None if mode == "official" else precision.backward)
    optimizer = build_sgd([p for _, p in method.trained_parameters()], lr=0.01,
                          impl=options["optimizer_impl"] if fast else "default")
    images, labels = synthetic_batch(batch_size, shape, adapter.num_classes, device, seed=1)
    method.train()
    return TrainingStep(method, optimizer, precision, Batch(images[:labeled_bs], labels[:labeled_bs]),
                        Batch(images[labeled_bs:], None), context)


def train_job(job: dict) -> dict:
    """One process's measurement: warm-up iterations, then timed ones; peak memory of the whole process."""
    device = torch.device(job["device"])
    if job.get("budget_gib"):
        cap_memory(device, job["budget_gib"])
    step = build_training(job["mode"], job["dataset"], job["network_kwargs"], tuple(job["shape"]), job["batch_size"],
                          job["labeled_bs"], device, job["options"], job.get("method", "ss_net"))
    baseline = current_memory_gib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    iteration = 10_000  # past the warm-up ramp: every loss term is weighted
    start = time.perf_counter()
    for _ in range(job["warmup"]):
        step(iteration)
        iteration += 1
    synchronize(device)
    warmup_s = time.perf_counter() - start
    seconds = []
    for _ in range(job["iterations"]):
        start = time.perf_counter()
        step(iteration)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        iteration += 1
    peak = peak_memory_gib(device)
    if job.get("budget_gib") and peak > job["budget_gib"]:
        sys.exit(DOES_NOT_FIT)  # a peak between two watchdog looks
    mean = sum(seconds) / len(seconds) if seconds else math.nan
    return {"seconds_per_iteration": mean, "iteration_seconds": seconds, "warmup_s": warmup_s,
            "peak_memory_gib": peak, "baseline_memory_gib": baseline, "memory_kind": memory_kind(device)}


# -- testing --------------------------------------------------------------------------------------------------
@torch.no_grad()
def official_sliding_window(network: torch.nn.Module, volume: np.ndarray, patch: tuple[int, ...],
                            stride: tuple[int, ...], num_classes: int, device: torch.device) -> np.ndarray:
    """The official test loop's costs: one window at a time, host volume -> device -> host, numpy accumulation."""
    score = np.zeros((num_classes, *volume.shape), dtype=np.float32)
    count = np.zeros(volume.shape, dtype=np.float32)
    starts = [window_starts(s, p, st) for s, p, st in zip(volume.shape, patch, stride, strict=True)]
    for x in starts[0]:
        for y in starts[1]:
            for z in starts[2]:
                window = (slice(x, x + patch[0]), slice(y, y + patch[1]), slice(z, z + patch[2]))
                patch_in = torch.from_numpy(np.ascontiguousarray(volume[window])[None, None]).to(device)
                probs = torch.softmax(network(patch_in)[0], dim=1).cpu().numpy()[0]
                score[(slice(None), *window)] += probs
                count[window] += 1
    return score / count


def test_job(job: dict) -> dict:
    """Seconds per LA test volume (probabilities -> uint8 label map on the host) in one mode; the last label map
    is written to job["labels_path"] for the agreement between modes."""
    device, mode = torch.device(job["device"]), job["mode"]
    fast = mode == "fast"
    set_backends(fast)
    torch.manual_seed(0)
    network = build_network("vnet", **job["network_kwargs"]).to(device).eval()
    volume = np.random.default_rng(2).normal(size=job["volume_shape"]).astype(np.float32)
    patch, stride, options = tuple(job["patch_size"]), tuple(job["stride"]), job["options"]
    if mode == "official":
        def one_volume() -> np.ndarray:
            probs = official_sliding_window(network, volume, patch, stride, 2, device)
            return probs.argmax(0).astype(np.uint8)
        batch_size = 1
    else:
        if fast:
            prepare_network(network, channels_last=options["channels_last"], compile=options["compile"])
        batch_size = options["eval_batch_size"] if fast else job["test_batch_size"]
        settings = InferenceSettings(patch, stride, batch_size=batch_size, largest_component=False,
                                     amp=options["amp"] if fast else "off")
        predictor = Predictor(network, get_dataset("LA"), settings)

        def one_volume() -> np.ndarray:
            return predictor.predict_stored(volume)
    baseline = current_memory_gib(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(job["warmup"]):
        one_volume()
    synchronize(device)
    seconds = []
    for _ in range(job["volumes"]):
        start = time.perf_counter()
        labels = one_volume()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    np.save(job["labels_path"], labels)
    mean = sum(seconds) / len(seconds)
    windows = count_windows(job["volume_shape"], patch, stride)
    return {"seconds_per_volume": mean, "volume_seconds": seconds, "volumes_per_s": 1.0 / mean,
            "windows_per_volume": windows, "windows_per_s": windows / mean, "volumes": job["volumes"],
            "stride": list(stride), "batch_size": batch_size, "peak_memory_gib": peak_memory_gib(device),
            "baseline_memory_gib": baseline, "memory_kind": memory_kind(device)}


# -- one process per measurement ------------------------------------------------------------------------------
RESULT_PREFIX = "BENCH_RESULT "


def run_worker(job: dict, module: str = "benchmarks.bench") -> dict | None:
    """`job` in a fresh process (python -m MODULE --worker JOB, which answers with `serve_job`); None when it did
    not fit the budget."""
    command = [sys.executable, "-m", module, "--worker", json.dumps(job)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, cwd=root, env=env)
    if done.returncode == DOES_NOT_FIT:
        return None
    results = [line[len(RESULT_PREFIX):] for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not results:
        raise RuntimeError(f"{module} worker failed (exit {done.returncode}) for {job}:\n{done.stderr[-4000:]}")
    return json.loads(results[-1])


def serve_job(job_text: str, work: Callable[[dict], dict]) -> int:
    """The worker side of `run_worker`: the job's CPU threads and memory pages, then `work(job)` printed for the
    parent. Huge pages as our scripts ask for them (utils.machine.use_huge_pages): for a job that trains (kind
    "train" or "program", as train_*.py), not for sliding-window jobs (as test_*.py) nor for the official mode
    (the official code does not ask); before the job's first large allocation."""
    job = json.loads(job_text)
    if job.get("kind") in ("train", "program") and job.get("mode") != "official":
        use_huge_pages()
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    print(RESULT_PREFIX + json.dumps(work(job)), flush=True)
    return 0


def worker_main(job_text: str) -> int:
    return serve_job(job_text, lambda job: train_job(job) if job["kind"] == "train" else test_job(job))


def summarise(runs: list[dict], key: str) -> dict:
    """Repeats of one mode: the median time, the largest peak, every repeat kept."""
    return {key: statistics.median(r[key] for r in runs), "peak_memory_gib": max(r["peak_memory_gib"] for r in runs),
            "baseline_memory_gib": min(r["baseline_memory_gib"] for r in runs),
            "memory_kind": runs[0]["memory_kind"], "repeats": runs}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def compare(entry: dict, modes: list[str], time_key: str) -> None:
    """Ratios of every mode to the official one: time (lower is faster) and peak memory."""
    if "official" not in modes:
        return
    base = entry["official"]
    entry["ratios_to_official"] = {m: {"time": _ratio(entry[m][time_key], base[time_key]),
                                       "peak_memory": _ratio(entry[m]["peak_memory_gib"], base["peak_memory_gib"])}
                                   for m in modes if m != "official"}


def print_table(title: str, entry: dict, modes: list[str], time_key: str, unit: str) -> None:
    print(title, flush=True)
    print(f"  {'mode':9s} {unit:>12s} {'peak memory':>12s} {'time / official':>16s} {'memory / official':>18s}")
    ratios = entry.get("ratios_to_official", {})
    for m in modes:
        r = ratios.get(m, {"time": 1.0, "peak_memory": 1.0}) if "official" in modes else {}
        row = f"  {m:9s} {entry[m][time_key]:12.3f} {entry[m]['peak_memory_gib']:9.2f} GiB"
        if r:
            row += f" {r['time']:15.2f}x {r['peak_memory']:17.2f}x"
        print(row, flush=True)


# -- the whole run ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default=",".join(MODES), help="comma list of official, default, fast")
    p.add_argument("--datasets", default="LA,ACDC", help="training shapes to measure: LA, ACDC or both")
    p.add_argument("--iterations", type=int, default=3, help="timed training iterations per process")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations / volumes first (compile, autotune)")
    p.add_argument("--repeats", type=int, default=1, help="processes per mode, alternating modes")
    la, acdc = make_config("LA"), make_config("ACDC")
    p.add_argument("--la_shape", type=int_list, default=list(la.patch_size), help="LA training crop")
    p.add_argument("--method", default="ss_net", choices=sorted(METHODS),
                   help="the training step to time (BCP: its self-train step, two student and two teacher forwards)")
    p.add_argument("--la_batch", type=int_list, default=None, help="batch,labeled (default: the method's recipe; "
                   f"ss_net {la.batch_size},{la.labeled_bs})")
    p.add_argument("--acdc_shape", type=int_list, default=list(acdc.patch_size), help="ACDC training slice size")
    p.add_argument("--acdc_batch", type=int_list, default=None, help="batch,labeled (default: the method's recipe; "
                   f"ss_net {acdc.batch_size},{acdc.labeled_bs})")
    p.add_argument("--base_filters", type=int, default=16, help="V-Net width (16 = the paper's; smaller to smoke-test)")
    p.add_argument("--unet_channels", type=int_list, default=[16, 32, 64, 128, 256], help="U-Net widths")
    p.add_argument("--volume_shape", type=int_list, default=[176, 160, 88],
                   help="LA test volume (W,H,D); 176,160,88 = 60 windows, the test set averages 56.4")
    p.add_argument("--patch_size", type=int_list, default=list(la.patch_size), help="sliding-window patch")
    p.add_argument("--stride", type=int_list, default=list(la.stride), help="sliding-window stride (official)")
    p.add_argument("--eval_stride", type=int_list, default=[], help="also project a run with this in-training "
                   "evaluation stride (fast mode), e.g. 56,56,40")
    p.add_argument("--volumes", type=int, default=2, help="timed test volumes per mode")
    p.add_argument("--test_batch_size", type=int, default=4, help="default mode: windows per forward "
                   "(test_la.py's --batch_size)")
    p.add_argument("--no_test", action="store_true", help="training only")
    p.add_argument("--fits_gb", type=float, default=0.0, help="also find the largest LA batch (2, 4, ...; half "
                   "labeled) whose peak memory stays within this many GiB, per training mode")
    p.add_argument("--fits_max_batch", type=int, default=16, help="largest LA batch --fits_gb tries")
    p.add_argument("--amp", default="bf16", choices=PRECISION_MODES, help="fast mode's precision")
    p.add_argument("--channels_last", type=int, default=1, choices=(0, 1), help="fast mode's memory format")
    p.add_argument("--compile", type=int, default=0, choices=(0, 1), help="fast mode: torch.compile the network")
    p.add_argument("--optimizer_impl", default="fused", choices=OPTIMIZER_IMPLS, help="fast mode's SGD kernel")
    p.add_argument("--eval_batch_size", type=int, default=8, help="fast mode: windows per forward")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: 32^3 crops, 4 filters, 1 iteration")
    p.add_argument("--output", default="bench.json", help="JSON file to write")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p


def apply_tiny(args: argparse.Namespace) -> None:
    args.la_shape, args.acdc_shape, args.base_filters = [32, 32, 32], [32, 32], 4
    args.unet_channels = [4, 8, 8, 16, 16]
    args.volume_shape, args.patch_size, args.stride = [40, 36, 34], [32, 32, 32], [8, 8, 4]
    args.iterations, args.warmup, args.volumes, args.eval_batch_size = 1, 1, 1, 4


def projected_la_run_s(train: dict, test: dict, windows_per_eval: float) -> float:
    return LA_ITERATIONS * train["seconds_per_iteration"] + LA_EVALUATIONS * windows_per_eval / test["windows_per_s"]


def largest_fitting_batch(job: dict, budget_gib: float, max_batch: int) -> dict:
    """The largest even LA batch (half labeled) whose process peak stays within the budget, by trying 2, 4, ..."""
    tried = {}
    largest = 0
    for batch in range(2, max_batch + 1, 2):
        result = run_worker({**job, "batch_size": batch, "labeled_bs": batch // 2, "iterations": 1, "warmup": 1,
                             "budget_gib": budget_gib})
        tried[batch] = None if result is None else result["peak_memory_gib"]
        if result is None:
            break
        largest = batch
    return {"budget_gib": budget_gib, "largest_batch": largest, "peak_memory_gib_by_batch": tried}


def run_benchmark(args: argparse.Namespace) -> dict:
    if args.tiny:
        apply_tiny(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available here; use --device cpu")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modes must list some of {', '.join(MODES)}, got {args.modes!r}")
    datasets = [d for d in args.datasets.split(",") if d]
    for name, attribute in (("LA", "la_batch"), ("ACDC", "acdc_batch")):
        if getattr(args, attribute) is None:
            recipe = make_config(name, method=args.method)
            setattr(args, attribute, [recipe.batch_size, recipe.labeled_bs])
    vnet_kwargs = {**get_dataset("LA").network_kwargs, "base_filters": args.base_filters}
    unet_kwargs = {**get_dataset("ACDC").network_kwargs, "channels": list(args.unet_channels)}
    options = {"amp": args.amp, "channels_last": bool(args.channels_last), "compile": bool(args.compile),
               "optimizer_impl": args.optimizer_impl, "eval_batch_size": args.eval_batch_size}
    common = {"device": str(device), "options": options, "threads": args.threads}
    report: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                                          platform.machine()),
        "torch": torch.__version__,
        "cpu_threads": args.threads or torch.get_num_threads(),
        "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "worker")},
        "train": {},
        "test": {},
    }
    training = {
        "LA": ("LA", vnet_kwargs, tuple(args.la_shape), args.la_batch),
        "ACDC": ("ACDC", unet_kwargs, tuple(args.acdc_shape), args.acdc_batch),
    }
    for name in datasets:
        if name not in training:
            raise ValueError(f"--datasets: unknown {name!r}; choose from LA, ACDC")
        preset, kwargs, shape, (batch, labeled) = training[name]
        entry: dict = {"shape": list(shape), "batch_size": batch, "labeled_bs": labeled}
        job = {**common, "kind": "train", "method": args.method, "dataset": preset, "network_kwargs": kwargs,
               "shape": list(shape),
               "batch_size": batch, "labeled_bs": labeled, "iterations": args.iterations, "warmup": args.warmup}
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                runs[mode].append(run_worker({**job, "mode": mode}))
                print(f"train {name} {mode:8s}: {runs[mode][-1]['seconds_per_iteration']:.3f} s/it, peak "
                      f"{runs[mode][-1]['peak_memory_gib']:.2f} GiB", flush=True)
        for mode in modes:
            entry[mode] = summarise(runs[mode], "seconds_per_iteration")
            entry[mode]["iterations_per_s"] = 1.0 / entry[mode]["seconds_per_iteration"]
        compare(entry, modes, "seconds_per_iteration")
        if {"official", "fast"} <= set(modes):
            entry["speedup"] = _ratio(entry["fast"]["iterations_per_s"], entry["official"]["iterations_per_s"])
        if name == "LA" and args.fits_gb:
            entry["fits"] = {m: largest_fitting_batch({**job, "mode": m}, args.fits_gb, args.fits_max_batch)
                             for m in modes}
        report["train"][name] = entry
        print_table(f"train {name}: batch {batch} ({labeled} labeled), {'x'.join(map(str, shape))}, "
                    f"{args.iterations} timed iterations x {args.repeats} processes per mode (median)",
                    entry, modes, "seconds_per_iteration", "s/iteration")
        for mode, fit in entry.get("fits", {}).items():
            print(f"  fits in {args.fits_gb:g} GiB ({mode}): the largest LA batch is {fit['largest_batch']} "
                  f"(peaks tried: {fit['peak_memory_gib_by_batch']})", flush=True)

    if not args.no_test:
        run_test_benchmark(args, modes, common, vnet_kwargs, report)
    write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


def run_test_benchmark(args: argparse.Namespace, modes: list[str], common: dict, vnet_kwargs: dict,
                       report: dict) -> None:
    volume_shape, patch, stride = list(args.volume_shape), list(args.patch_size), list(args.stride)
    test: dict = {"volume_shape": volume_shape, "patch_size": patch}
    labels = {}
    with tempfile.TemporaryDirectory() as folder:
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:
                path = Path(folder) / f"{mode}.npy"
                runs[mode].append(run_worker({**common, "kind": "test", "mode": mode, "network_kwargs": vnet_kwargs,
                                              "volume_shape": volume_shape, "patch_size": patch, "stride": stride,
                                              "warmup": args.warmup, "volumes": args.volumes,
                                              "test_batch_size": args.test_batch_size, "labels_path": str(path)}))
                labels[mode] = np.load(path)
                print(f"test LA {mode:8s}: {runs[mode][-1]['seconds_per_volume']:.3f} s/volume", flush=True)
    for mode in modes:
        test[mode] = summarise(runs[mode], "seconds_per_volume")
        last = runs[mode][-1]
        test[mode].update({k: last[k] for k in ("windows_per_volume", "stride", "batch_size", "volumes")})
        test[mode]["volumes_per_s"] = 1.0 / test[mode]["seconds_per_volume"]
        test[mode]["windows_per_s"] = test[mode]["windows_per_volume"] * test[mode]["volumes_per_s"]
    compare(test, modes, "seconds_per_volume")
    if "official" in modes:
        # a random-weight network sits near p = 0.5, the worst case for label flips under changed arithmetic
        for mode in modes:
            if mode != "official":
                differ = int((labels[mode] != labels["official"]).sum())
                test[f"label_agreement_{mode}_vs_official"] = 1.0 - differ / labels[mode].size
                test[f"voxels_differing_{mode}_vs_official"] = differ
        if "fast" in modes:
            test["speedup"] = _ratio(test["fast"]["volumes_per_s"], test["official"]["volumes_per_s"])
    report["test"]["LA"] = test
    print_table(f"test LA: volume {'x'.join(map(str, volume_shape))}, {test[modes[0]]['windows_per_volume']} "
                f"windows, {args.volumes} timed volumes x {args.repeats} processes per mode (median)",
                test, modes, "seconds_per_volume", "s/volume")
    for mode in modes:
        if mode != "official" and "official" in modes:
            print(f"  labels {mode} vs official: {test[f'voxels_differing_{mode}_vs_official']} voxels differ "
                  f"(random weights)", flush=True)

    if "LA" in report["train"]:
        projection = {"iterations": LA_ITERATIONS, "evaluations": LA_EVALUATIONS,
                      "windows_per_evaluation": LA_TEST_WINDOWS,
                      "note": "meaningful at the full LA shapes only (crop and patch 112,112,80, V-Net width 16); "
                              "SS-Net's 15,000 iterations (a two-stage method adds its pre-train, at most this "
                              "step's cost per iteration)"}
        for mode in modes:
            projection[f"{mode}_s"] = projected_la_run_s(report["train"]["LA"][mode], test[mode], LA_TEST_WINDOWS)
            print(f"projected full LA run ({mode}): {projection[f'{mode}_s'] / 60:.1f} min", flush=True)
        if args.eval_stride and "fast" in modes:
            ratio = count_windows(args.volume_shape, patch, args.eval_stride) / count_windows(args.volume_shape, patch,
                                                                                            stride)
            projection["eval_stride"] = list(args.eval_stride)
            projection["fast_eval_stride_s"] = projected_la_run_s(report["train"]["LA"]["fast"], test["fast"],
                                                                  LA_TEST_WINDOWS * ratio)
            print(f"projected full LA run (fast, --eval_stride {','.join(map(str, args.eval_stride))}): "
                  f"{projection['fast_eval_stride_s'] / 60:.1f} min", flush=True)
        if {"official", "fast"} <= set(modes):
            projection["speedup"] = _ratio(projection["official_s"], projection["fast_s"])
        if {"official", "default"} <= set(modes):
            projection["speedup_default"] = _ratio(projection["official_s"], projection["default_s"])
        report["projection_LA_full_run"] = projection


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    try:
        run_benchmark(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
