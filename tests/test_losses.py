"""Losses, ramps and the prototype memory on tiny cases whose answers are known by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.losses import (
    adversarial_direction,
    class_mean_dice_discrepancy,
    class_separation_loss,
    dice_loss,
    frozen_bn_running_stats,
    normalize_per_sample,
    pooled_dice_discrepancy,
    vat_lds_loss,
)
from utils.prototype_memory import PrototypeMemory
from utils.ramps import consistency_weight, sigmoid_rampup, step_learning_rate


def random_probs(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(shape, generator=g) * 2, dim=1)


# ---------------------------------------------------------------- Dice
def test_dice_loss_binary_matches_official_formula_by_hand():
    # 1 x 2 x 2 x 2 probabilities, foreground channel p1 = [0.9, 0.2, 0.6, 0.1], label = [1, 0, 1, 1]
    p1 = torch.tensor([0.9, 0.2, 0.6, 0.1]).view(1, 2, 2)
    probs = torch.stack([1 - p1, p1], dim=1)
    labels = torch.tensor([1, 0, 1, 1]).view(1, 2, 2)
    expected = 1 - (2 * (0.9 + 0.6 + 0.1) + 1e-8) / ((0.9 + 0.2 + 0.6 + 0.1) + 3 + 1e-8)
    got = dice_loss(probs, labels, include_background=False, squared_denominator=False, smooth=1e-8)
    assert got.item() == pytest.approx(expected, abs=1e-7)


def test_dice_loss_multiclass_squared_includes_background():
    probs = random_probs((3, 4, 5, 6), seed=1)
    labels = torch.randint(0, 4, (3, 5, 6), generator=torch.Generator().manual_seed(2))
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    expected = 0.0
    for c in range(4):
        p, g = probs[:, c], onehot[:, c]
        expected += 1 - (2 * (p * g).sum() + 1e-10) / ((p * p).sum() + (g * g).sum() + 1e-10)
    got = dice_loss(probs, labels, include_background=True, squared_denominator=True, smooth=1e-10)
    assert got.item() == pytest.approx(expected.item() / 4, abs=1e-6)


def test_dice_loss_is_zero_for_perfect_prediction():
    labels = torch.randint(0, 3, (2, 4, 4, 4))
    probs = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    assert dice_loss(probs, labels, include_background=False, squared_denominator=False, smooth=1e-8).item() == \
        pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- LDS discrepancies
def test_pooled_dice_equals_one_minus_mean_voxel_inner_product():
    p, q = random_probs((2, 2, 4, 4, 3), 3), random_probs((2, 2, 4, 4, 3), 4)
    voxels = p.numel() // p.shape[1]
    identity = 1 - (p * q).sum() / voxels
    assert pooled_dice_discrepancy(p, q).item() == pytest.approx(identity.item(), abs=1e-6)


def test_class_mean_dice_discrepancy_by_hand_and_zero_on_equal_inputs():
    p = random_probs((2, 3, 5, 5), 5)
    q = random_probs((2, 3, 5, 5), 6)
    expected = sum(
        1 - (2 * (p[:, c] * q[:, c]).sum()) / ((p[:, c] ** 2).sum() + (q[:, c] ** 2).sum()) for c in range(3)
    ) / 3
    assert class_mean_dice_discrepancy(p, q).item() == pytest.approx(expected.item(), abs=1e-6)
    one_hot = F.one_hot(torch.randint(0, 3, (2, 5, 5)), 3).permute(0, 3, 1, 2).float()
    assert class_mean_dice_discrepancy(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- VAT
class TinySegNet(nn.Module):
    """Conv-BN-ReLU-conv returning (logits, features) like the real networks."""

    def __init__(self, classes=2):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        features = torch.relu(self.bn(self.conv(x)))
        return self.out(features), features


def test_frozen_bn_keeps_running_stats_and_counter():
    net = TinySegNet().train()
    before = {k: v.clone() for k, v in net.bn.state_dict().items()}
    with frozen_bn_running_stats(net):
        net(torch.randn(4, 1, 8, 8))
    for k, v in net.bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.bn.track_running_stats  # restored
    net(torch.randn(4, 1, 8, 8))
    assert net.bn.num_batches_tracked.item() == 1


def test_normalize_per_sample_unit_norm():
    d = normalize_per_sample(torch.randn(3, 1, 5, 6, 7))
    assert torch.allclose(d.flatten(1).norm(dim=1), torch.ones(3), atol=1e-6)


def test_adversarial_direction_has_unit_norm_and_beats_random_directions():
    torch.manual_seed(0)
    net = TinySegNet().eval()
    images = torch.randn(2, 1, 12, 12)

    def predict(x):
        return torch.softmax(net(x)[0], dim=1)

    with torch.no_grad():
        clean = predict(images)
    direction = adversarial_direction(predict, images, clean, class_mean_dice_discrepancy, xi=1e-1)
    # unit norm up to the official +1e-8 in the denominator (the gradient norm here is only ~1e-6)
    norms = direction.flatten(1).norm(dim=1)
    assert torch.all(norms <= 1) and torch.allclose(norms, torch.ones(2), atol=1e-2)
    epsilon = 2.0
    with torch.no_grad():
        adversarial = class_mean_dice_discrepancy(predict(images + epsilon * direction), clean).item()
        randoms = [
            class_mean_dice_discrepancy(predict(images + epsilon * normalize_per_sample(torch.randn_like(images))),
                                        clean).item()
            for _ in range(20)
        ]
    assert adversarial > max(randoms)


def test_vat_updates_bn_once_discards_probe_gradients_and_carries_gradient():
    torch.manual_seed(0)
    net = TinySegNet().train()
    images = torch.randn(4, 1, 8, 8)
    loss = vat_lds_loss(net, images, pooled_dice_discrepancy, xi=10.0, magnitude=10.0)
    assert net.bn.num_batches_tracked.item() == 1  # only the clean pass moved the running statistics
    assert all(p.grad is None for p in net.parameters())  # the probe backward left nothing for the optimiser
    assert loss.requires_grad and 0 <= loss.item() <= 1
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


# ---------------------------------------------------------------- class separation
class ConstantSelector(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 1)


def explicit_separation(features, labels, prototypes, fsel, msel, memory_weights="ones"):
    """The double sum written out with the M x N distance matrix, as the official code evaluates it."""
    total = 0.0
    for c, memory in enumerate(prototypes):
        fc = features[labels == c]
        if memory is None or memory.shape[0] <= 1 or fc.shape[0] <= 1:
            continue
        m, n = fc.shape[0], memory.shape[0]
        zn = F.normalize(memory, dim=1)
        dist = 1 - F.normalize(fc, dim=1) @ zn.T
        a = torch.sigmoid(fsel(c)(fc.detach())).squeeze(1)
        alpha = m * a / a.sum()
        if memory_weights == "learned":
            b = torch.sigmoid(msel(c)(zn)).squeeze(1)
            beta = n * b / b.sum()
        else:
            beta = torch.ones(n, dtype=features.dtype)
        total = total + (alpha[:, None] * beta[None, :] * dist).sum() / (m * n)
    return total / len(prototypes)


def make_selectors(classes, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    heads = [nn.Sequential(nn.Linear(32, 32), nn.BatchNorm1d(32), nn.LeakyReLU(0.2), nn.Linear(32, 1)).to(dtype)
             for _ in range(2 * classes)]
    return heads[:classes], heads[classes:]


@pytest.mark.parametrize("memory_weights", ["ones", "learned"])
def test_separation_factorised_form_equals_explicit_double_sum_with_gradients(memory_weights):
    feature_sel, memory_sel = make_selectors(3, dtype=torch.float64)
    features = torch.randn(200, 32, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (200,))
    prototypes = [None, torch.randn(32, 32, dtype=torch.float64), torch.randn(7, 32, dtype=torch.float64)]

    def both(loss_fn):
        loss = loss_fn(features, labels, prototypes, feature_sel.__getitem__, memory_sel.__getitem__, memory_weights)
        params = [p for m in feature_sel + memory_sel for p in m.parameters()]
        grads = torch.autograd.grad(loss, [features, *params], allow_unused=True)
        return loss, grads

    fast, (grad_fast, *_) = both(class_separation_loss)
    for m in feature_sel + memory_sel:
        m.eval()  # the same BN statistics for the two evaluations compared below
    fast_eval, fast_grads = both(class_separation_loss)
    slow, slow_grads = both(explicit_separation)
    assert fast_eval.item() == pytest.approx(slow.item(), rel=1e-12)
    for g_fast, g_slow in zip(fast_grads, slow_grads, strict=True):
        if g_slow is None:  # class 0 (no memory) and, with beta = 1, the memory selectors: no gradient
            assert g_fast is None or not g_fast.any()
        else:
            torch.testing.assert_close(g_fast, g_slow, rtol=1e-10, atol=1e-12)
    assert math.isfinite(fast.item()) and grad_fast.abs().sum() > 0


class FirstCoordinateSelector(nn.Module):
    """Selector logit = 2 x the first coordinate: scores sigmoid(2) and sigmoid(0) for the unit vectors below."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, x):
        return self.scale * x[:, :1]


