"""Run train_la.py in this process and SIGKILL it at a chosen point (used by tests/test_resume.py).

    PYTHONPATH=. python tests/crash_runner.py POINT N -- <train_la.py flags>

POINT: step       - after the forward pass of iteration N (before its optimiser step)
       save       - halfway through writing the N-th resume checkpoint (temp file half written)
       best       - right after the resume checkpoint of the N-th best-file write, before the best file
The kill is SIGKILL, as a pre-empted job gets: no cleanup, no flush, no atexit.
"""
from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

import torch

import methods
import train_la
import training.checkpoints as checkpoints
import utils.checkpoint as checkpoint


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


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
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    sys.exit(train_la.main(flags))


if __name__ == "__main__":
    main()
