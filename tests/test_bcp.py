"""BCP (methods/bcp.py): its pure pieces on hand-made tensors, the pairing of its pasted images, its recipe, and
its two stages in one run folder (training/stages.py), resumed bit for bit across the stage boundary."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import train_acdc
import train_la
import training.stages as stages
import training.trainer as trainer
from dataloaders import make_synthetic_la
from methods import Batch, MethodSettings, StepContext, build_method
from methods.bcp import copy_paste, copy_paste_loss, cuboid_corner, cuboid_keep_mask, pseudo_labels
from methods.ema import ema_update_constant
from networks import build_network
from training.config import make_config
from utils.errors import UserError
from utils.losses import masked_dice_loss


# -- the cuboid and the pasted images ----------------------------------------------------------------------------------
def test_cuboid_keep_mask_by_hand():
    keep = cuboid_keep_mask((6, 6, 3), corner=(1, 2, 0))  # cuboid int(6 * 2/3) = 4, 4, int(3 * 2/3) = 2
    assert keep.dtype == torch.int64 and keep.shape == (6, 6, 3)
    expected = torch.ones(6, 6, 3, dtype=torch.int64)
    expected[1:5, 2:6, 0:2] = 0
    assert torch.equal(keep, expected)


def test_cuboid_corner_covers_its_range_and_follows_the_generator():
    draws = [cuboid_corner((112, 112, 80), generator=torch.Generator().manual_seed(s)) for s in range(400)]
    for axis, high in enumerate((112 - 74, 112 - 74, 80 - 53)):  # BCP's LA: randint(0, 112 - 74), (0, 80 - 53)
        values = {d[axis] for d in draws}
        assert min(values) == 0 and max(values) == high - 1  # exclusive upper end, as NumPy's randint
    again = cuboid_corner((112, 112, 80), generator=torch.Generator().manual_seed(7))
    assert again == draws[7]
    assert cuboid_corner((3, 2)) == (0, 0)  # one possible corner: the cuboid 2 x 1 at the start


def test_copy_paste_puts_the_second_image_in_the_cuboid():
    keep = cuboid_keep_mask((3, 3), corner=(1, 1))  # cuboid 2 x 2 at [1:3, 1:3]
    outside, inside = torch.full((2, 1, 3, 3), 1.0), torch.full((2, 1, 3, 3), 5.0)
    pasted = copy_paste(outside, inside, keep)
    assert pasted[:, 0, 1:, 1:].eq(5).all() and pasted[:, 0, 0, :].eq(1).all() and pasted[:, 0, :, 0].eq(1).all()
    labels = copy_paste(torch.zeros(2, 3, 3, dtype=torch.int64), torch.full((2, 3, 3), 2), keep)
    assert labels.dtype == torch.int64 and labels.sum() == 2 * 4 * 2


# -- the losses --------------------------------------------------------------------------------------------------------
def test_masked_dice_loss_by_hand_per_sample_and_pooled():
    # two samples of two voxels, two classes; probabilities of class 1 and labels chosen by hand
    p1 = torch.tensor([[0.8, 0.4], [0.2, 0.6]])
    probs = torch.stack([1 - p1, p1], dim=1)  # (2, 2, 2)
    labels = torch.tensor([[1, 0], [1, 1]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the last voxel of sample 2 is outside the region
    # per sample and class, plain sums: sample 1: c0: 2*0.6 / (0.2+0.6+1) ; c1: 2*0.8 / (1.2+1)
    #                                     sample 2: c0: 0 / 0.8 ; c1: 2*0.2 / (0.2+1)
    expected = 1 - (1.2 / 1.8 + 1.6 / 2.2 + 0.0 + 0.4 / 1.2) / 4
    got = masked_dice_loss(probs, labels, mask, per_sample=True, squared=False, smooth=0.0)
    assert math.isclose(float(got), expected, rel_tol=1e-6)
    # pooled over the batch, squared: c0: 2*0.6 / (0.04+0.36+0.64 + 1); c1: 2*(0.8+0.2) / (0.64+0.16+0.04 + 2)
    expected = 1 - (1.2 / 2.04 + 2.0 / 2.84) / 2
    got = masked_dice_loss(probs, labels, mask, per_sample=False, squared=True, smooth=0.0)
    assert math.isclose(float(got), expected, rel_tol=1e-6)


def test_copy_paste_loss_weighs_each_region():
    keep = cuboid_keep_mask((3, 3), corner=(0, 0))  # cuboid 2 x 2 (4 voxels), 5 outside
    logits = torch.zeros(1, 2, 3, 3)  # uniform: CE = ln 2 on every voxel, whatever the labels
    zeros, ones = torch.zeros(1, 3, 3, dtype=torch.int64), torch.ones(1, 3, 3, dtype=torch.int64)
    _, ce = copy_paste_loss(logits, zeros, ones, keep, 1.0, 0.5, per_sample=True, squared=False, smooth=1e-5)
    assert math.isclose(float(ce), 1.5 * math.log(2), rel_tol=1e-6)  # a mean per region, then weighted
    confident = torch.where(copy_paste(zeros, ones, keep).bool(), 1.0, -1.0).unsqueeze(1) * torch.tensor(
        [-30.0, 30.0]).view(1, 2, 1, 1)  # right in both regions
    dice, ce = copy_paste_loss(confident, zeros, ones, keep, 1.0, 0.5, per_sample=True, squared=False, smooth=1e-5)
    assert float(dice) < 1e-6 and float(ce) < 1e-6
    wrong_inside = copy_paste_loss(confident, zeros, zeros, keep, 1.0, 0.5, per_sample=True, squared=False,
                                   smooth=1e-5)
    weightless = copy_paste_loss(confident, zeros, zeros, keep, 1.0, 0.0, per_sample=True, squared=False,
                                 smooth=1e-5)
    assert float(wrong_inside[1]) > 10 and float(weightless[1]) < 1e-6  # the cuboid's labels count by its weight


# -- pseudo labels and the teacher -------------------------------------------------------------------------------------
def test_pseudo_labels_threshold_argmax_and_largest_component():
    tie = torch.zeros(1, 2, 4, 4)  # p = 0.5 everywhere: LA's p >= 0.5 says foreground, argmax says background
    assert pseudo_labels(tie, 0.5, largest_component=False).eq(1).all()
    assert pseudo_labels(tie, None, largest_component=False).eq(0).all()
    labels = torch.tensor([[0, 1, 1, 0, 2],
                           [0, 1, 0, 0, 2],
                           [0, 0, 0, 1, 0],
                           [2, 0, 0, 0, 0]])
    logits = nn.functional.one_hot(labels, 3).permute(2, 0, 1).unsqueeze(0).float() * 10
    kept = pseudo_labels(logits, None)
    expected = labels.clone()
    expected[2, 3] = 0  # class 1: the single voxel is not 8-connected to the blob of 3
    expected[3, 0] = 0  # class 2: the single corner voxel goes, the pair stays
    assert torch.equal(kept[0], expected)
    diagonal = torch.tensor([[1, 0], [0, 1]])  # full connectivity: one component, kept whole
    logits = nn.functional.one_hot(diagonal, 2).permute(2, 0, 1).unsqueeze(0).float() * 10
    assert torch.equal(pseudo_labels(logits, 0.5)[0], diagonal)


def test_ema_update_with_a_constant_decay_with_and_without_buffers():
    teacher, student = nn.BatchNorm1d(1), nn.BatchNorm1d(1)
    with torch.no_grad():
        teacher.weight.fill_(1.0), student.weight.fill_(3.0)
        teacher.running_mean.fill_(0.0), student.running_mean.fill_(2.0)
        teacher.num_batches_tracked.fill_(3), student.num_batches_tracked.fill_(5)
    ema_update_constant(teacher, student, 0.99)
    assert math.isclose(float(teacher.weight.detach()), 0.99 + 0.03, rel_tol=1e-6)  # no warm-up: 0.99 from the first
    assert float(teacher.running_mean) == 0.0  # parameters only (BCP's LA)
    ema_update_constant(teacher, student, 0.99, buffers=True)  # the whole state (BCP's ACDC)
    assert math.isclose(float(teacher.running_mean), 0.02, rel_tol=1e-6)
    assert int(teacher.num_batches_tracked) == 3  # 3.02 truncated, as loading the averaged state dict does


# -- the method ---------------------------------------------------------------------------------------------------
CASES = {"3d": ("vnet", {"num_classes": 2, "base_filters": 4}, (16, 16, 16)),
         "2d": ("unet", {"num_classes": 4}, (16, 16))}


def make(case: str, stage: str = "train"):
    name, kwargs, spatial = CASES[case]
    torch.manual_seed(0)
    network = build_network(name, **kwargs).train()
    dice = {"dice_squared_denominator": case == "2d", "dice_smooth": 1e-5 if case == "3d" else 1e-10}
    method = build_method("bcp", network, MethodSettings(num_classes=kwargs["num_classes"], consistency=0.5,
                                                         stage=stage, **dice))
    # constant images: labeled a = 1, labeled b = 2, unlabeled a = 3, unlabeled b = 4
    labeled = torch.cat([torch.full((2, 1, *spatial), 1.0), torch.full((2, 1, *spatial), 2.0)])
    unlabeled = torch.cat([torch.full((2, 1, *spatial), 3.0), torch.full((2, 1, *spatial), 4.0)])
    labels = torch.randint(0, kwargs["num_classes"], (4, *spatial))
    return network, method, Batch(labeled, labels), Batch(unlabeled, None)


@pytest.mark.parametrize(("case", "expected"), [
    ("3d", [(1.0, 3.0), (4.0, 2.0)]),  # LA: (labeled a | unlabeled a pasted) then (unlabeled b | labeled b)
    ("2d", [(3.0, 1.0), (2.0, 4.0)]),  # ACDC: (unlabeled a | labeled a) then (labeled b | unlabeled b)
])
def test_self_train_pastes_the_recipes_pairs_in_its_order(case, expected):
    network, method, labeled, unlabeled = make(case)
    inputs = []
    network.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    method(labeled, unlabeled, StepContext(1)).loss.backward()
    assert len(inputs) == 2  # two student forwards (the teacher's two are its own module's)
    volume = math.prod(inputs[0].shape[2:])
    cuboid = math.prod(int(s * 2 / 3) for s in inputs[0].shape[2:])
    for pasted, (outside, inside) in zip(inputs, expected, strict=True):
        assert set(pasted.unique().tolist()) == {outside, inside}
        assert int((pasted == inside).sum()) == 2 * cuboid and int((pasted == outside).sum()) == 2 * (volume - cuboid)
    assert torch.equal(inputs[0] == expected[0][1], inputs[1] == expected[1][1])  # one cuboid for both


def test_ground_truth_and_pseudo_label_regions_are_weighted_apart():
    network, method, labeled, unlabeled = make("3d")
    method.supervised_weight, method.settings.consistency = 0.0, 0.0
    assert float(method(labeled, unlabeled, StepContext(1)).loss.detach()) == 0.0  # both regions weightless
    method.supervised_weight = 1.0
    assert float(method(labeled, unlabeled, StepContext(2)).loss.detach()) > 0.0


def test_pretrain_stage_has_no_teacher_and_mixes_the_labeled_halves():
    network, method, labeled, unlabeled = make("3d", stage="pretrain")
    assert method.teacher is None and "teacher" not in method.method_state()
    inputs = []
    network.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    out = method(labeled, unlabeled, StepContext(1))
    assert len(inputs) == 1 and set(inputs[0].unique().tolist()) == {1.0, 2.0}  # labeled a | labeled b pasted
    assert set(out.terms) == {"total", "dice", "ce"} and out.labeled_logits is None
    method.after_optimizer_step(StepContext(1))  # nothing to average


def test_self_train_teacher_starts_as_the_student_and_averages_with_0_99():
    network, method, labeled, unlabeled = make("2d")
    before = [p.detach().clone() for p in method.teacher.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, network.parameters(), strict=True))
    method(labeled, unlabeled, StepContext(1)).loss.backward()
    torch.optim.SGD(network.parameters(), lr=0.1).step()
    method.after_optimizer_step(StepContext(1))
    for old, t, s in zip(before, method.teacher.parameters(), network.parameters(), strict=True):
        torch.testing.assert_close(t, old * 0.99 + 0.01 * s.detach())


def test_odd_or_unequal_batches_are_refused():
    network, method, labeled, unlabeled = make("3d")
    with pytest.raises(UserError, match="labeled_bs must be even"):
        method(Batch(labeled.image[:3], labeled.label[:3]), unlabeled, StepContext(1))
    with pytest.raises(UserError, match="labeled_bs must be even"):
        method(labeled, Batch(unlabeled.image[:2], None), StepContext(1))


# -- the recipe in the config ------------------------------------------------------------------------------------------
def test_recipes_in_the_config():
    la = make_config("LA", method="bcp")
    assert (la.batch_size, la.labeled_bs, la.pretrain_iterations, la.max_iteration, la.lr_policy, la.lr_step) == \
        (8, 4, 2000, 15000, "step", 2500)
    assert (la.consistency, la.dice_include_background, la.dice_squared_denominator, la.dice_smooth) == \
        (0.5, True, False, 1e-5)
    acdc = make_config("ACDC", method="bcp")
    assert (acdc.batch_size, acdc.labeled_bs, acdc.pretrain_iterations, acdc.max_iteration, acdc.lr_policy) == \
        (24, 12, 10000, 30000, "constant")
    assert (acdc.dice_squared_denominator, acdc.dice_smooth) == (True, 1e-10)
    shared = make_config("LA", method="bcp", schedule="shared", pretrain_iterations=None)
    assert shared.pretrain_iterations == 2000  # the first stage is part of the method
    assert make_config("ACDC", method="bcp", pretrain_iterations=30000).pretrain_iterations == 30000  # before b62b10b
    with pytest.raises(UserError, match="pretrain_iterations applies to methods with a pre-train stage"):
        make_config("LA", method="ss_net", pretrain_iterations=10)
    assert make_config("LA", method="ss_net").pretrain_iterations == 0


def test_stage_configs_of_a_two_stage_run(tmp_path):
    config = make_config("LA", method="bcp", run_dir=str(tmp_path / "run"), max_iteration=30, eval_start=20)
    pretrain, main = stages.stage_configs(config)
    assert (pretrain.stage, pretrain.max_iteration, pretrain.lr_policy, pretrain.eval_start) == \
        ("pretrain", 2000, "constant", 0)
    assert Path(pretrain.run_dir) == tmp_path / "run" / "pretrain" and pretrain.select == config.select
    assert (main.stage, main.max_iteration, main.lr_policy, main.eval_start) == ("train", 30, "step", 20)
    assert Path(main.init_from) == tmp_path / "run" / "pretrain" / "best_model.pth"
    assert stages.stage_configs(make_config("LA", method="ss_net")) == [make_config("LA", method="ss_net")]


def test_a_finished_pretrain_is_skipped_only_at_its_length(tmp_path):
    config = make_config("LA", method="bcp", run_dir=str(tmp_path / "run"), pretrain_iterations=4)
    pretrain = stages.stage_configs(config)[0]
    assert not stages.stage_finished(pretrain)
    folder = tmp_path / "run" / "pretrain"
    folder.mkdir(parents=True)
    (folder / "best_model.pth").write_bytes(b"")
    (folder / "result.json").write_text(json.dumps({"finished": True, "max_iteration": 4}))
    assert stages.stage_finished(pretrain)
    longer = stages.stage_configs(make_config("LA", method="bcp", run_dir=str(tmp_path / "run"),
                                              pretrain_iterations=6))[0]
    assert not stages.stage_finished(longer)  # the trainer resumes and extends it
    assert not stages.stage_finished(stages.stage_configs(config)[1])  # the main stage always goes to the trainer


# -- two stages end to end, and resumed across the boundary ------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_la_bcp")
    return make_synthetic_la(root, n_train=8, n_test=1, shape=(24, 24, 20), seed=3, n_val=1)


def flags(data: Path, run_dir: Path) -> list[str]:
    return ["--method", "bcp", "--root_path", str(data), "--lists_dir", str(data), "--labelnum", "4",
            "--pretrain_iterations", "4", "--max_iteration", "4", "--patch_size", "16,16,16", "--base_filters", "4",
            "--stride", "8,8,8", "--batch_size", "8", "--labeled_bs", "4", "--eval_every", "2", "--eval_start", "2",
            "--save_every", "2", "--num_workers", "0", "--device", "cpu", "--no_progress", "--image_every", "0",
            "--run_dir", str(run_dir)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def reference(synthetic, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("bcp_reference") / "run"
    assert train_la.main(flags(synthetic, run_dir)) == 0
    return run_dir


def test_two_stages_in_one_run_folder(reference):
    pretrain = reference / "pretrain"
    for folder in (reference, pretrain):
        assert (folder / "best_model.pth").is_file() and (folder / "result.json").is_file()
    assert json.loads((pretrain / "config.json").read_text())["stage"] == "pretrain"
    saved = json.loads((reference / "config.json").read_text())
    assert saved["stage"] == "train" and saved["init_from"].endswith("pretrain/best_model.pth")
    assert "pre-train stage: 4 iterations" in (pretrain / "log.txt").read_text()
    assert "main stage: 4 iterations from" in (reference / "log.txt").read_text()
    # the main stage started from the pre-train's best weights: its teacher's first state was those weights
    best = json.loads((pretrain / "result.json").read_text())
    assert best["best_iteration"] in (2, 4)
    assert not torch.equal(next(iter(weights(reference / "last_model.pth").values())),
                           next(iter(weights(pretrain / "best_model.pth").values())))


def test_stopped_at_the_stage_boundary_then_rerun_ends_bitwise_equal(synthetic, reference, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    all_stages = stages.stage_configs
    monkeypatch.setattr(trainer, "stage_configs", lambda config: all_stages(config)[:1])  # stop after the pre-train
    assert train_la.main(flags(synthetic, run_dir)) == 0
    assert (run_dir / "pretrain" / "result.json").is_file() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(trainer, "stage_configs", all_stages)
    loaded = []

    def load(network, path, _load=stages.load_initial_weights):
        _load(network, path)
        loaded.append({k: v.clone() for k, v in network.state_dict().items()})

    monkeypatch.setattr(trainer, "load_initial_weights", load)
    assert train_la.main(flags(synthetic, run_dir)) == 0  # the same command: the main stage from the boundary
    best = weights(run_dir / "pretrain" / "best_model.pth")  # the main stage starts from the pre-train's best
    assert len(loaded) == 1 and all(torch.equal(loaded[0][k], best[k]) for k in best)
    for name in ("pretrain/best_model.pth", "best_model.pth", "last_model.pth"):
        a, b = weights(reference / name), weights(run_dir / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ours, theirs = (torch.load(sorted((d / "checkpoints").glob("iter_*.pth"))[-1], weights_only=True)
                    for d in (run_dir, reference))
    assert ours["losses"] == theirs["losses"]
    for key, value in ours["method_state"]["teacher"].items():
        assert torch.equal(value, theirs["method_state"]["teacher"][key]), key
    # --resume RUN_DIR works too (the run is complete: nothing changes)
    assert train_la.main(["--resume", str(run_dir), "--no_progress"]) == 0


def test_acdc_two_stages_on_cpu(tmp_path, acdc_root):
    run = tmp_path / "run"
    assert train_acdc.main(["--method", "bcp", "--root_path", str(acdc_root), "--lists_dir", str(acdc_root),
                            "--labelnum", "1", "--pretrain_iterations", "2", "--max_iteration", "2",
                            "--eval_every", "2", "--eval_start", "2", "--patch_size", "64,64", "--batch_size", "4",
                            "--labeled_bs", "2", "--num_workers", "0", "--device", "cpu", "--no_progress",
                            "--image_every", "0", "--run_dir", str(run)]) == 0
    assert (run / "pretrain" / "best_model.pth").is_file() and (run / "best_model.pth").is_file()


def test_the_benchmark_times_bcps_step():
    from benchmarks.bench import build_training

    options = {"amp": "off", "channels_last": False, "compile": False, "optimizer_impl": "default"}
    step = build_training("default", "LA", {"num_classes": 2, "base_filters": 4}, (16, 16, 16), 8, 4,
                          torch.device("cpu"), options, method="bcp")
    assert step.method.name == "bcp" and step.method.teacher is not None and len(step.unlabeled) == 4
    calls = []
    step.method.network.register_forward_pre_hook(lambda module, args: calls.append(1))
    step.method.teacher.register_forward_pre_hook(lambda module, args: calls.append(2))
    step(1)
    assert sorted(calls) == [1, 1, 2, 2]  # two student and two teacher forwards per step


@pytest.mark.slow
@pytest.mark.parametrize(("kill_at", "main_iterations"), [
    (3, 4),  # the pre-train's iteration 3 (after its checkpoint of iteration 2): the first iteration 3 of the run
    (5, 6),  # the main stage's iteration 5 (after its checkpoint of iteration 4): the pre-train has only 4
])
def test_sigkill_in_either_stage_then_rerun_ends_bitwise_equal(kill_at, main_iterations, synthetic, tmp_path):
    import subprocess
    import sys

    from test_resume import same_threads_env

    def with_length(run_dir: Path) -> list[str]:
        args = flags(synthetic, run_dir)
        args[args.index("--max_iteration") + 1] = str(main_iterations)
        return args

    repo = Path(__file__).resolve().parents[1]
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    assert train_la.main(with_length(reference)) == 0
    result = subprocess.run([sys.executable, str(repo / "tests" / "crash_runner.py"), "step", str(kill_at), "--",
                             *with_length(run_dir)], cwd=repo, env=same_threads_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    assert (run_dir / "pretrain" / "result.json").exists() == (kill_at > 4)
    assert train_la.main(with_length(run_dir)) == 0
    for name in ("pretrain/best_model.pth", "best_model.pth", "last_model.pth"):
        a, b = weights(reference / name), weights(run_dir / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    iterations = [int(line.split("iteration ")[1].split(":")[0]) for line in (run_dir / "log.txt").read_text()
                  .splitlines() if "] iteration " in line and "mean Dice" not in line]
    assert iterations == list(range(1, main_iterations + 1))  # every main-stage iteration once in the log


@pytest.mark.slow
def test_two_processes_train_both_stages(synthetic, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = make_synthetic_la(tmp_path / "data", n_train=8, n_test=1, shape=(40, 40, 24), seed=3, n_val=1)
    args = flags(data, tmp_path / "run")
    args[args.index("--patch_size") + 1] = "32,32,16"  # 1 + 1 samples per rank and half: BN needs > 1 value
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(port), "train_la.py", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    run = tmp_path / "run"
    assert (run / "pretrain" / "best_model.pth").is_file() and (run / "best_model.pth").is_file()
    assert "torchrun: 2 processes, each 2 labeled + 2 unlabeled" in (run / "log.txt").read_text()


@pytest.mark.slow
def test_la_two_stages_on_real_cases_then_test(la_root, tmp_path, capsys):
    import test_la

    lists = tmp_path / "lists"
    lists.mkdir()
    train_ids = (la_root / "train.list").read_text().split()[:6]
    (lists / "train.list").write_text("\n".join(train_ids) + "\n")
    (lists / "val.list").write_text(train_ids[-1] + "\n")
    (lists / "test.list").write_text((la_root / "test.list").read_text().split()[0] + "\n")
    run = tmp_path / "run"
    assert train_la.main(["--method", "bcp", "--root_path", str(la_root), "--lists_dir", str(lists), "--labelnum",
                          "2", "--batch_size", "4", "--labeled_bs", "2", "--pretrain_iterations", "2",
                          "--max_iteration", "2", "--eval_every", "2", "--eval_start", "2", "--patch_size",
                          "32,32,32", "--base_filters", "4", "--stride", "32,32,32", "--num_workers", "0",
                          "--device", "cpu", "--no_progress", "--image_every", "0", "--run_dir", str(run)]) == 0
    out = tmp_path / "eval"
    assert test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(la_root), "--list",
                         str(lists / "test.list"), "--output_dir", str(out), "--device", "cpu",
                         "--no_progress"]) == 0
    assert "left atrium" in capsys.readouterr().out and (out / "metrics.csv").is_file()