@pytest.mark.parametrize("memory_weights", ["ones", "learned"])
def test_separation_by_hand_in_both_prototype_weight_modes(memory_weights):
    """Class 1 of 2: features e1, e2 against prototypes e1, e2, e2: distances [[0, 1, 1], [1, 0, 0]]."""
    e = torch.eye(32, dtype=torch.float64)
    features = e[:2].clone().requires_grad_(True)
    labels = torch.tensor([1, 1])
    prototypes = [None, e[[0, 1, 1]].clone()]
    feature_sel, memory_sel = FirstCoordinateSelector(), FirstCoordinateSelector()
    loss = class_separation_loss(features, labels, prototypes, lambda c: feature_sel, lambda c: memory_sel,
                                 memory_weights)
    sig2 = 1 / (1 + math.exp(-2.0))
    alpha = [2 * x / (sig2 + 0.5) for x in (sig2, 0.5)]  # scores sigmoid(2), sigmoid(0), rescaled to mean 1
    if memory_weights == "learned":
        beta = [3 * x / (sig2 + 1.0) for x in (sig2, 0.5, 0.5)]
    else:
        beta = [1.0, 1.0, 1.0]  # the official code divides each prototype weight by itself
    expected = (alpha[0] * (beta[1] + beta[2]) + alpha[1] * beta[0]) / 6 / 2  # mean over M x N = 6, then / C
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert feature_sel.scale.grad is not None and feature_sel.scale.grad != 0
    if memory_weights == "ones":
        assert memory_sel.scale.grad is not None and memory_sel.scale.grad == 0  # in the graph, zero gradient
    else:
        assert memory_sel.scale.grad != 0


