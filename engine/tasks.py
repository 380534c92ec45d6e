"""Dataset adapters: what differs between LA (3D volumes, sliding window) and ACDC (2D slices, volumes at test).

The trainer and the evaluation code talk to a Task and never branch on the dataset name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dataloaders import (
    LA_FOLDER,
    ACDCSlices,
    ACDCTrainTransform,
    LATrainTransform,
    LAVolumes,
    Split,
    acdc_split,
    la_split,
    load_acdc_volume,
    load_la_case,
)
from dataloaders.acdc import acdc_slice_path, acdc_volume_path
from dataloaders.la import la_case_path
from dataloaders.splits import DATA_DIR
from engine.precision import Precision
from engine.presets import ACDC, LA, Preset
from utils.choices import unknown_choice
from utils.postprocess import keep_largest_component_per_class
from utils.sliding_window import predict_slices_2d, sliding_window_predict


@dataclass
class InferenceSettings:
    patch_size: tuple[int, ...]
    stride: tuple[int, ...] = ()
    batch_size: int = 4
    nms: bool = False  # keep the largest connected component of each foreground class
    amp: str = "off"  # autocast dtype of the network's forward: off (fp32) | bf16 | fp16

    def to_dict(self) -> dict:
        return {"patch_size": list(self.patch_size), "stride": list(self.stride), "batch_size": self.batch_size,
                "nms": self.nms, "amp": self.amp}


def check_files_exist(paths: list[Path], what: str, root: str | Path, layout: str) -> None:
    """Fail before training starts (and before a run folder is written) when cases are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        if not Path(root).is_dir():
            raise FileNotFoundError(f"--root_path {root} does not exist; it should hold {layout} (see README 'Data')")
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} {what} missing under --root_path {root}, "
                                f"e.g. {missing[0]} (see README 'Data')")


def _logits_fn(network: nn.Module, amp: str = "off"):
    """(B, C_in, *patch) on any device -> logits (B, K, *patch) computed on the network's device, under
    autocast when `amp` is bf16/fp16 (the callers softmax the logits in float32)."""
    device = next(network.parameters()).device
    precision = Precision(amp, device)

    def predict_logits(x: torch.Tensor) -> torch.Tensor:
        with precision.autocast():
            return network(x.to(device, non_blocking=True))[0]
    return predict_logits


class Task:
    """What the trainer and the evaluation need from a dataset; subclasses fill in the differences."""

    preset: Preset
    spacing_mm: tuple[float, ...] | None = None  # voxel size of the stored arrays, when known

    def lists_dir(self, override: str | Path = "") -> Path:
        return Path(override) if override else DATA_DIR / self.preset.dataset

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        raise NotImplementedError

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        raise NotImplementedError

    def check_cases(self, root: str | Path, case_ids: list[str]) -> None:
        """Read every case once (keys, shapes, finite image, label values) so a bad file fails before training."""
        for case_id in case_ids:
            self.load_case(root, case_id)

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        raise NotImplementedError

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict_labels(self, network: nn.Module, image: np.ndarray, settings: InferenceSettings,
                       num_classes: int) -> np.ndarray:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, network: nn.Module, image: np.ndarray, settings: InferenceSettings,
                num_classes: int) -> np.ndarray:
        """Label map (uint8, the image's shape) of one stored case; network in eval mode."""
        labels = self.predict_labels(network, image, settings, num_classes).astype(np.uint8)
        if settings.nms:
            labels = keep_largest_component_per_class(labels, list(range(1, num_classes)))
        return labels


class LATask(Task):
    preset = LA
    # The original LA scans are 0.625 mm isotropic; the h5 crops keep that grid.
    spacing_mm = (0.625, 0.625, 0.625)

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        # The honest protocol holds the validation scans out of the unlabeled pool; the paper protocol has no val set.
        return la_split(labelnum, hold_out_val=select == "val", lists_dir=self.lists_dir(lists_dir))

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        paths = [la_case_path(root, c) for c in [*train_ids, *eval_ids]]
        check_files_exist(paths, "LA cases", root, f"'{LA_FOLDER}/<case>/mri_norm2.h5'")

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        return LAVolumes(root, case_ids, transform=LATrainTransform(tuple(patch_size)))

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_la_case(root, case_id)

    def predict_labels(self, network: nn.Module, image: np.ndarray, settings: InferenceSettings,
                       num_classes: int) -> np.ndarray:
        device = next(network.parameters()).device
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
        probs = sliding_window_predict(
            _logits_fn(network, settings.amp), volume, settings.patch_size, settings.stride, num_classes,
            settings.batch_size,
        )
        # argmax on the device; only the uint8 label map crosses to the host
        return probs.argmax(0).to(torch.uint8).cpu().numpy()


class ACDCTask(Task):
    preset = ACDC
    spacing_mm = None  # the public h5 volumes carry no spacing

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        return acdc_split(labelnum, lists_dir=self.lists_dir(lists_dir))

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        paths = [acdc_slice_path(root, s) for s in train_ids] + [acdc_volume_path(root, v) for v in eval_ids]
        check_files_exist(paths, "ACDC slices/volumes", root, "'data/<volume>.h5' and 'data/slices/<slice>.h5'")

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        return ACDCSlices(root, case_ids, transform=ACDCTrainTransform(tuple(patch_size)))

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        return load_acdc_volume(root, case_id)

    def predict_labels(self, network: nn.Module, image: np.ndarray, settings: InferenceSettings,
                       num_classes: int) -> np.ndarray:
        return predict_slices_2d(_logits_fn(network, settings.amp), image, tuple(settings.patch_size),
                                 settings.batch_size)


TASKS: dict[str, Task] = {"LA": LATask(), "ACDC": ACDCTask()}


def get_task(dataset: str, config=None) -> Task:
    if dataset.startswith("NIfTI"):  # a user's nnU-Net-layout folder: the task is built from config.nifti
        from engine.nifti_task import task_from_config

        return task_from_config(config)
    if dataset not in TASKS:
        raise unknown_choice("dataset", dataset, TASKS)
    return TASKS[dataset]
