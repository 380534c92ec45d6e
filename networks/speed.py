"""Opt-in speed options of a network that leave the math unchanged: memory format and torch.compile.

None of them is on by default; `--amp` (utils/precision.py) is the only speed option that changes arithmetic.
cuDNN autotuning follows `--deterministic` (training/trainer.py: benchmark = not deterministic); the SGD kernels
are training/optim.py's.
"""
from __future__ import annotations

import torch
from torch import nn


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
    network.compiled = True  # callers that would bypass the compiled forward (forward_keeping_trunk) check it
    return network


def prepare_network(network: nn.Module, *, channels_last: bool = False, compile: bool = False,
                    compile_backend: str = "inductor") -> nn.Module:
    """Apply the opt-in options to a network already on its device (channels-last before compiling)."""
    if channels_last:
        use_channels_last(network)
    if compile:
        compile_network(network, compile_backend)
    return network
