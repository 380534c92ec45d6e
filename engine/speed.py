"""Opt-in speed options that leave the math unchanged: memory format, torch.compile, optimizer kernels.

None of them is on by default; `--amp` (engine/precision.py) is the only one that changes arithmetic.
cuDNN autotuning follows `--deterministic` (engine/trainer.configure_determinism: benchmark = not deterministic).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZER_IMPLS = ("default", "foreach", "fused")


def channels_last_format(spatial_dims: int) -> torch.memory_format:
    """NDHWC for 3-D, NHWC for 2-D convolutions (what cuDNN's tensor-core kernels read without transposes)."""
    if spatial_dims == 3:
        return torch.channels_last_3d
    if spatial_dims == 2:
        return torch.channels_last
    raise ValueError(f"channels-last needs a 2-D or 3-D network, got spatial_dims={spatial_dims}")


def _input_to_format(memory_format: torch.memory_format, ndim: int):
    def hook(module: nn.Module, args: tuple):
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == ndim:
            return (args[0].contiguous(memory_format=memory_format), *args[1:])
        return None
    return hook


def use_channels_last(network: nn.Module) -> nn.Module:
    """Store the conv weights channels-last and convert every input of `network(x)` too (a forward pre-hook),
    so callers (methods, sliding window) need no change. Same values; only the memory layout differs."""
    spatial_dims = int(network.spatial_dims)
    memory_format = channels_last_format(spatial_dims)
    network.to(memory_format=memory_format)
    network.register_forward_pre_hook(_input_to_format(memory_format, spatial_dims + 2))
    return network


def compile_network(network: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile the forward in place (`nn.Module.compile`), so parameter names, checkpoints and the
    SS-Net heads the methods call directly (project, predict, selectors) stay those of the plain module."""
    network.compile(backend=backend, dynamic=False)
    return network


def prepare_network(network: nn.Module, *, channels_last: bool = False, compile: bool = False,
                    compile_backend: str = "inductor") -> nn.Module:
    """Apply the opt-in options to a network already on its device (channels-last before compiling)."""
    if channels_last:
        use_channels_last(network)
    if compile:
        compile_network(network, compile_backend)
    return network


def build_sgd(params: Iterable[nn.Parameter], lr: float, impl: str = "default", momentum: float = 0.9,
              weight_decay: float = 1e-4) -> torch.optim.SGD:
    """The official SGD; impl picks PyTorch's kernel: default (PyTorch's choice: foreach on CUDA), foreach
    (one multi-tensor kernel per op) or fused (one kernel for the whole update)."""
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"unknown optimizer implementation {impl!r}; choose from: {', '.join(OPTIMIZER_IMPLS)}")
    kwargs = {"foreach": True} if impl == "foreach" else {"fused": True} if impl == "fused" else {}
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **kwargs)
