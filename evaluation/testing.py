"""Evaluate a checkpoint (ours or an official release) on a list of cases: the body of test_la.py / test_acdc.py."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from dataloaders import DatasetAdapter, get_dataset, read_list
from inference import InferenceSettings, Predictor
from inference.nifti import write_labels_nifti
from inference.prediction_job import PredictOptions
from utils.atomic import make_writable_folder
from utils.cli import DefaultsHelpFormatter, ScriptParser
from utils.errors import UserError
from utils.flags import add_flags, options_from_args
from utils.metrics import EMPTY_POLICIES
from utils.report import format_table, report, write_csv, write_json
from utils.settings import check_settings, nested, same_as, setting
from utils.shared_settings import SharedSettings

from .evaluate import evaluate_cases

OFFICIAL_PROTOCOL = ("official released weights: selection as published (LA: best Dice on the test set; "
                     "ACDC: best on the validation set)")


@dataclass
class TestOptions:
    """test_la.py / test_acdc.py's settings (their flags are generated from these fields)."""

    dataset: str = setting(help="LA | ACDC (set by the script)", flag=False)
    checkpoint: str = same_as(PredictOptions, "checkpoint",
                              help="our best_model.pth / last_model.pth, or an official .pth")
    root_path: str = same_as(SharedSettings, "root_path")
    list_path: str = setting("", "case ids to test (default: data/splits/<dataset>/test.list)", flag="--list",
                             metavar="LIST")
    device: str = same_as(SharedSettings, "device")
    spacing: str = setting("voxel", "distance units: voxel (as the paper), mm, or explicit mm values")
    empty_policy: str = setting("official", "official: an empty prediction scores 0 on every metric; nan: "
                                            "distances NaN", choices=EMPTY_POLICIES)
    output_dir: str = setting("", "default: <checkpoint folder>/test_<list name>")
    csv: str = setting("", "per-case CSV path (default: <output_dir>/metrics.csv)")
    json: str = setting("", "summary JSON path (default: <output_dir>/summary.json)")
    save_predictions: bool = setting(False, "write predicted label maps as NIfTI", switch=True)
    save_png: bool = setting(False, "per case <output_dir>/png/<case>.png: truth and prediction on representative "
                                    "slices (viz.overlay)", switch=True)
    progress: bool = same_as(SharedSettings, "progress", help="progress bar (on a terminal)")
    inference: InferenceSettings = nested(InferenceSettings)


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
    check_settings(options)
    dataset = get_dataset(options.dataset)
    root_path = options.root_path or f"./data/{dataset.name}"
    list_path = Path(options.list_path) if options.list_path else dataset.lists_dir() / "test.list"
    case_ids = read_list(list_path)
    if not case_ids:
        raise UserError(f"--list {list_path} names no cases")

    predictor = Predictor.from_checkpoint(options.checkpoint, options.device, options.inference,
                                          expect_dataset=dataset.name)
    settings, meta = predictor.settings, predictor.checkpoint
    # every listed case present and readable before the first inference, not after minutes of it
    dataset.check_data(root_path, [], case_ids)
    dataset.check_cases(root_path, case_ids)
    spacing, units = resolve_spacing(options.spacing, dataset, 3)  # LA (W, H, D) and ACDC (S, H, W) are both 3-D
    class_names = predictor.class_names()

    output_dir = Path(options.output_dir) if options.output_dir else \
        Path(options.checkpoint).resolve().parent / f"test_{list_path.stem}"
    make_writable_folder(output_dir, "output folder", "--output_dir")

    result = evaluate_cases(predictor, root_path, case_ids, full_metrics=True, spacing=spacing,
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
        write_case_pngs(dataset, root_path, result.cases, output_dir / "png")
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
             f"protocol: {protocol}\nLCC post-processing: {'on' if settings.largest_component else 'off'}; "
             f"empty predictions: {payload['empty_predictions']} ({payload['metrics']['empty_rule']})")
    print(format_table(payload, units, title))
    print(f"per-case metrics: {csv_path}\nsummary: {json_path}")
    if options.save_predictions:
        print(f"predictions (NIfTI, one per case): {output_dir / 'predictions'}/")
    if options.save_png:
        print(f"pictures (--save_png, one per case: truth and prediction): {output_dir / 'png'}/")
    return payload


def build_test_parser(dataset: DatasetAdapter, description: str) -> argparse.ArgumentParser:
    """The parser of test_la.py / test_acdc.py: a flag per setting of TestOptions (InferenceSettings included)."""
    p = ScriptParser(description=description, formatter_class=DefaultsHelpFormatter)
    add_flags(p, TestOptions, context=dataset, values=testing_flag_values(dataset), resolved_example=dataset.name,
              helps={"root_path": dataset.root_help,
                     "list_path": f"case ids to test (default: data/splits/{dataset.name}/test.list)"})
    p.add_argument("--debug", action="store_true", help="full traceback on errors")
    return p


def testing_flag_values(dataset: DatasetAdapter) -> dict:
    """The test scripts' values that depend on their dataset: the default folder, and what a checkpoint without an
    inference record is tested with (shown in -h; those flags default to the checkpoint's record)."""
    return {"root_path": f"./data/{dataset.name}", "patch_size": tuple(dataset.patch_size),
            "stride": tuple(dataset.stride), "largest_component": dataset.test_largest_component}


def testing_options_from_args(args: argparse.Namespace, dataset: DatasetAdapter) -> TestOptions:
    """TestOptions from the parsed flags; the progress bar only on a terminal."""
    options = options_from_args(TestOptions, args, dataset=dataset.name)
    return replace(options, progress=options.progress and sys.stderr.isatty())
