"""Labeled-only baseline: the lower bound (few labels) or upper bound (all labels) of the paper's tables."""
from __future__ import annotations

from methods.base import Batch, Method, MethodOutput


class Supervised(Method):
    name = "supervised"
    uses_unlabeled = False

    def training_loss(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> MethodOutput:
        logits = self.network(labeled.image).logits
        loss, terms = self.supervised_loss(logits, labeled.label)
        return MethodOutput(loss, {"total": loss.detach(), **terms}, logits.detach())
