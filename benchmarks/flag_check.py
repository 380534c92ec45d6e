"""Check that command lines parse, without running them: each project script is run only up to its argparse call.

    python -m benchmarks.flag_check COMMANDS_FILE

COMMANDS_FILE holds one command per line, as a shell quotes it (`printf '%q '`): `train_la.py --labelnum 2 ...`
or `-m benchmarks.bench --tiny ...`. For each, the script runs as `__main__` until its parser has parsed the
arguments; a parsed command is reported and stopped there, a rejected one shows argparse's message. Exit 0 when
every command parses, 2 otherwise. `DRY_RUN=1 bash benchmarks/gpu_check.sh` uses it to find a wrong flag in
seconds on any machine, before device time is spent.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import shlex
import sys
import warnings
from pathlib import Path
from unittest import mock

from utils.cli import DocstringHelpFormatter, ScriptParser, run_cli
from utils.errors import UserError


class Parsed(BaseException):  # a signal, not an error: a BaseException passes a script's `except Exception`
    """Raised from inside the script once its arguments parsed: stops it before it does any work."""


def check_command(argv: list[str]) -> str:
    """'' when the command's flags parse, else argparse's message (its last line)."""
    module = argv[1] if argv[:1] == ["-m"] and len(argv) > 1 else None
    script_args = argv[2:] if module else argv[1:]
    if not module and (not argv or not Path(argv[0]).is_file()):
        return f"no such script: {argv[0] if argv else '(empty line)'}"
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, args=None, namespace=None):
        original(parser, args, namespace)  # exits 2 with argparse's message on a bad flag
        raise Parsed

    stderr = io.StringIO()
    saved_argv = sys.argv
    sys.argv = [module or argv[0], *script_args]
    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop), \
                contextlib.redirect_stderr(stderr), warnings.catch_warnings():
            # running an already imported module as __main__ is what this check means to do
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            if module:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
    except Parsed:
        return ""
    except SystemExit as stop:
        lines = stderr.getvalue().strip().splitlines()
        if not lines:
            return f"exited with {stop.code} before parsing its flags"
        # argparse's "prog: error: ..." or the scripts' one line "error: ... (-h lists the flags)"
        return lines[-1].split("error: ", 1)[-1].removesuffix(" (-h lists the flags)")
    finally:
        sys.argv = saved_argv
    return "finished without parsing any flags"


def check_file(path: Path) -> int:
    """Check every command of the file, one line printed each; a UserError names how many were rejected."""
    if not path.is_file():
        raise UserError(f"{path} does not exist; write one shell-quoted command per line (printf '%q ' \"$@\")")
    commands = [shlex.split(line) for line in path.read_text().splitlines() if line.strip()]
    rejected = 0
    for command in commands:
        problem = check_command(command)
        name = " ".join(command[:2]) if command[0] == "-m" else command[0]
        print(f"REJECTED: {name}: {problem}" if problem else f"flags parse: {name}")
        rejected += bool(problem)
    if rejected:
        raise UserError(f"{rejected} of {len(commands)} commands in {path} rejected (see above)")
    return len(commands)


def build_parser() -> argparse.ArgumentParser:
    p = ScriptParser(description=__doc__, formatter_class=DocstringHelpFormatter)
    p.add_argument("commands", metavar="COMMANDS_FILE", help="one shell-quoted command per line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: check_file(Path(args.commands)))


if __name__ == "__main__":
    sys.exit(main())
