"""Evaluate a checkpoint (ours or an official release) on a list of cases: the body of test_la.py / test_acdc.py."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataloaders import read_list
from engine.config import DefaultsHelpFormatter, add_speed_arguments, default_device, int_list
from engine.evaluate import evaluate_cases
from engine.precision import PRECISION_MODES
from engine.presets import Preset
from engine.report import format_table, summarize_rows, write_csv, write_json
from engine.speed import prepare_network
from engine.tasks import InferenceSettings, get_task
from engine.trainer import resolve_device
from utils.atomic import make_writable_folder
from utils.checkpoint import load_network
from utils.metrics import EMPTY_POLICIES

OFFICIAL_PROTOCOL = ("official released weights: selection as published (LA: best Dice on the test set; "
                     "ACDC: best on the validation set)")


@dataclass
class TestOptions:
    dataset: str
    checkpoint: str
    root_path: str
    list_path: str = ""
    nms: bool | None = None  # None: the dataset default (LA on, ACDC off)
    device: str = "cpu"
    batch_size: int = 4
    patch_size: list[int] = field(default_factory=list)  # empty: from the checkpoint, else the preset
    stride: list[int] = field(default_factory=list)
    spacing: str = "voxel"  # voxel | mm | comma-separated mm values
    empty_policy: str = "official"
    output_dir: str = ""
    csv: str = ""
    json: str = ""
    save_predictions: bool = False
    save_png: bool = False  # per case: image with truth and prediction on representative slices (viz.overlay)
    progress: bool = True
    # speed options (README "Speed"): off/False = the official fp32 path
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False


def resolve_spacing(option: str, task, ndim: int) -> tuple[tuple[float, ...] | None, str]:
    """(spacing, unit name) for the metrics; the public h5 files carry no spacing, so 'mm' needs a known grid."""
    if option == "voxel":
        return None, "voxel"
    if option == "mm":
        if task.spacing_mm is None:
            raise ValueError(f"--spacing mm: the {task.preset.dataset} h5 volumes carry no voxel size; "
                             f"pass it explicitly, e.g. --spacing 10,1.5,1.5")
        return tuple(task.spacing_mm), "mm"
    try:
        values = tuple(float(v) for v in option.split(","))
    except ValueError:
        raise ValueError(f"--spacing must be voxel, mm or {ndim} numbers in mm, got {option!r}") from None
    if len(values) != ndim or any(v <= 0 for v in values):
        raise ValueError(f"--spacing needs {ndim} positive values in mm (one per array axis), got {option!r}")
    return values, "mm"


def write_nifti(path: Path, labels: np.ndarray, spacing: tuple[float, ...] | None) -> None:
    import nibabel as nib

    affine = np.diag([*(spacing or (1.0,) * labels.ndim), 1.0])
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), str(tmp))
    os.replace(tmp, path)


def write_case_pngs(task, root: str, cases, png_dir: Path) -> None:
    """--save_png: <png_dir>/<case>.png, truth and prediction overlaid (three orthogonal views for LA)."""
    from viz.io import save_png
    from viz.overlay import DATASET_LAYOUTS, case_overlay_figure, mean_foreground_dice

    for case in cases:
        image, label = task.load_case(root, case.case)
        title = f"{case.case}: mean foreground Dice {100 * mean_foreground_dice(case.prediction, label):.1f}%"
        figure = case_overlay_figure(image, label, case.prediction, layout=DATASET_LAYOUTS[task.preset.dataset],
                                     title=title)
        save_png(figure, png_dir / f"{case.case}.png")


def run_test(options: TestOptions) -> dict:
    task = get_task(options.dataset)
    preset: Preset = task.preset
    if options.empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"--empty_policy must be one of {', '.join(EMPTY_POLICIES)}, got {options.empty_policy!r}")
    if options.amp not in PRECISION_MODES:
        raise ValueError(f"--amp must be one of {', '.join(PRECISION_MODES)}, got {options.amp!r}")
    device = resolve_device(options.device)
    list_path = Path(options.list_path) if options.list_path else task.lists_dir() / "test.list"
    case_ids = read_list(list_path)
    if not case_ids:
        raise ValueError(f"--list {list_path} names no cases")

    loaded = load_network(options.checkpoint, preset.network, preset.network_kwargs, device)
    network, meta = loaded.network, loaded.metadata
    prepare_network(network, channels_last=options.channels_last, compile=options.compile)
    if not loaded.official and meta.get("dataset") not in (None, preset.dataset):
        raise ValueError(f"{options.checkpoint} was trained on {meta['dataset']}, not {preset.dataset}; "
                         f"use test_{meta['dataset'].lower()}.py")
    if network.spatial_dims != len(preset.patch_size):
        raise ValueError(f"{options.checkpoint} holds a {network.spatial_dims}-D network; "
                         f"{preset.dataset} needs {len(preset.patch_size)}-D")
    if network.num_classes != preset.num_classes:
        raise ValueError(f"{options.checkpoint} predicts {network.num_classes} classes; {preset.dataset} has "
                         f"{preset.num_classes} (background + {', '.join(preset.class_names)})")
    stored = meta.get("inference", {})
    settings = InferenceSettings(
        patch_size=tuple(options.patch_size or stored.get("patch_size") or preset.patch_size),
        stride=tuple(options.stride or stored.get("stride") or preset.stride),
        batch_size=options.batch_size,
        nms=preset.nms if options.nms is None else options.nms,
        amp=options.amp,
    )
    spacing, units = resolve_spacing(options.spacing, task, 3)  # LA (W, H, D) and ACDC (S, H, W) are both 3-D
    num_classes = network.num_classes
    class_names = {c: (preset.class_names[c - 1] if c - 1 < len(preset.class_names) else f"class {c}")
                   for c in range(1, num_classes)}

    output_dir = Path(options.output_dir) if options.output_dir else \
        Path(options.checkpoint).resolve().parent / f"test_{list_path.stem}"
    make_writable_folder(output_dir, "output folder", "--output_dir")

    result = evaluate_cases(network, task, options.root_path, case_ids, settings, num_classes, full_metrics=True,
                            spacing=spacing, empty_policy=options.empty_policy,
                            keep_predictions=options.save_predictions or options.save_png, progress=options.progress,
                            description=f"testing {preset.dataset}")
    rows = [{**r, "class_name": class_names[r["class"]]} for r in result.rows()]
    summary = summarize_rows(rows, class_names)
    empty = sum(bool(r["empty_pred"]) for r in rows)

    protocol = OFFICIAL_PROTOCOL if loaded.official else meta.get("selection", {}).get("protocol", "unknown")
    csv_path = Path(options.csv) if options.csv else output_dir / "metrics.csv"
    json_path = Path(options.json) if options.json else output_dir / "summary.json"
    if options.save_predictions:
        prediction_dir = output_dir / "predictions"
        prediction_dir.mkdir(parents=True, exist_ok=True)
        for case in result.cases:  # LA: the 0.625 mm grid; ACDC: identity (the h5 files carry no spacing)
            write_nifti(prediction_dir / f"{case.case}.nii.gz", case.prediction, task.spacing_mm)
    if options.save_png:
        write_case_pngs(task, options.root_path, result.cases, output_dir / "png")
    payload = {
        "dataset": preset.dataset,
        "checkpoint": str(Path(options.checkpoint).resolve()),
        "checkpoint_kind": "official" if loaded.official else "ssnet-toolkit",
        "method": meta.get("method"),
        "trained_iterations": meta.get("iteration"),
        "protocol": protocol,
        "list": str(list_path.resolve()),
        "n_cases": len(case_ids),
        "cases": case_ids,
        "inference": settings.to_dict(),
        "metrics": {
            "units": units,
            "spacing": list(spacing) if spacing else None,
            "dice_jaccard": "fractions in the CSV and here; percent in the printed table",
            "asd": "directed mean surface distance prediction -> reference (medpy asd); assd = symmetric",
            "hd95": "95th percentile of the pooled surface distances both ways (medpy hd95)",
            "empty_policy": options.empty_policy,
            "empty_rule": ("empty prediction scores dice=jaccard=hd95=asd=0 (official rule)"
                           if options.empty_policy == "official" else "empty prediction: dice 0, distances NaN"),
        },
        "empty_predictions": empty,
        "per_class": summary["per_class"],
        "mean": summary["mean"],
        "csv": str(csv_path.resolve()),
    }
    write_csv(csv_path, rows)
    write_json(json_path, payload)

    title = (f"{preset.dataset}: {len(case_ids)} cases from {list_path.name}, checkpoint {options.checkpoint}\n"
             f"protocol: {protocol}\nLCC post-processing: {'on' if settings.nms else 'off'}; "
             f"empty predictions: {empty} ({payload['metrics']['empty_rule']})")
    print(format_table(summary, units, title))
    print(f"per-case metrics: {csv_path}\nsummary: {json_path}")
    return payload


def build_test_parser(preset: Preset, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our best_model.pth / last_model.pth, or an official .pth")
    root_help = {"LA": "folder holding '2018LA_Seg_Training Set/'",
                 "ACDC": "folder holding 'data/' with the ACDC h5 volumes"}[preset.dataset]
    p.add_argument("--root_path", default=f"./data/{preset.dataset}", help=root_help)
    p.add_argument("--list", default="", help=f"case ids to test (default: data/{preset.dataset}/test.list)")
    p.add_argument("--nms", type=int, choices=(0, 1), default=int(preset.nms),
                   help="keep the largest connected component per class")
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch_size", type=int, default=4, help="patches (LA) / slices (ACDC) per forward")
    p.add_argument("--patch_size", type=int_list, default=[], help=f"default: from the checkpoint, else "
                   f"{','.join(map(str, preset.patch_size))}")
    if preset.stride:
        p.add_argument("--stride", type=int_list, default=[],
                       help=f"sliding-window stride (default {','.join(map(str, preset.stride))})")
    p.add_argument("--spacing", default="voxel", help="distance units: voxel (as the paper), mm, or explicit mm values")
    p.add_argument("--empty_policy", default="official", choices=EMPTY_POLICIES,
                   help="official: an empty prediction scores 0 on every metric; nan: distances NaN")
    p.add_argument("--output_dir", default="", help="default: <checkpoint folder>/test_<list name>")
    p.add_argument("--csv", default="", help="per-case CSV path (default: <output_dir>/metrics.csv)")
    p.add_argument("--json", default="", help="summary JSON path (default: <output_dir>/summary.json)")
    p.add_argument("--save_predictions", action="store_true", help="write predicted label maps as NIfTI")
    p.add_argument("--save_png", action="store_true",
                   help="per case <output_dir>/png/<case>.png: truth and prediction on representative slices")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    add_speed_arguments(p, train=False, has_stride=bool(preset.stride))
    return p


def options_from_args(args: argparse.Namespace, preset: Preset) -> TestOptions:
    return TestOptions(
        dataset=preset.dataset, checkpoint=args.checkpoint, root_path=args.root_path, list_path=args.list,
        nms=bool(args.nms), device=args.device, batch_size=args.batch_size, patch_size=list(args.patch_size),
        stride=list(getattr(args, "stride", []) or []), spacing=args.spacing, empty_policy=args.empty_policy,
        output_dir=args.output_dir, csv=args.csv, json=args.json, save_predictions=args.save_predictions,
        save_png=args.save_png,
        progress=not args.no_progress and sys.stderr.isatty(),
        amp=args.amp, channels_last=bool(args.channels_last), compile=bool(args.compile),
    )
