"""Issue 10's command-line conventions, each proven through a real `ztplan` process: exit
codes, help, --debug, Ctrl-C, progress, --target, broken pipes, headers, colours, and
what each output carries. Each test fails if its convention breaks."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from tests.conftest import ROOT, full_dump, needs_netns, sh
from tests.e2e.test_cli import ZTPLAN, ztplan
from tests.integration.test_gateway_netns import GATEWAY
from ztplan import __version__
from ztplan.cli import app
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
SLOW_SPEC = GATEWAY + (
    "controller: {kind: local, token_env: ZT_TOKEN}\n"
    f"networks:\n  - id: '{NWID}'\n    routes:\n"
    "      - {target: 10.6.4.0/22}\n      - {target: 0.0.0.0/0, via: 10.6.6.2}\n"
)
"""The gateway with a route on the controller: the last step (announce) talks to the
emulator, which can be made slow (`Faults.latency`) or failing."""


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


@pytest.mark.parametrize(
    "args", [["--version"], ["plan", "--version"], ["sandbox", "up", "--version"]]
)
def test_version_on_the_app_and_on_each_command(tmp_path: Path, args: list[str]) -> None:
    done = ztplan(*args, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ztplan {__version__}\n", "")


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


def test_help_documents_no_color(tmp_path: Path) -> None:
    text = ztplan("--help", cwd=tmp_path).stdout
    assert "--no-color" in text and "NO_COLOR" in text
    readme = (ROOT / "README.md").read_text()
    assert "NO_COLOR" in readme and "--no-color" in readme


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


@pytest.mark.parametrize("command", ["apply", "drift"])
def test_apply_and_drift_guess_no_spec(tmp_path: Path, command: str) -> None:
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "gateway.yaml").write_text(GATEWAY)  # there, and still not guessed
    done = ztplan(command, cwd=tmp_path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"Error: name the spec to {command}: ztplan {command} SPEC (no default is guessed)\n"
    )


def test_validate_and_plan_default_to_specs_gateway_yaml_as_readme_says(tmp_path: Path) -> None:
    for command in ("validate", "plan"):
        done = ztplan(command, cwd=tmp_path)
        assert done.stderr == "Error: specs/gateway.yaml: no such spec file\n"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "gateway.yaml").write_text(GATEWAY)
    assert ztplan("validate", cwd=tmp_path).stdout == "specs/gateway.yaml: valid (target gw)\n"
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`plan` and `validate` read `specs/gateway.yaml` when no spec is named" in readme


# --- validate: every problem at once -------------------------------------------------


def test_validate_reports_every_problem_at_once_with_the_nearest_field(tmp_path: Path) -> None:
    spec = tmp_path / "gw.yaml"
    spec.write_text(
        "version: 1\ntarget: {name: gw}\n"
        "firewall:\n  ipv4:\n    filter:\n      polcy: {FORWARD: DROP}\n"
        "sysctls: {net.ipv4.ip_forward: 1}\n"
        "networks: [{id: nope}]\n"
    )
    done = ztplan("validate", str(spec), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: {spec}:6: firewall.ipv4.filter.polcy: not a known field; did you mean "
        "`policy`? (see `ztplan schema`)",
        f"Error: {spec}:7: sysctls: not a known field; did you mean `sysctl`? "
        "(see `ztplan schema`)",
        f"Error: {spec}:8: networks[0].id: a network id: 16 lowercase hex digits, got 'nope'",
    ]
    as_json = json.loads(ztplan("validate", str(spec), "--json", cwd=tmp_path).stderr)
    assert as_json["error"] == done.stderr.splitlines()[0].removeprefix("Error: ")
    assert len(as_json["errors"]) == 3


# --- broken pipes ------------------------------------------------------------------


def run_into_a_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`ztplan ARGS | head -1`, made certain: the reader is gone before ztplan writes."""
    read, write = os.pipe()
    os.close(read)
    try:
        env = {**os.environ, "ZTPLAN_STATE_DIR": str(cwd / "state"), "NO_COLOR": "1"}
        return subprocess.run(
            [*ZTPLAN, *args], cwd=cwd, stdout=write, stderr=subprocess.PIPE, text=True, env=env
        )
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["schema"], ["--help"], ["plan", "--help"], ["--version"]])
def test_a_broken_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    done = run_into_a_closed_pipe(args, tmp_path)
    assert (done.returncode, done.stderr) == (1, "")


