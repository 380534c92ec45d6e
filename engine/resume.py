"""Resume checkpoints: everything a run needs to continue exactly where it stopped.

A run folder keeps its newest few `checkpoints/iter_<N>.pth`. Each one is written atomically (a crash never
leaves a file that looks complete but is not), so after a SIGKILL the newest readable one is the state of
iteration N: weights, optimiser, method state (prototype memory, teachers, ...), best-so-far selection, the
loss history and every random generator. The sampler needs no state: batch t is a pure function of (seed, t).
"""
from __future__ import annotations

import random
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, read_checkpoint

CHECKPOINT_FOLDER = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pth$")

# Settings that may change between the first start of a run and its resumption: they move the run to
# another machine or extend it, but do not change the math of the iterations already done.
RUNTIME_FIELDS = frozenset({
    "root_path", "device", "num_workers", "progress", "max_iteration", "save_every", "keep_checkpoints",
    "eval_batch_size", "image_every", "resume", "run_dir", "allow_world_size_change",
})


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
            raise ValueError(f"the checkpoint holds {len(cuda_states)} CUDA generator states but "
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
    extra: dict = field(default_factory=dict)  # e.g. the AMP grad scaler


def save_resume_checkpoint(run_dir: Path, network: torch.nn.Module, state: ResumeState, metadata: dict) -> Path:
    path = checkpoint_path(run_dir, state.iteration)
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT,
        "kind": "resume",
        "network": network.network_config(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "optimizer": state.optimizer_state,
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
        except ValueError as exc:
            if log:
                log(f"skipping unreadable checkpoint {path}: {exc}")
            continue
        if obj.get("kind") != "resume" or obj.get("iteration") != iteration:
            if log:
                log(f"skipping {path}: not a resume checkpoint of iteration {iteration}")
            continue
        return path, obj
    return None


def config_differences(saved: dict, current: dict) -> list[str]:
    """'field: saved -> current' for every setting that changes the math of a resumed run.

    A key missing from an older run's config counts as the value it ran with: engine.config.legacy_settings for
    settings that came later with another default, else that field's default."""
    from engine.config import TrainConfig, legacy_settings  # late: engine.config imports RUNTIME_FIELDS lazily

    defaults = {f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
                for f in fields(TrainConfig)}
    saved = {**saved, **legacy_settings(saved)} if saved else saved
    keys = (set(saved) | set(current)) - RUNTIME_FIELDS

    def value(config: dict, key: str):
        return config[key] if key in config else defaults.get(key, MISSING)

    return [f"{k}: {value(saved, k)!r} -> {value(current, k)!r}" for k in sorted(keys)
            if value(saved, k) != value(current, k)]
