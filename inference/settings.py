"""How a model is run over a case: window size and stride, batch, post-processing, precision."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InferenceSettings:
    patch_size: tuple[int, ...]  # sliding window (3-D) / network input (2-D slices), voxels
    stride: tuple[int, ...] = ()  # sliding-window step, voxels; () = half the patch where a window slides
    batch_size: int = 4  # windows or slices per forward
    nms: bool = False  # keep the largest connected component of each foreground class
    amp: str = "off"  # autocast dtype of the network's forward: off (fp32) | bf16 | fp16

    def to_dict(self) -> dict:
        return {"patch_size": list(self.patch_size), "stride": list(self.stride), "batch_size": self.batch_size,
                "nms": self.nms, "amp": self.amp}
