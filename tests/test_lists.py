"""data.lists: split lists of the cases present under a root, and the documented real-data subset run with them."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

import test_la
import train_la
from data import lists
from dataloaders import la_case_path, read_list
from dataloaders.acdc import acdc_slice_path
from dataloaders.manifest import LA_FOLDER
from dataloaders.splits import SPLITS_DIR


def official(dataset: str, name: str) -> list[str]:
    return read_list(SPLITS_DIR / dataset / name)


def test_la_lists_keep_the_official_order_and_a_tail_validates(la_root, tmp_path, capsys):
    out = tmp_path / "lists"
    assert lists.main(["la", str(la_root), "--out", str(out)]) == 0
    train, val, test = (read_list(out / n) for n in ("train.list", "val.list", "test.list"))
    present = [c for c in official("LA", "train.list") if la_case_path(la_root, c).is_file()]
    assert train == present and len(train) == 4  # conftest restores the first 4 training cases
    assert test == [c for c in official("LA", "test.list") if la_case_path(la_root, c).is_file()] and len(test) == 4
    # none of the official validation cases (the last 8 of train.list) is present: the last present one validates
    assert not set(official("LA", "val.list")) & set(train)
    assert val == train[-1:]
    err = capsys.readouterr().err
    assert "train.list: 4 cases" in err and "val.list: 1 case (the tail of train.list" in err


def test_la_present_official_validation_cases_are_kept(la_root, tmp_path):
    """With some official validation cases present, exactly those validate, wherever they are in the list."""
    source = tmp_path / "source"
    source.mkdir()
    train = official("LA", "train.list")
    present = [c for c in train if la_case_path(la_root, c).is_file()]
    (source / "train.list").write_text("".join(f"{c}\n" for c in train))
    (source / "val.list").write_text(f"{present[1]}\n{train[-1]}\n")  # one present, one absent
    (source / "test.list").write_text("")
    result = lists.present_lists("LA", la_root, source)
    assert result["val.list"] == [present[1]] and result["test.list"] == []
    assert lists.present_lists("LA", la_root, source, n_val=2)["val.list"] == present[-2:]
    assert lists.present_lists("LA", la_root, source, n_val=0)["val.list"] == []
    with pytest.raises(ValueError, match="leave none to train on"):
        lists.present_lists("LA", la_root, source, n_val=4)


def test_acdc_lists_of_the_present_slices_and_volumes(acdc_root, tmp_path):
    out = tmp_path / "lists"
    result = lists.write_lists("acdc", acdc_root, out)
    slices = read_list(out / "train_slices.list")
    assert slices == [s for s in official("ACDC", "train_slices.list") if acdc_slice_path(acdc_root, s).is_file()]
    assert slices == read_list(acdc_root / "train_slices.list")  # what the restore tool wrote for the same cases
    for name in ("val.list", "test.list"):
        assert read_list(out / name) == read_list(acdc_root / name) == result[name]
    assert read_list(out / "train.list") == list(dict.fromkeys(s.split("_slice_")[0] for s in slices))


def test_no_case_or_a_wrong_root_is_one_clear_error(la_root, tmp_path, capsys):
    assert lists.main(["la", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert lists.main(["acdc", str(la_root), "--out", str(tmp_path / "o")]) == 2
    assert "no ACDC case" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_subset_trains_and_tests_with_the_written_lists(la_root, tmp_path, capsys):
    """docs/data.md#a-subset-of-the-cases with a narrow network and a few iterations: the default lists name 100
    cases, the lists of data.lists only the 6 present ones."""
    data = tmp_path / "LA"  # 4 training and 2 test cases of the restored ones, without the restore tool's lists
    for case in read_list(la_root / "train.list")[:4] + read_list(la_root / "test.list")[:2]:
        shutil.copytree(la_case_path(la_root, case).parent, data / LA_FOLDER / case)
    tiny = ["--patch_size", "32,32,32", "--base_filters", "4", "--stride", "32,32,32", "--num_workers", "0",
            "--device", "cpu", "--no_progress"]
    run = tmp_path / "run"
    assert train_la.main(["--root_path", str(data), "--labelnum", "2", "--max_iteration", "2",
                          "--run_dir", str(run), *tiny]) == 2
    assert "python -m data.lists la" in capsys.readouterr().err  # the default lists: the error names the fix
    assert not run.exists()
    assert lists.main(["la", str(data), "--out", str(tmp_path / "lists")]) == 0
    assert train_la.main(["--root_path", str(data), "--lists_dir", str(tmp_path / "lists"), "--labelnum", "2",
                          "--max_iteration", "2", "--eval_start", "2", "--eval_every", "2", "--run_dir", str(run),
                          *tiny]) == 0
    assert read_list(run / "splits" / "labeled.list") == read_list(tmp_path / "lists" / "train.list")[:2]
    assert read_list(run / "splits" / "unlabeled.list") == read_list(tmp_path / "lists" / "train.list")[2:3]
    assert read_list(run / "splits" / "val.list") == read_list(tmp_path / "lists" / "train.list")[3:]
    out = tmp_path / "eval"
    assert test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(data), "--list",
                         str(tmp_path / "lists" / "test.list"), "--output_dir", str(out), "--device", "cpu",
                         "--no_progress"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)] == read_list(tmp_path / "lists" / "test.list")
    assert json.loads((out / "summary.json").read_text())["n_cases"] == 2


def shipped_lists() -> dict[str, bytes]:
    return {str(p.relative_to(SPLITS_DIR)): p.read_bytes() for p in sorted(SPLITS_DIR.rglob("*.list"))}


@pytest.mark.parametrize("tool", ["lists", "download", "verify"])
@pytest.mark.parametrize("target", ["LA", "", "LA/sub"])
def test_no_tool_writes_lists_into_the_shipped_split_lists(tool, target, tmp_path, capsys):
    """data.lists --out, data.download / data.verify --write_lists: a folder inside data/splits/ is refused with one
    line, before anything is downloaded or written, and the shipped lists stay byte for byte."""
    from data import download, verify

    before = shipped_lists()
    assert set(before) >= {"LA/train.list", "LA/val.list", "LA/test.list", "ACDC/train_slices.list"}
    out = str(SPLITS_DIR / target)
    root = tmp_path / "LA"
    root.mkdir()
    argv = {"lists": lambda: lists.main(["la", str(root), "--out", out]),
            "download": lambda: download.main(["la", str(root), "--base_url", "http://127.0.0.1:9/none",
                                               "--retries", "0", "--write_lists", out]),
            "verify": lambda: verify.main([str(root), "--dataset", "la", "--write_lists", out])}
    assert argv[tool]() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "split lists shipped with this repository" in err[-1]
    assert "--lists_dir" in err[-1]
    assert shipped_lists() == before and not (SPLITS_DIR / "sub").exists() and not (SPLITS_DIR / "LA" / "sub").exists()


def test_the_default_data_roots_are_apart_from_the_shipped_lists():
    """Downloads land in ./data/LA and ./data/ACDC (the scripts' default --root_path); the lists read by default are
    the shipped ones in data/splits/, and neither folder is inside the other."""
    from dataloaders.registry import get_dataset
    from training import make_config

    for name in ("LA", "ACDC"):
        root = Path(make_config(name).root_path)
        assert root == Path("data") / name
        lists_dir = get_dataset(name).lists_dir().resolve()
        assert lists_dir == (SPLITS_DIR / name).resolve() and (lists_dir / "test.list").is_file()
        root = (SPLITS_DIR.parent.parent / root).resolve()
        assert root not in lists_dir.parents and lists_dir not in root.parents and root != lists_dir
