"""Figures: what every figure shows, read back from the written PNG or from the figure objects (class colours where
the labels are, the truth outlined along its border, the plotted curves and points, titles that agree with the
numbers), at the expected pixel size; the toy study learns what it should."""
from __future__ import annotations

import inspect
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex, to_rgb
from matplotlib.image import imread
from scipy import ndimage

import test_acdc
import test_la
from dataloaders import get_dataset, read_list
from networks import build_network, save_checkpoint
from tools import compare_runs, feature_tsne, plot_runs, toy_two_moons
from toy.study import MOON_COLORS, PLOT_BOUNDS
from toy.two_moons import ToySettings, accuracy, make_two_moons, train_moons
from training import train
from training.flags import build_train_parser, config_from_args
from viz import png_size, save_png
from viz.curves import read_log_scalars, read_run_scalars, smooth
from viz.embedding import class_color
from viz.features import network_input
from viz.overlay import GT_OUTLINE_COLOR, MontageCase, case_overlay_figure, comparison_montage, label_rgba, stack_views
from viz.runs import read_nifti_labels

DPI = 100


def assert_png(path: Path, width_inches: float, height_inches: float) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    width, height = png_size(path)
    assert abs(width - width_inches * DPI) <= 1 and abs(height - height_inches * DPI) <= 1, (width, height)


@pytest.fixture
def saved_figures(monkeypatch):
    """The figure behind every PNG the code under test writes, by file name (all of it writes via viz.io.save_png)."""
    import viz.io

    figures = {}
    write = viz.io.save_png

    def recording(figure, path, dpi=DPI):
        figures[Path(path).name] = figure  # closed once written, still readable
        return write(figure, path, dpi)

    monkeypatch.setattr(viz.io, "save_png", recording)
    return figures


# --- reading an overlay back from its PNG ----------------------------------------------------------------------

def png_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) colours in [0, 1] of a written PNG."""
    return imread(str(path))[..., :3]


def to_pixels(ax, rgb: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PNG (row, col) of the data positions (row, col) of an image panel (display y counts from the bottom)."""
    scale = rgb.shape[1] / ax.figure.bbox.width  # the PNG's pixels per display unit (1 at the figure's dpi)
    x, y = (ax.transData.transform(np.stack([cols, rows], 1).astype(float)) * scale).T
    return (rgb.shape[0] - y).astype(int), x.astype(int)


FILL_ALPHA = inspect.signature(label_rgba).parameters["alpha"].default


def class_shown(ax, rgb: np.ndarray, rows: np.ndarray, cols: np.ndarray, num_classes: int) -> np.ndarray:
    """The class whose fill each pixel at the data positions shows, 0 = no fill. A fill is alpha * colour
    + (1 - alpha) * grey, colour = class_color (one palette for overlays and t-SNE): only the shown class's
    alpha * colour leaves a grey (equal channels) behind."""
    tints = np.stack([np.zeros(3)] + [FILL_ALPHA * np.array(to_rgb(class_color(c))) for c in range(1, num_classes)])
    r, c = to_pixels(ax, rgb, rows, cols)
    return np.ptp(rgb[r, c][:, None, :] - tints[None], axis=2).argmin(axis=1)


def uniform(labels: np.ndarray, margin: int) -> np.ndarray:
    """Positions whose (2 margin + 1)^2 neighbourhood, inside the array, holds one label: clear of every border."""
    size = 2 * margin + 1
    low = ndimage.minimum_filter(labels.astype(int), size, mode="constant", cval=-1)
    high = ndimage.maximum_filter(labels.astype(int), size, mode="constant", cval=-1)
    return low == high


def assert_fill(ax, rgb, labels: np.ndarray, num_classes: int, truth: np.ndarray | None = None) -> None:
    """Each voxel of the panel's slice is drawn in the colour of its class in `labels` (0: no fill), checked
    away from class borders (and from the outlined truth's border, where the outline is drawn)."""
    keep = uniform(labels, 1) & (uniform(truth, 2) if truth is not None else True)
    rows, cols = np.nonzero(keep)
    assert len(rows) > 100, "too few voxels clear of a border to check"
    found = class_shown(ax, rgb, rows, cols, num_classes)
    wrong = found != labels[rows, cols]
    assert not wrong.any(), (f"{ax.get_title()!r}: {wrong.sum()} of {len(rows)} voxels in another colour, e.g. "
                             f"(row, col) {rows[wrong][0]}, {cols[wrong][0]}: {found[wrong][0]} for "
                             f"{labels[rows, cols][wrong][0]}")


