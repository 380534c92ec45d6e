"""SS-Net's memory-saving step (--low_memory 1, the default): the official computation in another order.

The official step keeps the graph of every pass until its one backward: the main pass with the heads on both batch
halves, then VAT's clean, probe and adversarial passes. Here each part of the loss is backpropagated as soon as it
is complete, so that about one part's activations are alive at a time (half the peak memory on LA):
1. the main pass and the memory update, as in SSNet.forward (the V-Net's encoder trunk is kept for step 4);
2. each separation term back through the heads only, into a detached copy of the features; the heads' Linear and
   BatchNorm activations are recomputed in backward (RecomputingHeads);
3. the supervised Dice and both copies' gradients back through the network in one backward;
4. VAT, its clean target computed from the kept trunk (decoder only); the loss returned has the total's value and
   the graph of the LDS term only, for the trainer's backward.
Every part is seeded with the gradient one backward of `SSNet.objective` gives its term (`term_gradients`), and
every parameter receives at most two contributions (or disjoint ones), whose sum does not depend on the order: the
gradients equal the single backward's bit for bit. Forward order, random draws and BatchNorm updates are those of
the official order (tests/test_memory_step.py).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from methods.base import Batch, MethodOutput, StepContext
from methods.ss_net_heads import SSNetHeads, voxel_vectors
from networks.output import NetworkOutput
from utils.profiling import section


def low_memory_step(ssnet, labeled: Batch, unlabeled: Batch | None, step: StepContext) -> MethodOutput:
    """SSNet.forward's loss, each part backpropagated with `step.backward` as soon as it is complete."""
    n, images = len(labeled), ssnet.labeled_then_unlabeled(labeled, unlabeled)
    weight = ssnet.warmup_weight(step.iteration)

    def seed(term: Tensor, index: int) -> Tensor:  # terms in the objective's order: dice, lds, cl_l, cl_u
        return term_gradients(lambda *terms: ssnet.objective(*terms, weight), term, 4)[index]

    with section("main forward"):
        keep_trunk = reuses_trunk(ssnet.network)
        out, trunk = forward_keeping_trunk(ssnet.network, images) if keep_trunk else (ssnet.network(images), None)
    pseudo_labels = ssnet.remember_prototypes(out.logits, out.features[:n], labeled.label, step)
    halves = {"labeled": (out.features[:n], labeled.label, 2), "unlabeled": (out.features[n:], pseudo_labels, 3)}
    separation, features_gradients = [], []
    for half, (features, labels, index) in halves.items():
        with section(f"heads, {half} half (+ backward)"):
            term, gradient = separation_backpropagated(ssnet, features, labels, step, lambda t, i=index: seed(t, i))
        separation.append(term)
        if gradient is not None:
            features_gradients.append((features, gradient))
    with section("supervised Dice"):
        dice, terms = ssnet.supervised_loss(out.logits[:n], labeled.label)
    with section("main backward"):
        step.backward(dice, seed(dice, 0), features_gradients)
        # Under torchrun this ran inside DDP's forward, where DDP does not average: average it here (the final
        # backward's DDP average then keeps it, being linear).
        step.average_gradients(ssnet.parameters())
    labeled_logits, clean_probs = out.logits[:n].detach(), None
    del out, halves, features, features_gradients  # the main pass's activations, before the VAT passes
    if trunk is not None:
        with section("VAT clean (trunk reused)"), torch.no_grad():
            clean_probs = torch.softmax(forward_from_trunk(ssnet.network, trunk).logits, dim=1)
        del trunk
    lds = ssnet.lds(images, clean_probs)
    loss = ssnet.objective(dice.detach(), lds, *separation, weight)
    return ssnet.ss_net_output(loss, labeled_logits, terms, dice, lds, *separation, weight)


def separation_backpropagated(ssnet, features: Tensor, labels: Tensor, step: StepContext,
                              seed: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None]:
    """One half's separation term, backpropagated through the heads into a detached copy of `features`:
    (the detached term, the copy's gradient or None). The heads' activations are freed on return."""
    copy = features.detach().requires_grad_()
    term = ssnet.separation(copy, labels, RecomputingHeads(ssnet.heads))
    if term.requires_grad:  # a constant 0 while the memory is empty
        step.backward(term, seed(term))
    return term.detach(), copy.grad


def term_gradients(objective: Callable[..., Tensor], like: Tensor, count: int) -> tuple[Tensor, ...]:
    """d objective / d term for each of its `count` terms, as one backward of the objective forms them (the same
    products in the same order). The objective is linear in its terms, so their values do not matter: 0-dim
    leaves of `like`'s dtype and device."""
    terms = [like.detach().new_zeros(()).requires_grad_() for _ in range(count)]
    return torch.autograd.grad(objective(*terms), terms)


