"""Transforms, LA / ACDC datasets (real data where available) and the synthetic LA set (docs/method.md §3.2)."""
from __future__ import annotations

import gc
import time
from itertools import islice

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dataloaders import (
    ACDCSlices,
    ACDCTrainTransform,
    LATrainTransform,
    LAVolumes,
    TwoStreamBatchSampler,
    acdc_split,
    la_case_path,
    la_split,
    load_acdc_slice,
    load_acdc_volume,
    load_la_case,
    make_synthetic_la,
    random_crop,
    random_rot_flip,
    random_rotate,
    read_list,
    resize_nearest,
)
from dataloaders import loader as loader_module
from dataloaders.loader import BackgroundBatches, training_batches
from dataloaders.splits import SPLITS_DIR
from dataloaders.transforms import crop_padding


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- transforms


def test_rot_flip_keeps_image_and_label_aligned():
    label = rng().integers(0, 4, size=(9, 7, 5)).astype(np.uint8)
    image = label.astype(np.float32)
    for seed in range(20):
        out_image, out_label = random_rot_flip(image, label, rng(seed))
        np.testing.assert_array_equal(out_image, out_label)
        assert sorted(out_image.shape[:2]) == [7, 9] and out_image.shape[2] == 5


def test_rot_flip_always_flips():
    # The flip is unconditional, so an asymmetric input never comes back unchanged (k=0 included).
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    for seed in range(30):
        out, _ = random_rot_flip(image, image, rng(seed))
        assert not np.array_equal(out, image)


def test_rot_flip_reaches_the_four_mirrored_orientations():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    seen = {random_rot_flip(image, image, rng(seed))[0].tobytes() for seed in range(200)}
    assert len(seen) == 4  # rot90^k then a flip: only the 4 reflections of the square's 8 symmetries


def test_random_rotate_aligned_same_size_and_zero_fill():
    label = np.zeros((40, 30), dtype=np.uint8)
    label[10:30, 8:22] = 3
    image = label.astype(np.float32) + 1.0  # nonzero everywhere: zero fill shows up as 0
    for seed in range(10):
        out_image, out_label = random_rotate(image, label, rng(seed))
        assert out_image.shape == image.shape and out_label.shape == label.shape
        assert set(np.unique(out_label)) <= {0, 3}
        inside = out_image > 0
        np.testing.assert_array_equal(out_image[inside] - 1.0, out_label[inside])


def test_random_rotate_angle_range():
    angles = {int(rng(seed).integers(-20, 20)) for seed in range(2000)}
    assert min(angles) == -20 and max(angles) == 19


@pytest.mark.parametrize(
    "shape, patch, padded",
    [
        ((148, 132, 88), (112, 112, 80), False),
        ((100, 120, 60), (112, 112, 80), True),
        ((112, 130, 90), (112, 112, 80), True),
    ],
)
def test_random_crop_shapes_including_padding(shape, patch, padded):
    image = rng().normal(size=shape).astype(np.float32)
    label = (image > 0).astype(np.uint8)
    out_image, out_label = random_crop(image, label, patch, rng(1))
    assert out_image.shape == out_label.shape == patch
    np.testing.assert_array_equal(out_image > 0, out_label.astype(bool))
    assert any(crop_padding(shape, patch)) == padded


def test_crop_padding_rule():
    assert crop_padding((100, 120, 60), (112, 112, 80)) == [9, 0, 13]
    assert crop_padding((112, 150, 90), (112, 112, 80)) == [3, 0, 0]
    assert crop_padding((148, 132, 88), (112, 112, 80)) == [0, 0, 0]


def test_random_crop_offsets_exclusive_upper_bound():
    image = np.arange(6, dtype=np.float32)
    starts = {int(random_crop(image, image, (4,), rng(seed))[0][0]) for seed in range(200)}
    assert starts == {0, 1}  # offset 2 = size - patch is never drawn, as the official code


@pytest.mark.parametrize("shape", [(256, 216), (216, 256), (154, 288), (213, 247), (256, 256)])
def test_resize_nearest_exact_size_and_values(shape):
    label = rng().integers(0, 4, size=shape).astype(np.uint8)
    out = resize_nearest(label, (256, 256))
    assert out.shape == (256, 256) and out.dtype == np.uint8
    assert set(np.unique(out)) <= set(np.unique(label))


def test_acdc_transform_output_256_and_aligned():
    label = rng().integers(0, 4, size=(216, 180)).astype(np.uint8)
    image = label.astype(np.float32)
    transform = ACDCTrainTransform()
    for seed in range(12):
        out_image, out_label = transform(image, label, rng(seed))
        assert out_image.shape == out_label.shape == (256, 256)
        np.testing.assert_array_equal(out_image, out_label)


