"""The Task of a user's nnU-Net-layout NIfTI folder (train.py --data): 3-D V-Net or 2-D slice-wise U-Net.

Splits: validation cases are given (`<lists_dir>/val.list`) or drawn from the labeled cases with a seed;
labeled training cases are the first `labelnum` of the rest (`<lists_dir>/labeled.list` fixes the order);
the unlabeled pool is every training image without a label file, plus labeled cases beyond `labelnum`
(their labels are never read). Test cases are the imagesTs scans that have a labelsTs reference.
In 2-D mode the labeled / unlabeled items are slices `<case>_slice_<k>` of the preprocessed volumes
(as the ACDC slices), validation and test stay whole volumes.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dataloaders import Split, read_list
from dataloaders.nifti import (
    NiftiDatasetInfo,
    NiftiTrainDataset,
    Preprocessing,
    preprocess,
    read_label,
    read_nifti_dataset,
    read_scan,
    slice_id,
)
from engine.presets import NIFTI_PRESETS
from engine.tasks import InferenceSettings, Task, _logits_fn
from utils.sliding_window import sliding_window_predict

MODES = tuple(NIFTI_PRESETS)


def default_num_val(num_labeled: int) -> int:
    """20 % of the labeled cases (at least 1), always leaving one labeled case to train on."""
    return min(max(1, round(0.2 * num_labeled)), num_labeled - 1)


class NiftiTask(Task):
    def __init__(self, mode: str, preprocessing: Preprocessing, info: NiftiDatasetInfo | None = None,
                 num_val: int = -1, split_seed: int = 1337):
        if mode not in NIFTI_PRESETS:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.preset = NIFTI_PRESETS[mode]
        self.preprocessing = preprocessing
        self.info = info  # None when only predicting (predict.py needs no training folder)
        self.num_val = num_val  # -1: default_num_val
        self.split_seed = split_seed
        self._prepared: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}
        if info is not None:
            self.preset = replace(self.preset, num_classes=info.num_classes, class_names=tuple(info.class_names),
                                  foreground_classes=tuple(range(1, info.num_classes)))
        self.spacing_mm = preprocessing.target_spacing

    @property
    def slice_axis(self) -> int | None:
        return self.preprocessing.slice_axis if self.mode == "2d" else None

    def _need_info(self) -> NiftiDatasetInfo:
        if self.info is None:
            raise ValueError("this NIfTI task was built without a dataset folder (--data)")
        return self.info

    def _subset(self, case: str) -> str:
        info = self._need_info()
        return "Ts" if case in set(info.test) and case not in set(info.labeled + info.unlabeled) else "Tr"

    def prepared(self, case: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (image (C, X, Y, Z), label or None) of a dataset case, computed once."""
        info, subset = self._need_info(), self._subset(case)
        key = (subset, case)
        if key not in self._prepared:
            scan = read_scan(info.image_paths(case, subset))
            label_path = info.label_path(case, subset)
            # dataset.json's label names fix the classes: any other value is an error, not a wrapped uint8
            label = read_label(label_path, scan.image.shape[1:], info.num_classes) if label_path.is_file() else None
            image, label, _ = preprocess(scan.image, scan.spacing, self.preprocessing, label)
            self._prepared[key] = (image, label)
        return self._prepared[key]

    def _slices(self, cases: list[str]) -> list[str]:
        return [slice_id(c, k) for c in cases for k in range(self.prepared(c)[0].shape[1 + self.slice_axis])]

    def split(self, labelnum: int, select: str, lists_dir: str | Path = "") -> Split:
        info = self._need_info()
        lists = Path(lists_dir) if lists_dir else None
        pool = list(info.labeled)
        if lists is not None and (lists / "labeled.list").is_file():
            pool = read_list(lists / "labeled.list")
            unknown = [c for c in pool if c not in set(info.labeled)]
            if unknown:
                raise ValueError(f"{lists / 'labeled.list'} names cases without a label in labelsTr/: {unknown[:3]}")
        val: list[str] = []
        if select == "val":
            if lists is not None and (lists / "val.list").is_file():
                val = read_list(lists / "val.list")
                unknown = [c for c in val if c not in set(info.labeled)]
                if unknown:
                    raise ValueError(f"{lists / 'val.list'}: validation cases need labels; {unknown[:3]} have none")
            else:
                n_val = default_num_val(len(pool)) if self.num_val < 0 else self.num_val
                if n_val < 1 or n_val >= len(pool):
                    raise ValueError(f"{len(pool)} labeled case(s) cannot give {n_val} validation case(s) and keep "
                                     f"one to train on; set --num_val, give --lists_dir with val.list, or use "
                                     f"--select last")
                rng = np.random.default_rng(self.split_seed)
                val = sorted(pool[i] for i in rng.choice(len(pool), size=n_val, replace=False))
        rest = [c for c in pool if c not in set(val)]
        n_labeled = len(rest) if labelnum == 0 else labelnum
        if not 1 <= n_labeled <= len(rest):
            raise ValueError(f"--labelnum {labelnum} out of range: {len(rest)} labeled case(s) remain after "
                             f"{len(val)} validation case(s); choose 1..{len(rest)} or 0 for all")
        labeled = rest[:n_labeled]
        unlabeled = rest[n_labeled:] + [c for c in info.unlabeled if c not in set(pool)]
        test = list(info.test_labeled)
        if select == "test" and not test:
            raise ValueError(f"--select test needs test scans with references: {info.root}/imagesTs/ and "
                             f"labelsTs/; use --select val or last")
        if self.mode == "2d":
            labeled, unlabeled = self._slices(labeled), self._slices(unlabeled)
        return Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        info = self._need_info()
        scored = set(info.labeled) | set(info.test_labeled)
        unscored = [c for c in eval_ids if c not in scored]
        if unscored:
            raise ValueError(f"evaluation cases need reference labels; {unscored[:3]} have none in {info.root}")

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        if len(patch_size) != (3 if self.mode == "3d" else 2):
            raise ValueError(f"--patch_size {list(patch_size)} does not fit --mode {self.mode}")
        return NiftiTrainDataset(case_ids, self.prepared, patch_size, self.slice_axis)

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.prepared(case_id)
        if label is None:
            raise ValueError(f"case {case_id} has no label file; it cannot be scored")
        return image, label

    def predict_labels(self, network: nn.Module, image: np.ndarray, settings: InferenceSettings,
                       num_classes: int) -> np.ndarray:
        """image (C, X, Y, Z) preprocessed -> labels (X, Y, Z): 3-D sliding window, or 2-D windows per slice."""
        device = next(network.parameters()).device
        logits_fn = _logits_fn(network)
        stride = settings.stride or tuple(max(p // 2, 1) for p in settings.patch_size)
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(device)
        if self.mode == "3d":
            probs = sliding_window_predict(logits_fn, volume, settings.patch_size, stride, num_classes,
                                           settings.batch_size)
            return probs.argmax(0).cpu().numpy()
        axis = self.slice_axis + 1
        labels = [sliding_window_predict(logits_fn, volume.select(axis, k), settings.patch_size, stride,
                                         num_classes, settings.batch_size).argmax(0).cpu().numpy()
                  for k in range(volume.shape[axis])]
        return np.stack(labels, axis=self.slice_axis)


def task_from_config(config) -> NiftiTask:
    """The registry hook of engine.tasks.get_task for datasets 'NIfTI-3d' / 'NIfTI-2d'."""
    if config is None or not getattr(config, "nifti", None):
        raise ValueError("a NIfTI dataset needs its settings (train.py --data DIR builds them)")
    nifti = config.nifti
    info = read_nifti_dataset(config.root_path)
    return NiftiTask(nifti["mode"], Preprocessing.from_dict(nifti["preprocessing"]), info,
                     num_val=int(nifti.get("num_val", -1)), split_seed=int(nifti.get("split_seed", config.seed)))
