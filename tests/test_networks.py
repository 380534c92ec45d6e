"""Networks: parameter counts, official key names/shapes (backbone + SS-Net's heads), output shapes, dropout,
loading (the key map between the official single state dict and network + heads)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from methods.ss_net import SSNetHeads
from networks import (
    NETWORKS,
    NetworkOutput,
    UNet,
    VNet,
    build_network,
    infer_num_classes,
    load_official_state_dict,
    split_head_keys,
)

DATA = Path(__file__).parent / "data"
OFFICIAL_LISTINGS = {"vnet": DATA / "official_vnet_la.txt", "unet": DATA / "official_unet_acdc.txt"}
SMALL_INPUTS = {"vnet": (1, 1, 32, 32, 32), "unet": (2, 1, 64, 64)}
SELECTOR_PARAMS = 1153


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def official_listing(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """Rows 'key (d0, d1, ...) dtype' copied from reference/official-checkpoints.md."""
    rows = []
    for line in OFFICIAL_LISTINGS[name].read_text().splitlines():
        key, rest = line.split(" ", 1)
        shape_text, dtype = rest.rsplit(" ", 1)
        shape = tuple(int(s) for s in shape_text.strip("()").split(",") if s.strip())
        rows.append((key, shape, dtype))
    return rows


@pytest.fixture(scope="module")
def vnet() -> VNet:
    torch.manual_seed(0)
    return VNet()


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet()


def heads_of(net) -> SSNetHeads:
    """SS-Net's heads for `net`, as the ss_net method builds them."""
    return SSNetHeads(net.feature_channels, net.num_classes)


# -- parameter counts: the network is the backbone, SS-Net's heads belong to the method ---------------------------
def test_vnet_parameter_counts(vnet):
    assert count(vnet) == 9_448_866
    assert count(vnet.encoder) == 7_376_896
    assert count(vnet.decoder) == 2_071_970
    assert count(vnet.encoder) + count(vnet.decoder) == count(vnet)
    assert count(vnet) + count(heads_of(vnet)) == 9_457_318  # the official network, heads included
    assert count(heads_of(vnet)) == 8_452
    assert sum(b.numel() for b in vnet.buffers()) + sum(b.numel() for b in heads_of(vnet).buffers()) == 6_019


def test_unet_parameter_counts(unet):
    assert count(unet) == 1_813_764
    assert count(unet.encoder) == 1_180_464
    assert count(unet.decoder) == 633_300
    assert count(unet) + count(heads_of(unet)) == 1_826_828
    assert count(heads_of(unet)) == 13_064


def test_unet_two_classes_parameter_count():
    net = UNet(num_classes=2)
    assert count(net) == 1_813_474
    assert count(net) + count(heads_of(net)) == 1_821_926


def test_head_parameter_counts(vnet, unet):
    for net in (vnet, unet):
        heads = heads_of(net)
        assert count(heads.projection_head) == 1_664
        assert count(heads.prediction_head) == 2_176
        for c in range(net.num_classes):
            assert count(heads.feature_selector(c)) == SELECTOR_PARAMS
            assert count(heads.memory_selector(c)) == SELECTOR_PARAMS
        assert heads.feature_selector(1) is not heads.memory_selector(1)
        assert not any(name.startswith(("projection", "prediction", "contrastive")) for name, _ in
                       net.named_parameters())  # no head left in the network


VNET_BLOCKS = {
    "encoder.block_one": 480, "encoder.block_one_dw": 4_192, "encoder.block_two": 55_488,
    "encoder.block_two_dw": 16_576, "encoder.block_three": 332_352, "encoder.block_three_dw": 65_920,
    "encoder.block_four": 1_328_256, "encoder.block_four_dw": 262_912, "encoder.block_five": 5_310_720,
    "decoder.block_five_up": 262_528, "decoder.block_six": 1_328_256, "decoder.block_six_up": 65_728,
    "decoder.block_seven": 332_352, "decoder.block_seven_up": 16_480, "decoder.block_eight": 55_488,
    "decoder.block_eight_up": 4_144, "decoder.block_nine": 6_960, "decoder.out_conv": 34,
}  # fmt: skip
UNET_BLOCKS = {
    "encoder.in_conv": 2_544, "encoder.down1": 14_016, "encoder.down2": 55_680, "encoder.down3": 221_952,
    "encoder.down4": 886_272, "decoder.up1": 476_032, "decoder.up2": 119_232, "decoder.up3": 29_920,
    "decoder.up4": 7_536, "decoder.out_conv": 580,
}  # fmt: skip


