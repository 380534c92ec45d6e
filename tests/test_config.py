"""One source per setting: every setting is a field of TrainConfig (or of MethodSettings, which it extends), the
flags are generated from the fields, presets and recipes only assign values; errors of the user vs bugs."""
from __future__ import annotations

import dataclasses
import json

import pytest

from methods import METHODS
from methods.recipe import Schedule
from methods.settings import MethodSettings
from training.config import (
    RESOLVED_FIELDS,
    RUNTIME_FIELDS,
    TRAIN_FIELDS,
    TrainConfig,
    config_from_saved,
    defaults,
    make_config,
)
from training.flags import build_train_parser, config_from_args
from training.presets import PRESETS
from utils.cli import run_cli
from utils.errors import TrainingDiverged, UserError

DATASETS = ("LA", "ACDC", "NIfTI-3d", "NIfTI-2d")


def flag_fields(parser) -> dict[str, object]:
    return {action.dest: action.default for action in parser._actions if action.dest in TRAIN_FIELDS}


@pytest.mark.parametrize("dataset", DATASETS)
def test_parser_defaults_equal_the_declared_defaults_of_every_field(dataset):
    parser = build_train_parser(dataset, "")
    values = defaults(dataset)
    flags = flag_fields(parser)
    assert flags, "no setting became a flag"
    for name, default in flags.items():
        if name in RESOLVED_FIELDS:
            assert default is None, f"--{name}: decided by the recipe / --schedule, so its flag default is None"
        elif isinstance(values[name], bool) and name != "progress":
            assert default == int(values[name]), name  # 0/1 flags
        else:
            assert default == values[name], name
    not_flags = {name for name, f in TRAIN_FIELDS.items() if f.metadata.get("flag") is False}
    assert not_flags == {"dataset", "nifti", "network", "network_kwargs", "num_classes", "stage", "init_from"}


