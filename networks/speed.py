"""Speed options of a network: memory format and torch.compile (opt-in), BatchNorm folded for evaluation.

Channels-last and compile are opt-in; `--amp` (utils/autocast.py) is the only one that changes the precision.
cuDNN autotuning follows `--deterministic` (training/trainer.py: benchmark = not deterministic); the SGD kernels
are training/optim.py's. `fold_batchnorm` (the evaluation default, inference/predictor.py) gives an evaluation
copy whose convolutions absorb the BatchNorm that follows them: the same function, rounded differently; on a CPU
the predictor also stores that copy channels-last (oneDNN's fp32 3-D convolutions run faster so, docs/speed.md).
"""
from __future__ import annotations

import copy

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
    if getattr(network, "uses_channels_last", False):
        return network  # once: a copy of a channels-last network is one already
    spatial_dims = int(network.spatial_dims)
    memory_format = channels_last_format(spatial_dims)
    network.to(memory_format=memory_format)
    network.register_forward_pre_hook(_input_to_format(memory_format, spatial_dims + 2))
    network.uses_channels_last = True
    return network


def compile_network(network: nn.Module, backend: str = "inductor") -> nn.Module:
    """torch.compile the forward in place (`nn.Module.compile`), so parameter names, checkpoints and the
    SS-Net heads the methods call directly (project, predict, selectors) stay those of the plain module."""
    network.compile(backend=backend, dynamic=False)
    network.compiled = True  # declared by SegmentationNetwork: callers that would bypass the forward check it
    return network


def prepare_network(network: nn.Module, *, channels_last: bool = False, compile: bool = False,
                    compile_backend: str = "inductor") -> nn.Module:
    """Apply the opt-in options to a network already on its device (channels-last before compiling)."""
    if channels_last:
        use_channels_last(network)
    if compile:
        compile_network(network, compile_backend)
    return network


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """An evaluation copy of `network` (eval mode) in which every convolution directly followed by a BatchNorm
    inside an nn.Sequential absorbs it (the BatchNorm becomes an Identity): in eval mode BatchNorm is the affine
    map y = gamma (x - mean) / sqrt(var + eps) + beta per channel, so conv then BatchNorm is one convolution with
    weights scaled by s = gamma / sqrt(var + eps) per output channel and bias (b - mean) s + beta. The same
    function with one pass over each activation less; outputs differ from the unfolded network by rounding
    (computed in float64, stored in the weights' dtype). `network` itself is not changed."""
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, CONVOLUTIONS) and isinstance(norm, NORMS) and norm.track_running_stats:
                _fold_into(conv, norm)
                module._modules[second] = nn.Identity()
    return folded


@torch.no_grad()
def _fold_into(conv: nn.Module, norm: nn.Module) -> None:
    scale = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    channel_axis = 1 if isinstance(conv, nn.modules.conv._ConvTransposeNd) else 0  # (in, out, ...) vs (out, in, ...)
    shape = [1] * conv.weight.ndim
    shape[channel_axis] = -1
    weight = conv.weight.double() * scale.view(shape)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - norm.running_mean.double()) * scale + norm.bias.double()
    conv.weight.copy_(weight.to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))