@pytest.mark.parametrize("net_fixture, blocks", [("vnet", VNET_BLOCKS), ("unet", UNET_BLOCKS)])
def test_per_block_parameter_counts(request, net_fixture, blocks):
    net = request.getfixturevalue(net_fixture)
    assert {name: count(net.get_submodule(name)) for name in blocks} == blocks
    backbone = count(net.encoder) + count(net.decoder)
    assert sum(blocks.values()) == backbone


# -- official state-dict keys, shapes and dtypes -------------------------------------------------
@pytest.mark.parametrize("name, entries", [("vnet", 259), ("unet", 226)])
def test_state_dict_matches_official_listing(name, entries):
    """The network's state dict, then SS-Net's heads', is the official single state dict (names, shapes, order)."""
    listing = official_listing(name)
    assert len(listing) == entries
    network = build_network(name)
    state = {**network.state_dict(), **heads_of(network).state_dict()}
    ours = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]
    assert ours == listing  # same names, shapes, dtypes and order
    backbone, heads = split_head_keys(state)
    assert list(backbone) == list(network.state_dict()) and list(heads) == list(heads_of(network).state_dict())


def test_narrow_vnet_keeps_official_keys():
    narrow = VNet(base_filters=8)
    heads = heads_of(narrow)
    assert [*narrow.state_dict(), *heads.state_dict()] == [row[0] for row in official_listing("vnet")]
    assert narrow.feature_channels == 8 and heads.projection_head[0].in_features == 8
    out = narrow.eval()(torch.zeros(1, 1, 16, 16, 16))
    assert out.features.shape == (1, 8, 16, 16, 16)


# -- shapes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_small_input_shapes(name):
    net = build_network(name).eval()
    shape = SMALL_INPUTS[name]
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert isinstance(out, NetworkOutput)
    assert out.logits.shape == (shape[0], net.num_classes, *shape[2:])
    assert out.features.shape == (shape[0], net.feature_channels, *shape[2:])


def test_full_size_shapes(vnet, unet):
    with torch.no_grad():
        v = vnet.eval()(torch.randn(1, 1, 112, 112, 80))
        u = unet.eval()(torch.randn(1, 1, 256, 256))
    assert v.logits.shape == (1, 2, 112, 112, 80) and v.features.shape == (1, 16, 112, 112, 80)
    assert u.logits.shape == (1, 4, 256, 256) and u.features.shape == (1, 16, 256, 256)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_encoder_feature_widths_and_resolutions(name):
    net = build_network(name).eval()
    shape = SMALL_INPUTS[name]
    with torch.no_grad():
        features = net.encoder(torch.randn(shape))
    assert [f.shape[1] for f in features] == [16, 32, 64, 128, 256]
    for level, f in enumerate(features):
        assert tuple(f.shape[2:]) == tuple(s // 2**level for s in shape[2:])


def test_network_attributes(vnet, unet):
    for net, dims, classes in ((vnet, 3, 2), (unet, 2, 4)):
        assert (net.spatial_dims, net.num_classes, net.in_channels) == (dims, classes, 1)
        assert (net.feature_channels, net.size_divisor) == (16, 16)


def test_heads_on_voxel_vectors(vnet):
    heads = heads_of(vnet).train()
    vectors = torch.randn(10, 16)
    projected = heads.projection_head(vectors)
    assert projected.shape == (10, 32)
    assert heads.prediction_head(projected).shape == (10, 32)
    features = torch.randn(2, 16, 4, 4, 4)  # embed: one row per voxel, ordered like labels.reshape(-1)
    assert heads.embed(features).shape == (2 * 64, 32)
    heads.eval()  # row by row = all rows at once only without batch statistics
    row = features[1, :, 0, 1, 2]  # voxel (0, 1, 2) of sample 1: row 64 + 0 * 16 + 1 * 4 + 2
    expected = heads.prediction_head(heads.projection_head(row[None]))[0]
    assert torch.allclose(heads.embed(features)[64 + 6], expected, atol=1e-6)
    assert heads.feature_selector(1)(projected).shape == (10, 1)
    assert heads.memory_selector(0)(projected).shape == (10, 1)
    with pytest.raises(IndexError, match="num_classes=2"):
        heads.feature_selector(2)


# -- dropout: stochastic in train mode, deterministic in eval mode -------------------------------
@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_train_mode_stochastic_eval_mode_deterministic(name):
    torch.manual_seed(0)
    net = build_network(name)
    image = torch.randn(SMALL_INPUTS[name])
    with torch.no_grad():
        net.train()
        assert not torch.equal(net(image).logits, net(image).logits)
        net.eval()
        first, second = net(image), net(image)
    assert torch.equal(first.logits, second.logits) and torch.equal(first.features, second.features)


def test_vnet_without_dropout_is_deterministic_in_train_mode():
    net = VNet(dropout=False).train()
    image = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net(image).logits, net(image).logits)


