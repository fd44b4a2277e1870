"""An apply killed at any step boundary leaves a journal; the next run says so, and a new
plan and apply converge (issue: crash recovery, SIGKILL at each step boundary)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_netns
from tests.e2e.test_cli import ZTPLAN
from tests.integration.test_gateway_netns import GATEWAY
from ztplan.journal import read_journal
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
SPEC = GATEWAY + (
    "controller: {kind: local, token_env: ZT_TOKEN}\n"
    f"networks:\n  - id: '{NWID}'\n    routes:\n"
    "      - {target: 10.6.4.0/22}\n      - {target: 0.0.0.0/0, via: 10.6.6.2}\n"
)


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token="crash-token") as emu:
        emu.add_network(NWID)
        yield emu


def run(
    tmp_path: Path, emu: ControllerEmulator, *args: str, kill_at: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ZTPLAN_STATE_DIR": str(tmp_path / "state"),
        "NO_COLOR": "1",
        "ZTPLAN_CONTROLLER_URL": emu.url,
        "ZT_TOKEN": "crash-token",
    }
    if kill_at:
        env["ZTPLAN_TEST_KILL_AT"] = kill_at
    return subprocess.run(
        [*ZTPLAN, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_netns
@pytest.mark.parametrize("point", ["step:0", "step:1", "step:2", "state"])
def test_sigkill_at_a_step_boundary_then_plan_and_apply_converge(
    tmp_path: Path, netns: str, emulator: ControllerEmulator, point: str
) -> None:
    spec = tmp_path / "gw.yaml"
    spec.write_text(SPEC)
    killed = run(
        tmp_path, emulator, "apply", str(spec), "--netns", netns, "--auto-approve", kill_at=point
    )
    assert killed.returncode == -9, killed.stderr
    found = read_journal(tmp_path / "state" / "gw.journal.json")
    assert found is not None
    assert [s.name for s in found.steps] == [
        "firewall (protect)",
        "sysctl (forward)",
        "controller (announce)",
    ]
    assert found.done == list(range(3 if point == "state" else int(point[-1])))

    planned = run(tmp_path, emulator, "plan", str(spec), "--netns", netns)
    assert planned.returncode == 0, planned.stderr
    assert f"Warning: apply.interrupted: an apply of gw (pid {found.pid}" in planned.stdout
    assert "did not finish: in place: " in planned.stdout
    # The next plan says the lock is stale too, before apply refuses over it.
    assert "gw.lock is stale (left by pid" in planned.stdout

    lock = json.loads((tmp_path / "state" / "gw.lock").read_text())
    stale = run(tmp_path, emulator, "apply", str(spec), "--netns", netns, "--auto-approve")
    assert stale.returncode == 1 and "stale lock" in stale.stderr
    assert run(tmp_path, emulator, "force-unlock", lock["id"]).returncode == 0

    done = run(tmp_path, emulator, "apply", str(spec), "--netns", netns, "--auto-approve")
    assert done.returncode == 0, done.stderr
    again = run(tmp_path, emulator, "plan", str(spec), "--netns", netns, "--detailed-exitcode")
    assert again.returncode == 0, again.stdout
    assert "did not finish" not in again.stdout
    assert not (tmp_path / "state" / "gw.journal.json").exists()
    state = json.loads((tmp_path / "state" / "gw.json").read_text())
    assert (state["target"], state["netns"]) == ("gw", netns)
