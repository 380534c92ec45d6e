"""Baselines (Mean Teacher, UA-MT, SASSNet, DTC, URPC, MC-Net): method contract on tiny 2D/3D inputs for every
method (SS-Net and supervised included), method-specific pieces on hand-made tensors, network options, config
wiring and a short train -> test on real LA and ACDC cases per method."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch

import test_acdc
import test_la
import train_acdc
import train_la
from dataloaders import read_list
from methods import METHODS, Batch, MethodSettings, StepContext, build_method
from methods.ema import ema_decay_at, ema_update, make_teacher
from networks import build_network
from networks.perturbations import element_dropout, feature_dropout, feature_noise
from training.flags import build_train_parser, config_from_args
from training.presets import PRESETS
from utils.losses import (
    masked_mse,
    mutual_consistency_loss,
    predictive_entropy,
    sdf_to_probability,
    sharpen,
    signed_distance_map,
    uncertainty_rectified_consistency,
    uncertainty_threshold,
)

ALL_METHODS = sorted(METHODS)
BASELINES = ["dtc", "mc_net", "mean_teacher", "sassnet", "ua_mt", "urpc"]
TEACHER_METHODS = ["mean_teacher", "ua_mt"]
CASES = {
    # name: (network, kwargs, image shape (B, 1, *spatial), settings)
    "3d": ("vnet", {"num_classes": 2, "base_filters": 4}, (4, 1, 32, 32, 32), MethodSettings(num_classes=2)),
    "2d": ("unet", {"num_classes": 4}, (4, 1, 32, 32),
           MethodSettings(num_classes=4, dice_include_background=True, dice_squared_denominator=True,
                          dice_smooth=1e-10, consistency_rampup=200, lds_discrepancy="class_mean_dice",
                          magnitude=6.0)),
}


def make(case: str, method: str, seed: int = 0):
    name, kwargs, shape, settings = CASES[case]
    torch.manual_seed(seed)
    network = build_network(name, **kwargs, **METHODS[method].network_options(len(shape) - 2)).train()
    settings = copy.deepcopy(settings)
    settings.max_iteration = 100
    m = build_method(method, network, settings)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(shape, generator=g)
    labels = torch.randint(0, kwargs["num_classes"], (shape[0] // 2, *shape[2:]), generator=g)
    if method == "ss_net":  # a filled memory, as after the first correct predictions
        for c in range(1, network.num_classes):
            m.memory.prototypes[c] = torch.randn(32, 32, generator=g)
    if method == "ua_mt":  # a confident teacher (as after warm-up), so that some voxels pass the threshold
        with torch.no_grad():
            m.teacher.decoder.out_conv.bias[0] += 8.0
    return network, m, Batch(images[: shape[0] // 2], labels), Batch(images[shape[0] // 2 :], None)


def unused_parameters(m, method: str) -> set[str]:
    """Parameters the published method never uses: SS-Net's background selectors (no background prototypes).
    Every other method trains exactly its network: no parameter may be left without a gradient."""
    if method != "ss_net":
        return set()
    prefixes = ("contrastive_class_selector_0.", "contrastive_class_selector_memory0.")
    return {n for n, _ in m.trained_parameters() if n.startswith(prefixes)}


def zero_gradient_parameters(m, method: str) -> set[str]:
    """SS-Net's memory selectors S^mem_c (c >= 1): the official prototype weights are 1, so they sit in the
    graph with a zero gradient (weight decay and momentum still apply, as in the official step)."""
    if method != "ss_net":
        return set()
    return {n for n, _ in m.trained_parameters() if n.startswith("contrastive_class_selector_memory")
            and not n.startswith("contrastive_class_selector_memory0.")}


# -- the method contract, every method, 2D and 3D ----------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_loss_is_finite_and_every_used_parameter_gets_a_gradient(case, method):
    network, m, labeled, unlabeled = make(case, method)
    out = m(labeled, unlabeled, StepContext(6000))
    assert math.isfinite(out.loss.item()) and out.loss.requires_grad
    assert all(not v.requires_grad and math.isfinite(float(v)) for v in out.terms.values())
    if method != "bcp":  # BCP forwards pasted images only: no panel of the labeled batch
        assert out.labeled_logits.shape == (len(labeled), network.num_classes, *labeled.image.shape[2:])
    out.loss.backward()
    unused, zero_gradient = unused_parameters(m, method), zero_gradient_parameters(m, method)
    missing = [n for n, p in m.trained_parameters()
               if n not in unused | zero_gradient and (p.grad is None or p.grad.abs().sum() == 0)]
    assert missing == []
    assert all(p.grad is None for n, p in m.trained_parameters() if n in unused)
    assert all(p.grad is not None and not p.grad.any() for n, p in m.trained_parameters() if n in zero_gradient)
    assert m.leaves_parameters_unused == bool(unused)  # DDP searches for unused parameters only where needed


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m != "supervised"])
def test_unlabeled_term_alone_moves_the_student(case, method):
    """Supervised part zeroed: the gradient is non-zero and (except SS-Net, whose labeled separation term uses
    the labels) does not depend on the labels at all."""
    grads = []
    for flip in (False, True):
        network, m, labeled, unlabeled = make(case, method)
        m.supervised_weight = 0.0
        m.settings.consistency = 1.0
        labels = (network.num_classes - 1 - labeled.label) if flip else labeled.label
        m(Batch(labeled.image, labels), unlabeled, StepContext(10**6)).loss.backward()
        first_conv = next(p for n, p in network.named_parameters() if n.startswith("encoder.") and p.ndim > 1)
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
        grads.append(first_conv.grad.clone())
    if method != "ss_net":
        torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_teacher_gets_no_gradient_and_changes_only_through_ema(case, method):
    network, m, labeled, unlabeled = make(case, method)
    teacher = m.teacher
    assert teacher is not network and all(not p.requires_grad for p in teacher.parameters())
    assert next(teacher.parameters()).device == next(network.parameters()).device
    before = [p.detach().clone() for p in teacher.parameters()]
    m(labeled, unlabeled, StepContext(500)).loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    torch.optim.SGD(network.parameters(), lr=0.1).step()
    assert all(torch.equal(a, p) for a, p in zip(before, teacher.parameters(), strict=True))  # the step alone
    m.after_optimizer_step(StepContext(5))  # EMA step 4: a = min(1 - 1/5, 0.99) = 0.8
    for old, t, s in zip(before, teacher.parameters(), network.parameters(), strict=True):
        torch.testing.assert_close(t, 0.8 * old + 0.2 * s.detach())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_two_seeded_steps_are_deterministic(case, method):
    def run():
        network, m, labeled, unlabeled = make(case, method, seed=3)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
        losses = []
        for iteration in (1, 2):
            out = m(labeled, unlabeled, StepContext(iteration))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            m.after_optimizer_step(StepContext(iteration))
            losses.append(out.loss.item())
        return losses, next(network.parameters()).detach().clone()

    (losses_a, weights_a), (losses_b, weights_b) = run(), run()
    assert losses_a == losses_b and torch.equal(weights_a, weights_b)


@pytest.mark.parametrize("method", ["mean_teacher", "sassnet"])
def test_method_state_resumes_exactly_through_a_weights_only_checkpoint(method):
    """Teacher / discriminator + its Adam state survive torch.save -> torch.load(weights_only=True)."""
    network, m, labeled, unlabeled = make("2d", method)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01)

    def step(method_, net, iteration):
        out = method_(labeled, unlabeled, StepContext(iteration))
        for p in net.parameters():
            p.grad = None
        out.loss.backward()
        torch.optim.SGD(net.parameters(), lr=0.01).step()
        method_.after_optimizer_step(StepContext(iteration))
        return out.loss.item()

    step(m, network, 1)
    del optimizer
    buffer = io.BytesIO()
    torch.save({"network": network.state_dict(), "method": m.method_state()}, buffer)
    rng = torch.get_rng_state()
    expected = [step(m, network, 2), step(m, network, 3)]
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    network_b, m_b, _, _ = make("2d", method, seed=7)  # different initial weights, overwritten by the load
    network_b.load_state_dict(saved["network"])
    m_b.load_method_state(saved["method"])
    torch.set_rng_state(rng)
    assert [step(m_b, network_b, 2), step(m_b, network_b, 3)] == expected
    extra_a = m.teacher if method == "mean_teacher" else m.discriminator
    extra_b = m_b.teacher if method == "mean_teacher" else m_b.discriminator
    for a, b in zip(extra_a.state_dict().values(), extra_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_sassnet_discriminator_is_trained_by_its_own_optimizer():
    network, m, labeled, unlabeled = make("3d", "sassnet")
    before = [p.detach().clone() for p in m.discriminator.parameters()]
    assert not any(p is q for p in m.discriminator.parameters() for q in network.parameters())
    out = m(labeled, unlabeled, StepContext(1))
    out.loss.backward()
    m.after_optimizer_step(StepContext(1))
    assert all(not torch.equal(a, p) for a, p in zip(before, m.discriminator.parameters(), strict=True))
    assert network.training and "discriminator_previous" in m(labeled, unlabeled, StepContext(2)).terms


def test_methods_refuse_missing_unlabeled_data_and_wrong_networks():
    for method in BASELINES:
        _, m, labeled, _ = make("2d", method)
        with pytest.raises(ValueError, match="unlabeled"):
            m(labeled, None, StepContext(1))
    with pytest.raises(ValueError, match="sdf_head=True"):
        build_method("dtc", build_network("unet", num_classes=4), CASES["2d"][3])


# -- method-specific pieces on hand-made tensors ----------------------------------------------------------------
def test_signed_distance_map_of_a_sphere():
    grid = np.indices((25, 25, 25)) - 12
    radius = np.sqrt((grid**2).sum(0))
    labels = torch.from_numpy((radius <= 6).astype(np.int64))[None]
    sdf = signed_distance_map(labels, num_classes=2)[0, 0].numpy()
    assert sdf.shape == (25, 25, 25) and sdf.min() >= -1 and sdf.max() <= 1
    assert sdf[12, 12, 12] == pytest.approx(-1.0)  # deepest inside point
    assert sdf[0, 0, 0] == pytest.approx(1.0)  # farthest outside point
    assert sdf[12, 12, 18] == 0.0 and sdf[12, 12, 19] > 0  # inner boundary (radius 6) and just outside
    assert (sdf[radius < 5] < 0).all() and (sdf[radius > 6.5] > 0).all()
    # along a ray the map grows monotonically from the centre outwards
    assert np.all(np.diff(sdf[12, 12, 12:]) > 0)
    soft = sdf_to_probability(torch.from_numpy(sdf)).numpy()
    assert soft[radius < 5].min() > 0.999 and soft[radius > 6.5].max() < 1e-3


def test_signed_distance_map_per_foreground_class_and_absent_class():
    labels = torch.zeros(2, 16, 16, dtype=torch.long)
    labels[0, 2:6, 2:6] = 1
    labels[0, 9:14, 9:14] = 3
    sdf = signed_distance_map(labels, num_classes=4)
    assert sdf.shape == (2, 3, 16, 16)
    assert sdf[0, 0, 3, 3] < 0 and sdf[0, 0, 11, 11] > 0  # class 1 channel
    assert sdf[0, 2, 11, 11] < 0 and sdf[0, 2, 3, 3] > 0  # class 3 channel
    assert torch.count_nonzero(sdf[0, 1]) == 0 and torch.count_nonzero(sdf[1]) == 0  # absent classes: zeros


def test_ua_mt_threshold_schedule():
    low = (0.75 + 0.25 * math.exp(-5.0)) * math.log(2.0)
    assert uncertainty_threshold(0, 6000) == pytest.approx(low) == pytest.approx(0.5210, abs=1e-4)
    assert uncertainty_threshold(6000, 6000) == pytest.approx(math.log(2.0))
    assert uncertainty_threshold(10**6, 6000) == pytest.approx(math.log(2.0))
    values = [uncertainty_threshold(t, 6000) for t in range(0, 6001, 500)]
    assert values == sorted(values)
    mid = (0.75 + 0.25 * math.exp(-5.0 * 0.25)) * math.log(2.0)  # t = t_max / 2
    assert uncertainty_threshold(3000, 6000) == pytest.approx(mid)


def test_predictive_entropy_and_masked_mse():
    probs = torch.tensor([[0.5, 1.0], [0.5, 0.0]]).view(1, 2, 2)  # voxel 0 uniform, voxel 1 certain
    entropy = predictive_entropy(probs)
    assert entropy.shape == (1, 1, 2)
    assert entropy[0, 0, 0] == pytest.approx(math.log(2.0), abs=1e-5)
    assert entropy[0, 0, 1] == pytest.approx(0.0, abs=1e-5)
    student = torch.tensor([[0.2, 0.9], [0.8, 0.1]]).view(1, 2, 2)
    mask = torch.tensor([0.0, 1.0]).view(1, 1, 2)
    # only voxel 1 counts: ((0.9 - 1)^2 + (0.1 - 0)^2) / (2 x 1 voxel), the recipes' divisor 2
    assert masked_mse(student, probs, mask).item() == pytest.approx(0.01)


def test_mc_net_sharpening():
    p = torch.tensor([0.0, 0.3, 0.5, 0.6, 1.0])
    sharp = sharpen(p, temperature=0.1)
    expected = 0.6**10 / (0.6**10 + 0.4**10)
    assert sharp[2] == pytest.approx(0.5) and sharp[3] == pytest.approx(expected) and expected > 0.98
    assert sharp[0] == 0.0 and sharp[4] == 1.0 and sharp[1] < 0.001
    torch.testing.assert_close(sharpen(p, temperature=1.0), p)
    assert torch.all(torch.diff(sharp) >= 0)


def test_mc_net_mutual_consistency_by_hand():
    one_hot = torch.tensor([1.0, 0.0]).view(1, 2, 1)
    assert mutual_consistency_loss([one_hot, one_hot.clone()], 0.1).item() == 0.0
    a, b = torch.tensor([0.6, 0.4]).view(1, 2, 1), torch.tensor([0.5, 0.5]).view(1, 2, 1)
    s = 0.6**10 / (0.6**10 + 0.4**10)
    by_hand = ((0.6 - 0.5) ** 2 + (0.4 - 0.5) ** 2) / 2 + ((0.5 - s) ** 2 + (0.5 - (1 - s)) ** 2) / 2
    assert mutual_consistency_loss([a, b], 0.1).item() == pytest.approx(by_hand)


def test_urpc_consistency_is_zero_for_agreeing_outputs_and_positive_otherwise():
    logits = torch.randn(2, 4, 8, 8)
    agreeing = uncertainty_rectified_consistency([logits, logits.clone(), logits.clone()])
    assert agreeing.item() == pytest.approx(0.0, abs=1e-8)
    other = uncertainty_rectified_consistency([logits, torch.randn(2, 4, 8, 8)])
    assert other.item() > 0


def test_ema_schedule_and_update():
    assert ema_decay_at(0, 0.99) == 0.0 and ema_decay_at(1, 0.99) == 0.5 and ema_decay_at(10**4, 0.99) == 0.99
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.99, step=0)  # the first update copies the student
    assert torch.equal(teacher.weight, student.weight) and not teacher.weight.requires_grad


def test_urpc_feature_perturbations():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 8) + 0.1
    noisy = feature_noise(x)
    ratio = noisy / x - 1.0  # the same noise map for both samples, within +-0.3
    torch.testing.assert_close(ratio[0], ratio[1])
    assert ratio.abs().max() <= 0.3 + 1e-6
    x[:, :, 4, 4] = 10.0  # the most activated location is dropped
    dropped = feature_dropout(x)
    assert torch.all(dropped[:, :, 4, 4] == 0) and torch.count_nonzero(dropped) > 0


def test_urpc_deepest_perturbation_is_element_wise_dropout():
    """SSL4MIS `UNet_URPC` uses F.dropout(x, 0.5): single elements are zeroed, not whole channels."""
    torch.manual_seed(0)
    x = torch.ones(2, 16, 8, 8, 8)
    dropped = element_dropout(x)
    assert set(dropped.unique().tolist()) == {0.0, 2.0}  # kept elements scaled by 1 / (1 - p)
    per_channel = (dropped == 0).flatten(2).float().mean(dim=2)
    assert per_channel.min() > 0.2 and per_channel.max() < 0.8  # every channel partly dropped
    assert 0.45 < (dropped == 0).float().mean() < 0.55


def test_mc_net_second_vnet_decoder_upsamples_with_aligned_corners():
    """MC-Net's `Upsampling_function` (VNet.py:102): trilinear with align_corners=True."""
    up = build_network("vnet", base_filters=4, num_decoders=2).decoder2.block_five_up.conv[0]
    assert isinstance(up, torch.nn.Upsample) and up.mode == "trilinear" and up.align_corners is True


