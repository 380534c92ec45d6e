"""Labeled-only baseline: the lower bound (few labels) or upper bound (all labels) of the paper's tables."""
from __future__ import annotations

from methods.base import Batch, Method, MethodOutput, StepContext


class Supervised(Method):
    name = "supervised"
    uses_unlabeled = False

    def forward(self, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
        logits = self.network(labeled.image).logits
        loss, terms = self.supervised_loss(logits, labeled.label)
        return self.output(loss, logits, terms)
