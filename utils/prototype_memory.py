"""SS-Net's per-class prototype memory (docs/method.md §3.6)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

KEEP_CHOICES = ("lowest", "highest")


class PrototypeMemory:
    """At most `size` projected feature vectors per class, replaced by the current batch's candidates.

    Official behaviour (the default): each class present among the candidates has its memory overwritten
    (no running bank); when there are more than `size` candidates they are ranked by the class selector and
    the `size` LOWEST-scored are kept (keep="lowest"); the paper says highest-ranked (keep="highest").
    Classes absent from the batch keep their previous, stale entries. Stored without gradient.
    """

    def __init__(self, num_classes: int, size: int = 32, keep: str = "lowest"):
        if keep not in KEEP_CHOICES:
            raise ValueError(f"unknown memory ranking {keep!r}; choose from: {', '.join(KEEP_CHOICES)}")
        if size < 1:
            raise ValueError(f"prototype memory size must be >= 1, got {size}")
        self.num_classes = num_classes
        self.size = size
        self.keep = keep
        self.prototypes: list[Tensor | None] = [None] * num_classes

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor, score: Callable[[int, Tensor], Tensor]) -> None:
        """features (N, d) candidates, labels (N,) their classes; score(c, feats) -> (n,) ranking scores."""
        for c in labels.unique().tolist():
            candidates = features[labels == c].detach()
            if candidates.shape[0] > self.size:
                scores = score(c, candidates).reshape(-1)
                order = torch.argsort(scores, descending=self.keep == "highest", stable=True)
                candidates = candidates[order[: self.size]]
            self.prototypes[int(c)] = candidates.clone()

    def counts(self) -> list[int]:
        return [0 if p is None else int(p.shape[0]) for p in self.prototypes]

    def state_dict(self) -> dict:
        prototypes = [None if p is None else p.cpu() for p in self.prototypes]
        return {"size": self.size, "keep": self.keep, "prototypes": prototypes}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        if len(state["prototypes"]) != self.num_classes:
            raise ValueError(
                f"prototype memory holds {len(state['prototypes'])} classes, this run has {self.num_classes}"
            )
        self.size, self.keep = state["size"], state["keep"]
        self.prototypes = [None if p is None else p.to(device) for p in state["prototypes"]]
