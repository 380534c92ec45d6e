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
    """Data-loading processes: 4 (the official scripts) or fewer when this process may use fewer CPU cores."""
    return min(4, usable_cores())
