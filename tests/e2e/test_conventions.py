"""Issue 10's command-line conventions, each proven through a real `ztplan` process: exit
codes, help, --debug, Ctrl-C, progress, --target, broken pipes, headers, colours, and
what each output carries. Each test fails if its convention breaks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from tests.e2e.test_cli import ztplan
from ztplan import __version__
from ztplan.cli import app


def command_paths() -> list[tuple[str, ...]]:
    """Every command of the app, as words after `ztplan` (the app itself: ())."""
    paths: list[tuple[str, ...]] = [()]

    def walk(command: object, path: tuple[str, ...]) -> None:
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                paths.append((*path, name))
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


# --- usage errors: exit 1, one line naming the option and the help -------------------

USAGE_ERRORS = {
    "misspelt_flag": (
        ["plan", "--detailed-exitcod"],
        "Error: No such option: --detailed-exitcod (Possible options: --detailed-exitcode) "
        "(see `ztplan plan --help`)",
    ),
    "misspelt_option_with_value": (
        ["drift", "--formt", "json"],
        "Error: No such option: --formt (Possible options: --format, --root) "
        "(see `ztplan drift --help`)",
    ),
    "missing_argument": (
        ["force-unlock"],
        "Error: Missing argument 'LOCK_ID'. (see `ztplan force-unlock --help`)",
    ),
    "option_without_its_value": (
        ["show", "--target-name"],
        "Error: Option '--target-name' requires an argument. (see `ztplan show --help`)",
    ),
    "bad_choice": (
        ["plan", "--format", "xml"],
        "Error: Invalid value for '--format': 'xml' is not one of 'human', 'json', "
        "'markdown'. (see `ztplan plan --help`)",
    ),
    "not_a_number": (
        ["apply", "--lock-timeout", "soon"],
        "Error: Invalid value for '--lock-timeout': Input should be a valid number, unable "
        "to parse string as a number (see `ztplan apply --help`)",
    ),
    "unknown_command": (
        ["plna"],
        "Error: No such command 'plna'. Did you mean 'plan'? (see `ztplan --help`)",
    ),
    "unknown_subcommand": (
        ["sandbox", "upp"],
        "Error: No such command 'upp'. Did you mean 'up'? (see `ztplan sandbox --help`)",
    ),
    "unknown_global_option": (["--bogus"], "Error: No such option: --bogus (see `ztplan --help`)"),
}


@pytest.mark.parametrize(("args", "line"), USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_a_usage_error_exits_1_naming_the_option_and_the_help(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """click's own exit code 2 never leaks out (2 means "changes" to a caller of drift)."""
    done = ztplan(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", line + "\n")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_anywhere_adds_a_traceback(tmp_path: Path, where: str) -> None:
    args = ["validate", "nope.yaml"]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    done = ztplan(*args, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("Traceback (most recent call last):\n")
    assert done.stderr.endswith("\nError: nope.yaml: no such spec file\n")
    plain = ztplan("validate", "nope.yaml", cwd=tmp_path)
    assert plain.stderr == "Error: nope.yaml: no such spec file\n"


# --- --version, -h and what help shows ---------------------------------------------


def test_version(tmp_path: Path) -> None:
    done = ztplan("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"ztplan {__version__}\n")


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "ztplan")
def test_help_has_no_python_types_and_no_cut_summaries(tmp_path: Path, path: tuple[str]) -> None:
    """`-h` works everywhere; help says what to pass in a user's words (SPEC, SECONDS,
    human|json|markdown), never `<str>` or `<list[str]>`, and no summary is cut off."""
    short = ztplan(*path, "-h", cwd=tmp_path)
    assert short.returncode == 0, short.stderr
    done = ztplan(*path, "--help", cwd=tmp_path)
    assert done.stdout == short.stdout
    text = done.stdout
    assert text.startswith(f"Usage: {' '.join(('ztplan', *path))} ")
    types = re.findall(r"<[^>|]*>", text)  # `<a|b>` lists the choices: that is fine
    assert not types, f"Python types in the help: {types}"
    usage = text.splitlines()[0]
    assert "[[" not in usage and "..." not in usage.replace("COMMAND [ARGS]...", "")
    cut = [line for line in text.splitlines() if "..." in line.replace("COMMAND [ARGS]...", "")]
    assert not cut, cut


def test_a_command_help_imports_no_heavy_module() -> None:
    """`ztplan plan --help` stays as fast as `ztplan --help`: parsing the app's own flags
    must not import pydantic (typer 0.29 coerces through it; cli.py skips that for
    flags). The time itself is measured by tests/bench/bench_help.py, not asserted."""
    code = (
        "import contextlib, io, sys\n"
        "from ztplan.cli import _dispatch\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    _dispatch(['plan', '--help'])\n"
        "print(sorted(m for m in ('pydantic', 'yaml', 'httpx', 'git') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- which spec: named for apply and drift -------------------------------------------


# --- validate: every problem at once -------------------------------------------------


# --- broken pipes ------------------------------------------------------------------


# --- on the real kernel ------------------------------------------------------------


# --- with a controller: headers, progress, apply --json, Ctrl-C ----------------------
