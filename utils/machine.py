"""The CPU share of this process: how many cores it may use, and the data-loading workers that follow from it."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (a container's or a SLURM job's
    share), else every core of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """Data-loading processes: none where the default device is a CPU (the step's intra-op threads use every core;
    a background thread of the training process loads the next batch meanwhile, dataloaders/loader.py); else 4 (the
    official scripts) or fewer when this process may use fewer CPU cores."""
    import torch  # here: this module is read by launchers that need only the core count

    if not torch.cuda.is_available():
        return 0
    return min(4, usable_cores())
