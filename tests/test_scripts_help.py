"""`python SCRIPT -h` works for every script of the repository: a newcomer's first command."""
from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def scripts() -> list[Path]:
    """Every Python file outside tests/ that runs as a program (has a __main__ block)."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in {"tests", ".git", ".venv"} or "__pycache__" in relative.parts:
            continue
        if 'if __name__ == "__main__"' in path.read_text(encoding="utf-8"):
            found.append(relative)
    return found


def test_the_scripts_are_found():
    names = {str(p) for p in scripts()}
    assert {"train_la.py", "train_acdc.py", "test_la.py", "test_acdc.py"} <= names


@pytest.mark.parametrize("script", scripts(), ids=str)
def test_help_prints_usage_and_exits_0(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "-h"])
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    assert exit_info.value.code in (0, None), out.getvalue()
    assert out.getvalue().startswith("usage:"), out.getvalue()[:500]


def help_entries(text: str) -> list[str]:
    """The help of each flag: from a line that starts with '  -' to the next one."""
    entries: list[str] = []
    for line in text.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif entries and line.startswith("   "):
            entries[-1] += " " + line.strip()
        else:
            entries.append("")
    return [e for e in entries if e]


@pytest.mark.parametrize("script", scripts(), ids=str)
def test_no_flag_states_its_default_twice(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "-h"])
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / script), run_name="__main__")
    entries = help_entries(out.getvalue())
    assert entries, out.getvalue()[:500]
    doubled = [e for e in entries if e.lower().count("default:") > 1]
    assert not doubled, doubled


def parsers_of(script: Path, monkeypatch) -> list[argparse.ArgumentParser]:
    """The parsers `python SCRIPT -h` builds (recorded as they parse)."""
    built: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_known_args

    def recording(self, args=None, namespace=None):
        built.append(self)
        return parse(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    monkeypatch.setattr(sys, "argv", [str(script), "-h"])
    monkeypatch.chdir(ROOT)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        runpy.run_path(str(ROOT / script), run_name="__main__")
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse)
    return built


def choice_flags() -> list[tuple[Path, str, str]]:
    """(script, flag or positional, first choice) of every choice flag of every script."""
    found = []
    monkeypatch = pytest.MonkeyPatch()
    try:
        for script in scripts():
            for parser in parsers_of(script, monkeypatch):
                for action in parser._actions:
                    if action.choices:
                        name = action.option_strings[-1] if action.option_strings else action.dest
                        found.append((script, name, next(str(c) for c in action.choices if str(c))))
    finally:
        monkeypatch.undo()
    return found


CHOICE_FLAGS = choice_flags()


def test_choice_flags_are_found_in_every_kind_of_script():
    names = {(str(s), f) for s, f, _ in CHOICE_FLAGS}
    assert {("train_la.py", "--select"), ("train_acdc.py", "--amp"), ("test_la.py", "--empty_policy"),
            ("reproduce.py", "--protocol"), ("data/lists.py", "dataset")} <= names
    assert len(CHOICE_FLAGS) > 40


@pytest.mark.parametrize(("script", "flag", "choice"), CHOICE_FLAGS, ids=lambda v: str(v))
def test_a_typo_in_a_choice_flag_is_one_error_line_with_a_suggestion(script, flag, choice, monkeypatch):
    """As `--method ssnet`: one `error:` line naming the flag, the closest choice and the others; no usage dump.
    Numeric choices (0/1 flags) get a number outside them ('2') and `yes`, whose closest choice no one can name."""
    numeric = choice.lstrip("-").isdigit()
    typo = "2" if numeric else choice + choice[-1]  # 'vall', 'bf1616'
    argv = [typo] if not flag.startswith("-") else [flag, typo]
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    monkeypatch.chdir(ROOT)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), \
            pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    lines = err.getvalue().strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith("error: ") and "choose from" in lines[0]
    assert (f"{flag}: invalid choice" in lines[0] if flag.startswith("-") else "invalid choice" in lines[0])
    if not numeric:
        assert f"did you mean {choice!r}?" in lines[0]
    else:  # a word for a number names the choices too, instead of the type ('invalid int value')
        monkeypatch.setattr(sys, "argv", [str(script), flag, "yes"])
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
            runpy.run_path(str(ROOT / script), run_name="__main__")
        assert "invalid choice 'yes'; choose from: " in err.getvalue() and len(err.getvalue().splitlines()) == 1
