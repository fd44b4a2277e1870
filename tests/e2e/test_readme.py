"""README's tour, run as written: the `$ ` lines of its console blocks, in order, in one
shell whose output is a terminal, against a fresh sandbox; each command's output is
compared with the lines the README shows under it.

What a README line may leave to chance is masked on both sides (`MASKS`: pids, ports,
times, the host's name, commits, temporary directories), and a line `...` stands for
any number of lines left out. A command must exit 0 (the README shows `; echo "exit $?"`
where a status is the point).

The sandbox has a fixed name, so the test is skipped when one is up (someone is using
it), and takes its own down at the end, even on failure.

To regenerate the outputs after a change to what ztplan prints:

    ZTPLAN_UPDATE_README=1 .venv/bin/pytest tests/e2e/test_readme.py

rewrites each command's output in README.md from a real run, keeping where the README
leaves lines out (`...`: the same number of lines before and after it, and the lines it
showed between two of them when they are still there). Review the diff, then commit.
"""

from __future__ import annotations

import difflib
import os
import pty
import re
import select
import subprocess
import sys
import tty
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, needs_netns
from tests.unit.test_docs import split_markdown
from ztplan.sandbox import GATEWAY

README = ROOT / "README.md"
UPDATE = os.environ.get("ZTPLAN_UPDATE_README") == "1"
ELIDED = "..."
DIRTY = " (work tree has uncommitted changes)"
"""What a plan header adds while the repository is being edited (the README, say)."""
MASKS = [
    (re.compile(r"\bpid \d+"), "pid <N>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<PORT>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[+-]\d\d:\d\d| [A-Z]{2,5})?"), "<TIME>"),
    (re.compile(r"(?<=\bhost )[\w.-]+"), "<HOST>"),
    (re.compile(r" @ [0-9a-f]{12}\b"), " @ <COMMIT>"),
    (re.compile(re.escape(DIRTY)), ""),
    (re.compile(r"\S*/tmp\.[A-Za-z0-9]+(?=/|\s|$)"), "<TMPDIR>"),  # mktemp -d
]
"""(what varies from run to run, what it is replaced with on both sides)."""
NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
"""Colours and carriage returns: the README shows what a terminal shows, in plain text."""
PROGRESS = re.compile(r"^\S.*: still applying\.\.\. \d+ s elapsed$")
"""A step that happens to take over 2 s says so; how long a step takes is not the tour's."""


@dataclass
class Step:
    """A `$ ` line of a console block and the output lines the README shows under it."""

    block: int
    command: str
    expected: list[str]


def readme_steps(text: str) -> list[Step]:
    blocks, _ = split_markdown(text)
    steps: list[Step] = []
    for number, block in enumerate(blocks):
        if block.lang != "console":
            continue
        for line in block.lines:
            if line.startswith("$ "):
                steps.append(Step(number, line[2:], []))
            elif steps and steps[-1].block == number:
                steps[-1].expected.append(line)
            else:
                raise AssertionError(f"README.md:{block.line}: a console block starts with output")
    return steps


def mask(line: str) -> str:
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return line


def matches(expected: list[str], actual: list[str]) -> bool:
    parts = [
        r"(?:.*\n)*?" if line == ELIDED else re.escape(mask(line)) + r"\n" for line in expected
    ]
    return re.fullmatch("".join(parts), "".join(mask(line) + "\n" for line in actual)) is not None


def refreshed(expected: list[str], actual: list[str]) -> list[str]:
    """The README's lines for `actual`: all of it, or, where the README left lines out,
    as many lines before and after each `...` as it showed, and the lines it showed
    between two `...` wherever they still are."""
    if ELIDED not in expected:
        return actual
    segments: list[list[str]] = [[]]
    for line in expected:
        if line == ELIDED:
            segments.append([])
        else:
            segments[-1].append(line)
    head, *middle, tail = segments
    if len(head) + len(tail) >= len(actual):
        return actual
    out, at, end = actual[: len(head)], len(head), len(actual) - len(tail)
    for shown in middle:
        masked = [mask(line) for line in shown]
        for start in range(at, end - len(shown) + 1):
            if [mask(line) for line in actual[start : start + len(shown)]] == masked:
                out += [ELIDED, *actual[start : start + len(shown)]]
                at = start + len(shown)
                break
    return [*out, ELIDED, *actual[end:]]


