"""The contract between the trainer loop and a training method.

A method is an `nn.Module` that owns the network and every module it runs besides it (SS-Net's heads, a teacher,
a discriminator). The trainer calls it once per iteration,

    output = method(labeled, unlabeled, step)    # MethodOutput(loss, terms, labeled_logits, monitors)

and then backpropagates `output.loss`. `step` (a StepContext) is everything the step may call outside the method:
the iteration, the memory-saving backward of the trainer's precision (--low_memory 1), and the collectives of a
torchrun job; nothing is set on a method from outside. Under torchrun DistributedDataParallel wraps the method
itself. The trainer (optimiser, schedule, logging, evaluation, checkpoints) knows no method by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods.ema import cpu_state
from methods.recipe import Recipe
from methods.settings import MethodSettings
from utils.errors import UserError
from utils.losses import dice_loss
from utils.ramps import consistency_weight


@dataclass
class Batch:
    image: Tensor  # (B, C_in, *spatial)
    label: Tensor | None  # (B, *spatial) int64; None for unlabeled data, so no method can peek
    case: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.image.shape[0]


class MethodOutput(NamedTuple):
    loss: Tensor
    terms: dict[str, Tensor]  # detached loss terms: TensorBoard loss/<name>, one line per iteration in log.txt
    labeled_logits: Tensor | None = None  # detached, for image panels
    monitors: Mapping[str, Tensor] = MappingProxyType({})  # detached non-loss scalars: TensorBoard train/<name>


def _rows_of_this_process(rows: Tensor) -> Tensor:
    return rows


def _gradients_of_this_process(parameters: Iterable[nn.Parameter]) -> None:
    return None


Backward = Callable[..., None]  # backward(part, gradient=None, also=()): training.precision.Precision.backward


@dataclass(frozen=True)
class StepContext:
    """What one training step may call besides its own modules; the defaults are those of one process.

    backward: None = `MethodOutput.loss` carries the graph of the whole loss, for the trainer's one backward (the
        official order). Otherwise (--low_memory 1) `backward(part, gradient, also=[(tensor, gradient), ...])`
        backpropagates a part of the loss now, seeded with `gradient` (the precision's loss scale applied), so a
        method whose loss has parts on separate graphs (SS-Net: the main pass, the VAT passes) may free each part's
        activations as soon as it is complete; the returned loss then keeps the total's value and the graph of the
        rest only. Under torchrun such parts run inside DDP's forward, where DDP does not average them: the method
        averages their gradients with `average_gradients`.
    gather_across_ranks: rows (N, ...) of every rank concatenated in rank order (torchrun); in one process the
        rows themselves. For state that must agree on every rank (SS-Net's prototype memory).
    average_gradients: average the `.grad` of these parameters over ranks (torchrun); a no-op in one process.
    """

    iteration: int  # 1-based
    backward: Backward | None = None
    gather_across_ranks: Callable[[Tensor], Tensor] = _rows_of_this_process
    average_gradients: Callable[[Iterable[nn.Parameter]], None] = _gradients_of_this_process

    @property
    def saves_memory(self) -> bool:
        return self.backward is not None

    def at(self, iteration: int) -> StepContext:
        return replace(self, iteration=iteration)


class Method(nn.Module):
    """One training algorithm: `forward(labeled, unlabeled, step) -> MethodOutput`; the rest are optional hooks.

    * `network_options(spatial_dims)`: constructor options the network needs (e.g. {"sdf_head": True}); the config
      merges them into `network_kwargs`, so config.json and checkpoints rebuild the right network.
    * `recipes[spatial_dims]` (3 = LA-like, 2 = ACDC-like): what the authors' code does (methods/recipe.py).
    * `trained_with_network`: names of submodules the trainer's optimiser trains with the network (SS-Net's heads).
      Other submodules are a teacher (no gradient) or have their own optimiser (SASSNet's discriminator).
    * `after_optimizer_step(step)`: right after the trainer's `optimizer.step()` (EMA teachers, discriminators).
    * `method_state()` / `load_method_state()`: the checkpoint's `method_state`: every submodule but the network
      (its own state dict) plus `extra_state()`, tensors and plain Python only.
    * `stages`: ("pretrain", "train") for a method with a first stage (BCP): `settings.stage` tells the method which
      one a run trains; training/stages.py runs `--pretrain_iterations` of the first, then the second from its best.
    * `leaves_parameters_unused`: True when a step may give some trained parameter no gradient (DDP must then
      search for them every iteration).
    * `supervised_weight` scales the supervised part of the loss: 1 in training; the contract tests set 0 to
      check that the unlabeled term alone moves the student.
    """

    name: ClassVar[str] = "base"
    uses_unlabeled: ClassVar[bool] = True  # False: the trainer draws labeled-only batches
    recipes: ClassVar[dict[int, Recipe]] = {}  # per spatial dims; empty = SS-Net's settings of the dataset
    trained_with_network: ClassVar[tuple[str, ...]] = ()
    stages: ClassVar[tuple[str, ...]] = ("train",)  # ("pretrain", "train"): a first stage (BCP), training/stages.py
    leaves_parameters_unused: ClassVar[bool] = False
    supervised_weight: float = 1.0

    def __init__(self, network: nn.Module, settings: MethodSettings):
        super().__init__()
        self._check_network_options(network)
        self.network = network
        self.settings = settings

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        raise NotImplementedError

    @classmethod
    def network_options(cls, spatial_dims: int) -> dict:
        return {}

    @classmethod
    def recipe(cls, spatial_dims: int) -> Recipe | None:
        return cls.recipes.get(spatial_dims)

    def _check_network_options(self, network: nn.Module) -> None:
        needed = self.network_options(network.spatial_dims)
        built = network.network_kwargs()
        wrong = {k: v for k, v in needed.items() if built.get(k) != v}
        if wrong:
            options = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
            raise UserError(f"method {self.name} needs a network built with {options}; build it with "
                            f"build_network(name, **kwargs, **{type(self).__name__}.network_options(dims)) "
                            f"(train_la.py / train_acdc.py do this)")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    # -- what the trainer trains, syncs and saves ------------------------------------------------------------------
    def trained_modules(self) -> list[nn.Module]:
        """The network, then the modules the trainer's optimiser trains with it."""
        return [self.network, *(getattr(self, name) for name in self.trained_with_network)]

    def trained_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """What the trainer's optimiser trains, by each module's own parameter names (the network's, then those of
        `trained_with_network`): the names resume checkpoints index the optimiser state with."""
        for module in self.trained_modules():
            yield from module.named_parameters()

    def method_state(self) -> dict:
        """Everything besides the network's weights that a checkpoint needs to resume exactly."""
        modules = {name: cpu_state(child.state_dict()) for name, child in self.named_children() if name != "network"}
        return {**modules, **self.extra_state()}

    def load_method_state(self, state: dict) -> None:
        for name, child in self.named_children():
            if name != "network" and name in state:
                child.load_state_dict(state[name])
        self.load_extra_state(state)

    def extra_state(self) -> dict:
        """State that lives outside submodules (SS-Net's prototype memory, another optimiser); {} by default."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def after_optimizer_step(self, step: StepContext) -> None:
        """Called by the trainer right after optimizer.step() of `step.iteration`; no-op by default."""

    # -- the pieces every method's loss is made of -----------------------------------------------------------------
    def require_unlabeled(self, unlabeled: Batch | None) -> Batch:
        if unlabeled is None or len(unlabeled) == 0:
            raise UserError(f"{self.name} needs unlabeled data in every batch (--batch_size > --labeled_bs)")
        return unlabeled

    def labeled_then_unlabeled(self, labeled: Batch, unlabeled: Batch | None) -> Tensor:
        """The images of both batches in one tensor, labeled first: one forward for both, as every recipe."""
        return torch.cat([labeled.image, self.require_unlabeled(unlabeled).image])

    def recipe_counter(self, iteration: int) -> int:
        """The trainer's 1-based `iteration` as the recipe's script counts it when it evaluates its ramps."""
        return iteration - 1 if self.settings.rampup_zero_based else iteration

    def warmup_weight(self, iteration: int) -> float:
        """w(t) of the unlabeled terms at the trainer's 1-based `iteration`, on the counter the recipe uses."""
        s = self.settings
        return consistency_weight(self.recipe_counter(iteration), s.consistency, s.consistency_rampup)

    def dice_and_ce(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The recipe's soft Dice (settings.dice_*) and the cross-entropy, both with gradient."""
        s = self.settings
        dice = dice_loss(torch.softmax(logits, dim=1), labels, include_background=s.dice_include_background,
                         squared_denominator=s.dice_squared_denominator, smooth=s.dice_smooth)
        return dice, F.cross_entropy(logits, labels)

    def supervised_loss(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Dice (+ ce_weight x cross-entropy) on the labeled part; CE is always logged."""
        s = self.settings
        dice, ce = self.dice_and_ce(logits, labels)
        loss = dice + s.ce_weight * ce if s.ce_weight else dice
        return loss, {"dice": dice.detach(), "ce": ce.detach()}

    def weighted_loss(self, supervised: Tensor, unlabeled_term: Tensor, weight: float) -> Tensor:
        """The semi-supervised objective of every method here: supervised + w(t) x (its unlabeled term)."""
        return self.supervised_weight * supervised + weight * unlabeled_term

    def output(self, loss: Tensor, labeled_logits: Tensor, terms: Mapping[str, Tensor],
               weight: float | None = None, monitors: Mapping[str, Tensor] | None = None) -> MethodOutput:
        """The MethodOutput of a step: `total` first, then `terms`, all detached; w(t) as the monitor
        `consistency_weight` when given, then `monitors`."""
        logged = {"total": loss.detach(), **{name: value.detach() for name, value in terms.items()}}
        shown = {} if weight is None else {"consistency_weight": torch.tensor(weight)}
        shown.update(monitors or {})
        return MethodOutput(loss, logged, labeled_logits.detach(), shown)

