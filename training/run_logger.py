"""What a run tells: the run folder's config / splits / environment, log.txt, TensorBoard and the progress bar.

Every scalar a method returns is logged under the name it chose and the group it declared: loss terms as
`loss/<name>` (and in log.txt), monitors (weights, thresholds, memory sizes) as `train/<name>`; the trainer adds
`train/lr` and `<list>/mean_dice`. Ranks other than 0 get a RunLogger that writes nothing (`quiet`).
"""
from __future__ import annotations

import json
import logging
import math
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dataloaders import Split
from utils.atomic import make_writable_folder, write_text_atomic
from utils.disk import LogFileHandler
from utils.progress import progress_bar

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
        "cpu_threads": torch.get_num_threads(),  # another count sums in another order (utils/machine.py)
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
    file_handler, console = LogFileHandler(run_dir / "log.txt"), logging.StreamHandler(sys.stderr)
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


def image_panel(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(3, H, W) grey panels [image | label | prediction] of the first labeled sample, middle slice for 3D."""
    img, lab, pred = image[0, 0], label[0].float(), logits[0].argmax(0).float()
    if img.ndim == 3:  # (W, H, D): show the middle axial slice
        mid = img.shape[-1] // 2
        img, lab, pred = img[..., mid], lab[..., mid], pred[..., mid]
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    scale = max(float(logits.shape[1] - 1), 1.0)
    row = torch.cat([img, lab / scale, pred / scale], dim=1).cpu()
    return row.unsqueeze(0)


def wait_for_a_later_event_file_name(folder: Path) -> None:
    """TensorBoard reads event files in name order and names carry the start second: a run resumed within the
    same second as the crash could be read before the old file, and its purge would then be lost."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


class NullWriter:
    """SummaryWriter stand-in for ranks other than 0: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def quiet_logger(rank: int) -> logging.Logger:
    """The logger of ranks other than 0: errors only, on stderr, prefixed with the rank."""
    logger = logging.getLogger(f"ssnet.rank{rank}")
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        logger.addHandler(handler)
    return logger


class RunLogger:
    """log.txt (one line per iteration) + stderr milestones, TensorBoard and the progress bar of one run."""

    def __init__(self, logger: logging.Logger, writer, show_progress: bool, image_every: int, title: str):
        self.logger = logger
        self.writer = writer
        self.show_progress = show_progress
        self.image_every = image_every
        self.title = title
        self._bar = None

    @classmethod
    def open(cls, run_dir: Path, config_json: str, split: Split, env: dict, resume_iteration: int | None,
             show_progress: bool, image_every: int, title: str) -> RunLogger:
        """Rank 0: write the run folder's description and open its log and TensorBoard folder."""
        # imported here, not at start-up: ~8 % of train_la.py's imports (tensorboard's stub pulls in boto3), paid
        # only by a run that opens its folder, not by -h, a refused flag or a script that only reads runs
        from torch.utils.tensorboard import SummaryWriter

        logger = prepare_run_dir(run_dir, config_json, split, env, resume_iteration)
        # purge_step hides events a crashed run wrote after its last checkpoint, so no iteration appears twice.
        wait_for_a_later_event_file_name(run_dir / "tensorboard")
        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                               purge_step=resume_iteration + 1 if resume_iteration is not None else None)
        return cls(logger, writer, show_progress, image_every, title)

    @classmethod
    def quiet(cls, rank: int) -> RunLogger:
        return cls(quiet_logger(rank), NullWriter(), False, 0, "")

    def progress(self, start: int, stop: int):
        """Iterations start+1 .. stop, with a bar (initial = start) when the progress bar is on."""
        self._bar = progress_bar(range(start + 1, stop + 1), enabled=self.show_progress, desc=self.title,
                                 initial=start, total=stop)  # in a log file: a line every 30 s, not per iteration
        return self._bar

    def iteration(self, iteration: int, loss: float, terms: dict[str, float], monitors: dict[str, float],
                  lr: float) -> None:
        for name, value in terms.items():
            self.writer.add_scalar(f"loss/{name}", value, iteration)
        for name, value in monitors.items():
            self.writer.add_scalar(f"train/{name}", value, iteration)
        self.writer.add_scalar("train/lr", lr, iteration)
        if self._bar is not None:
            # refresh=False: the bar shows the new values at its next throttled redraw; set_postfix's default redraws
            # at once, past the 30 s throttle of a log file, with the count tqdm had last drawn (a stale n).
            # `dice_loss`: the Dice *loss* of the labeled batch (1 - soft Dice), not a score.
            self._bar.set_postfix(loss=f"{loss:.4f}", dice_loss=f"{terms.get('dice', math.nan):.4f}", refresh=False)
        # loss terms, then " | " and the monitors: readers of log.txt (viz/curves.py) tell the groups apart
        self.logger.debug("iteration %d: %s | %s lr %.2e", iteration,
                          " ".join(f"{k} {v:.5f}" for k, v in terms.items()),
                          " ".join(f"{k} {v:.5f}" for k, v in monitors.items()), lr)

    def images(self, iteration: int, image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor | None) -> None:
        if self.image_every and logits is not None and (iteration % self.image_every == 0 or iteration == 1):
            self.writer.add_image("train/image_label_prediction", image_panel(image, label, logits), iteration)

    def evaluation(self, iteration: int, list_name: str, score: float, best_score: float, best_iteration: int,
                   saved_as: str = "") -> None:
        self.writer.add_scalar(f"{list_name}/mean_dice", score, iteration)
        self.logger.info("iteration %d: %s mean Dice %.4f (best %.4f @ %d)%s", iteration, list_name, score,
                         best_score, best_iteration, f" -> {saved_as}" if saved_as else "")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        close_logger(self.logger)

    # plain messages
    def info(self, *args) -> None:
        self.logger.info(*args)

    def warning(self, *args) -> None:
        self.logger.warning(*args)

    def error(self, *args) -> None:
        self.logger.error(*args)
