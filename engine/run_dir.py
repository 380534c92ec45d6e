"""The run folder: resolved config, split lists, environment, log, TensorBoard events and checkpoints."""
from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from dataloaders import Split
from utils.atomic import make_writable_folder, write_text_atomic

REPO = Path(__file__).resolve().parents[1]


def environment(device: torch.device, seed: int) -> dict:
    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "seed": seed,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


_ITERATION_LINE = re.compile(r"^\[[^\]]*\] iteration (\d+)[: ]")


def truncate_log(path: Path, iteration: int) -> None:
    """Drop the lines a crashed run wrote after `iteration`, so a resumed log has every iteration once."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        match = _ITERATION_LINE.match(line)
        if match and int(match.group(1)) > iteration:
            break
        kept.append(line)
    if not kept or not kept[-1].endswith("\n"):
        kept.append("\n")  # a line cut by the crash ends here
    write_text_atomic(path, "".join(kept))


def prepare_run_dir(run_dir: Path, config_json: str, split: Split, env: dict,
                    resume_iteration: int | None = None) -> logging.Logger:
    """Create the folder, write config/splits/environment, and return a logger writing to log.txt and stderr.

    resume_iteration: continue log.txt after that iteration; None starts a fresh log and TensorBoard folder.
    """
    make_writable_folder(run_dir, "run folder", "--run_dir")
    (run_dir / "splits").mkdir(exist_ok=True)
    if resume_iteration is None and (run_dir / "config.json").is_file():
        # leftovers of a start that crashed before its first checkpoint
        (run_dir / "log.txt").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    else:
        truncate_log(run_dir / "log.txt", resume_iteration)
    write_text_atomic(run_dir / "config.json", config_json + "\n")
    for name, ids in split.to_dict().items():
        write_text_atomic(run_dir / "splits" / f"{name}.list", "".join(f"{i}\n" for i in ids))
    write_text_atomic(run_dir / "environment.json", json.dumps(env, indent=2) + "\n")

    logger = logging.getLogger(f"ssnet.{run_dir.resolve()}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S")
    # log.txt gets one line per iteration; the terminal only the milestones (tqdm shows the live loss).
    file_handler, console = logging.FileHandler(run_dir / "log.txt"), logging.StreamHandler(sys.stderr)
    file_handler.setLevel(logging.DEBUG)
    console.setLevel(logging.INFO)
    for handler in (file_handler, console):
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
