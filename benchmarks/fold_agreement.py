"""Label maps and metrics of the predictor's default path (BatchNorm folded, --fold_bn 1) against the unfolded one
(--fold_bn 0, the path before folding) on real LA cases: voxels that differ and the largest metric difference.

    python -m benchmarks.fold_agreement --root_path .test_cache/la_limit4/LA            # the restored test cases
    python -m benchmarks.fold_agreement --checkpoint model/.../best_model.pth --root_path /data/LA

Without --checkpoint the network is a full-width LA V-Net with random weights whose BatchNorm statistics are
measured on real training crops (so the fold has real statistics to absorb). Its foreground probabilities sit
near 0.5, the worst case for label flips under changed rounding; a trained network's are mostly far from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataloaders import get_dataset, read_list
from evaluation import evaluate_cases
from inference import InferenceSettings, Predictor
from networks import build_network
from utils.atomic import write_text_atomic
from utils.cli import ScriptParser, int_list

METRICS = ("dice", "jaccard", "hd95", "asd")


@torch.no_grad()
def calibrated_vnet(root: Path, case_ids: list[str], patch: tuple[int, ...], seed: int) -> nn.Module:
    """A random LA V-Net whose BatchNorm running statistics are the cumulative mean over one centre crop of each
    training case (train-mode forwards, momentum None), in eval mode."""
    torch.manual_seed(seed)
    dataset = get_dataset("LA")
    network = build_network(dataset.network, **dataset.network_kwargs)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    network.train()
    for case in case_ids:
        image, _ = dataset.load_case(root, case)
        starts = [max((size - p) // 2, 0) for size, p in zip(image.shape, patch, strict=True)]
        crop = image[tuple(slice(s, s + p) for s, p in zip(starts, patch, strict=True))]
        network(torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None])
    return network.eval()


def difference(a: float, b: float) -> float:
    """|a - b|, 0 where both are NaN (an undefined distance on both sides), inf where only one is."""
    if np.isnan(a) or np.isnan(b):
        return 0.0 if np.isnan(a) and np.isnan(b) else float("inf")
    return abs(a - b)


def agreement(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = get_dataset("LA")
    root = Path(args.root_path)
    cases = read_list(Path(args.list) if args.list else root / "test.list")
    stride = tuple(args.stride or dataset.stride)
    if args.checkpoint:
        network = Predictor.from_checkpoint(args.checkpoint, settings=InferenceSettings(fold_bn=False),
                                            expect_dataset="LA").network
    else:
        network = calibrated_vnet(root, read_list(root / "train.list"), dataset.patch_size, args.seed)
    results, seconds = {}, {}
    for fold_bn in (False, True):
        settings = InferenceSettings(tuple(dataset.patch_size), stride, batch_size=args.batch_size,
                                     largest_component=dataset.test_largest_component, fold_bn=fold_bn)
        start = time.perf_counter()
        results[fold_bn] = evaluate_cases(Predictor(network, dataset, settings), root, cases, keep_predictions=True)
        seconds[fold_bn] = time.perf_counter() - start
    per_case = []
    for unfolded, folded in zip(results[False].cases, results[True].cases, strict=True):
        differ = int((unfolded.prediction != folded.prediction).sum())
        metric_difference = max(difference(a[m], b[m]) for a, b in zip(unfolded.rows, folded.rows, strict=True)
                                for m in METRICS)
        per_case.append({"case": unfolded.case, "voxels": int(unfolded.prediction.size), "voxels_differing": differ,
                         "foreground_voxels": int((unfolded.prediction > 0).sum()),
                         "max_metric_difference": float(metric_difference),
                         "unfolded": unfolded.rows, "folded": folded.rows})
        print(f"{unfolded.case}: {differ} of {unfolded.prediction.size} voxels differ "
              f"({per_case[-1]['foreground_voxels']} foreground), largest metric difference {metric_difference:.2e}",
              flush=True)
    report = {"network": args.checkpoint or "random LA V-Net, BatchNorm statistics from the training crops",
              "stride": list(stride), "batch_size": args.batch_size,
              "largest_component": dataset.test_largest_component,
              "seconds": {"unfolded": seconds[False], "folded": seconds[True]},
              "voxels_differing": sum(c["voxels_differing"] for c in per_case),
              "max_metric_difference": max(c["max_metric_difference"] for c in per_case), "cases": per_case}
    print(f"all {len(cases)} cases: {report['voxels_differing']} voxels differ; largest metric difference "
          f"{report['max_metric_difference']:.2e} (Dice/Jaccard as fractions, HD95/ASD in voxels)")
    if args.output:
        write_text_atomic(Path(args.output), json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root_path", default=".test_cache/la_limit4/LA", help="LA folder (train.list, test.list)")
    p.add_argument("--list", default="", help="cases to predict (default: <root_path>/test.list)")
    p.add_argument("--checkpoint", default="", help="an LA checkpoint (default: a calibrated random V-Net)")
    p.add_argument("--stride", type=int_list, default=[], help="sliding-window stride (default: LA's 18,18,4)")
    p.add_argument("--batch_size", type=int, default=4, help="windows per forward")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="", help="JSON file to write")
    agreement(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