class RecomputedNorm:
    """`layers` then a BatchNorm, as one piece whose activations backward recomputes from its input
    (torch.utils.checkpoint): autograd's own backward on the same recomputed values, so gradients equal
    those of the plain call bit for bit. The recomputation runs the BatchNorm on copies of its running
    statistics, which must move once per forward, not again in backward."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, *layers) -> None:
        self.norm, self.layers = norm, layers
        self.recomputing = False

    def __call__(self, x: Tensor) -> Tensor:
        return checkpoint(self._forward, x, use_reentrant=False, preserve_rng_state=False,
                          context_fn=lambda: (contextlib.nullcontext(), self._recomputation()))

    @contextmanager
    def _recomputation(self) -> Iterator[None]:
        self.recomputing = True
        try:
            yield
        finally:
            self.recomputing = False

    def _forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        norm = self.norm
        if not (self.recomputing and norm.training and norm.track_running_stats):
            return norm(x)
        # the call the module makes (batch statistics in training mode), on copies of the running statistics
        return F.batch_norm(x, norm.running_mean.clone(), norm.running_var.clone(), norm.weight, norm.bias,
                            True, 0.0, norm.eps)


class RecomputingHeads:
    """SSNetHeads called as they are, with the activations of their Linear and BatchNorm layers recomputed in
    backward: of the (N, 32) activations of LA's 2 million voxels per batch half, backward keeps only the two ReLU
    outputs of the embedding (about a third of what the plain heads keep), for one more forward of three of its
    four linear layers. The memory selectors run on the few prototypes and are called as they are."""

    def __init__(self, heads: SSNetHeads) -> None:
        self.heads = heads

    def embed(self, features: Tensor) -> Tensor:
        g, h = self.heads.projection_head, self.heads.prediction_head
        first = g[2](RecomputedNorm(g[1], voxel_vectors, g[0])(features))
        return h[3](h[2](RecomputedNorm(h[1], g[3], h[0])(first)))

    def feature_selector(self, class_index: int) -> Callable[[Tensor], Tensor]:
        head = self.heads.feature_selector(class_index)
        return lambda x: head[3](head[2](RecomputedNorm(head[1], head[0])(x)))

    def memory_selector(self, class_index: int) -> nn.Module:
        return self.heads.memory_selector(class_index)


# -- VAT's clean pass from the main pass's encoder trunk ------------------------------------------------------------
@dataclass
class Trunk:
    """The part of one forward pass that a second training-mode pass on the same input computes again bit for bit:
    the encoder up to its first random draw. stages: the encoder's outputs before that draw (V-Net: x1..x4 and
    block five before its dropout); norm_inputs: (BatchNorm layer, its input) of every BatchNorm the trunk ran,
    in call order, run again by a reuse so that their running statistics move as a full second pass moves them."""

    stages: list[Tensor]
    norm_inputs: list[tuple[nn.Module, Tensor]] = field(default_factory=list)


def reuses_trunk(network: nn.Module) -> bool:
    """True when the network's encoder splits into a deterministic `trunk` and the rest (`finish`) and is called
    directly (under torch.compile the modules would then run uncompiled: the second pass is run in full)."""
    encoder = getattr(network, "encoder", None)
    return hasattr(encoder, "trunk") and hasattr(encoder, "finish") and not network.compiled


def forward_keeping_trunk(network: nn.Module, image: Tensor) -> tuple[NetworkOutput, Trunk]:
    """network(image), computed the same way, and its trunk for `forward_from_trunk` (needs `reuses_trunk`)."""
    network.check_input(image)
    norms = [m for m in network.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    norm_inputs: list[tuple[nn.Module, Tensor]] = []
    handles = [m.register_forward_pre_hook(lambda module, args: norm_inputs.append((module, args[0])))
               for m in norms]
    try:
        stages = network.encoder.trunk(image)
    finally:
        for handle in handles:
            handle.remove()
    return network.decode(network.encoder.finish(stages)), Trunk(stages, norm_inputs)


def forward_from_trunk(network: nn.Module, trunk: Trunk) -> NetworkOutput:
    """What network(image) gives for the image of `trunk`, with the random draws of a new pass: the trunk's
    BatchNorm layers run again on their recorded inputs (their running statistics move; the outputs are the
    trunk's own), then the rest. Equal bit for bit to network(image) with the same generator state as long as the
    weights have not changed since the trunk was computed (tests/test_memory_step.py)."""
    for module, recorded in trunk.norm_inputs:
        module(recorded)
    return network.decode(network.encoder.finish(trunk.stages))
