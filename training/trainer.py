"""The one training loop of every method: `train(config)`.

`Training.__init__` sets a run up (data checked before anything is written, the run folder, the network, the
method, the optimiser, a resume when there is one); `Training.run` is the loop. Its collaborators each own one
concern: the method (the loss), Precision (autocast, scaler), the optimiser helpers (zeroing, LR), the Selector
(evaluation, best so far), the CheckpointStore (files), the RunLogger (log, TensorBoard, progress bar) and
Distributed (what differs under torchrun). docs/architecture.md shows how a batch flows through them.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from dataloaders import TwoStreamBatchSampler, get_dataset, training_batches
from inference import InferenceSettings, Predictor
from methods import METHODS, Batch, StepContext, build_method
from networks import build_network
from networks.speed import prepare_network
from utils.cli import resolve_device
from utils.errors import StoppedBySignal, TrainingDiverged, UserError

from .checkpoints import Best, CheckpointStore, ResumeState, capture_rng, find_resume, list_checkpoints, restore_rng
from .config import TrainConfig, default_run_dir
from .distributed import Distributed, distributed_session
from .optim import build_sgd, set_learning_rate, zero_gradients
from .precision import Precision
from .run_lock import hold_run_folder
from .run_logger import RunLogger, environment
from .selection import Selector, selection_lists
from .signals import StopSignals, signal_name
from .stages import (
    STAGE_TITLES,
    describe_stage,
    load_initial_weights,
    stage_configs,
    stage_finished,
    write_outer_config,
)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float | None  # selection metric (mean foreground Dice) of the best checkpoint; None for select=last
    best_iteration: int
    losses: list[float]  # total loss per iteration since iteration 1 (kept across resumes)
    seconds: float  # wall time of this session only
    selections: dict = field(default_factory=dict)  # list name -> {"score", "iteration"} of every tracked list
    resumed_from: int = 0  # iteration this session started from (0 = a fresh run)


@dataclass
class StepResult:
    loss: float
    terms: dict[str, float]
    monitors: dict[str, float]
    lr: float
    labeled_logits: torch.Tensor | None


def train(config: TrainConfig) -> TrainResult:
    """Train, or continue the run in the run folder from its newest resume checkpoint.

    Under torchrun every process runs this; they share the work of each global batch (training/distributed.py).
    One process per run folder (training/run_lock.py); SIGTERM, SIGINT, SIGUSR1/2 stop it after the current
    iteration with a resume checkpoint (training/signals.py, StoppedBySignal).
    """
    with distributed_session(config.device) as ddp, StopSignals() as stop, \
            hold_run_folder(default_run_dir(config), ddp):
        if ddp.is_main:
            write_outer_config(config)
        result = None
        for stage in stage_configs(config):  # one stage, or a pre-train then the main stage (training/stages.py)
            if stage_finished(stage):
                continue
            training = Training(stage, ddp)
            try:
                result = training.run(stop)
            finally:
                training.log.close()
        return result


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def configure_determinism(deterministic: bool, device: torch.device) -> None:
    """--deterministic 1: deterministic kernels where PyTorch has them (a warning names any op that has not)."""
    if deterministic and device.type == "cuda":
        # cuBLAS needs a fixed workspace for reproducible GEMMs; it must be set before the first cuBLAS call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # ...without its NaN fill of every new tensor: a debugging aid (reads of uninitialised memory show as NaN)
    # that writes each activation twice, 17 % of a CPU LA step (docs/speed.md); outputs are fully written anyway
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def check_split(config: TrainConfig, split) -> None:
    if "val" in config.track and config.select == "test" and set(split.val) & set(split.unlabeled):
        raise UserError("--track val needs --select val: with --select test (the paper's split) the validation "
                        "cases are part of the unlabeled pool")
    if config.select == "val" and not split.val:
        raise UserError(f"--select val but the validation list of {config.dataset} is empty; add val.list to "
                        f"--lists_dir or use --select last")


def labeled_and_unlabeled(batches, labeled_bs: int, uses_unlabeled: bool):
    """The loader's batches as (labeled Batch, unlabeled Batch or None); the labeled samples come first."""
    for batch in batches:
        images, labels, cases = batch["image"], batch["label"], batch["case"]
        labeled = Batch(images[:labeled_bs], labels[:labeled_bs], cases[:labeled_bs])
        yield labeled, Batch(images[labeled_bs:], None, cases[labeled_bs:]) if uses_unlabeled else None


