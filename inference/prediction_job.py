"""predict.py's job: label maps for new scans with any checkpoint (NIfTI datasets, LA, ACDC, official weights).

Every input is first checked against what the model was trained on (inference/input_check.py): one that cannot
match is refused before anything is written. Each scan then goes through the preprocessing its model was trained
with, the predictor (whole-volume sliding window, or the slice-wise path of 2-D models), optional flip test-time
augmentation and largest-component clean-up, and is mapped back to the scan's own grid: the label NIfTI has the
input's affine, header and shape.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataloaders.nifti import read_label, read_scan
from utils.atomic import make_writable_folder
from utils.errors import UserError
from utils.metrics import case_metrics
from utils.progress import progress_bar
from utils.report import format_table, report, write_csv, write_json
from utils.settings import nested, same_as, setting
from utils.shared_settings import SharedSettings

from .input_check import InputDescription, ModelExpectation, check_inputs, describe_h5, describe_nifti
from .nifti import write_labels_nifti
from .predictor import Predictor
from .settings import InferenceSettings

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")


@dataclass
class PredictOptions:
    """predict.py's settings (its flags are generated from these fields)."""

    checkpoint: str = setting(help="best_model.pth / last_model.pth, or an official .pth")
    input: str = setting(help="a .nii/.nii.gz/.h5 file or a folder of them")
    output: str = setting(help="folder for the label NIfTI files")
    device: str = same_as(SharedSettings, "device")
    dataset: str = setting("", "for official state dicts only (default: guessed from the weights)",
                           choices=("", "LA", "ACDC"), metavar="{LA,ACDC}")
    labels: str = setting("", "folder of reference <case>.nii.gz: score the predictions in mm")
    skip_input_checks: bool = setting(False, "predict inputs whose intensities or voxel size do not look like the "
                                             "model's training data (inputs of the wrong dimensionality or channel "
                                             "count stay refused)", switch=True)
    progress: bool = same_as(SharedSettings, "progress")
    inference: InferenceSettings = nested(InferenceSettings)


@dataclass
class InputCase:
    case: str
    paths: list[Path]  # one per channel (NIfTI) or the h5 file


def find_inputs(path: str | Path, in_channels: int) -> list[InputCase]:
    """NIfTI files (nnU-Net channel files `<case>_0000.nii.gz` grouped) and h5 files under `path`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist; give a NIfTI / h5 file or a folder of them")
    # hidden files are skipped: the macOS `._<name>` companions some Decathlon archives carry are not scans
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() \
        else [path]
    cases: dict[str, list[Path]] = {}
    for file in files:
        if file.suffix == ".h5":
            case = file.parent.name if file.name == "mri_norm2.h5" else file.stem  # LA layout: <ID>/mri_norm2.h5
            paths = [file]
        elif _NIFTI.search(file.name):
            match = _CHANNEL_FILE.match(file.name)
            if match and in_channels > 1:
                if int(match["channel"]) != 0:
                    continue  # gathered with channel 0
                case = match["case"]
                paths = [file.with_name(f"{case}_{c:04d}{file.name[len(case) + 5:]}") for c in range(in_channels)]
                missing = [p for p in paths if not p.is_file()]
                if missing:
                    raise FileNotFoundError(f"{case}: the model takes {in_channels} channels; {missing[0]} not found")
            else:
                case = match["case"] if match else _NIFTI.sub("", file.name)
                paths = [file]
        else:
            continue
        if case in cases:
            raise UserError(f"two inputs give case id {case!r}: {cases[case][0]} and {paths[0]}")
        cases[case] = paths
    if not cases:
        raise FileNotFoundError(f"--input {path}: no .nii/.nii.gz or .h5 files found")
    return [InputCase(c, p) for c, p in cases.items()]


def read_h5_image(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if "image" not in f:
            raise UserError(f"{path} has no dataset 'image'; found {sorted(f.keys())}")
        return np.asarray(f["image"][()], dtype=np.float32)


def describe_input(item: InputCase) -> InputDescription:
    if item.paths[0].suffix == ".h5":
        return describe_h5(item.case, item.paths[0], read_h5_image(item.paths[0]))
    return describe_nifti(item.case, item.paths)


def run_predict(options: PredictOptions) -> list[Path]:
    """Write `<output>/<case>.nii.gz` for every input case; with `labels`, also metrics.csv / summary.json."""
    predictor = Predictor.from_checkpoint(options.checkpoint, options.device, options.inference,
                                          dataset=options.dataset)
    cases = find_inputs(options.input, predictor.network.in_channels)
    expectation = ModelExpectation.of(predictor.dataset, predictor.network.in_channels)
    for warning in check_inputs([describe_input(item) for item in cases], expectation, options.skip_input_checks,
                                options.checkpoint):
        print(f"WARNING: {warning}", file=sys.stderr)
    output = make_writable_folder(options.output, "output folder", "--output")
    references = Path(options.labels) if options.labels else None
    if references is not None and not references.is_dir():
        raise FileNotFoundError(f"--labels {references} is not a folder of <case>.nii.gz references")

    written, rows = [], []
    for item in progress_bar(cases, enabled=options.progress, desc="predicting"):
        if item.paths[0].suffix == ".h5":
            labels = predictor.predict_h5_array(read_h5_image(item.paths[0]))
            # an h5 array carries no geometry: the dataset's voxel size (LA 0.625 mm) or unit voxels
            zooms = predictor.dataset.spacing_mm or (1.0,) * labels.ndim
            target = write_labels_nifti(output / f"{item.case}.nii.gz", labels, spacing_mm=zooms)
        else:
            scan = read_scan(item.paths)
            labels = predictor.predict_scan(scan)
            zooms = scan.spacing
            target = write_labels_nifti(output / f"{item.case}.nii.gz", labels, affine=scan.affine,
                                        header=scan.header)
        written.append(target)
        if references is not None:
            reference = references / f"{item.case}.nii.gz"
            if not reference.is_file():
                raise FileNotFoundError(f"--labels: no reference {reference} for case {item.case}")
            ref = read_label(reference, labels.shape)
            rows += [{"case": item.case, **r} for r in case_metrics(labels, ref, range(1, predictor.num_classes),
                                                                    spacing=zooms)]
    if references is not None:
        names = predictor.class_names()
        rows = [{**r, "class_name": names[r["class"]]} for r in rows]
        payload = report(rows, names, units="mm", spacing="each scan's voxel size (NIfTI header)",
                         empty_policy="official", checkpoint=str(Path(options.checkpoint).resolve()),
                         references=str(references.resolve()), n_cases=len(cases), cases=[c.case for c in cases],
                         tta=predictor.settings.tta,
                         largest_component=predictor.settings.largest_component)
        write_csv(output / "metrics.csv", rows)
        write_json(output / "summary.json", payload)
        print(format_table(payload, "mm", f"{len(cases)} case(s) scored against {references}"))
    print(f"{len(written)} label map(s) written to {output}", file=sys.stderr)
    return written
