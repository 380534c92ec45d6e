"""utils.sliding_window: window placement, averaging, padding, batching, ACDC slice-wise resizing."""
from __future__ import annotations

import io
import itertools
import lzma
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from dataloaders import get_dataset
from inference import Predictor
from inference.settings import InferenceSettings
from utils.sliding_window import (
    count_windows,
    predict_slices_2d,
    sliding_window_predict,
    window_starts,
)

LA_PATCH, LA_STRIDE = (112, 112, 80), (18, 18, 4)
SHARED_DATA = Path(os.environ.get("SSNET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data"))
SHARED_LA = SHARED_DATA / "LA"


def zero_logits(num_classes: int):
    return lambda batch: torch.zeros((batch.shape[0], num_classes, *batch.shape[2:]))


# --- window placement ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("size", "patch", "stride", "expected"),
    [
        (88, 80, 4, [0, 4, 8]),
        (80, 80, 4, [0]),
        (148, 112, 18, [0, 18, 36]),
        (132, 112, 18, [0, 18, 20]),  # last window pulled back flush with the border
        (10, 4, 3, [0, 3, 6]),
        (11, 4, 3, [0, 3, 6, 7]),
    ],
)
def test_window_starts(size, patch, stride, expected):
    assert window_starts(size, patch, stride) == expected


def test_window_starts_refuses_unpadded_axis():
    with pytest.raises(ValueError, match="pad"):
        window_starts(70, 80, 4)


def test_la_example_volume_uses_27_windows():
    assert count_windows((148, 132, 88), LA_PATCH, LA_STRIDE) == 27
    calls = []

    def predict(batch):
        calls.append(batch.shape[0])
        return torch.zeros((batch.shape[0], 2, *batch.shape[2:]))

    image = torch.zeros((1, 148, 132, 88))
    probs = sliding_window_predict(predict, image, LA_PATCH, LA_STRIDE, 2, batch_size=4)
    assert sum(calls) == 27 and calls == [4] * 6 + [3]
    assert probs.shape == (2, 148, 132, 88)
    torch.testing.assert_close(probs, torch.full_like(probs, 0.5))


def test_la_test_set_needs_1128_windows():
    test_list = SHARED_LA / "test.list"
    if not test_list.is_file():
        pytest.skip(f"real-data test: {test_list} not found (bundled benchmark copy absent)")
    case_ids = test_list.read_text().split()
    assert len(case_ids) == 20
    per_case = []
    for case_id in case_ids:
        packed = np.load(io.BytesIO(lzma.decompress((SHARED_LA / f"{case_id}.npz.xz").read_bytes())))
        per_case.append(count_windows(packed["index"].shape, LA_PATCH, LA_STRIDE))
    assert sum(per_case) == 1128
    assert (min(per_case), max(per_case)) == (45, 84)  # 27-96 windows is the range over all 100 cases


# --- averaging, padding, batching ----------------------------------------------------------------------

def test_whole_volume_patch_equals_direct_softmax():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(2, 3, kernel_size=3, padding=1).eval()
    image = torch.randn(2, 8, 6, 5)
    probs = sliding_window_predict(net, image, (8, 6, 5), stride=(2, 2, 2), num_classes=3)
    with torch.no_grad():
        expected = torch.softmax(net(image[None]), dim=1)[0]
    torch.testing.assert_close(probs, expected)
    assert probs.dtype == torch.float32


