"""Shared fixtures. Tests that need the real kernel make their own network namespaces
(never the host's) and delete them, even when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"

CALLERS_ENVIRONMENT = ("ZTPLAN_", "ZEROTIER_CENTRAL_TOKEN")
"""What README's tour leaves exported in the shell that then runs `make test`
(`eval "$(ztplan sandbox env)"`: the emulator's URLs and token; ZTPLAN_STATE_DIR): the
tests pass each explicitly, so one left from the caller would point them at a dead
emulator or a foreign state. ZTPLAN_UPDATE_README is the one meant for the tests."""
for _name in [n for n in os.environ if n.startswith(CALLERS_ENVIRONMENT)]:
    if _name != "ZTPLAN_UPDATE_README":
        del os.environ[_name]


def _can_netns() -> bool:
    return (
        os.geteuid() == 0
        and shutil.which("ip") is not None
        and shutil.which("iptables-save") is not None
    )


needs_netns = pytest.mark.skipif(not _can_netns(), reason="needs root, iproute2 and iptables")


def sh(netns: str, *argv: str, input: str | None = None, check: bool = True) -> str:
    """Run a command inside a test namespace (a test's own hands, not ztplan's)."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stderr}")
    return done.stdout


def rules_of(netns: str, family: str = "ipv4", table: str = "filter") -> list[str]:
    """The `-A ...` lines (and chain policies) of one table, without the dump's comments."""
    tool = "iptables-save" if family == "ipv4" else "ip6tables-save"
    out = sh(netns, tool, "-t", table, check=False)
    return [line for line in out.splitlines() if line.startswith(("-A", ":"))]


def full_dump(netns: str) -> str:
    """Both families' rulesets, without timestamps or counters, and without tables that
    hold nothing (no rules, all policies ACCEPT: the same as absent to the kernel).
    Equal dumps mean nothing changed."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        table: list[str] = []
        for line in sh(netns, tool).splitlines():
            if line.startswith("#"):
                continue
            table.append(line)
            if line == "COMMIT":
                trivial = all(
                    x.startswith("*")
                    or x == "COMMIT"
                    or (x.startswith(":") and x.split()[1] in ("ACCEPT", "-"))
                    for x in table
                )
                if not trivial:
                    out += table
                table = []
    return "\n".join(out)


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace with the sandbox's links: eth0 198.51.100.7/24, zt0 10.6.6.2/22."""
    if not _can_netns():
        pytest.skip("needs root, iproute2 and iptables")
    name = f"ztplan-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for inside, outside, cidr in (
            ("eth0", "o0", "198.51.100.7/24"),
            ("zt0", "o1", "10.6.6.2/22"),
        ):
            subprocess.run(
                ["ip", "-n", name, "link", "add", inside, "type", "veth", "peer", "name", outside],
                check=True,
            )
            subprocess.run(["ip", "-n", name, "addr", "add", cidr, "dev", inside], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", inside, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


def write_spec(directory: Path, text: str, name: str = "spec.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


class Silent:
    """A reporter that says nothing (apply's progress)."""

    def step_started(self, step: object) -> None: ...
    def step_done(self, step: object) -> None: ...
    def rolled_back(self, step: object, how: str) -> None: ...


def open_spec(
    text: str, netns: str | None, state_dir: Path, name: str = "spec.yaml", **options: object
):  # type: ignore[no-untyped-def]
    """A run of the engine on spec `text` (written beside the state dir), as the CLI opens
    one."""
    import contextlib

    from ztplan.run import Options, open_run

    (state_dir.parent / name).write_text(text)
    with contextlib.chdir(state_dir.parent):  # errors name `spec.yaml`, as a user's would
        options.setdefault("state_dir", state_dir.resolve())
        return open_run(Options(spec=name, netns=netns, **options))  # type: ignore[arg-type]


def apply_spec(run, **kwargs: object):  # type: ignore[no-untyped-def]
    """Apply a run without asking (the operator said yes)."""
    return run.apply(approve=lambda plan: True, reporter=Silent(), **kwargs)
