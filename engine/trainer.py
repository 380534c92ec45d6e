"""The one training loop: optimiser, schedule, logging, evaluation and checkpoints, for every method."""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataloaders import TwoStreamBatchSampler
from engine.config import TrainConfig, default_run_dir
from engine.evaluate import evaluate_cases
from engine.run_dir import close_logger, environment, prepare_run_dir
from engine.tasks import InferenceSettings, get_task
from methods import METHODS, Batch, build_method
from networks import build_network
from utils.checkpoint import save_checkpoint
from utils.ramps import step_learning_rate


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float | None  # selection metric (mean foreground Dice) of the best checkpoint; None for select=last
    best_iteration: int
    losses: list[float]  # total loss per iteration (for determinism checks and plots)
    seconds: float


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
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


def eval_ids_for(config: TrainConfig, split) -> list[str]:
    """The cases that choose the checkpoint: val (honest), test (the paper's LA protocol) or none."""
    return {"val": split.val, "test": split.test, "last": []}[config.select]


def _infinite(loader):
    while True:
        yield from loader


def train(config: TrainConfig) -> TrainResult:
    task = get_task(config.dataset, config)
    device = resolve_device(config.device)
    seed_everything(config.seed, bool(config.deterministic))
    split = task.split(config.labelnum, config.select, config.lists_dir)
    # labeled-only methods draw no unlabeled data at all
    unlabeled_ids = split.unlabeled if METHODS[config.method].uses_unlabeled else []
    train_ids = split.labeled + unlabeled_ids
    task.check_data(config.root_path, train_ids, eval_ids_for(config, split))
    dataset = task.train_dataset(config.root_path, train_ids, tuple(config.patch_size))
    dataset.preload()

    run_dir = default_run_dir(config)
    logger = prepare_run_dir(run_dir, config.to_json(), split, environment(device, config.seed))
    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    try:
        return _train(config, task, split, unlabeled_ids, dataset, device, run_dir, logger, writer)
    finally:
        writer.close()
        close_logger(logger)


def _train(config, task, split, unlabeled_ids, dataset, device, run_dir, logger, writer) -> TrainResult:
    network = build_network(config.network, **config.network_kwargs).to(device)
    method = build_method(config.method, network, config.method_settings())
    optimizer = torch.optim.SGD(network.parameters(), lr=config.base_lr, momentum=0.9, weight_decay=1e-4)

    batch_size = config.batch_size if method.uses_unlabeled else config.labeled_bs
    n_labeled = len(split.labeled)
    sampler = TwoStreamBatchSampler(
        list(range(n_labeled)),
        list(range(n_labeled, n_labeled + len(unlabeled_ids))),
        batch_size=batch_size,
        labeled_bs=config.labeled_bs,
        seed=config.seed,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.num_workers > 0,
    )

    eval_ids = eval_ids_for(config, split)
    inference = InferenceSettings(
        patch_size=tuple(config.patch_size), stride=tuple(config.stride), batch_size=config.eval_batch_size, nms=False
    )
    best_path, last_path = run_dir / "best_model.pth", run_dir / "last_model.pth"
    best_score, best_iteration = -math.inf, 0

    logger.info("run folder %s", run_dir)
    logger.info("%s on %s: %d labeled, %d unlabeled, selection: %s", config.method, config.dataset, n_labeled,
                len(unlabeled_ids), config.protocol)
    logger.info("network %s, %s parameters, device %s", config.network,
                f"{sum(p.numel() for p in network.parameters()):,}", device)

    def checkpoint_metadata(iteration: int, score: float | None) -> dict:
        return {
            "dataset": config.dataset,
            "num_classes": config.num_classes,
            "method": config.method,
            "iteration": iteration,
            "config": asdict(config),
            "selection": {"select": config.select, "protocol": config.protocol, "metric": "mean foreground Dice",
                          "list": config.select, "score": score, "iteration": iteration},
            "inference": {**inference.to_dict(), "nms": config.preset.nms},
            "method_state": method.state_dict(),
        }

    losses: list[float] = []
    start = time.perf_counter()
    network.train()
    batches = _infinite(loader)
    progress = tqdm(range(1, config.max_iteration + 1), desc=f"{config.method} {config.dataset}",
                    disable=not config.progress, dynamic_ncols=True)
    for iteration in progress:
        batch = next(batches)
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        cases = list(batch["case"])
        nl = config.labeled_bs
        labeled = Batch(images[:nl], labels[:nl], cases[:nl])
        unlabeled = Batch(images[nl:], None, cases[nl:]) if method.uses_unlabeled else None

        output = method.training_loss(labeled, unlabeled, iteration)
        loss_value = float(output.loss.detach())
        if not math.isfinite(loss_value):
            bad = {k: float(v) for k, v in output.terms.items() if not math.isfinite(float(v))}
            raise FloatingPointError(f"non-finite loss at iteration {iteration}: {bad or loss_value}; "
                                     f"last good checkpoint: {last_path if last_path.exists() else 'none yet'}")
        optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        optimizer.step()
        lr = step_learning_rate(iteration, config.base_lr, config.lr_step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses.append(loss_value)

        terms = {k: float(v) for k, v in output.terms.items()}
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

        if eval_ids and iteration >= config.eval_start and iteration % config.eval_every == 0:
            result = evaluate_cases(network, task, config.root_path, eval_ids, inference, config.num_classes,
                                    full_metrics=False, description=f"{config.select} @ {iteration}")
            score = result.mean_dice()
            writer.add_scalar(f"{config.select}/mean_dice", score, iteration)
            improved = score > best_score
            if improved:
                best_score, best_iteration = score, iteration
                save_checkpoint(best_path, network, **checkpoint_metadata(iteration, score))
            logger.info("iteration %d: %s mean Dice %.4f (best %.4f @ %d)%s", iteration, config.select, score,
                        best_score, best_iteration, " -> saved best" if improved else "")

    save_checkpoint(last_path, network, optimizer=optimizer.state_dict(),
                    **checkpoint_metadata(config.max_iteration, None))
    if not best_path.exists():  # select=last, or no evaluation happened: the last weights are the result
        if eval_ids:
            logger.info("no evaluation ran (eval_start %d > max_iteration %d): best = last", config.eval_start,
                        config.max_iteration)
        save_checkpoint(best_path, network, **checkpoint_metadata(config.max_iteration, None))
        best_iteration = config.max_iteration
    seconds = time.perf_counter() - start
    logger.info("done in %.1f s; best checkpoint %s (iteration %d%s)", seconds, best_path, best_iteration,
                f", {config.select} mean Dice {best_score:.4f}" if best_score > -math.inf else "")
    return TrainResult(run_dir, best_path, last_path, best_score if best_score > -math.inf else None, best_iteration,
                       losses, seconds)
