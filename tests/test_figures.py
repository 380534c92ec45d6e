"""Figures: every script writes a non-empty PNG of the expected pixel size; the toy study learns what it should."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import test_acdc
import test_la
from dataloaders import read_list
from networks import build_network, save_checkpoint
from tools import compare_runs, feature_tsne, plot_runs, toy_two_moons
from toy.two_moons import ToySettings, accuracy, make_two_moons, train_moons
from training import train
from training.flags import build_train_parser, config_from_args
from viz import png_size, save_png
from viz.curves import read_log_scalars, read_run_scalars, smooth
from viz.overlay import MontageCase, case_overlay_figure, comparison_montage, stack_views

DPI = 100


def assert_png(path: Path, width_inches: float, height_inches: float) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    width, height = png_size(path)
    assert abs(width - width_inches * DPI) <= 1 and abs(height - height_inches * DPI) <= 1, (width, height)


# --- toy study -------------------------------------------------------------------------------------------------

def test_toy_supervised_model_reaches_the_known_accuracy_and_ss_net_ideas_beat_it():
    """10 labels, gamma 0.1: labels alone give a straight-ish boundary (~83-88 %); the unlabeled terms ~99.9 %."""
    torch.set_num_threads(1)
    data = make_two_moons(10, 0.1, seed=0)
    settings = ToySettings(iterations=300, rampup_iterations=100)
    supervised = accuracy(train_moons(data, "supervised", settings, seed=0), data.test_x, data.test_y)
    assert 0.75 <= supervised <= 0.95
    ss_net = accuracy(train_moons(data, "ss_net", settings, seed=0), data.test_x, data.test_y)
    assert ss_net >= 0.97 and ss_net > supervised


def test_toy_data_is_seeded_and_balanced():
    a, b = make_two_moons(6, 0.2, seed=3), make_two_moons(6, 0.2, seed=3)
    assert np.array_equal(a.labeled_x, b.labeled_x) and np.array_equal(a.test_x, b.test_x)
    assert np.bincount(a.labeled_y).tolist() == [3, 3]
    assert len(a.unlabeled_x) == 1000 and not np.isin(a.labeled_x[:, 0], a.unlabeled_x[:, 0]).any()
    with pytest.raises(ValueError, match="even"):
        make_two_moons(5, 0.1)


def test_toy_script_writes_figure_table_and_json(tmp_path):
    code = toy_two_moons.main(["--labels", "4", "--gammas", "0.1", "--seeds", "1", "--iterations", "40",
                               "--output_dir", str(tmp_path)])
    assert code == 0
    assert_png(tmp_path / "two_moons.png", 4 * 2.4, 1 * 2.4)  # one row: 2 methods x (boundary, t-SNE)
    table = (tmp_path / "two_moons.md").read_text()
    assert "| 4 | 0.1 |" in table and "SS-Net ideas" in table


# --- pure figure functions ---------------------------------------------------------------------------------------

def blob_volume(shape=(40, 36, 24), shift=0):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + (shift if i == 0 else 0) for i, s in enumerate(shape)]
    inside = sum(((g - c) / (s / 4)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    label = (inside < 1).astype(np.uint8)
    image = label + np.random.default_rng(0).normal(0, 0.3, shape)
    return image.astype(np.float32), label


def test_case_overlay_png_size_for_both_layouts(tmp_path):
    image, label = blob_volume()
    _, prediction = blob_volume(shift=3)
    assert_png(save_png(case_overlay_figure(image, label, prediction, layout="orthogonal", title="x"),
                        tmp_path / "la.png"), 7.5, 5.3)
    assert_png(save_png(case_overlay_figure(image, label, prediction, layout="stack"), tmp_path / "acdc.png"),
               7.5, 5.3)
    with pytest.raises(ValueError, match="orthogonal"):
        case_overlay_figure(image, label, prediction, layout="3d")


def test_stack_views_spread_over_the_foreground_slices():
    label = np.zeros((10, 8, 8), np.uint8)
    label[2:9, 2:6, 2:6] = 1
    picks = [int(v.name.split()[1]) for v in stack_views(label.astype(float), label)]
    assert len(picks) == 3 and all(2 <= p <= 8 for p in picks) and picks == sorted(set(picks))


def test_montage_png_size(tmp_path):
    image, label = blob_volume()
    cases = [MontageCase(f"case{i}", image, label, {"a": label, "b": np.zeros_like(label)}) for i in range(3)]
    path = save_png(comparison_montage(cases, ["a", "b"], layout="orthogonal"), tmp_path / "m.png")
    assert_png(path, 4 * 2.2, 3 * 2.2)


def test_log_parsing_skips_a_half_written_line(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("[t] iteration 1: dice 0.9 total 1.2 consistency_weight 0.1 lr 1.00e-02\n"
                   "[t] iteration 2: dice 0.8 total 1.1 consistency_weight 0.2 lr 1.00e-02\n"
                   "[t] iteration 2: val mean Dice 0.4000 (best 0.4000 @ 2) -> saved best\n"
                   "[t] iteration 3: dice 0.7 tot")
    scalars = read_log_scalars(log)
    assert scalars["loss/dice"][0].tolist() == [1, 2] and scalars["loss/dice"][1].tolist() == [0.9, 0.8]
    assert scalars["train/consistency_weight"][1].tolist() == [0.1, 0.2]
    assert scalars["val/mean_dice"][1].tolist() == [0.4] and "train/lr" in scalars
    assert smooth(np.array([1.0, 1.0]), 0.9).tolist() == pytest.approx([1.0, 1.0])


def test_plot_runs_reads_a_live_run_and_prefers_the_source_that_is_further_along(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "live"
    writer = SummaryWriter(log_dir=str(run / "tensorboard"))  # left open: the run is still going
    for step in range(1, 4):
        writer.add_scalar("loss/total", 1.0 / step, step)
        writer.add_scalar("train/memory_size_class1", 32.0, step)
    writer.flush()
    (run / "log.txt").write_text("".join(f"[t] iteration {i}: total {1.0 / i:.5f} lr 1.00e-02\n" for i in range(1, 6)))
    scalars = read_run_scalars(run)
    assert scalars["loss/total"][0][-1] == 5  # log.txt is ahead of the TensorBoard flush
    assert "train/memory_size_class1" in scalars  # only in TensorBoard
    out = tmp_path / "curves.png"
    assert plot_runs.main([str(run), "--output", str(out)]) == 0
    assert_png(out, 3 * 3.2, 1 * 2.4)  # loss/total, train/lr, memory size
    writer.close()
    assert plot_runs.main([str(tmp_path / "nothing"), "--output", str(out)]) == 2


# --- real data: tiny LA runs, test --save_png, montage, curves, t-SNE --------------------------------------------

@pytest.fixture(scope="module")
def la_runs(la_root, tmp_path_factory):
    """Supervised and SS-Net trained 4 iterations on 2 labeled + 1 unlabeled real LA cases (tiny V-Net)."""
    folder = tmp_path_factory.mktemp("figure_runs")
    train_ids = read_list(la_root / "train.list")[:4]
    (folder / "train.list").write_text("\n".join(train_ids) + "\n")
    (folder / "val.list").write_text(train_ids[-1] + "\n")
    (folder / "test.list").write_text("\n".join(read_list(la_root / "test.list")[:2]) + "\n")
    runs = {}
    for method in ("supervised", "ss_net"):
        args = build_train_parser("LA", "").parse_args([
            "--root_path", str(la_root), "--lists_dir", str(folder), "--labelnum", "2", "--max_iteration", "4",
            "--eval_every", "2", "--eval_start", "2", "--method", method, "--run_dir", str(folder / method),
            "--patch_size", "32,32,32", "--base_filters", "4", "--stride", "32,32,32", "--num_workers", "0",
            "--device", "cpu", "--no_progress"])
        runs[method] = train(config_from_args(args, "LA")).run_dir
    return folder, runs


def test_la_save_png_compare_runs_and_plot_runs(la_root, la_runs, tmp_path, capsys):
    lists, runs = la_runs
    test_dir = tmp_path / "test_supervised"
    code = test_la.main(["--checkpoint", str(runs["supervised"] / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(lists / "test.list"), "--output_dir", str(test_dir), "--device", "cpu",
                         "--no_progress", "--save_predictions", "--save_png"])
    assert code == 0
    cases = read_list(lists / "test.list")
    for case in cases:
        assert_png(test_dir / "png" / f"{case}.png", 7.5, 5.3)
    out = capsys.readouterr().out  # where the files went
    assert f"pictures (--save_png, one per case: truth and prediction): {test_dir / 'png'}/" in out
    assert f"predictions (NIfTI, one per case): {test_dir / 'predictions'}/" in out

    # a test folder (saved predictions) next to a run folder (predicted here)
    montage = tmp_path / "compare.png"
    code = compare_runs.main([str(test_dir), str(runs["ss_net"]), "--root_path", str(la_root),
                              "--names", "labeled only,SS-Net", "--output", str(montage)])
    assert code == 0
    assert_png(montage, 4 * 2.2, len(cases) * 2.2)

    curves = tmp_path / "curves.png"
    assert plot_runs.main([str(runs["supervised"]), str(runs["ss_net"]), "--output", str(curves)]) == 0
    tags = set(read_run_scalars(runs["ss_net"])) | set(read_run_scalars(runs["supervised"]))
    assert {"loss/lds", "loss/separation_unlabeled", "train/consistency_weight", "train/lr", "val/mean_dice"} <= tags
    assert_png(curves, 4 * 3.2, math.ceil(len(tags) / 4) * 2.4)


def test_compare_runs_errors_name_the_fix(la_root, la_runs, tmp_path, capsys):
    _, runs = la_runs
    assert compare_runs.main([str(tmp_path), "--root_path", str(la_root)]) == 2
    assert "--save_predictions" in capsys.readouterr().err
    assert compare_runs.main([str(runs["ss_net"]), "--names", "a,b", "--root_path", str(la_root),
                              "--output", str(tmp_path / "x.png")]) == 2
    assert "--names gives 2 names for 1 runs" in capsys.readouterr().err


def test_feature_tsne_on_la(la_root, la_runs, tmp_path):
    lists, runs = la_runs
    out = tmp_path / "tsne.png"
    code = feature_tsne.main(["--checkpoint", str(runs["supervised"]), str(runs["ss_net"] / "best_model.pth"),
                              "--root_path", str(la_root), "--case", read_list(lists / "test.list")[0],
                              "--samples_per_class", "40", "--output", str(out)])
    assert code == 0
    assert_png(out, 2 * 3.6, 3.6 + 0.35)


def test_acdc_save_png_and_feature_tsne_with_an_untrained_checkpoint(acdc_root, tmp_path):
    torch.manual_seed(0)
    network = build_network("unet", num_classes=4)
    checkpoint = tmp_path / "run" / "best_model.pth"
    save_checkpoint(checkpoint, network, dataset="ACDC", num_classes=4, method="supervised",
                    inference={"patch_size": [64, 64], "stride": [], "batch_size": 8, "nms": False})
    case = read_list(acdc_root / "test.list")[0]
    (tmp_path / "one.list").write_text(case + "\n")
    out = tmp_path / "eval"
    code = test_acdc.main(["--checkpoint", str(checkpoint), "--root_path", str(acdc_root), "--list",
                           str(tmp_path / "one.list"), "--output_dir", str(out), "--device", "cpu", "--no_progress",
                           "--save_png"])
    assert code == 0
    assert_png(out / "png" / f"{case}.png", 7.5, 5.3)
    tsne = tmp_path / "tsne.png"
    code = feature_tsne.main(["--checkpoint", str(checkpoint), "--root_path", str(acdc_root), "--case", case,
                              "--samples_per_class", "30", "--output", str(tsne)])
    assert code == 0
    assert_png(tsne, 3.6, 3.6 + 0.35)
