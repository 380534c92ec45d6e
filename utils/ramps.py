"""Warm-up weights and learning-rate schedules of the official SS-Net scripts (docs/method.md §3.8)."""
from __future__ import annotations

import math


def sigmoid_rampup(current: float, rampup_length: float) -> float:
    """Laine & Aila's ramp exp(-5 (1 - x/L)^2) for x clipped to [0, L]; 1 when L == 0."""
    if rampup_length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), rampup_length) / rampup_length
    return float(math.exp(-5.0 * phase * phase))


def consistency_weight(
    iteration: int, max_weight: float, rampup_epochs: float, iterations_per_epoch: int = 150
) -> float:
    """w(t) = max_weight * ramp(t // 150, L): the official code feeds the ramp an 'epoch' of 150 iterations."""
    return max_weight * sigmoid_rampup(iteration // iterations_per_epoch, rampup_epochs)


def step_learning_rate(iteration: int, base_lr: float, step_iterations: int, gamma: float = 0.1) -> float:
    """LR in force after the optimiser step of `iteration` (1-based).

    LA: x0.1 every 2,500 iterations, so iterations 1-2500 use base_lr, 2501-5000 base_lr/10, ...
    step_iterations == 0 means constant (ACDC).
    """
    if step_iterations <= 0:
        return base_lr
    return base_lr * gamma ** (iteration // step_iterations)


def learning_rate(iteration: int, base_lr: float, policy: str, step_iterations: int = 0,
                  max_iterations: int = 0, gamma: float = 0.1, power: float = 0.9) -> float:
    """LR in force after the optimiser step of `iteration` (1-based), as each official script computes it.

    step: base_lr * gamma ** (t // step_iterations) (the LA scripts decay after the step of t % 2500 == 0);
    poly: base_lr * (1 - (t - 1) / T) ** power (SSL4MIS computes it after the step from its counter before the
    increment, so iterations 1 and 2 both run at base_lr); constant: base_lr.
    """
    if policy == "constant":
        return base_lr
    if policy == "step":
        return step_learning_rate(iteration, base_lr, step_iterations, gamma)
    if policy == "poly":
        if max_iterations < 1:
            raise ValueError("the poly LR policy needs the run length (max_iterations >= 1)")
        return base_lr * max(0.0, 1.0 - max(iteration - 1, 0) / max_iterations) ** power
    raise ValueError(f"unknown LR policy {policy!r}; choose from: step, poly, constant")
