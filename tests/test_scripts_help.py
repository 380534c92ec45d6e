"""`python SCRIPT -h` works for every script of the repository: a newcomer's first command."""
from __future__ import annotations

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
