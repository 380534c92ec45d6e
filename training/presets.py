"""Per-dataset training defaults: the official SS-Net settings on LA and ACDC, and what a NIfTI folder of each
mode takes. Values only: every setting is declared (with its help) in methods/settings.py or training/config.py.

`schedule` is SS-Net's schedule on the dataset, the `--schedule shared` of every method; `dice` SS-Net's Dice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.recipe import SSNET_ACDC_DICE, SSNET_ACDC_SCHEDULE, SSNET_LA_DICE, SSNET_LA_SCHEDULE, Dice, Schedule


@dataclass(frozen=True)
class Preset:
    dataset: str
    schedule: Schedule
    dice: Dice
    values: dict = field(default_factory=dict)  # other settings whose value differs from the declared default


LA = Preset("LA", SSNET_LA_SCHEDULE, SSNET_LA_DICE, {
    "labelnum": 8, "batch_size": 4, "labeled_bs": 2, "patch_size": [112, 112, 80], "stride": [18, 18, 4],
    "consistency": 1.0, "magnitude": 10.0, "lds_discrepancy": "pooled_dice", "eval_every": 200, "eval_start": 2000,
})
ACDC = Preset("ACDC", SSNET_ACDC_SCHEDULE, SSNET_ACDC_DICE, {
    "labelnum": 7, "batch_size": 24, "labeled_bs": 12, "patch_size": [256, 256], "stride": [],
    "consistency": 0.1, "magnitude": 6.0, "lds_discrepancy": "class_mean_dice", "eval_every": 200, "eval_start": 200,
})
# A user's nnU-Net-layout folder (train.py --data): 3-D as LA, 2-D as ACDC; classes and channels come from its
# dataset.json, labelnum 0 = every labeled training case, the sliding-window stride defaults to half the patch.
NIFTI_3D = Preset("NIfTI-3d", SSNET_LA_SCHEDULE, SSNET_LA_DICE, {**LA.values, "labelnum": 0,
                                                                 "patch_size": [96, 96, 96], "stride": []})
NIFTI_2D = Preset("NIfTI-2d", SSNET_ACDC_SCHEDULE, SSNET_ACDC_DICE, {**ACDC.values, "labelnum": 0})

PRESETS: dict[str, Preset] = {p.dataset: p for p in (LA, ACDC, NIFTI_3D, NIFTI_2D)}
