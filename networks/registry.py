"""The networks by name: what config files and checkpoints write in their `network` field."""
from __future__ import annotations

from typing import Any

from utils.choices import unknown_choice

from .base import SegmentationNetwork
from .unet import UNet
from .vnet import VNet

NETWORKS: dict[str, type[SegmentationNetwork]] = {"vnet": VNet, "unet": UNet}


def build_network(name: str, **kwargs: Any) -> SegmentationNetwork:
    """Instantiate a registered network by name, e.g. build_network("unet", num_classes=4)."""
    key = name.lower()
    if key not in NETWORKS:
        raise unknown_choice("network", name, NETWORKS)
    return NETWORKS[key](**kwargs)