def assert_outline_on_border(ax, rgb, truth: np.ndarray) -> None:
    """The yellow truth outline of a panel is drawn, and lies on the borders of the truth's classes."""
    x0, y0, x1, y1 = (ax.get_window_extent().extents * rgb.shape[1] / ax.figure.bbox.width).round().astype(int)
    top, left = rgb.shape[0] - y1 + 2, x0 + 2
    patch = rgb[top:rgb.shape[0] - y0 - 2, left:x1 - 2]
    target = np.array([int(GT_OUTLINE_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    pr, pc = np.nonzero(np.abs(patch - target).max(axis=2) < 0.1)  # the line's core (its edges are blended)
    assert len(pr) > 50, f"{ax.get_title()!r}: no truth outline drawn"
    scale = ax.figure.bbox.width / rgb.shape[1]
    display = np.stack([pc + left + 0.5, rgb.shape[0] - (pr + top + 0.5)], 1) * scale
    cols, rows = np.round(ax.transData.inverted().transform(display)).astype(int).T
    border = np.zeros(truth.shape, bool)
    square = np.ones((3, 3), bool)
    for c in np.unique(truth[truth > 0]):  # each class is outlined
        border |= ndimage.binary_dilation(truth == c, square) & ~ndimage.binary_erosion(truth == c, square)
    off = ~border[rows, cols]
    assert not off.any(), f"{ax.get_title()!r}: {off.sum()} of {len(off)} outline pixels off the truth's border"


VIEW_TITLE = re.compile(r"(axial|coronal|sagittal) ([xyz])=(\d+)|slice (\d+)")


def panel_slice(volume: np.ndarray, title: str) -> np.ndarray:
    """The 2-D slice a panel titled '... axial z=12' (LA: (W, H, D) volumes, rows along the second remaining
    axis) or '... slice 7' (ACDC: (S, H, W)) shows."""
    found = VIEW_TITLE.search(title)
    assert found, title
    if found[4] is not None:
        return volume[int(found[4])]
    return np.take(volume, int(found[3]), axis="xyz".index(found[2])).T


def assert_case_overlay(figure, png: Path, label: np.ndarray, prediction: np.ndarray, num_classes: int) -> None:
    """Row 1: the truth filled on three slices; row 2: the prediction filled with the truth outlined."""
    rgb = png_rgb(png)
    truth_row, prediction_row = figure.axes[:3], figure.axes[3:6]
    for truth_ax, prediction_ax in zip(truth_row, prediction_row, strict=True):
        if not truth_ax.get_images():
            continue  # fewer views than panels
        assert truth_ax.get_title().replace("ground truth", "") == \
            prediction_ax.get_title().replace("prediction (outline: truth)", "")  # one slice per column
        truth = panel_slice(label, truth_ax.get_title())
        assert_fill(truth_ax, rgb, truth, num_classes)
        assert_fill(prediction_ax, rgb, panel_slice(prediction, prediction_ax.get_title()), num_classes, truth)
        if truth.any():
            assert_outline_on_border(prediction_ax, rgb, truth)


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


def test_toy_script_writes_figure_table_and_json(tmp_path, saved_figures):
    code = toy_two_moons.main(["--labels", "4", "--gammas", "0.1", "--seeds", "1", "--iterations", "40",
                               "--output_dir", str(tmp_path)])
    assert code == 0
    assert_png(tmp_path / "two_moons.png", 4 * 2.4, 1 * 2.4)  # one row: 2 methods x (boundary, t-SNE)
    table = (tmp_path / "two_moons.md").read_text()
    assert "| 4 | 0.1 |" in table and "SS-Net ideas" in table
    accuracy = json.loads((tmp_path / "two_moons.json").read_text())["cells"][0]["accuracy"]
    boundary_supervised, tsne_supervised, boundary_ss_net, tsne_ss_net = saved_figures["two_moons.png"].axes
    for ax, method, title in ((boundary_supervised, "supervised", "supervised"),
                              (boundary_ss_net, "ss_net", "SS-Net ideas")):
        assert ax.get_title() == f"{title}: test acc {100 * accuracy[method][0]:.1f}%"  # the model drawn: seed 0
        assert ax.get_xlim() == pytest.approx(PLOT_BOUNDS[:2]) and ax.get_ylim() == pytest.approx(PLOT_BOUNDS[2:])
        unlabeled, *labeled = ax.collections[-3:]  # drawn after the shaded probabilities and the 0.5 contour
        assert len(unlabeled.get_offsets()) == 1000 and [len(c.get_offsets()) for c in labeled] == [2, 2]
        assert [to_hex(c.get_facecolor()[0]) for c in labeled] == [MOON_COLORS[0], MOON_COLORS[1]]
    for ax in (tsne_supervised, tsne_ss_net):  # the t-SNE of 400 test points, one colour per moon
        assert [to_hex(c.get_facecolor()[0]) for c in ax.collections] == [MOON_COLORS[0], MOON_COLORS[1]]
        assert sum(len(c.get_offsets()) for c in ax.collections) == 400
        assert ax.get_title().startswith("t-SNE of deep features (silh. ")


# --- pure figure functions ---------------------------------------------------------------------------------------

def blob_volume(shape=(40, 36, 24), shift=0):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    centre = [s / 2 + (shift if i == 0 else 0) for i, s in enumerate(shape)]
    inside = sum(((g - c) / (s / 4)) ** 2 for g, c, s in zip(grid, centre, shape, strict=True))
    label = (inside < 1).astype(np.uint8)
    image = label + np.random.default_rng(0).normal(0, 0.3, shape)
    return image.astype(np.float32), label


def two_class_blobs(layout: str, shift=0):
    """blob_volume with a second class (three classes, as ACDC): for the stack layout on every other slice, so
    a panel showing a neighbouring slice shows the other class; for the orthogonal views the far half."""
    image, label = blob_volume(shift=shift)
    if layout == "stack":
        label[(label == 1) & (np.arange(label.shape[0]) % 2 == 1)[:, None, None]] = 2
    else:
        label[(label == 1) & (np.arange(label.shape[2]) >= label.shape[2] // 2)] = 2
    return image, label


@pytest.mark.parametrize("layout", ["orthogonal", "stack"])
def test_case_overlay_draws_each_class_colour_where_its_labels_are(tmp_path, layout):
    image, label = two_class_blobs(layout)
    _, prediction = two_class_blobs(layout, shift=3)
    figure = case_overlay_figure(image, label, prediction, layout=layout, title="x")
    path = save_png(figure, tmp_path / f"{layout}.png")
    assert_png(path, 7.5, 5.3)
    assert_case_overlay(figure, path, label, prediction, num_classes=3)
    titles = [ax.get_title() for ax in figure.axes[:3]]
    if layout == "orthogonal":  # the three views cross at the centre of the truth's foreground
        centre = np.round(np.argwhere(label > 0).mean(0)).astype(int)
        assert titles == [f"ground truth, axial z={centre[2]}", f"ground truth, coronal y={centre[1]}",
                          f"ground truth, sagittal x={centre[0]}"]
    else:
        assert all(t.startswith("ground truth, slice ") for t in titles)
    with pytest.raises(ValueError, match="orthogonal"):
        case_overlay_figure(image, label, prediction, layout="3d")


def test_the_overlay_check_sees_a_misplaced_label(tmp_path):
    """The reader above is no tautology: a truth drawn transposed (or a class in the wrong colour) is caught."""
    image, label = two_class_blobs("stack")
    figure = case_overlay_figure(image, label, label, layout="stack")
    path = save_png(figure, tmp_path / "stack.png")
    ax, shown = figure.axes[0], panel_slice(label, figure.axes[0].get_title())
    assert_fill(ax, png_rgb(path), shown, num_classes=3)
    with pytest.raises(AssertionError, match="in another colour"):
        assert_fill(ax, png_rgb(path), np.where(shown > 0, 3 - shown, 0), num_classes=3)  # classes 1 and 2 swapped
    with pytest.raises(AssertionError, match="in another colour"):
        assert_fill(ax, png_rgb(path), np.roll(shown, 3, axis=0), num_classes=3)


def test_stack_views_spread_over_the_foreground_slices():
    label = np.zeros((10, 8, 8), np.uint8)
    label[2:9, 2:6, 2:6] = 1
    picks = [int(v.name.split()[1]) for v in stack_views(label.astype(float), label)]
    assert len(picks) == 3 and all(2 <= p <= 8 for p in picks) and picks == sorted(set(picks))


def test_montage_shows_each_run_on_the_slice_with_most_truth(tmp_path):
    image, label = blob_volume()
    cases = [MontageCase(f"case{i}", image, label, {"a": label, "b": np.zeros_like(label)}) for i in range(3)]
    figure = comparison_montage(cases, ["a", "b"], layout="orthogonal")
    path = save_png(figure, tmp_path / "m.png")
    assert_png(path, 4 * 2.2, 3 * 2.2)
    rgb = png_rgb(path)
    z = int(np.argmax((label > 0).sum(axis=(0, 1))))  # the axial slice with the most truth
    truth = label[:, :, z].T
    axes = np.array(figure.axes).reshape(3, 4)
    for row, case in enumerate(cases):
        assert [ax.get_title() for ax in axes[row]] == [f"{case.case} (z {z})", "ground truth", "a: Dice 100.0%",
                                                         "b: Dice 0.0%"]
        assert_fill(axes[row, 0], rgb, np.zeros_like(truth), 2)  # the image alone
        assert_fill(axes[row, 1], rgb, truth, 2)
        assert_fill(axes[row, 2], rgb, truth, 2, truth)
        assert_fill(axes[row, 3], rgb, np.zeros_like(truth), 2, truth)
        for ax in axes[row, 2:]:
            assert_outline_on_border(ax, rgb, truth)


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


def test_plot_runs_reads_a_live_run_and_prefers_the_source_that_is_further_along(tmp_path, saved_figures):
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
    panels = {ax.get_title(): ax for ax in saved_figures["curves.png"].axes if ax.get_title()}
    assert list(panels) == ["loss/total", "train/lr", "train/memory_size_class1"]
    raw, smoothed = panels["loss/total"].get_lines()  # the faint raw curve under the smoothed one
    assert raw.get_xdata().tolist() == [1, 2, 3, 4, 5]  # log.txt's five iterations, not TensorBoard's three
    assert raw.get_ydata() == pytest.approx([1.0 / i for i in range(1, 6)], abs=1e-5)
    assert smoothed.get_ydata() == pytest.approx(smooth(np.asarray(raw.get_ydata()), 0.9))
    low, high = panels["loss/total"].get_xlim()
    assert low <= 1 and high >= 5 and high < 6
    assert [t.get_text() for t in panels["loss/total"].get_legend().get_texts()] == ["live"]
    (lr,) = panels["train/lr"].get_lines()
    assert panels["train/lr"].get_yscale() == "log" and lr.get_ydata() == pytest.approx([1e-2] * 5)
    (memory,) = panels["train/memory_size_class1"].get_lines()
    assert memory.get_xdata().tolist() == [1, 2, 3] and memory.get_ydata().tolist() == [32.0] * 3
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


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    both = (prediction > 0).sum() + (truth > 0).sum()
    return 2 * ((prediction > 0) & (truth > 0)).sum() / both if both else 1.0


def test_la_save_png_compare_runs_and_plot_runs(la_root, la_runs, tmp_path, saved_figures, capsys):
    lists, runs = la_runs
    test_dir = tmp_path / "test_supervised"
    code = test_la.main(["--checkpoint", str(runs["supervised"] / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(lists / "test.list"), "--output_dir", str(test_dir), "--device", "cpu",
                         "--no_progress", "--save_predictions", "--save_png"])
    assert code == 0
    cases = read_list(lists / "test.list")
    la = get_dataset("LA")
    truths, predictions = {}, {}
    for case in cases:
        png = test_dir / "png" / f"{case}.png"
        assert_png(png, 7.5, 5.3)
        _, truths[case] = la.load_case(str(la_root), case)
        predictions[case] = read_nifti_labels(test_dir / "predictions" / f"{case}.nii.gz")
        figure = saved_figures[png.name]  # the case's truth and its saved prediction, where the PNG shows them
        assert_case_overlay(figure, png, truths[case], predictions[case], num_classes=2)
        assert figure.get_suptitle() == \
            f"{case}: mean foreground Dice {100 * dice(predictions[case], truths[case]):.1f}%"
    out = capsys.readouterr().out  # where the files went
    assert f"pictures (--save_png, one per case: truth and prediction): {test_dir / 'png'}/" in out
    assert f"predictions (NIfTI, one per case): {test_dir / 'predictions'}/" in out

    # a test folder (saved predictions) next to a run folder (predicted here)
    montage = tmp_path / "compare.png"
    code = compare_runs.main([str(test_dir), str(runs["ss_net"]), "--root_path", str(la_root),
                              "--names", "labeled only,SS-Net", "--output", str(montage)])
    assert code == 0
    assert_png(montage, 4 * 2.2, len(cases) * 2.2)
    rgb, axes = png_rgb(montage), np.array(saved_figures["compare.png"].axes).reshape(len(cases), 4)
    for row, case in enumerate(cases):  # columns: image, truth, labeled only (its saved labels), SS-Net
        z = int(np.argmax((truths[case] > 0).sum(axis=(0, 1))))
        truth = truths[case][:, :, z].T
        assert axes[row, 0].get_title() == f"{case} (z {z})"
        assert axes[row, 2].get_title() == f"labeled only: Dice {100 * dice(predictions[case], truths[case]):.1f}%"
        assert axes[row, 3].get_title().startswith("SS-Net: Dice ")
        assert_fill(axes[row, 1], rgb, truth, 2)
        assert_fill(axes[row, 2], rgb, predictions[case][:, :, z].T, 2, truth)
        assert_outline_on_border(axes[row, 3], rgb, truth)

    curves = tmp_path / "curves.png"
    assert plot_runs.main([str(runs["supervised"]), str(runs["ss_net"]), "--output", str(curves)]) == 0
    scalars = {name: read_run_scalars(runs[name]) for name in ("supervised", "ss_net")}
    tags = set(scalars["ss_net"]) | set(scalars["supervised"])
    assert {"loss/lds", "loss/separation_unlabeled", "train/consistency_weight", "train/lr", "val/mean_dice"} <= tags
    assert_png(curves, 4 * 3.2, math.ceil(len(tags) / 4) * 2.4)
    figure = saved_figures["curves.png"]
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert set(panels) == tags  # one panel per scalar of either run
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["supervised", "ss_net"]
    colours = {"supervised": "#1f77b4", "ss_net": "#ff7f0e"}  # the first two of matplotlib's default cycle
    for tag, ax in panels.items():  # each run's series in the run's colour (two lines per loss: raw, smoothed)
        drawn = {to_hex(line.get_color()): line for line in ax.get_lines()}
        assert set(drawn) == {colours[run] for run in colours if tag in scalars[run]}, (tag, set(drawn))
        for run, colour in colours.items():
            if tag in scalars[run]:
                assert drawn[colour].get_xdata().tolist() == scalars[run][tag][0].tolist()
    assert panels["val/mean_dice"].get_lines()[0].get_xdata().tolist() == [2, 4]  # --eval_every 2 up to 4
    assert all(0 <= v <= 1 for line in panels["val/mean_dice"].get_lines() for v in line.get_ydata())


def test_compare_runs_errors_name_the_fix(la_root, la_runs, tmp_path, capsys):
    _, runs = la_runs
    assert compare_runs.main([str(tmp_path), "--root_path", str(la_root)]) == 2
    assert "--save_predictions" in capsys.readouterr().err
    assert compare_runs.main([str(runs["ss_net"]), "--names", "a,b", "--root_path", str(la_root),
                              "--output", str(tmp_path / "x.png")]) == 2
    assert "--names gives 2 names for 1 runs" in capsys.readouterr().err


def assert_tsne_panel(ax, name: str, class_names: dict[int, str], per_class: dict[int, int]) -> None:
    """One model's t-SNE: each class's sampled voxels in its colour, the misclassified ones crossed, the title's
    share of crossed voxels equal to the crosses drawn."""
    *classes, crossed = ax.collections
    assert [c.get_label() for c in classes] == [class_names[k] for k in per_class]
    assert [len(c.get_offsets()) for c in classes] == list(per_class.values())
    assert [to_hex(c.get_facecolor()[0]) for c in classes] == [class_color(k) for k in per_class]
    share = len(crossed.get_offsets()) / sum(per_class.values())
    assert re.fullmatch(rf"{re.escape(name)}\nsilhouette -?[01]\.\d\d, {100 * share:.0f}% misclassified \(x\)",
                        ax.get_title()), ax.get_title()


def sampled_per_class(dataset, root, case: str, patch_size, samples_per_class: int) -> dict[int, int]:
    """Voxels a t-SNE samples of each class: --samples_per_class, or all a class has in the probed region."""
    image, label = dataset.load_case(str(root), case)
    _, region_label = network_input(image, label, patch_size)
    return {int(c): min(samples_per_class, int((region_label == c).sum())) for c in np.unique(region_label)}


def test_feature_tsne_on_la(la_root, la_runs, tmp_path, saved_figures):
    lists, runs = la_runs
    out = tmp_path / "tsne.png"
    case = read_list(lists / "test.list")[0]
    code = feature_tsne.main(["--checkpoint", str(runs["supervised"]), str(runs["ss_net"] / "best_model.pth"),
                              "--root_path", str(la_root), "--case", case,
                              "--samples_per_class", "40", "--output", str(out)])
    assert code == 0
    assert_png(out, 2 * 3.6, 3.6 + 0.35)
    figure = saved_figures["tsne.png"]
    assert figure.get_suptitle() == f"LA case {case}: decoder features, t-SNE"
    per_class = sampled_per_class(get_dataset("LA"), la_root, case, (32, 32, 32), 40)
    assert per_class[1] == 40
    for ax, name in zip(figure.axes, ("supervised", "ss_net"), strict=True):  # both probed at the same voxels
        assert_tsne_panel(ax, name, {0: "background", 1: "left atrium"}, per_class)


def tie_two_classes(network, image: np.ndarray, size: tuple[int, int]) -> None:
    """Shift an untrained network's classifier biases so that background and RV tie at the median pixel of the
    case and the other classes lose everywhere: its labels then vary over the image, as a trained network's do,
    instead of one class everywhere (an overlay of a uniform prediction would show little)."""
    slices = np.stack([ndimage.zoom(s, (size[0] / s.shape[0], size[1] / s.shape[1]), order=0) for s in image])
    classifier = dict(network.named_modules())["decoder.out_conv"]
    with torch.no_grad():
        logits = network.eval()(torch.from_numpy(slices)[:, None].float()).logits
        classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
        classifier.bias[2:] -= 100


def test_acdc_save_png_and_feature_tsne_with_an_untrained_checkpoint(acdc_root, tmp_path, saved_figures):
    torch.manual_seed(0)
    network = build_network("unet", num_classes=4)
    case = read_list(acdc_root / "test.list")[0]
    image, truth = get_dataset("ACDC").load_case(str(acdc_root), case)
    tie_two_classes(network, image, (64, 64))
    checkpoint = tmp_path / "run" / "best_model.pth"
    save_checkpoint(checkpoint, network, dataset="ACDC", num_classes=4, method="supervised",
                    inference={"patch_size": [64, 64], "stride": [], "batch_size": 8, "nms": False})
    (tmp_path / "one.list").write_text(case + "\n")
    out = tmp_path / "eval"
    code = test_acdc.main(["--checkpoint", str(checkpoint), "--root_path", str(acdc_root), "--list",
                           str(tmp_path / "one.list"), "--output_dir", str(out), "--device", "cpu", "--no_progress",
                           "--save_png", "--save_predictions"])
    assert code == 0
    png = out / "png" / f"{case}.png"
    assert_png(png, 7.5, 5.3)
    prediction = read_nifti_labels(out / "predictions" / f"{case}.nii.gz")
    assert 0.2 < (prediction == 1).mean() < 0.8 and prediction.max() == 1  # background and RV, both widespread
    assert_case_overlay(saved_figures[png.name], png, truth, prediction, num_classes=4)
    assert all(ax.get_title().startswith("ground truth, slice ") for ax in saved_figures[png.name].axes[:3])

    tsne = tmp_path / "tsne.png"
    code = feature_tsne.main(["--checkpoint", str(checkpoint), "--root_path", str(acdc_root), "--case", case,
                              "--samples_per_class", "30", "--output", str(tsne)])
    assert code == 0
    assert_png(tsne, 3.6, 3.6 + 0.35)
    (ax,) = saved_figures["tsne.png"].axes
    per_class = sampled_per_class(get_dataset("ACDC"), acdc_root, case, (64, 64), 30)
    assert list(per_class) == [0, 1, 2, 3]
    assert_tsne_panel(ax, "run", {0: "background", 1: "RV", 2: "Myo", 3: "LV"}, per_class)
