"""Train a few iterations on real LA / ACDC cases, write checkpoints, test them, read the CSV; CLI errors."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_acdc
import test_la
import train_acdc
import train_la
from dataloaders import read_list
from networks import build_network
from training import train
from training.flags import build_train_parser, config_from_args

REPO = Path(__file__).resolve().parents[1]
TINY_LA = ["--patch_size", "32,32,32", "--base_filters", "4", "--stride", "32,32,32", "--num_workers", "0",
           "--device", "cpu", "--no_progress"]


@pytest.fixture(scope="module")
def la_lists(la_root, tmp_path_factory) -> Path:
    """4 real training cases (2 labeled, 1 unlabeled, 1 validation) and 2 test cases."""
    folder = tmp_path_factory.mktemp("la_lists")
    train_ids = read_list(la_root / "train.list")[:4]
    (folder / "train.list").write_text("\n".join(train_ids) + "\n")
    (folder / "val.list").write_text(train_ids[-1] + "\n")
    (folder / "test.list").write_text("\n".join(read_list(la_root / "test.list")[:2]) + "\n")
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_la_train_then_test_writes_checkpoints_csv_and_json(la_root, la_lists, tmp_path, capsys):
    run = tmp_path / "run"
    code = train_la.main(["--root_path", str(la_root), "--lists_dir", str(la_lists), "--labelnum", "2",
                          "--max_iteration", "3", "--eval_every", "3", "--eval_start", "3", "--run_dir", str(run),
                          *TINY_LA])
    assert code == 0
    for name in ("best_model.pth", "last_model.pth", "config.json", "environment.json", "log.txt",
                 "splits/labeled.list", "splits/unlabeled.list", "splits/val.list"):
        assert (run / name).is_file(), name
    assert read_list(run / "splits" / "labeled.list") == read_list(la_lists / "train.list")[:2]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    log = (run / "log.txt").read_text()
    assert "iteration 3:" in log and "val mean Dice" in log
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["network"]["kwargs"]["base_filters"] == 4 and checkpoint["selection"]["select"] == "val"

    out = tmp_path / "eval"
    code = test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(la_lists / "test.list"), "--output_dir", str(out), "--device", "cpu",
                         "--no_progress", "--save_predictions"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Dice (%)" in printed and "left atrium" in printed and "selected on the validation list" in printed
    rows = read_csv(out / "metrics.csv")
    assert [r["case"] for r in rows] == read_list(la_lists / "test.list")
    assert set(rows[0]) >= {"case", "class", "dice", "jaccard", "hd95", "asd"}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["metrics"]["units"] == "voxel"
    assert summary["inference"]["patch_size"] == [32, 32, 32] and summary["inference"]["largest_component"] is True
    assert len(list((out / "predictions").glob("*.nii.gz"))) == 2


def test_acdc_train_then_test(acdc_root, tmp_path, capsys):
    run = tmp_path / "run"
    code = train_acdc.main(["--root_path", str(acdc_root), "--lists_dir", str(acdc_root), "--labelnum", "1",
                            "--max_iteration", "3", "--eval_every", "3", "--eval_start", "3", "--patch_size", "64,64",
                            "--batch_size", "4", "--labeled_bs", "2", "--num_workers", "0", "--device", "cpu",
                            "--no_progress", "--run_dir", str(run)])
    assert code == 0 and (run / "best_model.pth").is_file()
    # --labelnum counts patients, the loader draws slices: the log says both
    labeled, unlabeled = (read_list(run / "splits" / f"{name}.list") for name in ("labeled", "unlabeled"))
    patients = {name: len({s.split("_")[0] for s in ids}) for name, ids in (("l", labeled), ("u", unlabeled))}
    assert patients["l"] == 1
    assert (f"labeled {len(labeled)} slices (1 patient), unlabeled {len(unlabeled)} slices ({patients['u']} patient"
            in (run / "log.txt").read_text())
    out = tmp_path / "eval"
    code = test_acdc.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(acdc_root),
                           "--list", str(acdc_root / "test.list"), "--output_dir", str(out), "--device", "cpu",
                           "--no_progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("RV", "Myo", "LV", "mean"))
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 3 * len(read_list(acdc_root / "test.list"))
    assert {r["class_name"] for r in rows} == {"RV", "Myo", "LV"}


def test_paper_protocol_is_named_in_checkpoint_and_test_output(la_root, la_lists, tmp_path, capsys):
    """--select test (the paper's LA protocol) selects on the test list and says so everywhere."""
    run = tmp_path / "run"
    code = train_la.main(["--root_path", str(la_root), "--lists_dir", str(la_lists), "--labelnum", "2",
                          "--max_iteration", "2", "--eval_every", "2", "--eval_start", "2", "--select", "test",
                          "--run_dir", str(run), *TINY_LA])
    assert code == 0
    # the paper protocol has no validation set: the val case joins the unlabeled pool
    assert read_list(run / "splits" / "unlabeled.list") == read_list(la_lists / "train.list")[2:]
    assert "test mean Dice" in (run / "log.txt").read_text()
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert "TEST set" in checkpoint["selection"]["protocol"]
    code = test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(la_lists / "test.list"), "--output_dir", str(tmp_path / "eval"),
                         "--device", "cpu", "--no_progress"])
    assert code == 0 and "TEST set" in capsys.readouterr().out
    assert "TEST set" in json.loads((tmp_path / "eval" / "summary.json").read_text())["protocol"]


