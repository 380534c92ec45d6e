"""Predict label maps for new scans with any checkpoint (NIfTI datasets, LA, ACDC, official weights).

Each scan goes through the preprocessing its model was trained with, a whole-volume sliding window (or the
slice-wise path of 2-D models), optional flip test-time augmentation and largest-component clean-up, and is
mapped back to the scan's own grid: the label NIfTI has the input's affine, header and shape.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dataloaders.nifti import Preprocessing, Scan, preprocess, read_label, read_scan, restore_labels
from engine.nifti_task import NiftiTask
from engine.presets import PRESETS
from engine.report import format_table, summarize_rows, write_csv, write_json
from engine.tasks import InferenceSettings, Task, get_task
from engine.trainer import resolve_device
from utils.atomic import make_writable_folder
from utils.checkpoint import CHECKPOINT_FORMAT, load_network, read_checkpoint
from utils.metrics import case_metrics

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})\.nii(\.gz)?$")
_NIFTI = re.compile(r"\.nii(\.gz)?$")
# How a new NIfTI scan is brought to the benchmarks' stored form: LA h5 files hold z-scored scans on their
# 0.625 mm grid; ACDC h5 volumes hold min-max scaled slices, stored (S, H, W) = the NIfTI axes reversed.
BENCHMARK_PREPROCESSING = {
    "LA": Preprocessing(normalization="zscore", target_spacing=(0.625, 0.625, 0.625)),
    "ACDC": Preprocessing(normalization="minmax"),
}


@dataclass
class PredictOptions:
    checkpoint: str
    input: str
    output: str
    device: str = "cpu"
    largest_component: bool | None = None  # None: as the model was evaluated (LA on, others off)
    tta: bool = False
    batch_size: int = 4
    dataset: str = ""  # LA / ACDC for official state dicts (default: guessed from the weights)
    labels: str = ""  # folder of reference label files <case>.nii.gz: score the predictions (mm)
    progress: bool = True


@dataclass
class InputCase:
    case: str
    paths: list[Path]  # one per channel (NIfTI) or the h5 file


class FlipTTA(nn.Module):
    """Averages softmax over every combination of flips of the spatial axes; returns log-probabilities as
    logits, so the sliding window's softmax (and the 2-D argmax) see the averaged probabilities."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor):
        axes = list(range(2, x.ndim))
        flips = [list(c) for r in range(len(axes) + 1) for c in combinations(axes, r)]
        probs = sum(torch.softmax(self.network(x.flip(f) if f else x)[0], 1).flip(f) if f
                    else torch.softmax(self.network(x)[0], 1) for f in flips) / len(flips)
        return torch.log(probs.clamp_min(1e-12)), None


def find_inputs(path: str | Path, in_channels: int) -> list[InputCase]:
    """NIfTI files (nnU-Net channel files `<case>_0000.nii.gz` grouped) and h5 files under `path`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--input {path} does not exist; give a NIfTI / h5 file or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
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
            raise ValueError(f"two inputs give case id {case!r}: {cases[case][0]} and {paths[0]}")
        cases[case] = paths
    if not cases:
        raise FileNotFoundError(f"--input {path}: no .nii/.nii.gz or .h5 files found")
    return [InputCase(c, p) for c, p in cases.items()]


def read_h5_image(path: Path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        if "image" not in f:
            raise ValueError(f"{path} has no dataset 'image'; found {sorted(f.keys())}")
        return np.asarray(f["image"][()], dtype=np.float32)


def write_labels_nifti(path: Path, labels: np.ndarray, affine: np.ndarray, header=None) -> None:
    """uint8 label NIfTI with the scan's affine and header (intensity scaling dropped), written atomically."""
    import nibabel as nib

    image = nib.Nifti1Image(labels.astype(np.uint8), affine, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    if header is not None:
        image.set_qform(*header.get_qform(coded=True))
        image.set_sform(*header.get_sform(coded=True))
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, str(tmp))
    os.replace(tmp, path)


@dataclass
class Predictor:
    """A loaded model and how it expects its input: the task of its dataset and the preprocessing of scans."""

    network: nn.Module
    task: Task
    settings: InferenceSettings
    preprocessing: Preprocessing
    num_classes: int
    class_names: list[str]
    kind: str  # NIfTI-3d | NIfTI-2d | LA | ACDC
    in_channels: int = 1

    def predict_scan(self, scan: Scan) -> np.ndarray:
        """Labels on the scan's own grid (the input's shape)."""
        image, _, record = preprocess(scan.image, scan.spacing, self.preprocessing)
        return restore_labels(self.predict_prepared(image), record)

    def predict_prepared(self, image: np.ndarray) -> np.ndarray:
        """(C, X, Y, Z) in the model's intensity space -> labels (X, Y, Z)."""
        if self.kind == "LA":
            return self.task.predict(self.network, image[0], self.settings, self.num_classes)
        if self.kind == "ACDC":
            return self.task.predict(self.network, image[0].transpose(2, 1, 0), self.settings,
                                     self.num_classes).transpose(2, 1, 0)
        return self.task.predict(self.network, image, self.settings, self.num_classes)

    def predict_h5(self, image: np.ndarray) -> np.ndarray:
        """A stored benchmark array (LA (W, H, D) / ACDC (S, H, W)): already normalised, predicted as stored."""
        if self.kind in ("LA", "ACDC"):
            return self.task.predict(self.network, image, self.settings, self.num_classes)
        # a NIfTI model on an h5 array: no spacing is known, so only the intensity normalisation applies
        prepared, _, _ = preprocess(image[None], (1.0,) * 3, replace_spacing(self.preprocessing))
        return self.predict_prepared(prepared)