def test_separation_refuses_unknown_prototype_weights():
    with pytest.raises(ValueError, match="choose from: ones, learned"):
        class_separation_loss(torch.randn(4, 32), torch.ones(4, dtype=torch.long), [None, torch.randn(3, 32)],
                              lambda c: ConstantSelector(), lambda c: ConstantSelector(), "mean")


def test_separation_is_zero_for_features_equal_to_prototypes():
    vector = torch.randn(1, 32)
    proto = vector.repeat(5, 1)
    features = vector.repeat(20, 1) * 3.0  # the same direction, another norm
    labels = torch.ones(20, dtype=torch.long)
    sel = ConstantSelector()
    loss = class_separation_loss(features, labels, [None, proto], lambda c: sel, lambda c: sel)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_separation_skips_small_classes_and_divides_by_all_classes():
    sel = ConstantSelector()
    labels = torch.tensor([1, 1, 2])  # class 2 has a single feature -> skipped
    features = torch.tensor([[1.0] + [0] * 31, [0, 1.0] + [0] * 30, [1.0] + [0] * 31])
    proto = torch.tensor([[1.0] + [0] * 31, [1.0] + [0] * 31])
    loss = class_separation_loss(features, labels, [None, proto, proto], lambda c: sel, lambda c: sel)
    # class 1: distances (0, 0) for feature 0 and (1, 1) for feature 1 -> mean 0.5; divided by 3 classes
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-6)
    single_proto = class_separation_loss(features, labels, [None, proto[:1], None], lambda c: sel, lambda c: sel)
    assert single_proto.item() == 0.0


