"""The optimiser of every method: the official SGD, its LR schedule, gradients zeroed as PyTorch 1.8 did."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from utils.ramps import learning_rate

from .config import OPTIMIZER_IMPLS, TrainConfig


def build_sgd(params: Iterable[nn.Parameter], lr: float, impl: str = "default", momentum: float = 0.9,
              weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The official SGD; impl picks PyTorch's kernel: default (PyTorch's choice: foreach on CUDA), foreach
    (one multi-tensor kernel per op) or fused (one kernel for the whole update)."""
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"unknown optimizer implementation {impl!r}; choose from: {', '.join(OPTIMIZER_IMPLS)}")
    kwargs = {"foreach": True} if impl == "foreach" else {"fused": True} if impl == "fused" else {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kwargs)


def zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Zero the gradients in place, as PyTorch 1.8's `zero_grad()` did for the official scripts.

    A parameter that has had a gradient keeps a zero one, so SGD's momentum and weight decay keep moving it in
    iterations that leave it unused (a class absent from SS-Net's batch, its heads before the memory fills);
    with `set_to_none=True` (PyTorch >= 2.0) such a parameter would stand still instead."""
    optimizer.zero_grad(set_to_none=False)


def restore_zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """After a resume: the zero gradients an uninterrupted run would hold. A parameter has one exactly when it
    has been stepped before, i.e. when SGD keeps a momentum buffer for it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and optimizer.state.get(p, {}).get("momentum_buffer") is not None:
                p.grad = torch.zeros_like(p)


def set_learning_rate(optimizer: torch.optim.Optimizer, iteration: int, config: TrainConfig) -> float:
    """The LR in force after the optimiser step of `iteration` (1-based), as the recipe's script sets it."""
    lr = learning_rate(iteration, config.base_lr, config.lr_policy, config.lr_step, config.max_iteration)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
