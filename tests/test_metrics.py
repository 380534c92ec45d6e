"""utils.metrics and utils.postprocess: hand-computed cases, empty policies, medpy agreement, real labels."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from utils.metrics import binary_metrics, case_metrics, summarize, surface_distances
from utils.postprocess import keep_largest_component_per_class, largest_connected_component

ATOL = 1e-6
medpy_surface_distances = getattr(medpy_binary, "__surface_distances")  # medpy's module-private helper


def square_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 4x4 square and the same square shifted by one column, in a 10x10 image."""
    a = np.zeros((10, 10), dtype=bool)
    a[2:6, 2:6] = True
    return a, np.roll(a, 1, axis=1)


def random_blobs(shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 2.0,
                 fill: float = 0.35) -> np.ndarray:
    """Smooth random blobs covering about `fill` of the array; they touch the array border almost surely."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return noise > np.quantile(noise, 1.0 - fill)


def full_array_distances(a: np.ndarray, b: np.ndarray, spacing=None) -> np.ndarray:
    """Uncropped reference computation: surfaces and EDT on the whole array."""
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    surface_a = a & ~ndimage.binary_erosion(a, structure)
    surface_b = b & ~ndimage.binary_erosion(b, structure)
    return ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]


def assert_matches_medpy(pred: np.ndarray, ref: np.ndarray, spacing=None) -> None:
    ours = binary_metrics(pred, ref, spacing=spacing)
    assert ours["dice"] == pytest.approx(medpy_binary.dc(pred, ref), abs=ATOL)
    assert ours["jaccard"] == pytest.approx(medpy_binary.jc(pred, ref), abs=ATOL)
    assert ours["hd95"] == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing), abs=ATOL)
    assert ours["asd"] == pytest.approx(medpy_binary.asd(pred, ref, voxelspacing=spacing), abs=ATOL)
    assert ours["assd"] == pytest.approx(medpy_binary.assd(pred, ref, voxelspacing=spacing), abs=ATOL)


# --- hand-computed cases -------------------------------------------------------------------------------

def test_shifted_square_by_hand():
    a, b = square_pair()
    m = binary_metrics(a, b)
    # overlap 4x3 = 12 of 16 + 16 pixels; union 20
    assert m["dice"] == pytest.approx(0.75)
    assert m["jaccard"] == pytest.approx(0.6)
    # each 12-pixel outline: 6 pixels on the other outline (distance 0), 6 pixels one step away
    assert sorted(surface_distances(a, b)) == [0.0] * 6 + [1.0] * 6
    assert m["asd"] == pytest.approx(0.5)
    assert m["assd"] == pytest.approx(0.5)
    assert m["hd95"] == pytest.approx(1.0)  # pooled: 12 zeros, 12 ones; the 95th percentile sits in the ones
    assert m["empty_pred"] is False and m["empty_ref"] is False


def test_shifted_square_anisotropic_spacing_by_hand():
    a, b = square_pair()
    m = binary_metrics(a, b, spacing=(2.0, 3.0))  # rows 2 mm apart, columns 3 mm apart
    # off-outline pixels of a: 4 reach b's outline one column away (3 mm), 2 one row away (2 mm)
    assert sorted(surface_distances(a, b, spacing=(2.0, 3.0))) == [0.0] * 6 + [2.0] * 2 + [3.0] * 4
    assert m["asd"] == pytest.approx(16.0 / 12.0)
    assert m["hd95"] == pytest.approx(3.0)
    assert m["dice"] == pytest.approx(0.75)  # overlap does not depend on spacing


@pytest.mark.parametrize("scale", [0.5, 2.0, 3.7])
def test_isotropic_spacing_scales_distances(scale):
    rng = np.random.default_rng(1)
    a, b = random_blobs((20, 18, 12), rng), random_blobs((20, 18, 12), rng)
    unit, scaled = binary_metrics(a, b), binary_metrics(a, b, spacing=scale)
    for key in ("hd95", "asd", "assd"):
        assert scaled[key] == pytest.approx(scale * unit[key], rel=1e-9)
    assert scaled["dice"] == unit["dice"] and scaled["jaccard"] == unit["jaccard"]


def test_identical_masks_are_perfect():
    a, _ = square_pair()
    m = binary_metrics(a, a)
    assert (m["dice"], m["jaccard"], m["hd95"], m["asd"], m["assd"]) == (1.0, 1.0, 0.0, 0.0, 0.0)


# --- empty-mask policies -------------------------------------------------------------------------------

def test_empty_prediction_official_scores_zero():
    _, ref = square_pair()
    m = binary_metrics(np.zeros_like(ref), ref, empty_policy="official")
    assert [m[k] for k in ("dice", "jaccard", "hd95", "asd", "assd")] == [0.0] * 5
    assert m["empty_pred"] is True and m["empty_ref"] is False


def test_empty_prediction_nan_policy_gives_nan_distances():
    _, ref = square_pair()
    m = binary_metrics(np.zeros_like(ref), ref, empty_policy="nan")
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert all(math.isnan(m[k]) for k in ("hd95", "asd", "assd"))


@pytest.mark.parametrize("policy", ["official", "nan"])
def test_empty_reference_with_prediction(policy):
    pred, _ = square_pair()
    m = binary_metrics(pred, np.zeros_like(pred), empty_policy=policy)
    assert m["dice"] == 0.0 and m["jaccard"] == 0.0
    assert all(math.isnan(m[k]) for k in ("hd95", "asd", "assd"))
    assert m["empty_pred"] is False and m["empty_ref"] is True


def test_both_empty():
    empty = np.zeros((5, 5), dtype=bool)
    official = binary_metrics(empty, empty, empty_policy="official")
    honest = binary_metrics(empty, empty, empty_policy="nan")
    assert [official[k] for k in ("dice", "jaccard", "hd95", "asd", "assd")] == [0.0] * 5
    assert [honest[k] for k in ("dice", "jaccard", "hd95", "asd", "assd")] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert official["empty_pred"] and official["empty_ref"]


def test_unknown_policy_lists_choices():
    a, b = square_pair()
    with pytest.raises(ValueError, match="official, nan"):
        binary_metrics(a, b, empty_policy="zero")


def test_surface_distances_refuse_empty_and_mismatched():
    a, _ = square_pair()
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(a, np.zeros_like(a))
    with pytest.raises(ValueError, match="shape"):
        binary_metrics(a, a[:-1])


# --- cropping is exact, medpy agreement ----------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 33), (24, 21, 15)])
@pytest.mark.parametrize("seed", range(4))
def test_cropped_distances_equal_full_array_and_medpy(shape, seed):
    rng = np.random.default_rng(seed)
    a, b = random_blobs(shape, rng), random_blobs(shape, rng)
    assert any(a[(slice(None),) * k + (0,)].any() for k in range(a.ndim))  # touches the border
    for spacing in (None, (0.625, 1.25, 2.5)[: a.ndim]):
        ours = surface_distances(a, b, spacing)
        np.testing.assert_array_equal(ours, full_array_distances(a, b, spacing))
        np.testing.assert_allclose(ours, medpy_surface_distances(a, b, spacing), atol=ATOL)


@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_random_blobs_2d(seed):
    rng = np.random.default_rng(100 + seed)
    pred, ref = random_blobs((48, 37), rng, fill=rng.uniform(0.05, 0.6)), random_blobs((48, 37), rng)
    assert_matches_medpy(pred, ref)
    assert_matches_medpy(pred, ref, spacing=(0.7, 1.9))


@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_random_blobs_3d(seed):
    rng = np.random.default_rng(200 + seed)
    pred = random_blobs((26, 22, 14), rng, fill=rng.uniform(0.05, 0.6))
    ref = random_blobs((26, 22, 14), rng)
    assert_matches_medpy(pred, ref)
    assert_matches_medpy(pred, ref, spacing=(0.625, 0.625, 2.5))


def test_matches_medpy_small_interior_objects_and_single_voxels():
    # objects far from the border (the crop box is strictly inside) and degenerate one-voxel objects
    pred = np.zeros((30, 30, 20), dtype=bool)
    ref = np.zeros_like(pred)
    pred[10:14, 12:15, 8:11] = True
    pred[20, 5, 3] = True
    ref[11:16, 12:14, 9:12] = True
    assert_matches_medpy(pred, ref)
    assert_matches_medpy(pred, ref, spacing=(1.0, 0.8, 3.0))
    single = np.zeros_like(pred)
    single[0, 0, 0] = True
    assert_matches_medpy(single, ref)
    assert_matches_medpy(pred, single, spacing=(2.0, 1.0, 0.5))


def test_matches_medpy_objects_filling_the_array():
    # every voxel foreground: the whole outer shell is surface only because outside counts as background
    full = np.ones((9, 8, 7), dtype=bool)
    part = full.copy()
    part[:, :, :3] = False
    assert_matches_medpy(full, part)
    assert_matches_medpy(part, full, spacing=(1.0, 2.0, 3.0))


# --- real labels ---------------------------------------------------------------------------------------

def test_matches_medpy_on_real_la_label(la_root):
    case = sorted((la_root / "2018LA_Seg_Training Set").iterdir())[0]
    with h5py.File(case / "mri_norm2.h5", "r") as f:
        ref = f["label"][:] > 0
    assert ref.ndim == 3 and ref.any()
    shifted = ndimage.shift(ref.astype(np.uint8), (3, -2, 1), order=0) > 0
    eroded = ndimage.binary_erosion(ref, iterations=2)
    for pred in (shifted, eroded):
        assert_matches_medpy(pred, ref)
    assert_matches_medpy(shifted, ref, spacing=(0.625, 0.625, 0.625 * 2))


def test_matches_medpy_on_real_acdc_volume(acdc_root):
    volume = sorted((acdc_root / "data").glob("*.h5"))[0]
    with h5py.File(volume, "r") as f:
        ref_labels = f["label"][:].astype(np.int64)
    rng = np.random.default_rng(7)
    pred_labels = ndimage.shift(ref_labels, (0, 2, -1), order=0)
    every_7th_row = pred_labels[:, ::7, :]
    every_7th_row[rng.random(every_7th_row.shape) < 0.2] = 2  # scattered myocardium noise (a view: in place)
    rows = case_metrics(pred_labels, ref_labels, classes=(1, 2, 3))
    assert [row["class"] for row in rows] == [1, 2, 3]
    for row in rows:
        c = row["class"]
        pred, ref = pred_labels == c, ref_labels == c
        assert row == {"class": c, **binary_metrics(pred, ref)}
        assert not row["empty_pred"] and not row["empty_ref"]
        assert_matches_medpy(pred, ref)


# --- case_metrics, summarize ---------------------------------------------------------------------------

def test_case_metrics_rows_and_policies():
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[1:4, 1:4] = 1
    ref[5:7, 5:7] = 2
    pred = ref.copy()
    pred[pred == 2] = 0  # class 2 missed entirely
    official = {row["class"]: row for row in case_metrics(pred, ref, classes=[1, 2])}
    honest = {row["class"]: row for row in case_metrics(pred, ref, classes=[1, 2], empty_policy="nan")}
    assert official[1]["dice"] == 1.0 and official[1]["hd95"] == 0.0
    assert official[2]["empty_pred"] and official[2]["hd95"] == 0.0
    assert math.isnan(honest[2]["hd95"]) and honest[2]["dice"] == 0.0


def test_summarize_mean_sd_and_nans():
    rows = [{"dice": 0.8, "hd95": 2.0}, {"dice": 0.6, "hd95": math.nan}, {"dice": 0.7, "hd95": 4.0}]
    s = summarize(rows, keys=("dice", "hd95"))
    assert s["dice"]["mean"] == pytest.approx(0.7)
    assert s["dice"]["sd"] == pytest.approx(0.1)
    assert (s["dice"]["n"], s["dice"]["n_nan"]) == (3, 0)
    assert s["hd95"]["mean"] == pytest.approx(3.0)
    assert s["hd95"]["sd"] == pytest.approx(math.sqrt(2.0))
    assert (s["hd95"]["n"], s["hd95"]["n_nan"]) == (2, 1)
    one = summarize([{"dice": 0.5, "jaccard": 0.3, "hd95": 1.0, "asd": 0.2}])
    assert one["dice"] == {"mean": 0.5, "sd": 0.0, "n": 1, "n_nan": 0}
    all_nan = summarize([{"asd": math.nan}], keys=("asd",))["asd"]
    assert math.isnan(all_nan["mean"]) and all_nan["n_nan"] == 1


# --- largest connected component -----------------------------------------------------------------------

def test_lcc_keeps_the_bigger_blob():
    mask = np.zeros((12, 12), dtype=bool)
    mask[1:3, 1:3] = True  # 4 pixels
    mask[6:10, 5:9] = True  # 16 pixels
    kept = largest_connected_component(mask)
    assert kept.sum() == 16 and kept[6:10, 5:9].all() and not kept[1:3, 1:3].any()


def test_lcc_empty_mask_returns_empty():
    empty = np.zeros((4, 5, 6), dtype=bool)
    kept = largest_connected_component(empty)
    assert kept.shape == empty.shape and not kept.any()


def test_lcc_diagonal_connectivity_3d():
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True  # corner-touching voxels
    mask[4, 4, 0] = True  # isolated voxel
    full = largest_connected_component(mask)  # 26-connectivity: the diagonal pair is one component
    assert full.sum() == 2 and full[1, 1, 1] and full[2, 2, 2]
    faces = largest_connected_component(mask, connectivity=1)  # 6-connectivity: three singletons, tie
    assert faces.sum() == 1 and faces[1, 1, 1]  # lowest label = first in raster order
    with pytest.raises(ValueError, match="connectivity"):
        largest_connected_component(mask, connectivity=4)


def test_lcc_diagonal_connectivity_2d():
    mask = np.eye(4, dtype=bool)  # 8-connected diagonal line
    assert largest_connected_component(mask).sum() == 4
    assert largest_connected_component(mask, connectivity=1).sum() == 1


def test_keep_largest_component_per_class():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[0:3, 0:3] = 1
    labels[8, 8] = 1
    labels[5:7, 0:4] = 2
    labels[0, 9] = 2
    labels[9, 0] = 3
    cleaned = keep_largest_component_per_class(labels, classes=(1, 2))
    assert cleaned[8, 8] == 0 and cleaned[0, 9] == 0
    assert (cleaned[0:3, 0:3] == 1).all() and (cleaned[5:7, 0:4] == 2).all()
    assert cleaned[9, 0] == 3  # class not listed: untouched
    assert labels[8, 8] == 1  # input not modified


def test_dice_score_matches_binary_metrics_and_states_the_empty_rule():
    from utils.metrics import dice_score

    rng = np.random.default_rng(3)
    pred, ref = rng.random((12, 10, 8)) > 0.6, rng.random((12, 10, 8)) > 0.5
    assert dice_score(pred, ref) == pytest.approx(binary_metrics(pred, ref)["dice"])
    empty = np.zeros_like(ref)
    assert dice_score(empty, ref) == 0.0 and dice_score(empty, empty) == 0.0