def replace_spacing(settings: Preprocessing) -> Preprocessing:
    return Preprocessing(settings.normalization, None, settings.crop_nonzero, settings.image_order,
                         settings.slice_axis)


def guess_dataset(state: dict) -> str:
    return "LA" if any("block_one" in k for k in state) else "ACDC"


def load_predictor(options: PredictOptions) -> Predictor:
    device = resolve_device(options.device)
    raw = read_checkpoint(options.checkpoint)
    ours = raw.get("format") == CHECKPOINT_FORMAT
    dataset = raw.get("dataset") if ours else (options.dataset or guess_dataset(raw.get("state_dict", raw)))
    if dataset not in PRESETS:
        raise ValueError(f"{options.checkpoint}: unknown dataset {dataset!r}; pass --dataset LA or ACDC")
    preset = PRESETS[dataset]
    loaded = load_network(options.checkpoint, preset.network, preset.network_kwargs, device)
    meta, network = loaded.metadata, loaded.network
    stored = meta.get("inference", {})
    if dataset.startswith("NIfTI"):
        nifti = meta["config"]["nifti"]
        preprocessing = Preprocessing.from_dict(nifti["preprocessing"])
        task: Task = NiftiTask(nifti["mode"], preprocessing)
        class_names = list(nifti.get("class_names", []))
    else:
        preprocessing, task, class_names = BENCHMARK_PREPROCESSING[dataset], get_task(dataset), list(preset.class_names)
    nms = stored.get("nms", preset.nms) if options.largest_component is None else options.largest_component
    settings = InferenceSettings(
        patch_size=tuple(stored.get("patch_size") or preset.patch_size),
        stride=tuple(stored.get("stride") or preset.stride),
        batch_size=options.batch_size,
        nms=bool(nms),
    )
    num_classes, in_channels = network.num_classes, network.in_channels
    class_names += [f"class {c}" for c in range(len(class_names) + 1, num_classes)]
    if options.tta:
        network = FlipTTA(network).eval()
    return Predictor(network, task, settings, preprocessing, num_classes, class_names[: num_classes - 1], dataset,
                     in_channels)


def run_predict(options: PredictOptions) -> list[Path]:
    """Write `<output>/<case>.nii.gz` for every input case; with `labels`, also metrics.csv / summary.json."""
    predictor = load_predictor(options)
    cases = find_inputs(options.input, predictor.in_channels)
    output = make_writable_folder(options.output, "output folder", "--output")
    references = Path(options.labels) if options.labels else None
    if references is not None and not references.is_dir():
        raise FileNotFoundError(f"--labels {references} is not a folder of <case>.nii.gz references")

    written, rows = [], []
    for item in tqdm(cases, desc="predicting", disable=not options.progress, dynamic_ncols=True):
        if item.paths[0].suffix == ".h5":
            image = read_h5_image(item.paths[0])
            labels = predictor.predict_h5(image)
            # h5 files carry no geometry: LA's 0.625 mm grid, else unit voxels (as test_la / test_acdc write)
            zooms = (0.625,) * 3 if predictor.kind == "LA" else (1.0,) * labels.ndim
            affine, header = np.diag([*zooms, 1.0]), None
        else:
            scan = read_scan(item.paths)
            labels = predictor.predict_scan(scan)
            affine, header, zooms = scan.affine, scan.header, scan.spacing
        target = output / f"{item.case}.nii.gz"
        write_labels_nifti(target, labels, affine, header)
        written.append(target)
        if references is not None:
            reference = references / f"{item.case}.nii.gz"
            if not reference.is_file():
                raise FileNotFoundError(f"--labels: no reference {reference} for case {item.case}")
            ref = read_label(reference, labels.shape)
            rows += [{"case": item.case, **r} for r in case_metrics(labels, ref, range(1, predictor.num_classes),
                                                                    spacing=zooms)]
    if references is not None:
        names = dict(enumerate(predictor.class_names, start=1))
        rows = [{**r, "class_name": names[r["class"]]} for r in rows]
        summary = summarize_rows(rows, names)
        write_csv(output / "metrics.csv", rows)
        write_json(output / "summary.json", {"checkpoint": str(Path(options.checkpoint).resolve()),
                                             "references": str(references.resolve()), "n_cases": len(cases),
                                             "units": "mm (each scan's voxel size)", "tta": options.tta,
                                             "largest_component": predictor.settings.nms, **summary})
        print(format_table(summary, "mm", f"{len(cases)} case(s) scored against {references}"))
    print(f"{len(written)} label map(s) written to {output}", file=sys.stderr)
    return written
