"""Mixed-precision regions shared by training and inference: `autocast(mode, device)`.

"off" (the default) is plain fp32, the paper's math: no autocast region. "bf16" / "fp16" run convolutions and
matmuls in the reduced dtype; the training side (loss scaling, skipped steps) is training/precision.py.
"""
from __future__ import annotations

import contextlib

import torch

from utils.choices import unknown_choice

PRECISION_MODES = ("off", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision_mode(mode: str) -> str:
    if mode not in PRECISION_MODES:
        raise unknown_choice("--amp mode", mode, PRECISION_MODES)
    return mode


def autocast(mode: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """Region whose convolutions/matmuls run in the reduced dtype; a no-op context for mode "off"."""
    check_precision_mode(mode)
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[mode])
