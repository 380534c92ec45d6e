"""SS-Net's training step computes what the official code computes, pinned in the default suite.

tests/data/official_ssnet_step.json was computed once from the official functions (ycwu1997/SS-Net @ c0a8bf6,
imported from a clone by benchmarks/official_fixture.py, which says how to regenerate it; so does docs/testing.md),
in float64: two iterations of the LA (3-D) and ACDC (2-D) step. This test needs no official code: it runs this
project's step from the same start (initial weights, batch, generator seed before each iteration) in both step
orders (--low_memory 1 and 0) and compares every loss term and w(t), per group of parameters the gradient, the
weights' change and the BatchNorm statistics' change, the number of BatchNorm updates, the prototype memory and the
generator's next draw, at 1e-10 relative (benchmarks.official_fixture.differences). Unlike
tests/test_memory_step.py, which compares our two orders with each other, a bug in a part both orders share (the
main pass, the separation loss, VAT) fails here.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict

import pytest
import torch
from torch import Tensor

from benchmarks.official_fixture import (
    CASES,
    FIXTURE,
    Case,
    differences,
    fixture_batch,
    initial_state,
    scaled_difference,
    state_digest,
    step_record,
    tensor_digest,
)
from methods import Batch, Method, StepContext, build_method
from networks import build_network, load_official_state_dict
from training import make_config
from training.optim import build_sgd, zero_gradients
from training.precision import Precision

# --- The project's side of the method contract: the only code here that calls the method. -------------------


def build_project_method(case: Case) -> Method:
    """SS-Net with the dataset's settings (the recipe's, as train_la.py / train_acdc.py use them), float64."""
    network = build_network(case.network, **case.network_kwargs).double()
    method = build_method("ss_net", network, make_config(case.dataset))
    method.heads.double()
    return method


def project_state(method: Method) -> tuple[dict[str, Tensor], dict[str, Tensor], list[Tensor | None]]:
    """(parameters, buffers) under the official state-dict names (networks/loading.py: ours are the same) and the
    prototype memory per class."""
    buffers = {**dict(method.network.named_buffers()), **dict(method.heads.named_buffers())}
    return dict(method.trained_parameters()), buffers, list(method.memory.prototypes)


def load_start(method: Method, state: dict[str, Tensor]) -> None:
    load_official_state_dict(method.network, state, method.heads)


def run_project_step(method: Method, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                     iteration: int, low_memory: bool) -> tuple[dict[str, float], float]:
    """The trainer's step up to the optimizer step (gradients zeroed first, then the loss; --low_memory 1: parts
    of it backpropagated inside), then the backward of what is left. Returns (terms, w(t))."""
    step = StepContext(iteration, backward=Precision("off").backward if low_memory else None)
    n_labeled = labels.shape[0]
    method.train()
    zero_gradients(optimizer)
    output = method(Batch(images[:n_labeled], labels), Batch(images[n_labeled:], None), step)
    output.loss.backward()
    terms = {k: float(v) for k, v in output.terms.items()}
    return terms, float(output.monitors["consistency_weight"])


# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def float64_default() -> Iterator[None]:
    """Both sides draw VAT's random start in the default dtype; the fixture was made with float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def project_records(case: Case, low_memory: bool) -> Iterator[dict]:
    """This project's step from the fixture's start, one record (benchmarks.official_fixture.step_record) a step."""
    images, labels = fixture_batch(case)
    method = build_project_method(case)
    parameters, buffers, _ = project_state(method)
    start = initial_state({n: (tuple(t.shape), t.dtype) for n, t in {**parameters, **buffers}.items()},
                          case.init_seed)
    load_start(method, start)
    optimizer = build_sgd([p for _, p in method.trained_parameters()], lr=case.learning_rate)
    yield {"batch": {"images": tensor_digest(images), "labels": tensor_digest(labels)},
           "initial_state_sha256": state_digest(start)}
    for iteration in range(case.first_iteration, case.first_iteration + case.iterations):
        torch.manual_seed(case.generator_seed(iteration))
        terms, weight = run_project_step(method, optimizer, images, labels, iteration, low_memory)
        parameters, buffers, memory = project_state(method)
        gradients = {n: p.grad for n, p in parameters.items()}
        optimizer.step()
        yield step_record(iteration=iteration, weight=weight, terms=terms, gradients=gradients,
                          parameters=parameters, buffers=buffers, start=start, memory=memory,
                          random_after_step=float(torch.rand(())))


@pytest.mark.parametrize("low_memory", [True, False], ids=["low_memory", "single_backward"])
@pytest.mark.parametrize("dataset", sorted(CASES))
def test_ss_net_step_equals_the_official_step(dataset, low_memory, fixture, float64_default):
    entry = fixture["cases"][dataset]
    case = CASES[dataset]
    assert entry["case"] == json.loads(json.dumps(asdict(case))), (
        "the fixture was made for another setting: regenerate it (python -m benchmarks.official_fixture)")
    records = project_records(case, low_memory)
    start = next(records)
    # torch's generators make the batch and the start: if they ever change, say so instead of failing below
    assert start["batch"] == pytest.approx(entry["batch_digest"], rel=1e-12), "the batch differs from the fixture's"
    assert start["initial_state_sha256"] == entry["initial_state_sha256"], "the initial weights differ"
    for expected, actual in zip(entry["iterations"], records, strict=True):
        found = differences(expected, actual)
        worst = sorted(found.items(), key=lambda kv: -scaled_difference(*kv[1]))[:3]
        print(f"{dataset} iteration {expected['iteration']} ({'low memory' if low_memory else 'single backward'}):"
              " largest " + ", ".join(f"{k} {scaled_difference(*v):.1e}" for k, v in worst))
        failing = {k: v for k, v in found.items() if v[0] > v[1]}
        assert not failing, f"iteration {expected['iteration']}: " + "; ".join(
            f"{k}: |ours - official| {d:.3g} > {allowed:.3g}" for k, (d, allowed) in failing.items())
