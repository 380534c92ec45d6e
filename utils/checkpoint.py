"""Checkpoints that explain themselves: weights + network settings + config, written atomically.

Our format is a dict with "format": CHECKPOINT_FORMAT. The released official SS-Net weights are plain state
dicts; `load_network` accepts both (the official ones need the dataset's default network).
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from networks import build_network, infer_num_classes, load_official_state_dict, plain_state_dict

CHECKPOINT_FORMAT = "ssnet-toolkit-checkpoint/1"


def atomic_torch_save(obj, path: str | Path) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | Path, network: nn.Module, **metadata) -> None:
    state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "network": network.network_config(), "state_dict": state,
                       **metadata}, path)


@dataclass
class LoadedCheckpoint:
    network: nn.Module
    official: bool  # a released official state dict (no metadata)
    metadata: dict = field(default_factory=dict)  # everything else stored with our checkpoints


def read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with train_la.py / train_acdc.py)")
    try:
        # weights_only: nothing we read can execute code.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if not found:
            raise ValueError(f"{path} is truncated or not a PyTorch checkpoint (cannot unpickle it); copy it "
                             f"again or point to another file") from None
        what = f" (found {found.group(1)})"
        raise ValueError(f"{path} was refused: it holds pickled Python objects{what}; checkpoints are read with "
                         f"weights_only=True so that no file can execute code. Save a plain state dict "
                         f"(tensors, numbers, strings) instead") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        detail = str(exc).split(". ")[0][:160]
        raise ValueError(f"{path} is truncated or not a PyTorch checkpoint ({type(exc).__name__}: {detail}); "
                         f"copy it again or point to another file") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict or a checkpoint dict (found {type(obj).__name__})")
    return obj


def load_network(
    path: str | Path,
    default_network: str,
    default_kwargs: dict,
    device: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Rebuild the network of a checkpoint (ours or an official state dict) on `device`, in eval mode."""
    obj = read_checkpoint(path)
    if obj.get("format") == CHECKPOINT_FORMAT:
        cfg = obj["network"]
        network = build_network(cfg["name"], **cfg["kwargs"])
        network.load_state_dict(obj["state_dict"])
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
            load_official_state_dict(network, state)
        except ValueError as exc:
            raise ValueError(f"{path}: not a {default_network} checkpoint for this dataset: {exc}") from None
        metadata, official = {}, True
    return LoadedCheckpoint(network.to(device).eval(), official, metadata)
