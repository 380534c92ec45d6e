"""Hyper-parameters of the training methods, each declared once (with its help text); defaults = SS-Net on LA.

The training config (training/config.py) extends this class, so a run's config IS the settings its method reads;
dataset presets and method recipes assign other values, they do not redeclare the settings.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.losses import LDS_DISCREPANCIES, MEMORY_WEIGHTS
from utils.prototype_memory import KEEP_CHOICES
from utils.settings import setting

RECIPE = "the method's recipe (docs/baselines.md)"
SCHEDULE = "--schedule"
# sections of the train scripts' -h
OPTIMISATION = "optimisation and schedule"
LOSSES = "losses of every method"
SSNET = "SS-Net: smoothness (VAT) and class separation"
TEACHERS = "Mean Teacher / UA-MT"


@dataclass(kw_only=True)
class MethodSettings:
    num_classes: int = setting(2, "classes including background", flag=False)
    max_iteration: int = setting(15000, "training iterations", resolved=SCHEDULE, runtime=True, group=OPTIMISATION,
                                 minimum=1)
    # supervised loss: the recipe's soft Dice (+ ce_weight x cross-entropy)
    dice_include_background: bool = setting(False, "supervised Dice averages the background class too",
                                            resolved=RECIPE, group=LOSSES)
    dice_squared_denominator: bool = setting(False, "supervised Dice sums squares in its denominator",
                                             resolved=RECIPE, group=LOSSES)
    dice_smooth: float = setting(1e-8, "smoothing constant of the supervised Dice", resolved=RECIPE, group=LOSSES)
    ce_weight: float = setting(0.0, "cross-entropy weight in the supervised loss (official: computed, weight 0)",
                               group=LOSSES)
    # warm-up weight w(t) = consistency * ramp(t // 150, consistency_rampup)
    consistency: float = setting(1.0, "max warm-up weight of the unlabeled terms", resolved=RECIPE, group=LOSSES)
    consistency_rampup: float = setting(40.0, "ramp length", unit="'epochs' of 150 iterations", resolved=SCHEDULE,
                                        group=OPTIMISATION)
    rampup_zero_based: bool = setting(
        False, "the warm-up (and UA-MT's threshold) sees the iteration counter before the official script "
               "increments it", resolved=SCHEDULE, group=OPTIMISATION)
    pretrain_iterations: int = setting(
        0, "length of a two-stage method's first stage (BCP's pre-train), run before the --max_iteration of the "
           "second in the same run folder; 0 = none", unit="iterations", resolved=RECIPE, group=OPTIMISATION,
        minimum=0)
    stage: str = setting("train", "which stage of a two-stage method a run trains (set by training/stages.py)",
                         choices=("pretrain", "train"), flag=False)
    consistency_off: int = setting(0, "first iterations with the unlabeled term switched off", unit="iterations",
                                   resolved=SCHEDULE, group=OPTIMISATION, minimum=0)
    # SS-Net: local distributional smoothness (VAT with a Dice discrepancy)
    lds_discrepancy: str = setting(
        "pooled_dice", "pooled_dice = the official 3D LDS (one Dice over all classes pooled); class_mean_dice = "
                       "per-class soft Dice averaged (official 2D; the paper's text for both)",
        choices=tuple(sorted(LDS_DISCREPANCIES)), group=SSNET)
    xi: float = setting(10.0, "VAT probe step (official 10)", unit="L2 norm per sample", group=SSNET)
    magnitude: float = setting(10.0, "VAT perturbation norm epsilon", unit="L2 norm per sample", group=SSNET)
    power_iterations: int = setting(1, "VAT power iterations", group=SSNET, minimum=1)
    # SS-Net: class separation with the prototype memory
    separation_weight: float = setting(0.1, "class-separation weight relative to w(t)", group=SSNET)
    memory_size: int = setting(32, "prototypes kept per class", group=SSNET, minimum=1)
    memory_keep: str = setting("lowest", "lowest = official code; highest = the paper's 'highest-ranked' text",
                               choices=KEEP_CHOICES, group=SSNET)
    memory_weights: str = setting(
        "ones", "prototype weights in the separation loss: ones = official code (each learned weight is divided "
                "by itself, so the memory selectors never learn); learned = the paper's learned weights, rescaled "
                "to mean 1", choices=MEMORY_WEIGHTS, group=SSNET)
    # Mean Teacher / UA-MT
    ema_decay: float = setting(0.99, "teacher EMA decay (mean_teacher, ua_mt, bcp)", group=TEACHERS)
