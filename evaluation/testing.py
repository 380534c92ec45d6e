"""Evaluate a checkpoint (ours or an official release) on a list of cases: the body of test_la.py / test_acdc.py."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dataloaders import DatasetAdapter, get_dataset, read_list
from inference import InferenceSettings, Predictor
from inference.nifti import write_labels_nifti
from inference.settings import add_fold_bn_argument
from utils.atomic import make_writable_folder
from utils.cli import DefaultsHelpFormatter, ScriptParser, default_device, int_list
from utils.errors import UserError
from utils.metrics import EMPTY_POLICIES
from utils.precision import PRECISION_MODES
from utils.report import format_table, report, write_csv, write_json

from .evaluate import evaluate_cases

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
    # speed options (docs/speed.md): off/False = the official fp32 path
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    fold_bn: bool = InferenceSettings.fold_bn  # BatchNorm folded into the convolutions (same function)


def resolve_spacing(option: str, dataset: DatasetAdapter, ndim: int) -> tuple[tuple[float, ...] | None, str]:
    """(spacing, unit name) for the metrics; the public h5 files carry no spacing, so 'mm' needs a known grid."""
    if option == "voxel":
        return None, "voxel"
    if option == "mm":
        if dataset.spacing_mm is None:
            raise UserError(f"--spacing mm: the {dataset.name} h5 volumes carry no voxel size; "
                            f"pass it explicitly, e.g. --spacing 10,1.5,1.5")
        return tuple(dataset.spacing_mm), "mm"
    try:
        values = tuple(float(v) for v in option.split(","))
    except ValueError:
        raise UserError(f"--spacing must be voxel, mm or {ndim} numbers in mm, got {option!r}") from None
    if len(values) != ndim or any(v <= 0 for v in values):
        raise UserError(f"--spacing needs {ndim} positive values in mm (one per array axis), got {option!r}")
    return values, "mm"


def write_case_pngs(dataset: DatasetAdapter, root: str, cases, png_dir: Path) -> None:
    """--save_png: <png_dir>/<case>.png, truth and prediction overlaid (three orthogonal views for LA)."""
    from viz.io import save_png
    from viz.overlay import DATASET_LAYOUTS, case_overlay_figure, mean_foreground_dice

    for case in cases:
        image, label = dataset.load_case(root, case.case)
        title = f"{case.case}: mean foreground Dice {100 * mean_foreground_dice(case.prediction, label):.1f}%"
        figure = case_overlay_figure(image, label, case.prediction, layout=DATASET_LAYOUTS[dataset.name],
                                     title=title)
        save_png(figure, png_dir / f"{case.case}.png")


def run_test(options: TestOptions) -> dict:
    if options.empty_policy not in EMPTY_POLICIES:
        raise UserError(f"--empty_policy must be one of {', '.join(EMPTY_POLICIES)}, got {options.empty_policy!r}")
    if options.amp not in PRECISION_MODES:
        raise UserError(f"--amp must be one of {', '.join(PRECISION_MODES)}, got {options.amp!r}")
    dataset = get_dataset(options.dataset)
    list_path = Path(options.list_path) if options.list_path else dataset.lists_dir() / "test.list"
    case_ids = read_list(list_path)
    if not case_ids:
        raise UserError(f"--list {list_path} names no cases")

    predictor = Predictor.from_checkpoint(
        options.checkpoint, device=options.device, expect_dataset=dataset.name, batch_size=options.batch_size,
        nms=options.nms, amp=options.amp, patch_size=tuple(options.patch_size), stride=tuple(options.stride),
        channels_last=options.channels_last, compile=options.compile, fold_bn=options.fold_bn)
    settings, meta = predictor.settings, predictor.checkpoint
    # every listed case present and readable before the first inference, not after minutes of it
    dataset.check_data(options.root_path, [], case_ids)
    dataset.check_cases(options.root_path, case_ids)
    spacing, units = resolve_spacing(options.spacing, dataset, 3)  # LA (W, H, D) and ACDC (S, H, W) are both 3-D
    class_names = predictor.class_names()

    output_dir = Path(options.output_dir) if options.output_dir else \
        Path(options.checkpoint).resolve().parent / f"test_{list_path.stem}"
    make_writable_folder(output_dir, "output folder", "--output_dir")

    result = evaluate_cases(predictor, options.root_path, case_ids, full_metrics=True, spacing=spacing,
                            empty_policy=options.empty_policy,
                            keep_predictions=options.save_predictions or options.save_png, progress=options.progress,
                            description=f"testing {dataset.name}")
    rows = [{**r, "class_name": class_names[r["class"]]} for r in result.rows()]

    protocol = OFFICIAL_PROTOCOL if predictor.official else meta.get("selection", {}).get("protocol", "unknown")
    csv_path = Path(options.csv) if options.csv else output_dir / "metrics.csv"
    json_path = Path(options.json) if options.json else output_dir / "summary.json"
    if options.save_predictions:
        prediction_dir = output_dir / "predictions"
        prediction_dir.mkdir(parents=True, exist_ok=True)
        for case in result.cases:  # LA: the 0.625 mm grid; ACDC: unit voxels (the h5 files carry no spacing)
            write_labels_nifti(prediction_dir / f"{case.case}.nii.gz", case.prediction,
                               spacing_mm=dataset.spacing_mm)
    if options.save_png:
        write_case_pngs(dataset, options.root_path, result.cases, output_dir / "png")
    payload = report(
        rows, class_names, units=units, spacing=spacing, empty_policy=options.empty_policy,
        dataset=dataset.name,
        checkpoint=str(Path(options.checkpoint).resolve()),
        checkpoint_kind="official" if predictor.official else "ssnet-toolkit",
        method=meta.get("method"),
        trained_iterations=meta.get("iteration"),
        protocol=protocol,
        list=str(list_path.resolve()),
        n_cases=len(case_ids),
        cases=case_ids,
        inference=settings.to_dict(),
        csv=str(csv_path.resolve()),
    )
    write_csv(csv_path, rows)
    write_json(json_path, payload)

    title = (f"{dataset.name}: {len(case_ids)} cases from {list_path.name}, checkpoint {options.checkpoint}\n"
             f"protocol: {protocol}\nLCC post-processing: {'on' if settings.nms else 'off'}; "
             f"empty predictions: {payload['empty_predictions']} ({payload['metrics']['empty_rule']})")
    print(format_table(payload, units, title))
    print(f"per-case metrics: {csv_path}\nsummary: {json_path}")
    if options.save_predictions:
        print(f"predictions (NIfTI, one per case): {output_dir / 'predictions'}/")
    if options.save_png:
        print(f"pictures (--save_png, one per case: truth and prediction): {output_dir / 'png'}/")
    return payload


def build_test_parser(dataset: DatasetAdapter, description: str) -> argparse.ArgumentParser:
    p = ScriptParser(description=description, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="our best_model.pth / last_model.pth, or an official .pth")
    p.add_argument("--root_path", default=f"./data/{dataset.name}", help=dataset.root_help)
    p.add_argument("--list", default="", help=f"case ids to test (default: data/{dataset.name}/test.list)")
    p.add_argument("--nms", type=int, choices=(0, 1), default=int(dataset.test_nms),
                   help="keep the largest connected component per class")
    p.add_argument("--device", default=default_device())
    p.add_argument("--batch_size", type=int, default=4, help="patches (LA) / slices (ACDC) per forward")
    p.add_argument("--patch_size", type=int_list, default=[], help=f"default: from the checkpoint, else "
                   f"{','.join(map(str, dataset.patch_size))}")
    if dataset.stride:
        p.add_argument("--stride", type=int_list, default=[],
                       help=f"sliding-window stride (default: from the checkpoint, else "
                            f"{','.join(map(str, dataset.stride))})")
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
    add_inference_speed_arguments(p)
    return p


def add_inference_speed_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speed (opt-in; the defaults are the paper's fp32 math)")
    g.add_argument("--amp", default="off", choices=PRECISION_MODES,
                   help="mixed precision: bf16 (recommended on GPUs that have it), fp16, off")
    g.add_argument("--channels_last", type=int, default=0, choices=(0, 1),
                   help="channels-last memory format for the convolutions (helps with --amp on GPUs)")
    g.add_argument("--compile", type=int, default=0, choices=(0, 1),
                   help="torch.compile the network (minutes of compilation first; pays off on long runs)")
    add_fold_bn_argument(g)


def options_from_args(args: argparse.Namespace, dataset: DatasetAdapter) -> TestOptions:
    return TestOptions(
        dataset=dataset.name, checkpoint=args.checkpoint, root_path=args.root_path, list_path=args.list,
        nms=bool(args.nms), device=args.device, batch_size=args.batch_size, patch_size=list(args.patch_size),
        stride=list(getattr(args, "stride", []) or []), spacing=args.spacing, empty_policy=args.empty_policy,
        output_dir=args.output_dir, csv=args.csv, json=args.json, save_predictions=args.save_predictions,
        save_png=args.save_png,
        progress=not args.no_progress and sys.stderr.isatty(),
        amp=args.amp, channels_last=bool(args.channels_last), compile=bool(args.compile), fold_bn=bool(args.fold_bn),
    )
