"""tools.score: folders of NIfTI / h5 label maps scored like the test scripts, checked against medpy."""
from __future__ import annotations

import csv

import h5py
import nibabel as nib
import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from dataloaders import read_list
from dataloaders.acdc import load_acdc_volume
from dataloaders.la import la_case_path, load_la_case
from dataloaders.splits import SPLITS_DIR
from evaluation.scoring import ScoreOptions, score_folders
from tools import score
from utils.report import CSV_COLUMNS


def write_h5(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("label", data=label.astype(np.uint8))


def write_nifti(path, label, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def medpy_row(pred, ref, spacing=None):
    return {"dice": medpy_binary.dc(pred, ref), "jaccard": medpy_binary.jc(pred, ref),
            "hd95": medpy_binary.hd95(pred, ref, voxelspacing=spacing),
            "asd": medpy_binary.asd(pred, ref, voxelspacing=spacing)}


def assert_matches_medpy(row, pred, ref, spacing=None):
    expected = medpy_row(pred, ref, spacing)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def run(tmp_path, **kwargs):
    options = ScoreOptions(predictions=str(tmp_path / "pred"), references=str(tmp_path / "gt"), **kwargs)
    return score_folders(options)


def cube(shape, corner, size):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[tuple(slice(c, c + size) for c in corner)] = 1
    return mask


# ---- hand-made masks ----------------------------------------------------------------------------------------


def test_empty_prediction_follows_the_official_rule(tmp_path, capsys):
    ref = cube((12, 12, 12), (3, 3, 3), 4)
    write_h5(tmp_path / "gt" / "case1.h5", ref)
    write_h5(tmp_path / "pred" / "case1.h5", np.zeros_like(ref))
    (row,) = run(tmp_path)["rows"]
    assert (row["dice"], row["jaccard"], row["hd95"], row["asd"], row["empty_pred"]) == (0, 0, 0, 0, True)
    (row,) = run(tmp_path, empty_policy="nan")["rows"]
    assert row["dice"] == 0 and np.isnan(row["hd95"]) and np.isnan(row["asd"])
    assert "empty predictions: 1" in capsys.readouterr().out


def test_empty_reference_scores_only_named_labels(tmp_path):
    write_h5(tmp_path / "gt" / "case1.h5", np.zeros((10, 10, 10), np.uint8))
    write_h5(tmp_path / "pred" / "case1.h5", cube((10, 10, 10), (2, 2, 2), 3))
    with pytest.raises(ValueError, match="--labels"):
        run(tmp_path)  # no class present in the reference and none named
    (row,) = run(tmp_path, labels=[1])["rows"]
    assert row["dice"] == 0 and row["empty_ref"] and np.isnan(row["hd95"]) and np.isnan(row["asd"])


def test_multi_component_against_medpy_and_largest_component(tmp_path):
    shape = (20, 20, 20)
    ref = cube(shape, (2, 2, 2), 5) | cube(shape, (12, 12, 12), 5)
    pred = cube(shape, (2, 2, 3), 5) | cube(shape, (13, 12, 12), 2)  # the second component is small
    write_nifti(tmp_path / "gt" / "c.nii.gz", ref)
    write_nifti(tmp_path / "pred" / "c.nii.gz", pred)
    (row,) = run(tmp_path)["rows"]
    assert_matches_medpy(row, pred.astype(bool), ref.astype(bool))
    (row,) = run(tmp_path, largest_component=True)["rows"]  # largest component only: the small one is dropped
    assert_matches_medpy(row, cube(shape, (2, 2, 3), 5).astype(bool), ref.astype(bool))


def test_csv_columns_match_the_test_scripts_and_cases_match_by_id(tmp_path):
    shape = (10, 10, 10)
    ref = cube(shape, (1, 1, 1), 4) + 2 * cube(shape, (5, 5, 5), 4)
    write_nifti(tmp_path / "gt" / "p1.nii.gz", ref)
    write_h5(tmp_path / "gt" / "p2" / "mri_norm2.h5", ref)  # LA layout: the folder names the case
    write_nifti(tmp_path / "pred" / "p1.nii", ref)
    write_h5(tmp_path / "pred" / "p2.h5", np.where(ref == 2, 0, ref))
    write_h5(tmp_path / "pred" / "extra.h5", ref)
    out = tmp_path / "scores.csv"
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--csv", str(out)]) == 0
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [(r["case"], r["class"]) for r in rows] == [("p1", "1"), ("p1", "2"), ("p2", "1"), ("p2", "2")]
    assert float(rows[0]["dice"]) == 1.0 and float(rows[3]["dice"]) == 0.0


def test_spacing_mm_from_the_nifti_header(tmp_path):
    shape = (16, 16, 12)
    ref, pred = cube(shape, (3, 3, 3), 6), cube(shape, (4, 3, 2), 6)
    spacing = (0.8, 0.8, 2.5)
    write_nifti(tmp_path / "gt" / "a.nii.gz", ref, spacing)
    write_nifti(tmp_path / "pred" / "a.nii.gz", pred, spacing)
    (row,) = run(tmp_path, spacing="mm")["rows"]
    assert_matches_medpy(row, pred.astype(bool), ref.astype(bool), spacing)


def test_clear_errors(tmp_path, capsys):
    ref = cube((8, 8, 8), (2, 2, 2), 3)
    write_h5(tmp_path / "gt" / "a.h5", ref)
    write_h5(tmp_path / "pred" / "a.h5", ref)
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--spacing", "mm"]) == 2
    assert "stores no voxel size" in capsys.readouterr().err
    write_h5(tmp_path / "gt" / "b.h5", ref)
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    err = capsys.readouterr().err
    assert "1 reference case(s) have no prediction" in err and "e.g. b;" in err
    write_h5(tmp_path / "pred" / "b.h5", ref[:-1])
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2
    assert "same grid" in capsys.readouterr().err
    assert score.main([str(tmp_path / "nowhere"), str(tmp_path / "gt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_subset_is_scored_with_cases_or_a_list(tmp_path, capsys):
    ref = cube((10, 10, 10), (2, 2, 2), 4)
    for case in ("a", "b", "c"):
        write_h5(tmp_path / "gt" / f"{case}.h5", ref)
    write_h5(tmp_path / "pred" / "a.h5", ref)
    write_h5(tmp_path / "pred" / "c.h5", np.zeros_like(ref))
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt")]) == 2  # b has no prediction
    assert "--cases / --list" in capsys.readouterr().err
    result = run(tmp_path, cases=["c", "a"])
    assert [(r["case"], r["dice"]) for r in result["rows"]] == [("a", 1.0), ("c", 0.0)]
    assert result["cases"] == ["a", "c"] and result["n_cases"] == 2
    (tmp_path / "subset.list").write_text("a\n\n")
    out = tmp_path / "scores.csv"
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--list", str(tmp_path / "subset.list"),
                       "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 cases" in printed and "ignored 1 prediction(s) not named by --cases / --list, e.g. c" in printed
    with open(out, newline="") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ["a"]
    # a named case without a prediction or a reference: refused before any case is scored
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--cases", "a", "b"]) == 2
    assert "1 of the 2 case(s) to score have no prediction" in capsys.readouterr().err
    assert score.main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--cases", "a", "zz"]) == 2
    captured = capsys.readouterr()
    assert "have no reference in" in captured.err and "zz" in captured.err and captured.out == ""


def test_symlinked_case_folders_and_files_are_followed(tmp_path):
    ref = cube((10, 10, 10), (2, 2, 2), 4)
    write_h5(tmp_path / "data" / "A" / "mri_norm2.h5", ref)  # LA layout, elsewhere on disk
    write_nifti(tmp_path / "data" / "b.nii.gz", ref)
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "A").symlink_to(tmp_path / "data" / "A", target_is_directory=True)
    (tmp_path / "gt" / "b.nii.gz").symlink_to(tmp_path / "data" / "b.nii.gz")
    (tmp_path / "gt" / "loop").symlink_to(tmp_path / "gt", target_is_directory=True)  # a cycle is read once
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "all").symlink_to(tmp_path / "data", target_is_directory=True)
    rows = run(tmp_path)["rows"]
    assert [(r["case"], r["dice"]) for r in rows] == [("A", 1.0), ("b", 1.0)]


# ---- real labels --------------------------------------------------------------------------------------------


def test_real_la_labels_against_medpy(la_root, tmp_path):
    case = next(c for c in read_list(SPLITS_DIR / "LA" / "train.list") if la_case_path(la_root, c).is_file())
    _, ref = load_la_case(la_root, case)
    pred = ndimage.binary_erosion(np.roll(ref, 3, axis=0), iterations=2).astype(np.uint8)
    write_h5(tmp_path / "gt" / case / "mri_norm2.h5", ref)
    write_nifti(tmp_path / "pred" / f"{case}.nii.gz", pred)
    (row,) = run(tmp_path)["rows"]
    assert row["case"] == case
    assert_matches_medpy(row, pred.astype(bool), ref.astype(bool))


def test_real_acdc_labels_against_medpy_per_class(acdc_root, tmp_path):
    name = read_list(SPLITS_DIR / "ACDC" / "test.list")[0]
    _, ref = load_acdc_volume(acdc_root, name)
    pred = np.roll(ref, 2, axis=2)
    pred[pred == 2] = np.where(ndimage.binary_erosion(pred == 2), 2, 0)[pred == 2]
    write_nifti(tmp_path / "gt" / f"{name}.nii.gz", ref)
    write_h5(tmp_path / "pred" / f"{name}.h5", pred)
    rows = run(tmp_path)["rows"]
    assert [r["class"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert_matches_medpy(row, pred == row["class"], ref == row["class"])