# ---------------------------------------------------------------- prototype memory
def test_memory_keeps_32_lowest_scored_and_replaces():
    memory = PrototypeMemory(num_classes=3, size=32, keep="lowest")
    features = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 32)
    labels = torch.full((50,), 1)

    def score(c, feats):
        return feats[:, 0]  # score = row index

    memory.update(features, labels, score)
    kept = memory.prototypes[1][:, 0]
    assert kept.shape[0] == 32 and sorted(kept.tolist()) == list(range(32))
    assert memory.prototypes[0] is None and memory.prototypes[2] is None
    # a batch with only class 2 leaves class 1 stale; a new class-1 batch replaces (no accumulation)
    memory.update(features[:3], torch.full((3,), 2), score)
    assert memory.counts() == [0, 32, 3]
    memory.update(features[:5] + 100, torch.full((5,), 1), score)
    assert memory.counts() == [0, 5, 3] and memory.prototypes[1][0, 0].item() == 100


def test_memory_highest_mode_and_state_roundtrip():
    memory = PrototypeMemory(num_classes=2, size=4, keep="highest")
    features = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 32)
    memory.update(features, torch.ones(10, dtype=torch.long), lambda c, f: f[:, 0])
    assert sorted(memory.prototypes[1][:, 0].tolist()) == [6, 7, 8, 9]
    clone = PrototypeMemory(num_classes=2)
    clone.load_state_dict(memory.state_dict())
    assert torch.equal(clone.prototypes[1], memory.prototypes[1]) and clone.keep == "highest"
    with pytest.raises(ValueError, match="choose from"):
        PrototypeMemory(2, keep="top")


# ---------------------------------------------------------------- ramps and schedules
@pytest.mark.parametrize(
    "iteration, weight",
    # reference values of docs/method.md §3.8, to their printed precision
    [(0, 0.00674), (149, 0.00674), (1500, 0.0601), (3000, 0.287), (4500, 0.732), (6000, 1.0), (15000, 1.0)],
)
def test_la_warmup_reference_values(iteration, weight):
    assert consistency_weight(iteration, 1.0, 40) == pytest.approx(weight, abs=6e-4 if weight > 0.1 else 6e-5)


@pytest.mark.parametrize(
    "iteration, weight",
    [(0, 0.000674), (3000, 0.00174), (15000, 0.0287), (22500, 0.0732), (29999, 0.09999)],
)
def test_acdc_warmup_reference_values(iteration, weight):
    assert consistency_weight(iteration, 0.1, 200) == pytest.approx(weight, rel=2e-3)


def test_ramp_edges_and_lr_schedule():
    assert sigmoid_rampup(5, 0) == 1.0 and sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert step_learning_rate(2499, 0.01, 2500) == 0.01
    assert step_learning_rate(2500, 0.01, 2500) == pytest.approx(1e-3)
    assert step_learning_rate(15000, 0.01, 2500) == pytest.approx(1e-8)
    assert step_learning_rate(29999, 0.01, 0) == 0.01
