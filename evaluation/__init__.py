"""Evaluation: predict stored cases and score them (in-training selection, the test scripts), score folders of
predictions (tools.score). The report format (table, CSV, JSON with units) is utils/report.py.

    result = run_test(TestOptions(dataset="LA", checkpoint="best_model.pth", root_path="/data/LA"))
"""
from __future__ import annotations

from .evaluate import Evaluation, evaluate_cases
from .testing import TestOptions, run_test

__all__ = ["Evaluation", "TestOptions", "evaluate_cases", "run_test", "test_script"]


def test_script(dataset: str, description: str, argv: list[str] | None) -> int:
    """The body of test_la.py / test_acdc.py: parse the flags, evaluate, one-line errors."""
    from dataloaders import get_dataset
    from utils.cli import run_cli

    from .testing import build_test_parser, testing_options_from_args

    adapter = get_dataset(dataset)
    args = build_test_parser(adapter, description).parse_args(argv)
    return run_cli(lambda: run_test(testing_options_from_args(args, adapter)), debug=args.debug,
                   cpu_threads=True)
