"""Two-stream batch sampler (docs/method.md §3.1)."""
from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from dataloaders.samplers import TwoStreamBatchSampler

LABELED = list(range(8))
UNLABELED = list(range(8, 40))


def make(seed=1337, start_iteration=0, labeled=LABELED, unlabeled=UNLABELED, batch_size=4, labeled_bs=2):
    return TwoStreamBatchSampler(labeled, unlabeled, batch_size, labeled_bs, seed, start_iteration)


def test_every_batch_has_labeled_first_and_no_labeled_in_unlabeled_part():
    for batch in islice(make(), 200):
        indices = [index for index, _ in batch]
        assert len(indices) == 4
        assert all(i in LABELED for i in indices[:2])
        assert all(i in UNLABELED for i in indices[2:])


@pytest.mark.parametrize(
    "n_labeled, labeled_bs, expected", [(4, 2, 2), (8, 2, 4), (68, 12, 5), (136, 12, 11)]
)
def test_iterations_per_epoch_is_floor(n_labeled, labeled_bs, expected):
    sampler = TwoStreamBatchSampler(range(n_labeled), range(1000, 1100), 2 * labeled_bs, labeled_bs, 0)
    assert sampler.iterations_per_epoch == expected


def test_every_labeled_index_once_per_epoch():
    # 9 // 2 = 4 iterations: one labeled index is dropped per epoch
    sampler = make(labeled=list(range(9)), unlabeled=list(range(9, 40)))
    ipe = sampler.iterations_per_epoch
    assert ipe == 4
    batches = list(islice(sampler, 5 * ipe))
    for epoch in range(5):
        seen = [index for batch in batches[epoch * ipe:(epoch + 1) * ipe] for index, _ in batch[:2]]
        assert len(seen) == len(set(seen)) == 8


def test_unlabeled_pool_visited_uniformly():
    counts = Counter(index for batch in islice(make(), 16 * 10) for index, _ in batch[2:])
    assert set(counts) == set(UNLABELED) and set(counts.values()) == {10}


def test_batch_at_equals_iteration_order():
    sampler = make()
    batches = list(islice(sampler, 50))
    assert [sampler.batch_at(t) for t in range(50)] == batches
    assert make().batch_at(37) == batches[37]  # fresh instance, no history


def test_start_iteration_resumes_exactly():
    full = list(islice(make(), 30))
    assert list(islice(make(start_iteration=17), 13)) == full[17:]


def test_determinism_by_seed():
    assert list(islice(make(seed=1), 20)) == list(islice(make(seed=1), 20))
    assert list(islice(make(seed=1), 20)) != list(islice(make(seed=2), 20))


def test_sample_seeds_differ_within_and_across_batches():
    seeds = [s for batch in islice(make(), 20) for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_labeled_only_batches_allow_empty_unlabeled():
    sampler = make(unlabeled=[], batch_size=2, labeled_bs=2)
    for batch in islice(sampler, 10):
        assert len(batch) == 2 and all(index in LABELED for index, _ in batch)


def test_no_len_because_infinite():
    with pytest.raises(TypeError):
        len(make())


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"labeled_bs": 0}, "--labeled_bs"),
        ({"labeled_bs": 5}, "--batch_size"),
        ({"labeled": [0], "labeled_bs": 2}, "--labelnum"),
        ({"unlabeled": []}, "--batch_size"),
    ],
)
def test_invalid_configurations_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        make(**kwargs)


def test_rejects_overlapping_streams():
    with pytest.raises(ValueError, match="both labeled and unlabeled"):
        make(unlabeled=[1, 20, 21])
