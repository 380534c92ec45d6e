"""How a model is run over a case: window size and stride, batch, post-processing, precision."""
from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass
class InferenceSettings:
    patch_size: tuple[int, ...]  # sliding window (3-D) / network input (2-D slices), voxels
    stride: tuple[int, ...] = ()  # sliding-window step, voxels; () = half the patch where a window slides
    batch_size: int = 4  # windows or slices per forward
    nms: bool = False  # keep the largest connected component of each foreground class
    amp: str = "off"  # autocast dtype of the network's forward: off (fp32) | bf16 | fp16
    # an evaluation copy with BatchNorm folded into the convolutions (networks/speed.py: fold_batchnorm), stored
    # channels-last for a 3-D network on a CPU: the same function with fewer passes and faster kernels, rounded
    # differently (labels differ only where two classes tie within rounding)
    fold_bn: bool = True

    def to_dict(self) -> dict:
        return {"patch_size": list(self.patch_size), "stride": list(self.stride), "batch_size": self.batch_size,
                "nms": self.nms, "amp": self.amp, "fold_bn": self.fold_bn}


def add_fold_bn_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--fold_bn for the scripts that predict (test_la.py, test_acdc.py, predict.py); default as declared above."""
    parser.add_argument("--fold_bn", type=int, choices=(0, 1), default=int(InferenceSettings.fold_bn),
                        help="evaluate a copy with BatchNorm folded into the convolutions, channels-last for 3-D "
                             "networks on a CPU (same function, faster; labels may differ where two classes tie "
                             "within rounding); 0 = the network as it is")