class Training:
    """One run; everything the loop needs is built here, in an order that keeps every random draw in place."""

    def __init__(self, config: TrainConfig, ddp: Distributed):
        self.config, self.ddp = config, ddp
        self.device = ddp.device or resolve_device(config.device)
        configure_determinism(bool(config.deterministic), self.device)
        dataset, split, train_data, eval_lists = self._load_data()
        self.dataset = dataset
        self.run_dir = run_dir = default_run_dir(config)
        resume = ddp.on_main(lambda: find_resume(run_dir, config))  # only rank 0 reads the run folder
        if resume:
            ddp.check_resume(resume[1], config.allow_world_size_change)
        seed_everything(config.seed)
        self.log = RunLogger.quiet(ddp.rank) if not ddp.is_main else RunLogger.open(
            run_dir, config.to_json(), split, environment(self.device, config.seed),
            resume[1]["iteration"] if resume else None, show_progress=config.progress,
            image_every=config.image_every, title=f"{config.method} {config.dataset}" +
            (f" ({STAGE_TITLES[config.stage]})" if config.pretrain_iterations else ""))
        try:
            self._build_model(dataset, eval_lists)
            self.losses: list[float] = []
            self.start_iteration = 0
            if resume:
                self._restore(*resume)
            self._build_batches(split, train_data, resume)
        except BaseException:
            self.log.close()
            raise

    def _load_data(self):
        """The split, the training data and the selection lists, every file read and checked before anything is
        written."""
        config, dataset = self.config, get_dataset(self.config.dataset, self.config)
        split = dataset.split(config.labelnum, config.select, config.lists_dir)
        check_split(config, split)
        self.uses_unlabeled = METHODS[config.method].uses_unlabeled
        self.unlabeled_ids = split.unlabeled if self.uses_unlabeled else []  # labeled-only methods draw none
        self.ddp.check_job(config.batch_size if self.uses_unlabeled else config.labeled_bs, config.labeled_bs,
                           config.sync_bn)
        eval_lists = selection_lists(config, split)
        eval_ids = list(dict.fromkeys(i for ids in eval_lists.values() for i in ids))
        train_ids = split.labeled + self.unlabeled_ids
        dataset.check_data(config.root_path, train_ids, eval_ids)
        train_data = dataset.train_dataset(config.root_path, train_ids, tuple(config.patch_size))
        train_data.preload()
        dataset.check_cases(config.root_path, eval_ids)
        return dataset, split, train_data, eval_lists

    def _build_model(self, dataset, eval_lists: dict[str, list[str]]) -> None:
        """Network, method (with what it trains besides the network), optimiser, checkpoint store, selector."""
        config, ddp = self.config, self.ddp
        self.network = build_network(config.network, **config.network_kwargs).to(self.device)
        if config.init_from:  # a two-stage method's main stage: from the first stage's best checkpoint
            load_initial_weights(self.network, config.init_from)
        ddp.prepare_network(self.network, sync_bn=config.sync_bn)  # torchrun --sync_bn: SyncBatchNorm
        prepare_network(self.network, channels_last=config.channels_last, compile=config.compile)
        self.precision = Precision(config.amp, self.device, self.log.logger)
        self.method = build_method(config.method, self.network, config)
        # what a step may call outside the method: --low_memory 1 lets a method whose loss has parts on separate
        # graphs backpropagate each as it completes; under torchrun, the collectives
        self.step_context = StepContext(0, backward=self.precision.backward if config.low_memory else None,
                                        gather_across_ranks=ddp.gather_rows, average_gradients=ddp.average_gradients)
        trained = list(self.method.trained_parameters())
        self.parameter_names = [name for name, _ in trained]
        self.optimizer = build_sgd([p for _, p in trained], lr=config.base_lr, impl=config.optimizer_impl)
        self.train_step = ddp.wrap(self.method)  # torchrun: DDP around the method; else the method itself
        inference = InferenceSettings(patch_size=tuple(config.patch_size), stride=tuple(config.stride),
                                      batch_size=config.eval_batch_size, largest_component=False)
        self.store = CheckpointStore(self.run_dir, config,
                                     {**inference.to_dict(), "largest_component": dataset.test_largest_component})
        bests = {name: Best(name, self.store.best_path(name)) for name in eval_lists}
        # in-training evaluation may be cheaper (coarser stride, autocast) than the test the checkpoints record;
        # it runs the live network (its weights change between evaluations), not a folded snapshot
        evaluation = replace(inference, stride=tuple(config.eval_stride or config.stride), amp=config.amp,
                             fold_bn=False)
        self.selector = Selector(config, eval_lists, bests, Predictor(self.network, dataset, evaluation),
                                 config.root_path, ddp.evaluate)

    def _build_batches(self, split, train_data, resume) -> None:
        config, ddp = self.config, self.ddp
        batch_size = config.batch_size if self.uses_unlabeled else config.labeled_bs
        n_labeled = len(split.labeled)
        sampler = ddp.shard(TwoStreamBatchSampler(
            list(range(n_labeled)), list(range(n_labeled, n_labeled + len(self.unlabeled_ids))),
            batch_size=batch_size, labeled_bs=config.labeled_bs, seed=config.seed,
            start_iteration=self.start_iteration,  # batch t is a pure function of (seed, t): nothing to restore
        ))  # torchrun: this rank's labeled and unlabeled slices of every global batch
        ddp.seed_rank(config.seed)  # torchrun: a random stream per rank from here on (weights already identical)
        # The loader draws a base seed from the global generator: before the generators are restored, so that a
        # resumed run continues with exactly the state the interrupted one saved.
        batches = training_batches(train_data, sampler, config.num_workers, self.device)
        self.batches = labeled_and_unlabeled(batches, sampler.labeled_bs, self.uses_unlabeled)
        if resume and ddp.rank_rng(resume[1]) is not None:
            restore_rng(ddp.rank_rng(resume[1]))
        self._describe(split.labeled, self.unlabeled_ids, sampler, batch_size, resume is not None)

    def _restore(self, path: Path, state: dict) -> None:
        self.store.restore(state, path, self.method, self.optimizer, self.parameter_names)
        if "precision" in state["extra"]:
            self.precision.load_state_dict(state["extra"]["precision"])
        for name, record in state["best"].items():
            if name in self.selector.bests:
                self.selector.bests[name].score, self.selector.bests[name].iteration = record["score"], \
                    record["iteration"]
        self.losses = list(state["losses"])
        self.start_iteration = state["iteration"]
        self.log.info("resumed from %s (iteration %d)", path, self.start_iteration)
        for skipped in state.get("skipped_checkpoints", []):
            self.log.warning("%s; resumed from iteration %d instead", skipped, self.start_iteration)
        if self.ddp.is_main:
            self.store.restore_best_files(self.selector.bests, self.start_iteration, self.network,
                                          self.method.method_state(), self.log)

    def _describe(self, labeled: list[str], unlabeled: list[str], sampler, batch_size: int, resumed: bool) -> None:
        c = self.config
        if not resumed:
            self.log.info("run folder %s", self.run_dir)
            if describe_stage(c):
                self.log.info("%s", describe_stage(c))
            self.log.info("%s on %s: labeled %s, unlabeled %s, selection: %s", c.method, c.dataset,
                          self.dataset.describe_items(labeled), self.dataset.describe_items(unlabeled), c.protocol)
            extra = sum(p.numel() for m in self.method.trained_modules()[1:] for p in m.parameters())
            self.log.info("network %s, %s parameters (+ %s trained by %s), device %s", c.network,
                          f"{sum(p.numel() for p in self.network.parameters()):,}", f"{extra:,}", c.method,
                          self.device)
        if self.ddp.active:
            self.log.info("torchrun: %d processes, each %d labeled + %d unlabeled of every global batch%s",
                          self.ddp.world_size, sampler.labeled_bs, batch_size // self.ddp.world_size -
                          sampler.labeled_bs, ", SyncBatchNorm" if c.sync_bn else "")

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self, stop: StopSignals | None = None) -> TrainResult:
        config, start = self.config, time.perf_counter()
        self.method.train()
        for iteration in self.log.progress(self.start_iteration, config.max_iteration):
            labeled, unlabeled = next(self.batches)
            step = self.step(labeled, unlabeled, iteration)
            self.losses.append(step.loss)
            self.log.iteration(iteration, step.loss, step.terms, step.monitors, step.lr)
            self.log.images(iteration, labeled.image, labeled.label, step.labeled_logits)
            improved = self.select(iteration)
            # the resume checkpoint of an iteration is written before its best files (see training/checkpoints.py)
            saved = improved or iteration % config.save_every == 0 or iteration == config.max_iteration
            if saved:
                self.save_resume(iteration)
            for best in improved if self.ddp.is_main else []:
                self.store.save_model(best.path, self.network, iteration, best.list_name, best.score,
                                      self.method.method_state())
            if stop is not None and iteration < config.max_iteration and (signal_number := stop.agreed(self.ddp)):
                self.stop_by_signal(signal_number, iteration, saved)
        return self.finish(time.perf_counter() - start)

    def step(self, labeled: Batch, unlabeled: Batch | None, iteration: int) -> StepResult:
        """One optimiser step: the method's loss, a check for NaN / Inf, backward, SGD, the method's after-step
        hook (EMA teachers, SASSNet's discriminator) and the recipe's LR for the next iteration."""
        zero_gradients(self.optimizer)  # before the loss: --low_memory backpropagates parts of it inside
        context = self.step_context.at(iteration)
        with self.precision.autocast():
            output = self.train_step(labeled, unlabeled, context)
        terms = {k: float(v) for k, v in output.terms.items()}
        monitors = {k: float(v) for k, v in output.monitors.items()}
        # torchrun: the logged values of the global batch
        loss, scalars = self.ddp.mean_over_ranks(float(output.loss.detach()), {**terms, **monitors})
        if not math.isfinite(loss):  # before any parameter update (parts may have been backpropagated)
            self.stop_non_finite(iteration, loss, scalars)
        self.precision.backward_and_step(output.loss, self.optimizer, iteration)
        self.ddp.sync_buffers(self.method.trained_modules())  # rank 0's BN statistics
        self.method.after_optimizer_step(context)
        lr = set_learning_rate(self.optimizer, iteration, self.config)
        return StepResult(loss, {k: scalars[k] for k in terms}, {k: scalars[k] for k in monitors}, lr,
                          output.labeled_logits)

    def select(self, iteration: int) -> list[Best]:
        """Evaluate on the selection lists when due; the records that improved at this iteration."""
        if not self.selector.due(iteration):
            return []
        improved = []
        for best, score in self.selector.evaluate(iteration):
            if best.iteration == iteration:
                improved.append(best)
            self.log.evaluation(iteration, best.list_name, score, best.score, best.iteration,
                                best.path.name if best in improved else "")
        return improved

    def save_resume(self, iteration: int) -> None:
        self.log.flush()  # events up to this iteration are on disk before the checkpoint that vouches for them
        state = ResumeState(iteration, self.optimizer.state_dict(), self.method.method_state(), capture_rng(),
                            {n: b.to_dict() for n, b in self.selector.bests.items()}, self.losses,
                            extra={"precision": self.precision.state_dict(), **self.ddp.resume_extra()},
                            parameter_names=self.parameter_names)
        if self.ddp.is_main:
            self.store.save_resume(self.network, state)

    def stop_by_signal(self, signal_number: int, iteration: int, saved: bool) -> None:
        """A stop signal: the state of this iteration in a resume checkpoint, then StoppedBySignal (exit 128 + N)."""
        if not saved:
            self.save_resume(iteration)
        message = (f"stopped by signal {signal_number} ({signal_name(signal_number)}) at iteration {iteration}; "
                   f"re-run the same command to continue from {self.store.resume_path(iteration)}")
        self.log.info(message)
        raise StoppedBySignal(message, signal_number)

    def stop_non_finite(self, iteration: int, loss: float, scalars: dict[str, float]) -> None:
        """Stop before the bad step touches the weights; the newest resume checkpoint stays the last good state."""
        bad = {k: v for k, v in scalars.items() if not math.isfinite(v)} or {"total": loss}
        saved = list_checkpoints(self.run_dir)
        last_good = f"{saved[-1][1]} (iteration {saved[-1][0]})" if saved else "none yet"
        message = (f"non-finite loss at iteration {iteration}: {', '.join(f'{k} = {v}' for k, v in bad.items())}; "
                   f"last good checkpoint: {last_good}. Lower --base_lr or check the data, then resume with "
                   f"--resume {self.run_dir}")
        self.log.error(message)
        raise TrainingDiverged(message)

    def finish(self, seconds: float) -> TrainResult:
        """Rank 0 writes last_model.pth, best_model.pth when nothing was selected, and result.json."""
        config, store, bests = self.config, self.store, self.selector.bests
        if not self.ddp.is_main:  # torchrun: the other ranks wait for rank 0's files, then return
            self.ddp.barrier()
            return TrainResult(self.run_dir, store.primary_path, store.last_path, None, 0, self.losses, seconds,
                               {}, self.start_iteration)
        method_state = self.method.method_state()
        store.save_model(store.last_path, self.network, config.max_iteration, "last", None, method_state)
        if config.select == "last" or not bests[config.select].found:  # no selection, or no evaluation happened
            if config.select != "last":
                self.log.info("no evaluation ran (eval_start %d > max_iteration %d): best = last", config.eval_start,
                              config.max_iteration)
            store.save_model(store.primary_path, self.network, config.max_iteration, "last", None, method_state)
        chosen = bests.get(config.select)
        best_score = chosen.score if chosen and chosen.found else None
        best_iteration = chosen.iteration if chosen and chosen.found else config.max_iteration
        store.write_result(bests, best_score, best_iteration, seconds)
        self.log.info("done in %.1f s; best checkpoint %s (iteration %d%s)", seconds, store.primary_path,
                      best_iteration, f", {config.select} mean Dice {best_score:.4f}" if best_score is not None else "")
        self.ddp.barrier()
        return TrainResult(self.run_dir, store.primary_path, store.last_path, best_score, best_iteration,
                           self.losses, seconds, {n: b.to_dict() for n, b in bests.items()}, self.start_iteration)
