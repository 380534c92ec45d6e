"""Bad input: one `error:` line naming the file or flag and the fix, exit 2, and the output folder unchanged."""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import test_la
import train_la
from dataloaders import la_case_path, make_synthetic_la, read_list
from networks import build_network, save_checkpoint


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    return make_synthetic_la(root, n_train=5, n_test=1, shape=(24, 24, 20), seed=4, n_val=1)


@pytest.fixture
def data(clean_data, tmp_path) -> Path:
    """A private copy each test may break."""
    return Path(shutil.copytree(clean_data, tmp_path / "data"))


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def train_flags(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--root_path", str(data), "--lists_dir", str(data), "--labelnum", "2", "--max_iteration", "2",
            "--patch_size", "16,16,16", "--base_filters", "4", "--stride", "16,16,16", "--eval_every", "2",
            "--eval_start", "2", "--save_every", "1", "--num_workers", "0", "--device", "cpu", "--no_progress",
            "--run_dir", str(run_dir), *extra]


def first_case(data: Path) -> Path:
    return la_case_path(data, read_list(data / "train.list")[0])


def rewrite(path: Path, **arrays) -> None:
    path.unlink()
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def expect_error(capsys, code: int, *fragments: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def break_data(data: Path, how: str) -> tuple[list[str], tuple[str, ...]]:
    """Damage `data` in one way; return extra flags and the expected message fragments."""
    case = first_case(data)
    with h5py.File(case, "r") as f:
        image, label = f["image"][()], f["label"][()]
    if how == "root_missing":
        shutil.rmtree(data / "2018LA_Seg_Training Set")
        shutil.rmtree(data.parent / "nowhere", ignore_errors=True)
        return ["--root_path", str(data.parent / "nowhere")], ("--root_path", "does not exist")
    if how == "case_missing":
        (data / "train.list").write_text((data / "train.list").read_text() + "NO_SUCH_CASE\n")
        return [], ("missing under --root_path", "NO_SUCH_CASE")
    if how == "no_label_key":
        rewrite(case, image=image)
        return [], (str(case), "'label'")
    if how == "shape_mismatch":
        rewrite(case, image=image, label=label[:, :, :-1])
        return [], (str(case), "expected two equal")
    if how == "stray_label":
        bad = label.copy()
        bad[0, 0, 0] = 3
        rewrite(case, image=image, label=bad)
        return [], (str(case), "[3]", "outside the classes 0..1")
    if how == "nan_image":
        bad = image.copy()
        bad[1, 2, 3] = np.nan
        rewrite(case, image=image * 0 + bad, label=label)
        return [], (str(case), "NaN/Inf")
    if how == "truncated_h5":
        case.write_bytes(case.read_bytes()[:200])
        return [], (str(case), "not a readable h5 file")
    if how == "escaping_path":
        (data / "train.list").write_text("../../../etc\n" + (data / "train.list").read_text())
        return [], ("train.list line 1", "is a path, not a case id")
    if how == "bad_val_case":  # a validation volume is checked before the first iteration too
        val_case = la_case_path(data, read_list(data / "val.list")[0])
        with h5py.File(val_case, "r") as f:
            image_v = f["image"][()]
        rewrite(val_case, image=image_v)
        return [], (str(val_case), "'label'")
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["root_missing", "case_missing", "no_label_key", "shape_mismatch", "stray_label",
                                 "nan_image", "truncated_h5", "escaping_path", "bad_val_case"])