def test_official_state_dict_is_evaluated(la_root, la_lists, tmp_path):
    """A plain state dict as the official scripts save it (here a narrow V-Net, DataParallel prefix)."""
    torch.manual_seed(0)
    network = build_network("vnet", num_classes=2, base_filters=4)
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, tmp_path / "VNet_best_model.pth")
    out = tmp_path / "eval"
    code = test_la.main(["--checkpoint", str(tmp_path / "VNet_best_model.pth"), "--root_path", str(la_root),
                         "--list", str(la_lists / "test.list"), "--output_dir", str(out), "--patch_size", "32,32,32",
                         "--stride", "32,32,32", "--device", "cpu", "--no_progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint_kind"] == "official" and "official released weights" in summary["protocol"]


def la_config(la_root, la_lists, run_dir, workers=0, seed=1337):
    parser = build_train_parser("LA", "")
    args = parser.parse_args(["--root_path", str(la_root), "--lists_dir", str(la_lists), "--labelnum", "2",
                              "--max_iteration", "3", "--select", "last", "--run_dir", str(run_dir),
                              "--seed", str(seed), *TINY_LA])
    config = config_from_args(args, "LA")
    config.num_workers = workers
    return config


def test_same_seed_gives_identical_losses_whatever_the_worker_count(la_root, la_lists, tmp_path):
    first = train(la_config(la_root, la_lists, tmp_path / "a")).losses
    second = train(la_config(la_root, la_lists, tmp_path / "b", workers=2)).losses
    other_seed = train(la_config(la_root, la_lists, tmp_path / "c", seed=7)).losses
    assert len(first) == 3 and first == second
    assert first != other_seed


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train_la.py", "--method", "ssnet", "--root_path", "nowhere"], "did you mean 'ss_net'"),
        (["train_la.py", "--labeled_bs", "4", "--batch_size", "4", "--root_path", "nowhere"], "--labeled_bs"),
        (["train_la.py", "--root_path", "nowhere", "--device", "cpu"], "--root_path nowhere does not exist"),
        (["train_la.py", "--labelnum", "0", "--root_path", "nowhere"], "--labelnum"),
        (["train_la.py", "--patch_size", "30,32,32", "--root_path", "nowhere"], "divisible by 16"),
        (["test_la.py", "--checkpoint", "missing.pth", "--device", "cpu"], "checkpoint not found: missing.pth"),
    ],
)
def test_bad_input_gives_one_clear_line_and_exit_2(argv, message, tmp_path):
    result = run_script(*argv, *(["--run_dir", str(tmp_path / "run")] if argv[0].startswith("train") else []))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_a_non_checkpoint_file_is_refused(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("not a checkpoint")
    result = run_script("test_la.py", "--checkpoint", str(bogus), "--device", "cpu")
    assert result.returncode == 2 and "truncated or not a PyTorch checkpoint" in result.stderr