# --- on the real kernel ------------------------------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY)
    return path


@needs_netns
def test_a_broken_pipe_during_a_plan_ends_quietly(tmp_path: Path, spec: Path, netns: str) -> None:
    for extra in ([], ["--json"]):
        done = run_into_a_closed_pipe(["plan", str(spec), "--netns", netns, *extra], tmp_path)
        assert (done.returncode, done.stderr) == (1, "")


@needs_netns
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_a_target_matching_nothing_is_an_error(
    tmp_path: Path, spec: Path, netns: str, command: str
) -> None:
    before = full_dump(netns)
    extra = ["--auto-approve"] if command == "apply" else []
    done = ztplan(
        command, str(spec), "--netns", netns, "--target", "sysctl.nope", *extra, cwd=tmp_path
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "Error: --target sysctl.nope matches no resource of the spec or of the live state "
        "(run plan without --target to see the addresses)"
    )
    assert full_dump(netns) == before


def in_a_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """What `ztplan ARGS` prints on a terminal (stdout and stderr are the pty)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(cwd)
        os.execvpe(ZTPLAN[0], [*ZTPLAN, *args], env)
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.waitpid(pid, 0)
    os.close(fd)
    return output.decode()


@needs_netns
def test_colours_on_a_terminal_unless_no_color(tmp_path: Path, spec: Path, netns: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["ZTPLAN_STATE_DIR"] = str(tmp_path / "state")
    args = ["plan", str(spec), "--netns", netns]
    assert "\x1b[" in in_a_terminal(args, tmp_path, env)
    assert "\x1b[" in in_a_terminal(args, tmp_path, {**env, "NO_COLOR": ""})  # "" is unset
    for shown in (
        in_a_terminal(args, tmp_path, {**env, "NO_COLOR": "1"}),
        in_a_terminal([*args, "--no-color"], tmp_path, env),
        in_a_terminal(["--no-color", *args], tmp_path, env),
    ):
        assert "Plan: 12 to add, 4 to change, 0 to destroy." in shown
        assert "\x1b" not in shown


@needs_netns
def test_markdown_and_drift_show_before_and_after(tmp_path: Path, spec: Path, netns: str) -> None:
    spec.write_text(
        GATEWAY.replace("-j SNAT --to-source 198.51.100.7", "-j SNAT --to-source 1.2.3.4")
    )
    markdown = ztplan("plan", str(spec), "--netns", netns, "--format", "markdown", cwd=tmp_path)
    assert (
        '| forward | update | `sysctl["net.ipv4.ip_forward"]` | `"0"` → `"1"` |' in markdown.stdout
    )
    assert (
        "- **Warning** `firewall.ipv4.nat.POSTROUTING[1]`: SNAT --to-source 1.2.3.4 is not an "
        "address of any interface here" in markdown.stdout
    )
    drift = ztplan("drift", str(spec), "--netns", netns, cwd=tmp_path)
    assert drift.returncode == 2
    assert 'drift: gw: ~ sysctl["net.ipv4.ip_forward"]: "0" -> "1"\n' in drift.stdout


# --- with a controller: headers, progress, apply --json, Ctrl-C ----------------------


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token="conventions-token") as emu:
        emu.add_network(NWID)
        yield emu


def env_for(tmp_path: Path, emu: ControllerEmulator) -> dict[str, str]:
    return {
        **os.environ,
        "ZTPLAN_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
        "ZTPLAN_CONTROLLER_URL": emu.url,
        "ZT_TOKEN": "conventions-token",
    }


def run(
    tmp_path: Path, emu: ControllerEmulator, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ZTPLAN, *args],
        cwd=tmp_path,
        env=env_for(tmp_path, emu),
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def slow_spec(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(SLOW_SPEC)
    return path


@needs_netns
def test_every_plan_header_names_the_host_netns_and_controller_used(
    tmp_path: Path, slow_spec: Path, netns: str, emulator: ControllerEmulator
) -> None:
    host = socket.gethostname()
    args = ("plan", str(slow_spec), "--netns", netns)
    human = run(tmp_path, emulator, *args).stdout
    assert f"Target: gw on host {host} (netns {netns})\nController: {emulator.url}\n" in human
    markdown = run(tmp_path, emulator, *args, "--format", "markdown").stdout
    assert f"| `gw on host {host} (netns {netns})` |" in markdown
    assert f"Controller: `{emulator.url}`" in markdown
    plan = json.loads(run(tmp_path, emulator, *args, "--json").stdout)
    assert (plan["host"], plan["netns"], plan["controller_url"]) == (host, netns, emulator.url)
    assert plan["format_version"] and plan["counts"] == {"add": 12, "change": 5, "destroy": 0}


class Apply:
    """A `ztplan apply` running in the background, read line by line from stderr."""

    def __init__(self, tmp_path: Path, emu: ControllerEmulator, *args: str) -> None:
        self.process = subprocess.Popen(
            [*ZTPLAN, "apply", *args],
            cwd=tmp_path,
            env=env_for(tmp_path, emu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[str] = []

    def wait_for(self, text: str, seconds: float = 60.0) -> None:
        """Read stderr until a line contains `text` (the prompt has no newline: it is
        looked for in what was read so far)."""
        stream = self.process.stderr
        assert stream is not None
        deadline = time.monotonic() + seconds
        buffer = ""
        while text not in buffer:
            assert time.monotonic() < deadline, f"no {text!r} in {self.err + [buffer]}"
            ready, _, _ = select.select([stream], [], [], 1.0)
            if ready:
                char = os.read(stream.fileno(), 1).decode()
                assert char, f"ztplan ended before {text!r}: {self.err + [buffer]}"
                buffer += char
                if char == "\n":
                    self.err.append(buffer)
                    buffer = ""
        if buffer:
            self.err.append(buffer)

    def finish(self, input: str | None = None) -> tuple[int, str, str]:
        out, rest = self.process.communicate(input, timeout=120)
        return self.process.returncode, out, "".join(self.err) + rest


@needs_netns
def test_a_slow_step_says_so_on_stderr_and_apply_json_is_one_document(
    tmp_path: Path, slow_spec: Path, netns: str, emulator: ControllerEmulator
) -> None:
    emulator.faults.latency = 1.5  # the controller step: a GET and a POST, 3 s
    apply = Apply(tmp_path, emulator, str(slow_spec), "--netns", netns, "--auto-approve", "--json")
    code, out, err = apply.finish()
    assert code == 0, err
    assert "controller (announce): still applying... 2 s elapsed\n" in err
    outcome = json.loads(out)  # stdout is the outcome, and only that
    assert (outcome["applied"], outcome["serial"]) == (True, 1)
    assert [(s["provider"], s["status"]) for s in outcome["steps"]] == [
        ("firewall", "done"),
        ("sysctl", "done"),
        ("controller", "done"),
    ]
    assert "still applying" not in out


@needs_netns
def test_apply_json_on_failure_lists_the_rolled_back_steps(
    tmp_path: Path, slow_spec: Path, netns: str, emulator: ControllerEmulator
) -> None:
    before = full_dump(netns)
    emulator.faults.latency = 1.0
    apply = Apply(tmp_path, emulator, str(slow_spec), "--netns", netns, "--auto-approve", "--json")
    apply.wait_for("controller (announce): applying")
    # The step's first request is being answered: it and its 3 retries fail; the rollback's
    # read after them succeeds.
    emulator.faults.status_5xx = 4
    emulator.faults.latency = 0.0
    code, out, err = apply.finish()
    assert code == 1
    outcome = json.loads(out)
    assert outcome["applied"] is False and outcome["serial"] is None
    assert [(s["provider"], s["status"]) for s in outcome["steps"]] == [
        ("firewall", "rolled back"),
        ("sysctl", "rolled back"),
        ("controller", "rolled back"),
    ]
    assert (
        "rolled back: controller (announce), sysctl (forward), firewall (protect)"
        in (outcome["error"])
    )
    assert json.loads(err.splitlines()[-1])["error"] == outcome["error"]
    assert full_dump(netns) == before


@needs_netns
def test_one_ctrl_c_stops_after_the_step_and_rolls_back(
    tmp_path: Path, slow_spec: Path, netns: str, emulator: ControllerEmulator
) -> None:
    before = full_dump(netns)
    emulator.faults.latency = 1.0
    apply = Apply(tmp_path, emulator, str(slow_spec), "--netns", netns, "--auto-approve")
    apply.wait_for("controller (announce): applying")
    apply.process.send_signal(signal.SIGINT)
    code, _, err = apply.finish()
    assert code == 1
    assert "Stopping after the current step; what was applied will be undone." in err
    assert err.splitlines()[-1] == (
        "Error: apply failed at step controller (announce): interrupted (Ctrl-C) while this "
        "step ran; rolled back: controller (announce), sysctl (forward), firewall (protect)"
    )
    assert full_dump(netns) == before
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert emulator.request_log[-2][1:] == (f"/controller/network/{NWID}", {"routes": []})
    assert not (tmp_path / "state" / "gw.json").exists()
    assert not (tmp_path / "state" / "gw.journal.json").exists()  # all undone: nothing to tell


@needs_netns
def test_a_second_ctrl_c_stops_at_once_and_the_next_plan_says_what_is_in_place(
    tmp_path: Path, slow_spec: Path, netns: str, emulator: ControllerEmulator
) -> None:
    emulator.faults.latency = 2.0
    apply = Apply(tmp_path, emulator, str(slow_spec), "--netns", netns, "--auto-approve")
    apply.wait_for("controller (announce): applying")
    apply.process.send_signal(signal.SIGINT)
    apply.wait_for("Ctrl-C again to stop at once")
    apply.process.send_signal(signal.SIGINT)
    code, _, err = apply.finish()
    assert code == 1
    assert "Stopped at once, in the middle of a step: nothing is undone." in err
    assert err.splitlines()[-1] == "Error: interrupted (Ctrl-C)"
    emulator.faults.latency = 0.0
    plan = run(tmp_path, emulator, "plan", str(slow_spec), "--netns", netns)
    assert plan.returncode == 0, plan.stderr
    assert "Warning: apply.interrupted: an apply of gw (pid " in plan.stdout
    assert (
        "did not finish: in place: firewall (protect), sysctl (forward); "
        "not in place: controller (announce)" in plan.stdout
    )


@needs_netns
@pytest.mark.parametrize("how", ["ctrl-c", "eof"])
def test_ctrl_c_or_eof_at_the_prompt_cancels(
    tmp_path: Path, spec: Path, netns: str, emulator: ControllerEmulator, how: str
) -> None:
    before = full_dump(netns)
    apply = Apply(tmp_path, emulator, str(spec), "--netns", netns)
    apply.wait_for("Enter a value: ")
    if how == "ctrl-c":
        apply.process.send_signal(signal.SIGINT)
        code, out, err = apply.finish()
    else:
        code, out, err = apply.finish("")  # stdin closed
    assert code == 1
    assert err.splitlines()[-1] == "Apply cancelled; nothing was changed."
    assert "Enter a value" not in out
    assert full_dump(netns) == before