# -- network options and config wiring --------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", BASELINES)
def test_config_carries_network_options_and_the_recipe_weight(method, case):
    dataset = "LA" if case == "3d" else "ACDC"
    args = build_train_parser(dataset, "").parse_args(["--method", method])
    config = config_from_args(args, dataset)
    dims = len(config.patch_size)
    assert config.network_kwargs.items() >= METHODS[method].network_options(dims).items()
    assert config.consistency == METHODS[method].recipe(dims).weight(config.labelnum)
    rebuilt = build_network(config.network, **config.network_kwargs)
    assert rebuilt.network_config()["kwargs"] == {**rebuilt.network_kwargs()}
    assert build_network(**{"name": config.network}, **rebuilt.network_config()["kwargs"]).num_decoders == \
        rebuilt.num_decoders
    overridden = config_from_args(build_train_parser(dataset, "").parse_args(["--method", method,
                                                                             "--consistency", "0.5"]), dataset)
    assert overridden.consistency == 0.5
    assert config_from_args(build_train_parser(dataset, "").parse_args([]), dataset).consistency == \
        PRESETS[dataset].values["consistency"]


# -- end to end: a few iterations on real data, then the test script from the checkpoint alone --------------------
TINY_LA = ["--patch_size", "32,32,32", "--base_filters", "4", "--stride", "32,32,32", "--num_workers", "0",
           "--device", "cpu", "--no_progress", "--image_every", "0"]


