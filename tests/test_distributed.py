"""Multi-process training (torchrun + DDP): two gloo processes on the CPU, tiny V-Net, synthetic LA data."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_la
from dataloaders import TwoStreamBatchSampler, make_synthetic_la
from methods import build_method
from networks import build_network
from training.checkpoints import list_checkpoints
from training.config import make_config
from training.distributed import (
    Distributed,
    RankBatchSampler,
    convert_to_sync_bn,
    distributed_session,
    environment_ranks,
    rank_device,
)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# -- pure pieces (no process group) ----------------------------------------------------------------------

def test_rank_shards_are_disjoint_cover_the_global_batch_and_keep_the_composition():
    sampler = TwoStreamBatchSampler(range(8), range(8, 20), batch_size=8, labeled_bs=4, seed=3)
    shards = [RankBatchSampler(sampler, rank, 2) for rank in range(2)]
    labeled_seen = []
    for t in range(sampler.iterations_per_epoch):
        batch = sampler.batch_at(t)
        parts = [s.batch_at(t) for s in shards]
        for part in parts:  # every rank: 2 labeled first, then 2 unlabeled
            assert len(part) == 4 and all(i < 8 for i, _ in part[:2]) and all(i >= 8 for i, _ in part[2:])
        assert not set(parts[0]) & set(parts[1])  # disjoint (index, sample seed) pairs
        assert sorted(parts[0] + parts[1]) == sorted(batch)  # together: exactly the one-process batch
        labeled_seen += [i for part in parts for i, _ in part[:2]]
    assert sorted(labeled_seen) == list(range(8))  # one labeled epoch: every labeled sample once, on one rank
    # the iterator resumes at start_iteration like the wrapped sampler
    resumed = RankBatchSampler(TwoStreamBatchSampler(range(8), range(8, 20), 8, 4, seed=3, start_iteration=5), 1, 2)
    assert next(iter(resumed)) == shards[1].batch_at(5)


def test_a_global_batch_that_does_not_split_evenly_is_refused():
    sampler = TwoStreamBatchSampler(range(6), range(6, 20), batch_size=4, labeled_bs=2, seed=0)
    with pytest.raises(ValueError, match="--labeled_bs 2 does not divide by 4 processes"):
        RankBatchSampler(sampler, 0, 4)
    with pytest.raises(ValueError, match="unlabeled part of --batch_size 3 does not divide by 2"):
        Distributed(rank=0, world_size=2, device=torch.device("cpu")).check_job(5, 2, sync_bn=False)


def test_one_process_is_untouched():
    assert environment_ranks({}) == (0, 1, 0)
    assert environment_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with distributed_session("cpu", environ={}) as ddp:
        assert not ddp.active and ddp.is_main and ddp.device is None
        sampler = TwoStreamBatchSampler(range(4), range(4, 8), 4, 2, seed=0)
        assert ddp.shard(sampler) is sampler
        rows = torch.randn(3, 2)
        assert ddp.gather_rows(rows) is rows and ddp.resume_extra() == {}
        assert ddp.mean_over_ranks(1.5, {"a": 2.0}) == (1.5, {"a": 2.0})


def test_device_per_rank_and_clear_refusals():
    assert rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        rank_device("cuda:1", 0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use --device cpu"):
            rank_device("cuda", 0)
    with pytest.raises(ValueError, match="--sync_bn needs GPUs"):
        Distributed(rank=0, world_size=2, device=torch.device("cpu")).check_job(4, 2, sync_bn=True)
    with pytest.raises(ValueError, match="resume it with torchrun --nproc_per_node/--nnodes giving 2"):
        Distributed().check_resume({"extra": {"world_size": 2}}, allow_world_size_change=False)
    Distributed().check_resume({"extra": {"world_size": 2}}, allow_world_size_change=True)


def test_sync_bn_converts_the_backbone_only_and_keeps_checkpoint_keys():
    network = build_network("vnet", num_classes=2, base_filters=4)
    method = build_method("ss_net", network, make_config("LA"))
    keys = list(network.state_dict())
    Distributed(world_size=2, device=torch.device("cpu")).prepare_network(network, sync_bn=True)
    assert list(network.state_dict()) == keys
    synced = {type(m) for m in network.modules()}
    assert torch.nn.SyncBatchNorm in synced and torch.nn.BatchNorm3d not in synced
    assert isinstance(method.heads.projection_head[1], torch.nn.BatchNorm1d)  # heads: data-dependent calls
    assert convert_to_sync_bn(build_network("unet")) is not None


# -- two gloo processes ------------------------------------------------------------------------------------

def test_ddp_step_matches_one_process_and_memory_and_weights_agree_across_ranks():
    """tests/distributed_checks.py: gather/average primitives; one DDP step on a global batch equals a
    one-process step (BN in eval mode); several SS-Net steps keep memory and parameters identical; a stop signal
    on one rank stops every rank."""
    result = torchrun("tests/distributed_checks.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "distributed checks passed" in result.stdout


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_la")
    return make_synthetic_la(root, n_train=8, n_test=2, shape=(24, 24, 20), seed=3, n_val=3)


def flags(data: Path, run_dir: Path, iterations: int) -> list[str]:
    return ["--root_path", str(data), "--lists_dir", str(data), "--labelnum", "2", "--max_iteration",
            str(iterations), "--patch_size", "16,16,16", "--base_filters", "4", "--stride", "8,8,8",
            "--batch_size", "4", "--labeled_bs", "2", "--eval_every", "3", "--eval_start", "3", "--save_every", "2",
            "--keep_checkpoints", "2", "--select", "val", "--num_workers", "0", "--device", "cpu", "--no_progress",
            "--image_every", "4", "--run_dir", str(run_dir)]


def state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow  # ~17 s: two torchrun launches; the DDP step itself is checked in the default suite
def test_two_process_run_writes_once_and_resumes_exactly(synthetic, tmp_path, capsys):
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    done = torchrun("train_la.py", *flags(synthetic, reference, 8))
    assert done.returncode == 0, done.stderr[-5000:]
    # only rank 0 wrote: one log, one TensorBoard file, the newest --keep_checkpoints resume checkpoints
    assert sorted(p.name for p in reference.iterdir()) == sorted(
        ["best_model.pth", "checkpoints", "config.json", "environment.json", "last_model.pth", "log.txt",
         "result.json", "splits", "tensorboard"])
    assert [i for i, _ in list_checkpoints(reference)] == [6, 8]
    assert len(list((reference / "tensorboard").iterdir())) == 1
    checkpoint = torch.load(list_checkpoints(reference)[-1][1], weights_only=True)
    assert checkpoint["extra"]["world_size"] == 2 and len(checkpoint["extra"]["rng_per_rank"]) == 2
    assert checkpoint["method_state"]["memory"]["prototypes"][1] is not None
    result = json.loads((reference / "result.json").read_text())
    assert result["finished"] and result["best_iteration"] in (3, 6)
    log = (reference / "log.txt").read_text()
    assert log.count("iteration 3: val mean Dice") == 1  # evaluated once per evaluation point
    assert "torchrun: 2 processes, each 1 labeled + 1 unlabeled" in log

    # stop at 4, then extend to 8 with --resume: the same weights as the uninterrupted run
    short = torchrun("train_la.py", *flags(synthetic, run_dir, 4))
    assert short.returncode == 0, short.stderr[-5000:]
    resumed = torchrun("train_la.py", "--resume", str(run_dir), "--max_iteration", "8", "--no_progress")
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    ours, theirs = state(run_dir / "last_model.pth"), state(reference / "last_model.pth")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    ours_final = torch.load(list_checkpoints(run_dir)[-1][1], weights_only=True)
    assert ours_final["losses"] == checkpoint["losses"] and len(ours_final["losses"]) == 8

    # one process refuses to continue a 2-process run (and writes nothing)
    before = sorted(p.name for p in run_dir.rglob("*"))
    assert train_la.main(["--resume", str(run_dir), "--max_iteration", "10", "--no_progress"]) == 2
    assert "trained with 2 process(es)" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.rglob("*")) == before
