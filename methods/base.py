"""The contract between the trainer loop and a training method.

A method turns one labeled and one unlabeled batch into a loss, a dict of detached loss terms and a dict of
detached monitors for logging. The trainer (optimiser, schedule, logging, evaluation, checkpoints) knows no
method by name.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


@dataclass
class MethodOutput:
    loss: Tensor
    terms: dict[str, Tensor]  # detached loss terms: TensorBoard loss/<name>, one line per iteration in log.txt
    labeled_logits: Tensor | None = None  # detached, for image panels
    monitors: dict[str, Tensor] = field(default_factory=dict)  # detached non-loss scalars: TensorBoard train/<name>


class Method:
    """One training algorithm. Subclasses implement `training_loss`; the rest are optional hooks.

    Contract with the trainer and the config:
    * `network_options(spatial_dims)`: constructor options the network needs (e.g. {"sdf_head": True}); the
      config merges them into `network_kwargs`, so config.json and checkpoints rebuild the right network.
    * `recipes[spatial_dims]` (3 = LA-like, 2 = ACDC-like): what the authors' code does (methods/recipe.py):
      loss weight, schedule, Dice variant, each value cited in the docstring; no entry = SS-Net's settings.
    * `extra_modules`: modules the method trains together with the network by the same optimiser (SS-Net's
      heads); `parameters()` = the network's, then theirs. Their weights travel in `state_dict()`.
    * `after_optimizer_step(iteration)`: called by the trainer right after `optimizer.step()` (EMA teachers,
      SASSNet's discriminator step).
    * `state_dict()` / `load_state_dict()`: everything else needed to resume exactly (extra modules, teacher
      weights and buffers, other optimisers, counters), tensors and plain Python only.
    * `leaves_parameters_unused`: True when a step may give some trained parameter no gradient (DDP must then
      search for them every iteration).
    * `gather_across_ranks` / `average_gradients`: identity / no-op in one process; under torchrun the trainer
      sets the collective versions (training/distributed.py) for state that must agree on every rank.
    * `supervised_weight` scales the supervised part of the loss: 1 in training; the contract tests set 0 to
      check that the unlabeled term alone moves the student.
    * `backward_early`: None (the default, and for every direct caller) = `MethodOutput.loss` carries the graph
      of the whole loss, for one backward. The trainer sets it (--low_memory 1) to its precision-aware backward,
      `backward_early(part, [(tensor, gradient), ...])`: a method whose loss has parts on separate graphs
      (SS-Net: the main pass, the VAT passes) may then backpropagate a part as soon as it is complete, freeing
      its activations, and return a `loss` with the total's value whose graph holds only the rest. The
      trainer zeroes the gradients before the step's forward. Under torchrun such parts run inside DDP's
      forward, where DDP does not average them: the method averages them with `average_gradients`.
    """

    name = "base"
    uses_unlabeled = True  # False: the trainer draws labeled-only batches
    recipes: dict[int, Recipe] = {}  # per spatial dims; empty = SS-Net's settings of the dataset
    supervised_weight: float = 1.0
    leaves_parameters_unused = False
    backward_early: Callable[..., None] | None = None

    def __init__(self, network: nn.Module, settings: MethodSettings):
        self.network = network
        self.settings = settings
        self.extra_modules: dict[str, nn.Module] = {}
        if network is not None:
            self._check_network_options(network)

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

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """What the optimiser trains, by name: the network's parameters, then those of the extra modules."""
        yield from self.network.named_parameters()
        for module in self.extra_modules.values():
            yield from module.named_parameters()

    def parameters(self) -> Iterator[nn.Parameter]:
        return (p for _, p in self.named_parameters())

    def train(self, mode: bool = True) -> Method:
        self.network.train(mode)
        for module in self.extra_modules.values():
            module.train(mode)
        return self

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Called by the trainer right after optimizer.step() of `iteration` (1-based); no-op by default."""

    def recipe_counter(self, iteration: int) -> int:
        """The trainer's 1-based `iteration` as the recipe's script counts it when it evaluates its ramps."""
        return iteration - 1 if self.settings.rampup_zero_based else iteration

    def warmup_weight(self, iteration: int) -> float:
        """w(t) of the unlabeled terms at the trainer's 1-based `iteration`, on the counter the recipe uses."""
        s = self.settings
        return consistency_weight(self.recipe_counter(iteration), s.consistency, s.consistency_rampup)

    def require_unlabeled(self, unlabeled: Batch | None) -> Batch:
        if unlabeled is None or len(unlabeled) == 0:
            raise UserError(f"{self.name} needs unlabeled data in every batch (--batch_size > --labeled_bs)")
        return unlabeled

    def dice_and_ce(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The recipe's soft Dice (settings.dice_*) and the cross-entropy, both with gradient."""
        s = self.settings
        dice = dice_loss(
            torch.softmax(logits, dim=1),
            labels,
            include_background=s.dice_include_background,
            squared_denominator=s.dice_squared_denominator,
            smooth=s.dice_smooth,
        )
        return dice, F.cross_entropy(logits, labels)

    def supervised_loss(self, logits: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Dice (+ ce_weight x cross-entropy) on the labeled part; CE is always logged."""
        s = self.settings
        dice, ce = self.dice_and_ce(logits, labels)
        loss = dice + s.ce_weight * ce if s.ce_weight else dice
        return loss, {"dice": dice.detach(), "ce": ce.detach()}

    # Cross-process hooks: training/distributed.py replaces them under torchrun; in one process they do nothing.
    @staticmethod
    def gather_across_ranks(rows: Tensor) -> Tensor:
        """Rows (N, ...) of every rank concatenated in rank order; in one process `rows` itself."""
        return rows

    @staticmethod
    def average_gradients(parameters) -> None:
        """Average .grad of modules the method trains outside the network's step (own optimiser) over ranks."""

    # Extra state that a checkpoint must carry to resume (e.g. SS-Net's heads and memory, a teacher).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def load_legacy_network_keys(self, head_state: dict[str, Tensor]) -> None:
        """Network-state keys of a checkpoint written when every network carried SS-Net's heads: only SS-Net
        uses them (its heads); for every other method they were never trained and are dropped."""