@pytest.fixture(scope="module")
def la_lists(la_root, tmp_path_factory):
    """4 real training cases (2 labeled, 1 unlabeled, 1 validation) and 1 test case."""
    folder = tmp_path_factory.mktemp("baseline_lists")
    train_ids = read_list(la_root / "train.list")[:4]
    (folder / "train.list").write_text("\n".join(train_ids) + "\n")
    (folder / "val.list").write_text(train_ids[-1] + "\n")
    (folder / "test.list").write_text(read_list(la_root / "test.list")[0] + "\n")
    return folder


@pytest.mark.slow  # ~30 s for the six; the ACDC runs below stay in the default suite
@pytest.mark.parametrize("method", BASELINES)
def test_la_train_then_test(method, la_root, la_lists, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_la.main(["--root_path", str(la_root), "--lists_dir", str(la_lists), "--labelnum", "2",
                          "--method", method, "--max_iteration", "2", "--eval_every", "2", "--eval_start", "2",
                          "--run_dir", str(run), *TINY_LA]) == 0
    checkpoint = torch.load(run / "best_model.pth", weights_only=True)
    assert checkpoint["method"] == method
    assert checkpoint["network"]["kwargs"].items() >= METHODS[method].network_options(3).items()
    out = tmp_path / "eval"
    assert test_la.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(la_root),
                         "--list", str(la_lists / "test.list"), "--output_dir", str(out), "--device", "cpu",
                         "--no_progress"]) == 0
    assert "left atrium" in capsys.readouterr().out and (out / "metrics.csv").is_file()


@pytest.mark.parametrize("method", BASELINES)
def test_acdc_train_then_test(method, acdc_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_acdc.main(["--root_path", str(acdc_root), "--lists_dir", str(acdc_root), "--labelnum", "1",
                            "--method", method, "--max_iteration", "2", "--eval_every", "2", "--eval_start", "2",
                            "--patch_size", "64,64", "--batch_size", "4", "--labeled_bs", "2",
                            "--num_workers", "0", "--device", "cpu", "--no_progress", "--image_every", "0",
                            "--run_dir", str(run)]) == 0
    checkpoint = torch.load(run / "last_model.pth", weights_only=True)
    assert checkpoint["network"]["kwargs"].items() >= METHODS[method].network_options(2).items()
    out = tmp_path / "eval"
    assert test_acdc.main(["--checkpoint", str(run / "best_model.pth"), "--root_path", str(acdc_root),
                           "--list", str(acdc_root / "test.list"), "--output_dir", str(out), "--device", "cpu",
                           "--no_progress"]) == 0
    assert "Myo" in capsys.readouterr().out and (out / "metrics.csv").is_file()
