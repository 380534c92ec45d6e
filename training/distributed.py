"""Multi-process training under torchrun: one process per GPU (NCCL) or per CPU worker (gloo).

    torchrun --nproc_per_node 4 train_la.py --batch_size 8 --labeled_bs 4 ...

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous variables;
`distributed_session` joins the process group from them. Without those variables (or with WORLD_SIZE 1)
everything here is a no-op and the trainer runs exactly as in one process.

Semantics, so that a number of iterations means the same thing for every world size:
* One iteration = one GLOBAL batch of --batch_size samples (--labeled_bs labeled first), the same batch
  `TwoStreamBatchSampler.batch_at(t)` gives one process, with the same per-sample augmentation seeds.
  Rank r takes the r-th contiguous slice of the labeled part and of the unlabeled part, so every rank has
  labeled_bs / N labeled and (batch_size - labeled_bs) / N unlabeled samples; both must divide by N.
  The shards of one batch are disjoint and their union is the global batch.
* The network's gradients are averaged over ranks (DistributedDataParallel), so every rank applies the same
  update and the parameters stay identical; BatchNorm buffers are broadcast from rank 0 after every step
  (DDP's convention: rank 0's statistics are the model's), so evaluation and checkpoints see one model.
* Random draws inside the step (dropout, VAT's random probe direction, teacher input noise) use a stream per
  rank; the weights are initialised before the streams split, so every rank starts from the same weights.

How the gradients are synchronised, and why this way: a method is an nn.Module that owns the network and what
it trains with it, and its forward is the whole step; DDP wraps the method itself, so one iteration is ONE DDP
forward, and the loss it returns is the DDP output whose backward all-reduces the gradients. SS-Net calls the
network several times per iteration (the main pass, VAT's clean pass without gradient, the probe pass whose
gradient is taken only with respect to the perturbation by torch.autograd.grad, the adversarial pass) and the
SS-Net heads outside `network.forward`; wrapping only the network would make DDP expect one backward per forward
call and would miss the heads. The VAT probe's autograd.grad touches no parameter gradient, so DDP's hooks never
fire for it. A teacher gets no gradient and is no DDP parameter. DDP searches for unused parameters only for a
method that declares it may leave some (SS-Net: which selector heads get a gradient depends on the data, the
background ones never do); every other method uses all its parameters in every step. Modules a method trains
outside that step with its own optimiser (SASSNet's discriminator, stepped in `after_optimizer_step`, outside any
DDP forward) are averaged explicitly with the step context's `average_gradients` (flattened all-reduce).

SS-Net's prototype memory: the candidate features are gathered from every rank (in rank order, so the set is
the one a single process would see for the global batch) before the memory update, so the memory is the same
on every rank (the step context's `gather_across_ranks`).

SyncBatchNorm (--sync_bn) converts the network's BatchNorm layers only, not SS-Net's heads: they run BatchNorm on
voxel sets whose number of calls depends on the local data (classes present), and a synchronised layer there
would make the ranks wait for each other forever. PyTorch's SyncBatchNorm runs on GPUs only.

Only rank 0 writes (log, TensorBoard, checkpoints, result.json). Evaluation is sharded: rank r predicts
cases r, r + N, ... and the per-case scores are gathered, so the mean Dice is the one-process number.
A resume checkpoint records the world size and every rank's random generators; resuming with another
world size is refused unless --allow_world_size_change 1 (the run then continues with new random streams).
"""
from __future__ import annotations

import contextlib
import inspect
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from utils.errors import UserError

from .checkpoints import capture_rng

# Long enough for a rank to wait while rank 0 writes a checkpoint or another rank compiles (--compile).
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
# Buffers are broadcast after each step (Distributed.sync_buffers), not before each forward; the keyword
# changed name in recent PyTorch (both still sync at construction, so every rank starts from rank 0's).
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})