def test_vnet_embedding_is_taken_after_channel_dropout():
    torch.manual_seed(0)
    net = VNet(base_filters=16).train()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 16, 16, 16))
        # whole channels are zeroed per sample, and the classifier sees exactly the returned embedding
        zeroed = out.features.flatten(2).abs().amax(dim=2) == 0
        assert zeroed.any() and not zeroed.all()
        torch.testing.assert_close(out.logits, net.decoder.out_conv(out.features))


def test_dropout_flag_does_not_change_state_dict():
    state = VNet(dropout=True).state_dict()
    VNet(dropout=False).load_state_dict(state, strict=True)


# -- multi-class ---------------------------------------------------------------------------------
def test_vnet_three_classes():
    net = VNet(num_classes=3).eval()
    names = [n for n, _ in heads_of(net).named_children()]
    assert [n for n in names if n.startswith("contrastive_class_selector_memory")] == [
        f"contrastive_class_selector_memory{c}" for c in range(3)
    ]
    assert [n for n in names if n.startswith("contrastive_class_selector_") and "memory" not in n] == [
        f"contrastive_class_selector_{c}" for c in range(3)
    ]
    with torch.no_grad():
        assert net(torch.randn(1, 1, 16, 16, 32)).logits.shape == (1, 3, 16, 16, 32)
    # one more out channel (16 + 1), two more selectors
    assert count(net) + count(heads_of(net)) == 9_457_318 + 17 + 2 * SELECTOR_PARAMS


# -- config round trip and loading ---------------------------------------------------------------
@pytest.mark.parametrize(
    "name, kwargs",
    [("vnet", {"num_classes": 3, "base_filters": 8, "dropout": False}), ("unet", {"num_classes": 2})],
)
def test_state_dict_round_trip_through_network_config(name, kwargs):
    original = build_network(name, **kwargs)
    config = original.network_config()
    assert config["name"] == name
    rebuilt = build_network(config["name"], **config["kwargs"])
    assert rebuilt.network_config() == config
    rebuilt.load_state_dict(original.state_dict(), strict=True)
    for key, value in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)


def test_load_official_state_dict_accepts_wrappers_and_prefix(tmp_path):
    torch.manual_seed(1)
    source = UNet(num_classes=2)
    state = source.state_dict()
    prefixed = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "unet_best_model.pth"
    torch.save(prefixed, path)
    for checkpoint in (state, prefixed, {"state_dict": prefixed}, {"model": state}, path):
        target = load_official_state_dict(UNet(num_classes=2), checkpoint)
        assert torch.equal(target.decoder.out_conv.weight, source.decoder.out_conv.weight)
        bn_key = "encoder.in_conv.conv_conv.1.running_var"
        assert torch.equal(target.state_dict()[bn_key], source.state_dict()[bn_key])
    assert infer_num_classes({"state_dict": prefixed}) == 2
    assert infer_num_classes(VNet(num_classes=3).state_dict()) == 3


def test_official_state_dict_loads_into_network_and_heads():
    """The key map: one official state dict -> the network and SS-Net's heads, each strictly."""
    torch.manual_seed(2)
    source, source_heads = VNet(base_filters=4), None
    source_heads = SSNetHeads(4, 2)
    official = {**source.state_dict(), **source_heads.state_dict()}
    network, heads = VNet(base_filters=4), SSNetHeads(4, 2)
    load_official_state_dict(network, official, heads)
    for key, value in source_heads.state_dict().items():
        assert torch.equal(heads.state_dict()[key], value)
    assert torch.equal(network.decoder.out_conv.weight, source.decoder.out_conv.weight)
    load_official_state_dict(VNet(base_filters=4), official)  # only segmenting: the heads are dropped


def test_load_official_state_dict_wrong_class_count_is_readable():
    network = UNet(num_classes=4)
    acdc_like = {**network.state_dict(), **heads_of(network).state_dict()}
    with pytest.raises(ValueError) as error:
        load_official_state_dict(UNet(num_classes=2), acdc_like, heads_of(UNet(num_classes=2)))
    message = str(error.value)
    assert "36 unexpected keys (contrastive_class_selector_2.0.weight" in message  # 2 classes x 2 kinds x 9
    assert "in_channels=1, num_classes=2" in message
    assert "decoder.out_conv.weight: checkpoint (4, 16, 3, 3) vs network (2, 16, 3, 3)" in message
    assert "num_classes=4" in message


def test_load_official_state_dict_wrong_network_lists_missing_keys():
    with pytest.raises(ValueError, match=r"missing keys \(encoder\.block_one\.conv\.0\.weight"):
        load_official_state_dict(VNet(), UNet().state_dict())


