"""predict.py: geometry survives (rotated, anisotropic affine), flip TTA, LA / ACDC checkpoints, h5 input."""
from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_data import rotated_affine, synthetic_case, write_nifti

import predict
from dataloaders import la_case_path, read_list
from dataloaders.nifti import Preprocessing
from inference import InferenceSettings, Predictor
from inference.prediction_job import find_inputs
from inference.tta import FlipTTA
from networks import build_network, save_checkpoint


def nifti_checkpoint(path, mode="3d", preprocessing=None, patch=(16, 16, 16)):
    torch.manual_seed(0)
    if mode == "3d":
        network = build_network("vnet", in_channels=1, num_classes=3, base_filters=4)
    else:
        network = build_network("unet", in_channels=1, num_classes=3, channels=[4, 8, 16, 32, 64])
    preprocessing = preprocessing or Preprocessing(target_spacing=(1.0, 1.0, 1.0), crop_nonzero=True)
    save_checkpoint(path, network, dataset=f"NIfTI-{mode}", num_classes=3, iteration=0,
                    config={"nifti": {"mode": mode, "preprocessing": preprocessing.to_dict(),
                                      "class_names": ["ball", "box"]}},
                    inference={"patch_size": list(patch), "stride": [p // 2 for p in patch],
                               "largest_component": False})
    return path


@pytest.mark.parametrize("mode, patch", [("3d", (16, 16, 16)), ("2d", (16, 16))])
def test_rotated_anisotropic_geometry_survives_predict(tmp_path, mode, patch):
    spacing = (0.8, 1.3, 3.0)
    affine = rotated_affine(spacing, degrees=35)
    images, _ = synthetic_case(np.random.default_rng(1), shape=(23, 19, 7))
    scan = tmp_path / "in" / "scan.nii.gz"
    write_nifti(scan, images[0], affine)
    checkpoint = nifti_checkpoint(tmp_path / "model.pth", mode, patch=patch,
                                  preprocessing=Preprocessing(target_spacing=(1.0, 1.0, 1.5), crop_nonzero=True,
                                                              slice_axis=2))
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(scan), "--output", str(out),
                         "--device", "cpu", "--no_progress", "--tta", "--largest_component", "1"]) == 0
    original, predicted = nib.load(str(scan)), nib.load(str(out / "scan.nii.gz"))
    assert predicted.shape == original.shape
    assert np.allclose(predicted.affine, original.affine, atol=1e-6)
    assert np.allclose(predicted.header.get_zooms(), original.header.get_zooms())
    assert predicted.get_data_dtype() == np.uint8
    assert np.isin(np.asarray(predicted.dataobj), [0, 1, 2]).all()


def test_flip_tta_averages_probabilities_over_all_flips():
    torch.manual_seed(0)
    network = build_network("unet", in_channels=1, num_classes=3, channels=[4, 8, 16, 32, 64]).eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        log_probs, _ = FlipTTA(network)(x)
        expected = sum(torch.softmax(network(x.flip(f) if f else x)[0], 1).flip(f) if f else
                       torch.softmax(network(x)[0], 1) for f in ([], [2], [3], [2, 3])) / 4
    assert torch.allclose(log_probs.exp(), expected, atol=1e-6)


def test_channel_files_are_grouped(tmp_path):
    for case in ("a", "b"):
        for c in range(2):
            (tmp_path / f"{case}_{c:04d}.nii.gz").write_bytes(b"")
    cases = find_inputs(tmp_path, in_channels=2)
    assert [c.case for c in cases] == ["a", "b"] and len(cases[0].paths) == 2
    (tmp_path / "b_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="b_0001"):
        find_inputs(tmp_path, in_channels=2)


def test_la_checkpoint_predicts_h5_and_nifti(la_root, tmp_path):
    torch.manual_seed(0)
    network = build_network("vnet", num_classes=2, base_filters=4)
    checkpoint = tmp_path / "la.pth"
    save_checkpoint(checkpoint, network, dataset="LA", num_classes=2, iteration=0,
                    inference={"patch_size": [32, 32, 32], "stride": [32, 32, 32], "largest_component": True})
    h5_file = next((la_root / "2018LA_Seg_Training Set").glob("*/mri_norm2.h5"))
    with h5py.File(h5_file) as f:
        image = f["image"][()]
    scan = tmp_path / "scan.nii.gz"
    write_nifti(scan, image[:64, :48, :40], np.diag([0.625, 0.625, 0.625, 1.0]))
    for source, case, shape in ((h5_file, h5_file.parent.name, image.shape), (scan, "scan", (64, 48, 40))):
        out = tmp_path / "out"
        assert predict.main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                             "--device", "cpu", "--no_progress"]) == 0
        assert nib.load(str(out / f"{case}.nii.gz")).shape == shape