class Shell:
    """One bash for the whole tour (`eval "$(ztplan sandbox env)"` and `export` carry
    over), reading commands from a pipe and writing to a terminal, as at a prompt: a
    command's stdout is a tty (line-buffered, in the order a user sees it)."""

    MARK = "__ztplan_readme_step_done__"

    def __init__(self, cwd: Path, env: dict[str, str], tmp: Path) -> None:
        self.tmp = str(tmp)
        """The shell's TMPDIR (the test's own): shown as /tmp, where a user's would be."""
        self.master, slave = pty.openpty()
        tty.setraw(slave)  # "\n" stays "\n"; the README is not typed into it
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=slave,
            stderr=slave,
            text=True,
            start_new_session=True,
        )
        os.close(slave)

    def run(self, command: str, timeout: float = 300.0) -> tuple[int, list[str]]:
        """(exit status, output lines); stdin is /dev/null: nothing waits for a keyboard."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"{{ {command}\n}} </dev/null\nprintf '\\n{self.MARK} %d\\n' $?\n")
        self.process.stdin.flush()
        output = b""
        found = None
        while found is None:
            ready, _, _ = select.select([self.master], [], [], timeout)
            assert ready, f"`{command}` did not finish in {timeout} s: {output.decode()!r}"
            try:
                output += os.read(self.master, 65536)
            except OSError:  # EIO: bash is gone
                raise AssertionError(f"the shell ended during `{command}`") from None
            found = re.search(rf"\n{self.MARK} (\d+)\n".encode(), output)
        text = NOISE.sub("", output[: found.start()].decode()).replace(self.tmp, "/tmp")
        lines = text.split("\n")
        if lines[-1] == "":  # the output's own last newline
            lines.pop()
        return int(found[1]), [line for line in lines if not PROGRESS.match(line)]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.master)


def _sandbox_up() -> bool:
    return os.path.exists(f"/run/netns/{GATEWAY}")


def _write_back(text: str, steps: list[Step], outputs: list[list[str]]) -> str:
    """README `text` with each console block's outputs replaced by `outputs`."""
    blocks, _ = split_markdown(text)
    lines = text.split("\n")
    for number in sorted({s.block for s in steps}, reverse=True):
        block = blocks[number]
        content = []
        for step, output in zip(steps, outputs, strict=True):
            if step.block == number:
                content += [f"$ {step.command}", *refreshed(step.expected, output)]
        lines[block.line - 1 : block.line - 1 + len(block.lines)] = content
    return "\n".join(lines)


def test_the_readme_shows_a_tour() -> None:
    """The collection below is not vacuous, and the tour keeps its files out of the
    repository (`make test` must still pass after it)."""
    steps = readme_steps(README.read_text())
    commands = [s.command for s in steps]
    assert commands[0].startswith("export ZTPLAN_STATE_DIR=$(mktemp -d)")
    assert "ztplan sandbox up" in commands and commands[-1] == "ztplan sandbox down"
    assert all("specs/" not in c.partition(" -o ")[2] for c in commands)


def test_masks_and_elision() -> None:
    assert matches(["a", ELIDED, "z"], ["a", "b", "c", "z"])
    assert matches(["a", ELIDED, "z"], ["a", "z"])
    assert not matches(["a", "z"], ["a", "b", "z"])
    assert matches(["ndppd: running, pid 31926"], ["ndppd: running, pid 7"])
    assert matches(["Target: gw1 on host vm (netns x)"], ["Target: gw1 on host gw-3.lan (netns x)"])
    assert not matches(["Target: gw1 (netns x)"], ["Target: gw2 (netns x)"])
    actual = ["1", "2", "3", "4", "5", "6"]
    assert refreshed([ELIDED, "old", "old"], actual) == [ELIDED, "5", "6"]
    assert refreshed(["0", ELIDED, "3", ELIDED], actual) == ["1", ELIDED, "3", ELIDED]
    assert refreshed(["x"], actual) == actual


@needs_netns
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    if _sandbox_up():
        pytest.skip(f"a sandbox ({GATEWAY}) is already up on this machine; not touching it")
    text = README.read_text()
    steps = readme_steps(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTPLAN_") and k != "NO_COLOR"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["TMPDIR"] = str(tmp_path)  # mktemp -d: in pytest's directory, removed with it
    shell = Shell(ROOT, env, tmp_path)
    outputs: list[list[str]] = []
    problems: list[str] = []
    try:
        for step in steps:
            status, output = shell.run(step.command)
            outputs.append(output)
            if status != 0:
                problems.append(f"$ {step.command}\nexit {status}:\n" + "\n".join(output))
            elif not matches(step.expected, output):
                diff = difflib.unified_diff(step.expected, output, "README", "actual", lineterm="")
                problems.append(f"$ {step.command}\n" + "\n".join(diff))
    finally:
        shell.close()
        if _sandbox_up():
            subprocess.run([sys.executable, "-m", "ztplan", "sandbox", "down"], check=False)
    if UPDATE and len(outputs) == len(steps):
        clean = [[line.replace(DIRTY, "") for line in output] for output in outputs]
        README.write_text(_write_back(text, steps, clean))  # as a clean checkout shows it
        return
    assert not problems, (
        "README.md's tour does not run as written (ZTPLAN_UPDATE_README=1 rewrites its "
        "outputs from a real run):\n\n" + "\n\n".join(problems)
    )
