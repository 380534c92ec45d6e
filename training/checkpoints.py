"""Everything a run writes that can be loaded again: resume checkpoints, best / last checkpoints, result.json.

A run folder keeps its newest few `checkpoints/iter_<N>.pth`. Each one is written atomically (a crash never
leaves a file that looks complete but is not), so after a SIGKILL the newest readable one is the state of
iteration N: weights, optimiser, method state (SS-Net's heads and prototype memory, teachers, ...), best-so-far
selection, the loss history and every random generator. The sampler needs no state: batch t is a pure function
of (seed, t). A resume checkpoint is written before any best file of the same iteration, so a best file is never
newer than the newest resume checkpoint (`restore_best_files` rebuilds one a crash left behind).
"""
from __future__ import annotations

import contextlib
import json
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from networks import save_checkpoint
from utils.atomic import write_text_atomic
from utils.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, read_checkpoint
from utils.disk import WriteFailed
from utils.errors import UserError

from .config import PROTOCOLS, TrainConfig, config_differences
from .optim import restore_zero_gradients

CHECKPOINT_FOLDER = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pth$")


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / CHECKPOINT_FOLDER / f"iter_{iteration:07d}.pth"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, path) of the complete resume checkpoints, oldest first (temp files are not listed)."""
    folder = Path(run_dir) / CHECKPOINT_FOLDER
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Temp files of writes interrupted by a crash (`.<name>.<random>.tmp`); they are never valid."""
    stale = [p for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_FOLDER) if folder.is_dir()
             for p in folder.glob(".*.tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` resume checkpoints (the newest is never deleted)."""
    for _, path in list_checkpoints(run_dir)[:-max(keep, 1)]:
        path.unlink(missing_ok=True)


def capture_rng() -> dict:
    """Every generator the training step may draw from, as tensors and plain lists (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], np.asarray(npy["keys"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        if len(cuda_states) != torch.cuda.device_count():
            raise UserError(f"the checkpoint holds {len(cuda_states)} CUDA generator states but "
                            f"{torch.cuda.device_count()} GPUs are visible; resume with the same GPUs")
        torch.cuda.set_rng_state_all(cuda_states)


@dataclass
class Best:
    """Best-so-far checkpoint chosen on one list ("val" or "test")."""

    list_name: str
    path: Path
    score: float = float("-inf")
    iteration: int = 0

    def to_dict(self) -> dict:
        return {"list": self.list_name, "score": self.score, "iteration": self.iteration}

    @property
    def found(self) -> bool:
        return self.score > float("-inf")


@dataclass
class ResumeState:
    iteration: int
    optimizer_state: dict
    method_state: dict
    rng: dict
    best: dict[str, dict] = field(default_factory=dict)  # list name -> Best.to_dict()
    losses: list[float] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # the AMP grad scaler; world size and per-rank generators
    parameter_names: list[str] = field(default_factory=list)  # what the optimiser state indexes, in order


def save_resume_checkpoint(run_dir: Path, network: torch.nn.Module, state: ResumeState, metadata: dict) -> Path:
    path = checkpoint_path(run_dir, state.iteration)
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "kind": "resume",
        "network": network.network_config(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer": state.optimizer_state,
        "parameter_names": state.parameter_names,
        "method_state": state.method_state,
        "rng": state.rng,
        "best": state.best,
        "losses": state.losses,
        "extra": state.extra,
        **metadata,
        "iteration": state.iteration,
    }, path)
    return path


def load_resume_checkpoint(run_dir: Path, log=None) -> tuple[Path, dict] | None:
    """The newest readable resume checkpoint of `run_dir`, or None. Unreadable ones are skipped with a warning."""
    for iteration, path in reversed(list_checkpoints(run_dir)):
        try:
            obj = read_checkpoint(path)
        except UserError as exc:
            if log:
                log(f"skipping unreadable checkpoint {path}: {exc}")
            continue
        if obj.get("kind") != "resume" or obj.get("iteration") != iteration:
            if log:
                log(f"skipping {path}: not a resume checkpoint of iteration {iteration}")
            continue
        return path, obj
    return None


def find_resume(run_dir: Path, config: TrainConfig) -> tuple[Path, dict] | None:
    """The checkpoint to continue from, after checking that the run folder holds the same experiment."""
    if config.resume and Path(config.resume).resolve() != run_dir.resolve():
        raise UserError(f"--resume {config.resume} and --run_dir {run_dir} name different folders")
    if not run_dir.exists():
        if config.resume:
            raise FileNotFoundError(f"--resume {config.resume}: no such run folder")
        return None
    remove_stale_temp_files(run_dir)
    skipped: list[str] = []
    found = load_resume_checkpoint(run_dir, log=skipped.append)
    if skipped:
        # loud: the iterations after the checkpoint resumed from are trained again (same result, more time)
        to = f"resuming from {found[0]} (iteration {found[1]['iteration']})" if found else "no readable one is left"
        print(f"warning: {'; '.join(skipped)}; {to}", file=sys.stderr)
        if found:
            found[1]["skipped_checkpoints"] = skipped  # the log says it again once it is open
    if found is None:
        results = [p.name for p in (run_dir / "best_model.pth", run_dir / "last_model.pth", run_dir / "result.json")
                   if p.exists()]
        if results:
            raise UserError(f"run folder {run_dir} holds {', '.join(results)} but no resume checkpoint; "
                            f"choose a new --run_dir (or --exp/--seed) so that result is not overwritten")
        if config.resume:
            raise FileNotFoundError(f"--resume {config.resume}: the run folder has no checkpoint to resume from "
                                    f"(checkpoints/iter_*.pth); start it again without --resume")
        return None  # a start that crashed before its first checkpoint: begin again
    path, state = found
    changed = config_differences(state.get("config", {}), asdict(config))
    if changed:
        raise UserError(f"run folder {run_dir} holds a run with other settings ({'; '.join(changed[:4])}); "
                        f"continue it with --resume {run_dir}, or start a new run with another --run_dir")
    if not state.get("parameter_names"):  # refused before anything is written to the run folder
        raise UserError(f"cannot resume from {path}: it was written by an earlier version whose networks carried "
                        f"SS-Net's heads; evaluate its checkpoints with test_la.py / test_acdc.py, or start a new run "
                        f"with another --run_dir")
    if state["iteration"] > config.max_iteration:
        raise UserError(f"--max_iteration {config.max_iteration} is below iteration {state['iteration']} of "
                        f"{path}; raise --max_iteration or choose another --run_dir")
    return path, state


class CheckpointStore:
    """The checkpoint files of one run folder and the one metadata builder they share."""

    def __init__(self, run_dir: Path, config: TrainConfig, inference: dict):
        self.run_dir = Path(run_dir)
        self.config = config
        self.inference = inference  # the settings a test script should predict with (stored in best/last)
        self.last_path = self.run_dir / "last_model.pth"
        self.primary_path = self.run_dir / "best_model.pth"

    def resume_path(self, iteration: int) -> Path:
        return checkpoint_path(self.run_dir, iteration)

    def best_path(self, list_name: str) -> Path:
        return self.run_dir / ("best_model.pth" if list_name == self.config.select else f"best_model_{list_name}.pth")

    def metadata(self, iteration: int, list_name: str, score: float | None, method_state: dict) -> dict:
        config = self.config
        return {
            "dataset": config.dataset,
            "num_classes": config.num_classes,
            "method": config.method,
            "iteration": iteration,
            "config": asdict(config),
            "selection": {"select": list_name, "protocol": PROTOCOLS[list_name], "metric": "mean foreground Dice",
                          "list": list_name, "score": score, "iteration": iteration},
            "inference": self.inference,
            "method_state": method_state,
        }

    @contextlib.contextmanager
    def naming_the_last_good_checkpoint(self):
        """A write the disk refused: its error also says where a re-run continues from (the files are intact)."""
        try:
            yield
        except WriteFailed as exc:
            saved = list_checkpoints(self.run_dir)
            last = f"{saved[-1][1]} (iteration {saved[-1][0]})" if saved else "none yet, it starts again"
            raise WriteFailed(f"{exc}; then re-run the same command: it continues from the newest good checkpoint, "
                              f"{last}") from None

    def save_resume(self, network, state: ResumeState) -> Path:
        with self.naming_the_last_good_checkpoint():
            return self._save_resume(network, state)

    def _save_resume(self, network, state: ResumeState) -> Path:
        path = save_resume_checkpoint(self.run_dir, network, state, {
            "dataset": self.config.dataset, "num_classes": self.config.num_classes, "method": self.config.method,
            "config": asdict(self.config)})
        prune_checkpoints(self.run_dir, self.config.keep_checkpoints)
        return path

    def save_model(self, path: Path, network, iteration: int, list_name: str, score: float | None,
                   method_state: dict) -> None:
        with self.naming_the_last_good_checkpoint():
            save_checkpoint(path, network, **self.metadata(iteration, list_name, score, method_state))

    @staticmethod
    def restore(state: dict, path: Path, method, optimizer, parameter_names: list[str]) -> None:
        """Weights, optimiser and method state of a resume checkpoint."""
        if state["parameter_names"] != parameter_names:  # find_resume refused the checkpoints without names
            raise UserError(f"cannot resume from {path}: its optimiser state belongs to other parameters; start a "
                            f"new run with another --run_dir")
        method.network.load_state_dict(state["state_dict"])
        method.load_method_state(state["method_state"])
        optimizer.load_state_dict(state["optimizer"])
        restore_zero_gradients(optimizer)

    def restore_best_files(self, bests: dict[str, Best], iteration: int, network, method_state: dict,
                           logger) -> None:
        """After a crash between a resume checkpoint and its best file, rebuild that best file from the weights."""
        for best in bests.values():
            if not best.found:
                continue
            stored = read_checkpoint(best.path).get("iteration") if best.path.exists() else None
            if stored == best.iteration:
                continue
            if best.iteration == iteration:  # the resumed weights are exactly the best ones
                self.save_model(best.path, network, iteration, best.list_name, best.score, method_state)
                logger.info("rewrote %s from the resume checkpoint (iteration %d)", best.path.name, iteration)
            else:
                logger.warning("%s holds iteration %s, the run state says %d", best.path.name, stored, best.iteration)

    def write_result(self, bests: dict[str, Best], best_score: float | None, best_iteration: int,
                     seconds: float) -> None:
        """result.json marks a finished run (tools such as reproduce.py look for it)."""
        config = self.config
        result = {
            "finished": True,
            "dataset": config.dataset,
            "method": config.method,
            "labelnum": config.labelnum,
            "seed": config.seed,
            "max_iteration": config.max_iteration,
            "select": config.select,
            "protocol": config.protocol,
            "best_checkpoint": self.primary_path.name,
            "best_score": best_score,
            "best_iteration": best_iteration,
            "last_checkpoint": self.last_path.name,
            "selections": {n: {**b.to_dict(), "checkpoint": b.path.name, "protocol": PROTOCOLS[n]}
                           for n, b in bests.items() if b.found},
            "seconds_this_session": round(seconds, 1),
        }
        with self.naming_the_last_good_checkpoint():
            write_text_atomic(self.run_dir / "result.json", json.dumps(result, indent=2) + "\n")
