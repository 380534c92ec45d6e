"""Checkpoint loading: our self-describing checkpoints and the released official SS-Net state dicts.

The official files (and our checkpoints written before SS-Net's heads moved into the method) store the
segmentation backbone and SS-Net's projection / prediction / selector heads in ONE state dict: backbone keys
`encoder.*`, `decoder.*` and head keys `projection_head.*`, `prediction_head.*`, `contrastive_class_selector_<c>.*`,
`contrastive_class_selector_memory<c>.*`. `split_head_keys` is the key map: the backbone part loads into the
network, the head part into SS-Net's heads (methods/ss_net.py) or is dropped when only segmenting.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, read_checkpoint
from utils.errors import UserError

from .base import SegmentationNetwork
from .registry import build_network

# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OUT_CONV_KEY = "decoder.out_conv.weight"
_MAX_LISTED = 5
HEAD_PREFIXES = ("projection_head.", "prediction_head.", "contrastive_class_selector_")


def plain_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...} / {"model": ...}, read a path, strip DataParallel / torch.compile prefixes."""
    if isinstance(checkpoint, (str, Path)):
        checkpoint = read_checkpoint(checkpoint)
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(wrapper), Mapping):
            checkpoint = checkpoint[wrapper]
            break
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"expected a state dict (mapping of names to tensors), got {type(checkpoint).__name__}")
    state: dict[str, torch.Tensor] = {}
    for key, value in checkpoint.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix):]
        state[key] = value
    return state


def split_head_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone part, SS-Net head part) of a state dict in the official layout (one dict holding both)."""
    heads = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    return {k: v for k, v in state.items() if k not in heads}, heads


def infer_num_classes(state_dict: Any) -> int:
    """Number of output classes of a (possibly wrapped / prefixed) state dict (decoder.out_conv rows)."""
    state = plain_state_dict(state_dict)
    if _OUT_CONV_KEY not in state:
        raise UserError(f"cannot infer the number of classes: the state dict has no '{_OUT_CONV_KEY}'")
    return int(state[_OUT_CONV_KEY].shape[0])


def _listed(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _problems(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> list[str]:
    """What keeps `state` from loading strictly into `module`: missing / unexpected keys, shape mismatches."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs {what} {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listed(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_listed(mismatched)})")
    return problems


def _check_fits(network: nn.Module, state: Mapping[str, torch.Tensor], heads: nn.Module | None = None,
                head_state: Mapping[str, torch.Tensor] | None = None) -> None:
    """One UserError naming everything that does not fit, in the network and (when given) the heads."""
    problems = _problems(network, state, "network")
    if heads is not None:
        problems += [f"SS-Net heads: {p}" for p in _problems(heads, head_state or {}, "heads")]
    if not problems:
        return
    kwargs = ", ".join(f"{k}={v}" for k, v in network.network_kwargs().items())
    message = f"state dict does not fit {type(network).__name__}({kwargs}): " + "; ".join(problems)
    if _OUT_CONV_KEY in state and network.num_classes != infer_num_classes(state):
        message += (f". The checkpoint has {infer_num_classes(state)} classes: build the network with "
                    f"num_classes={infer_num_classes(state)}")
    raise UserError(message)


def load_official_state_dict(network: SegmentationNetwork, state_dict: Any,
                             heads: nn.Module | None = None) -> SegmentationNetwork:
    """Load official SS-Net weights (or our own) strictly into `network` and, when given, SS-Net's `heads`.

    `state_dict` may be a plain state dict, one wrapped as {"state_dict": ...} or {"model": ...}, one whose
    keys carry a `module.` (DataParallel) or `_orig_mod.` (torch.compile) prefix, or a path to a `.pth` file.
    Head keys (the official layout keeps them beside the backbone) go to `heads`, or are dropped without it.
    On any mismatch a single UserError lists missing keys, unexpected keys and shape mismatches.
    """
    backbone, head_state = split_head_keys(plain_state_dict(state_dict))
    _check_fits(network, backbone, heads, head_state)
    network.load_state_dict(backbone, strict=True)
    if heads is not None:
        heads.load_state_dict(head_state, strict=True)
    return network


def save_checkpoint(path: str | Path, network: nn.Module, **metadata) -> None:
    """Weights + the network's self-description (+ metadata) in one atomically written file."""
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "network": network.network_config(), "state_dict": state,
                       **metadata}, path)


@dataclass
class LoadedCheckpoint:
    network: nn.Module
    official: bool  # a released official state dict (no metadata)
    metadata: dict = field(default_factory=dict)  # everything else stored with our checkpoints
    heads: dict[str, torch.Tensor] = field(default_factory=dict)  # SS-Net head weights found in the file


def load_network(path: str | Path, default_network: str, default_kwargs: dict,
                 device: str | torch.device = "cpu", *, contents: dict | None = None) -> LoadedCheckpoint:
    """Rebuild the network of a checkpoint (ours or an official state dict) on `device`, in eval mode.

    Our checkpoints describe their network; an official state dict is read as `default_network` with
    `default_kwargs` (the class count and V-Net width taken from the weights). SS-Net head weights in the file
    (official ones, ours before the heads moved into the method) are returned in `heads`, not loaded.
    contents: what `read_checkpoint(path)` returned, when the caller has read it already (`path` then only names
    the file in messages).
    """
    obj = contents if contents is not None else read_checkpoint(path)
    if obj.get("format") == CHECKPOINT_FORMAT:
        cfg = obj["network"]
        network = build_network(cfg["name"], **cfg["kwargs"])
        backbone, heads = split_head_keys(obj["state_dict"])
        _check_fits(network, backbone)
        network.load_state_dict(backbone)
        metadata = {k: v for k, v in obj.items() if k not in ("state_dict", "optimizer")}
        official = False
    else:
        try:
            state = plain_state_dict(obj)
            kwargs = {**default_kwargs, "num_classes": infer_num_classes(state)}
            first_conv = state.get("encoder.block_one.conv.0.weight")
            if default_network == "vnet" and first_conv is not None:
                kwargs["base_filters"] = int(first_conv.shape[0])  # the width of a released V-Net
            network = build_network(default_network, **kwargs)
            heads = split_head_keys(state)[1]
            load_official_state_dict(network, state)
        except UserError as exc:
            raise UserError(f"{path}: not a {default_network} checkpoint for this dataset: {exc}") from None
        metadata, official = {}, True
    return LoadedCheckpoint(network.to(device).eval(), official, metadata, heads)
