"""Checkpoints and run folders written by the code before the architecture redesign (tests/data/pre_redesign,
written when every network carried SS-Net's heads) still evaluate with the same numbers; their run folders are
refused on resume with a clear error; a fresh SS-Net run trains as the old code did."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import test_la
import train_la
from dataloaders import make_synthetic_la
from inference import Predictor

FIXTURES = Path(__file__).parent / "data" / "pre_redesign"
METHODS = ("ss_net", "mean_teacher", "mc_net")
# The expected values are float32 weight sums of a few training steps. Another thread count or CPU sums in another
# order; the difference is judged against the tensor's absolute sum. Measured (1 vs 2 threads): mean_teacher and
# mc_net move by at most 4e-5 of it, while a real change moves some tensor by >= 5e-2 (momentum lost on resume:
# >= 0.26; LR x1.1: >= 5e-2).
SUM_TOLERANCE = 1e-3
# SS-Net is the exception: on these 1- and 2-filter networks its argmax pseudo labels and prototype ranking turn a
# rounding difference into another trajectory (1 vs 2 threads moves a BatchNorm bias by 8% of its size, as much as
# the real changes above), so no tolerance tells them apart. Its runs use the thread count that made the fixtures;
# on a CPU whose kernels round differently they would fail for the same reason. tests/test_official_fixture.py
# checks SS-Net's numerics independently of the CPU (float64).
SS_NET_THREADS = 2


def assert_sums_match(tensors: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    """Every floating-point tensor's sum as expected, within SUM_TOLERANCE of its absolute sum."""
    floating = {k: v.double() for k, v in tensors.items() if v.dtype.is_floating_point}
    assert set(floating) == set(expected)
    for key, value in floating.items():
        difference = abs(float(value.sum()) - expected[key])
        assert difference <= SUM_TOLERANCE * float(value.abs().sum()), f"{key}: sum off by {difference:.3g}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """The synthetic data the fixtures were trained on (regenerated: make_synthetic_la is seeded)."""
    return make_synthetic_la(tmp_path_factory.mktemp("pre_redesign_data"), n_train=6, n_test=1, shape=(24, 24, 20),
                             seed=3, n_val=1)


@pytest.mark.parametrize("name", sorted(json.loads((FIXTURES / "expected_logits.json").read_text())))
def test_old_checkpoints_predict_the_logits_they_did(name):
    expected = json.loads((FIXTURES / "expected_logits.json").read_text())[name]
    predictor = Predictor.from_checkpoint(FIXTURES / name, device="cpu", expect_dataset="LA")
    x = torch.randn(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = predictor.network(x).logits
    assert float(logits.sum()) == pytest.approx(expected["logits_sum"], rel=1e-6)
    assert float(logits.abs().sum()) == pytest.approx(expected["logits_abs_sum"], rel=1e-6)
    assert logits.flatten()[:5].tolist() == pytest.approx(expected["logits_first"], rel=1e-6)
    assert int((logits.argmax(1) == 1).sum()) == expected["foreground_voxels"]


def test_test_script_evaluates_an_old_best_model(synthetic, tmp_path, capsys):
    out = tmp_path / "eval"
    assert test_la.main(["--checkpoint", str(FIXTURES / "ss_net" / "best_model.pth"), "--root_path", str(synthetic),
                         "--list", str(synthetic / "test.list"), "--stride", "8,8,8", "--output_dir", str(out),
                         "--device", "cpu", "--no_progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "ss_net" and summary["trained_iterations"] == 1
    assert summary["mean"]["dice"]["mean"] == pytest.approx(0.128807, abs=1e-6)  # what the old code measured


def copy_run(method: str, synthetic: Path, tmp_path: Path) -> Path:
    """The fixture run folder, pointed at the regenerated data (config.json and the checkpoint's config)."""
    run = tmp_path / method
    shutil.copytree(FIXTURES / method, run)
    config = json.loads((run / "config.json").read_text())
    config.update(root_path=str(synthetic), lists_dir=str(synthetic), run_dir=str(run), resume="")
    (run / "config.json").write_text(json.dumps(config))
    path = next((run / "checkpoints").glob("iter_*.pth"))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"].update(root_path=str(synthetic), lists_dir=str(synthetic), run_dir=str(run))
    torch.save(checkpoint, path)
    return run


@pytest.mark.parametrize("method", METHODS)
def test_old_runs_are_refused_on_resume_with_a_clear_error(method, synthetic, tmp_path, capsys):
    """Their optimiser state indexes the network's parameters with SS-Net's heads among them; the code that
    re-indexed it was dropped with the redesign of the method contract (docs/training.md). The refusal names the
    checkpoint and what still works, and writes nothing."""
    run = copy_run(method, synthetic, tmp_path)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert train_la.main(["--resume", str(run), "--max_iteration", "4", "--device", "cpu", "--num_workers", "0",
                          "--no_progress"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: cannot resume from") and "iter_0000002.pth" in error
    assert "networks carried SS-Net's heads" in error and "test_la.py" in error
    assert sorted(p.relative_to(run) for p in run.rglob("*") if p.name != "log.txt") == \
        [p for p in before if p.name != "log.txt"]


def test_a_fresh_ss_net_run_is_numerically_unchanged(synthetic, tmp_path):
    """SS-Net initialises and trains its heads in the order the network used to: same draws, same weights."""
    expected = json.loads((FIXTURES / "expected_fresh.json").read_text())["ss_net"]
    run = tmp_path / "fresh"
    torch.set_num_threads(SS_NET_THREADS)  # restored after the test (conftest.py)
    assert train_la.main(["--root_path", str(synthetic), "--lists_dir", str(synthetic), "--labelnum", "2",
                          "--method", "ss_net", "--max_iteration", "3", "--patch_size", "16,16,16", "--base_filters",
                          "2", "--stride", "8,8,8", "--batch_size", "4", "--labeled_bs", "2", "--eval_every", "1",
                          "--eval_start", "1", "--save_every", "1", "--select", "val", "--num_workers", "0",
                          "--device", "cpu", "--no_progress", "--image_every", "0", "--run_dir", str(run)]) == 0
    last = torch.load(run / "last_model.pth", weights_only=True)
    assert_sums_match({**last["state_dict"], **last["method_state"]["heads"]}, expected["sums"])
    assert json.loads((run / "result.json").read_text())["best_score"] == pytest.approx(expected["result"], abs=1e-9)
