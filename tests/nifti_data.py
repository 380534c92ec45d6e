"""A tiny synthetic dataset in the nnU-Net raw layout, for the NIfTI / predict tests."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

# train.py flags of a two-iteration run on these tiny synthetic folders
TINY_TRAIN_FLAGS = ["--max_iteration", "2", "--eval_every", "2", "--eval_start", "2", "--num_workers", "0",
                    "--device", "cpu", "--no_progress", "--num_val", "1", "--patch_size", "16,16,16",
                    "--base_filters", "4", "--batch_size", "2", "--labeled_bs", "1"]

def rotated_affine(spacing, degrees: float = 30.0, origin=(-10.0, 5.0, 20.0)) -> np.ndarray:
    """A voxel-to-world affine with an oblique rotation (about z, then x) and anisotropic voxels."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rx @ rz @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def synthetic_case(rng: np.random.Generator, shape=(28, 24, 12), channels: int = 1):
    """(images per channel, label 0..2): a bright ball (1) and a dark box (2) in a noisy body, zero outside."""
    grid = np.indices(shape).astype(float)
    centre = np.array(shape) / 2 + rng.uniform(-2, 2, 3)
    body = ((grid[0] - shape[0] / 2) / (shape[0] * 0.45)) ** 2 + ((grid[1] - shape[1] / 2) / (shape[1] * 0.45)) ** 2
    body = body <= 1
    ball = sum(((grid[i] - centre[i]) / r) ** 2 for i, r in enumerate((5, 5, 3))) <= 1
    box = (np.abs(grid[0] - centre[0] + 8) < 3) & (np.abs(grid[1] - centre[1]) < 3) & (np.abs(grid[2] - centre[2]) < 3)
    label = np.zeros(shape, np.uint8)
    label[ball] = 1
    label[box & body] = 2
    label[~body] = 0
    images = []
    for c in range(channels):
        image = 100.0 + 10 * c + rng.normal(0, 5, shape)
        image[label == 1] += 60
        image[label == 2] -= 50
        image[~body] = 0
        images.append(image.astype(np.float32))
    return images, label


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_nifti_dataset(root: Path, n_labeled: int = 3, n_unlabeled: int = 3, n_test: int = 2, channels: int = 1,
                       spacing=(1.0, 1.0, 2.5), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    affine = rotated_affine(spacing)
    cases = [("Tr", f"case{i:03d}", i < n_labeled) for i in range(n_labeled + n_unlabeled)]
    cases += [("Ts", f"test{i:03d}", True) for i in range(n_test)]
    for subset, case, labeled in cases:
        images, label = synthetic_case(rng, channels=channels)
        for c, image in enumerate(images):
            write_nifti(root / f"images{subset}" / f"{case}_{c:04d}.nii.gz", image, affine)
        if labeled:
            write_nifti(root / f"labels{subset}" / f"{case}.nii.gz", label, affine)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {str(c): f"MRI{c}" for c in range(channels)},
        "labels": {"background": 0, "ball": 1, "box": 2},
        "numTraining": n_labeled + n_unlabeled,
        "file_ending": ".nii.gz",
    }))
    return root


def make_decathlon_task(root: Path, prefix: str = "la", n_labeled: int = 4, n_unlabeled: int = 1, n_test: int = 2,
                        channels: int = 1, spacing=(1.25, 1.25, 2.5), seed: int = 0) -> Path:
    """A Medical Segmentation Decathlon task folder as downloaded: imagesTr/<prefix>_003.nii.gz (no channel suffix;
    several channels as one 4-D image, channels last), labelsTr/, imagesTs/ without labels, the Decathlon's
    dataset.json (modality, labels "0": name, training / test lists) and a macOS `._` companion file."""
    rng = np.random.default_rng(seed)
    affine = rotated_affine(spacing)
    training, test = [], []
    for i in range(n_labeled + n_unlabeled + n_test):
        case = f"{prefix}_{i + 3:03d}"
        subset = "Tr" if i < n_labeled + n_unlabeled else "Ts"
        images, label = synthetic_case(rng, channels=channels)
        image = images[0] if channels == 1 else np.stack(images, axis=-1)  # (X, Y, Z[, C])
        write_nifti(root / f"images{subset}" / f"{case}.nii.gz", image, affine)
        if i < n_labeled:
            write_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
            training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        elif subset == "Ts":
            test.append(f"./imagesTs/{case}.nii.gz")
    (root / "imagesTr" / f"._{prefix}_003.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Toy", "tensorImageSize": "4D" if channels > 1 else "3D",
        "modality": {str(c): ("FLAIR", "T1w", "t1gd", "T2w")[c] if channels > 1 else "MRI" for c in range(channels)},
        "labels": {"0": "background", "1": "ball", "2": "box"},
        "numTraining": len(training), "numTest": len(test), "training": training, "test": test,
    }, indent=1))
    return root


def synthetic_ct_case(rng: np.random.Generator, shape=(40, 36, 14)):
    """(image in HU, label 0/1): air -1000, a soft-tissue body about 40 HU, a bright labeled organ about 150 HU,
    a bone rod about 1200 HU, and a detached table slab (-100 HU) below the body, across an air gap."""
    grid = np.indices(shape).astype(float)
    body = (((grid[0] - 20) / 15) ** 2 + ((grid[1] - 16) / 12) ** 2) <= 1
    organ = (((grid[0] - 17 - rng.uniform(-1, 1)) / 5) ** 2 + ((grid[1] - 14) / 4) ** 2
             + ((grid[2] - 7) / 4) ** 2) <= 1
    bone = (((grid[0] - 26) / 2.5) ** 2 + ((grid[1] - 18) / 2.5) ** 2) <= 1
    image = np.full(shape, -1000.0) + rng.normal(0, 5, shape)
    image[body] = 40 + rng.normal(0, 10, int(body.sum()))
    image[organ & body] = 150 + rng.normal(0, 15, int((organ & body).sum()))
    image[bone & body] = 1200 + rng.normal(0, 60, int((bone & body).sum()))
    image[:, 31:33, :] = -100.0  # the table: above the body threshold, but not connected to the body
    label = (organ & body).astype(np.uint8)
    return image.astype(np.float32), label


def make_ct_dataset(root: Path, n_labeled: int = 4, n_unlabeled: int = 1, n_test: int = 1,
                    spacing=(0.8, 0.8, 2.5), seed: int = 0) -> Path:
    """An nnU-Net raw folder of synthetic CT scans (int16 HU, as CT is stored), channel name CT."""
    rng = np.random.default_rng(seed)
    affine = rotated_affine(spacing)
    cases = [("Tr", f"ct{i:03d}", i < n_labeled) for i in range(n_labeled + n_unlabeled)]
    cases += [("Ts", f"cttest{i:03d}", True) for i in range(n_test)]
    for subset, case, labeled in cases:
        image, label = synthetic_ct_case(rng)
        write_nifti(root / f"images{subset}" / f"{case}_0000.nii.gz", np.rint(image).astype(np.int16), affine)
        if labeled:
            write_nifti(root / f"labels{subset}" / f"{case}.nii.gz", label, affine)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                   "labels": {"background": 0, "organ": 1},
                                                   "file_ending": ".nii.gz"}))
    return root
