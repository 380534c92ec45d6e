"""Run train_la.py in this process and SIGKILL it at a chosen point (used by tests/test_resume.py).

    PYTHONPATH=. python tests/crash_runner.py POINT N -- <train_la.py flags>

POINT: step       - after the forward pass of iteration N (before its optimiser step)
       save       - halfway through writing the N-th resume checkpoint (temp file half written)
       best       - right after the resume checkpoint of the N-th best-file write, before the best file
The kill is SIGKILL, as a pre-empted job gets: no cleanup, no flush, no atexit.

Points that do not kill (tests/test_faults.py):
       signal:NAME[:COUNT] - the process sends itself COUNT (default 1) signals NAME (SIGTERM, SIGINT, SIGUSR2)
                             during the forward pass of iteration N, as a scheduler or Ctrl-C would
       slow:SECONDS        - every forward pass from iteration N on sleeps SECONDS (a test signals from outside)
       corrupt:PATH        - PATH is truncated to half its size during iteration N (a case damaged mid-run)
"""
from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import torch

import methods
import train_la
import training.checkpoints as checkpoints
import utils.checkpoint as checkpoint


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def patch_forward(point: str, n: int) -> None:
    kind, _, argument = point.partition(":")

    def at_iteration(iteration: int) -> None:
        if kind == "signal" and iteration == n:
            name, _, count = argument.partition(":")
            for _ in range(int(count or 1)):
                os.kill(os.getpid(), getattr(signal, name))
        elif kind == "slow" and iteration >= n:
            time.sleep(float(argument))
        elif kind == "corrupt" and iteration == n:
            data = Path(argument).read_bytes()
            Path(argument).write_bytes(data[: len(data) // 2])

    for cls in methods.METHODS.values():
        original = cls.forward

        def forward(self, labeled, unlabeled, step, _original=original):
            at_iteration(step.iteration)
            return _original(self, labeled, unlabeled, step)

        cls.forward = forward


def main() -> None:
    point, n = sys.argv[1], int(sys.argv[2])
    flags = sys.argv[sys.argv.index("--") + 1:]
    calls = {"count": 0}

    if point == "step":
        for cls in methods.METHODS.values():
            original = cls.forward

            def killing(self, labeled, unlabeled, step, _original=original):
                output = _original(self, labeled, unlabeled, step)
                if step.iteration == n:
                    die()
                return output

            cls.forward = killing
    elif point == "save":
        real_save = torch.save

        def half_save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("kind") == "resume":
                calls["count"] += 1
                if calls["count"] == n:
                    buffer = io.BytesIO()
                    real_save(obj, buffer)
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    f.flush()
                    die()
            return real_save(obj, f, *args, **kwargs)

        checkpoint.torch.save = half_save
    elif point == "best":
        real = checkpoints.save_checkpoint

        def best_then_die(path, *args, **kwargs):
            if Path(path).name.startswith("best_model"):
                calls["count"] += 1
                if calls["count"] == n:
                    die()
            return real(path, *args, **kwargs)

        checkpoints.save_checkpoint = best_then_die
    elif point.partition(":")[0] in ("signal", "slow", "corrupt"):
        patch_forward(point, n)
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    sys.exit(train_la.main(flags))


if __name__ == "__main__":
    main()
