"""Exponential-moving-average teachers (Tarvainen & Valpola, NeurIPS 2017), shared by Mean Teacher and UA-MT."""
from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A copy of the student on the same device that gets no gradient; it changes only through `ema_update`.

    It stays in training mode (dropout on, BN with batch statistics updating its own running statistics), as
    the public recipes run their EMA model.
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.train()


def ema_decay_at(step: int, decay: float) -> float:
    """min(1 - 1/(step + 1), decay): step 0 copies the student, then the average lengthens up to `decay`."""
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, step: int) -> float:
    """teacher <- a teacher + (1 - a) student for every parameter, a = ema_decay_at(step, decay); returns a.

    Only parameters are averaged (as the recipes); the teacher's BN buffers come from its own forwards.
    """
    alpha = ema_decay_at(step, decay)
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(alpha).add_(s.detach(), alpha=1.0 - alpha)
    return alpha


def cpu_state(obj):
    """Deep copy of a (nested) state dict with every tensor detached and on the CPU (checkpoint-safe)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: cpu_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_state(v) for v in obj)
    return obj


@torch.no_grad()
def ema_update_constant(teacher: nn.Module, student: nn.Module, decay: float, buffers: bool = False) -> None:
    """teacher <- decay x teacher + (1 - decay) x student with a fixed decay (no warm-up), as BCP's scripts.

    buffers: average the buffers too (BN statistics; an integer buffer such as num_batches_tracked gets the average
    truncated, as loading the averaged state dict does in BCP's ACDC script), else the parameters only.
    """
    pairs = list(zip(teacher.parameters(), student.parameters(), strict=True))
    if buffers:
        pairs += list(zip(teacher.buffers(), student.buffers(), strict=True))
    for t, s in pairs:
        t.copy_(t * decay + (1 - decay) * s.detach())
