"""CT in the own-data path: nnU-Net's CT statistics and normalisation, the HU window, the body crop, and the input
check that tells CT from MR (dataloaders/ct.py, dataloaders/nifti.py)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_data import TINY_TRAIN_FLAGS as TINY
from nifti_data import make_ct_dataset, make_nifti_dataset, synthetic_case, synthetic_ct_case

import predict
import train
from dataloaders import read_list
from dataloaders.ct import body_box, foreground_statistics, hu_summary, modality_problem
from dataloaders.nifti import Preprocessing, nonzero_box, preprocess, restore_labels


def test_statistics_are_numpys_on_the_pooled_labeled_voxels():
    rng = np.random.default_rng(1)
    cases = [synthetic_ct_case(rng) for _ in range(3)]
    (stats,) = foreground_statistics((image[None], label) for image, label in cases)
    organ = np.concatenate([image[label > 0] for image, label in cases]).astype(np.float64)
    assert stats == {"percentile_00_5": float(np.percentile(organ, 0.5)),
                     "percentile_99_5": float(np.percentile(organ, 99.5)),
                     "mean": float(organ.mean()), "std": float(organ.std())}
    assert 100 < stats["mean"] < 200  # the organ's HU, not the body's nor the air's
    with pytest.raises(ValueError, match="no foreground"):
        foreground_statistics([(cases[0][0][None], np.zeros_like(cases[0][1]))])


def test_ct_normalisation_clips_to_the_percentiles_then_standardises():
    rng = np.random.default_rng(2)
    image, label = synthetic_ct_case(rng)
    stats = foreground_statistics([(image[None], label)])
    settings = Preprocessing(normalization="ct", ct_statistics=stats, modality="CT")
    prepared, _, _ = preprocess(image[None], (1.0, 1.0, 2.5), settings, label)
    low, high = stats[0]["percentile_00_5"], stats[0]["percentile_99_5"]
    expected_air = (low - stats[0]["mean"]) / stats[0]["std"]
    assert np.isclose(prepared.min(), expected_air) and prepared[0][image < low].max() == prepared.min()
    assert np.isclose(prepared.max(), (high - stats[0]["mean"]) / stats[0]["std"])  # bone clipped to the organ's top
    organ = prepared[0][label > 0]
    assert abs(organ.mean()) < 0.05 and abs(organ.std() - 1) < 0.1
    window = Preprocessing(normalization="window", window=(-160, 240))
    windowed, _, _ = preprocess(image[None], (1.0, 1.0, 2.5), window)
    assert windowed.min() == 0.0 and windowed.max() == 1.0
    assert np.allclose(windowed[0][label > 0], (np.clip(image[label > 0], -160, 240) + 160) / 400)
    with pytest.raises(ValueError, match="go together"):
        Preprocessing(normalization="window")
    with pytest.raises(ValueError, match="LOW < HIGH"):
        Preprocessing(normalization="window", window=(240, -160))
    with pytest.raises(ValueError, match="foreground statistics"):
        preprocess(image[None], (1.0, 1.0, 2.5), Preprocessing(normalization="ct"))


def test_crop_on_ct_keeps_the_body_not_the_air_or_the_table():
    image, label = synthetic_ct_case(np.random.default_rng(3))
    box = body_box(image[None])
    body = np.argwhere(image > 0)  # soft tissue, organ, bone
    assert box[0] == (int(body[:, 0].min()), int(body[:, 0].max()) + 1)
    assert box[1] == (int(body[:, 1].min()), int(body[:, 1].max()) + 1)  # the detached table (rows 31-32) is out
    assert box[1][1] <= 31 and box[2] == (0, image.shape[2])
    assert nonzero_box(image[None]) == tuple((0, s) for s in image.shape)  # why non-zero cannot work on CT
    settings = Preprocessing(normalization="window", window=(-160, 240), crop_nonzero=True, modality="CT")
    prepared, prepared_label, record = preprocess(image[None], (1.0, 1.0, 2.5), settings, label)
    assert record.crop == box and prepared_label.sum() == label.sum()
    assert np.array_equal(restore_labels(prepared_label, record), label)


def test_ct_and_mr_volumes_are_told_apart():
    ct, _ = synthetic_ct_case(np.random.default_rng(4))
    mr = synthetic_case(np.random.default_rng(4))[0][0]
    zscored = (mr - mr.mean()) / mr.std()
    assert modality_problem(hu_summary(ct), model_is_ct=True) == ""
    assert "looks like an MR" in modality_problem(hu_summary(mr), model_is_ct=True)
    assert "looks like an MR" in modality_problem(hu_summary(zscored), model_is_ct=True)
    assert "not trained on CT" in modality_problem(hu_summary(ct), model_is_ct=False)
    assert modality_problem(hu_summary(mr), model_is_ct=False) == ""
    assert modality_problem(hu_summary(zscored), model_is_ct=False) == ""


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory):
    return make_ct_dataset(tmp_path_factory.mktemp("ct") / "Dataset009_CT")


def test_ct_run_records_its_statistics_and_predict_reuses_them(ct_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(ct_dataset), "--mode", "3d", "--labelnum", "2", "--crop_nonzero",
                       "--run_dir", str(run), *TINY]) == 0
    assert "normalization: ct, nnU-Net's CT scheme (dataset.json names CT)" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    stored = config["nifti"]["preprocessing"]
    assert stored["normalization"] == "ct" and stored["modality"] == "CT"
    labeled = read_list(run / "splits" / "labeled.list")
    assert len(labeled) == 2  # the run's labeled cases only: not the validation case nor the unlabeled pool
    voxels = np.concatenate([
        np.asarray(nib.load(str(ct_dataset / "imagesTr" / f"{c}_0000.nii.gz")).dataobj, np.float64)[
            np.asarray(nib.load(str(ct_dataset / "labelsTr" / f"{c}.nii.gz")).dataobj) > 0] for c in labeled])
    (stats,) = stored["ct_statistics"]
    assert stats["percentile_00_5"] == float(np.percentile(voxels, 0.5))
    assert stats["percentile_99_5"] == float(np.percentile(voxels, 99.5))
    assert stats["mean"] == float(voxels.mean()) and stats["std"] == float(voxels.std())
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["config"]["nifti"]["preprocessing"]["ct_statistics"] == [stats]

    scan_path = ct_dataset / "imagesTs" / "cttest000_0000.nii.gz"
    out = tmp_path / "pred"
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(scan_path), "--output",
                         str(out), "--device", "cpu", "--no_progress"]) == 0
    scan, written = nib.load(str(scan_path)), nib.load(str(out / "cttest000.nii.gz"))
    assert written.shape == scan.shape and np.allclose(written.affine, scan.affine)

    # an MR-like volume (no air, no fat) is refused by the CT model, with the reason
    mr = tmp_path / "mr" / "mr000_0000.nii.gz"
    mr.parent.mkdir()
    image = np.asarray(scan.dataobj, np.float32)
    nib.save(nib.Nifti1Image(np.clip(image + 1000, 0, None) / 10, scan.affine), str(mr))
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(run / "best_model.pth"), "--input", str(mr), "--output",
                         str(tmp_path / "pred_mr"), "--device", "cpu", "--no_progress"]) == 2
    assert "looks like an MR" in capsys.readouterr().err and not (tmp_path / "pred_mr").exists()


def test_a_window_replaces_the_statistics_and_an_mr_model_refuses_ct(ct_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--data", str(ct_dataset), "--mode", "3d", "--labelnum", "2", "--window=-160,240",
                       "--run_dir", str(run), *TINY]) == 0
    stored = json.loads((run / "config.json").read_text())["nifti"]["preprocessing"]
    assert stored["normalization"] == "window" and stored["window"] == [-160.0, 240.0]
    assert stored["ct_statistics"] is None and stored["modality"] == "CT"

    mr_data = make_nifti_dataset(tmp_path / "mr", n_labeled=3, n_unlabeled=1, n_test=0)
    mr_run = tmp_path / "mr_run"
    assert train.main(["--data", str(mr_data), "--mode", "3d", "--labelnum", "1", "--run_dir", str(mr_run),
                       *TINY]) == 0
    assert json.loads((mr_run / "config.json").read_text())["nifti"]["preprocessing"]["modality"] == ""
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(mr_run / "best_model.pth"), "--input",
                         str(ct_dataset / "imagesTs" / "cttest000_0000.nii.gz"), "--output", str(tmp_path / "p"),
                         "--device", "cpu", "--no_progress"]) == 2
    assert "not trained on CT" in capsys.readouterr().err