@pytest.mark.parametrize("transform, shape", [(LATrainTransform((16, 16, 8)), (24, 20, 10)),
                                              (ACDCTrainTransform((32, 32)), (30, 40))])
def test_transforms_deterministic_given_seed_and_do_not_modify_input(transform, shape):
    image = rng().normal(size=shape).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    before = image.copy()
    first = transform(image, label, rng(7))
    second = transform(image, label, rng(7))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(image, before)
    outputs = {transform(image, label, rng(seed))[0].tobytes() for seed in range(8)}
    assert len(outputs) > 1


# ---------------------------------------------------------------- error messages


def test_missing_la_case_names_path_and_readme(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mri_norm2\.h5 not found.*docs/data.md"):
        load_la_case(tmp_path, "NOPE")


def test_la_case_missing_key_and_shape_mismatch(tmp_path):
    path = la_case_path(tmp_path, "BAD")
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"no dataset\(s\) \['label'\]"):
        load_la_case(tmp_path, "BAD")
    with h5py.File(path, "a") as f:
        f["label"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image shape \(4, 4, 4\) and label shape \(4, 4, 3\)"):
        load_la_case(tmp_path, "BAD")


def test_missing_acdc_files_name_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"slices/x\.h5 not found"):
        load_acdc_slice(tmp_path, "x")
    with pytest.raises(FileNotFoundError, match=r"data/y\.h5 not found"):
        load_acdc_volume(tmp_path, "y")


# ---------------------------------------------------------------- synthetic LA


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synla")
    return make_synthetic_la(root, n_train=6, n_test=2, shape=(40, 36, 24), n_val=1)


def test_synthetic_la_layout_lists_and_contents(synthetic_root):
    train, test, val = (read_list(synthetic_root / f"{n}.list") for n in ("train", "test", "val"))
    assert train == [f"SYN{i:03d}" for i in range(6)] and test == ["SYN006", "SYN007"] and val == ["SYN005"]
    split = la_split(2, lists_dir=synthetic_root)
    assert split.unlabeled == ["SYN002", "SYN003", "SYN004"]
    for case in train + test:
        image, label = load_la_case(synthetic_root, case)
        assert image.shape == (40, 36, 24) and image.dtype == np.float32 and label.dtype == np.uint8
        assert set(np.unique(label)) == {0, 1}
        assert 0.05 <= label.mean() <= 0.15
        assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-3
        assert image[label == 1].mean() > image[label == 0].mean() + 1.0
    assert not list(synthetic_root.rglob("*.tmp"))


def test_synthetic_la_deterministic(synthetic_root, tmp_path):
    again = make_synthetic_la(tmp_path, n_train=6, n_test=2, shape=(40, 36, 24), n_val=1)
    for case in ("SYN000", "SYN007"):
        for a, b in zip(load_la_case(synthetic_root, case), load_la_case(again, case), strict=True):
            np.testing.assert_array_equal(a, b)


def test_synthetic_la_not_solved_by_a_global_threshold(synthetic_root):
    image, label = load_la_case(synthetic_root, "SYN000")
    best = max(2 * np.sum((image > t) & (label == 1)) / (np.sum(image > t) + label.sum())
               for t in np.linspace(-1, 3, 41))
    assert best < 0.9


def test_la_volumes_on_synthetic_with_sampler_and_workers(synthetic_root):
    split = la_split(2, lists_dir=synthetic_root)
    ids = split.labeled + split.unlabeled
    dataset = LAVolumes(synthetic_root, ids, transform=LATrainTransform((24, 24, 16)))
    sampler = TwoStreamBatchSampler(range(2), range(2, len(ids)), batch_size=4, labeled_bs=2, seed=3)
    batch = next(iter(DataLoader(dataset, batch_sampler=sampler)))
    assert batch["image"].shape == (4, 1, 24, 24, 16) and batch["label"].shape == (4, 24, 24, 16)
    assert batch["case"][:2] == [ids[i] for i, _ in sampler.batch_at(0)[:2]]


def synthetic_batches(root, workers, n=3):
    split = la_split(2, lists_dir=root)
    ids = split.labeled + split.unlabeled
    dataset = LAVolumes(root, ids, transform=LATrainTransform((24, 24, 16)))
    sampler = TwoStreamBatchSampler(range(2), range(2, len(ids)), batch_size=4, labeled_bs=2, seed=3)
    return list(islice(training_batches(dataset, sampler, workers, torch.device("cpu")), n))