# -- input validation and registry errors --------------------------------------------------------
@pytest.mark.parametrize(
    "name, shape",
    [("vnet", (1, 1, 32, 32, 30)), ("unet", (1, 1, 64, 40))],
)
def test_non_divisible_input_raises(name, shape):
    net = build_network(name)
    with pytest.raises(ValueError, match=r"divisible by 16") as error:
        net(torch.zeros(shape))
    assert str(shape) in str(error.value)


def test_wrong_rank_or_channels_raise():
    with pytest.raises(ValueError, match="5-D input"):
        VNet()(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="in_channels=1"):
        UNet()(torch.zeros(1, 3, 32, 32))


def test_unknown_network_suggests_closest():
    with pytest.raises(ValueError) as error:
        build_network("vnett")
    assert str(error.value) == "unknown network 'vnett'; did you mean 'vnet'? choose from: unet, vnet"
    with pytest.raises(ValueError, match="choose from: unet, vnet"):
        build_network("transformer")


def test_unet_rejects_wrong_number_of_levels():
    with pytest.raises(ValueError, match="5 levels"):
        UNet(channels=(16, 32, 64))


# -- baseline options (sdf_head, deep_supervision, num_decoders) -----------------------------------------------
@pytest.mark.parametrize("name, shape", [("vnet", (2, 1, 32, 32, 32)), ("unet", (2, 1, 32, 32))])
def test_baseline_options_only_append_modules_and_fill_optional_outputs(name, shape):
    kwargs = {"num_classes": 3, "base_filters": 4} if name == "vnet" else {"num_classes": 3}
    plain_keys = list(build_network(name, **kwargs).state_dict())
    net = build_network(name, **kwargs, sdf_head=True, deep_supervision=True, num_decoders=2)
    keys = list(net.state_dict())
    assert [k for k in keys if k in plain_keys] == plain_keys  # official keys keep their order
    extra = {k.split(".")[0] + "." + k.split(".")[1] for k in keys if k not in plain_keys}
    assert {"decoder.sdf_conv", "decoder.aux_conv1", "decoder.aux_conv2", "decoder.aux_conv3"} <= extra
    assert all(k.startswith(("decoder.sdf_conv", "decoder.aux_conv", "decoder2.")) for k in keys if k not in plain_keys)
    for mode in ("train", "eval"):
        getattr(net, mode)()
        with torch.no_grad():
            out = net(torch.randn(shape))
        full = (shape[0], 3, *shape[2:])
        assert out.logits.shape == full and out.sdf.shape == (shape[0], 2, *shape[2:])
        assert out.sdf.abs().max() <= 1.0
        assert [a.shape for a in out.aux_logits] == [full] * 3 and [d.shape for d in out.decoder_logits] == [full]
    plain = build_network(name, **kwargs).eval()(torch.zeros(shape))
    assert plain.sdf is None and plain.aux_logits == () and plain.decoder_logits == ()
    config = net.network_config()
    options = {k: config["kwargs"][k] for k in ("sdf_head", "deep_supervision", "num_decoders")}
    assert options == {"sdf_head": True, "deep_supervision": True, "num_decoders": 2}
    rebuilt = build_network(config["name"], **config["kwargs"])
    rebuilt.load_state_dict(net.state_dict(), strict=True)


def test_second_decoder_upsamples_differently():
    vnet = VNet(base_filters=4, num_decoders=2)
    assert isinstance(vnet.decoder.block_five_up.conv[0], torch.nn.ConvTranspose3d)
    assert isinstance(vnet.decoder2.block_five_up.conv[0], torch.nn.Upsample)
    unet = UNet(num_decoders=2)
    assert hasattr(unet.decoder.up1, "conv1x1") and isinstance(unet.decoder2.up1.up, torch.nn.ConvTranspose2d)
    with pytest.raises(ValueError, match="num_decoders"):
        UNet(num_decoders=4)


def test_vnet_evaluation_forward_equals_autograd_forward_and_keeps_the_skips():
    # without autograd the decoder adds each skip into the up-stage's output in place (networks/vnet.py)
    torch.manual_seed(0)
    net = VNet(base_filters=4, num_decoders=2).eval()
    image = torch.randn(2, 1, 32, 32, 16)
    with_graph = net(image)
    with torch.inference_mode():
        features = net.encoder(image)
        kept = [feature.clone() for feature in features]
        without_graph = net(image)
        net.decoder(features), net.decoder2(features)
    assert all(torch.equal(a, b) for a, b in zip(features, kept, strict=True))
    assert torch.equal(with_graph.logits.detach(), without_graph.logits)
    assert torch.equal(with_graph.features.detach(), without_graph.features)
    assert len(with_graph.decoder_logits) == len(without_graph.decoder_logits) == 1
    assert torch.equal(with_graph.decoder_logits[0].detach(), without_graph.decoder_logits[0])
