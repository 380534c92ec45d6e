"""How a model is run over a case: window size and stride, batch, post-processing, test-time augmentation, precision.

One declaration per setting (utils.settings): the test scripts and predict.py get their inference flags from these
fields, and a checkpoint records them (its `inference` record) so that it is tested as it was evaluated.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from dataloaders import DatasetAdapter
from utils.autocast import PRECISION_MODES
from utils.cli import int_list
from utils.settings import check_settings, setting

SPEED = "speed (opt-in; the defaults are the paper's fp32 math)"
FROM_CHECKPOINT = "the checkpoint, else the dataset"
# keys of the `inference` record written by earlier versions -> the settings they are now
LEGACY_RECORD_KEYS = {"nms": "largest_component"}


def slides(dataset: DatasetAdapter) -> bool:
    """A dataset predicted with a sliding window (not ACDC's resized slices) has a stride."""
    return dataset.inference != "slices_resized"


@dataclass
class InferenceSettings:
    patch_size: tuple[int, ...] = setting((), "sliding window (3-D) / network input of the slices (2-D)",
                                          unit="voxels", parse=int_list, resolved=FROM_CHECKPOINT)
    stride: tuple[int, ...] = setting((), "sliding-window step; empty = half the patch", unit="voxels",
                                      parse=int_list, resolved=FROM_CHECKPOINT, flag=slides)
    batch_size: int = setting(4, "sliding windows (3-D) / slices (2-D) per forward", minimum=1)
    largest_component: bool | None = setting(None, "keep the largest connected component of each foreground class",
                                             aliases=("--nms",), resolved=FROM_CHECKPOINT)
    tta: bool = setting(False, "test-time augmentation: average over flips of every spatial axis (2^dims passes)",
                        switch=True)
    amp: str = setting("off", "mixed precision of the network's forward: bf16 (recommended on GPUs that have it), "
                              "fp16, off", choices=PRECISION_MODES, group=SPEED)
    channels_last: bool = setting(False, "channels-last memory format for the convolutions (helps with --amp on "
                                         "GPUs, and the fp32 2-D U-Net on a CPU; changes the rounding)", group=SPEED)
    compile: bool = setting(False, "torch.compile the network (minutes of compilation first; pays off on long "
                                   "runs)", group=SPEED)
    # an evaluation copy with BatchNorm folded into the convolutions (networks/speed.py: fold_batchnorm), stored
    # channels-last on a CPU: the same function with fewer passes and faster kernels, rounded
    # differently (labels differ only where two classes tie within rounding)
    fold_bn: bool = setting(True, "evaluate a copy with BatchNorm folded into the convolutions, on a CPU stored "
                                  "channels-last (same function, faster; labels may differ where two classes tie "
                                  "within rounding); 0 = the network as it is", group=SPEED)

    def __post_init__(self) -> None:
        self.patch_size, self.stride = tuple(self.patch_size), tuple(self.stride)
        check_settings(self)

    def resolve(self, record: dict, dataset: DatasetAdapter) -> InferenceSettings:
        """These settings with what they leave open filled from a checkpoint's `inference` record, else from the
        dataset: patch size, stride, largest component (records of earlier versions say `nms`)."""
        record = {LEGACY_RECORD_KEYS.get(key, key): value for key, value in record.items()}
        largest = self.largest_component
        if largest is None:
            largest = record.get("largest_component", dataset.test_largest_component)
        return replace(self, patch_size=tuple(self.patch_size or record.get("patch_size") or dataset.patch_size),
                       stride=tuple(self.stride or record.get("stride") or dataset.stride),
                       largest_component=bool(largest))

    def to_dict(self) -> dict:
        """The `inference` record of a checkpoint and a test summary."""
        return {**asdict(self), "patch_size": list(self.patch_size), "stride": list(self.stride)}
