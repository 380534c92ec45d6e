"""The one training loop: optimiser, schedule, logging, evaluation and checkpoints, for every method."""
from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataloaders import TwoStreamBatchSampler
from engine.config import PROTOCOLS, TrainConfig, default_run_dir
from engine.distributed import Distributed, NullWriter, distributed_session
from engine.evaluate import evaluate_cases
from engine.precision import Precision
from engine.resume import (
    Best,
    ResumeState,
    capture_rng,
    checkpoint_path,
    config_differences,
    list_checkpoints,
    load_resume_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
    save_resume_checkpoint,
)
from engine.run_dir import close_logger, environment, prepare_run_dir
from engine.speed import build_sgd, prepare_network
from engine.tasks import InferenceSettings, get_task
from methods import METHODS, Batch, build_method
from networks import build_network
from utils.atomic import write_text_atomic
from utils.checkpoint import read_checkpoint, save_checkpoint
from utils.ramps import learning_rate


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
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device name (use cuda, cuda:0, cpu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available here; use --device cpu")
    return device


def image_panel(image: torch.Tensor, label: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(3, H, W) grey panels [image | label | prediction] of the first labeled sample, middle slice for 3D."""
    img, lab, pred = image[0, 0], label[0].float(), logits[0].argmax(0).float()
    if img.ndim == 3:  # (W, H, D): show the middle axial slice
        mid = img.shape[-1] // 2
        img, lab, pred = img[..., mid], lab[..., mid], pred[..., mid]
    img = (img - img.min()) / (img.max() - img.min() + 1e-8)
    scale = max(float(logits.shape[1] - 1), 1.0)
    row = torch.cat([img, lab / scale, pred / scale], dim=1).cpu()
    return row.unsqueeze(0)


def selection_lists(config: TrainConfig, split) -> dict[str, list[str]]:
    """The lists that choose checkpoints: --select (best_model.pth) first, then --track ones."""
    names = [n for n in [config.select, *config.track] if n != "last"]
    available = {"val": split.val, "test": split.test}
    return {name: available[name] for name in dict.fromkeys(names)}


def best_path(run_dir: Path, config: TrainConfig, list_name: str) -> Path:
    return run_dir / ("best_model.pth" if list_name == config.select else f"best_model_{list_name}.pth")


def train(config: TrainConfig) -> TrainResult:
    """Train, or continue the run in the run folder from its newest resume checkpoint.

    Under torchrun every process runs this; they share the work of each global batch (engine/distributed.py).
    """
    with distributed_session(config.device) as ddp:
        return _train_process(config, ddp)


def _train_process(config: TrainConfig, ddp: Distributed) -> TrainResult:
    task = get_task(config.dataset, config)
    device = ddp.device or resolve_device(config.device)
    configure_determinism(bool(config.deterministic), device)
    split = task.split(config.labelnum, config.select, config.lists_dir)
    check_split(config, split)
    # labeled-only methods draw no unlabeled data at all
    unlabeled_ids = split.unlabeled if METHODS[config.method].uses_unlabeled else []
    ddp.check_job(config.batch_size if METHODS[config.method].uses_unlabeled else config.labeled_bs,
                  config.labeled_bs, config.sync_bn)
    train_ids = split.labeled + unlabeled_ids
    eval_lists = selection_lists(config, split)
    eval_ids = list(dict.fromkeys(i for ids in eval_lists.values() for i in ids))
    task.check_data(config.root_path, train_ids, eval_ids)
    dataset = task.train_dataset(config.root_path, train_ids, tuple(config.patch_size))
    dataset.preload()  # reads and checks every training case before anything is written
    task.check_cases(config.root_path, eval_ids)

    run_dir = default_run_dir(config)
    resume = ddp.on_main(lambda: find_resume(run_dir, config))  # only rank 0 reads the run folder
    if resume:
        ddp.check_resume(resume[1], config.allow_world_size_change)
    seed_everything(config.seed)
    if not ddp.is_main:  # torchrun: only rank 0 writes files
        return _train(config, task, split, unlabeled_ids, eval_lists, dataset, device, run_dir, ddp.quiet_logger(),
                      NullWriter(), resume, ddp)
    logger = prepare_run_dir(run_dir, config.to_json(), split, environment(device, config.seed),
                             resume_iteration=resume[1]["iteration"] if resume else None)
    # purge_step hides events a crashed run wrote after its last checkpoint, so no iteration appears twice.
    wait_for_a_later_event_file_name(run_dir / "tensorboard")
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                           purge_step=resume[1]["iteration"] + 1 if resume else None)
    try:
        return _train(config, task, split, unlabeled_ids, eval_lists, dataset, device, run_dir, logger, writer,
                      resume, ddp)
    finally:
        writer.close()
        close_logger(logger)


def wait_for_a_later_event_file_name(folder: Path) -> None:
    """TensorBoard reads event files in name order and names carry the start second: a run resumed within the
    same second as the crash could be read before the old file, and its purge would then be lost."""
    seconds = [int(p.name.split(".")[3]) for p in folder.glob("events.out.tfevents.*")
               if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    while seconds and time.time() < max(seconds) + 1:
        time.sleep(0.05)


def check_split(config: TrainConfig, split) -> None:
    if "val" in config.track and config.select == "test" and set(split.val) & set(split.unlabeled):
        raise ValueError("--track val needs --select val: with --select test (the paper's split) the validation "
                         "cases are part of the unlabeled pool")
    if config.select == "val" and not split.val:
        raise ValueError(f"--select val but the validation list of {config.dataset} is empty; add val.list to "
                         f"--lists_dir or use --select last")


def find_resume(run_dir: Path, config: TrainConfig) -> tuple[Path, dict] | None:
    """The checkpoint to continue from, after checking that the run folder holds the same experiment."""
    if config.resume and Path(config.resume).resolve() != run_dir.resolve():
        raise ValueError(f"--resume {config.resume} and --run_dir {run_dir} name different folders")
    if not run_dir.exists():
        if config.resume:
            raise FileNotFoundError(f"--resume {config.resume}: no such run folder")
        return None
    remove_stale_temp_files(run_dir)
    found = load_resume_checkpoint(run_dir, log=lambda m: print(f"warning: {m}", file=sys.stderr))
    if found is None:
        results = [p.name for p in (run_dir / "best_model.pth", run_dir / "last_model.pth", run_dir / "result.json")
                   if p.exists()]
        if results:
            raise ValueError(f"run folder {run_dir} holds {', '.join(results)} but no resume checkpoint; "
                             f"choose a new --run_dir (or --exp/--seed) so that result is not overwritten")
        if config.resume:
            raise FileNotFoundError(f"--resume {config.resume}: the run folder has no checkpoint to resume from "
                                    f"(checkpoints/iter_*.pth); start it again without --resume")
        return None  # a start that crashed before its first checkpoint: begin again
    path, state = found
    changed = config_differences(state.get("config", {}), asdict(config))
    if changed:
        raise ValueError(f"run folder {run_dir} holds a run with other settings ({'; '.join(changed[:4])}); "
                         f"continue it with --resume {run_dir}, or start a new run with another --run_dir")
    if state["iteration"] > config.max_iteration:
        raise ValueError(f"--max_iteration {config.max_iteration} is below iteration {state['iteration']} of "
                         f"{path}; raise --max_iteration or choose another --run_dir")
    return path, state


def _train(config, task, split, unlabeled_ids, eval_lists, dataset, device, run_dir, logger, writer,
           resume, ddp: Distributed) -> TrainResult:
    network = build_network(config.network, **config.network_kwargs).to(device)
    ddp.prepare_network(network, sync_bn=config.sync_bn)  # torchrun --sync_bn: SyncBatchNorm backbone
    # --- speed options (issue 6; all off by default = the paper's fp32 math) ---
    prepare_network(network, channels_last=config.channels_last, compile=config.compile)
    precision = Precision(config.amp, device, logger)
    optimizer = build_sgd(network.parameters(), lr=config.base_lr, impl=config.optimizer_impl)
    # ---
    method = build_method(config.method, network, config.method_settings())
    training_loss = ddp.training_step(method)  # torchrun: through DistributedDataParallel; else the method's own
    bests = {name: Best(name, best_path(run_dir, config, name)) for name in eval_lists}
    losses: list[float] = []
    start_iteration = 0
    if resume:
        path, state = resume
        network.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        restore_zero_gradients(optimizer)
        method.load_state_dict(state["method_state"])
        if "precision" in state["extra"]:
            precision.load_state_dict(state["extra"]["precision"])
        for name, record in state["best"].items():
            if name in bests:
                bests[name].score, bests[name].iteration = record["score"], record["iteration"]
        losses = list(state["losses"])
        start_iteration = state["iteration"]
        logger.info("resumed from %s (iteration %d)", path, start_iteration)

    batch_size = config.batch_size if method.uses_unlabeled else config.labeled_bs
    n_labeled = len(split.labeled)
    sampler = ddp.shard(TwoStreamBatchSampler(
        list(range(n_labeled)),
        list(range(n_labeled, n_labeled + len(unlabeled_ids))),
        batch_size=batch_size,
        labeled_bs=config.labeled_bs,
        seed=config.seed,
        start_iteration=start_iteration,  # batch t is a pure function of (seed, t): nothing else to restore
    ))  # torchrun: this rank's labeled and unlabeled slices of every global batch
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
    )

    # Creating the loader iterator draws a base seed from the global generator: do it before restoring the
    # generators, so that a resumed run continues with exactly the state the interrupted one saved.
    ddp.seed_rank(config.seed)  # torchrun: a random stream per rank from here on (weights already identical)
    batches = iter(loader)
    if resume and ddp.rank_rng(resume[1]) is not None:
        restore_rng(ddp.rank_rng(resume[1]))

    inference = InferenceSettings(
        patch_size=tuple(config.patch_size), stride=tuple(config.stride), batch_size=config.eval_batch_size, nms=False
    )
    # in-training evaluation may be cheaper (coarser stride, autocast); checkpoints record `inference` for testing
    eval_inference = replace(inference, stride=tuple(config.eval_stride or config.stride), amp=config.amp)
    last_path = run_dir / "last_model.pth"

    if not resume:
        logger.info("run folder %s", run_dir)
        logger.info("%s on %s: %d labeled, %d unlabeled, selection: %s", config.method, config.dataset, n_labeled,
                    len(unlabeled_ids), config.protocol)
        logger.info("network %s, %s parameters, device %s", config.network,
                    f"{sum(p.numel() for p in network.parameters()):,}", device)
    if ddp.active:
        logger.info("torchrun: %d processes, each %d labeled + %d unlabeled of every global batch%s", ddp.world_size,
                    sampler.labeled_bs, batch_size // ddp.world_size - sampler.labeled_bs,
                    ", SyncBatchNorm" if config.sync_bn else "")

    def metadata(iteration: int, list_name: str, score: float | None) -> dict:
        return {
            "dataset": config.dataset,
            "num_classes": config.num_classes,
            "method": config.method,
            "iteration": iteration,
            "config": asdict(config),
            "selection": {"select": list_name, "protocol": PROTOCOLS[list_name], "metric": "mean foreground Dice",
                          "list": list_name, "score": score, "iteration": iteration},
            "inference": {**inference.to_dict(), "nms": config.preset.nms},
            "method_state": method.state_dict(),
        }

    def save_resume(iteration: int) -> Path:
        writer.flush()  # events up to this iteration are on disk before the checkpoint that vouches for them
        state = ResumeState(iteration, optimizer.state_dict(), method.state_dict(), capture_rng(),
                            {n: b.to_dict() for n, b in bests.items()}, losses,
                            extra={"precision": precision.state_dict(), **ddp.resume_extra()})
        if not ddp.is_main:
            return checkpoint_path(run_dir, iteration)
        path = save_resume_checkpoint(run_dir, network, state, {
            "dataset": config.dataset, "num_classes": config.num_classes, "method": config.method,
            "config": asdict(config)})
        prune_checkpoints(run_dir, config.keep_checkpoints)
        return path

    if resume and ddp.is_main:
        restore_best_files(bests, start_iteration, network, metadata, logger)

    start = time.perf_counter()
    network.train()
    progress = tqdm(range(start_iteration + 1, config.max_iteration + 1), desc=f"{config.method} {config.dataset}",
                    disable=not config.progress or not ddp.is_main, dynamic_ncols=True, initial=start_iteration,
                    total=config.max_iteration)
    for iteration in progress:
        batch = next(batches)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        cases = list(batch["case"])
        nl = sampler.labeled_bs  # this rank's share under torchrun
        labeled = Batch(images[:nl], labels[:nl], cases[:nl])
        unlabeled = Batch(images[nl:], None, cases[nl:]) if method.uses_unlabeled else None

        with precision.autocast():
            output = training_loss(labeled, unlabeled, iteration)
        loss_value = float(output.loss.detach())
        terms = {k: float(v) for k, v in output.terms.items()}
        loss_value, terms = ddp.mean_over_ranks(loss_value, terms)  # torchrun: logged values of the global batch
        if not math.isfinite(loss_value):
            raise_non_finite(iteration, loss_value, terms, run_dir, logger)
        zero_gradients(optimizer)
        precision.backward_and_step(output.loss, optimizer, iteration)
        ddp.sync_buffers(network)  # torchrun: rank 0's BatchNorm statistics everywhere, so one model
        method.after_optimizer_step(iteration)  # EMA teachers, SASSNet's discriminator
        lr = learning_rate(iteration, config.base_lr, config.lr_policy, config.lr_step, config.max_iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(loss_value)

        for name, value in terms.items():
            writer.add_scalar(f"loss/{name}" if not name.startswith(("memory", "consistency")) else f"train/{name}",
                              value, iteration)
        writer.add_scalar("train/lr", lr, iteration)
        progress.set_postfix(loss=f"{loss_value:.4f}", dice=f"{terms.get('dice', float('nan')):.4f}")
        logger.debug("iteration %d: %s lr %.2e", iteration,
                     " ".join(f"{k} {v:.5f}" for k, v in terms.items() if not k.startswith("memory")), lr)
        if config.image_every and (iteration % config.image_every == 0 or iteration == 1):
            writer.add_image("train/image_label_prediction",
                             image_panel(labeled.image, labeled.label, output.labeled_logits), iteration)

        improved: list[Best] = []
        if eval_lists and iteration >= config.eval_start and iteration % config.eval_every == 0:
            for name, ids in eval_lists.items():
                description = f"{name} @ {iteration}"
                result = ddp.evaluate(  # torchrun: each rank a share of the cases
                    lambda shard, d=description: evaluate_cases(network, task, config.root_path, shard, eval_inference,
                                                                config.num_classes, full_metrics=False, description=d),
                    ids)
                score, best = result.mean_dice(), bests[name]
                writer.add_scalar(f"{name}/mean_dice", score, iteration)
                if score > best.score:
                    best.score, best.iteration = score, iteration
                    improved.append(best)
                logger.info("iteration %d: %s mean Dice %.4f (best %.4f @ %d)%s", iteration, name, score,
                            best.score, best.iteration, f" -> {best.path.name}" if best in improved else "")

        # A resume checkpoint is written before any best file of the same iteration, so a best file is never
        # newer than the newest resume checkpoint (see restore_best_files).
        if improved or iteration % config.save_every == 0 or iteration == config.max_iteration:
            save_resume(iteration)
        for best in improved if ddp.is_main else []:
            save_checkpoint(best.path, network, **metadata(iteration, best.list_name, best.score))

    if not ddp.is_main:  # torchrun: rank 0 writes the final files; the others wait for them, then return
        ddp.barrier()
        return TrainResult(run_dir, run_dir / "best_model.pth", last_path, None, 0, losses,
                           time.perf_counter() - start, {}, start_iteration)
    save_checkpoint(last_path, network, **metadata(config.max_iteration, "last", None))
    primary = run_dir / "best_model.pth"
    if config.select == "last" or not bests[config.select].found:  # no selection, or no evaluation happened
        if config.select != "last":
            logger.info("no evaluation ran (eval_start %d > max_iteration %d): best = last", config.eval_start,
                        config.max_iteration)
        save_checkpoint(primary, network, **metadata(config.max_iteration, "last", None))
    seconds = time.perf_counter() - start
    chosen = bests.get(config.select)
    best_score = chosen.score if chosen and chosen.found else None
    best_iteration = chosen.iteration if chosen and chosen.found else config.max_iteration
    write_result(run_dir, config, primary, last_path, bests, best_score, best_iteration, seconds)
    logger.info("done in %.1f s; best checkpoint %s (iteration %d%s)", seconds, primary, best_iteration,
                f", {config.select} mean Dice {best_score:.4f}" if best_score is not None else "")
    ddp.barrier()
    return TrainResult(run_dir, primary, last_path, best_score, best_iteration, losses, seconds,
                       {n: b.to_dict() for n, b in bests.items()}, start_iteration)


def zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Zero the gradients in place, as PyTorch 1.8's `zero_grad()` did for the official scripts.

    A parameter that has had a gradient keeps a zero one, so SGD's momentum and weight decay keep moving it in
    iterations that leave it unused (a class absent from SS-Net's batch, its heads before the memory fills);
    with `set_to_none=True` (PyTorch >= 2.0) such a parameter would stand still instead."""
    optimizer.zero_grad(set_to_none=False)


def restore_zero_gradients(optimizer: torch.optim.Optimizer) -> None:
    """After a resume: the zero gradients an uninterrupted run would hold. A parameter has one exactly when it
    has been stepped before, i.e. when SGD keeps a momentum buffer for it."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is None and optimizer.state.get(p, {}).get("momentum_buffer") is not None:
                p.grad = torch.zeros_like(p)


def raise_non_finite(iteration: int, loss: float, terms: dict[str, float], run_dir: Path, logger) -> None:
    """Stop before the bad step touches the weights; the newest resume checkpoint stays the last good state."""
    bad = {k: v for k, v in terms.items() if not math.isfinite(v)} or {"total": loss}
    saved = list_checkpoints(run_dir)
    last_good = f"{saved[-1][1]} (iteration {saved[-1][0]})" if saved else "none yet"
    message = (f"non-finite loss at iteration {iteration}: {', '.join(f'{k} = {v}' for k, v in bad.items())}; "
               f"last good checkpoint: {last_good}. Lower --base_lr or check the data, then resume with "
               f"--resume {run_dir}")
    logger.error(message)
    raise FloatingPointError(message)


def restore_best_files(bests: dict[str, Best], iteration: int, network, metadata, logger) -> None:
    """After a crash between a resume checkpoint and its best file, rebuild that best file from the weights."""
    for best in bests.values():
        if not best.found:
            continue
        stored = read_checkpoint(best.path).get("iteration") if best.path.exists() else None
        if stored == best.iteration:
            continue
        if best.iteration == iteration:  # the resumed weights are exactly the best ones
            save_checkpoint(best.path, network, **metadata(iteration, best.list_name, best.score))
            logger.info("rewrote %s from the resume checkpoint (iteration %d)", best.path.name, iteration)
        else:
            logger.warning("%s holds iteration %s, the run state says %d", best.path.name, stored, best.iteration)


def write_result(run_dir: Path, config: TrainConfig, primary: Path, last: Path, bests: dict[str, Best],
                 best_score: float | None, best_iteration: int, seconds: float) -> None:
    """result.json marks a finished run (tools such as reproduce.py look for it)."""
    result = {
        "finished": True,
        "dataset": config.dataset,
        "method": config.method,
        "labelnum": config.labelnum,
        "seed": config.seed,
        "max_iteration": config.max_iteration,
        "select": config.select,
        "protocol": config.protocol,
        "best_checkpoint": primary.name,
        "best_score": best_score,
        "best_iteration": best_iteration,
        "last_checkpoint": last.name,
        "selections": {n: {**b.to_dict(), "checkpoint": b.path.name, "protocol": PROTOCOLS[n]}
                       for n, b in bests.items() if b.found},
        "seconds_this_session": round(seconds, 1),
    }
    write_text_atomic(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
