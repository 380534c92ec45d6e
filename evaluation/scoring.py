"""tools.score's job: score a folder of predicted label maps against a folder of references, with the test
scripts' metrics.

Files are NIfTI (`.nii`, `.nii.gz`) or h5 with a `label` dataset, matched by case id: the file name without
its extension, or the parent folder's name for LA's `<ID>/mri_norm2.h5` layout. Folders are searched
recursively, symbolic links to files and folders included. Metrics, the empty-mask rule, the CSV columns and
the JSON report are those of test_la.py / test_acdc.py (utils.metrics, utils.report).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dataloaders.cases import check_label_values
from dataloaders.splits import read_list
from inference.settings import InferenceSettings
from utils.errors import UserError
from utils.metrics import EMPTY_POLICIES, case_metrics
from utils.postprocess import keep_largest_component_per_class
from utils.report import empty_rule, format_table, report, write_csv, write_json
from utils.settings import same_as, setting

from .testing import TestOptions

SUFFIXES = (".nii.gz", ".nii", ".h5")
LA_FILE_NAME = "mri_norm2.h5"  # the LA layout names the case by its folder
SPACING_CHOICES = ("voxel", "mm")


@dataclass
class ScoreOptions:
    """`python -m tools.score`'s settings (its flags are generated from these fields)."""

    predictions: str = setting(help="folder of predicted label maps", flag="predictions")
    references: str = setting(help="folder of reference label maps", flag="references")
    csv: str = same_as(TestOptions, "csv", help="per-case CSV (case,class,class_name,dice,jaccard,hd95,asd,assd,...)")
    json: str = same_as(TestOptions, "json", help="summary JSON")
    labels: list[int] = setting(help="classes to score (default: those present in each reference)", factory=list,
                                nargs="+", parse=int)
    spacing: str = same_as(TestOptions, "spacing", choices=SPACING_CHOICES,
                           help="distance units: voxel (as the paper) or mm from the NIfTI header")
    largest_component: bool = same_as(InferenceSettings, "largest_component", default=False, resolved="",
                                      switch=True, help="keep the largest connected component per class first")
    empty_policy: str = same_as(TestOptions, "empty_policy")
    cases: list[str] = setting(help="score only these case ids (default: every reference)", factory=list, nargs="+",
                               metavar="CASE")
    list_path: str = same_as(TestOptions, "list_path", help="score only the case ids of this split list (one per "
                                                            "line)")


def case_id(path: Path) -> str:
    if path.name == LA_FILE_NAME:
        return path.parent.name
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def label_files(folder: Path) -> list[Path]:
    """Every NIfTI / h5 file under `folder`, following symbolic links (a folder reached twice is read once)."""
    files, seen = [], set()
    for current, subfolders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a link cycle, or two links to one folder
            subfolders.clear()
            continue
        seen.add(real)
        files += [Path(current) / n for n in names if n.endswith(SUFFIXES) and (Path(current) / n).is_file()]
    return sorted(files)