def test_batched_equals_unbatched():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1))
    net.eval()
    image = torch.randn(1, 13, 11, 9)
    args = (image, (6, 6, 5), (3, 2, 2), 2)
    assert count_windows(image.shape[1:], (6, 6, 5), (3, 2, 2)) == 4 * 4 * 3
    unbatched = sliding_window_predict(net, *args, batch_size=1)
    batched = sliding_window_predict(net, *args, batch_size=3)
    torch.testing.assert_close(batched, unbatched, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(unbatched.sum(dim=0), torch.ones(13, 11, 9))


def test_averaging_with_window_dependent_predictor():
    # The image holds each pixel's flat index; the toy predictor gives the whole window one foreground
    # logit derived from its top-left pixel, i.e. from the window's position.
    height, width, patch, stride = 10, 7, (4, 3), (3, 2)
    image = torch.arange(height * width, dtype=torch.float32).reshape(1, height, width)

    def window_logit(top_left_index: float) -> float:
        return 0.05 * top_left_index - 1.0

    def predict(batch):
        logits = torch.zeros((batch.shape[0], 2, *patch))
        logits[:, 1] = torch.tensor([window_logit(float(w[0, 0, 0])) for w in batch]).view(-1, 1, 1)
        return logits

    probs = sliding_window_predict(predict, image, patch, stride, num_classes=2, batch_size=2)

    expected = np.zeros((height, width))
    covered = np.zeros((height, width))
    for y in window_starts(height, patch[0], stride[0]):
        for x in window_starts(width, patch[1], stride[1]):
            p_foreground = 1.0 / (1.0 + np.exp(-window_logit(y * width + x)))
            expected[y:y + patch[0], x:x + patch[1]] += p_foreground
            covered[y:y + patch[0], x:x + patch[1]] += 1
    np.testing.assert_allclose(probs[1].numpy(), expected / covered, rtol=1e-6)
    # a pixel seen by exactly the two windows starting at (0, 0) and (0, 2): their plain mean
    p00, p02 = (1.0 / (1.0 + np.exp(-window_logit(i))) for i in (0, 2))
    assert covered[0, 2] == 2 and probs[1, 0, 2].item() == pytest.approx((p00 + p02) / 2, rel=1e-6)


def test_small_volume_is_padded_symmetrically_and_cropped_back():
    # The predictor's foreground logit is the voxel's position inside the patch (asymmetric in every axis),
    # so the output reveals where the original voxels sat in the padded patch.
    patch = (8, 6, 5)
    image = torch.ones(1, 5, 6, 2)  # pads: 3 -> (1, 2), 0 -> (0, 0), 3 -> (1, 2)

    def predict(batch):
        axes = (torch.arange(n, dtype=torch.float32) for n in patch)
        depth, rows, cols = torch.meshgrid(*axes, indexing="ij")
        logits = torch.zeros((batch.shape[0], 2, *patch))
        logits[:, 1] = 0.1 * depth + 0.01 * rows + 0.001 * cols
        return logits

    assert count_windows(image.shape[1:], patch, 1) == 1
    probs = sliding_window_predict(predict, image, patch, stride=1, num_classes=2)
    assert probs.shape == (2, 5, 6, 2)
    d, r, c = torch.meshgrid(torch.arange(5) + 1, torch.arange(6), torch.arange(2) + 1, indexing="ij")
    torch.testing.assert_close(probs[1], torch.sigmoid(0.1 * d + 0.01 * r + 0.001 * c).float())


def test_padding_uses_zeros_and_2d_images():
    image = torch.full((1, 3, 9), 5.0)  # 2D, first axis shorter than the patch (pad 2 -> 1 before, 1 after)
    seen = []

    def predict(batch):
        seen.append(batch.clone())
        return torch.zeros((batch.shape[0], 4, *batch.shape[2:]))

    probs = sliding_window_predict(predict, image, (5, 4), stride=(1, 4), num_classes=4, batch_size=8)
    assert probs.shape == (4, 3, 9) and len(seen) == 1 and seen[0].shape == (3, 1, 5, 4)  # starts 0, 4, 5
    window = seen[0][0, 0]
    assert window[0].eq(0).all() and window[4].eq(0).all() and window[1:4].eq(5).all()
    torch.testing.assert_close(probs, torch.full((4, 3, 9), 0.25))


class TwoClassConv(torch.nn.Module):
    """A 3-D two-class 'network' with the project's output contract (logits first). Bias-free: where the input
    is zero in a whole 3x3x3 neighbourhood both logits are 0, so the foreground probability is exactly 0.5."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1, bias=False)

    def forward(self, x):
        return (self.conv(x),)


def official_la_labels(network, image: np.ndarray, patch, stride) -> tuple[np.ndarray, np.ndarray]:
    """The official LA test as its loop runs (docs/method.md §4.1): every window's softmax added into a score
    map and a count map (float64 here), their ratio, and foreground where that mean probability is > 0.5."""
    score, count = np.zeros((2, *image.shape)), np.zeros(image.shape)
    steps = [math.ceil((size - p) / s) + 1 for size, p, s in zip(image.shape, patch, stride, strict=True)]
    for index in itertools.product(*(range(n) for n in steps)):
        corner = [min(i * s, size - p) for i, s, size, p in zip(index, stride, image.shape, patch, strict=True)]
        region = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
        with torch.no_grad():
            logits = network(torch.from_numpy(image[region])[None, None])[0]
        score[(slice(None), *region)] += torch.softmax(logits, dim=1)[0].double().numpy()
        count[region] += 1
    mean = score / count
    return (mean[1] > 0.5).astype(np.uint8), mean[1]


def test_the_la_predictor_labels_are_the_official_foreground_probability_above_one_half():
    """The predictor takes the argmax of the averaged probabilities; the official code thresholds the averaged
    foreground probability at 0.5 (strict). Equal on every voxel, exact ties (p = 0.5) included: background."""
    torch.manual_seed(3)
    network = TwoClassConv().eval()
    image = torch.randn(12, 10, 7).numpy()
    image[3:9, 2:8, 1:6] = 0.0  # voxels [4:8, 3:7, 2:5] see only zeros: tied logits
    patch, stride = (6, 6, 4), (3, 3, 2)
    predictor = Predictor(network, get_dataset("LA"), InferenceSettings(patch, stride, batch_size=3, fold_bn=False))
    labels = predictor.predict_stored(image)

    expected, foreground = official_la_labels(network, image, patch, stride)
    assert np.all(foreground[4:8, 3:7, 2:5] == 0.5) and labels[4:8, 3:7, 2:5].max() == 0  # the tie: background
    assert 0.2 < expected.mean() < 0.8  # both classes on many voxels
    assert labels.dtype == np.uint8 and np.array_equal(labels, expected)
    probs = sliding_window_predict(predictor.logits, torch.from_numpy(image)[None], patch, stride, num_classes=2)
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(12, 10, 7))
    torch.testing.assert_close(probs[1].double(), torch.from_numpy(foreground), rtol=0, atol=1e-6)


def test_rejects_wrong_logits_shape_and_gapped_stride():
    with pytest.raises(ValueError, match="expected"):
        sliding_window_predict(zero_logits(3), torch.zeros(1, 8, 8), (4, 4), 2, num_classes=2)
    with pytest.raises(ValueError, match="exceeds patch_size"):
        sliding_window_predict(zero_logits(2), torch.zeros(1, 9, 9), (4, 4), (5, 4), num_classes=2)


# --- ACDC slice-wise inference -------------------------------------------------------------------------

def one_hot_of_input(num_classes: int = 4):
    """Toy network whose argmax returns the (integer-valued) input image: a perfect 'segmenter'."""
    def predict(batch):
        return torch.nn.functional.one_hot(batch[:, 0].long(), num_classes).permute(0, 3, 1, 2).float()
    return predict


def nearest_round_trip(label_slice: np.ndarray, size=(256, 256)) -> np.ndarray:
    h, w = label_slice.shape
    small = ndimage.zoom(label_slice, (size[0] / h, size[1] / w), order=0)
    return ndimage.zoom(small, (h / size[0], w / size[1]), order=0)


@pytest.mark.parametrize("shape", [(3, 216, 256), (2, 154, 288), (2, 237, 201)])
def test_predict_slices_2d_maps_back(shape):
    rng = np.random.default_rng(sum(shape))
    labels = rng.integers(0, 4, size=shape).astype(np.float32)
    prediction = predict_slices_2d(one_hot_of_input(), labels, batch_size=2)
    assert prediction.shape == shape and prediction.dtype == np.int64
    expected = np.stack([nearest_round_trip(s) for s in labels]).astype(np.int64)
    np.testing.assert_array_equal(prediction, expected)
    # edge_mode="nearest" only changes rows/columns that "constant" zeroes past the edge; away from
    # them the round trip through an enlarged 256 grid is lossless
    clamped = predict_slices_2d(one_hot_of_input(), labels, batch_size=2, edge_mode="nearest")
    differs = clamped != prediction
    assert not differs[:, :-1, :-1].any() and not (prediction[differs] != 0).any()
    if shape[1] <= 256 and shape[2] <= 256:
        np.testing.assert_array_equal(clamped, labels.astype(np.int64))


def test_official_edge_mode_zeroes_last_row_for_some_heights():
    # scipy zoom(order=0, mode="constant") shrinking 256 -> 216 reads past the edge for the last row
    labels = np.ones((1, 216, 256), dtype=np.float32)
    official = predict_slices_2d(one_hot_of_input(), labels)
    assert (official[0, :-1] == 1).all() and (official[0, -1] == 0).all()
    assert (predict_slices_2d(one_hot_of_input(), labels, edge_mode="nearest") == 1).all()
    with pytest.raises(ValueError, match="constant, nearest"):
        predict_slices_2d(one_hot_of_input(), labels, edge_mode="reflect")


def test_predict_slices_2d_batch_size_does_not_matter():
    rng = np.random.default_rng(5)
    volume = rng.integers(0, 4, size=(5, 40, 33)).astype(np.float32)
    outputs = [predict_slices_2d(one_hot_of_input(), volume, (64, 64), batch_size=b) for b in (1, 2, 16)]
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])


def test_predict_slices_2d_feeds_resized_float_batches():
    shapes = []

    def predict(batch):
        shapes.append((tuple(batch.shape), batch.dtype))
        return torch.zeros((batch.shape[0], 4, *batch.shape[2:]))

    predict_slices_2d(predict, np.zeros((5, 30, 20)), output_size=(32, 24), batch_size=2)
    assert shapes == [((2, 1, 32, 24), torch.float32)] * 2 + [((1, 1, 32, 24), torch.float32)]


@pytest.mark.parametrize("size", range(100, 520, 7))
def test_zoom_sizes_round_trip(size):
    # scipy's zoom output size is round(n * m / n); guard that it is exact for the sizes ACDC can have
    column = np.zeros((size, 3), dtype=np.int64)
    prediction = predict_slices_2d(one_hot_of_input(), column[None].astype(np.float32), (256, 256))
    assert prediction.shape == (1, size, 3)
