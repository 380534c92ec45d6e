"""Speed options: precision, channels-last, compile, optimizer kernels, fast sliding window, crop without copies,
the bench script; and that none of them changes results beyond the stated tolerance (fp32 vs bf16)."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import test_la
import train_la
from dataloaders import LAVolumes, get_dataset, make_synthetic_la, read_list
from dataloaders.transforms import LATrainTransform, random_crop, random_rot_flip
from evaluation import evaluate_cases
from inference import InferenceSettings, Predictor
from methods import Batch, MethodSettings, StepContext, build_method
from networks import build_network
from networks.speed import prepare_network
from training.optim import build_sgd
from training.precision import Precision
from utils.sliding_window import sliding_window_predict, window_counts, window_starts

REPO = Path(__file__).resolve().parents[1]
TINY_VNET = {"in_channels": 1, "num_classes": 2, "base_filters": 4, "dropout": True}
TINY_UNET = {"in_channels": 1, "num_classes": 4, "channels": [4, 8, 8, 16, 16]}

# Stated tolerance of fp32 vs bf16 inference on a fixed checkpoint: mean Dice within 1 point (0.01), and at
# least 99 % of the voxels get the same label.
BF16_DICE_TOLERANCE = 0.01
BF16_MIN_LABEL_AGREEMENT = 0.99


# --- precision -------------------------------------------------------------------------------------------

def test_precision_rejects_unknown_mode():
    with pytest.raises(ValueError, match="choose from: bf16, fp16, off"):
        Precision("fp8")


def test_precision_off_is_plain_fp32_backward_and_step():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(3, 2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(5, 3)
    opt_plain = torch.optim.SGD(nets[0].parameters(), lr=0.1, momentum=0.9)
    nets[0](x).square().sum().backward()
    opt_plain.step()
    precision = Precision("off")
    opt = torch.optim.SGD(nets[1].parameters(), lr=0.1, momentum=0.9)
    with precision.autocast():
        loss = nets[1](x).square().sum()
    assert loss.dtype == torch.float32
    assert precision.backward_and_step(loss, opt) is True
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_precision_bf16_autocasts_convolutions():
    precision = Precision("bf16", "cpu")
    conv = torch.nn.Conv3d(1, 2, 3)
    with precision.autocast():
        assert conv(torch.randn(1, 1, 5, 5, 5)).dtype == torch.bfloat16
    assert not precision.scaler.is_enabled()


def test_fp16_skips_overflowing_step_logs_it_and_round_trips_its_state(caplog):
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([param], lr=0.1)
    precision = Precision("fp16", "cpu")
    assert precision.backward_and_step((param * 2.0).sum(), optimizer, iteration=1) is True
    assert torch.allclose(param.detach(), torch.full((3,), 0.8))
    optimizer.zero_grad()
    scale = precision.scaler.get_scale()
    with caplog.at_level(logging.WARNING, logger="training.precision"):
        stepped = precision.backward_and_step((param * float("inf")).sum(), optimizer, iteration=2)
    assert stepped is False and precision.skipped_steps == 1
    assert torch.allclose(param.detach(), torch.full((3,), 0.8))  # unchanged
    assert precision.scaler.get_scale() == scale / 2
    assert "iteration 2" in caplog.text and "skipped" in caplog.text

    state = precision.state_dict()
    restored = Precision("fp16", "cpu")
    restored.load_state_dict(state)
    assert restored.scaler.get_scale() == scale / 2 and restored.skipped_steps == 1
    Precision("bf16").load_state_dict(state)  # another mode ignores the scaler state


# --- memory format, compile, optimizer kernels -----------------------------------------------------------

@pytest.mark.parametrize(("name", "kwargs", "shape"), [("vnet", TINY_VNET, (2, 1, 16, 16, 16)),
                                                        ("unet", TINY_UNET, (2, 1, 32, 32))])
def test_channels_last_network_gives_the_same_outputs(name, kwargs, shape):
    torch.manual_seed(0)
    plain = build_network(name, **kwargs).eval()
    fast = build_network(name, **kwargs).eval()
    fast.load_state_dict(plain.state_dict())
    prepare_network(fast, channels_last=True)
    x = torch.randn(shape)
    with torch.no_grad():
        expected, got = plain(x), fast(x)
    memory_format = torch.channels_last_3d if len(shape) == 5 else torch.channels_last
    conv_weights = [p for p in fast.parameters() if p.ndim == len(shape)]
    assert conv_weights and all(w.is_contiguous(memory_format=memory_format) for w in conv_weights)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    assert list(fast.state_dict()) == list(plain.state_dict())


def test_compiled_network_keeps_names_and_outputs():
    torch.manual_seed(0)
    net = build_network("unet", **TINY_UNET).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = net(x).logits
    keys = list(net.state_dict())
    prepare_network(net, compile=True, compile_backend="eager")  # eager: tests the wiring, no C++ toolchain
    with torch.no_grad():
        torch.testing.assert_close(net(x).logits, expected)
    assert list(net.state_dict()) == keys
    method = build_method("ss_net", net, MethodSettings(num_classes=TINY_UNET.get("num_classes", 4)))
    # the heads beside the compiled network
    assert method.heads.projection_head(torch.randn(3, net.feature_channels)).shape == (3, 32)


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_optimizer_kernels_give_the_official_update(impl):
    torch.manual_seed(0)
    reference = torch.nn.Linear(4, 3)
    other = torch.nn.Linear(4, 3)
    other.load_state_dict(reference.state_dict())
    optimizers = [build_sgd(reference.parameters(), 0.01), build_sgd(other.parameters(), 0.01, impl=impl)]
    for _ in range(3):
        x = torch.randn(6, 4)
        for net, optimizer in zip((reference, other), optimizers, strict=True):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="choose from"):
        build_sgd(reference.parameters(), 0.01, impl="apex")


def test_ss_net_step_under_bf16_channels_last_is_finite_and_close():
    """One SS-Net loss under bf16 + channels-last vs fp32: same terms to bf16 accuracy, gradients everywhere."""
    settings = MethodSettings(num_classes=2)
    losses = []
    for amp, channels_last in (("off", False), ("bf16", True)):
        torch.manual_seed(0)
        net = build_network("vnet", **TINY_VNET)
        prepare_network(net, channels_last=channels_last)
        method = build_method("ss_net", net, settings)
        torch.manual_seed(1)
        images = torch.randn(4, 1, 16, 16, 16)
        labels = (images[:2, 0] > 0).long()
        precision = Precision(amp)
        with precision.autocast():
            output = method(Batch(images[:2], labels), Batch(images[2:], None), StepContext(6000))
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
        precision.backward_and_step(output.loss, optimizer)
        assert torch.isfinite(output.loss)
        assert all(p.grad is not None for p in net.encoder.parameters())
        losses.append(float(output.terms["supervised"]))
    assert losses[1] == pytest.approx(losses[0], abs=0.02)


# --- sliding window ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "patch", "stride"), [((13, 11, 9), (6, 6, 5), (3, 2, 2)),
                                                         ((148, 132, 88), (112, 112, 80), (18, 18, 4)),
                                                         ((10, 7), (4, 3), (3, 2))])
def test_window_counts_equal_counting_window_by_window(shape, patch, stride):
    starts = [window_starts(s, p, st) for s, p, st in zip(shape, patch, stride, strict=True)]
    brute = np.zeros(shape, dtype=np.float32)
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape)):
        brute[tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))] += 1
    assert np.array_equal(window_counts(shape, patch, starts).numpy(), brute)


def test_sliding_window_bf16_is_close_to_fp32():
    torch.manual_seed(0)
    net = build_network("vnet", **{**TINY_VNET, "dropout": False}).eval()
    image = torch.randn(1, 24, 20, 18)

    def logits(amp):
        precision = Precision(amp)

        def predict(x):
            with precision.autocast():
                return net(x).logits
        return predict

    fp32 = sliding_window_predict(logits("off"), image, (16, 16, 16), (4, 4, 2), 2, batch_size=1)
    bf16 = sliding_window_predict(logits("bf16"), image, (16, 16, 16), (4, 4, 2), 2, batch_size=8)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.02)


# --- data pipeline -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40, 36, 30), (20, 40, 16)])  # the second needs padding
def test_la_crop_from_views_equals_rotating_the_whole_volume_first(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    label = (image > 0.5).astype(np.uint8)
    image_before, label_before = image.copy(), label.copy()
    transform = LATrainTransform((24, 24, 16))
    for seed in range(12):
        got_image, got_label = transform(image, label, np.random.default_rng(seed))
        generator = np.random.default_rng(seed)
        rotated = random_rot_flip(image, label, generator)  # copies, as before
        want_image, want_label = random_crop(*rotated, (24, 24, 16), generator)
        assert np.array_equal(got_image, want_image) and np.array_equal(got_label, want_label)
        assert got_image.flags.c_contiguous and got_image.shape == (24, 24, 16)
    assert np.array_equal(image, image_before) and np.array_equal(label, label_before)  # cached arrays untouched


# --- fp32 vs bf16 on a fixed checkpoint --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_synthetic(tmp_path_factory):
    """A small V-Net trained (supervised, 80 iterations) on synthetic LA-like cases, and their root."""
    root = make_synthetic_la(tmp_path_factory.mktemp("synthetic_la"), n_train=3, n_test=2, shape=(40, 40, 32),
                             n_val=1)
    torch.manual_seed(0)
    net = build_network("vnet", **TINY_VNET)
    method = build_method("supervised", net, MethodSettings(num_classes=2))
    optimizer = build_sgd(net.parameters(), lr=0.05)
    dataset = LAVolumes(root, read_list(root / "train.list"), transform=LATrainTransform((32, 32, 32)))
    for iteration in range(1, 81):
        samples = [dataset[(i % 3, iteration * 3 + i)] for i in range(2)]
        images = torch.stack([s["image"] for s in samples])
        labels = torch.stack([s["label"] for s in samples])
        output = method(Batch(images, labels), None, StepContext(iteration))
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    return net.eval(), root


def test_fp32_and_bf16_test_metrics_agree_on_a_fixed_checkpoint(trained_synthetic):
    net, root = trained_synthetic
    dataset = get_dataset("LA")
    cases = read_list(root / "test.list")
    evaluations = {}
    for amp in ("off", "bf16"):
        settings = InferenceSettings((32, 32, 32), (8, 8, 4), batch_size=4 if amp == "off" else 8,
                                     largest_component=True, amp=amp)
        evaluations[amp] = evaluate_cases(Predictor(net, dataset, settings), root, cases, keep_predictions=True)
    fp32, bf16 = evaluations["off"], evaluations["bf16"]
    assert fp32.mean_dice() > 0.6, "the fixture network should have learned the synthetic task"
    assert abs(bf16.mean_dice() - fp32.mean_dice()) <= BF16_DICE_TOLERANCE
    for a, b in zip(fp32.cases, bf16.cases, strict=True):
        assert (a.prediction == b.prediction).mean() >= BF16_MIN_LABEL_AGREEMENT
        assert abs(a.rows[0]["jaccard"] - b.rows[0]["jaccard"]) <= BF16_DICE_TOLERANCE


# --- flags end to end, bench, GPU script ----------------------------------------------------------------

def test_speed_flags_train_and_test_on_real_la(la_root, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    train_ids = read_list(la_root / "train.list")[:4]  # 2 labeled, 1 unlabeled, 1 validation
    (lists / "train.list").write_text("\n".join(train_ids) + "\n")
    (lists / "val.list").write_text(train_ids[-1] + "\n")
    (lists / "test.list").write_text(read_list(la_root / "test.list")[0] + "\n")
    run = tmp_path / "run"
    code = train_la.main(["--root_path", str(la_root), "--lists_dir", str(lists), "--labelnum", "2",
                          "--max_iteration", "2", "--eval_every", "2", "--eval_start", "2", "--run_dir", str(run),
                          "--patch_size", "32,32,32", "--base_filters", "4", "--stride", "16,16,16",
                          "--eval_stride", "32,32,32", "--amp", "bf16", "--channels_last", "1",
                          "--optimizer_impl", "foreach", "--num_workers", "0", "--device", "cpu", "--no_progress"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["amp"] == "bf16" and config["channels_last"] and config["eval_stride"] == [32, 32, 32]
    last = torch.load(run / "last_model.pth", weights_only=True)
    newest = torch.load(sorted((run / "checkpoints").glob("iter_*.pth"))[-1], weights_only=True)
    assert newest["extra"]["precision"]["mode"] == "bf16"  # resume checkpoints carry the precision state
    assert last["inference"]["stride"] == [16, 16, 16]  # testing uses --stride, not the eval stride
    out = tmp_path / "eval"
    code = test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(lists / "test.list"), "--output_dir", str(out), "--device", "cpu",
                         "--no_progress", "--amp", "bf16", "--channels_last", "1", "--batch_size", "8"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference"]["amp"] == "bf16" and summary["inference"]["stride"] == [16, 16, 16]


def test_eval_stride_is_validated():
    code = train_la.main(["--eval_stride", "200,18,4", "--device", "cpu", "--root_path", "/nonexistent"])
    assert code == 2


@pytest.mark.slow  # ~30 s: several benchmark worker processes
def test_bench_tiny_writes_json(tmp_path):
    from benchmarks import bench
    out = tmp_path / "bench.json"
    args = bench.build_parser().parse_args(["--tiny", "--device", "cpu", "--output", str(out),
                                            "--eval_stride", "16,16,16"])
    bench.run_benchmark(args)
    report = json.loads(out.read_text())
    assert {"device", "device_name", "torch", "settings", "train", "test", "projection_LA_full_run"} <= set(report)
    for dataset in ("LA", "ACDC"):
        entry = report["train"][dataset]
        assert {"official", "fast", "speedup"} <= set(entry)
        assert {"iterations_per_s", "seconds_per_iteration"} <= set(entry["official"])
    test = report["test"]["LA"]
    assert {"official", "fast", "speedup", "label_agreement_fast_vs_official"} <= set(test)
    assert {"volumes_per_s", "windows_per_s", "windows_per_volume"} <= set(test["fast"])
    assert {"official_s", "fast_s", "fast_eval_stride_s", "speedup"} <= set(report["projection_LA_full_run"])


def test_deterministic_training_does_not_nan_fill_every_new_tensor(monkeypatch):
    """--deterministic 1 keeps deterministic kernels but not the NaN fill of new tensors (17 % of a CPU LA step);
    on a GPU it also fixes cuBLAS's workspace (the CUDA-only branch, run here without a GPU)."""
    from training.trainer import configure_determinism
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory,
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        configure_determinism(True, torch.device("cpu"))
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.utils.deterministic.fill_uninitialized_memory
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        configure_determinism(True, torch.device("cpu"))
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        configure_determinism(True, torch.device("cuda"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and not torch.backends.cudnn.benchmark
        configure_determinism(False, torch.device("cuda"))
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]


def test_start_up_imports_no_optional_heavy_module():
    """train_la.py -h, refused flags and test_la.py do not pay for TensorBoard (boto3 through its stub), nor test_la.py
    for the training package; a run imports TensorBoard when it opens its folder."""
    code = ("import sys, train_la, test_la; heavy = ['torch.utils.tensorboard', 'tensorboard', 'boto3', 'medpy', "
            "'nibabel', 'matplotlib']; print([m for m in heavy if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    code = "import sys, test_la; print('training' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stdout + done.stderr


@pytest.mark.slow  # ~15 s: the trainer and two step-benchmark processes
def test_program_benchmark_runs_the_trainer_beside_its_step(tmp_path):
    from benchmarks import program
    from dataloaders import make_synthetic_la
    data = make_synthetic_la(tmp_path / "data", n_train=5, n_test=1, shape=(24, 24, 20), seed=2, n_val=1)
    out = tmp_path / "program.json"
    assert program.main(["--dataset", "LA", "--root_path", str(data), "--lists_dir", str(data), "--patch_size",
                         "16,16,16", "--base_filters", "4", "--iterations", "2", "--warmup", "1", "--threads", "1",
                         "--device", "cpu", "--official", "1", "--profile", "5", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    run = report["program"]
    assert len(run["iteration_seconds"]) == 2 and len(run["warmup_seconds"]) == 1
    assert run["num_workers"] == 0 and run["largest_child_peak_gib"] is None  # the CPU default: the loader thread
    assert run["patch_size"] == [16, 16, 16] and run["network_kwargs"]["base_filters"] == 4
    assert 0 < run["start_to_first_batch_s"] and 0 < run["peak_memory_gib"]
    assert len(run["profile"]) == 5 and any(row["operator"].startswith("aten::") for row in run["profile"])
    assert "aten::fill_" not in [row["operator"] for row in run["profile"][:3]]  # no NaN fill of every new tensor
    for mode in ("default", "official"):
        assert report[f"step_{mode}"]["seconds_per_iteration"] > 0
        assert set(report[f"program_over_step_{mode}"]) == {"time", "memory"}
    assert program.main(["--dataset", "LA", "--output", str(tmp_path / "x.json")]) == 2  # no --root_path


@pytest.mark.slow  # ~20 s: four test-script and official-loop processes
def test_test_program_benchmark_times_the_whole_command_beside_the_official_loop(tmp_path):
    import h5py

    from benchmarks import test_program
    from dataloaders import make_synthetic_la
    from networks import build_network
    from networks.loading import save_checkpoint
    la = make_synthetic_la(tmp_path / "la", n_train=1, n_test=1, shape=(24, 24, 20), seed=3, n_val=0)
    save_checkpoint(tmp_path / "la.pth", build_network("vnet", num_classes=2, base_filters=2), dataset="LA",
                    num_classes=2)
    out = tmp_path / "la.json"
    assert test_program.main(["--dataset", "LA", "--checkpoint", str(tmp_path / "la.pth"), "--root_path", str(la),
                              "--list", str(la / "test.list"), "--patch_size", "16,16,16", "--stride", "8,8,8",
                              "--threads", "1", "--device", "cpu", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cases"] == 1 and len(report["official"]) == len(report["command"]) == 1
    assert report["official"][0]["seconds"] > 0 and report["command"][0]["peak_memory_gib"] > 0.05
    assert "--patch_size" in report["command"][0]["command"] and "Dice" in report["command"][0]["output_tail"]
    assert report["speedup_command_over_official"] > 0

    acdc = tmp_path / "acdc"
    (acdc / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for case in ("patient001_frame01", "patient001_frame02"):
        with h5py.File(acdc / "data" / f"{case}.h5", "w") as f:
            f["image"] = rng.random((3, 40, 36), dtype=np.float32)
            f["label"] = rng.integers(0, 4, (3, 40, 36)).astype(np.uint8)
    (tmp_path / "acdc.list").write_text("patient001_frame01\npatient001_frame02\n")
    save_checkpoint(tmp_path / "acdc.pth", build_network("unet", num_classes=4, channels=[4, 8, 8, 16, 16]),
                    dataset="ACDC", num_classes=4)
    assert test_program.main(["--dataset", "ACDC", "--checkpoint", str(tmp_path / "acdc.pth"), "--root_path",
                              str(acdc), "--list", str(tmp_path / "acdc.list"), "--patch_size", "32,32",
                              "--threads", "1", "--device", "cpu", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["cases"] == 2 and len(report["official"][0]["case_seconds"]) == 2
    assert test_program.main(["--dataset", "LA", "--output", str(out)]) == 2  # no --checkpoint / --root_path


@pytest.mark.slow
def test_gpu_cell_runs_with_tiny_shapes_on_a_cpu_and_skips_what_is_done(tmp_path):
    from dataloaders import make_synthetic_la
    data = make_synthetic_la(tmp_path / "data", n_train=5, n_test=1, shape=(40, 36, 34), seed=4, n_val=1)
    results = tmp_path / "results"
    env = {**os.environ, "DEVICE": "cpu", "TINY": "1", "DATA": str(data), "CELL": str(tmp_path / "cell"),
           "RESULTS": str(results), "OMP_NUM_THREADS": "1"}
    script = REPO / "benchmarks" / "gpu_cell.sh"
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ("log.txt", "config.json", "result.json", "summary.json", "metrics.csv", "test_table.txt",
                 "timing.json"):
        assert (results / name).is_file(), name
    config = json.loads((results / "config.json").read_text())
    assert config["select"] == "test" and config["amp"] == "bf16" and config["channels_last"]
    assert config["optimizer_impl"] == "fused" and config["max_iteration"] == 6
    assert "mean Dice" in (results / "log.txt").read_text() and "Dice" in (results / "test_table.txt").read_text()
    again = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "already trained" in again.stdout
    missing = subprocess.run(["bash", str(script)], env={**env, "DATA": str(tmp_path / "nowhere")},
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no LA data" in missing.stderr


@pytest.mark.slow
def test_gpu_check_runs_in_its_reduced_cpu_form(tmp_path):
    from dataloaders import make_synthetic_la
    data = make_synthetic_la(tmp_path / "data", n_train=5, n_test=1, shape=(40, 36, 34), seed=4, n_val=1)
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "DEVICE": "cpu", "TINY": "1", "DATA": str(data), "OUT": str(out), "WORK": str(tmp_path / "w"),
           "RESULTS": str(results), "DATA_ACDC": str(tmp_path / "no_acdc"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((results / "gpu_check.json").read_text())
    assert report["bench"]["train"]["LA"] and report["program_la"]["program"]["seconds_per_iteration"] > 0
    assert report["test_fp32"] and report["test_bf16"] and report["torchrun"] == "ok"
    assert report["program_acdc"] is None  # no ACDC data given


@pytest.mark.parametrize("tiny", ["0", pytest.param("1", marks=pytest.mark.slow)])  # the GPU form by default
def test_gpu_check_dry_run_parses_the_flags_of_every_command_it_runs(tmp_path, tiny):
    """DRY_RUN=1 lists the project commands gpu_check.sh runs (bench, bench --compile on a GPU, train_la.py,
    test_la.py in fp32 and bf16, the program benchmark, predict.py, torchrun's train_la.py) and parses each
    with its own parser: a renamed flag fails here, not on the GPU."""
    env = {**os.environ, "DRY_RUN": "1", "TINY": tiny, "PYTHON": sys.executable,
           "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work")}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checked = re.findall(r"^flags parse: (.+)$", result.stdout, re.M)
    benches = ["-m benchmarks.bench"] * (1 if tiny == "1" else 2)  # the reduced form skips the compile bench
    # + the program benchmark, predict.py and the train_la.py that torchrun starts (no ACDC data here)
    assert checked == [*benches, "train_la.py", "test_la.py", "test_la.py", "-m benchmarks.program", "predict.py",
                       "train_la.py"], result.stdout
    assert not (tmp_path / "work" / "run").exists()  # nothing ran


def test_flag_check_names_a_wrong_flag_a_wrong_value_and_a_missing_script(tmp_path, capsys, monkeypatch):
    from benchmarks import flag_check

    monkeypatch.chdir(REPO)
    commands = tmp_path / "commands.txt"
    commands.write_text("train_la.py --labelnum 2 --amp bf16 --run_dir 'a folder/run'\n"
                        "test_la.py --checkpoint x.pth --amp bf17\n"
                        "-m benchmarks.bench --tiny --no_such_flag 1\n"
                        "no_such_script.py --x\n")
    assert flag_check.main([str(commands)]) == 2
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert lines[0] == "flags parse: train_la.py"
    assert lines[1].startswith("REJECTED: test_la.py: argument --amp: invalid choice 'bf17'; did you mean 'bf16'?")
    assert lines[2].startswith("REJECTED: -m benchmarks.bench: unrecognized arguments: --no_such_flag 1")
    assert lines[3] == "REJECTED: no_such_script.py: no such script: no_such_script.py" and len(lines) == 4
    assert "error: 3 of 4 commands" in printed.err
    commands.write_text("test_la.py --checkpoint x.pth\n")
    assert flag_check.main([str(commands)]) == 0
