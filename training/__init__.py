"""Training: the config (one declaration per setting), the loop and its collaborators.

    config = make_config("LA", method="ss_net", labelnum=8, root_path="/data/LA")
    result = train(config)        # TrainResult: run_dir, best/last checkpoints, scores, losses
"""
from __future__ import annotations

from .config import TrainConfig, make_config
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "make_config", "train", "train_script"]


def train_script(dataset: str, description: str, argv: list[str] | None) -> int:
    """The body of train_la.py / train_acdc.py: parse the flags, train, one-line errors."""
    import sys

    from utils.cli import run_cli

    from .flags import build_train_parser, config_from_args, explicit_flags

    parser = build_train_parser(dataset, description)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    return run_cli(lambda: train(config_from_args(args, dataset, explicit_flags(parser, argv))), debug=args.debug,
                   cpu_threads=True, huge_pages=True)
