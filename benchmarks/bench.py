"""Speed benchmark: SS-Net training iterations/s (LA and ACDC shapes) and LA test-volume throughput, each in an
"official-equivalent" mode and in our fast mode, on the current device; prints ratios and a projected full LA
run time and writes JSON. Synthetic tensors on the device (no dataset needed): it measures compute, not I/O.

    python -m benchmarks.bench                                   # full shapes on the default device
    python -m benchmarks.bench --device cuda --compile 1 --output bench_gpu.json
    python -m benchmarks.bench --tiny                            # seconds on a CPU (a smoke test)

Modes
* official: fp32, no channels-last, no compile, PyTorch's default SGD, cuDNN deterministic without autotuning;
  training runs SS-Net's official sequence of passes (main, clean target, VAT probe forward + backward,
  adversarial forward, backward); testing runs the official loop: one window at a time copied from a host
  (numpy) volume to the device, softmax copied back, probabilities and counts accumulated on the host.
* fast: --amp (bf16), --channels_last, optionally --compile, fused SGD, cuDNN autotuning; testing keeps the
  volume, the window batches (--eval_batch_size) and the accumulators on the device.

Numbers are measured, never asserted. The projection: LA = 15,000 iterations + 66 in-training evaluations
(every 200 iterations from 2,000) of the 20 test scans = 1,128 windows each (stride 18,18,4); with
--eval_stride the window count is scaled by the ratio of windows on the benchmark volume.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dataloaders import get_dataset
from methods import Batch, build_method
from networks import build_network
from networks.speed import prepare_network
from training.config import OPTIMIZER_IMPLS, make_config
from training.optim import build_sgd
from training.precision import Precision
from utils.atomic import write_text_atomic
from utils.cli import int_list
from utils.precision import PRECISION_MODES
from utils.sliding_window import count_windows, sliding_window_predict, window_starts

LA_ITERATIONS = 15000
LA_EVALUATIONS = (LA_ITERATIONS - 2000) // 200 + 1  # 66: every 200 iterations from 2,000
LA_TEST_WINDOWS = 1128  # windows of the 20 LA test scans at patch 112,112,80, stride 18,18,4
ACDC_ITERATIONS = 30000


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_backends(fast: bool) -> None:
    """official: cuDNN deterministic, no autotuning (as the official scripts); fast: autotuning."""
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


def bench_training(dataset: str, network_kwargs: dict, shape: tuple[int, ...], batch_size: int,
                   labeled_bs: int, device: torch.device, fast: bool, options, iterations: int,
                   warmup: int) -> dict:
    """Seconds per SS-Net training iteration (loss, backward, SGD step) on synthetic data already on the device."""
    set_backends(fast)
    torch.manual_seed(0)
    adapter = get_dataset(dataset)
    network = build_network(adapter.network, **network_kwargs).to(device)
    if fast:
        prepare_network(network, channels_last=options.channels_last, compile=options.compile)
    precision = Precision(options.amp if fast else "off", device)
    method = build_method("ss_net", network, make_config(dataset))
    optimizer = build_sgd(method.parameters(), lr=0.01, impl=options.optimizer_impl if fast else "default")
    images, labels = synthetic_batch(batch_size, shape, adapter.num_classes, device, seed=1)
    labeled = Batch(images[:labeled_bs], labels[:labeled_bs])
    unlabeled = Batch(images[labeled_bs:], None)
    network.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step(iteration: int) -> None:
        with precision.autocast():
            output = method.training_loss(labeled, unlabeled, iteration)
        optimizer.zero_grad(set_to_none=True)
        precision.backward_and_step(output.loss, optimizer, iteration)

    start = time.perf_counter()
    for i in range(warmup):
        step(10_000 + i)  # past the warm-up ramp: every loss term is weighted
    synchronize(device)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(iterations):
        step(10_000 + warmup + i)
    synchronize(device)
    seconds = (time.perf_counter() - start) / iterations
    result = {"seconds_per_iteration": seconds, "iterations_per_s": 1.0 / seconds, "iterations": iterations,
              "warmup_iterations": warmup, "warmup_s": warmup_s}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


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


def bench_testing(network_kwargs: dict, volume_shape: tuple[int, ...], patch: tuple[int, ...],
                  stride: tuple[int, ...], device: torch.device, fast: bool, options, volumes: int,
                  warmup: int) -> tuple[dict, np.ndarray]:
    """Seconds per LA test volume (probabilities -> label map on the host) in one mode."""
    set_backends(fast)
    torch.manual_seed(0)
    network = build_network("vnet", **network_kwargs).to(device).eval()
    if fast:
        prepare_network(network, channels_last=options.channels_last, compile=options.compile)
    volume = np.random.default_rng(2).normal(size=volume_shape).astype(np.float32)
    precision = Precision(options.amp if fast else "off", device)

    def predict_logits(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return network(x)[0]

    def one_volume() -> np.ndarray:
        if not fast:
            return official_sliding_window(network, volume, patch, stride, 2, device).argmax(0).astype(np.uint8)
        image = torch.from_numpy(volume)[None].to(device)
        probs = sliding_window_predict(predict_logits, image, patch, stride, 2, options.eval_batch_size)
        return probs.argmax(0).to(torch.uint8).cpu().numpy()

    for _ in range(warmup):
        one_volume()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(volumes):
        labels = one_volume()
    synchronize(device)
    seconds = (time.perf_counter() - start) / volumes
    windows = count_windows(volume_shape, patch, stride)
    return {"seconds_per_volume": seconds, "volumes_per_s": 1.0 / seconds, "windows_per_volume": windows,
            "windows_per_s": windows / seconds, "volumes": volumes, "stride": list(stride),
            "batch_size": 1 if not fast else options.eval_batch_size}, labels


def projected_la_run_s(train: dict, test: dict, windows_per_eval: float) -> float:
    return LA_ITERATIONS * train["seconds_per_iteration"] + LA_EVALUATIONS * windows_per_eval / test["windows_per_s"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="official,fast", help="comma list of official, fast")
    p.add_argument("--datasets", default="LA,ACDC", help="training shapes to measure: LA, ACDC or both")
    p.add_argument("--iterations", type=int, default=10, help="timed training iterations per mode and dataset")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations / volumes first (compile, autotune)")
    la, acdc = make_config("LA"), make_config("ACDC")
    p.add_argument("--la_shape", type=int_list, default=list(la.patch_size), help="LA training crop")
    p.add_argument("--la_batch", type=int_list, default=[la.batch_size, la.labeled_bs], help="batch,labeled")
    p.add_argument("--acdc_shape", type=int_list, default=list(acdc.patch_size), help="ACDC training slice size")
    p.add_argument("--acdc_batch", type=int_list, default=[acdc.batch_size, acdc.labeled_bs], help="batch,labeled")
    p.add_argument("--base_filters", type=int, default=16, help="V-Net width (16 = the paper's; smaller to smoke-test)")
    p.add_argument("--unet_channels", type=int_list, default=[16, 32, 64, 128, 256], help="U-Net widths")
    p.add_argument("--volume_shape", type=int_list, default=[176, 160, 88],
                   help="LA test volume (W,H,D); 176,160,88 = 60 windows, the test set averages 56.4")
    p.add_argument("--patch_size", type=int_list, default=list(la.patch_size), help="sliding-window patch")
    p.add_argument("--stride", type=int_list, default=list(la.stride), help="sliding-window stride (official)")
    p.add_argument("--eval_stride", type=int_list, default=[], help="also project a run with this in-training "
                   "evaluation stride (fast mode), e.g. 56,56,40")
    p.add_argument("--volumes", type=int, default=2, help="timed test volumes per mode")
    p.add_argument("--amp", default="bf16", choices=PRECISION_MODES, help="fast mode's precision")
    p.add_argument("--channels_last", type=int, default=1, choices=(0, 1), help="fast mode's memory format")
    p.add_argument("--compile", type=int, default=0, choices=(0, 1), help="fast mode: torch.compile the network")
    p.add_argument("--optimizer_impl", default="fused", choices=OPTIMIZER_IMPLS, help="fast mode's SGD kernel")
    p.add_argument("--eval_batch_size", type=int, default=8, help="fast mode: windows per forward")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    p.add_argument("--tiny", action="store_true", help="smoke-test sizes: 32^3 crops, 4 filters, 1 iteration")
    p.add_argument("--output", default="bench.json", help="JSON file to write")
    return p


def apply_tiny(args: argparse.Namespace) -> None:
    args.la_shape, args.acdc_shape, args.base_filters = [32, 32, 32], [32, 32], 4
    args.unet_channels = [4, 8, 8, 16, 16]
    args.volume_shape, args.patch_size, args.stride = [40, 36, 34], [32, 32, 32], [8, 8, 4]
    args.iterations, args.warmup, args.volumes, args.eval_batch_size = 1, 1, 1, 4


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def run_benchmark(args: argparse.Namespace) -> dict:
    if args.tiny:
        apply_tiny(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available here; use --device cpu")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in ("official", "fast") for m in modes):
        raise ValueError(f"--modes must list official and/or fast, got {args.modes!r}")
    datasets = [d for d in args.datasets.split(",") if d]
    vnet_kwargs = {**get_dataset("LA").network_kwargs, "base_filters": args.base_filters}
    unet_kwargs = {**get_dataset("ACDC").network_kwargs, "channels": list(args.unet_channels)}
    report: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                                          platform.machine()),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
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
        entry = {"shape": list(shape), "batch_size": batch, "labeled_bs": labeled}
        for mode in modes:
            entry[mode] = bench_training(preset, kwargs, shape, batch, labeled, device, mode == "fast", args,
                                         args.iterations, args.warmup)
            print(f"train {name} {mode:8s}: {entry[mode]['iterations_per_s']:.3f} it/s "
                  f"({entry[mode]['seconds_per_iteration']:.3f} s/it)", flush=True)
        if len(modes) == 2:
            entry["speedup"] = _ratio(entry["fast"]["iterations_per_s"], entry["official"]["iterations_per_s"])
            print(f"train {name} speed-up fast/official: {entry['speedup']:.2f}x", flush=True)
        report["train"][name] = entry

    volume_shape, patch, stride = tuple(args.volume_shape), tuple(args.patch_size), tuple(args.stride)
    test = {"volume_shape": list(volume_shape), "patch_size": list(patch)}
    labels = {}
    for mode in modes:
        test[mode], labels[mode] = bench_testing(vnet_kwargs, volume_shape, patch, stride, device, mode == "fast",
                                                 args, args.volumes, args.warmup)
        print(f"test LA {mode:8s}: {test[mode]['volumes_per_s']:.3f} volumes/s "
              f"({test[mode]['windows_per_s']:.2f} windows/s)", flush=True)
    if len(modes) == 2:
        test["speedup"] = _ratio(test["fast"]["volumes_per_s"], test["official"]["volumes_per_s"])
        # a random-weight network sits near p = 0.5, the worst case for label flips under reduced precision
        test["label_agreement_fast_vs_official"] = float((labels["fast"] == labels["official"]).mean())
        print(f"test LA speed-up fast/official: {test['speedup']:.2f}x (label agreement "
              f"{test['label_agreement_fast_vs_official']:.4f}, random weights)", flush=True)
    report["test"]["LA"] = test

    if "LA" in report["train"]:
        projection = {"iterations": LA_ITERATIONS, "evaluations": LA_EVALUATIONS,
                      "windows_per_evaluation": LA_TEST_WINDOWS,
                      "note": "meaningful at the full LA shapes only (crop and patch 112,112,80, V-Net width 16)"}
        for mode in modes:
            projection[f"{mode}_s"] = projected_la_run_s(report["train"]["LA"][mode], test[mode], LA_TEST_WINDOWS)
            print(f"projected full LA run ({mode}): {projection[f'{mode}_s'] / 60:.1f} min", flush=True)
        if args.eval_stride and "fast" in modes:
            ratio = count_windows(volume_shape, patch, args.eval_stride) / count_windows(volume_shape, patch, stride)
            projection["eval_stride"] = list(args.eval_stride)
            projection["fast_eval_stride_s"] = projected_la_run_s(report["train"]["LA"]["fast"], test["fast"],
                                                                  LA_TEST_WINDOWS * ratio)
            print(f"projected full LA run (fast, --eval_stride {','.join(map(str, args.eval_stride))}): "
                  f"{projection['fast_eval_stride_s'] / 60:.1f} min", flush=True)
        if len(modes) == 2:
            projection["speedup"] = _ratio(projection["official_s"], projection["fast_s"])
        report["projection_LA_full_run"] = projection
    write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_benchmark(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