@pytest.mark.parametrize("dataset", ["LA", "ACDC"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_flags_and_make_config_build_the_same_config(dataset, method):
    from_flags = config_from_args(build_train_parser(dataset, "").parse_args(["--method", method]), dataset)
    from_python = make_config(dataset, method=method)
    assert dataclasses.asdict(from_flags) == dataclasses.asdict(from_python)


def test_every_setting_is_declared_once_with_its_help():
    method_fields = {f.name for f in dataclasses.fields(MethodSettings)}
    own_annotations = set(TrainConfig.__dict__.get("__annotations__", {}))
    assert not method_fields & own_annotations, "TrainConfig redeclares a method setting"
    assert method_fields <= set(TRAIN_FIELDS)
    for name, f in TRAIN_FIELDS.items():
        assert f.metadata.get("help"), f"{name} has no help text"
    for preset in PRESETS.values():  # presets assign values of declared settings only
        assert set(preset.values) <= set(TRAIN_FIELDS), preset.dataset
    assert {f.name for f in dataclasses.fields(Schedule)} <= set(TRAIN_FIELDS)  # recipes too


def test_runtime_settings_are_those_that_move_or_extend_a_run():
    assert RUNTIME_FIELDS == {"root_path", "device", "num_workers", "progress", "max_iteration", "save_every",
                              "keep_checkpoints", "eval_batch_size", "image_every", "resume", "run_dir",
                              "allow_world_size_change", "init_from"}


def test_make_config_refuses_what_is_not_a_setting_and_values_out_of_range():
    with pytest.raises(UserError, match="unknown setting"):
        make_config("LA", learning_rate=0.1)
    with pytest.raises(UserError, match="--memory_keep must be one of lowest, highest"):
        make_config("LA", memory_keep="top")
    with pytest.raises(UserError, match="--memory_size must be >= 1"):
        make_config("LA", memory_size=0)
    with pytest.raises(UserError, match="--stride"):
        make_config("LA", stride=[200, 18, 4])
    with pytest.raises(UserError, match="did you mean 'ss_net'"):
        make_config("LA", method="ssnet")
    with pytest.raises(UserError, match="--base_filters 0: give a positive"):
        make_config("LA", network_kwargs={"base_filters": 0})


@pytest.mark.parametrize("dataset", ["LA", "ACDC"])
def test_base_filters_sets_the_width_of_either_network(dataset):
    """--base_filters: the V-Net's base_filters, the U-Net's channels of its 5 levels (16 = the paper's widths)."""
    from networks import build_network
    from training.flags import build_train_parser, config_from_args

    parser = build_train_parser(dataset, "")
    assert "--base_filters" in parser.format_help()
    config = config_from_args(parser.parse_args(["--base_filters", "4"]), dataset)
    network = build_network(config.network, **config.network_kwargs)
    if dataset == "ACDC":
        assert config.network_kwargs["channels"] == [4, 8, 16, 32, 64] and "base_filters" not in config.network_kwargs
        assert network.channels == (4, 8, 16, 32, 64)
        official = make_config(dataset, network_kwargs={"base_filters": 16}).network_kwargs
        assert build_network("unet", **official).channels == (16, 32, 64, 128, 256)
    else:
        assert config.network_kwargs["base_filters"] == 4 and network.base_filters == 4
    narrow = sum(p.numel() for p in network.parameters())
    full = sum(p.numel() for p in build_network(config.network, **make_config(dataset).network_kwargs).parameters())
    assert narrow < full / 10


def test_a_saved_config_round_trips():
    config = make_config("ACDC", method="ua_mt", labelnum=3)
    assert config_from_saved(json.loads(config.to_json())) == config


# -- errors: the user's (one line, exit 2) vs bugs (traceback) --------------------------------------------------
def test_user_errors_print_one_line_and_exit_2(capsys):
    def bad_input():
        raise UserError("--root_path nowhere does not exist")

    assert run_cli(bad_input) == 2
    assert capsys.readouterr().err == "error: --root_path nowhere does not exist\n"
    assert run_cli(lambda: (_ for _ in ()).throw(FileNotFoundError("data/x.h5 missing"))) == 2
    assert run_cli(lambda: (_ for _ in ()).throw(TrainingDiverged("non-finite loss at iteration 3"))) == 2


@pytest.mark.parametrize("bug", [KeyError("config"), ValueError("shapes differ"), TypeError("missing argument")])
def test_bugs_are_not_reported_as_user_errors(bug):
    def buggy():
        raise bug

    with pytest.raises(type(bug)):
        run_cli(buggy)


# -- every script: each flag is one declared setting, with its declared default --------------------------------
def script_parsers():
    """(script, parser, its options classes, the script's values that differ from the declared defaults)."""
    import predict
    import reproduce
    import train
    from dataloaders import get_dataset
    from dataloaders.nifti_dataset import NiftiOptions
    from evaluation.scoring import ScoreOptions
    from evaluation.testing import TestOptions, build_test_parser, testing_flag_values
    from inference.prediction_job import PredictOptions
    from reproduction.grid import GridOptions
    from tools import score

    for dataset, script in (("LA", "train_la.py"), ("ACDC", "train_acdc.py")):
        yield script, build_train_parser(dataset, ""), (TrainConfig,), defaults(dataset)
    for mode in ("3d", "2d"):
        yield f"train.py --mode {mode}", train.build_parser(mode), (TrainConfig, NiftiOptions), \
            defaults(f"NIfTI-{mode}")
    for dataset, script in (("LA", "test_la.py"), ("ACDC", "test_acdc.py")):
        adapter = get_dataset(dataset)
        yield script, build_test_parser(adapter, ""), (TestOptions,), testing_flag_values(adapter)
    yield "predict.py", predict.build_parser(), (PredictOptions,), {}
    yield "reproduce.py", reproduce.build_parser(), (GridOptions,), {}
    yield "tools/score.py", score.build_parser(), (ScoreOptions,), {}


SCRIPT_ONLY_FLAGS = {"help", "debug", "base_filters"}  # not settings: -h, tracebacks, the V-Net width (train)
# one flag name, two settings: each pair is declared apart on purpose
SAME_NAME_OTHER_SETTING = {
    "--batch_size": "train: samples per optimisation step; test/predict: windows or slices per forward",
    "--patch_size": "train: the training crop, recorded as the test window; test/predict: overrides the record",
    "--stride": "train: the stride a run records for its tests; test/predict: overrides the record",
    "--labelnum": "train: the labeled cases of one run; reproduce: the grid's budgets (N or all)",
    "--labels": "predict: a folder of reference label maps; tools.score: the classes to score",
    "--dataset": "predict: the dataset of an official state dict; reproduce: the grid's dataset",
}


def script_settings(options_classes) -> dict:
    """{destination: (declaring class, field)} of every setting of the classes (nested ones included)."""
    from utils.settings import leaf_fields

    return {f.name: (owner, f) for options in options_classes for owner, f in leaf_fields(options)}


def expected_flag_default(f, value):
    """A flag's default as the forms of utils.settings.setting define it: None for a setting resolved later, 0/1
    for a bool 0/1 flag, else the value."""
    meta = f.metadata
    if meta.get("resolved"):
        return None
    if f.type in ("bool", "bool | None") and not meta.get("switch") and not meta.get("inverse_flag"):
        return None if value is None else int(value)
    return value


@pytest.mark.parametrize("script", [s[0] for s in script_parsers()])
def test_every_flag_of_every_script_is_a_declared_setting_with_its_declared_default(script):
    from utils.settings import declared_default

    _, parser, options_classes, values = next(s for s in script_parsers() if s[0] == script)
    settings = script_settings(options_classes)
    for action in parser._actions:
        if action.dest in SCRIPT_ONLY_FLAGS:
            continue
        assert action.dest in settings, f"{script}: {action.option_strings} is written by hand, not declared"
        _, f = settings[action.dest]
        value = values[action.dest] if action.dest in values else declared_default(f)
        assert action.default == expected_flag_default(f, value), f"{script} --{action.dest}"
    if script.startswith("test_"):  # the test scripts differ from the declarations in their folder only (and
        # show their dataset's fallback of the settings a checkpoint records)
        resolved = {name for name, (_, f) in settings.items() if f.metadata.get("resolved")}
        assert set(values) - resolved == {"root_path"} and values["root_path"].startswith("./data/")


def test_every_setting_is_declared_once_across_the_scripts():
    from utils.flags import flag_names
    from utils.settings import declared_in

    origins: dict[str, set[str]] = {}
    for _, parser, options_classes, _ in script_parsers():
        settings = script_settings(options_classes)
        for action in parser._actions:
            if action.dest in SCRIPT_ONLY_FLAGS:
                continue
            owner, f = settings[action.dest]
            names = action.option_strings or [action.dest]
            assert names[0] in flag_names(f) or f.metadata.get("inverse_flag") == names[0]
            origins.setdefault(names[0], set()).add(declared_in(owner, f.name))
    twice = {name: sorted(where) for name, where in origins.items() if len(where) > 1}
    assert set(twice) == set(SAME_NAME_OTHER_SETTING), twice  # the others are one declaration (or same_as)
    for name in ("--device", "--num_workers", "--root_path", "--amp", "--checkpoint", "--largest_component"):
        assert len(origins[name]) == 1 and len([s for s in script_parsers() if name in s[1]._option_string_actions]) \
            > 1, name  # shared by several scripts, declared once


def test_every_setting_of_every_script_has_help():
    for script, _, options_classes, _ in script_parsers():
        for name, (_, f) in script_settings(options_classes).items():
            assert f.metadata.get("help"), f"{script}: {name} has no help text"


def test_scripts_without_flags_build_the_declared_defaults():
    import predict
    import reproduce
    from evaluation.testing import TestOptions, build_test_parser
    from inference.prediction_job import PredictOptions
    from reproduction.grid import GridOptions
    from utils.flags import options_from_args

    assert options_from_args(GridOptions, reproduce.build_parser().parse_args([])) == GridOptions()
    required = ["--checkpoint", "c.pth", "--input", "in", "--output", "out"]
    assert options_from_args(PredictOptions, predict.build_parser().parse_args(required)) == \
        PredictOptions(checkpoint="c.pth", input="in", output="out")
    from dataloaders import get_dataset

    args = build_test_parser(get_dataset("LA"), "").parse_args(["--checkpoint", "c.pth"])
    assert options_from_args(TestOptions, args, dataset="LA") == \
        TestOptions(dataset="LA", checkpoint="c.pth", root_path="./data/LA")


def test_nms_is_an_alias_of_largest_component_in_every_script_that_predicts():
    import predict
    from dataloaders import get_dataset
    from evaluation.testing import build_test_parser
    from tools import score

    for parser in (build_test_parser(get_dataset("LA"), ""), build_test_parser(get_dataset("ACDC"), ""),
                   predict.build_parser()):
        required = ["--checkpoint", "c"] + (["--input", "i", "--output", "o"] if "--input" in
                                            parser._option_string_actions else [])
        assert parser.parse_args([*required, "--nms", "0"]).largest_component == 0
        assert parser.parse_args([*required, "--largest_component", "1"]).largest_component == 1
        assert parser.parse_args(required).largest_component is None  # as the checkpoint was evaluated
    assert score.build_parser().parse_args(["p", "r", "--nms"]).largest_component is True


def test_schedule_and_dice_settings_are_the_fields_of_their_declarations():
    from dataclasses import fields as dataclass_fields

    from methods.recipe import SSNET_LA_DICE, SSNET_LA_SCHEDULE, Dice
    from training.config import dice_values, schedule_values
    from training.presets import LA

    assert set(schedule_values(SSNET_LA_SCHEDULE)) == {f.name for f in dataclass_fields(Schedule)} <= \
        set(TRAIN_FIELDS)
    assert set(dice_values(LA)) == {f"dice_{f.name}" for f in dataclass_fields(Dice)} <= set(TRAIN_FIELDS)
    config = make_config("LA", method="supervised")
    assert all(getattr(config, k) == v for k, v in dice_values(LA).items())
    assert LA.dice == SSNET_LA_DICE and config.lr_step == SSNET_LA_SCHEDULE.lr_step
