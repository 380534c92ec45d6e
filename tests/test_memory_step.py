"""The memory-saving training step (--low_memory 1, the default) computes exactly what the official order computes.

SS-Net backpropagates its main-pass terms before the VAT passes, recomputes the heads' activations in backward
and takes VAT's clean target from the main pass's encoder trunk; the tests compare it with the single backward
of the whole loss: gradients, weights, BatchNorm statistics, prototype memory, generator state and loss terms,
bit for bit in float32 and float64, for the V-Net (trunk reused) and the U-Net (no trunk).
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dataloaders import make_synthetic_la
from methods import Batch, MethodSettings, StepContext, build_method
from methods.ss_net_low_memory import RecomputedNorm, forward_from_trunk, forward_keeping_trunk, reuses_trunk
from networks import build_network
from training import make_config, train
from training.optim import build_sgd, zero_gradients
from training.precision import Precision
from utils.argmax import argmax_classes

TINY_VNET = {"in_channels": 1, "num_classes": 2, "base_filters": 4, "dropout": True}
TINY_UNET = {"in_channels": 1, "num_classes": 4, "channels": [4, 8, 8, 16, 16]}


def run_steps(network_name: str, kwargs: dict, shape: tuple[int, ...], low_memory: bool, dtype=torch.float32,
              iterations: int = 3) -> list[dict[str, torch.Tensor]]:
    """SS-Net steps as the trainer runs them; after each, every tensor the next step or a checkpoint depends on."""
    torch.manual_seed(0)
    network = build_network(network_name, **kwargs).to(dtype)
    method = build_method("ss_net", network, MethodSettings(num_classes=kwargs["num_classes"], memory_size=8))
    method.heads.to(dtype)
    precision = Precision("off")
    calls = []

    def backward(part, gradient=None, also=()):
        calls.append(len(also))
        precision.backward(part, gradient, also)

    optimizer = build_sgd([p for _, p in method.trained_parameters()], lr=0.01)
    data = torch.Generator().manual_seed(5)
    states = []
    for iteration in range(iterations):
        images = torch.randn((4, 1, *shape), generator=data, dtype=dtype)
        labels = (images[:2, 0] > 0.2).long() * torch.randint(1, kwargs["num_classes"], (2, *shape), generator=data)
        method.train()
        zero_gradients(optimizer)
        step = StepContext(5000 + iteration, backward=backward if low_memory else None)
        output = method(Batch(images[:2], labels), Batch(images[2:], None), step)
        heads_grad_before = method.heads.projection_head[0].weight.grad
        heads_grad_before = None if heads_grad_before is None else heads_grad_before.clone()
        precision.backward_and_step(output.loss, optimizer)
        state = {f"grad {n}": p.grad.clone() for n, p in method.trained_parameters() if p.grad is not None}
        state.update({f"weight {n}": p.detach().clone() for n, p in method.trained_parameters()})
        buffers = list(network.named_buffers()) + list(method.heads.named_buffers())
        state.update({f"buffer {n}": b.clone() for n, b in buffers})
        state.update({f"memory {c}": p.clone() for c, p in enumerate(method.memory.prototypes) if p is not None})
        state.update({f"term {k}": v.clone() for k, v in output.terms.items()})
        state["loss"] = output.loss.detach().clone()
        state["rng"] = torch.get_rng_state()
        if low_memory:
            state["early heads gradient"] = heads_grad_before
        states.append(state)
    if low_memory:
        assert calls == [0, 0, 2] * iterations  # two separation terms, then the supervised one + both halves
    return states


def assert_bitwise_equal(single: list[dict], low: list[dict]) -> None:
    for step, (a, b) in enumerate(zip(single, low, strict=True)):
        assert any(k.startswith("memory") for k in a), "the prototype memory should be in use"
        for key, value in a.items():
            assert torch.equal(value, b[key]), f"step {step}: {key} differs"
        # the heads' gradient was complete before the final backward, which left it alone: the main pass went first
        assert torch.equal(b["early heads gradient"], b["grad projection_head.0.weight"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_memory_vnet_step_equals_the_single_backward_bit_for_bit(dtype):
    single = run_steps("vnet", TINY_VNET, (16, 16, 16), low_memory=False, dtype=dtype)
    low = run_steps("vnet", TINY_VNET, (16, 16, 16), low_memory=True, dtype=dtype)
    assert_bitwise_equal(single, low)


def test_low_memory_unet_step_equals_the_single_backward_bit_for_bit():
    single = run_steps("unet", TINY_UNET, (32, 32), low_memory=False)
    low = run_steps("unet", TINY_UNET, (32, 32), low_memory=True)
    assert_bitwise_equal(single, low)


def test_forward_from_trunk_is_a_second_full_forward():
    """Same output, the same running statistics and the same random draws as forward(image) again."""
    torch.manual_seed(0)
    network = build_network("vnet", **TINY_VNET).train()
    twin = build_network("vnet", **TINY_VNET).train()
    twin.load_state_dict(network.state_dict())
    image = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(1)
    first, trunk = forward_keeping_trunk(network, image)
    with torch.no_grad():
        second = forward_from_trunk(network, trunk)
    rng_after = torch.get_rng_state()
    torch.manual_seed(1)
    expected_first = twin(image)
    with torch.no_grad():
        expected_second = twin(image)
    assert torch.equal(first.logits, expected_first.logits) and torch.equal(second.logits, expected_second.logits)
    assert not torch.equal(second.logits, first.logits)  # new dropout masks
    assert torch.equal(rng_after, torch.get_rng_state())
    for (name, a), b in zip(network.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # every BatchNorm moved twice, the trunk's ones included
    assert reuses_trunk(network) and not reuses_trunk(build_network("unet", **TINY_UNET))


def test_recomputed_norm_moves_the_running_statistics_once_and_gives_the_plain_gradients():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6)]
    twins = [torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6)]
    for a, b in zip(layers, twins, strict=True):
        b.load_state_dict(a.state_dict())
    x = torch.randn(40, 5, requires_grad=True)
    y = x.detach().clone().requires_grad_()
    RecomputedNorm(layers[1], layers[0])(x).square().sum().backward()
    twins[1](twins[0](y)).square().sum().backward()
    assert torch.equal(x.grad, y.grad)
    for a, b in zip(layers, twins, strict=True):
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            assert torch.equal(p.grad, q.grad)
        assert all(torch.equal(u, v) for u, v in zip(a.buffers(), b.buffers(), strict=True))
    assert int(layers[1].num_batches_tracked) == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, float("nan"), -1.0]), min_size=12, max_size=12),
       st.integers(2, 4))
def test_argmax_classes_is_torch_argmax(values, classes):
    scores = torch.tensor(values[: (12 // classes) * classes]).reshape(-1, classes).T.unsqueeze(0)
    assert torch.equal(argmax_classes(scores, dim=1), scores.argmax(dim=1))


def test_precision_backward_scales_every_part_under_fp16():
    """Two parts, one backpropagated early: the same update as one scaled backward of their sum."""
    results = []
    for early in (False, True):
        param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        optimizer = torch.optim.SGD([param], lr=0.1)
        precision = Precision("fp16", "cpu")
        first, second = (param * 3.0).sum(), (param * param).sum()
        if early:
            precision.backward(first)
            assert torch.equal(param.grad, torch.full((2,), 3.0) * precision.scaler.get_scale())
            precision.backward_and_step(second, optimizer)
        else:
            precision.backward_and_step(first + second, optimizer)
        results.append(param.detach().clone())
    assert torch.equal(results[0], results[1])


def test_training_with_and_without_low_memory_ends_bit_for_bit_equal(tmp_path):
    root = make_synthetic_la(tmp_path / "data", n_train=6, n_test=1, shape=(24, 24, 20), seed=3, n_val=1)
    runs = {}
    for low_memory in (False, True):
        config = make_config("LA", root_path=str(root), lists_dir=str(root), labelnum=2, max_iteration=3,
                             patch_size=[16, 16, 16], network_kwargs={"base_filters": 4}, stride=[8, 8, 8],
                             eval_every=3, eval_start=3, num_workers=0, device="cpu", progress=False, image_every=0,
                             low_memory=low_memory, run_dir=str(tmp_path / f"low_memory_{low_memory}"))
        result = train(config)
        last = torch.load(result.last_checkpoint, weights_only=True)
        runs[low_memory] = ({**last["state_dict"], **last["method_state"]["heads"]}, result)
    (weights_0, result_0), (weights_1, result_1) = runs[False], runs[True]
    assert all(torch.equal(value, weights_1[key]) for key, value in weights_0.items())
    assert result_0.losses == result_1.losses and result_0.best_score == result_1.best_score
