"""Property-based tests (hypothesis): metrics, sliding window and sampler on random shapes and settings."""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from medpy.metric import binary as medpy

from dataloaders import TwoStreamBatchSampler
from utils.metrics import binary_metrics, dice_score
from utils.sliding_window import count_windows, sliding_window_predict, window_starts

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mask_pairs(draw, max_side: int = 9):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(2, max_side)) for _ in range(ndim))
    size = math.prod(shape)
    bits = st.lists(st.booleans(), min_size=size, max_size=size)
    pred = np.array(draw(bits), dtype=bool).reshape(shape)
    ref = np.array(draw(bits), dtype=bool).reshape(shape)
    return pred, ref


# ---------------------------------------------------------------- metrics


@FAST
@given(mask_pairs())
def test_overlap_metrics_are_bounded_symmetric_and_consistent(pair):
    pred, ref = pair
    assume(pred.any() and ref.any())
    m = binary_metrics(pred, ref)
    assert 0.0 <= m["jaccard"] <= m["dice"] <= 1.0
    assert math.isclose(m["jaccard"], m["dice"] / (2.0 - m["dice"]), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(m["dice"], dice_score(pred, ref)) and math.isclose(m["dice"], dice_score(ref, pred))
    assert m["hd95"] >= 0.0 and m["asd"] >= 0.0 and m["assd"] >= 0.0
    diagonal = math.sqrt(sum((s - 1) ** 2 for s in pred.shape))
    assert m["hd95"] <= diagonal + 1e-9 and m["asd"] <= diagonal + 1e-9
    same = binary_metrics(ref, ref)
    assert same["dice"] == 1.0 and same["hd95"] == 0.0 and same["asd"] == 0.0


@FAST
@given(mask_pairs(), st.lists(st.floats(0.25, 3.0), min_size=3, max_size=3))
def test_metrics_equal_medpy_on_random_masks_and_spacings(pair, spacing):
    pred, ref = pair
    assume(pred.any() and ref.any())
    spacing = tuple(spacing[: pred.ndim])
    ours = binary_metrics(pred, ref, spacing=spacing)
    assert math.isclose(ours["dice"], medpy.dc(pred, ref), rel_tol=1e-9)
    assert math.isclose(ours["jaccard"], medpy.jc(pred, ref), rel_tol=1e-9)
    assert math.isclose(ours["hd95"], medpy.hd95(pred, ref, voxelspacing=spacing), rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(ours["asd"], medpy.asd(pred, ref, voxelspacing=spacing), rel_tol=1e-6, abs_tol=1e-9)
    assert math.isclose(ours["assd"], medpy.assd(pred, ref, voxelspacing=spacing), rel_tol=1e-6, abs_tol=1e-9)


@FAST
@given(mask_pairs(), st.sampled_from(["official", "nan"]))
def test_empty_masks_never_raise_and_follow_the_policy(pair, policy):
    pred, ref = pair
    empty = np.zeros_like(pred)
    for p, r in ((empty, ref), (pred, empty), (empty, empty)):
        m = binary_metrics(p, r, empty_policy=policy)
        assert m["empty_pred"] == (not p.any()) and m["empty_ref"] == (not r.any())
        assert 0.0 <= m["dice"] <= 1.0
        if p.any() != r.any():  # exactly one empty: no overlap
            assert m["dice"] == 0.0


# ---------------------------------------------------------------- sliding window


@FAST
@given(st.integers(1, 40), st.integers(1, 16), st.integers(1, 16))
def test_window_starts_cover_the_axis_and_end_flush(size, patch, stride):
    assume(stride <= patch)
    padded = max(size, patch)
    starts = window_starts(padded, patch, stride)
    covered = np.zeros(padded, dtype=bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == padded - patch
    assert starts == sorted(set(starts))


@st.composite
def volumes(draw):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(3, 14)) for _ in range(ndim))
    patch = tuple(draw(st.integers(2, 10)) for _ in range(ndim))
    stride = tuple(draw(st.integers(1, p)) for p in patch)
    batch = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    return shape, patch, stride, batch, seed


@FAST
@given(volumes())
def test_a_voxelwise_network_gives_the_same_probabilities_whatever_the_windows(case):
    """A per-voxel 'network' sees the same value in every window, so averaging must give it back exactly;
    volumes smaller than the patch are padded and cropped back."""
    shape, patch, stride, batch, seed = case
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((1, *shape), generator=generator)
    weights = torch.tensor([[1.5], [-0.5], [0.25]])

    def voxelwise(x: torch.Tensor) -> torch.Tensor:  # (B, 1, *patch) -> (B, 3, *patch)
        return torch.einsum("kc,bc...->bk...", weights, x)

    probs = sliding_window_predict(voxelwise, image, patch, stride, num_classes=3, batch_size=batch)
    expected = torch.softmax(voxelwise(image[None]), dim=1)[0]
    assert probs.shape == (3, *shape)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    calls = []
    sliding_window_predict(lambda x: calls.append(x.shape[0]) or voxelwise(x), image, patch, stride, 3, batch)
    assert sum(calls) == count_windows(shape, patch, stride) and max(calls) <= batch


# ---------------------------------------------------------------- sampler


@st.composite
def sampler_settings(draw):
    labeled_bs = draw(st.integers(1, 4))
    batch_size = labeled_bs + draw(st.integers(0, 4))
    n_labeled = draw(st.integers(labeled_bs, 12))
    n_unlabeled = draw(st.integers(1, 20)) if batch_size > labeled_bs else draw(st.integers(0, 5))
    seed = draw(st.integers(0, 10_000))
    return n_labeled, n_unlabeled, batch_size, labeled_bs, seed


@settings(max_examples=60, deadline=None)
@given(sampler_settings(), st.integers(0, 50))
def test_sampler_batches_have_the_right_composition_and_are_pure(case, start):
    n_labeled, n_unlabeled, batch_size, labeled_bs, seed = case
    labeled = list(range(n_labeled))
    unlabeled = list(range(100, 100 + n_unlabeled))
    sampler = TwoStreamBatchSampler(labeled, unlabeled, batch_size, labeled_bs, seed)
    fresh = TwoStreamBatchSampler(labeled, unlabeled, batch_size, labeled_bs, seed, start_iteration=start)
    iterator = iter(fresh)
    for t in range(start, start + 6):
        batch = sampler.batch_at(t)
        assert next(iterator) == batch  # resuming at `start` gives the same batches
        indices = [i for i, _ in batch]
        assert len(batch) == batch_size
        assert all(i in labeled for i in indices[:labeled_bs])
        assert all(i in unlabeled for i in indices[labeled_bs:])
    # one labeled epoch visits distinct labeled indices; the unlabeled chain visits each index once per pass
    epoch = [i for t in range(sampler.iterations_per_epoch) for i, _ in sampler.batch_at(t)[:labeled_bs]]
    assert len(epoch) == len(set(epoch))
    if batch_size > labeled_bs:
        per_pass = n_unlabeled // math.gcd(n_unlabeled, batch_size - labeled_bs) * (batch_size - labeled_bs)
        steps = per_pass // (batch_size - labeled_bs)
        drawn = [i for t in range(steps) for i, _ in sampler.batch_at(t)[labeled_bs:]]
        counts = np.bincount(np.array(drawn) - 100, minlength=n_unlabeled)
        assert counts.min() == counts.max()  # whole passes: every unlabeled index equally often
