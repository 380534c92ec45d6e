"""The test command beside the official test loop: `test_la.py` / `test_acdc.py` as a user runs them, whole, against
the official scripts' inference loops on the same cases and weights.

    python -m benchmarks.test_program --dataset LA --checkpoint C --root_path DATA/LA --list ONE.list --threads 2
    python -m benchmarks.test_program --dataset ACDC --checkpoint C --root_path DATA/ACDC --threads 2

Each side runs in its own fresh process, one after the other, --repeats times alternating:
* command: `python test_la.py` / `test_acdc.py --checkpoint C --root_path R --list L --device D`, timed from the
  spawn to the exit (interpreter start, imports, checkpoint, data checks, inference, largest component, metrics,
  the table and CSV / JSON written); peak resident set from the child's own rusage.
* official: the official code's inference loop, timed from the first case read to the last result, after its
  imports and the network are loaded (so its start-up is free):
  - LA (`test_3d_patch.test_single_case`): one 112x112x80 window at a time at stride 18,18,4, host volume ->
    device -> softmax -> host, probabilities and counts accumulated in numpy, then the argmax. The window loop
    alone: no largest component, no metrics (issue 26 measured the official LA figure this way).
  - ACDC (`test_ACDC.test_single_volume`): the case read from its h5, every slice zoomed to 256x256 (order 0),
    one slice per forward, argmax, zoomed back; then medpy's Dice, Jaccard, HD95 and ASD for each of the three
    classes, 0s for an empty class. Its NIfTI writes (SimpleITK) are left out.
The speed-up is official seconds / command seconds (> 1: the command is faster, start-up included). Both use the
network rebuilt from the same checkpoint and --threads CPU threads (the command picks its own threads: all cores
free of other work, so run on a quiet machine). Wall-clock figures are worth comparing on a quiet machine only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench import GIB, official_sliding_window, process_memory_gib, run_worker, serve_job
from dataloaders import get_dataset
from utils.atomic import write_text_atomic
from utils.cli import ScriptParser, int_list

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"LA": "test_la.py", "ACDC": "test_acdc.py"}


def read_list(path: str | Path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


# -- the official loops ----------------------------------------------------------------------------------------
def official_acdc_volume(network: torch.nn.Module, image: np.ndarray, label: np.ndarray, device: torch.device,
                         size: tuple[int, int] = (256, 256)) -> list[tuple[float, ...]]:
    """`test_single_volume`'s costs: slice by slice through zoom and one forward, then medpy's four metrics per
    class (0s where the prediction lacks the class, as the official rule)."""
    from medpy import metric
    from scipy.ndimage import zoom

    prediction = np.zeros_like(label)
    for index in range(image.shape[0]):
        plane = image[index]
        x, y = plane.shape
        zoomed = zoom(plane, (size[0] / x, size[1] / y), order=0)
        with torch.no_grad():
            logits = network(torch.from_numpy(zoomed)[None, None].float().to(device))[0]  # the main output
            labels = torch.argmax(torch.softmax(logits, dim=1), dim=1)[0].cpu().numpy()
        prediction[index] = zoom(labels, (x / size[0], y / size[1]), order=0)
    scores = []
    for c in (1, 2, 3):
        pred, gt = prediction == c, label == c
        if not pred.any():
            scores.append((0.0, 0.0, 0.0, 0.0))
            continue
        scores.append((metric.binary.dc(pred, gt), metric.binary.jc(pred, gt), metric.binary.hd95(pred, gt),
                       metric.binary.asd(pred, gt)))
    return scores


def official_job(job: dict) -> dict:
    from networks.loading import load_network

    device = torch.device(job["device"])
    adapter = get_dataset(job["dataset"])
    loaded = load_network(job["checkpoint"], adapter.network, adapter.network_kwargs, device)
    network = loaded.network
    cases = job["cases"]
    seconds = []
    for case in cases:
        start = time.perf_counter()
        image, label = adapter.load_case(job["root_path"], case)
        if job["dataset"] == "LA":
            probs = official_sliding_window(network, image, tuple(job["patch_size"]), tuple(job["stride"]), 2, device)
            probs.argmax(0).astype(np.uint8)
        else:
            official_acdc_volume(network, image, label, device, tuple(job["patch_size"]))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return {"seconds": sum(seconds), "case_seconds": seconds, "cases": len(cases),
            "threads": torch.get_num_threads(), "peak_memory_gib": process_memory_gib("VmHWM")}


def worker_main(job_text: str) -> int:
    return serve_job(job_text, official_job)


# -- the command -----------------------------------------------------------------------------------------------
def run_command(args: argparse.Namespace, output_dir: Path) -> dict:
    """The whole test script in a child process: wall seconds from spawn to exit, and the child's peak RSS."""
    command = [sys.executable, SCRIPTS[args.dataset], "--checkpoint", args.checkpoint, "--root_path",
               args.root_path, "--device", args.device, "--output_dir", str(output_dir), "--no_progress",
               "--patch_size", ",".join(map(str, args.patch_size))]
    if args.dataset == "LA":
        command += ["--stride", ",".join(map(str, args.stride))]
    if args.list:
        command += ["--list", args.list]
    command += args.extra
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the maximum over all children
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        out = log.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {child.returncode}):\n{out[-3000:]}")
    return {"seconds": seconds, "peak_memory_gib": usage.ru_maxrss * 1024 / GIB,  # Linux: ru_maxrss in KiB
            "command": command[1:], "output_tail": out[-1500:]}