def test_bad_data_is_refused_before_anything_is_written(how, data, tmp_path, capsys):
    extra, fragments = break_data(data, how)
    run_dir = tmp_path / "run"
    code = train_la.main(train_flags(data, run_dir, *extra))
    expect_error(capsys, code, *fragments)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--labelnum", "0"], ("--labelnum 0 out of range",)),
        (["--labelnum", "99"], ("--labelnum 99 out of range",)),
        (["--labeled_bs", "4", "--batch_size", "4"], ("--batch_size (4) must exceed --labeled_bs (4)",)),
        (["--labeled_bs", "5", "--batch_size", "4"], ("--labeled_bs must be between 1 and --batch_size",)),
        (["--save_every", "0"], ("--save_every",)),
        (["--patch_size", "20,16,16"], ("divisible by 16",)),
        (["--device", "cuda:9"] if not torch.cuda.is_available() else ["--device", "nonsense"], ("--device",)),
        (["--select", "test", "--track", "val"], ("--track val needs --select val",)),
    ],
)
def test_bad_flags_are_refused(extra, fragments, data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = train_la.main(train_flags(data, run_dir, *extra))
    expect_error(capsys, code, *fragments)
    assert not run_dir.exists()


def test_an_unwritable_run_folder_is_refused(data, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = train_la.main(train_flags(data, blocker / "run"))
    expect_error(capsys, code, "cannot write to the run folder", "--run_dir")
    assert blocker.read_text() == "not a folder"


def test_a_volume_smaller_than_the_patch_is_padded(tmp_path, capsys):
    data = make_synthetic_la(tmp_path / "small", n_train=4, n_test=1, shape=(12, 14, 10), seed=2, n_val=1)
    run_dir = tmp_path / "run"
    assert train_la.main(train_flags(data, run_dir)) == 0
    out = tmp_path / "eval"
    assert test_la.main(["--checkpoint", str(run_dir / "best_model.pth"), "--root_path", str(data), "--list",
                         str(data / "test.list"), "--output_dir", str(out), "--device", "cpu", "--no_progress"]) == 0
    assert (out / "metrics.csv").is_file()


# ---------------------------------------------------------------- checkpoints given to the test script


def run_test_script(checkpoint: Path, data: Path, out: Path) -> int:
    return test_la.main(["--checkpoint", str(checkpoint), "--root_path", str(data), "--list", str(data / "test.list"),
                         "--output_dir", str(out), "--device", "cpu", "--no_progress"])


def acdc_checkpoint(path: Path) -> Path:
    save_checkpoint(path, build_network("unet", num_classes=4), dataset="ACDC", num_classes=4)
    return path


def three_class_la_checkpoint(path: Path) -> Path:
    save_checkpoint(path, build_network("vnet", num_classes=3, base_filters=4), dataset="LA", num_classes=3)
    return path


def official_unet_state_dict(path: Path) -> Path:
    torch.save(build_network("unet", num_classes=4).state_dict(), path)
    return path


def truncated(path: Path) -> Path:
    save_checkpoint(path, build_network("vnet", num_classes=2, base_filters=4), dataset="LA", num_classes=2)
    path.write_bytes(path.read_bytes()[:1000])
    return path


class Payload:
    pass


def pickled_object(path: Path) -> Path:
    torch.save({"state_dict": {}, "payload": Payload()}, path)
    return path


def text_file(path: Path) -> Path:
    path.write_text("hello")
    return path


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (acdc_checkpoint, ("trained on ACDC", "test_acdc.py")),
        (three_class_la_checkpoint, ("predicts 3 classes", "LA has 2")),
        (official_unet_state_dict, ("not a vnet checkpoint",)),
        (truncated, ("truncated or not a PyTorch checkpoint",)),
        (pickled_object, ("refused", "pickled Python objects", "Payload", "weights_only")),
        (text_file, ("truncated or not a PyTorch checkpoint",)),
    ],
)
def test_wrong_checkpoints_are_refused(make, fragments, clean_data, tmp_path, capsys):
    checkpoint = make(tmp_path / "model.pth")
    out = tmp_path / "eval"
    code = run_test_script(checkpoint, clean_data, out)
    expect_error(capsys, code, str(checkpoint), *fragments)
    assert not out.exists()


@pytest.mark.parametrize("how", ["missing", "no_label_key"])
def test_every_listed_test_case_is_checked_before_any_inference(how, data, tmp_path, capsys, monkeypatch):
    """A bad case at the end of the list stops the test script before the first case is predicted."""
    from inference import Predictor

    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, build_network("vnet", num_classes=2, base_filters=4), dataset="LA", num_classes=2)
    listed = read_list(data / "train.list")[:3]
    if how == "missing":
        listed.append("NO_SUCH_CASE")
        fragments = ("1 of 4 LA cases missing", "NO_SUCH_CASE", "python -m data.lists la")
    else:
        bad = la_case_path(data, listed[-1])
        with h5py.File(bad, "r") as f:
            image = f["image"][()]
        rewrite(bad, image=image)
        fragments = (str(bad), "'label'")
    (data / "subset.list").write_text("".join(f"{c}\n" for c in listed))
    predicted = []
    monkeypatch.setattr(Predictor, "predict_stored", lambda self, image: predicted.append(image.shape))
    out = tmp_path / "eval"
    code = test_la.main(["--checkpoint", str(checkpoint), "--root_path", str(data), "--list",
                         str(data / "subset.list"), "--output_dir", str(out), "--device", "cpu", "--no_progress"])
    expect_error(capsys, code, *fragments)
    assert predicted == [] and not out.exists()


def test_an_unwritable_test_output_is_refused(clean_data, tmp_path, capsys):
    checkpoint = tmp_path / "model.pth"
    save_checkpoint(checkpoint, build_network("vnet", num_classes=2, base_filters=4), dataset="LA", num_classes=2)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code = run_test_script(checkpoint, clean_data, blocker / "eval")
    expect_error(capsys, code, "cannot write to the output folder", "--output_dir")


# ---------------------------------------------------------------- numerical faults


def test_a_non_finite_loss_stops_with_iteration_term_and_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    from methods.ss_net import SSNet

    original = SSNet.forward

    def poisoned(self, labeled, unlabeled, step):
        output = original(self, labeled, unlabeled, step)
        if step.iteration == 3:
            output.terms["lds"] = torch.tensor(float("nan"))
            output = output._replace(loss=output.loss + output.terms["lds"])
        return output

    monkeypatch.setattr(SSNet, "forward", poisoned)
    run_dir = tmp_path / "run"
    code = train_la.main(train_flags(data, run_dir, "--max_iteration", "5"))
    expect_error(capsys, code, "non-finite loss at iteration 3", "lds = nan", "iter_0000002.pth",
                 f"--resume {run_dir}")
    saved = torch.load(run_dir / "checkpoints" / "iter_0000002.pth", weights_only=True)
    assert saved["iteration"] == 2 and all(torch.isfinite(v.float()).all() for v in saved["state_dict"].values())
    assert "non-finite loss at iteration 3" in (run_dir / "log.txt").read_text()
    assert not (run_dir / "result.json").exists()


def test_debug_shows_the_traceback(data, tmp_path):
    with pytest.raises(ValueError, match="--labelnum 0 out of range"):
        train_la.main(train_flags(data, tmp_path / "run", "--labelnum", "0", "--debug"))
