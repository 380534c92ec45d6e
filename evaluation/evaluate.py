"""Predict a list of stored cases and score them: shared by in-training selection and the test scripts."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from inference import Predictor
from utils.metrics import case_metrics, dice_score
from utils.progress import progress_bar


@dataclass
class CaseResult:
    case: str
    rows: list[dict]  # one per foreground class
    prediction: np.ndarray | None = None


@dataclass
class Evaluation:
    cases: list[CaseResult] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [{"case": c.case, **row} for c in self.cases for row in c.rows]

    def mean_dice(self) -> float:
        """Mean over cases of the mean Dice over foreground classes (the selection criterion of both scripts)."""
        per_case = [np.mean([r["dice"] for r in c.rows]) for c in self.cases]
        return float(np.mean(per_case)) if per_case else float("nan")


@torch.no_grad()
def evaluate_cases(
    predictor: Predictor,
    root: str | Path,
    case_ids: Iterable[str],
    *,
    full_metrics: bool = True,
    spacing: tuple[float, ...] | None = None,
    empty_policy: str = "official",
    keep_predictions: bool = False,
    progress: bool = False,
    description: str = "evaluating",
) -> Evaluation:
    """Predict every case (network in eval mode, restored after) and score each foreground class.

    full_metrics=False computes Dice only (cheap; used for checkpoint selection during training).
    """
    network = predictor.network
    was_training = network.training
    network.eval()
    classes = list(range(1, predictor.num_classes))
    result = Evaluation()
    case_ids = list(case_ids)
    try:
        for case_id in progress_bar(case_ids, enabled=progress, desc=description, leave=False):
            image, label = predictor.dataset.load_case(root, case_id)
            prediction = predictor.predict_stored(image)
            if full_metrics:
                rows = case_metrics(prediction, label, classes, spacing=spacing, empty_policy=empty_policy)
            else:
                rows = [{"class": c, "dice": dice_score(prediction == c, label == c)} for c in classes]
            result.cases.append(CaseResult(case_id, rows, prediction if keep_predictions else None))
    finally:
        network.train(was_training)
    return result
