"""Saved plans, stale-plan refusal, and confirm-or-revert, on the real kernel."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import full_dump, needs_netns, rules_of, sh
from tests.e2e.test_cli import ZTPLAN, ztplan

SPEC = """\
version: 1
target: {name: gw}
firewall:
  ipv4:
    filter:
      policy: {FORWARD: DROP}
      INPUT: ["-p tcp --dport 22 -j ACCEPT"]
      FORWARD: ["-i zt+ -s 10.6.4.0/22 -j ACCEPT"]
"""

pytestmark = needs_netns


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(SPEC)
    return path


def wait_for(predicate, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_a_saved_plan_applies_exactly_and_the_spec_file_does_not_matter(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    assert (
        ztplan("plan", str(spec), "--netns", netns, "-o", "plan.json", cwd=tmp_path).returncode == 0
    )
    spec.write_text(SPEC.replace("--dport 22", "--dport 2222"))  # edited after review
    done = ztplan("apply", "plan.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "-A ZT-gw.INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in rules_of(netns)
    shown = ztplan("show", "plan.json", cwd=tmp_path)
    assert shown.returncode == 0 and "Plan: 6 to add, 1 to change, 0 to destroy." in shown.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["spec_text"] == SPEC and "token" not in json.dumps(plan).lower()


def test_a_stale_saved_plan_is_refused_naming_what_moved(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    assert (
        ztplan("plan", str(spec), "--netns", netns, "-o", "plan.json", cwd=tmp_path).returncode == 0
    )
    # Someone made part of it meanwhile: ztplan's own chain and a rule in it.
    sh(netns, "iptables", "-N", "ZT-gw.INPUT")
    sh(netns, "iptables", "-A", "ZT-gw.INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
    before = full_dump(netns)
    done = ztplan("apply", "plan.json", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "Error: plan.json: the live state changed since the plan was made "
        '(firewall.ipv4.filter.INPUT.chain, firewall.ipv4.filter.INPUT["-p tcp -m tcp --dport '
        '22 -j ACCEPT"]); nothing was applied (plan again and review the new changes)'
    )
    assert full_dump(netns) == before


def test_a_saved_plan_is_refused_once_the_state_moved(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    assert (
        ztplan("plan", str(spec), "--netns", netns, "-o", "plan.json", cwd=tmp_path).returncode == 0
    )
    assert (
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path).returncode == 0
    )
    done = ztplan("apply", "plan.json", cwd=tmp_path)
    assert done.returncode == 1
    assert "the state moved since the plan was made (serial None -> 1)" in done.stderr


def test_an_unconfirmed_apply_reverts_by_itself(tmp_path: Path, spec: Path, netns: str) -> None:
    sh(netns, "iptables", "-A", "INPUT", "-j", "LOG")
    before = full_dump(netns)
    done = ztplan(
        "apply",
        str(spec),
        "--netns",
        netns,
        "--auto-approve",
        "--confirm-within",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Not confirmed yet: run `ztplan confirm --target-name gw" in done.stderr
    assert full_dump(netns) != before  # applied, for now
    assert wait_for(lambda: full_dump(netns) == before), "not reverted"
    assert wait_for(lambda: not (tmp_path / "state" / "gw.journal.json").exists())
    assert not (tmp_path / "state" / "gw.json").exists()  # the state is put back too
    log = tmp_path / "state" / "gw.revert.log"
    assert wait_for(lambda: "gw: reverted: firewall (protect)" in log.read_text())
    outcome = json.loads((tmp_path / "state" / "gw.reverted.json").read_text())
    assert outcome["outcome"] == "reverted: firewall (protect)"
    late = ztplan("confirm", cwd=tmp_path)
    assert late.returncode == 1 and "too late: the apply was reverted at" in late.stderr
    noted = ztplan("plan", str(spec), "--netns", netns, cwd=tmp_path).stdout
    assert "Warning: apply.reverted: the last apply was not confirmed and was reverted" in noted


def test_a_revert_puts_the_state_file_before_it_back_byte_for_byte(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    """The state before an unconfirmed apply is kept beside its journal (a hard link), and
    the revert renames it back: the file is the first apply's again, and nothing is left."""
    first = ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    state = tmp_path / "state" / "gw.json"
    before = state.read_bytes()
    spec.write_text(SPEC.replace("--dport 22 -j ACCEPT", "--dport 2222 -j ACCEPT"))
    done = ztplan(
        "apply",
        str(spec),
        "--netns",
        netns,
        "--auto-approve",
        "--confirm-within",
        "3",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert state.read_bytes() != before
    # The reverter removes the journal, then its log and the state it kept, then records
    # its outcome and lets the lock go.
    journal = tmp_path / "state" / "gw.journal"
    assert wait_for(lambda: (tmp_path / "state" / "gw.reverted.json").exists())
    assert wait_for(lambda: not (tmp_path / "state" / "gw.lock").exists())
    assert [p.name for p in (tmp_path / "state").iterdir() if p.name.startswith(journal.name)] == []
    assert state.read_bytes() == before
    spec.write_text(SPEC)  # the first apply's spec: the host and the state are its again
    again = ztplan("plan", str(spec), "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_confirmed_apply_stays(tmp_path: Path, spec: Path, netns: str) -> None:
    done = ztplan(
        "apply",
        str(spec),
        "--netns",
        netns,
        "--auto-approve",
        "--confirm-within",
        "30",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert (
        ztplan("plan", str(spec), "--netns", netns, cwd=tmp_path).stdout.count(
            "Warning: apply.unconfirmed: the last apply is not confirmed"
        )
        == 1
    )
    confirmed = ztplan("confirm", cwd=tmp_path)
    assert (confirmed.returncode, confirmed.stdout) == (
        0,
        "Confirmed: the last apply of gw stays.\n",
    )
    log = tmp_path / "state" / "gw.revert.log"
    assert wait_for(lambda: log.exists() and "confirmed in time" in log.read_text())
    again = ztplan("plan", str(spec), "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert again.returncode == 0
    late = ztplan("confirm", cwd=tmp_path)
    assert late.returncode == 1 and "no apply is waiting for confirmation" in late.stderr


def test_the_revert_happens_even_when_the_session_dies(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    """Started at a terminal (it waits for Enter), then killed with its session."""
    before = full_dump(netns)
    env = {**os.environ, "ZTPLAN_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session with a terminal, like an SSH login
        os.chdir(tmp_path)
        os.execvpe(
            ZTPLAN[0],
            [
                *ZTPLAN,
                "apply",
                str(spec),
                "--netns",
                netns,
                "--auto-approve",
                "--confirm-within",
                "3",
            ],
            env,
        )
    output = b""
    while b"Press Enter within" not in output:
        output += os.read(fd, 4096)
    assert full_dump(netns) != before
    os.killpg(pid, signal.SIGKILL)  # the SSH session dies with the network
    os.waitpid(pid, 0)
    os.close(fd)
    assert wait_for(lambda: full_dump(netns) == before), "not reverted after the session died"
    subprocess.run(["true"], check=True)


def test_boot_files_follow_the_apply_and_boot_drift_is_reported(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    spec.write_text(SPEC + "sysctl: {net.ipv4.ip_forward: 1}\npersist: debian\n")
    where = [str(spec), "--netns", netns, "--root", str(root)]
    done = ztplan("apply", *where, "--auto-approve", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rules = (root / "etc/iptables/rules.v4").read_text()
    assert "-A ZT-gw.INPUT -p tcp -m tcp --dport 22 -j ACCEPT" in rules
    assert "net.ipv4.ip_forward = 1" in (root / "etc/sysctl.d/90-ztplan.conf").read_text()
    clean = ztplan("plan", *where, "--detailed-exitcode", cwd=tmp_path)
    assert clean.returncode == 0, clean.stdout
    sh(netns, "iptables", "-A", "INPUT", "-j", "LOG")  # live, but not in the boot file
    drifted = ztplan("plan", *where, "--detailed-exitcode", cwd=tmp_path)
    assert drifted.returncode == 2
    assert 'persist["etc/iptables/rules.v4"]' in drifted.stdout
    assert "rules.v6" not in drifted.stdout
    assert ztplan("apply", *where, "--auto-approve", cwd=tmp_path).returncode == 0
    assert "-A INPUT -j LOG" in (root / "etc/iptables/rules.v4").read_text()


def test_a_revert_rewrites_the_boot_files_too(tmp_path: Path, spec: Path, netns: str) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    spec.write_text(SPEC + "persist: debian\n")
    done = ztplan(
        "apply",
        str(spec),
        "--netns",
        netns,
        "--root",
        str(root),
        "--auto-approve",
        "--confirm-within",
        "2",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    rules = root / "etc/iptables/rules.v4"
    assert "--dport 22" in rules.read_text()
    # There was no boot file before the apply: the revert leaves none.
    assert wait_for(lambda: not rules.exists()), "boot file not reverted"
    log = tmp_path / "state" / "gw.revert.log"
    # The reverter logs its outcome once it is done: wait for the line, not only the effect.
    assert wait_for(lambda: "gw: reverted: persist (boot), firewall (protect)" in log.read_text())
