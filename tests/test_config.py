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
    with pytest.raises(UserError, match="V-Net"):
        make_config("ACDC", network_kwargs={"base_filters": 8})


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
