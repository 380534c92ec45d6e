"""predict.py: geometry survives (rotated, anisotropic affine), flip TTA, LA / ACDC checkpoints, h5 input."""
from __future__ import annotations

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_data import rotated_affine, synthetic_case, write_nifti

import predict
from dataloaders.nifti import Preprocessing
from inference.predict import find_inputs
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
                    inference={"patch_size": list(patch), "stride": [p // 2 for p in patch], "nms": False})
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
                    inference={"patch_size": [32, 32, 32], "stride": [32, 32, 32], "nms": True})
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
