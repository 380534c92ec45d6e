"""The dataset adapter of a user's nnU-Net-layout NIfTI folder (train.py --data): 3-D V-Net or 2-D slice-wise U-Net.

Splits: validation cases are given (`<lists_dir>/val.list`) or drawn from the labeled cases with a seed;
labeled training cases are the first `labelnum` of the rest (`<lists_dir>/labeled.list` fixes the order);
the unlabeled pool is every training image without a label file, plus labeled cases beyond `labelnum`
(their labels are never read). Test cases are the imagesTs scans that have a labelsTs reference.
In 2-D mode the labeled / unlabeled items are slices `<case>_slice_<k>` of the preprocessed volumes
(as the ACDC slices), validation and test stay whole volumes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from utils.errors import UserError
from utils.settings import nested, setting

from .ct import foreground_statistics, is_ct
from .datasets import DatasetAdapter, count
from .nifti import (
    NIFTI_GROUP,
    NiftiDatasetInfo,
    NiftiTrainDataset,
    Preprocessing,
    parse_slice_id,
    preprocess,
    read_label,
    read_nifti_dataset,
    read_scan,
    slice_id,
)
from .splits import Split, read_list

NIFTI_MODES = ("3d", "2d")
# the networks of each mode, as the benchmark they mirror (3-D as LA, 2-D as ACDC); classes and channels come
# from the folder's dataset.json
NIFTI_PATCH_SIZES = {"3d": (96, 96, 96), "2d": (256, 256)}
NIFTI_NETWORKS = {"3d": ("vnet", {"in_channels": 1, "num_classes": 2, "base_filters": 16, "dropout": True}),
                  "2d": ("unet", {"in_channels": 1, "num_classes": 2})}


@dataclass
class NiftiOptions:
    """train.py's settings of a user's NIfTI folder (its flags are generated from these fields); with what the
    folder's dataset.json says they become the run's `config.nifti`."""

    data: str = setting("", "nnU-Net raw folder (dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/[, imagesTs/]) "
                            "or a Decathlon task folder (imagesTr/<case>.nii.gz); the layout is detected",
                        group=NIFTI_GROUP)
    mode: str = setting("3d", "3d: V-Net on volumes (LA defaults); 2d: U-Net on slices (ACDC defaults)",
                        choices=NIFTI_MODES, group=NIFTI_GROUP)
    preprocessing: Preprocessing = nested(Preprocessing)
    num_val: int = setting(-1, "validation cases drawn from the labeled ones; a val.list in --lists_dir gives them "
                               "instead (default: 20%, at least 1)", group=NIFTI_GROUP)
    split_seed: int | None = setting(None, "seed of the validation draw (default: --seed)", group=NIFTI_GROUP)


def default_num_val(num_labeled: int) -> int:
    """20 % of the labeled cases (at least 1), always leaving one labeled case to train on."""
    return min(max(1, round(0.2 * num_labeled)), num_labeled - 1)


class NiftiDataset(DatasetAdapter):
    """A NIfTI folder in one mode. `info` is None when only predicting (predict.py needs no training folder);
    `class_names` then come from the checkpoint."""

    def __init__(self, mode: str, preprocessing: Preprocessing, info: NiftiDatasetInfo | None = None,
                 num_val: int = -1, split_seed: int = 1337, class_names: tuple[str, ...] = (),
                 num_classes: int = 2, in_channels: int = 1):
        if mode not in NIFTI_MODES:
            raise UserError(f"--mode must be one of {', '.join(NIFTI_MODES)}, got {mode!r}")
        if info is not None:
            num_classes, in_channels, class_names = info.num_classes, info.num_channels, tuple(info.class_names)
        network, kwargs = NIFTI_NETWORKS[mode]
        super().__init__(
            name=f"NIfTI-{mode}", network=network,
            network_kwargs={**kwargs, "in_channels": in_channels, "num_classes": num_classes},
            num_classes=num_classes, class_names=tuple(class_names),
            inference="volume" if mode == "3d" else "slices", patch_size=NIFTI_PATCH_SIZES[mode],
            spacing_mm=preprocessing.target_spacing,
            test_largest_component=False, has_channel_axis=True,
            slice_axis=preprocessing.slice_axis if mode == "2d" else None,
            scan_preprocessing=preprocessing,
            labelnum_meaning="labeled training cases to use (the first N labeled cases left after validation; "
                             "0 = all)",
            root_help="the nnU-Net raw folder (set by --data)",
        )
        self.mode = mode
        self.preprocessing = preprocessing
        self.info = info
        self.num_val = num_val  # -1: default_num_val
        self.split_seed = split_seed
        self._prepared: dict[tuple[str, str], tuple[np.ndarray, np.ndarray | None]] = {}

    def _need_info(self) -> NiftiDatasetInfo:
        if self.info is None:
            raise UserError("this NIfTI dataset was built without a dataset folder (--data)")
        return self.info

    def _subset(self, case: str) -> str:
        info = self._need_info()
        return "Ts" if case in set(info.test) and case not in set(info.labeled + info.unlabeled) else "Tr"

    def prepared(self, case: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Preprocessed (image (C, X, Y, Z), label or None) of a dataset case, computed once."""
        info, subset = self._need_info(), self._subset(case)
        key = (subset, case)
        if key not in self._prepared:
            paths = info.image_paths(case, subset)
            scan = read_scan(paths)
            if scan.image.shape[0] != info.num_channels:
                raise UserError(f"{paths[0]}: {scan.image.shape[0]} channel(s); dataset.json names "
                                f"{info.num_channels} ({', '.join(info.channel_names)})")
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
                raise UserError(f"{lists / 'labeled.list'} names cases without a label in labelsTr/: {unknown[:3]}")
        val: list[str] = []
        if select == "val":
            if lists is not None and (lists / "val.list").is_file():
                val = read_list(lists / "val.list")
                unknown = [c for c in val if c not in set(info.labeled)]
                if unknown:
                    raise UserError(f"{lists / 'val.list'}: validation cases need labels; {unknown[:3]} have none")
            else:
                n_val = default_num_val(len(pool)) if self.num_val < 0 else self.num_val
                if n_val < 1 or n_val >= len(pool):
                    raise UserError(f"{len(pool)} labeled case(s) cannot give {n_val} validation case(s) and keep "
                                     f"one to train on; set --num_val, give --lists_dir with val.list, or use "
                                     f"--select last")
                rng = np.random.default_rng(self.split_seed)
                val = sorted(pool[i] for i in rng.choice(len(pool), size=n_val, replace=False))
        rest = [c for c in pool if c not in set(val)]
        n_labeled = len(rest) if labelnum == 0 else labelnum
        if not 1 <= n_labeled <= len(rest):
            raise UserError(f"--labelnum {labelnum} out of range: {len(rest)} labeled case(s) remain after "
                             f"{len(val)} validation case(s); choose 1..{len(rest)} or 0 for all")
        labeled = rest[:n_labeled]
        unlabeled = rest[n_labeled:] + [c for c in info.unlabeled if c not in set(pool)]
        test = list(info.test_labeled)
        if select == "test" and not test:
            raise UserError(f"--select test needs test scans with references: {info.root}/imagesTs/ and "
                             f"labelsTs/; use --select val or last")
        if self.mode == "2d":
            labeled, unlabeled = self._slices(labeled), self._slices(unlabeled)
        return Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)

    def describe_items(self, ids: list[str]) -> str:
        if self.mode != "2d":
            return count(len(ids), "case")
        return f"{count(len(ids), 'slice')} ({count(len({parse_slice_id(i)[0] for i in ids}), 'case')})"

    def check_data(self, root: str | Path, train_ids: list[str], eval_ids: list[str]) -> None:
        info = self._need_info()
        scored = set(info.labeled) | set(info.test_labeled)
        unscored = [c for c in eval_ids if c not in scored]
        if unscored:
            raise UserError(f"evaluation cases need reference labels; {unscored[:3]} have none in {info.root}")

    def train_dataset(self, root: str | Path, case_ids: list[str], patch_size: tuple[int, ...]) -> Dataset:
        if len(patch_size) != (3 if self.mode == "3d" else 2):
            raise UserError(f"--patch_size {list(patch_size)} does not fit --mode {self.mode}")
        return NiftiTrainDataset(case_ids, self.prepared, patch_size, self.slice_axis)

    def load_case(self, root: str | Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.prepared(case_id)
        if label is None:
            raise UserError(f"case {case_id} has no label file; it cannot be scored")
        return image, label


def ct_statistics_of(info: NiftiDatasetInfo, cases: list[str]) -> list[dict[str, float]]:
    """nnU-Net's CT statistics (per channel: 0.5 / 99.5 percentiles, mean, std) of the labeled voxels of `cases`
    pooled, on each scan's own grid (the foreground lies inside any body crop; resampling would invent values)."""
    def scans_and_labels():
        for case in cases:
            scan = read_scan(info.image_paths(case))
            yield scan.image, read_label(info.label_path(case), scan.image.shape[1:], info.num_classes)

    return foreground_statistics(scans_and_labels())


def labeled_training_cases(info: NiftiDatasetInfo, labelnum: int, select: str, lists_dir: str | Path = "",
                           num_val: int = -1, split_seed: int = 1337) -> list[str]:
    """The cases whose labels a run trains on (validation and the labeled cases beyond labelnum excluded): the
    split is drawn per case, the same in 2-D and 3-D mode, without reading any scan."""
    return NiftiDataset("3d", Preprocessing(), info, num_val=num_val, split_seed=split_seed).split(
        labelnum, select, lists_dir).labeled


def resolve_preprocessing(preprocessing: Preprocessing, info: NiftiDatasetInfo, normalization_given: bool,
                          labeled_cases: Callable[[], list[str]]) -> tuple[Preprocessing, str]:
    """The run's preprocessing with what dataset.json implies, and one line saying what was chosen.

    A dataset whose channels are all named CT gets nnU-Net's CT scheme unless --normalization or --window says
    otherwise, and its scans count as CT (body crop, predict.py's modality check). The CT statistics are computed
    here, once, from the labeled voxels of `labeled_cases()` (the run's labeled training cases only: validation
    and unlabeled cases keep their labels out of training), and travel in the config and every checkpoint.
    """
    ct = is_ct(info.channel_names)
    normalization = preprocessing.normalization
    if ct and not normalization_given and preprocessing.window is None:
        normalization = "ct"
    resolved = replace(preprocessing, normalization=normalization,
                       modality="CT" if ct or normalization in ("ct", "window") else "", ct_statistics=None)
    why = "dataset.json names CT" if ct and not normalization_given else "as asked"
    if normalization == "window":
        low, high = resolved.window
        return resolved, f"normalization: window [{low:g}, {high:g}] HU -> [0, 1] ({why})"
    if normalization != "ct":
        return resolved, f"normalization: {normalization} per case and channel"
    cases = labeled_cases()
    resolved = replace(resolved, ct_statistics=ct_statistics_of(info, cases))
    numbers = "; ".join(f"{name}: clip [{s['percentile_00_5']:.5g}, {s['percentile_99_5']:.5g}], mean "
                        f"{s['mean']:.5g}, std {s['std']:.5g}" for name, s in zip(info.channel_names,
                                                                                 resolved.ct_statistics, strict=True))
    return resolved, (f"normalization: ct, nnU-Net's CT scheme ({why}), from the labeled voxels of "
                      f"{count(len(cases), 'labeled training case')}: {numbers}")


def dataset_from_config(config) -> NiftiDataset:
    """The adapter of a training run's NIfTI folder (config.nifti, written by train.py --data)."""
    if config is None or not getattr(config, "nifti", None):
        raise UserError("a NIfTI dataset needs its settings (train.py --data DIR builds them)")
    nifti = config.nifti
    info = read_nifti_dataset(config.root_path)
    return NiftiDataset(nifti["mode"], Preprocessing.from_dict(nifti["preprocessing"]), info,
                        num_val=int(nifti.get("num_val", -1)), split_seed=int(nifti.get("split_seed", config.seed)))


def dataset_from_checkpoint(nifti: dict, num_classes: int, in_channels: int) -> NiftiDataset:
    """The adapter a NIfTI model predicts with (no training folder needed): its mode, preprocessing, classes."""
    return NiftiDataset(nifti["mode"], Preprocessing.from_dict(nifti["preprocessing"]),
                        class_names=tuple(nifti.get("class_names", ())), num_classes=num_classes,
                        in_channels=in_channels)
