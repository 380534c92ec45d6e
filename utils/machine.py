"""The CPU share of this process: how many cores it may use, the data-loading workers that follow from it,
and how many PyTorch threads to run on them.

PyTorch's intra-op threads split every operation into equal parts and wait for the slowest: on a core that another
job keeps busy, one part runs at a fraction of the speed and the others wait for it. With every core's thread
running (torch's default) a 2-core machine with one other busy process ran the demo several times slower than with
one thread. `use_free_cores` therefore runs as many threads as there are cores free of other work at start-up.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable

SAMPLE_WINDOW_S = 0.25  # how long /proc/stat is watched at start-up
# A core counts as free when at most this fraction of it is busy with other work: a thread on a core busy 40 % of
# the time already makes the others wait, so 1.6 free cores run 1 thread, 1.85 run 2.
FREE_ROUNDING = 0.2
_chosen: list[int] = []  # the decision of this process (made once: a process runs with one thread count)


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


def _cpu_times(cpus: Iterable[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies of the given CPUs since boot, from /proc/stat; None where it cannot be read."""
    wanted = {f"cpu{c}" for c in cpus}
    busy = total = 0.0
    try:
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in wanted:
                    values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
                    total += sum(values)
                    busy += sum(values) - values[3] - values[4]
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def busy_cores(window_s: float = SAMPLE_WINDOW_S) -> float | None:
    """How many of this process's cores other work keeps busy right now: the busy share of their CPU time over
    `window_s` (this process sleeps meanwhile), times their number. None where /proc/stat is not there; then
    the 1-minute load average stands in (it lags a minute behind)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = list(range(os.cpu_count() or 1))
    before = _cpu_times(cpus)
    if before is not None:
        time.sleep(window_s)
        after = _cpu_times(cpus)
        if after is not None and after[1] > before[1]:
            return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
    try:
        return min(float(os.getloadavg()[0]), float(len(cpus)))
    except (AttributeError, OSError):
        return None


def threads_for(usable: int, busy: float | None) -> int:
    """Intra-op threads for `usable` cores of which `busy` are taken by other work: the free ones, at least 1."""
    if busy is None:
        return usable
    return max(1, min(usable, math.floor(usable - busy + FREE_ROUNDING)))


def use_free_cores(say: Callable[[str], None] | None = None, measure: Callable[[], float | None] = busy_cores
                   ) -> int:
    """Set PyTorch's intra-op threads to the cores free at start-up and say so (one line on stderr); an explicit
    OMP_NUM_THREADS is obeyed instead. Decided once per process, so every run of a process sums in the same order.
    Returns the thread count."""
    import torch

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return torch.get_num_threads()  # the user's (or the grid launcher's) choice
    if not _chosen:
        usable, busy = usable_cores(), measure()
        threads = threads_for(usable, busy)
        _chosen.append(threads)
        load = "not measurable here" if busy is None else f"{busy:.1f} busy with other work at start-up"
        say(f"CPU threads: {threads} of {usable} core(s) ({load}; set OMP_NUM_THREADS to choose)")
    torch.set_num_threads(_chosen[0])
    return _chosen[0]


THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_on_request(setting_file: str = THP_SETTING) -> bool:
    """Whether the kernel backs memory with transparent huge pages when a program asks (mode "madvise"); in mode
    "always" it does so unasked, in "never" (or off Linux) not at all."""
    try:
        with open(setting_file) as f:
            return "[madvise]" in f.read()
    except OSError:
        return False


def use_huge_pages(setting_file: str = THP_SETTING) -> bool:
    """Ask PyTorch's CPU allocator to back its large tensors (>= 2 MiB) with transparent huge pages.

    A training step allocates tens of GiB of fresh activations (every large tensor is a new mapping that the kernel
    fills page by page on first touch): with 4 KiB pages that is one page fault per 4 KiB, with 2 MiB pages one per
    2 MiB (docs/speed.md measures what this saves). Values are untouched: only where the bytes live changes. PyTorch
    reads THP_MEM_ALLOC_ENABLE at its first large allocation, so this must run before one; a value the user set
    is kept. Returns whether huge pages are now requested."""
    if os.environ.get("THP_MEM_ALLOC_ENABLE") is None and huge_pages_on_request(setting_file):
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    return os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