# -- driver ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="LA", choices=tuple(SCRIPTS))
    p.add_argument("--checkpoint", default="", help="a checkpoint test_*.py accepts (required)")
    p.add_argument("--root_path", default="", help="dataset folder with the restored cases (required)")
    p.add_argument("--list", default="", help="case ids (default: the script's own test list)")
    p.add_argument("--patch_size", type=int_list, default=[], help="both sides: LA window (default 112,112,80), "
                   "ACDC slice size (default 256,256)")
    p.add_argument("--stride", type=int_list, default=[18, 18, 4], help="LA window stride, both sides")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads of the official process (0: torch's "
                   "default, all cores)")
    p.add_argument("--repeats", type=int, default=1, help="processes per side, alternating")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", default="test_program.json", help="JSON file to write")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("extra", nargs="*", help="further flags for the test script, after --")
    return p


def run_test_program_benchmark(args: argparse.Namespace) -> dict:
    if not args.checkpoint or not args.root_path:
        raise ValueError("--checkpoint and --root_path are required (restore cases with python "
                         "../shared/data/restore.py DATA --dataset LA|ACDC)")
    args.patch_size = list(args.patch_size or get_dataset(args.dataset).patch_size)
    list_path = args.list or str(ROOT / "data" / "splits" / args.dataset / "test.list")
    cases = read_list(list_path)
    job = {"kind": "official", "dataset": args.dataset, "checkpoint": str(Path(args.checkpoint).resolve()),
           "root_path": str(Path(args.root_path).resolve()), "cases": cases, "device": args.device,
           "threads": args.threads, "patch_size": args.patch_size, "stride": list(args.stride)}
    report: dict = {"dataset": args.dataset, "device": args.device, "torch": torch.__version__, "cases": len(cases),
                    "load_average_before": list(os.getloadavg()), "settings": {
                        k: v for k, v in vars(args).items() if k not in ("output", "worker")},
                    "command": [], "official": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            official = run_worker(job, module="benchmarks.test_program")
            report["official"].append(official)
            print(f"official loop : {official['seconds']:.2f} s for {len(cases)} case(s), peak "
                  f"{official['peak_memory_gib']:.2f} GiB", flush=True)
            command = run_command(args, Path(folder) / f"run{repeat}")
            report["command"].append(command)
            print(f"{SCRIPTS[args.dataset]:12s}: {command['seconds']:.2f} s, whole command", flush=True)
    official_s = statistics.median(r["seconds"] for r in report["official"])
    command_s = statistics.median(r["seconds"] for r in report["command"])
    report["speedup_command_over_official"] = official_s / command_s
    report["load_average_after"] = list(os.getloadavg())
    print(f"{SCRIPTS[args.dataset]} (whole command) is {official_s / command_s:.2f}x faster than the official loop "
          f"({official_s:.2f} s / {command_s:.2f} s, medians of {args.repeats}); load average before "
          f"{report['load_average_before'][0]:.2f}, after {report['load_average_after'][0]:.2f}")
    write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    try:
        run_test_program_benchmark(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
