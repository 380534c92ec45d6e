"""train.py --data on a Medical Segmentation Decathlon task folder as downloaded (Task02_Heart-like: one file per
case without the _0000 suffix; Task01_BrainTumour-like: 4-D multi-modal images, channels last), and predict.py on
its imagesTs/ (no labels there)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_data import TINY_TRAIN_FLAGS as TINY
from nifti_data import make_decathlon_task, make_nifti_dataset

import predict
import train
from dataloaders.nifti import read_nifti_dataset, read_scan


@pytest.fixture(scope="module")
def heart(tmp_path_factory):
    return make_decathlon_task(tmp_path_factory.mktemp("msd") / "Task02_Heart")


@pytest.fixture(scope="module")
def brain(tmp_path_factory):
    return make_decathlon_task(tmp_path_factory.mktemp("msd") / "Task01_BrainTumour", prefix="BRATS", channels=2,
                               n_labeled=3, n_unlabeled=0, n_test=1)


def test_decathlon_folder_is_detected_and_read_as_downloaded(heart, tmp_path):
    info = read_nifti_dataset(heart)
    assert info.layout == "decathlon" and "Decathlon" in info.describe()
    assert info.labeled == ["la_003", "la_004", "la_005", "la_006"] and info.unlabeled == ["la_007"]
    assert info.test == ["la_008", "la_009"] and info.test_labeled == []  # imagesTs without labels
    assert info.channel_names == ["MRI"] and info.class_names == ["ball", "box"]
    assert info.image_paths("la_003") == [heart / "imagesTr" / "la_003.nii.gz"]
    assert read_nifti_dataset(make_nifti_dataset(tmp_path / "raw")).layout == "nnunet"
    # mixed file names are refused with the reason
    mixed = tmp_path / "mixed"
    (mixed / "imagesTr").mkdir(parents=True)
    (mixed / "dataset.json").write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "x"}}))
    for name in ("a_0000.nii.gz", "b.nii.gz"):
        (mixed / "imagesTr" / name).write_bytes(b"")
    with pytest.raises(ValueError, match="mixes nnU-Net channel files"):
        read_nifti_dataset(mixed)


def test_multimodal_4d_images_give_one_channel_per_modality(brain, tmp_path):
    info = read_nifti_dataset(brain)
    assert info.layout == "decathlon" and info.num_channels == 2 and info.channel_names == ["FLAIR", "T1w"]
    stored = np.asarray(nib.load(str(brain / "imagesTr" / "BRATS_004.nii.gz")).dataobj)
    scan = read_scan(info.image_paths("BRATS_004"))
    assert stored.ndim == 4 and scan.image.shape == (2, *stored.shape[:3])
    assert np.array_equal(scan.image[1], stored[..., 1])
    meta = json.loads((brain / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T2w"}
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "dataset.json").write_text(json.dumps(meta))
    for sub in ("imagesTr", "labelsTr"):
        (wrong / sub).symlink_to(brain / sub)
    with pytest.raises(ValueError, match="holds 2 channel.*names 3"):
        read_nifti_dataset(wrong)


def test_decathlon_task_trains_and_predicts_its_test_scans(heart, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(heart), "--mode", "3d", "--run_dir", str(run), *TINY]) == 0
    assert "Medical Segmentation Decathlon layout" in capsys.readouterr().err
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["config"]["nifti"]["layout"] == "decathlon"
    (heart / "imagesTs" / "._la_008.nii.gz").write_bytes(b"\x00\x05\x16\x07")  # not a scan: skipped
    out = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(heart / "imagesTs"),
                         "--output", str(out), "--device", "cpu", "--no_progress"]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["la_008.nii.gz", "la_009.nii.gz"]
    scan = nib.load(str(heart / "imagesTs" / "la_008.nii.gz"))
    assert nib.load(str(out / "la_008.nii.gz")).shape == scan.shape


def test_multimodal_task_trains_and_predicts_4d_inputs(brain, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(brain), "--mode", "3d", "--run_dir", str(run), "--select", "last",
                       "--labelnum", "2", *TINY]) == 0
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["network"]["kwargs"]["in_channels"] == 2
    out = tmp_path / "pred"
    test_scan = brain / "imagesTs" / "BRATS_006.nii.gz"
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(test_scan), "--output",
                         str(out), "--device", "cpu", "--no_progress"]) == 0
    assert nib.load(str(out / "BRATS_006.nii.gz")).shape == nib.load(str(test_scan)).shape[:3]
    one_channel = tmp_path / "one" / "BRATS_006.nii.gz"
    one_channel.parent.mkdir()
    image = nib.load(str(test_scan))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[..., 0], image.affine), str(one_channel))
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(one_channel), "--output",
                         str(tmp_path / "pred1"), "--device", "cpu", "--no_progress"]) == 2
    assert "1 input channel(s); the model takes 2" in capsys.readouterr().err