def environment_ranks(environ: dict | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; (0, 1, 0) when not launched by torchrun."""
    env = os.environ if environ is None else environ
    if not all(name in env for name in _TORCHRUN_VARIABLES):
        return 0, 1, 0
    try:
        rank, world_size, local_rank = (int(env[name]) for name in _TORCHRUN_VARIABLES)
    except ValueError:
        raise UserError(f"torchrun variables must be integers, got "
                         f"{ {n: env[n] for n in _TORCHRUN_VARIABLES} }") from None
    if not 0 <= rank < world_size:
        raise UserError(f"RANK {rank} outside WORLD_SIZE {world_size}; launch with torchrun")
    return rank, world_size, local_rank


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of one process: cuda:LOCAL_RANK for --device cuda, the CPU for --device cpu."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device name (use cuda or cpu)") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"--device {name} is not supported with torchrun; use --device cuda or --device cpu")
    if device.index is not None:
        raise UserError(f"--device {name}: under torchrun every process uses the GPU of its LOCAL_RANK; pass "
                         f"--device cuda and choose the GPUs with CUDA_VISIBLE_DEVICES")
    if not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available here; use --device cpu (gloo)")
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; lower "
                         f"--nproc_per_node to at most the number of GPUs")
    return torch.device("cuda", local_rank)


def shard_slice(count: int, rank: int, world_size: int, what: str) -> slice:
    """The rank's contiguous share of `count` items; `count` must divide by the world size."""
    if count % world_size:
        raise UserError(f"{what} {count} does not divide by {world_size} processes: every rank needs the same "
                         f"share; use a multiple of {world_size} (or another --nproc_per_node)")
    share = count // world_size
    return slice(rank * share, (rank + 1) * share)


class RankBatchSampler:
    """This rank's part of every global batch of a TwoStreamBatchSampler: its labeled slice, then its
    unlabeled slice. Batch t of every rank together is exactly `sampler.batch_at(t)`."""

    def __init__(self, sampler, rank: int, world_size: int):
        self.sampler = sampler
        self.rank, self.world_size = rank, world_size
        self.labeled = shard_slice(sampler.labeled_bs, rank, world_size, "--labeled_bs")
        self.unlabeled = shard_slice(sampler.unlabeled_bs, rank, world_size, "the unlabeled part of --batch_size")

    @property
    def labeled_bs(self) -> int:
        return self.labeled.stop - self.labeled.start

    def batch_at(self, t: int) -> list[tuple[int, int]]:
        batch, n = self.sampler.batch_at(t), self.sampler.labeled_bs
        return batch[:n][self.labeled] + batch[n:][self.unlabeled]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        t = self.sampler.start_iteration
        while True:
            yield self.batch_at(t)
            t += 1


def convert_to_sync_bn(network: nn.Module) -> nn.Module:
    """Replace the network's BatchNorm layers by SyncBatchNorm (same parameters, same state-dict keys)."""
    for name, child in list(network.named_children()):
        setattr(network, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    return network


@dataclass
class Distributed:
    """This process's place in the job; world_size 1 = one process, and every method is then a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # set under torchrun; None = the trainer resolves --device itself

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- start-up ----------------------------------------------------------------------------------
    def check_job(self, batch_size: int, labeled_bs: int, sync_bn: bool) -> None:
        """Refuse, before anything is written, a global batch that cannot be split evenly, or --sync_bn on CPUs.
        In one process there is nothing to split or synchronise (--sync_bn then changes nothing)."""
        if not self.active:
            return
        shard_slice(labeled_bs, 0, self.world_size, "--labeled_bs")
        shard_slice(batch_size - labeled_bs, 0, self.world_size, "the unlabeled part of --batch_size")
        if sync_bn and self.device.type == "cpu":
            raise UserError("--sync_bn needs GPUs (PyTorch's SyncBatchNorm has no CPU kernel); drop it with "
                             "--device cpu")

    def on_main(self, job: Callable[[], object]):
        """job() on rank 0, its result (or its error, raised again) on every rank; e.g. reading the resume
        checkpoint, so that only rank 0 touches the run folder and every rank agrees on the answer."""
        if not self.active:
            return job()
        message: list = [None]
        failure = None
        if self.is_main:
            try:
                message[0] = ("ok", job())
            except Exception as exc:  # handed to every rank, then raised on rank 0 too
                failure, message[0] = exc, ("error", type(exc), str(exc))
        dist.broadcast_object_list(message, src=0, device=self._object_device)
        if failure is not None:
            raise failure
        if message[0][0] == "error":
            _, kind, text = message[0]
            try:
                error = kind(text)
            except TypeError:
                error = RuntimeError(text)
            raise error
        return message[0][1]

    def check_resume(self, state: dict, allow_world_size_change: bool) -> None:
        """A resume checkpoint continues exactly only with the world size that wrote it."""
        saved = int(state.get("extra", {}).get("world_size", 1))
        if saved != self.world_size and not allow_world_size_change:
            launch = "without torchrun" if saved == 1 else f"with torchrun --nproc_per_node/--nnodes giving {saved}"
            raise UserError(f"this run was trained with {saved} process(es) and is resumed with {self.world_size}: "
                             f"batch statistics and random streams would differ; resume it {launch} processes, or "
                             f"pass --allow_world_size_change 1 to continue anyway (not bitwise exact)")

    def prepare_network(self, network: nn.Module, sync_bn: bool) -> nn.Module:
        if self.active and sync_bn:
            convert_to_sync_bn(network)
        return network

    def seed_rank(self, seed: int) -> None:
        """Separate random streams per rank for what happens inside a step; called after the weights exist,
        so every rank starts from the same weights. Rank 0 keeps the stream of one process."""
        if self.active and self.rank > 0:
            rank_seed = int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])
            random.seed(rank_seed)
            np.random.seed(rank_seed)
            torch.manual_seed(rank_seed)  # also seeds every CUDA device

    def shard(self, sampler):
        return RankBatchSampler(sampler, self.rank, self.world_size) if self.active else sampler

    def wrap(self, method: nn.Module) -> nn.Module:
        """The method, called once per iteration: itself in one process, through DDP under torchrun."""
        if not self.active:
            return method
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(method, device_ids=device_ids,
                                       find_unused_parameters=method.leaves_parameters_unused,
                                       **NO_FORWARD_BUFFER_SYNC)  # buffers: see sync_buffers

    # -- collectives of the training loop ----------------------------------------------------------
    def sync_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank, after each optimizer step."""
        if not self.active:
            return
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for buffer in (b for module in modules for b in module.buffers()):
            by_dtype.setdefault(buffer.dtype, []).append(buffer)
        for buffers in by_dtype.values():  # one broadcast per dtype instead of one per buffer
            flat = torch.cat([b.reshape(-1) for b in buffers])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def mean_over_ranks(self, loss: float, terms: dict[str, float]) -> tuple[float, dict[str, float]]:
        """Logged values averaged over ranks (a non-finite loss on any rank is non-finite everywhere)."""
        if not self.active:
            return loss, terms
        names = sorted(terms)
        values = torch.tensor([loss, *(terms[n] for n in names)], dtype=torch.float64, device=self.device)
        dist.all_reduce(values)
        values = (values / self.world_size).tolist()
        means = dict(zip(names, values[1:], strict=True))
        return values[0], {n: means[n] for n in terms}  # the method's order, as in one process

    def max_over_ranks(self, value: int) -> int:
        """The largest of the ranks' `value` (e.g. a stop signal's number, 0 for none), on every rank."""
        if not self.active:
            return value
        flag = torch.tensor([value], dtype=torch.int64, device=self._object_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def gather_rows(self, rows: Tensor) -> Tensor:
        """(N_r, ...) rows of every rank concatenated in rank order (N_r may differ, and may be 0)."""
        if not self.active:
            return rows
        count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(self.world_size)]
        dist.all_gather(counts, count)
        counts = [int(c) for c in counts]
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(gathered, padded.contiguous())
        return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)])

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Average .grad over ranks with one flattened all-reduce; a gradient missing on some ranks counts as
        zero there, one missing on every rank stays None (as DDP does)."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(present)
        used = [p for p, n in zip(params, present.tolist(), strict=True) if n > 0]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if not used:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in used])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in used:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def evaluate(self, evaluate_ids: Callable[[list[str]], object], case_ids: list[str]):
        """Sharded evaluation: rank r evaluates cases r, r+N, ...; the result holds every case in list order."""
        if not self.active:
            return evaluate_ids(case_ids)
        mine = evaluate_ids(case_ids[self.rank::self.world_size])
        shares: list = [None] * self.world_size
        dist.all_gather_object(shares, mine.cases)
        by_id = {case.case: case for share in shares for case in share}
        mine.cases = [by_id[i] for i in case_ids]
        return mine

    def resume_extra(self) -> dict:
        """What a resume checkpoint needs about the job: world size and every rank's generators (collective)."""
        if not self.active:
            return {}
        states: list = [None] * self.world_size
        dist.all_gather_object(states, capture_rng())
        return {"world_size": self.world_size, "rng_per_rank": states}

    def rank_rng(self, state: dict) -> dict | None:
        """The generators this rank saved; None when the checkpoint has none for it (world size changed)."""
        if not self.active:
            return state["rng"]
        per_rank = state.get("extra", {}).get("rng_per_rank") or []
        if state.get("extra", {}).get("world_size", 1) == self.world_size and self.rank < len(per_rank):
            return per_rank[self.rank]
        return None

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device is not None and self.device.type == "cuda" else None


@contextlib.contextmanager
def distributed_session(device_name: str, environ: dict | None = None) -> Iterator[Distributed]:
    """Join torchrun's process group for the duration of a training run (NCCL on GPUs, gloo on the CPU).

    Outside torchrun (or with one process) it yields Distributed() and does nothing.
    """
    rank, world_size, local_rank = environment_ranks(environ)
    if world_size == 1:
        yield Distributed()
        return
    device = rank_device(device_name, local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", timeout=COLLECTIVE_TIMEOUT, device_id=device)
        else:
            dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise UserError(f"a process group of {dist.get_world_size()} processes is already running, but the "
                         f"environment says rank {rank} of {world_size}")
    try:
        yield Distributed(rank, world_size, local_rank, device)
    finally:
        if owns_group:
            dist.destroy_process_group()