def test_official_acdc_state_dict_predicts_a_volume(acdc_root, tmp_path):
    torch.manual_seed(0)
    network = build_network("unet", in_channels=1, num_classes=4)
    torch.save(network.state_dict(), tmp_path / "unet_best_model.pth")
    volume = next((acdc_root / "data").glob("*.h5"))
    with h5py.File(volume) as f:
        image = f["image"][()]  # (S, H, W)
    scan = tmp_path / "scan.nii.gz"
    write_nifti(scan, image[:3].transpose(2, 1, 0) * 300, np.diag([1.5, 1.5, 10.0, 1.0]))  # NIfTI axes (x, y, z)
    out = tmp_path / "out"
    assert predict.main(["--checkpoint", str(tmp_path / "unet_best_model.pth"), "--input", str(scan),
                         "--output", str(out), "--device", "cpu", "--no_progress"]) == 0
    assert nib.load(str(out / "scan.nii.gz")).shape == (image.shape[2], image.shape[1], 3)


def test_missing_input_is_one_clear_error(tmp_path, capsys):
    checkpoint = nifti_checkpoint(tmp_path / "model.pth")
    assert predict.main(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "nothing"),
                         "--output", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "--input" in capsys.readouterr().err


# ---- inputs of the wrong kind --------------------------------------------------------------------------------


def la_checkpoint(path, **record):
    torch.manual_seed(0)
    record = record or {"nms": True}  # the key of the records written before --largest_component
    save_checkpoint(path, build_network("vnet", num_classes=2, base_filters=4), dataset="LA", num_classes=2,
                    iteration=0, inference={"patch_size": [32, 32, 32], "stride": [32, 32, 32], **record})
    return path


@pytest.mark.parametrize(("record", "given", "expected"), [
    ({"nms": False}, None, False),  # a record of an earlier version: its 'nms' is the largest-component setting
    ({"nms": True}, None, True),
    ({"largest_component": False}, None, False),
    ({"largest_component": False}, True, True),  # --largest_component 1 overrides the record
    ({"nms": True}, False, False),
])
def test_the_checkpoints_record_decides_the_largest_component_unless_given(tmp_path, record, given, expected):
    checkpoint = la_checkpoint(tmp_path / "la.pth", **record)
    predictor = Predictor.from_checkpoint(checkpoint, "cpu", InferenceSettings(largest_component=given))
    assert predictor.settings.largest_component is expected  # LA's own default (on) is never what decides here
    assert predictor.settings.patch_size == (32, 32, 32) and predictor.settings.stride == (32, 32, 32)
    override = Predictor.from_checkpoint(checkpoint, "cpu", InferenceSettings(patch_size=(16, 16, 16), tta=True))
    assert override.settings.patch_size == (16, 16, 16) and isinstance(override.network, FlipTTA)


def predict_into(out, checkpoint, source, *extra):
    return predict.main(["--checkpoint", str(checkpoint), "--input", str(source), "--output", str(out),
                         "--device", "cpu", "--no_progress", *extra])


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_la_checkpoint_refuses_an_acdc_volume_h5_and_nifti(acdc_root, tmp_path, capsys):
    checkpoint = la_checkpoint(tmp_path / "la.pth")
    volume = sorted((acdc_root / "data").glob("*.h5"))[0]
    out = tmp_path / "out"
    assert predict_into(out, checkpoint, volume) == 2
    error = one_error_line(capsys.readouterr().err)
    assert str(volume) in error and "z-scored" in error and "min-max scaled volume, e.g. ACDC" in error
    assert "nothing was written" in error and "--skip_input_checks" in error and not out.exists()
    # the same volume as a cine-MRI NIfTI (1.5 x 1.5 mm in plane, 10 mm slices): the LA grid is 0.625 mm
    with h5py.File(volume) as f:
        image = f["image"][()]
    scan = tmp_path / "scans" / "acdc.nii.gz"
    write_nifti(scan, image.transpose(2, 1, 0) * 300, np.diag([1.5, 1.5, 10.0, 1.0]))
    assert predict_into(out, checkpoint, scan) == 2
    error = one_error_line(capsys.readouterr().err)
    assert "axis 2 is 16.0x coarser than the model's training grid 0.625x0.625x0.625 mm" in error
    assert not out.exists()
    # asked for, the h5 volume is predicted anyway, with the reason as a warning
    assert predict_into(out, checkpoint, volume, "--skip_input_checks") == 0
    assert "WARNING:" in capsys.readouterr().err and (out / f"{volume.stem}.nii.gz").is_file()


