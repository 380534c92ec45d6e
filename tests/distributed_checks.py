"""Checks that need a process group, run by tests/test_distributed.py under torchrun with 2 gloo processes.

    PYTHONPATH=. python -m torch.distributed.run --nproc_per_node 2 tests/distributed_checks.py

Every rank runs every check; a failed assertion exits non-zero and torchrun reports it.
"""
from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from methods import Batch, Method, MethodSettings, StepContext, build_method
from networks import build_network
from training.distributed import distributed_session
from training.optim import build_sgd, zero_gradients
from training.precision import Precision

SHAPE = (16, 16, 16)


class CrossEntropyOnly(Method):
    """A loss that is a mean over samples, so the average of the two half-batch losses is the global loss."""

    name = "ce_only"
    uses_unlabeled = False

    def forward(self, labeled, unlabeled, step):
        logits = self.network(labeled.image).logits
        return self.output(F.cross_entropy(logits, labeled.label), logits, {})


def context(ddp, iteration: int, backward=None) -> StepContext:
    """The step context the trainer gives a method under torchrun."""
    return StepContext(iteration, backward, ddp.gather_rows, ddp.average_gradients)


def global_batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn((n, 1, *SHAPE), generator=g)
    labels = (images[:, 0] > 0.3).long()  # learnable and with foreground everywhere
    return images, labels


def same_on_every_rank(obj) -> bool:
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    first = objects[0]
    if isinstance(first, torch.Tensor):
        return all(torch.equal(first, o) for o in objects)
    return all(o == first for o in objects)


def check_gather_and_gradient_average(ddp) -> None:
    rows = torch.full((ddp.rank * 3, 2), float(ddp.rank))  # rank 0 has no rows
    gathered = ddp.gather_rows(rows)
    assert gathered.shape == (3, 2) and torch.equal(gathered, torch.ones(3, 2)), gathered
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad = torch.full((2,), 2.0 * (ddp.rank + 1))  # 2 and 4 -> mean 3
    b.grad = torch.ones(2) if ddp.rank == 1 else None  # missing on rank 0 counts as zero
    unused = torch.nn.Parameter(torch.zeros(1))  # missing everywhere stays missing
    ddp.average_gradients([a, b, unused])
    assert torch.equal(a.grad, torch.full((2,), 3.0)) and torch.equal(b.grad, torch.full((2,), 0.5))
    assert unused.grad is None


def check_one_step_matches_one_process(ddp) -> None:
    """A DDP step on the global batch == a single-process step on the whole batch (BN in eval mode)."""
    torch.manual_seed(0)
    network = build_network("vnet", num_classes=2, base_filters=4).eval()  # eval: batch-independent BN
    reference = copy.deepcopy(network)
    method = CrossEntropyOnly(network, MethodSettings(num_classes=2))
    step = ddp.wrap(method)
    assert isinstance(step, DistributedDataParallel) and step.module is method  # DDP wraps the method itself
    images, labels = global_batch(4, seed=1)
    mine = slice(2 * ddp.rank, 2 * ddp.rank + 2)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    step(Batch(images[mine], labels[mine]), None, context(ddp, 1)).loss.backward()
    optimizer.step()

    ref_method = CrossEntropyOnly(reference, MethodSettings(num_classes=2))
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    ref_method(Batch(images, labels), None, StepContext(1)).loss.backward()
    ref_optimizer.step()
    moved = 0
    for (name, p), q in zip(network.named_parameters(), reference.parameters(), strict=True):
        assert name.startswith(("encoder", "decoder")), name  # the network is the backbone only
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (name, (p - q).abs().max())
        moved += int(p.grad is not None and bool(p.grad.abs().sum() > 0))
    assert moved > 10
    assert same_on_every_rank(torch.cat([p.detach().flatten() for p in network.parameters()]))


def check_ss_net_memory_and_parameters(ddp) -> None:
    """Several SS-Net steps on different data per rank: identical prototype memory and parameters."""
    torch.manual_seed(0)
    network = build_network("vnet", num_classes=2, base_filters=4).train()
    method = build_method("ss_net", network, MethodSettings(num_classes=2, memory_size=8))
    step = ddp.wrap(method)
    ddp.seed_rank(0)  # dropout / VAT probe directions differ per rank from here on
    optimizer = torch.optim.SGD([p for _, p in method.trained_parameters()], lr=0.01, momentum=0.9, weight_decay=1e-4)
    counts = []
    for iteration in range(1, 5):
        images, labels = global_batch(4, seed=100 + iteration)
        mine = slice(2 * ddp.rank, 2 * ddp.rank + 2)  # each rank: 1 labeled + 1 unlabeled of its own
        local_images, local_labels = images[mine], labels[mine]
        labeled = Batch(local_images[:1], local_labels[:1])
        unlabeled = Batch(local_images[1:], None)
        output = step(labeled, unlabeled, context(ddp, 3000 + iteration))  # past the warm-up: every term weighs
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        ddp.sync_buffers(method.trained_modules())
        counts.append(method.memory.counts())
        memory = method.memory.state_dict()["prototypes"]
        assert same_on_every_rank([None if p is None else p.tolist() for p in memory]), f"memory @ {iteration}"
    assert counts[-1][1] > 0, counts  # the memory was filled
    state = {**network.state_dict(), **method.heads.state_dict()}  # SS-Net's heads are DDP-averaged too
    for key, value in state.items():
        assert same_on_every_rank(value.clone()), key


