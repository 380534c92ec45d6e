"""BatchNorm folded into the convolutions for evaluation (networks/speed.py: fold_batchnorm) and the predictor's
default path that uses it (inference/predictor.py): the same function as the unfolded network up to rounding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dataloaders import get_dataset
from inference import InferenceSettings, Predictor
from networks import build_network
from networks.speed import fold_batchnorm
from utils.sliding_window import sliding_window_predict

TINY_VNET = {"in_channels": 1, "num_classes": 2, "base_filters": 4, "dropout": True}
TINY_UNET = {"in_channels": 1, "num_classes": 4, "channels": [4, 8, 8, 16, 16]}
FLOAT32_TOLERANCE = 1e-4  # relative to the logits' scale; rounding of a few hundred float32 products


def with_trained_looking_norms(network: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine parameters away from their initial 0 / 1 (a fresh network's BatchNorm is
    close to the identity, which would hide a wrong fold), in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
    return network.eval()


def count_norms(network: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in network.modules())


@pytest.mark.parametrize(("name", "kwargs", "shape"), [
    ("vnet", TINY_VNET, (2, 1, 32, 32, 32)),
    ("vnet", {**TINY_VNET, "sdf_head": True}, (1, 1, 32, 32, 16)),
    ("unet", TINY_UNET, (3, 1, 64, 64)),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_folded_network_computes_the_same_outputs(name, kwargs, shape, dtype):
    torch.manual_seed(0)
    network = with_trained_looking_norms(build_network(name, **kwargs)).to(dtype)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    folded = fold_batchnorm(network)
    assert count_norms(network) > 0 and count_norms(folded) == 0  # every BatchNorm of these networks follows a conv
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        reference, result = network(x), folded(x)
    for field in ("logits", "features", "sdf"):
        a, b = getattr(reference, field), getattr(result, field)
        if a is None:
            assert b is None
            continue
        scale = float(a.abs().max())
        tolerance = 1e-10 if dtype == torch.float64 else FLOAT32_TOLERANCE
        assert float((a - b).abs().max()) <= tolerance * scale, field
    # the original is untouched: weights, statistics and its mode
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert count_norms(network) == len([k for k in before if k.endswith("running_mean")])


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_fold_handles_transposed_convolutions_and_missing_biases(transposed, bias):
    # a transposed convolution's weight is (in, out, ...): the scale is per output channel, axis 1; in != out
    # channels so that scaling the wrong axis cannot pass
    torch.manual_seed(1)
    conv = (nn.ConvTranspose3d(3, 5, 2, stride=2, bias=bias) if transposed
            else nn.Conv3d(3, 5, 3, padding=1, bias=bias))
    block = with_trained_looking_norms(nn.Sequential(conv, nn.BatchNorm3d(5), nn.ReLU()), seed=2).double()
    folded = fold_batchnorm(block)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.randn(2, 3, 6, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(block(x), folded(x), rtol=1e-12, atol=1e-12)


def test_fold_leaves_a_batchnorm_that_follows_no_convolution():
    block = with_trained_looking_norms(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1)))
    folded = fold_batchnorm(block)
    assert isinstance(folded[1], nn.BatchNorm2d)
    x = torch.randn(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.equal(block(x), folded(x))


def tiny_la_predictor(fold_bn: bool, network: nn.Module) -> Predictor:
    settings = InferenceSettings((32, 32, 32), (16, 16, 8), batch_size=2, largest_component=False, fold_bn=fold_bn)
    return Predictor(network, get_dataset("LA"), settings)


def test_predictor_runs_a_folded_copy_by_default_and_the_network_itself_without():
    network = with_trained_looking_norms(build_network("vnet", **TINY_VNET))
    default = Predictor(network, get_dataset("LA"), InferenceSettings((32, 32, 32)))
    assert default.settings.fold_bn and default.network is network and count_norms(default.runner) == 0
    # on a CPU the copy is stored channels-last (faster oneDNN kernels, 3-D and 2-D); the network stays as it was
    conv = default.runner.encoder.block_two.conv[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    assert network.encoder.block_two.conv[0].weight.is_contiguous()
    unet = with_trained_looking_norms(build_network("unet", **TINY_UNET))
    runner = Predictor(unet, get_dataset("ACDC"), InferenceSettings((64, 64))).runner
    weights = [m.weight for m in runner.modules()  # not 1x1 kernels: both layouts at once
               if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2] > 1]
    assert runner.uses_channels_last and weights
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)
    assert not getattr(unet, "uses_channels_last", False)
    assert tiny_la_predictor(False, network).runner is network


def test_predictor_default_labels_equal_the_unfolded_ones_except_ties():
    torch.manual_seed(3)
    network = with_trained_looking_norms(build_network("vnet", **TINY_VNET), seed=3)
    image = np.random.default_rng(4).normal(size=(44, 40, 36)).astype(np.float32)
    folded, unfolded = tiny_la_predictor(True, network), tiny_la_predictor(False, network)
    labels_folded = folded.predict_stored(image)
    labels_unfolded = unfolded.predict_stored(image)
    volume = torch.from_numpy(image)[None]
    with torch.no_grad():
        probs = sliding_window_predict(unfolded.logits, volume, (32, 32, 32), (16, 16, 8), 2, batch_size=2)
    margin = (probs[1] - probs[0]).abs().numpy()
    differ = labels_folded != labels_unfolded
    assert labels_unfolded.dtype == np.uint8 and 0 < labels_unfolded.mean() < 1  # both classes are predicted
    assert int(differ.sum()) <= int((margin < 1e-5).sum())  # ties within rounding only
    assert np.all(margin[differ] < 1e-5)


def test_scripts_take_fold_bn_with_the_declared_default():
    import predict
    from evaluation.testing import build_test_parser, testing_options_from_args

    dataset = get_dataset("LA")
    parser = build_test_parser(dataset, "test")
    options = testing_options_from_args(parser.parse_args(["--checkpoint", "c.pth"]), dataset)
    assert options.inference.fold_bn is True
    options = testing_options_from_args(parser.parse_args(["--checkpoint", "c.pth", "--fold_bn", "0"]), dataset)
    assert options.inference.fold_bn is False
    arguments = ["--checkpoint", "c.pth", "--input", "in", "--output", "out"]
    assert predict.build_parser().parse_args(arguments).fold_bn == int(InferenceSettings.fold_bn) == 1
    assert predict.build_parser().parse_args([*arguments, "--fold_bn", "0"]).fold_bn == 0
