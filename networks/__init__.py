"""Segmentation networks (3-D V-Net, 2-D U-Net) with the SS-Net heads, a name registry and checkpoint loading.

    net = build_network("vnet", num_classes=2)          # or build_network(**checkpoint["network"]) style:
    net = build_network(cfg["name"], **cfg["kwargs"])   # cfg = net.network_config()
    out = net(image); out.logits, out.features          # NetworkOutput; image (B, 1, D, H, W) or (B, 1, H, W)
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .heads import SegmentationNetwork
from .output import DecoderOutput, NetworkOutput
from .unet import UNet
from .vnet import VNet

__all__ = [
    "NETWORKS",
    "DecoderOutput",
    "NetworkOutput",
    "SegmentationNetwork",
    "UNet",
    "VNet",
    "build_network",
    "infer_num_classes",
    "load_official_state_dict",
    "plain_state_dict",
]

NETWORKS: dict[str, type[SegmentationNetwork]] = {"vnet": VNet, "unet": UNet}

# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OUT_CONV_KEY = "decoder.out_conv.weight"
_MAX_LISTED = 5


def build_network(name: str, **kwargs: Any) -> SegmentationNetwork:
    """Instantiate a registered network by name, e.g. build_network("unet", num_classes=4)."""
    key = name.lower()
    if key not in NETWORKS:
        choices = sorted(NETWORKS)
        close = difflib.get_close_matches(key, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"unknown network '{name}'; {hint}choose from: {', '.join(choices)}")
    return NETWORKS[key](**kwargs)


def plain_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...} / {"model": ...} and strip DataParallel / torch.compile key prefixes."""
    if isinstance(checkpoint, (str, Path)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict (mapping of names to tensors), got {type(checkpoint)}")
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def infer_num_classes(state_dict: Any) -> int:
    """Number of output classes of a (possibly wrapped / prefixed) state dict (decoder.out_conv rows)."""
    state = plain_state_dict(state_dict)
    if _OUT_CONV_KEY not in state:
        raise ValueError(f"cannot infer the number of classes: the state dict has no '{_OUT_CONV_KEY}'")
    return int(state[_OUT_CONV_KEY].shape[0])


def _listed(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def load_official_state_dict(network: SegmentationNetwork, state_dict: Any) -> SegmentationNetwork:
    """Load official SS-Net weights (or our own) strictly into `network` and return it.

    `state_dict` may be a plain state dict, one wrapped as {"state_dict": ...} or {"model": ...}, one whose
    keys carry a `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefix, or a path to a `.pth` file.
    On any mismatch a single ValueError lists missing keys, unexpected keys and shape mismatches.
    """
    state = plain_state_dict(state_dict)
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
        kwargs = ", ".join(f"{k}={v}" for k, v in network.network_kwargs().items())
        message = f"state dict does not fit {type(network).__name__}({kwargs}): " + "; ".join(problems)
        if _OUT_CONV_KEY in state and infer_num_classes(state) != network.num_classes:
            message += (
                f". The checkpoint has {infer_num_classes(state)} classes: build the network with "
                f"num_classes={infer_num_classes(state)}"
            )
        raise ValueError(message)
    network.load_state_dict(state, strict=True)
    return network
