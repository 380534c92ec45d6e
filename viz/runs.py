"""Where a run's predictions come from, for the comparison montage: test folders, checkpoints, run folders.

A RUN argument may be
* a test output folder (holds summary.json and predictions/<case>.nii.gz, written by
  `test_la.py / test_acdc.py --save_predictions`): its saved label maps are read, nothing is recomputed;
* a checkpoint file (ours or an official .pth): the cases are predicted with the checkpoint's stored
  inference settings (patch, stride, LCC) exactly as the test scripts do;
* a run folder (holds best_model.pth): its best_model.pth.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import UserError


@dataclass
class RunSource:
    name: str
    path: Path
    kind: str  # "predictions" | "checkpoint"
    dataset: str | None  # None: unknown (an official checkpoint); --dataset decides
    cases: list[str]  # the cases it holds predictions for ([] for a checkpoint: any case)


def describe_source(argument: str) -> RunSource:
    path = Path(argument)
    if path.is_dir() and (path / "predictions").is_dir():
        summary_path = path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        cases = sorted(p.name[: -len(".nii.gz")] for p in (path / "predictions").glob("*.nii.gz"))
        ordered = [c for c in summary.get("cases", []) if c in cases] or cases
        # <run folder>/test_<list>/ is the default layout: name it after the run folder
        name = path.parent.name if path.name.startswith("test_") else path.name
        return RunSource(name, path, "predictions", summary.get("dataset"), ordered)
    if path.is_dir() and (path / "best_model.pth").is_file():
        path = path / "best_model.pth"
    if path.is_file():
        from utils.checkpoint import read_checkpoint

        dataset = read_checkpoint(path).get("dataset")
        return RunSource(path.parent.name, path, "checkpoint", dataset, [])
    if path.is_dir():
        raise FileNotFoundError(f"{path} holds neither predictions/ (run test_*.py --save_predictions "
                                f"--output_dir {path}) nor best_model.pth")
    raise FileNotFoundError(f"{path} does not exist; pass a test output folder, a run folder or a checkpoint")


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if names.count(name) == 1 else f"{name} ({seen[name]})")
    return result


def read_nifti_labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.uint8)


class RunPredictions:
    """Label maps of one source for any case: read from its predictions/ folder, or predicted on demand by
    the checkpoint's predictor (its stored inference settings, as the test scripts)."""

    def __init__(self, source: RunSource, dataset, device: str = "cpu"):
        self.source, self.dataset = source, dataset
        if source.kind == "checkpoint":
            from inference import Predictor

            self.predictor = Predictor.from_checkpoint(source.path, device=device, dataset=dataset.name)

    def labels(self, case: str, image: np.ndarray) -> np.ndarray:
        if self.source.kind == "predictions":
            path = self.source.path / "predictions" / f"{case}.nii.gz"
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: {self.source.path} has no prediction for case {case}")
            labels = read_nifti_labels(path)
        else:
            labels = self.predictor.predict_stored(image)
        if labels.shape != image.shape:
            raise UserError(f"{self.source.name}: prediction for {case} has shape {labels.shape}, the image "
                            f"{image.shape}; was it made for another dataset?")
        return labels