def check_low_memory_step_matches_one_backward(ddp) -> None:
    """SS-Net's memory-saving step under DDP (its main-pass parts backpropagated inside DDP's forward and averaged
    explicitly, the LDS part by DDP) gives the averaged gradients of the single backward, up to the order of the
    averaging (one step from the same state: later steps may pick other prototypes from rounding-level ties), and
    keeps every rank identical."""
    grads = []
    for low_memory in (False, True):
        torch.manual_seed(0)
        network = build_network("vnet", num_classes=2, base_filters=4).train()
        method = build_method("ss_net", network, MethodSettings(num_classes=2, memory_size=8))
        backward = Precision("off").backward if low_memory else None  # what the trainer gives for --low_memory 1
        step = ddp.wrap(method)
        ddp.seed_rank(0)
        optimizer = build_sgd([p for _, p in method.trained_parameters()], lr=0.01)
        for iteration in range(1, 3 if low_memory else 2):
            images, labels = global_batch(4, seed=300 + iteration)
            mine = slice(2 * ddp.rank, 2 * ddp.rank + 2)
            zero_gradients(optimizer)
            output = step(Batch(images[mine][:1], labels[mine][:1]), Batch(images[mine][1:], None),
                          context(ddp, 3000 + iteration, backward))
            output.loss.backward()
            if iteration == 1:
                assert method.memory.counts()[1] > 0
                grads.append({n: p.grad.clone() for n, p in method.trained_parameters() if p.grad is not None})
            optimizer.step()
            ddp.sync_buffers(method.trained_modules())
    assert set(grads[0]) == set(grads[1])
    for name, value in grads[1].items():
        assert same_on_every_rank(value), name
        assert torch.allclose(value, grads[0][name], rtol=1e-5, atol=1e-6), (name, (value - grads[0][name]).abs().max())
    for key, value in {**network.state_dict(), **method.heads.state_dict()}.items():  # after a second step
        assert same_on_every_rank(value.clone()), key


def check_sassnet_discriminator_agrees(ddp) -> None:
    """SASSNet trains its discriminator outside the DDP step (own optimiser): averaged explicitly."""
    torch.manual_seed(0)
    network = build_network("vnet", num_classes=2, base_filters=4, sdf_head=True).train()
    method = build_method("sassnet", network, MethodSettings(num_classes=2))
    step = ddp.wrap(method)
    ddp.seed_rank(0)  # the discriminator's dropout differs per rank
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    for iteration in range(1, 3):
        images, labels = global_batch(4, seed=200 + iteration)
        mine = slice(2 * ddp.rank, 2 * ddp.rank + 2)
        output = step(Batch(images[mine][:1], labels[mine][:1]), Batch(images[mine][1:], None),
                      context(ddp, 1000 + iteration))
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        ddp.sync_buffers(method.trained_modules())
        method.after_optimizer_step(context(ddp, 1000 + iteration))
    for key, value in method.discriminator.state_dict().items():
        assert same_on_every_rank(value), key


def check_a_stop_signal_on_one_rank_stops_every_rank(ddp) -> None:
    """SIGUSR2 reaching rank 1 only: every rank agrees to stop after the same iteration (training/signals.py)."""
    import os
    import signal

    from training.signals import StopSignals

    with StopSignals() as stop:
        assert stop.agreed(ddp) == 0
        if ddp.rank == 1:
            os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.agreed(ddp) == signal.SIGUSR2, f"rank {ddp.rank}"


def main() -> int:
    with distributed_session("cpu") as ddp:
        assert ddp.active and ddp.world_size == 2 and dist.get_backend() == "gloo"
        torch.set_num_threads(1)
        check_gather_and_gradient_average(ddp)
        check_one_step_matches_one_process(ddp)
        check_ss_net_memory_and_parameters(ddp)
        check_low_memory_step_matches_one_backward(ddp)
        check_sassnet_discriminator_agrees(ddp)
        check_a_stop_signal_on_one_rank_stops_every_rank(ddp)
        ddp.barrier()
        if ddp.is_main:
            print("distributed checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
