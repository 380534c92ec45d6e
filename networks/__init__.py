"""Segmentation networks (3-D V-Net, 2-D U-Net): a name registry and checkpoint loading.

    net = build_network("vnet", num_classes=2)          # or, from a checkpoint's self-description:
    net = build_network(cfg["name"], **cfg["kwargs"])   # cfg = net.network_config()
    out = net(image); out.logits, out.features          # NetworkOutput; image (B, 1, D, H, W) or (B, 1, H, W)
    loaded = load_network("best_model.pth", "vnet", {}) # ours or an official .pth -> LoadedCheckpoint
"""
from __future__ import annotations

from .base import SegmentationNetwork
from .loading import (
    HEAD_PREFIXES,
    LoadedCheckpoint,
    infer_num_classes,
    load_network,
    load_official_state_dict,
    plain_state_dict,
    save_checkpoint,
    split_head_keys,
)
from .output import DecoderOutput, NetworkOutput
from .registry import NETWORKS, build_network
from .unet import UNet
from .vnet import VNet

__all__ = [
    "HEAD_PREFIXES",
    "NETWORKS",
    "DecoderOutput",
    "LoadedCheckpoint",
    "NetworkOutput",
    "SegmentationNetwork",
    "UNet",
    "VNet",
    "build_network",
    "infer_num_classes",
    "load_network",
    "load_official_state_dict",
    "plain_state_dict",
    "save_checkpoint",
    "split_head_keys",
]
