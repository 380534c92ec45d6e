"""The flag generator (utils/flags.py) and the declarations it reads (utils/settings.py), on small options classes:
every flag form, nested options, the namespace mapped back, derived declarations and the generic checks."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from utils.cli import DefaultsHelpFormatter, ScriptParser, int_list
from utils.errors import UserError
from utils.flags import add_flags, explicit_flags, options_from_args, values_from_args
from utils.settings import check_settings, declared_in, nested, same_as, setting


@dataclass
class Inner:
    size: tuple[int, ...] = setting((), "window size", unit="voxels", parse=int_list, resolved="the checkpoint")
    mode: str = setting("off", "precision", choices=("off", "bf16"), group="speed")


@dataclass
class Outer:
    path: str = setting(help="the input", flag="path")  # positional
    name: str = setting(help="a required option")
    count: int = setting(4, "items per step", minimum=1)
    ratio: float = setting(0.5, "a fraction")
    fast: bool = setting(True, "a 0/1 flag")
    tta: bool = setting(False, "a switch", switch=True)
    progress: bool = setting(True, "progress bar", inverse_flag="--no_progress")
    largest: bool | None = setting(None, "keep the largest component", aliases=("--nms",))
    tags: list[str] = setting(help="tags", factory=list, nargs="+", choices=("a", "b"))
    hidden: str = setting("x", "set by the script", flag=False)
    maybe: int = setting(1, "a flag only where the context allows it", flag=lambda context: context == "yes")
    inner: Inner = nested(Inner)


def parser(context=None, **kwargs) -> argparse.ArgumentParser:
    p = ScriptParser(formatter_class=DefaultsHelpFormatter)
    add_flags(p, Outer, context=context, **kwargs)
    return p


def test_every_flag_form_and_its_default():
    actions = {a.dest: a for a in parser()._actions}
    assert actions["path"].option_strings == [] and actions["name"].required
    assert actions["count"].default == 4 and actions["count"].type is int
    assert actions["ratio"].type is float
    assert actions["fast"].default == 1 and actions["fast"].choices == (0, 1)  # bools are 0/1 flags
    assert actions["tta"].option_strings == ["--tta"] and actions["tta"].default is False and actions["tta"].nargs == 0
    assert actions["progress"].option_strings == ["--no_progress"] and actions["progress"].default is True
    assert actions["largest"].option_strings == ["--largest", "--nms"] and actions["largest"].default is None
    assert actions["tags"].nargs == "+" and actions["tags"].choices == ("a", "b") and actions["tags"].default == []
    assert actions["size"].default is None  # resolved later: the flag says "not given"
    assert "hidden" not in actions and "maybe" in actions  # no context: a callable flag is a flag
    assert "maybe" not in {a.dest for a in parser(context="no")._actions}


def test_help_carries_unit_choices_group_and_where_a_resolved_value_comes_from():
    p = parser(values={"size": (32, 32)}, resolved_example="LA")
    text = p.format_help()
    assert "window size [voxels] (default: from the checkpoint; LA: 32,32)" in " ".join(text.split())
    assert "speed:" in text and "{off,bf16}" in text
    assert "no progress bar" in text
    p = parser(helps={"name": "this script's text"})
    assert "this script's text" in p.format_help()


def test_the_namespace_maps_back_to_the_options_with_their_types():
    args = parser().parse_args(["in.nii", "--name", "n", "--count", "8", "--fast", "0", "--tta", "--no_progress",
                                "--nms", "1", "--tags", "a", "b", "--size", "16,16", "--mode", "bf16"])
    options = options_from_args(Outer, args, hidden="y")
    assert options == Outer(path="in.nii", name="n", count=8, fast=False, tta=True, progress=False, largest=True,
                            tags=["a", "b"], hidden="y", inner=Inner(size=(16, 16), mode="bf16"))
    assert isinstance(options.inner.size, tuple) and options.fast is False  # 0/1 -> bool, list -> tuple field
    defaults = options_from_args(Outer, parser().parse_args(["p", "--name", "n"]))
    assert defaults == Outer(path="p", name="n")  # every flag's default is the declared default
    assert "largest" not in values_from_args(Outer, parser().parse_args(["p", "--name", "n"]))  # None = not given


def test_a_dataset_value_replaces_the_declared_default_of_its_flag():
    args = parser(values={"count": 2}).parse_args(["p", "--name", "n"])
    assert args.count == 2


def test_two_options_classes_cannot_set_the_same_destination():
    @dataclass
    class Clash:
        count: int = setting(1, "again")

    p = parser()
    with pytest.raises(ValueError, match="already sets 'count'"):
        add_flags(p, Clash)


def test_explicit_flags_name_what_the_command_line_said():
    p = parser()
    assert explicit_flags(p, ["p", "--name", "n", "--nms", "0", "--count=3"]) == {"name", "largest", "count"}


def test_same_as_takes_the_declaration_and_records_where_it_was_made():
    @dataclass
    class Derived:
        count: int = same_as(Outer, "count", help="per step here")
        mode: str = same_as(Inner, "mode", default="bf16")

    fields = Derived.__dataclass_fields__
    assert Derived().count == 4 and Derived().mode == "bf16"
    assert fields["count"].metadata["minimum"] == 1 and fields["count"].metadata["help"] == "per step here"
    assert fields["mode"].metadata["choices"] == ("off", "bf16")
    assert declared_in(Derived, "count") == declared_in(Outer, "count") == f"{__name__}.Outer.count"
    with pytest.raises(TypeError, match="not setting arguments: colour"):
        same_as(Outer, "count", colour="red")
    with pytest.raises(TypeError, match="no setting 'size'"):
        same_as(Outer, "size")


def test_check_settings_refuses_values_outside_choices_and_minimums_naming_the_flag():
    check_settings(Outer(path="p", name="n"))
    with pytest.raises(UserError, match=r"--count must be >= 1, got 0"):
        check_settings(Outer(path="p", name="n", count=0))
    with pytest.raises(UserError, match=r"--tags must be one of a, b, got \['a', 'c'\]"):
        check_settings(Outer(path="p", name="n", tags=["a", "c"]))
    with pytest.raises(UserError, match="--mode must be one of off, bf16, got 'fp8'"):  # nested options too
        check_settings(Outer(path="p", name="n", inner=Inner(mode="fp8")))
    with pytest.raises(UserError, match="--count must be >= 1, got nan"):
        check_settings(Outer(path="p", name="n", count=float("nan")))


def test_the_generator_needs_a_script_parser_whose_choice_errors_are_one_line(capsys):
    """add_flags refuses a plain argparse parser (its choice flags would answer a typo with the whole usage)."""
    with pytest.raises(TypeError, match="ScriptParser"):
        add_flags(argparse.ArgumentParser(), Outer)
    with pytest.raises(SystemExit):
        parser().parse_args(["--mode", "bf166"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did you mean 'bf16'?" in err[0] and err[0].startswith("error: argument --mode")
