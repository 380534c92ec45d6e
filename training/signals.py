"""A graceful stop: a scheduler's or a user's signal ends a run at an iteration boundary with a resume checkpoint.

SIGTERM (scancel, a preemption, `docker stop`), SIGINT (Ctrl-C) and SIGUSR1 / SIGUSR2 (SLURM's `--signal`) are
caught while a run trains. The handler only records the signal; the loop asks `stop.agreed(ddp)` after each
iteration, so the current iteration finishes, a resume checkpoint of it is written (atomically, as always),
"stopped by signal N at iteration k" is logged, and the process exits with 128 + N (what a shell reports for a
process ended by signal N: 143 for SIGTERM, 130 for SIGINT, 138 / 140 for SIGUSR1 / SIGUSR2). Re-running the same
command continues from that checkpoint and ends bitwise equal to an uninterrupted run.

A second Ctrl-C stops at once (KeyboardInterrupt, exit code 130): the newest checkpoint already on disk stays, a
checkpoint being written is dropped whole. Repeated SIGTERM / SIGUSR signals are not escalated: under torchrun or
SLURM the same signal often reaches a process twice (the launcher forwards it, the scheduler sends it to every
process of the job).

A handler that was there before (submitit's SIGUSR2 requeue, a grid cell's SIGTERM exit) gets the signal once the
run has stopped: `StopSignals.__exit__` puts it back and raises the signal again, so the caller's own reaction
(requeue the job, release its lock) follows the checkpoint instead of being lost.

Under torchrun every rank must stop at the same iteration (the checkpoint is a collective); `agreed` takes the
maximum of the ranks' signal numbers, one all-reduce of one integer per iteration, only when several processes
train. In one process it reads an attribute.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
                     if hasattr(signal, name))


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class StopSignals:
    """`with StopSignals() as stop:` catches the stop signals (main thread only; elsewhere it catches nothing)
    and puts the previous handlers back on exit."""

    def __init__(self) -> None:
        self.received = 0  # the first stop signal received (0: none)
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        previous, self._previous = self._previous, {}
        for number, handler in previous.items():
            signal.signal(number, handler)
        if self.received and callable(previous.get(self.received)) and \
                previous[self.received] is not signal.default_int_handler:
            signal.raise_signal(self.received)  # the caller's handler reacts now, after the checkpoint

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received and number == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, the newest checkpoint on disk stays
        if self.received:
            return
        self.received = number
        again = " (Ctrl-C again to stop at once)" if number == signal.SIGINT else ""
        print(f"\n{signal_name(number)} received: stopping after this iteration with a resume checkpoint{again}",
              file=sys.stderr, flush=True)

    def agreed(self, ddp) -> int:
        """The signal to stop for after this iteration, the same on every rank (0: go on)."""
        return ddp.max_over_ranks(self.received) if ddp.active else self.received
