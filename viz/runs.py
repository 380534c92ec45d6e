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


class Predictor:
    """Label maps of one source for any case (predicting on demand for checkpoints)."""

    def __init__(self, source: RunSource, task, device: str = "cpu"):
        self.source, self.task = source, task
        if source.kind == "checkpoint":
            from engine.tasks import InferenceSettings
            from utils.checkpoint import load_network

            preset = task.preset
            loaded = load_network(source.path, preset.network, preset.network_kwargs, device)
            stored = loaded.metadata.get("inference", {})
            self.network = loaded.network
            self.settings = InferenceSettings(
                patch_size=tuple(stored.get("patch_size") or preset.patch_size),
                stride=tuple(stored.get("stride") or preset.stride),
                batch_size=int(stored.get("batch_size", 4)),
                nms=bool(stored.get("nms", preset.nms)),
            )

    def labels(self, case: str, image: np.ndarray) -> np.ndarray:
        if self.source.kind == "predictions":
            path = self.source.path / "predictions" / f"{case}.nii.gz"
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: {self.source.path} has no prediction for case {case}")
            labels = read_nifti_labels(path)
        else:
            labels = self.task.predict(self.network, image, self.settings, self.network.num_classes)
        if labels.shape != image.shape:
            raise ValueError(f"{self.source.name}: prediction for {case} has shape {labels.shape}, "
                             f"the image {image.shape}; was it made for another dataset?")
        return labels
