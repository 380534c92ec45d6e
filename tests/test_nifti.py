"""NIfTI datasets in the nnU-Net raw layout: reading, unlabeled cases, preprocessing round trip, splits,
and a tiny 3-class dataset that trains (3-D and 2-D), predicts and is scored end to end."""
from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_data import make_nifti_dataset

import predict
import train
from dataloaders import read_list
from dataloaders.nifti import (
    UNLABELED,
    NiftiTrainDataset,
    Preprocessing,
    choose_slice_axis,
    preprocess,
    read_nifti_dataset,
    restore_labels,
)
from dataloaders.nifti_dataset import NiftiDataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 labeled + 3 unlabeled training cases (2 channels, classes background/ball/box), 2 labeled test scans."""
    return make_nifti_dataset(tmp_path_factory.mktemp("nifti") / "Dataset001_Toy", channels=2)


def test_folder_is_read_with_unlabeled_cases_and_no_dummy_labels(dataset):
    info = read_nifti_dataset(dataset)
    assert info.labeled == ["case000", "case001", "case002"]
    assert info.unlabeled == ["case003", "case004", "case005"]
    assert not any((dataset / "labelsTr" / f"{c}.nii.gz").exists() for c in info.unlabeled)
    assert info.test_labeled == ["test000", "test001"]
    assert info.num_classes == 3 and info.num_channels == 2 and info.class_names == ["ball", "box"]


def test_nnunet_v1_dataset_json_and_clear_errors(dataset, tmp_path):
    info_v2 = read_nifti_dataset(dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "imagesTr").symlink_to(dataset / "imagesTr")
    (v1 / "labelsTr").symlink_to(dataset / "labelsTr")
    (v1 / "dataset.json").write_text(json.dumps({"modality": meta["channel_names"],
                                                 "labels": {"0": "background", "1": "ball", "2": "box"}}))
    assert read_nifti_dataset(v1).labels == info_v2.labels
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        read_nifti_dataset(tmp_path)
    (v1 / "dataset.json").write_text(json.dumps({"channel_names": {"0": "a", "1": "b", "2": "c"},
                                                 "labels": {"background": 0, "x": 1}}))
    with pytest.raises(FileNotFoundError, match="lack channel files"):
        read_nifti_dataset(v1)


def test_preprocessing_is_undone_exactly():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 20, 16, 8), np.float32)
    image[0, 3:17, 2:14, 1:7] = rng.normal(50, 10, (14, 12, 6))
    label = np.zeros((20, 16, 8), np.uint8)
    label[5:12, 4:9, 2:5] = 1
    label[12:15, 9:12, 3:6] = 2
    # crop to the body, then upsample 2x in-plane and 4x through-plane: nearest back must be exact
    settings = Preprocessing(target_spacing=(0.5, 0.5, 0.5), crop_nonzero=True)
    prepared, prepared_label, record = preprocess(image, (1.0, 1.0, 2.0), settings, label)
    assert record.crop == ((3, 17), (2, 14), (1, 7)) and prepared.shape == (1, 28, 24, 24)
    assert abs(prepared.mean()) < 1e-4 and abs(prepared.std() - 1) < 1e-3
    assert np.array_equal(restore_labels(prepared_label, record), label)
    assert set(np.unique(prepared_label)) == {0, 1, 2}  # nearest: no new label values


def test_slice_axis_is_the_coarsest():
    assert choose_slice_axis([(1, 1, 2.5), (0.9, 0.9, 3)], None) == 2
    assert choose_slice_axis([(5, 1, 1)], None) == 0
    assert choose_slice_axis([(1, 1, 5)], (1.0, 1.0, 1.0)) == 2


def test_split_draws_validation_with_a_seed_and_keeps_unlabeled_label_free(dataset, tmp_path):
    info = read_nifti_dataset(dataset)
    task = NiftiDataset("3d", Preprocessing(), info, num_val=1, split_seed=3)
    split = task.split(0, "val")
    assert split.val == NiftiDataset("3d", Preprocessing(), info, num_val=1, split_seed=3).split(0, "val").val
    assert len(split.val) == 1 and len(split.labeled) == 2 and split.test == ["test000", "test001"]
    assert set(split.unlabeled) == {"case003", "case004", "case005"}
    assert not set(split.val) & set(split.labeled + split.unlabeled)
    # labelnum 1: the second labeled case joins the unlabeled pool
    assert len(task.split(1, "val").unlabeled) == 4
    (tmp_path / "val.list").write_text("case002\n")
    given = task.split(0, "val", tmp_path)
    assert given.val == ["case002"] and given.labeled == ["case000", "case001"]
    dataset_2d = task.train_dataset(dataset, ["case003"], (16, 16, 16))
    sample = dataset_2d[(0, 7)]
    assert sample["image"].shape == (2, 16, 16, 16) and (sample["label"] == UNLABELED).all()
    slices = NiftiDataset("2d", Preprocessing(slice_axis=2), info, num_val=1).split(0, "last")
    assert len(slices.labeled) == 3 * 12 and slices.labeled[0] == "case000_slice_0"
    item = NiftiTrainDataset(slices.labeled, task.prepared, (16, 16), slice_axis=2)[(5, 1)]
    assert item["image"].shape == (2, 16, 16) and item["label"].min() >= 0


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


TINY = ["--max_iteration", "3", "--eval_every", "3", "--eval_start", "3", "--num_workers", "0", "--device", "cpu",
        "--no_progress", "--num_val", "1"]


def test_3d_train_predict_and_score_end_to_end(dataset, tmp_path):
    run = tmp_path / "run"
    code = train.main(["--data", str(dataset), "--mode", "3d", "--patch_size", "16,16,16", "--base_filters", "4",
                       "--batch_size", "2", "--labeled_bs", "1", "--target_spacing", "1,1,2", "--crop_nonzero",
                       "--run_dir", str(run), *TINY])
    assert code == 0
    for name in ("labeled", "unlabeled", "val", "test"):
        assert (run / "splits" / f"{name}.list").is_file()
    assert set(read_list(run / "splits" / "unlabeled.list")) == {"case003", "case004", "case005"}
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["dataset"] == "NIfTI-3d" and checkpoint["network"]["kwargs"]["in_channels"] == 2
    stored = checkpoint["config"]["nifti"]["preprocessing"]
    assert stored["target_spacing"] == [1.0, 1.0, 2.0] and stored["crop_nonzero"]
    assert stored["normalization"] == "zscore"

    out = tmp_path / "pred"
    code = predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(dataset / "imagesTs"),
                         "--output", str(out), "--labels", str(dataset / "labelsTs"), "--device", "cpu",
                         "--no_progress"])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["test000.nii.gz", "test001.nii.gz"]
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 4 and {r["class_name"] for r in rows} == {"ball", "box"}
    assert json.loads((out / "summary.json").read_text())["metrics"]["units"] == "mm"


def test_2d_mode_trains_on_slices_and_predicts_volumes(dataset, tmp_path):
    run = tmp_path / "run"
    code = train.main(["--data", str(dataset), "--mode", "2d", "--patch_size", "16,16", "--batch_size", "4",
                       "--labeled_bs", "2", "--run_dir", str(run), "--method", "supervised", *TINY])
    assert code == 0
    assert read_list(run / "splits" / "labeled.list")[0].startswith("case")
    assert "_slice_" in read_list(run / "splits" / "labeled.list")[0]
    out = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input",
                         str(dataset / "imagesTs" / "test000_0000.nii.gz"), "--output", str(out), "--device", "cpu",
                         "--no_progress"]) == 0
    scan = nib.load(str(dataset / "imagesTs" / "test000_0000.nii.gz"))
    assert nib.load(str(out / "test000.nii.gz")).shape == scan.shape


def test_bad_data_folder_gives_one_clear_error(tmp_path, capsys):
    assert train.main(["--data", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "--data" in capsys.readouterr().err


def test_label_values_outside_the_classes_and_nan_images_are_refused(tmp_path):
    """A label 300 must not wrap to 44 in uint8; a NaN voxel must not reach training."""
    from dataloaders.nifti import read_label, read_scan

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    label = np.zeros((4, 4, 3), dtype=np.int16)
    label[1, 1, 1] = 300
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "case.nii.gz"))
    with pytest.raises(ValueError, match=r"\[300\] outside the classes 0\.\.2"):
        read_label(tmp_path / "case.nii.gz", (4, 4, 3), num_classes=3)
    label[1, 1, 1] = 2
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "case.nii.gz"))
    assert read_label(tmp_path / "case.nii.gz", (4, 4, 3), num_classes=3).max() == 2

    image = np.zeros((4, 4, 3), dtype=np.float32)
    image[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img_0000.nii.gz"))
    with pytest.raises(ValueError, match="NaN/Inf voxels"):
        read_scan([tmp_path / "img_0000.nii.gz"])
