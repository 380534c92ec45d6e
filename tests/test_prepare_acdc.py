"""data/prepare_acdc.py on a synthetic ACDC release built from shipped cases, checked name, label and bit."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from data import prepare_acdc, verify
from dataloaders.acdc import acdc_slice_path, acdc_volume_path
from dataloaders.manifest import read_manifest

AFFINE = np.diag([1.37, 1.37, 10.0, 1.0])


def integer_frame(image: np.ndarray, offset: int) -> np.ndarray:
    """An int16 volume whose SSL4MIS scaling is `image` bit for bit: image = k / span for integers k.

    The shipped ACDC volumes were scaled from integer frames, so some span makes every value k / span exactly.
    """
    values = np.unique(image).astype(np.float64)
    for span in range(1, 4096):
        if np.array_equal((np.rint(values * span) / span).astype(np.float32), values.astype(np.float32)):
            return (np.rint(image.astype(np.float64) * span) + offset).astype(np.int16)
    raise AssertionError("no integer span reproduces this volume")


def shipped_volume(root, name: str) -> tuple[np.ndarray, np.ndarray]:
    path = acdc_volume_path(root, name)
    if path.is_file():
        with h5py.File(path) as f:
            return f["image"][()], f["label"][()]
    slices = sorted(acdc_slice_path(root, name).parent.glob(f"{name}_slice_*.h5"),
                    key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    images, labels = [], []
    for path in slices:
        with h5py.File(path) as f:
            images.append(f["image"][()])
            labels.append(f["label"][()])
    return np.stack(images), np.stack(labels)


def save_release_frame(folder, name: str, volume_shw: np.ndarray) -> None:
    """A NIfTI file in the release's axis order: (x, y, z), the reverse of the (S, H, W) the h5 files hold."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume_shw.transpose(2, 1, 0)), AFFINE), str(folder / name))


@pytest.fixture(scope="module")
def release(acdc_root, tmp_path_factory):
    """training/patient038 (slices shipped): Info.cfg with ED = 4, ES = 11 and a 4-D file;
    testing/patient011 (volumes shipped): no Info.cfg; testing/patient101: no _gt (skipped)."""
    raw = tmp_path_factory.mktemp("release")
    patients = {"patient038": (raw / "training" / "patient038", 4, 11, 7),
                "patient011": (raw / "testing" / "patient011", 1, 9, 0)}
    shipped = {}
    for patient, (folder, ed, es, offset) in patients.items():
        frames = []
        for role_frame, release_frame in (("frame01", ed), ("frame02", es)):
            image, label = shipped_volume(acdc_root, f"{patient}_{role_frame}")
            shipped[f"{patient}_{role_frame}"] = (image, label)
            frame = integer_frame(image, offset)
            save_release_frame(folder, f"{patient}_frame{release_frame:02d}.nii.gz", frame)
            save_release_frame(folder, f"{patient}_frame{release_frame:02d}_gt.nii.gz", label)
            frames.append(frame)
        if patient == "patient038":
            (folder / "Info.cfg").write_text(f"ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\n"
                                             f"Weight: 80.0\n")
            import nibabel as nib

            cine = np.stack([f.transpose(2, 1, 0) for f in frames], axis=-1)  # (x, y, z, t)
            nib.save(nib.Nifti1Image(cine, AFFINE), str(folder / f"{patient}_4d.nii.gz"))
    save_release_frame(raw / "testing" / "patient101", "patient101_frame01.nii.gz", np.zeros((2, 4, 4), np.int16))
    return raw, shipped


