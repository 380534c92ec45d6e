"""Per-dataset defaults = the official SS-Net settings (spec §7). Flags override them."""
from __future__ import annotations

from dataclasses import dataclass, field

from methods.recipe import Dice, Schedule


@dataclass(frozen=True)
class Preset:
    dataset: str
    network: str
    network_kwargs: dict = field(default_factory=dict)
    num_classes: int = 2
    labelnum: int = 8
    labelnum_meaning: str = ""
    patch_size: tuple[int, ...] = ()
    max_iteration: int = 15000
    batch_size: int = 4
    labeled_bs: int = 2
    base_lr: float = 0.01
    lr_step: int = 2500
    lr_policy: str = "step"
    consistency: float = 1.0
    consistency_rampup: float = 40.0
    rampup_zero_based: bool = False  # w(t) on the 0-based counter (the official 2-D script evaluates it first)
    magnitude: float = 10.0  # VAT epsilon
    lds_discrepancy: str = "pooled_dice"
    dice_include_background: bool = False
    dice_squared_denominator: bool = False
    dice_smooth: float = 1e-8
    eval_every: int = 200
    eval_start: int = 2000
    # inference
    stride: tuple[int, ...] = ()
    nms: bool = False  # largest-connected-component post-processing in the test script
    foreground_classes: tuple[int, ...] = (1,)
    class_names: tuple[str, ...] = ()

    @property
    def schedule(self) -> Schedule:
        """SS-Net's schedule on this dataset: the `--schedule shared` of every method."""
        return Schedule(self.max_iteration, self.lr_policy, self.consistency_rampup, self.rampup_zero_based,
                        lr_step=self.lr_step)

    @property
    def dice(self) -> Dice:
        return Dice(self.dice_include_background, self.dice_squared_denominator, self.dice_smooth)


LA = Preset(
    dataset="LA",
    network="vnet",
    network_kwargs={"in_channels": 1, "num_classes": 2, "base_filters": 16, "dropout": True},
    num_classes=2,
    labelnum=8,
    labelnum_meaning="labeled training scans (first N of data/LA/train.list; 4 = 5 %, 8 = 10 %)",
    patch_size=(112, 112, 80),
    max_iteration=15000,
    batch_size=4,
    labeled_bs=2,
    lr_step=2500,
    consistency=1.0,
    consistency_rampup=40.0,
    magnitude=10.0,
    lds_discrepancy="pooled_dice",
    dice_include_background=False,
    dice_squared_denominator=False,
    dice_smooth=1e-8,
    eval_every=200,
    eval_start=2000,
    stride=(18, 18, 4),
    nms=True,
    foreground_classes=(1,),
    class_names=("left atrium",),
)

ACDC = Preset(
    dataset="ACDC",
    network="unet",
    network_kwargs={"in_channels": 1, "num_classes": 4},
    num_classes=4,
    labelnum=7,
    labelnum_meaning=(
        "labeled training patients (first N patients of data/ACDC/train_slices.list; 3 -> 68 slices, 7 -> 136)"
    ),
    patch_size=(256, 256),
    max_iteration=30000,
    batch_size=24,
    labeled_bs=12,
    lr_step=0,
    lr_policy="constant",
    consistency=0.1,
    consistency_rampup=200.0,
    rampup_zero_based=True,
    magnitude=6.0,
    lds_discrepancy="class_mean_dice",
    dice_include_background=True,
    dice_squared_denominator=True,
    dice_smooth=1e-10,
    eval_every=200,
    eval_start=200,
    stride=(),
    nms=False,
    foreground_classes=(1, 2, 3),
    class_names=("RV", "Myo", "LV"),
)

PRESETS = {"LA": LA, "ACDC": ACDC}

# --- user datasets in the nnU-Net raw layout (train.py --data; engine/nifti_task.py) ---
# Schedules and loss settings of the benchmark each mode mirrors (3-D as LA, 2-D as ACDC); the number of classes
# and input channels come from the folder's dataset.json; labelnum 0 = every labeled training case.
NIFTI_3D = Preset(
    dataset="NIfTI-3d",
    network="vnet",
    network_kwargs={"in_channels": 1, "num_classes": 2, "base_filters": 16, "dropout": True},
    labelnum=0,
    labelnum_meaning="labeled training cases to use (the first N labeled cases left after validation; 0 = all)",
    patch_size=(96, 96, 96),
    max_iteration=15000, batch_size=4, labeled_bs=2, lr_step=2500,
    consistency=1.0, consistency_rampup=40.0, magnitude=10.0, lds_discrepancy="pooled_dice",
    dice_include_background=False, dice_squared_denominator=False, dice_smooth=1e-8,
    eval_every=200, eval_start=2000, nms=False,
)
NIFTI_2D = Preset(
    dataset="NIfTI-2d",
    network="unet",
    network_kwargs={"in_channels": 1, "num_classes": 2},
    labelnum=0,
    labelnum_meaning="labeled training cases to use (the first N labeled cases left after validation; 0 = all)",
    patch_size=(256, 256),
    max_iteration=30000, batch_size=24, labeled_bs=12, lr_step=0, lr_policy="constant",
    consistency=0.1, consistency_rampup=200.0, rampup_zero_based=True, magnitude=6.0, lds_discrepancy="class_mean_dice",
    dice_include_background=True, dice_squared_denominator=True, dice_smooth=1e-10,
    eval_every=200, eval_start=200, nms=False,
)
NIFTI_PRESETS = {"3d": NIFTI_3D, "2d": NIFTI_2D}
PRESETS.update({p.dataset: p for p in NIFTI_PRESETS.values()})
