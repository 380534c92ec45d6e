"""Exact resume: a run SIGKILLed anywhere and resumed ends bitwise equal to an uninterrupted one (CPU)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_la
from dataloaders import make_synthetic_la
from training.checkpoints import capture_rng, list_checkpoints, restore_rng
from training.optim import build_sgd, restore_zero_gradients, zero_gradients

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = 12


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_la")
    return make_synthetic_la(root, n_train=6, n_test=1, shape=(24, 24, 20), seed=3, n_val=1)


def flags(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--root_path", str(data), "--lists_dir", str(data), "--labelnum", "2", "--max_iteration",
            str(ITERATIONS), "--patch_size", "16,16,16", "--base_filters", "4", "--stride", "8,8,8", "--batch_size",
            "4", "--labeled_bs", "2", "--eval_every", "2", "--eval_start", "2", "--save_every", "3",
            "--keep_checkpoints", "2", "--select", "val", "--track", "test", "--num_workers", "0", "--device", "cpu",
            "--no_progress", "--image_every", "5", "--run_dir", str(run_dir), *extra]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def iteration_lines(run_dir: Path) -> list[int]:
    log = (run_dir / "log.txt").read_text()
    return [int(m.group(1)) for m in re.finditer(r"\] iteration (\d+): (?!val|test)", log)]


def tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


@pytest.fixture(scope="module")
def reference(synthetic, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert train_la.main(flags(synthetic, run_dir)) == 0
    return run_dir


def same_threads_env() -> dict[str, str]:
    """The environment of a child train_la.py whose weights a test compares bit for bit with a run of this process:
    the thread count this process's runs use (utils.machine.use_free_cores decides once per process, from the load
    at that moment), so that the child does not choose another one from the load at its own start."""
    from utils.machine import use_free_cores

    threads = use_free_cores(say=lambda _line: None)  # torch's count is restored after the test (conftest)
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}


def crash(point: str, n: int, synthetic: Path, run_dir: Path, *extra: str) -> None:
    cmd = [sys.executable, str(REPO / "tests" / "crash_runner.py"), point, str(n), "--",
           *flags(synthetic, run_dir, *extra)]
    result = subprocess.run(cmd, cwd=REPO, env=same_threads_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, f"expected SIGKILL, got {result.returncode}: {result.stderr[-2000:]}"


@pytest.mark.parametrize(
    ("point", "n"),
    [
        ("step", 1),  # before the first checkpoint: starts again from scratch
        ("step", 8),  # mid-run, two iterations after the checkpoint of iteration 6
        ("save", 2),  # halfway through writing a resume checkpoint
        ("best", 2),  # between a resume checkpoint and the best file it vouches for
    ],
)
def test_sigkill_then_rerun_ends_bitwise_equal(point, n, synthetic, reference, tmp_path):
    run_dir = tmp_path / "run"
    crash(point, n, synthetic, run_dir)
    assert not (run_dir / "result.json").exists()
    assert train_la.main(flags(synthetic, run_dir)) == 0  # the same command again resumes

    for name in ("last_model.pth", "best_model.pth", "best_model_test.pth"):
        assert_same_weights(reference / name, run_dir / name)
    ours, theirs = (json.loads((d / "result.json").read_text()) for d in (run_dir, reference))
    assert ours["selections"] == theirs["selections"] and ours["best_iteration"] == theirs["best_iteration"]
    final = torch.load(list_checkpoints(run_dir)[-1][1], weights_only=True)
    expected = torch.load(list_checkpoints(reference)[-1][1], weights_only=True)
    assert final["losses"] == expected["losses"] and len(final["losses"]) == ITERATIONS
    assert final["method_state"]["memory"] is not None
    # every iteration exactly once in the log and in TensorBoard
    assert iteration_lines(run_dir) == list(range(1, ITERATIONS + 1))
    assert tensorboard_steps(run_dir, "loss/total") == list(range(1, ITERATIONS + 1))
    assert tensorboard_steps(run_dir, "val/mean_dice") == list(range(2, ITERATIONS + 1, 2))
    assert not list(run_dir.rglob("*.tmp"))
    assert len(list_checkpoints(run_dir)) == 2  # --keep_checkpoints 2


@pytest.mark.slow  # ~25 s for both methods; the default suite resumes SS-Net exactly in several other tests
@pytest.mark.parametrize("method", ["mean_teacher", "sassnet"])
def test_methods_with_a_teacher_or_discriminator_resume_exactly(method, synthetic, tmp_path):
    """The EMA teacher / the discriminator and its Adam state travel in the resume checkpoint."""
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert train_la.main(flags(synthetic, reference, "--method", method)) == 0
    crash("step", 8, synthetic, run_dir, "--method", method)
    assert train_la.main(flags(synthetic, run_dir, "--method", method)) == 0
    assert_same_weights(reference / "last_model.pth", run_dir / "last_model.pth")
    ours = torch.load(list_checkpoints(run_dir)[-1][1], weights_only=True)["method_state"]
    theirs = torch.load(list_checkpoints(reference)[-1][1], weights_only=True)["method_state"]
    assert ours.keys() == theirs.keys() and ours
    flat_ours, flat_theirs = flatten(ours), flatten(theirs)
    assert flat_ours.keys() == flat_theirs.keys()
    for key, value in flat_ours.items():
        assert torch.equal(value, flat_theirs[key]) if isinstance(value, torch.Tensor) else value == flat_theirs[key]


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}/").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, f"{prefix}{i}/").items()}
    return {prefix: tree}


def test_resume_flag_continues_and_extends_a_finished_run(synthetic, reference, tmp_path):
    run_dir = tmp_path / "run"
    short = flags(synthetic, run_dir)
    short[short.index("--max_iteration") + 1] = "6"
    assert train_la.main(short) == 0
    assert json.loads((run_dir / "result.json").read_text())["max_iteration"] == 6
    # --resume takes the saved settings; --max_iteration is a runtime flag and may grow
    assert train_la.main(["--resume", str(run_dir), "--max_iteration", str(ITERATIONS), "--no_progress"]) == 0
    assert_same_weights(reference / "last_model.pth", run_dir / "last_model.pth")
    assert iteration_lines(run_dir) == list(range(1, ITERATIONS + 1))
    # a finished run re-run with the same command does no work and changes nothing
    before = weights(run_dir / "last_model.pth")
    assert train_la.main(["--resume", str(run_dir), "--max_iteration", str(ITERATIONS), "--no_progress"]) == 0
    assert all(torch.equal(v, weights(run_dir / "last_model.pth")[k]) for k, v in before.items())


def test_resume_refuses_changed_settings(synthetic, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    crash("step", 8, synthetic, run_dir)
    # the killed run left its lock behind; the refused launches take it over (stale) and remove it on exit
    before = sorted(p.name for p in run_dir.rglob("*") if p.name != "train.lock")
    assert train_la.main(flags(synthetic, run_dir, "--consistency", "0.5")) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "consistency" in err and "--resume" in err
    assert train_la.main(["--resume", str(run_dir), "--seed", "7"]) == 2
    assert "--seed cannot change when resuming" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.rglob("*")) == before


def test_a_result_without_checkpoints_is_never_overwritten(synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best_model.pth").write_bytes(b"precious")
    assert train_la.main(flags(synthetic, run_dir)) == 2
    assert "no resume checkpoint" in capsys.readouterr().err
    assert (run_dir / "best_model.pth").read_bytes() == b"precious"


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    restore_rng(torch.load(tmp_path / "rng.pth", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    from networks import build_network
    from training.checkpoints import ResumeState, load_resume_checkpoint, save_resume_checkpoint

    network = build_network("vnet", num_classes=2, base_filters=4)
    for iteration in (3, 6):
        save_resume_checkpoint(tmp_path, network, ResumeState(iteration, {}, {}, capture_rng()), {})
    newest = list_checkpoints(tmp_path)[-1][1]
    newest.write_bytes(newest.read_bytes()[:500])  # e.g. a disk that filled up during a copy
    messages = []
    path, state = load_resume_checkpoint(tmp_path, log=messages.append)
    assert state["iteration"] == 3 and path.name == "iter_0000003.pth"
    assert len(messages) == 1 and "iter_0000006.pth" in messages[0]


def test_settings_added_after_a_run_started_count_as_their_defaults():
    from training.config import config_differences, legacy_settings

    older = {"seed": 3, "consistency": 1.0}  # written before sync_bn / amp existed
    same_as_then = {"seed": 3, "consistency": 1.0, **legacy_settings(older)}  # the behaviour that run had
    assert config_differences(older, {**same_as_then, "sync_bn": False, "amp": "off"}) == []
    assert config_differences(older, {**same_as_then, "amp": "bf16"}) == ["amp: 'off' -> 'bf16'"]
    assert config_differences(older, {**same_as_then, "device": "cuda"}) == []  # runtime field


def test_settings_whose_default_changed_count_as_the_value_the_older_run_had():
    from training.config import config_differences, legacy_settings

    older = {"seed": 3, "method": "ss_net"}  # written before the official prototype weights became the default
    now = {**older, **legacy_settings(older), "memory_weights": "ones"}
    assert config_differences(older, now) == ["memory_weights: 'learned' -> 'ones'"]


# -- gradients between iterations: zeroed in place, as PyTorch 1.8 (the official scripts' version) did ----------
def _step(optimizer, used):
    zero_gradients(optimizer)
    sum(p.square().sum() for p in used).backward()
    optimizer.step()


def test_a_parameter_unused_in_an_iteration_keeps_moving_by_momentum_and_weight_decay():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(3))
    optimizer = build_sgd([a, b], lr=0.1)
    _step(optimizer, [a, b])
    b_before = b.detach().clone()
    _step(optimizer, [a])  # b unused now: its zero gradient still lets SGD apply momentum and weight decay
    assert b.grad is not None and not b.grad.any()
    assert not torch.equal(b.detach(), b_before)


def test_resume_restores_the_zero_gradients_of_stepped_parameters():
    def run(resume_after: int | None):
        torch.manual_seed(0)
        a, b, never = (torch.nn.Parameter(torch.randn(3)) for _ in range(3))
        optimizer = build_sgd([a, b, never], lr=0.1)
        for i, used in enumerate([[a, b], [a], [a], [a, b], [a]]):
            if i == resume_after:  # a new process: fresh gradients (None), optimiser state from the checkpoint
                state = optimizer.state_dict()
                for p in (a, b, never):
                    p.grad = None
                optimizer = build_sgd([a, b, never], lr=0.1)
                optimizer.load_state_dict(state)
                restore_zero_gradients(optimizer)
                assert b.grad is not None and never.grad is None  # as the uninterrupted run holds them
            _step(optimizer, used)
        return [p.detach().clone() for p in (a, b, never)]

    straight = run(None)
    for resume_after in (1, 2, 3):
        assert all(torch.equal(x, y) for x, y in zip(straight, run(resume_after), strict=True))
