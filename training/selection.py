"""Checkpoint selection during training: which lists are scored when, and the best score so far on each."""
from __future__ import annotations

from collections.abc import Callable

from evaluation.evaluate import Evaluation, evaluate_cases
from inference import Predictor

from .checkpoints import Best
from .config import TrainConfig


def selection_lists(config: TrainConfig, split) -> dict[str, list[str]]:
    """The lists that choose checkpoints: --select (best_model.pth) first, then --track ones."""
    names = [n for n in [config.select, *config.track] if n != "last"]
    available = {"val": split.val, "test": split.test}
    return {name: available[name] for name in dict.fromkeys(names)}


class Selector:
    """Scores the network on every selection list at the evaluation iterations and keeps the best so far.

    `shard` runs an evaluation over a list of case ids; under torchrun each rank scores its share of the cases
    and the result holds every case (training/distributed.py), in one process it is a plain call.
    """

    def __init__(self, config: TrainConfig, lists: dict[str, list[str]], bests: dict[str, Best],
                 predictor: Predictor, root: str,
                 shard: Callable[[Callable[[list[str]], Evaluation], list[str]], Evaluation]):
        self.config = config
        self.lists = lists
        self.bests = bests
        self.predictor = predictor
        self.root = root
        self.shard = shard

    def due(self, iteration: int) -> bool:
        c = self.config
        return bool(self.lists) and iteration >= c.eval_start and iteration % c.eval_every == 0

    def evaluate(self, iteration: int) -> list[tuple[Best, float]]:
        """(best record, score) per list, in list order; a record whose score improved holds the new best."""
        scores = []
        for name, ids in self.lists.items():
            description = f"{name} @ {iteration}"
            result = self.shard(lambda shard, d=description: evaluate_cases(
                self.predictor, self.root, shard, full_metrics=False, description=d), ids)
            score, best = result.mean_dice(), self.bests[name]
            if score > best.score:
                best.score, best.iteration = score, iteration
            scores.append((best, score))
        return scores