def find_cases(folder: str | Path, what: str) -> dict[str, Path]:
    """{case id: file} of every label file under `folder` (searched recursively, links followed)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in label_files(folder):
        case = case_id(path)
        if case in found:
            raise UserError(f"{what}: case id {case!r} appears twice ({found[case]} and {path}); keep one file per "
                             f"case")
        found[case] = path
    if not found:
        raise FileNotFoundError(f"{what} folder {folder} holds no .nii, .nii.gz or .h5 files")
    return found


def read_label_map(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """(labels uint8, voxel size in mm from the NIfTI header, or None for h5 which stores none)."""
    if path.name.endswith(".h5"):
        try:
            with h5py.File(path, "r") as f:
                if "label" not in f:
                    raise UserError(f"{path} has no 'label' dataset (found {sorted(f.keys())}); store the label map "
                                     f"under 'label'")
                labels = np.asarray(f["label"][()])
        except OSError as exc:
            raise UserError(f"{path} is not a readable h5 file ({exc})") from None
        spacing = None
    else:
        import nibabel as nib

        try:
            image = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types for broken files
            raise UserError(f"{path} is not a readable NIfTI file ({exc})") from None
        labels = np.asarray(image.dataobj)
        spacing = tuple(float(z) for z in image.header.get_zooms()[: labels.ndim])
    return check_label_values(labels, path, "label map", None), spacing


def case_spacing(option: str, pred_path: Path, pred_spacing, ref_path: Path, ref_spacing) -> tuple | None:
    if option == "voxel":
        return None
    if ref_spacing is None:
        raise UserError(f"--spacing mm: {ref_path} is h5, which stores no voxel size; use NIfTI references or "
                         f"--spacing voxel")
    if pred_spacing is not None and not np.allclose(pred_spacing, ref_spacing, rtol=1e-4):
        raise UserError(f"--spacing mm: {pred_path} has voxel size {pred_spacing}, its reference {ref_path} "
                         f"{ref_spacing}; resample the prediction onto the reference grid")
    return ref_spacing


def chosen_cases(options: ScoreOptions) -> list[str]:
    """--cases and --list together, in order, each once (empty: score every reference)."""
    listed = read_list(options.list_path) if options.list_path else []
    if options.list_path and not listed:
        raise UserError(f"--list {options.list_path} names no cases")
    return list(dict.fromkeys([*options.cases, *listed]))


def check_chosen(chosen: list[str], references: dict[str, Path], predictions: dict[str, Path],
                 options: ScoreOptions) -> None:
    """Every chosen case needs a reference and a prediction; all are checked before any is scored."""
    for found, folder, what in ((references, options.references, "reference"),
                                (predictions, options.predictions, "prediction")):
        absent = [c for c in chosen if c not in found]
        if absent:
            raise FileNotFoundError(f"{len(absent)} of the {len(chosen)} case(s) to score have no {what} in {folder}: "
                                    f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}")


def score_folders(options: ScoreOptions) -> dict:
    """Per case and class metrics, their mean, and the files written; prints the table."""
    if options.spacing not in SPACING_CHOICES:
        raise UserError(f"--spacing must be one of {', '.join(SPACING_CHOICES)}, got {options.spacing!r}")
    if options.empty_policy not in EMPTY_POLICIES:
        raise UserError(f"--empty_policy must be one of {', '.join(EMPTY_POLICIES)}, got {options.empty_policy!r}")
    if any(c < 1 for c in options.labels):
        raise UserError(f"--labels takes foreground classes >= 1, got {options.labels}")
    predictions = find_cases(options.predictions, "predictions")
    references = find_cases(options.references, "references")
    chosen = chosen_cases(options)
    if chosen:
        check_chosen(chosen, references, predictions, options)
        references = {case: references[case] for case in chosen}
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise FileNotFoundError(f"{len(missing)} reference case(s) have no prediction in {options.predictions}, "
                                f"e.g. {', '.join(missing[:5])}; predict every case (files are matched by case id), "
                                f"or name the cases to score with --cases / --list")
    extra = sorted(set(predictions) - set(references))

    rows = []
    for case in sorted(references):
        ref, ref_spacing = read_label_map(references[case])
        pred, pred_spacing = read_label_map(predictions[case])
        if pred.shape != ref.shape:
            raise UserError(f"case {case}: prediction {predictions[case]} has shape {pred.shape}, reference "
                             f"{references[case]} {ref.shape}; they must be on the same grid")
        spacing = case_spacing(options.spacing, predictions[case], pred_spacing, references[case], ref_spacing)
        classes = list(options.labels) or [int(c) for c in np.unique(ref) if c != 0]
        if options.largest_component:
            pred = keep_largest_component_per_class(pred, classes)
        for row in case_metrics(pred, ref, classes, spacing, options.empty_policy):
            rows.append({"case": case, **row, "class_name": f"label {row['class']}"})
    if not rows:
        raise UserError("no class to score: every reference is empty; name the classes with --labels")

    class_names = {c: f"label {c}" for c in sorted({r["class"] for r in rows})}
    units = "mm" if options.spacing == "mm" else "voxel"
    with warnings.catch_warnings():  # a class whose distances are all NaN (empty_policy nan) has a NaN mean
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        payload = report(rows, class_names, units=units,
                         spacing="each reference's NIfTI voxel size" if units == "mm" else None,
                         empty_policy=options.empty_policy,
                         predictions=str(Path(options.predictions).resolve()),
                         references=str(Path(options.references).resolve()), n_cases=len(references),
                         cases=sorted(references), ignored_predictions=extra,
                         scored_cases="named by --cases / --list" if chosen else "every reference",
                         labels=list(options.labels) or "non-zero classes present in each reference",
                         largest_component=options.largest_component)
    empty, rule = payload["empty_predictions"], empty_rule(options.empty_policy)
    if options.csv:
        write_csv(Path(options.csv), rows)
    if options.json:
        write_json(Path(options.json), payload)
    title = (f"{len(references)} cases: {options.predictions} vs {options.references}\nLCC post-processing: "
             f"{'on' if options.largest_component else 'off'}; empty predictions: {empty} ({rule})")
    if extra:
        why = "not named by --cases / --list" if chosen else "without a reference"
        title += f"\nignored {len(extra)} prediction(s) {why}, e.g. {', '.join(extra[:3])}"
    print(format_table(payload, units, title))
    if options.csv:
        print(f"per-case metrics: {options.csv}")
    return {**payload, "rows": rows}
