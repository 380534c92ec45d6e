"""Two-stage methods (BCP): a pre-train stage, then the main stage from the pre-train's best checkpoint.

One command, one run folder: the pre-train is a complete run of its own in RUN_DIR/pretrain (config, log,
TensorBoard, resume checkpoints, best_model.pth chosen by the run's --select, result.json); the main stage is the run
in RUN_DIR and starts from RUN_DIR/pretrain/best_model.pth (`init_from`), as BCP's scripts start their self-train
from the pre-train's best model (LA_BCP_train.py:220-222, ACDC_BCP_train.py:335-336). Each stage is a `Training` of
its own: its LR schedule restarts (the scripts count from 0 again and build a new SGD), it seeds everything from the
run's seed, and it resumes from its own checkpoints. So a run stopped anywhere, in the pre-train, at the boundary or
in the main stage, continues bit for bit by re-running the command (or with --resume RUN_DIR).

The pre-train: `stage = "pretrain"`, `--pretrain_iterations` iterations at a constant LR (no decay in either
script's pre-train loop), evaluated every --eval_every from the first (LA :173, ACDC :273).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from utils.atomic import write_text_atomic
from utils.checkpoint import read_checkpoint

from .config import TrainConfig, default_run_dir

PRETRAIN_FOLDER = "pretrain"
STAGE_TITLES = {"pretrain": "pre-train stage", "train": "main stage"}


def stage_configs(config: TrainConfig) -> list[TrainConfig]:
    """The configs of the stages `config` trains, in order: itself alone unless it has a pre-train."""
    if config.stage != "train" or config.pretrain_iterations == 0:
        return [config]
    run_dir = default_run_dir(config)
    pretrain_dir = run_dir / PRETRAIN_FOLDER
    pretrain = replace(config, stage="pretrain", max_iteration=config.pretrain_iterations, lr_policy="constant",
                       eval_start=0, run_dir=str(pretrain_dir), resume="", init_from="")
    main = replace(config, run_dir=str(run_dir), resume="", init_from=str(pretrain_dir / "best_model.pth"))
    return [pretrain, main]


def stage_finished(config: TrainConfig) -> bool:
    """A pre-train whose run wrote its result and best checkpoint at this length: nothing left to do in it (another
    length goes to the trainer, which extends the stage or names the conflict)."""
    run_dir = default_run_dir(config)
    if config.stage != "pretrain" or not (run_dir / "best_model.pth").is_file():
        return False
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return result.get("max_iteration") == config.max_iteration


def describe_stage(config: TrainConfig) -> str:
    if config.stage == "pretrain":
        return f"pre-train stage: {config.max_iteration:,} iterations, then the main stage from its best checkpoint"
    if config.init_from:
        return f"main stage: {config.max_iteration:,} iterations from {config.init_from}"
    return ""


def write_outer_config(config: TrainConfig) -> None:
    """RUN_DIR/config.json before the pre-train starts, so that --resume RUN_DIR works from the first iteration."""
    run_dir = default_run_dir(config)
    if len(stage_configs(config)) > 1 and not (run_dir / "config.json").is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "config.json", config.to_json() + "\n")


def load_initial_weights(network: torch.nn.Module, path: str | Path) -> None:
    """The network's weights from a checkpoint of ours (the pre-train's best_model.pth)."""
    checkpoint = read_checkpoint(Path(path))
    network.load_state_dict(checkpoint["state_dict"])