def test_wrong_dimensionality_is_refused_even_when_asked_and_nothing_is_written(acdc_root, la_root, tmp_path,
                                                                                capsys):
    checkpoint = la_checkpoint(tmp_path / "la.pth")
    folder = tmp_path / "in"
    good = la_case_path(la_root, read_list(la_root / "train.list")[0])
    (folder / "good").mkdir(parents=True)
    (folder / "good" / "mri_norm2.h5").symlink_to(good)
    with h5py.File(next((acdc_root / "data" / "slices").glob("*.h5"))) as f:
        slice_image = f["image"][()]  # (H, W)
    with h5py.File(folder / "slice.h5", "w") as f:
        f.create_dataset("image", data=slice_image)
    write_nifti(folder / "flat.nii.gz", slice_image[:, :, None] * 300, np.diag([0.625, 0.625, 0.625, 1.0]))
    out = tmp_path / "out"
    for extra in ([], ["--skip_input_checks"]):
        assert predict_into(out, checkpoint, folder, *extra) == 2
        error = one_error_line(capsys.readouterr().err)
        assert "2 of 3 input(s)" in error and "a 2-D array" in error and "a single slice" in error
        assert "--skip_input_checks predicts" not in error and not out.exists()


def test_an_acdc_checkpoint_refuses_an_la_volume(la_root, tmp_path, capsys):
    torch.manual_seed(0)
    checkpoint = tmp_path / "acdc.pth"
    save_checkpoint(checkpoint, build_network("unet", in_channels=1, num_classes=4), dataset="ACDC", num_classes=4)
    case = la_case_path(la_root, read_list(la_root / "train.list")[0])
    assert predict_into(tmp_path / "out", checkpoint, case) == 2
    error = one_error_line(capsys.readouterr().err)
    assert "min-max scaled to [0, 1]" in error and not (tmp_path / "out").exists()


def test_channel_count_is_checked_and_a_moderate_voxel_size_mismatch_warns(tmp_path, capsys):
    images, _ = synthetic_case(np.random.default_rng(0), shape=(20, 20, 8))
    scan = tmp_path / "in" / "scan.nii.gz"
    write_nifti(scan, images[0], np.diag([1.0, 1.0, 3.0, 1.0]))
    torch.manual_seed(0)
    two_channel = tmp_path / "two.pth"
    save_checkpoint(two_channel, build_network("vnet", in_channels=2, num_classes=3, base_filters=4),
                    dataset="NIfTI-3d", num_classes=3, iteration=0,
                    config={"nifti": {"mode": "3d", "preprocessing": Preprocessing(target_spacing=(1, 1, 1)).to_dict(),
                                      "class_names": ["ball", "box"]}},
                    inference={"patch_size": [16, 16, 16], "stride": [8, 8, 8], "largest_component": False})
    assert predict_into(tmp_path / "o2", two_channel, scan) == 2
    error = one_error_line(capsys.readouterr().err)
    assert "1 input channel(s); the model takes 2" in error and "scan_0001.nii.gz" not in error
    assert "<case>_0000.nii.gz ... <case>_0001.nii.gz" in error
    # a one-channel model on a grid of 1 x 1 x 1 mm: 3 mm slices are 3x coarser, a warning, not a refusal
    checkpoint = nifti_checkpoint(tmp_path / "one.pth", preprocessing=Preprocessing(target_spacing=(1.0, 1.0, 1.0)))
    assert predict_into(tmp_path / "o1", checkpoint, scan) == 0
    err = capsys.readouterr().err
    assert "WARNING:" in err and "axis 2 is 3.0x coarser" in err and (tmp_path / "o1" / "scan.nii.gz").is_file()


def test_real_la_and_acdc_arrays_pass_their_own_check_and_fail_the_other(la_root, acdc_root):
    from dataloaders import get_dataset
    from dataloaders.acdc import load_acdc_volume
    from dataloaders.la import load_la_case
    from inference.input_check import ModelExpectation, describe_h5, problems

    la, acdc = (ModelExpectation.of(get_dataset(name), 1) for name in ("LA", "ACDC"))
    la_cases = [p.parent.name for p in (la_root / "2018LA_Seg_Training Set").glob("*/mri_norm2.h5")]
    acdc_volumes = [p.stem for p in (acdc_root / "data").glob("*.h5")]
    assert len(la_cases) == 8 and len(acdc_volumes) == 8  # conftest: 4 + 4 of each
    for case in la_cases:
        item = describe_h5(case, case, load_la_case(la_root, case)[0])
        assert problems(item, la) == ([], [], []) and problems(item, acdc)[1]
    for name in acdc_volumes:
        item = describe_h5(name, name, load_acdc_volume(acdc_root, name)[0])
        assert problems(item, acdc) == ([], [], []) and problems(item, la)[1]