def test_training_batches_equal_from_the_background_thread_and_from_worker_processes(synthetic_root):
    thread, processes = synthetic_batches(synthetic_root, 0), synthetic_batches(synthetic_root, 2)
    for a, b in zip(thread, processes, strict=True):
        assert a["case"] == b["case"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert thread[0]["image"].shape == (4, 1, 24, 24, 16) and thread[0]["label"].dtype == torch.int64
    assert not torch.equal(thread[0]["image"], thread[1]["image"])


def test_background_batches_keep_order_run_ahead_and_raise_the_loaders_error():
    produced = []

    def source():
        for i in range(3):
            produced.append(i)
            yield i
        raise OSError("disk gone")

    batches = BackgroundBatches(source(), ahead=1)
    assert next(batches) == 0
    deadline = time.monotonic() + 10
    while len(produced) < 2 and time.monotonic() < deadline:  # the next item is prepared before it is asked for
        time.sleep(0.01)
    assert produced == [0, 1]
    assert [next(batches), next(batches)] == [1, 2]
    with pytest.raises(OSError, match="disk gone"):
        next(batches)


def test_background_thread_ends_when_its_iterator_is_dropped():
    batches = BackgroundBatches(iter(range(10**9)), ahead=2)
    thread = batches._thread
    assert next(batches) == 0 and thread.is_alive()
    del batches
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_the_pinned_stream_pins_image_and_label(monkeypatch):
    # CPU-only builds cannot pin: stand in for Tensor.pin_memory and check both tensors go through it
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.shape) or self.clone())
    batch = {"image": torch.zeros(2, 1, 4, 4), "label": torch.zeros(2, 4, 4, dtype=torch.int64), "case": ["a", "b"]}
    out = next(loader_module._pinned(iter([batch])))
    assert pinned == [(2, 1, 4, 4), (2, 4, 4)] and out["case"] == ["a", "b"]


# ---------------------------------------------------------------- real data


def first_la_train_ids(n=4):
    return read_list(SPLITS_DIR / "LA" / "train.list")[:n]


def test_real_la_case_shapes_dtypes_labels(la_root):
    for case in first_la_train_ids() + read_list(SPLITS_DIR / "LA" / "test.list")[:4]:
        image, label = load_la_case(la_root, case)
        assert image.dtype == np.float32 and label.dtype == np.uint8
        assert image.shape == label.shape and image.shape[2] == 88
        assert 148 <= image.shape[0] <= 244 and 132 <= image.shape[1] <= 160
        assert set(np.unique(label)) == {0, 1}


def test_real_la_volumes_without_and_with_transform(la_root):
    ids = first_la_train_ids()
    raw = LAVolumes(la_root, ids)
    sample = raw[0]
    assert sample["case"] == ids[0] and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["image"].shape == (1, *sample["label"].shape)
    cropped = LAVolumes(la_root, ids, transform=LATrainTransform())
    a, b = cropped[(1, 123)], cropped[(1, 123)]
    assert a["image"].shape == (1, 112, 112, 80) and a["label"].shape == (112, 112, 80)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert set(a["label"].unique().tolist()) <= {0, 1}


def _batches(loader, n):
    return list(islice(iter(loader), n))


def test_real_la_loader_identical_for_0_and_2_workers(la_root):
    ids = first_la_train_ids()
    dataset = LAVolumes(la_root, ids, transform=LATrainTransform())
    batches = {}
    for workers in (0, 2):
        sampler = TwoStreamBatchSampler([0, 1], [2, 3], batch_size=4, labeled_bs=2, seed=1337)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers)
        batches[workers] = _batches(loader, 3)
    for zero, two in zip(batches[0], batches[2], strict=True):
        assert zero["case"] == two["case"]
        assert torch.equal(zero["image"], two["image"]) and torch.equal(zero["label"], two["label"])
    assert batches[0][0]["image"].shape == (4, 1, 112, 112, 80)


def test_real_acdc_slices_and_volumes(acdc_root):
    names = sorted(p.stem for p in (acdc_root / "data" / "slices").glob("*.h5"))[:6]
    assert names
    dataset = ACDCSlices(acdc_root, names, transform=ACDCTrainTransform())
    for index in range(len(names)):
        sample = dataset[(index, index + 100)]
        assert sample["image"].shape == (1, 256, 256) and sample["image"].dtype == torch.float32
        assert sample["label"].shape == (256, 256) and sample["label"].dtype == torch.int64
        assert set(sample["label"].unique().tolist()) <= {0, 1, 2, 3}
    image, label = load_acdc_slice(acdc_root, names[0])
    assert image.ndim == 2 and image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    split = acdc_split(3)
    volumes = [n for n in split.val + split.test if (acdc_root / "data" / f"{n}.h5").is_file()]
    assert volumes
    for name in volumes:
        image, label = load_acdc_volume(acdc_root, name)
        assert image.shape == label.shape and image.ndim == 3 and 6 <= image.shape[0] <= 17
        assert set(np.unique(label)) == {0, 1, 2, 3}
