"""Contract tests for the training methods on tiny 2D and 3D inputs."""
from __future__ import annotations

import copy
import math
import sys

import pytest
import torch

from methods import Batch, MethodSettings, StepContext, build_method
from networks import build_network

CASES = {
    # name: (network, kwargs, image shape (B, 1, *spatial), settings)
    "3d": ("vnet", {"num_classes": 2, "base_filters": 4}, (4, 1, 16, 16, 16),
           MethodSettings(num_classes=2)),
    "2d": ("unet", {"num_classes": 4}, (4, 1, 32, 32),
           MethodSettings(num_classes=4, dice_include_background=True, dice_squared_denominator=True,
                          dice_smooth=1e-10, consistency=0.1, consistency_rampup=200, lds_discrepancy="class_mean_dice",
                          magnitude=6.0)),
}


def make(case: str, method: str, seed: int = 0):
    name, kwargs, shape, settings = CASES[case]
    torch.manual_seed(seed)
    network = build_network(name, **kwargs).train()
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(0, kwargs["num_classes"], (shape[0] // 2, *shape[2:]), generator=g)
    labeled = Batch(images[: shape[0] // 2], labels)
    unlabeled = Batch(images[shape[0] // 2 :], None)
    return network, build_method(method, network, settings), labeled, unlabeled


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["ss_net", "supervised"])
def test_loss_is_finite_and_terms_are_detached(case, method):
    network, m, labeled, unlabeled = make(case, method)
    out = m(labeled, unlabeled, StepContext(3000))
    assert math.isfinite(out.loss.item()) and out.loss.requires_grad
    assert all(not v.requires_grad for v in out.terms.values())
    assert out.labeled_logits.shape[0] == len(labeled)


def dead_parameters(method) -> set[str]:
    """SS-Net never uses the background selectors (no background prototypes): they get no gradient at all."""
    return {n for n, _ in method.trained_parameters()
            if n.startswith(("contrastive_class_selector_0.", "contrastive_class_selector_memory0."))}


def memory_selector_parameters(method) -> set[str]:
    """S^mem_c, c >= 1: with the official prototype weights (beta = 1) in the graph with a zero gradient."""
    return {n for n, _ in method.trained_parameters()
            if n.startswith("contrastive_class_selector_memory") and n not in dead_parameters(method)}


@pytest.mark.parametrize("memory_weights", ["ones", "learned"])
@pytest.mark.parametrize("case", CASES)
def test_ss_net_full_step_gives_every_live_parameter_a_gradient(case, memory_weights):
    network, m, labeled, unlabeled = make(case, "ss_net")
    m.settings.memory_weights = memory_weights
    for c in range(1, network.num_classes):  # a filled memory, as after the first correct predictions
        m.memory.prototypes[c] = torch.randn(32, 32)
    out = m(labeled, unlabeled, StepContext(6000))
    out.loss.backward()
    zero_gradient = memory_selector_parameters(m) if memory_weights == "ones" else set()
    expected_exceptions = dead_parameters(m) | zero_gradient
    missing = [n for n, p in m.trained_parameters()
               if n not in expected_exceptions and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []
    assert all(p.grad is None for n, p in m.trained_parameters() if n in dead_parameters(m))
    grads = {n: p.grad for n, p in m.trained_parameters()}
    assert all(grads[n] is not None and not grads[n].any() for n in zero_gradient)


@pytest.mark.parametrize("case", CASES)
def test_ss_net_memory_holds_only_correct_labeled_foreground(case):
    """Every prototype is the eval-mode projection of a correctly predicted labeled voxel of its class."""
    network, m, labeled, unlabeled = make(case, "ss_net")
    with torch.no_grad():
        network.eval()
        predicted = network(labeled.image).logits.argmax(1)
        network.train()
    labels = predicted.clone()
    labels[:, ::2] = 0  # half the rows become background in the labels: wrong foreground predictions there
    main_forward = {}
    original_forward = network.forward

    def recording_forward(x):
        out = original_forward(x)
        main_forward.setdefault("out", out)  # the first call is the main forward
        return out

    network.forward = recording_forward
    projection_before_step = copy.deepcopy(m.heads.projection_head).eval()  # the step moves its BN statistics
    m(Batch(labeled.image, labels), unlabeled, StepContext(1))
    logits, features = main_forward["out"][:2]  # NetworkOutput: read by name or slice
    n = len(labeled)
    hard = logits[:n].argmax(1)
    correct_foreground = ((hard == labels) & (hard > 0)).reshape(-1)
    vectors = features[:n].movedim(1, -1).reshape(-1, features.shape[1])
    with torch.no_grad():
        projected = projection_before_step(vectors)
    counts = m.memory.counts()
    assert counts[0] == 0  # background never enters the memory
    assert sum(counts) > 0 and all(k <= 32 for k in counts)
    for c in range(1, network.num_classes):
        if counts[c] == 0:
            continue
        allowed = projected[correct_foreground & (labels.reshape(-1) == c)]
        expected_count = min(32, allowed.shape[0])
        assert counts[c] == expected_count
        distances = torch.cdist(m.memory.prototypes[c], allowed, compute_mode="donot_use_mm_for_euclid_dist")
        assert distances.min(dim=1).values.max() < 1e-4


def test_ss_net_refuses_batches_without_unlabeled_data():
    _, m, labeled, _ = make("2d", "ss_net")
    with pytest.raises(ValueError, match="unlabeled"):
        m(labeled, None, StepContext(1))


def test_supervised_ignores_unlabeled_batch():
    network, m, labeled, unlabeled = make("2d", "supervised")
    torch.manual_seed(1)
    a = m(labeled, unlabeled, StepContext(1)).loss.item()
    torch.manual_seed(1)
    b = m(labeled, None, StepContext(1)).loss.item()
    assert a == b


def test_unlabeled_terms_alone_move_the_network():
    network, m, labeled, unlabeled = make("2d", "ss_net")
    for c in range(1, network.num_classes):
        m.memory.prototypes[c] = torch.randn(32, 32)
    m.settings.consistency = 1.0
    m.supervised_loss = lambda logits, labels: (logits.sum() * 0.0, {})  # zero the supervised term
    out = m(labeled, unlabeled, StepContext(10**6))
    out.loss.backward()
    assert network.encoder.in_conv.conv_conv[0].weight.grad.abs().sum() > 0
    assert m.heads.prediction_head[0].weight.grad.abs().sum() > 0


def test_unknown_method_suggests_the_right_name():
    with pytest.raises(ValueError, match="did you mean 'ss_net'"):
        build_method("ssnet", None, MethodSettings(num_classes=2))


@pytest.mark.parametrize("low_memory", [False, True])
def test_the_trainer_sets_no_attribute_on_a_method(tmp_path, monkeypatch, low_memory):
    """The step contract is explicit: what a step may call arrives in its StepContext; nothing outside methods/
    assigns to a method (no hooks injected by the trainer, the precision or the DDP code)."""
    from dataloaders import make_synthetic_la
    from methods import Method
    from training import make_config, train

    assigned_from_outside = []
    original = Method.__setattr__

    def recording_setattr(self, name, value):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if not caller.startswith(("methods.", "torch.")):
            assigned_from_outside.append((caller, name))
        original(self, name, value)

    monkeypatch.setattr(Method, "__setattr__", recording_setattr)
    root = make_synthetic_la(tmp_path / "data", n_train=4, n_test=1, shape=(24, 24, 20), seed=0, n_val=1)
    config = make_config("LA", root_path=str(root), lists_dir=str(root), labelnum=2, max_iteration=2,
                         patch_size=[16, 16, 16], network_kwargs={"base_filters": 2}, stride=[8, 8, 8],
                         eval_every=2, eval_start=2, num_workers=0, device="cpu", progress=False, image_every=0,
                         low_memory=low_memory, run_dir=str(tmp_path / "run"))
    train(config)
    assert assigned_from_outside == []