def test_release_converts_to_the_listed_names_and_the_published_bits(release, tmp_path, capsys):
    raw, shipped = release
    dest = tmp_path / "ACDC"
    assert prepare_acdc.main([str(raw), str(dest)]) == 0
    err = capsys.readouterr().err
    assert "roles from the frame order: patient011 (no Info.cfg" in err and "patient101" in err
    assert sorted(p.name for p in (dest / "data").glob("*.h5")) == sorted(f"{n}.h5" for n in shipped)
    for name, (image, label) in shipped.items():
        with h5py.File(dest / "data" / f"{name}.h5") as f:
            converted_image, converted_label = f["image"][()], f["label"][()]
        assert converted_image.dtype == np.float32 and converted_label.dtype == np.uint8
        assert np.array_equal(converted_label, label), name
        assert np.array_equal(converted_image.view(np.uint32), image.view(np.uint32)), name  # bit for bit
        slices = sorted(p.name for p in (dest / "data" / "slices").glob(f"{name}_slice_*.h5"))
        assert slices == sorted(f"{name}_slice_{k}.h5" for k in range(1, image.shape[0] + 1))
        with h5py.File(dest / "data" / "slices" / f"{name}_slice_1.h5") as f:
            assert np.array_equal(f["image"][()].view(np.uint32), image[0].view(np.uint32))
    record = json.loads((dest / "conversion.json").read_text())["patients"]
    assert record["patient038"]["patient038_frame01"]["release_frame"] == 4
    assert record["patient038"]["patient038_frame02"]["release_frame"] == 11
    assert record["patient038"]["roles_from"] == "Info.cfg"
    assert not any("4d" in p.name for p in (dest / "data").rglob("*"))

    # data.verify: the shipped cases (patient038's slices, patient011's volumes) hash to the manifest
    manifest = read_manifest()
    assert "ACDC/patient038_frame01_slice_1" in manifest and "ACDC/patient011_frame02" in manifest
    assert verify.main([str(dest)]) == 0
    out = capsys.readouterr().out
    slices_038 = sum(k.startswith("ACDC/patient038_") for k in manifest)
    assert f"{slices_038 + 2} ok, 0 corrupt" in out and "differs" not in out

    with h5py.File(dest / "data" / "slices" / "patient038_frame01_slice_2.h5", "r+") as f:
        f["label"][0, 0] = 3 - f["label"][0, 0]
    with h5py.File(dest / "data" / "patient011_frame02.h5", "r+") as f:
        f["image"][0, 0, 0] = np.nextafter(f["image"][0, 0, 0], np.float32(2))
    assert verify.main([str(dest)]) == 1
    out = capsys.readouterr().out
    frames_038 = sum(k.startswith("ACDC/patient038_frame01_slice_") for k in manifest)
    assert f"differs: ACDC/patient038_frame01 (slice 2 of {frames_038} differs)" in out
    assert "differs: ACDC/patient011_frame02 (image or label)" in out
    assert f"python -m data.prepare_acdc {raw.resolve()} {dest}" in out


def test_scaling_follows_ssl4mis_order_of_operations(tmp_path):
    """SSL4MIS scales the array as stored and casts to float32 afterwards; on a float64 frame that differs from
    casting first (on integer frames both orders agree exactly: an integer quotient k / span, span < 2**28,
    never lies within float64 rounding of a float32 rounding midpoint)."""
    frame = np.random.default_rng(0).normal(300.0, 80.0, (3, 20, 24))  # float64, as (S, H, W)
    patient = tmp_path / "raw" / "patient005"
    save_release_frame(patient, "patient005_frame01.nii.gz", frame)
    save_release_frame(patient, "patient005_frame01_gt.nii.gz", np.zeros(frame.shape, np.uint8))
    save_release_frame(patient, "patient005_frame13.nii.gz", frame[::-1])
    save_release_frame(patient, "patient005_frame13_gt.nii.gz", np.ones(frame.shape, np.uint8))
    (patient / "Info.cfg").write_text("ED: 13\nES: 1\n")  # roles from Info.cfg, not from the frame order
    prepare_acdc.prepare_acdc(tmp_path / "raw", tmp_path / "out")
    with h5py.File(tmp_path / "out" / "data" / "patient005_frame01.h5") as f:
        image, label = f["image"][()], f["label"][()]
    stored = frame[::-1]
    expected = ((stored - stored.min()) / (stored.max() - stored.min())).astype(np.float32)
    assert np.array_equal(image.view(np.uint32), expected.view(np.uint32)) and (label == 1).all()
    cast_first = stored.astype(np.float32)
    cast_first = (cast_first - cast_first.min()) / (cast_first.max() - cast_first.min())
    assert not np.array_equal(cast_first, expected)  # the order matters here, so the check above can fail


def test_ambiguous_roles_are_refused_with_the_fix(tmp_path, capsys):
    patient = tmp_path / "raw" / "training" / "patient007"
    for frame in (1, 5, 9):
        save_release_frame(patient, f"patient007_frame{frame:02d}.nii.gz", np.ones((2, 3, 4), np.int16))
        save_release_frame(patient, f"patient007_frame{frame:02d}_gt.nii.gz", np.zeros((2, 3, 4), np.uint8))
    (patient / "Info.cfg").write_text("ED: 1\nES: 12\n")
    assert prepare_acdc.main([str(tmp_path / "raw"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "patient007" in err and "ES frame 12 has no _gt file" in err and "3 frames" in err
    assert not (tmp_path / "out" / "conversion.json").exists()
    shutil.rmtree(tmp_path / "raw")
    assert prepare_acdc.main([str(tmp_path / "raw"), str(tmp_path / "out")]) == 2
