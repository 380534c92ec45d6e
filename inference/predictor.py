"""The predictor: a network, the dataset adapter it was trained for and how to run it, from any checkpoint.

One path serves the test scripts, predict.py, the figures, in-training evaluation and the reproduction grid:

    predictor = Predictor.from_checkpoint("best_model.pth", device="cuda")      # ours or an official .pth
    predictor = Predictor.from_checkpoint(path, "cuda", InferenceSettings(tta=True, amp="bf16"))  # other settings
    labels = predictor.predict_stored(image)   # stored array (LA (W,H,D), ACDC (S,H,W), NIfTI (C,X,Y,Z))
    labels = predictor.predict_scan(scan)      # a NIfTI scan -> labels on its own grid (preprocessing included)

How a case is run depends on the adapter's `inference` kind, never on the dataset's name: a 3-D sliding window
(mean softmax over windows, argmax), 2-D slices resized to the network's input (ACDC's official test), or 2-D
sliding windows along the slice axis (NIfTI 2-D models). Predictions are uint8 label maps; `largest_component`
keeps the largest connected component of each foreground class.

The forward runs under `torch.inference_mode` on `runner`: with `settings.fold_bn` (the default) an evaluation
copy of the network whose convolutions absorb their BatchNorm (networks/speed.py), stored channels-last for a 3-D
network on a CPU, a snapshot of the weights at construction; without it the network itself (the in-training
evaluation, whose weights keep changing).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dataloaders import DATASETS, DatasetAdapter, get_dataset
from dataloaders.nifti import Scan, preprocess, restore_labels
from dataloaders.nifti_dataset import dataset_from_checkpoint
from networks import load_network
from networks.speed import fold_batchnorm, prepare_network, use_channels_last
from utils.autocast import autocast
from utils.checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from utils.cli import resolve_device
from utils.errors import UserError
from utils.postprocess import keep_largest_component_per_class
from utils.sliding_window import predict_slices_2d, sliding_window_predict

from .settings import InferenceSettings
from .tta import FlipTTA


@dataclass
class Predictor:
    network: nn.Module  # in eval mode when it comes from a checkpoint; the caller sets the mode otherwise
    dataset: DatasetAdapter
    settings: InferenceSettings
    checkpoint: dict = field(default_factory=dict)  # what the checkpoint says of itself (method, iteration, ...)
    official: bool = False  # a released official state dict
    runner: nn.Module = field(init=False, repr=False)  # what the forward calls: the folded copy or `network`

    def __post_init__(self) -> None:
        self.runner = self.network
        if self.settings.fold_bn:
            self.runner = fold_batchnorm(self.network)
            if self.device.type == "cpu" and getattr(self.runner, "spatial_dims", None) in (2, 3):
                # oneDNN's fp32 convolutions on a CPU run faster channels-last: ~1.5x (3-D V-Net windows), ~2x
                # (2-D U-Net slices; docs/speed.md); like the fold, it changes only the rounding
                use_channels_last(self.runner)

    @property
    def num_classes(self) -> int:
        return int(self.network.num_classes)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def class_names(self) -> dict[int, str]:
        return {c: self.dataset.class_name(c) for c in range(1, self.num_classes)}

    # -- building -------------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu",
                        settings: InferenceSettings | None = None, *, dataset: str = "",
                        expect_dataset: str = "") -> Predictor:
        """A predictor from one of our checkpoints (self-describing) or an official state dict.

        settings: how to predict; what they leave open (patch size, stride, largest component) is the
        checkpoint's record, else the dataset's (InferenceSettings.resolve).
        dataset: the dataset of an official state dict ("" = guessed from its keys: V-Net -> LA, U-Net -> ACDC).
        expect_dataset: refuse a checkpoint of another dataset, class count or dimensionality (the test scripts).
        """
        settings = settings if settings is not None else InferenceSettings()
        device = resolve_device(str(device))
        raw = read_checkpoint(path)
        ours = raw.get("format") == CHECKPOINT_FORMAT
        if ours:
            name = raw.get("dataset") or expect_dataset
        else:
            name = dataset or expect_dataset or _guess_dataset(raw.get("state_dict", raw))
        if expect_dataset and ours and name not in (None, expect_dataset):
            raise UserError(f"{path} was trained on {name}, not {expect_dataset}; use test_{name.lower()}.py")
        if not name.startswith("NIfTI") and name not in DATASETS:
            raise UserError(f"{path}: unknown dataset {name!r}; pass --dataset LA or ACDC")
        defaults = DATASETS.get(name) or DATASETS["LA"]
        loaded = load_network(path, defaults.network, defaults.network_kwargs, device, contents=raw)  # read once
        network, meta = loaded.network, loaded.metadata
        if name.startswith("NIfTI"):
            adapter = dataset_from_checkpoint(meta["config"]["nifti"], network.num_classes, network.in_channels)
        else:
            adapter = get_dataset(name)
        if expect_dataset:
            _check_fits_dataset(path, network, adapter)
        settings = settings.resolve(meta.get("inference", {}), adapter)
        if settings.tta:
            network = FlipTTA(network).eval()
        predictor = cls(network, adapter, settings, meta, loaded.official)
        prepare_network(predictor.runner, channels_last=settings.channels_last, compile=settings.compile)
        return predictor

    # -- predicting -----------------------------------------------------------------------------------
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *patch) on any device -> logits (B, K, *patch) on the network's device, under autocast when
        settings.amp is bf16 / fp16 (the callers softmax them in float32)."""
        with autocast(self.settings.amp, self.device):
            return self.runner(batch.to(self.device, non_blocking=True))[0]

    @torch.inference_mode()
    def predict_stored(self, image: np.ndarray) -> np.ndarray:
        """uint8 label map of an array in the dataset's stored layout (the image's spatial shape)."""
        labels = self._labels(image).astype(np.uint8)
        if self.settings.largest_component:
            labels = keep_largest_component_per_class(labels, list(range(1, self.num_classes)))
        return labels

    def predict_scan(self, scan: Scan) -> np.ndarray:
        """Labels of a NIfTI scan on its own grid: the dataset's preprocessing, the stored layout, and back."""
        image, _, record = preprocess(scan.image, scan.spacing, self.dataset.scan_preprocessing)
        labels = self.predict_stored(self.dataset.stored_from_scan(image))
        return restore_labels(self.dataset.scan_from_stored(labels), record)

    def predict_h5_array(self, image: np.ndarray) -> np.ndarray:
        """An array read from an h5 file: LA / ACDC arrays are stored normalised; a NIfTI model gets its intensity
        normalisation only (an h5 file has no voxel size to resample from)."""
        if not self.dataset.has_channel_axis:
            return self.predict_stored(image)
        preprocessing = replace(self.dataset.scan_preprocessing, target_spacing=None)
        prepared, _, record = preprocess(image[None], (1.0,) * image.ndim, preprocessing)
        return restore_labels(self.predict_stored(prepared), record)

    def _labels(self, image: np.ndarray) -> np.ndarray:
        s, kind = self.settings, self.dataset.inference
        if kind == "slices_resized":
            return predict_slices_2d(self.logits, image, tuple(s.patch_size), s.batch_size)
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        if not self.dataset.has_channel_axis:
            volume = volume[None]
        stride = s.stride or tuple(max(p // 2, 1) for p in s.patch_size)
        if kind == "volume":
            probs = sliding_window_predict(self.logits, volume, s.patch_size, stride, self.num_classes, s.batch_size)
            # argmax on the device; only the uint8 label map crosses to the host
            return probs.argmax(0).to(torch.uint8).cpu().numpy()
        if kind == "slices":
            axis = self.dataset.slice_axis + 1
            slices = [sliding_window_predict(self.logits, volume.select(axis, k), s.patch_size, stride,
                                             self.num_classes, s.batch_size).argmax(0).to(torch.uint8).cpu().numpy()
                      for k in range(volume.shape[axis])]
            return np.stack(slices, axis=self.dataset.slice_axis)
        raise ValueError(f"unknown inference kind {kind!r} of dataset {self.dataset.name}")


def _guess_dataset(state: dict) -> str:
    return "LA" if any("block_one" in k for k in state) else "ACDC"


def _check_fits_dataset(path: str | Path, network: nn.Module, dataset: DatasetAdapter) -> None:
    if network.spatial_dims != dataset.spatial_dims:
        raise UserError(f"{path} holds a {network.spatial_dims}-D network; {dataset.name} needs "
                        f"{dataset.spatial_dims}-D")
    if network.num_classes != dataset.num_classes:
        raise UserError(f"{path} predicts {network.num_classes} classes; {dataset.name} has {dataset.num_classes} "
                        f"(background + {', '.join(dataset.class_names)})")
