"""The CLI as a user runs it: a real process, its exit code and its words."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import git
import pytest

from tests.conftest import full_dump, needs_netns, sh
from tests.integration.test_gateway_netns import GATEWAY

ZTPLAN = [sys.executable, "-m", "ztplan"]


def ztplan(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ZTPLAN_STATE_DIR": str(cwd / "state"), "NO_COLOR": "1"}
    return subprocess.run(
        [*ZTPLAN, *args],
        cwd=cwd,
        input=input,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY)
    return path


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = ztplan("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("validate", "plan", "apply", "show", "force-unlock", "sandbox"):
        assert command in done.stdout


def test_validate_good_and_bad(tmp_path: Path, spec: Path) -> None:
    done = ztplan("validate", str(spec), cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, f"{spec}: valid (target gw)\n")
    spec.write_text(
        GATEWAY.replace('"-i zt+ -s 10.6.4.0/22 -j ACCEPT"', '"-j ACCEPT\\n-A INPUT -j DROP"')
    )
    assert one_error_line(ztplan("validate", str(spec), cwd=tmp_path)) == (
        f"Error: {spec}:12: firewall.ipv4.filter.FORWARD[0]: a rule on one line without control "
        "characters (newline, NUL, tab...)"
    )
    done = ztplan("validate", str(spec), "--json", cwd=tmp_path)
    assert done.returncode == 1
    assert json.loads(done.stderr)["error"].startswith(
        f"{spec}:12: firewall.ipv4.filter.FORWARD[0]"
    )
    assert one_error_line(ztplan("validate", str(tmp_path / "nope.yaml"), cwd=tmp_path)) == (
        f"Error: {tmp_path / 'nope.yaml'}: no such spec file"
    )


@needs_netns
def test_plan_apply_plan_exit_codes(tmp_path: Path, spec: Path, netns: str) -> None:
    done = ztplan("plan", str(spec), "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stdout.endswith("Plan: 12 to add, 4 to change, 0 to destroy.\n")
    assert f"Target: gw on host {socket.gethostname()} (netns {netns})\n" in done.stdout
    assert (
        '  + firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]\n'
        in done.stdout
    )
    assert '  ~ sysctl["net.ipv4.ip_forward"]: "0" -> "1"\n' in done.stdout

    as_json = json.loads(ztplan("plan", str(spec), "--netns", netns, "--json", cwd=tmp_path).stdout)
    assert as_json["format_version"] == "2"
    assert as_json["target"] == "gw"
    assert as_json["spec"]["path"] == str(spec)
    assert len(as_json["changes"]) == 16
    assert as_json["counts"] == {"add": 12, "change": 4, "destroy": 0}
    assert set(as_json["snapshots"]) == {"firewall", "sysctl"}

    markdown = ztplan("plan", str(spec), "--netns", netns, "--format", "markdown", cwd=tmp_path)
    assert (
        f"| `gw on host {socket.gethostname()} (netns {netns})` | 12 | 4 | 0 |" in markdown.stdout
    )
    assert (
        '| forward | update | `sysctl["net.ipv4.ip_forward"]` | `"0"` → `"1"` |' in markdown.stdout
    )

    done = ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Apply complete. State serial 1 written." in done.stderr
    done = ztplan("plan", str(spec), "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "No changes. The live state matches the spec." in done.stdout

    (state,) = json.loads(ztplan("show", "--state", "--json", cwd=tmp_path).stdout)
    assert (state["serial"], state["target"], state["netns"]) == (1, "gw", netns)
    summary = ztplan("show", "--state", cwd=tmp_path).stdout
    assert summary.startswith("gw: serial 1, applied ")
    assert f"in netns {netns}\n  spec: {spec}\n  manages: 17 firewall, 2 sysctl\n" in summary


@needs_netns
def test_apply_asks_and_a_no_changes_nothing(tmp_path: Path, spec: Path, netns: str) -> None:
    before = full_dump(netns)
    done = ztplan("apply", str(spec), "--netns", netns, cwd=tmp_path, input="no\n")
    assert done.returncode == 1
    assert "Apply cancelled; nothing was changed." in done.stderr
    assert full_dump(netns) == before
    done = ztplan("apply", str(spec), "--netns", netns, cwd=tmp_path, input="yes\n")
    assert done.returncode == 0, done.stderr
    assert "-j SNAT --to-source 198.51.100.7" in full_dump(netns)


@needs_netns
def test_a_bad_spec_changes_nothing(tmp_path: Path, spec: Path, netns: str) -> None:
    spec.write_text(
        GATEWAY.replace('"-i zt+ -s 10.6.4.0/22 -j ACCEPT"', '"-i zt+ --bogus -j ACCEPT"')
    )
    before = full_dump(netns)
    line = one_error_line(
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
    )
    assert line == (
        f"Error: {spec}:12: firewall.ipv4.filter.FORWARD[0]: the kernel rejects this rule: "
        'unknown option "--bogus"'
    )
    assert full_dump(netns) == before
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"


def test_unknown_namespace_is_one_line(tmp_path: Path, spec: Path) -> None:
    line = one_error_line(ztplan("plan", str(spec), "--netns", "no-such-ns-zt", cwd=tmp_path))
    assert line.startswith("Error: host: no network namespace named 'no-such-ns-zt'")


def _write_lock(tmp_path: Path, pid: int, lock_id: str = "1234-abcd") -> Path:
    path = tmp_path / "state" / "gw.lock"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "id": lock_id,
                "pid": pid,
                "host": socket.gethostname(),
                "user": "alice",
                "operation": "apply",
                "created": "2026-11-25T10:00:00+00:00",
            }
        )
    )
    return path


@needs_netns
def test_held_lock_fails_at_once_naming_the_holder(tmp_path: Path, spec: Path, netns: str) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    try:
        _write_lock(tmp_path, holder.pid)
        line = one_error_line(
            ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
        )
        assert line == (
            f"Error: {tmp_path}/state/gw.lock: the target is locked by pid {holder.pid} on "
            f"{socket.gethostname()} (user alice, operation apply, "
            "since 2026-11-25T10:00:00+00:00, "
            "lock id 1234-abcd) (wait for it to finish, or pass --lock-timeout SECONDS to wait)"
        )
        # The id is the proof the user read who holds it: force-unlock removes it and says whose.
        done = ztplan("force-unlock", "1234-abcd", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert f"held by pid {holder.pid} on {socket.gethostname()}, apply since" in done.stdout
    finally:
        holder.kill()
        holder.wait()


@needs_netns
def test_stale_lock_is_reported_and_force_unlock_removes_it(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = _write_lock(tmp_path, dead.pid, "dead-beef")
    line = one_error_line(
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
    )
    assert "stale lock left by pid" in line
    assert "remove it with: ztplan force-unlock dead-beef" in line
    assert one_error_line(ztplan("force-unlock", "wrong-id", cwd=tmp_path)).endswith(
        "no lock with id wrong-id"
    )
    done = ztplan("force-unlock", "dead-beef", cwd=tmp_path)
    assert done.returncode == 0 and not lock.exists()
    assert (
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path).returncode == 0
    )


@needs_netns
def test_lock_timeout_waits_for_the_holder(tmp_path: Path, spec: Path, netns: str) -> None:
    holder = subprocess.Popen(["sleep", "60"])
    lock = _write_lock(tmp_path, holder.pid)
    release = subprocess.Popen(["sh", "-c", f"sleep 1; rm -f {lock}"])
    try:
        done = ztplan(
            "apply",
            str(spec),
            "--netns",
            netns,
            "--auto-approve",
            "--lock-timeout",
            "30",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    finally:
        holder.kill()
        holder.wait()
        release.wait()


@needs_netns
def test_spec_from_a_git_ref_not_the_work_tree(
    tmp_path: Path, netns: str, request: pytest.FixtureRequest
) -> None:
    repo = git.Repo.init(tmp_path / "repo")
    request.addfinalizer(repo.close)  # gitpython keeps `git cat-file` helpers until closed
    specs = tmp_path / "repo" / "specs"
    specs.mkdir()
    (specs / "gateway.yaml").write_text(GATEWAY)
    repo.index.add(["specs/gateway.yaml"])
    first = repo.index.commit("first").hexsha
    (specs / "gateway.yaml").write_text(GATEWAY.replace("198.51.100.7", "198.51.100.8"))
    repo.index.add(["specs/gateway.yaml"])
    second = repo.index.commit("second").hexsha
    (specs / "gateway.yaml").write_text("not: [valid")  # the work tree is not read

    for sha, address in ((first, "198.51.100.7"), (second, "198.51.100.8")):
        done = ztplan(
            "plan",
            "--repo",
            str(tmp_path / "repo"),
            "--ref",
            sha,
            "--netns",
            netns,
            "--json",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        plan = json.loads(done.stdout)
        assert plan["spec"]["commit"] == sha
        assert plan["spec"]["path"] == "specs/gateway.yaml"
        assert any(address in c["address"] for c in plan["changes"])
    done = ztplan(
        "apply",
        "specs/gateway.yaml",
        "--repo",
        str(tmp_path / "repo"),
        "--ref",
        "HEAD~1",
        "--netns",
        netns,
        "--auto-approve",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    state = json.loads((tmp_path / "state" / "gw.json").read_text())
    assert state["spec"]["commit"] == first
    line = one_error_line(
        ztplan(
            "plan",
            "--repo",
            str(tmp_path / "repo"),
            "--ref",
            "nope",
            "--netns",
            netns,
            cwd=tmp_path,
        )
    )
    assert "no commit named 'nope'" in line


def test_help_imports_no_heavy_module() -> None:
    """`ztplan --help` must stay fast: the heavy libraries load inside the commands only."""
    code = (
        "import sys, ztplan.cli; "
        "print(sorted(m for m in ('pydantic', 'deepdiff', 'pyroute2', 'git', 'httpx', 'yaml', "
        "'rich') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@needs_netns
def test_a_change_while_asking_refuses_the_apply(tmp_path: Path, spec: Path, netns: str) -> None:
    """The operator approved the plan they saw; if the host moved meanwhile, nothing runs."""
    env = {**os.environ, "ZTPLAN_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    child = subprocess.Popen(
        [*ZTPLAN, "apply", str(spec), "--netns", netns],
        cwd=tmp_path,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    for line in child.stdout:  # the plan is printed before the question
        if line.startswith("Plan: "):
            break
    sh(netns, "iptables", "-P", "INPUT", "DROP")  # someone else, meanwhile
    before = full_dump(netns)
    _, err = child.communicate("yes\n", timeout=60)
    assert child.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "Error: the live state changed since the plan was made (firewall); nothing was applied "
        "(run plan again and review the new changes)"
    )
    assert full_dump(netns) == before


@needs_netns
def test_a_foreign_rule_added_while_asking_does_not_stop_the_apply(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    """fail2ban bans whenever it likes: a rule ztplan leaves alone does not make the plan
    the operator approved stale, and it is still there afterwards."""
    env = {**os.environ, "ZTPLAN_STATE_DIR": str(tmp_path / "state"), "NO_COLOR": "1"}
    child = subprocess.Popen(
        [*ZTPLAN, "apply", str(spec), "--netns", netns],
        cwd=tmp_path,
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("Plan: "):
            break
    sh(netns, "iptables", "-I", "FORWARD", "1", "-s", "203.0.113.9", "-j", "DROP")
    _, err = child.communicate("yes\n", timeout=60)
    assert child.returncode == 0, err
    forward = [r for r in sh(netns, "iptables-save", "-t", "filter").splitlines() if "FORWARD" in r]
    assert "-A FORWARD -s 203.0.113.9/32 -j DROP" in forward


@needs_netns
def test_target_limits_plan_and_apply_and_says_so(tmp_path: Path, spec: Path, netns: str) -> None:
    done = ztplan("plan", str(spec), "--netns", netns, "--target", "sysctl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "Warning: target: partial plan: 2 of 16 change(s), for sysctl and what they depend on"
        in done.stdout
    )
    assert "firewall" not in done.stdout.split("in this order:")[1]
    assert (
        ztplan(
            "apply",
            str(spec),
            "--netns",
            netns,
            "--target",
            "sysctl",
            "--auto-approve",
            cwd=tmp_path,
        ).returncode
        == 0
    )
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert "SNAT" not in full_dump(netns)
    state = json.loads((tmp_path / "state" / "gw.json").read_text())
    assert sorted(state["resources"]) == [
        'sysctl["net.ipv4.ip_forward"]',
        'sysctl["net.ipv6.conf.all.forwarding"]',
    ]
    rest = ztplan("plan", str(spec), "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert rest.returncode == 2 and "Plan: 12 to add, 2 to change, 0 to destroy." in rest.stdout


@needs_netns
def test_import_adopt_then_plan_is_empty(tmp_path: Path, netns: str) -> None:
    """A gateway built by hand with the guide's commands round-trips through import."""
    sh(
        netns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.6.4.0/22",
        "-d",
        "10.6.4.0/22",
        "-j",
        "RETURN",
    )
    sh(
        netns,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "10.6.4.0/22",
        "-j",
        "SNAT",
        "--to-source",
        "198.51.100.7",
    )
    sh(netns, "ip6tables", "-P", "FORWARD", "DROP")
    sh(netns, "ip6tables", "-A", "FORWARD", "-i", "zt+", "-s", "2001:db8:6::/64", "-j", "ACCEPT")
    sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    done = ztplan(
        "import", "--netns", netns, "--target-name", "gw", "--adopt", "-o", "gw.yaml", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "Adopted 3 rule(s)" in done.stderr
    plan = ztplan("plan", "gw.yaml", "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "No changes. The live state matches the spec." in plan.stdout


def test_validate_runs_the_checks_that_need_no_host(tmp_path: Path, spec: Path) -> None:
    spec.write_text(
        GATEWAY.replace('"-i zt+ -s 10.6.4.0/22 -j ACCEPT"', '"-i zt+ --bogus -j ACCEPT"')
    )
    if os.geteuid() == 0:  # the kernel check needs a scratch namespace
        line = one_error_line(ztplan("validate", str(spec), cwd=tmp_path))
        assert "firewall.ipv4.filter.FORWARD[0]: the kernel rejects this rule" in line
    spec.write_text(
        GATEWAY.replace(
            'policy: {FORWARD: DROP}\n      FORWARD:\n        - "-i zt+ -s 10.6.4.0/22 -j ACCEPT"',
            'policy: {FORWARD: DROP}\n      FORWARD:\n        - "-i eth0 -j ACCEPT"',
            1,
        )
    )
    done = ztplan("validate", str(spec), cwd=tmp_path)
    assert done.returncode == 0
    assert "Warning: firewall.ipv4.filter.policy.FORWARD: FORWARD policy DROP" in done.stderr


@needs_netns
def test_dropping_the_firewall_section_deletes_ztplan_rules_and_warns_about_drop(
    tmp_path: Path, spec: Path, netns: str
) -> None:
    assert (
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path).returncode == 0
    )
    spec.write_text("version: 1\ntarget: {name: gw}\nsysctl: {net.ipv4.ip_forward: 1}\n")
    done = ztplan("plan", str(spec), "--netns", netns, cwd=tmp_path)
    assert "Plan: 0 to add, 0 to change, 12 to destroy." in done.stdout
    assert (
        "Warning: firewall.ipv4.filter.policy.FORWARD: the FORWARD policy stays DROP" in done.stdout
    )
