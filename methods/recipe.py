"""Training recipes: the schedule, loss weight and Dice variant of each method, as its authors' code runs it.

A `Recipe` belongs to a method and a dimensionality (3 = LA-like V-Net, 2 = ACDC-like U-Net). `--schedule recipe`
(the default) trains a method with its recipe's schedule; `--schedule shared` with SS-Net's schedule of the
dataset, for a controlled comparison. The loss weight and the Dice variant are part of the method in both cases.
Flags given on the command line (`--max_iteration`, `--lr_policy`, ...) override either.

Counters. Every official script counts iterations from 0 and increments once per step; some evaluate w(t) (and
UA-MT's threshold) before the increment (0-based), some after (1-based). The LR policies follow their scripts
too: "step" decays after the step of iteration t when t % lr_step == 0 (LA scripts, after the increment), "poly"
is computed after the step from the counter before the increment (SSL4MIS), see `utils/ramps.learning_rate`.
"""
from __future__ import annotations

from dataclasses import dataclass

LR_POLICIES = ("step", "poly", "constant")
SCHEDULE_CHOICES = ("recipe", "shared")


@dataclass(frozen=True)
class Dice:
    """The soft Dice of a recipe: mean over classes of 1 - (2 sum p g + smooth) / (sum p^q + sum g^q + smooth)."""

    include_background: bool
    squared_denominator: bool  # q = 2 (sum of squares) or 1 (plain sums)
    smooth: float

    def describe(self) -> str:
        classes = "all classes" if self.include_background else "foreground"
        return f"{classes}, {'squared' if self.squared_denominator else 'plain'} sums, smooth {self.smooth:g}"


@dataclass(frozen=True)
class Schedule:
    """Iterations, learning-rate policy and warm-up of one recipe (SGD 0.01, momentum 0.9, wd 1e-4 in all)."""

    max_iteration: int
    lr_policy: str  # step | poly | constant
    consistency_rampup: float  # warm-up length in 'epochs' of 150 iterations
    rampup_zero_based: bool  # w(t) sees the counter before the script increments it
    lr_step: int = 0  # step policy: x0.1 every lr_step iterations
    consistency_off: int = 0  # first iterations in which the unlabeled term is 0 (SSL4MIS Mean Teacher 2-D)
    pretrain_iterations: int = 0  # a first stage of that many iterations at constant LR (BCP), 0 = none

    def __post_init__(self) -> None:
        if self.lr_policy not in LR_POLICIES:
            raise ValueError(f"unknown LR policy {self.lr_policy!r}; choose from: {', '.join(LR_POLICIES)}")

    def describe(self) -> str:
        lr = {"step": f"LR x0.1 every {self.lr_step:,}", "poly": "poly LR (1 - t/T)^0.9",
              "constant": "constant LR"}[self.lr_policy]
        off = f", unlabeled term off for the first {self.consistency_off:,}" if self.consistency_off else ""
        pre = (f"pre-train {self.pretrain_iterations:,} iterations (constant LR), then "
               if self.pretrain_iterations else "")
        return (f"{pre}{self.max_iteration:,} iterations, {lr}, ramp {self.consistency_rampup:g} x 150 "
                f"({'0' if self.rampup_zero_based else '1'}-based){off}")


@dataclass(frozen=True)
class Recipe:
    """What a method's authors' code does for one dimensionality; None fields fall back to SS-Net's setting."""

    source: str  # repository @ commit and script
    lines: str  # where each value stands in the source (line numbers of that commit)
    consistency: float  # maximum weight of the unlabeled term
    schedule: Schedule | None = None  # None: SS-Net's schedule of the dataset (no authors' schedule to follow)
    dice: Dice | None = None  # None: SS-Net's Dice of the dataset
    consistency_by_labelnum: tuple[tuple[int, float], ...] = ()  # (at most N labeled, weight), first match wins
    batch: tuple[int, int] | None = None  # (batch_size, labeled_bs) of the authors' script; None: the preset's
    note: str = ""  # where there is no authors' recipe: what is used instead, and why

    def weight(self, labelnum: int | None = None) -> float:
        if labelnum is not None:
            for at_most, weight in self.consistency_by_labelnum:
                if labelnum <= at_most:
                    return weight
        return self.consistency


# SS-Net's own settings (ycwu1997/SS-Net c0a8bf6): also the `shared` schedule of every baseline.
# train_ss_3d.py:26 (15,000), :36 (ramp 40), :163-175 (w after the increment), :232-235 (x0.1 every 2,500)
SSNET_LA_SCHEDULE = Schedule(15000, "step", 40.0, rampup_zero_based=False, lr_step=2500)
# train_ss_2d.py:29 (30,000), :42 (ramp 200), :93 (no LR change anywhere), :165-172 (w before the increment)
SSNET_ACDC_SCHEDULE = Schedule(30000, "constant", 200.0, rampup_zero_based=True)
SSNET_LA_DICE = Dice(include_background=False, squared_denominator=False, smooth=1e-8)  # utils/losses.py:44-48
SSNET_ACDC_DICE = Dice(include_background=True, squared_denominator=True, smooth=1e-10)  # utils/losses.py:19-42

# Recurring values of the baselines' code bases.
UAMT_LA_SCHEDULE = Schedule(6000, "step", 40.0, rampup_zero_based=True, lr_step=2500)
UAMT_LA_DICE = Dice(include_background=False, squared_denominator=True, smooth=1e-5)  # UA-MT utils/losses.py:5-13
SSL4MIS_2D_SCHEDULE = Schedule(30000, "poly", 200.0, rampup_zero_based=True)
SSL4MIS_DICE = Dice(include_background=True, squared_denominator=True, smooth=1e-5)  # SSL4MIS utils/losses.py:156-192


def recipe_markdown(methods: dict, shared: dict[int, tuple[Schedule, Dice, float]]) -> str:
    """The recipe table of docs/baselines.md: one row per method and dimensionality (3 = LA, 2 = ACDC).

    `shared[dims]` = (SS-Net's schedule, Dice and warm-up weight) of the LA / ACDC preset: what a method without a
    recipe value uses.
    """
    rows = ["| method | data | source | schedule (`--schedule recipe`) | λ | Dice | where / note |",
            "|---|---|---|---|---|---|---|"]
    for name, cls in methods.items():
        for dims, data in ((3, "LA"), (2, "ACDC")):
            schedule, dice, weight = shared[dims]
            recipe = cls.recipe(dims)
            if recipe is None:
                rows.append(f"| `{name}` | {data} | none (labeled-only) | SS-Net's: {schedule.describe()} | — | "
                            f"SS-Net's: {dice.describe()} | no recipe: SS-Net's schedule and Dice |")
                continue
            own = recipe.schedule is not None
            weights = ", ".join([f"{recipe.consistency:g}"] + [f"{w:g} if ≤ {n} labeled"
                                                               for n, w in recipe.consistency_by_labelnum])
            where = "; ".join(x for x in (recipe.lines, recipe.note) if x)
            batch = f", batch {recipe.batch[0]} ({recipe.batch[1]} labeled)" if recipe.batch else ""
            rows.append(f"| `{name}` | {data} | {recipe.source} | "
                        f"{'' if own else 'SS-Net`s: '}{(recipe.schedule or schedule).describe()}{batch} | {weights} | "
                        f"{(recipe.dice or dice).describe()} | {where} |")
    return "\n".join(rows).replace("SS-Net`s", "SS-Net's")
