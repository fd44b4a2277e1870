"""cli.py takes a parameter's value as parsed when it already is what the annotation asks,
instead of typer 0.29's pydantic TypeAdapter per parameter (built even for an unset
flag). The values a command gets, and typer's own errors for the rest, stay typer's."""

from __future__ import annotations

import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
from typer.testing import CliRunner

import ztplan.cli  # noqa: F401 - installs the shortcut


class Colour(StrEnum):
    red = "red"
    blue = "blue"


def _app(seen: dict[str, Any]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def main(
        name: Annotated[str, typer.Argument()],
        where: Annotated[Path, typer.Option("--where")] = Path("/"),
        state: Annotated[Path | None, typer.Option("--state", envvar="T_STATE")] = None,
        wait: Annotated[float, typer.Option("--wait")] = 0.0,
        count: Annotated[int, typer.Option("--count")] = 1,
        colour: Annotated[Colour, typer.Option("--colour")] = Colour.red,
        target: Annotated[list[str] | None, typer.Option("--target")] = None,
        flag: Annotated[bool, typer.Option("--flag", envvar="T_FLAG")] = False,
    ) -> None:
        seen.update(locals())

    return app


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, {"where": Path("/"), "state": None, "wait": 0.0, "count": 1, "target": None}),
        (["--where", "/tmp", "--state", "s"], {}, {"where": Path("/tmp"), "state": Path("s")}),
        ([], {"T_STATE": "/var/x"}, {"state": Path("/var/x")}),
        (["--wait", "2.5", "--count", "3"], {}, {"wait": 2.5, "count": 3}),
        (["--colour", "blue"], {}, {"colour": Colour.blue}),
        (["--target", "a", "--target", "b"], {}, {"target": ["a", "b"]}),
        ([], {"T_FLAG": "1"}, {"flag": True}),
        (["--flag"], {}, {"flag": True}),
    ],
)
def test_values_are_typers(args: list[str], env: dict[str, str], expected: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}
    result = CliRunner().invoke(_app(seen), ["n", *args], env=env)
    assert result.exit_code == 0, result.output
    for key, value in expected.items():
        assert seen[key] == value and type(seen[key]) is type(value), key


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--wait", "soon"], "--wait"),
        (["--count", "2.5"], "--count"),
        (["--colour", "green"], "--colour"),
    ],
)
def test_bad_values_get_typers_own_error(args: list[str], words: str) -> None:
    result = CliRunner().invoke(_app({}), ["n", *args])
    assert result.exit_code == 2 and f"Invalid value for '{words}'" in result.output


@pytest.mark.parametrize("args", [[], ["--where", "."]])
def test_an_unreadable_path_default_or_given_gets_typers_error(
    args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a user who cannot read it (root can read anything, hence the patched access)."""
    monkeypatch.setattr("os.access", lambda path, mode: False)
    result = CliRunner().invoke(_app({}), ["n", *args])
    assert result.exit_code == 2 and "is not readable" in result.output


def test_a_nul_in_a_path_gets_typers_error() -> None:
    result = CliRunner().invoke(_app({}), ["n", "--state", "s\x00"])
    assert result.exit_code == 2 and "Invalid value for '--state'" in result.output


def test_a_plain_run_builds_no_type_adapter(tmp_path: Path) -> None:
    """`validate` with a spec and defaults (--format's choice, flags): every value is taken
    as parsed, so pydantic builds no adapter before the spec is read."""
    spec = tmp_path / "s.yaml"
    spec.write_text("version: 1\ntarget: {name: t}\nsysctl:\n  net.ipv4.ip_forward: 1\n")
    code = (
        "import os, sys; import ztplan.cli as c; "
        f"sys.argv = ['ztplan', 'validate', {str(spec)!r}, '--json']; "
        "os._exit = lambda code=0: print('typer._adapters' in sys.modules, code) or sys.exit(); "
        "c.main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split()[-2:] == ["False", "0"], done.stdout + done.stderr
