"""Issue 9's "done when", on the real kernel: firewall ownership that holds on a shared host.

Every test here works in network namespaces it creates and deletes (never the host's own),
and where it claims that nothing foreign was touched it compares the whole ruleset of both
families (`full_dump`) before and after, not the lines it expects to see. Other tools are
played by the test's own `iptables` processes, as they would run them; the command line
by `ztplan` in a subprocess (tests/e2e/test_cli.py's helper).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Silent, apply_spec, full_dump, open_spec, rules_of, sh
from tests.e2e.test_cli import one_error_line, ztplan
from tests.e2e.test_safe_apply import wait_for
from ztplan import render
from ztplan.errors import ApplyFailed, StalePlan, ZtplanError
from ztplan.iptables import is_legacy, jump_rule
from ztplan.model import Action
from ztplan.run import Run
from ztplan.testing.emulator import ControllerEmulator

# --- specs ------------------------------------------------------------------------------

GW_A = """\
version: 1
target: {name: gw-a}
firewall:
  ipv4:
    nat:
      POSTROUTING: ["-o eth0 -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]
    filter:
      policy: {FORWARD: DROP}
      FORWARD:
        - "-i zt0 -s 10.6.4.0/22 -j ACCEPT"
        - "-o zt0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"
sysctl: {net.ipv4.ip_forward: 1}
"""
"""A gateway for 10.6.4.0/22."""

GW_B = """\
version: 1
target: {name: gw-b}
firewall:
  ipv4:
    nat:
      POSTROUTING: ["-o eth0 -s 10.7.0.0/24 -j MASQUERADE"]
    filter:
      policy: {FORWARD: DROP}
      INPUT: ["-i zt+ -p udp --dport 53 -j ACCEPT"]
      FORWARD:
        - "-i zt+ -s 10.7.0.0/24 -j ACCEPT"
        - "-d 10.7.0.0/24 -m state --state RELATED,ESTABLISHED -j ACCEPT"
  ipv6:
    filter:
      policy: {FORWARD: DROP}
      FORWARD: ["-i zt+ -s 2001:db8:7::/64 -j ACCEPT"]
sysctl: {net.ipv4.ip_forward: 1, net.ipv6.conf.all.forwarding: 1}
"""
"""Another gateway on the same host, for 10.7.0.0/24: the same policy and sysctl values."""

MEMBER = """\
version: 1
target: {name: laptop}
sysctl: {net.ipv4.conf.all.rp_filter: 2}
"""
"""A member's spec: sysctls only (its firewall provider still reads, and owns nothing)."""

TARGETS = {"gw-a": GW_A, "gw-b": GW_B, "laptop": MEMBER}

OWN_RULES = {
    "gw-a": [
        "-A ZT-gw-a.FORWARD -s 10.6.4.0/22 -i zt0 -j ACCEPT",
        "-A ZT-gw-a.FORWARD -d 10.6.4.0/22 -o zt0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ],
    "gw-b": [
        "-A ZT-gw-b.FORWARD -s 10.7.0.0/24 -i zt+ -j ACCEPT",
        "-A ZT-gw-b.FORWARD -d 10.7.0.0/24 -m state --state RELATED,ESTABLISHED -j ACCEPT",
        "-A ZT-gw-b.INPUT -i zt+ -p udp -m udp --dport 53 -j ACCEPT",
    ],
    "laptop": [],
}
"""What each target owns in the ipv4 filter table once applied, as iptables-save prints it."""

# --- helpers ----------------------------------------------------------------------------


def run_of(netns: str, state_dir: Path, target: str, text: str | None = None) -> Run:
    """A run of one target's spec, from its own file (`gw-a.yaml`), on the shared state dir."""
    return open_spec(text or TARGETS[target], netns, state_dir, name=f"{target}.yaml")


def own_rules(netns: str, target: str) -> list[str]:
    return [r for r in rules_of(netns) if r.startswith(f"-A ZT-{target}.")]


def added(before: str, after: str) -> list[str]:
    """The lines `after` has beyond `before`, asserting that without them it *is* `before`
    (same lines, same order): nothing else was removed, changed or moved."""
    old, new = before.split("\n"), after.split("\n")
    extra, i = [], 0
    for line in new:
        if i < len(old) and line == old[i]:
            i += 1
        else:
            extra.append(line)
    assert i == len(old), f"lost or moved: {old[i:]}"
    return extra


# --- several targets on one host --------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(TARGETS)), ids="-then-".join)
def test_three_targets_in_any_order_keep_each_others_rules(
    netns: str, state_dir: Path, order: tuple[str, ...]
) -> None:
    """Each apply touches its own chains and jumps only, so whichever order they come in,
    every target converges and stays converged."""
    for target in order:
        apply_spec(run_of(netns, state_dir, target))
    for target in TARGETS:
        assert own_rules(netns, target) == OWN_RULES[target]
        assert run_of(netns, state_dir, target).plan().changes == [], target
    converged = full_dump(netns)
    for target in order:
        outcome = apply_spec(run_of(netns, state_dir, target))
        assert outcome.steps == []
        assert full_dump(netns) == converged, target
    forward = [r for r in rules_of(netns) if r.startswith("-A FORWARD")]
    # Both gateways' jumps, each sound (only the other target's jump may stand ahead of it).
    assert sorted(forward) == sorted(
        f"-A FORWARD {jump_rule(t, 'FORWARD')}" for t in ("gw-a", "gw-b")
    )
    assert sh(netns, "sysctl", "-n", "net.ipv4.conf.all.rp_filter").strip() == "2"


# --- claims: one target owns each policy, sysctl key and ndppd file ---------------------

NDPPD = """\
ndppd:
  proxies:
    - interface: eth0
      rules: [{prefix: "2001:db8:6::/80", method: static}]
"""


@pytest.mark.parametrize(
    ("theirs", "mine", "key"),
    [
        (
            GW_A,
            GW_B.replace(
                "policy: {FORWARD: DROP}\n      INPUT", "policy: {FORWARD: ACCEPT}\n      INPUT"
            ),
            "firewall.ipv4.filter.policy.FORWARD",
        ),
        (
            GW_A,
            GW_B.replace("net.ipv4.ip_forward: 1", "net.ipv4.ip_forward: 0"),
            'sysctl["net.ipv4.ip_forward"]',
        ),
        (GW_A + NDPPD, MEMBER + NDPPD, "ndppd.config"),
    ],
    ids=["policy", "sysctl", "ndppd"],
)
def test_two_targets_claiming_one_thing_differently_is_a_plan_error_naming_both(
    netns: str, state_dir: Path, theirs: str, mine: str, key: str
) -> None:
    """gw-a is applied; a second target on the same host (same state dir) wants its
    FORWARD policy, its ip_forward or its ndppd file otherwise. The state records what
    gw-a claims, so the second plan is an error naming both spec files, and its apply
    changes nothing."""
    from ztplan.host import LocalHost
    from ztplan.providers.ndppd import Ndppd

    try:
        apply_spec(run_of(netns, state_dir, "gw-a", theirs))
        before = full_dump(netns)
        other = "gw-b" if "gw-b" in mine else "laptop"
        run = run_of(netns, state_dir, other, mine)
        plan = run.plan()
        assert [(f.address, f.severity) for f in plan.errors] == [(key, "error")]
        message = plan.errors[0].message
        assert message.startswith(f"{other}.yaml wants {key} = ")
        assert "but target gw-a (from gw-a.yaml)" in message
        with pytest.raises(ZtplanError, match="nothing was applied"):
            apply_spec(run)
        assert full_dump(netns) == before
    finally:
        Ndppd().stop(LocalHost(netns))
        shutil.rmtree(f"/etc/ztplan/netns/{netns}", ignore_errors=True)


def test_the_same_value_for_the_same_key_is_no_conflict(netns: str, state_dir: Path) -> None:
    """gw-a and gw-b both want FORWARD DROP and ip_forward 1: one value, so both hold it."""
    apply_spec(run_of(netns, state_dir, "gw-a"))
    run = run_of(netns, state_dir, "gw-b")
    assert run.plan().errors == []
    apply_spec(run)
    for target in ("gw-a", "gw-b"):
        state = run_of(netns, state_dir, target).previous()
        assert state is not None
        assert state.claims["firewall.ipv4.filter.policy.FORWARD"] == "DROP"
        assert state.claims['sysctl["net.ipv4.ip_forward"]'] == "1"
        assert run_of(netns, state_dir, target).plan().changes == []


# --- a second process writes while the apply waits on a slow controller ----------------

NWID = "8056c2e21c000001"
ROUTED = GW_A + (
    "controller: {kind: local, token_env: ZT_TOKEN}\n"
    f"networks:\n  - id: '{NWID}'\n    routes:\n"
    "      - {target: 10.6.4.0/22}\n      - {target: 0.0.0.0/0, via: 10.6.6.2}\n"
)
"""gw-a with a default route on the controller: its apply reads the controller (slowly)."""


@pytest.fixture
def controller(monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token="tk") as emulator:
        emulator.add_network(NWID)
        monkeypatch.setenv("ZTPLAN_CONTROLLER_URL", emulator.url)
        monkeypatch.setenv("ZT_TOKEN", "tk")
        yield emulator


def gets(emulator: ControllerEmulator) -> int:
    return sum(1 for method, path, _ in emulator.request_log if method == "GET" and NWID in path)


class Meddler(threading.Thread):
    """Another process on the host: once the controller has been asked for the network the
    `nth` time (and sits on its latency before answering), it runs `commands` (each an
    `iptables` process of its own) in the namespace, then takes the latency away so the
    rest of the run is quick. `requests` is how many requests the controller had seen when
    the commands were done: the same as then, so they happened inside that one wait."""

    def __init__(
        self, emulator: ControllerEmulator, netns: str, nth: int, commands: list[list[str]]
    ) -> None:
        super().__init__(daemon=True)
        self.emulator, self.netns, self.nth, self.commands = emulator, netns, nth, commands
        self.requests: tuple[int, int] | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 20
        while gets(self.emulator) < self.nth and time.monotonic() < deadline:
            time.sleep(0.002)
        seen = len(self.emulator.request_log)
        for argv in self.commands:
            subprocess.run(["ip", "netns", "exec", self.netns, *argv], check=True)
        self.requests = (seen, len(self.emulator.request_log))
        self.emulator.faults.latency = 0.0


BAN = ["iptables", "-I", "FORWARD", "1", "-s", "192.0.2.66/32", "-j", "DROP"]
BAN_SAVED = "-A FORWARD -s 192.0.2.66/32 -j DROP"
SSH = ["iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "ACCEPT"]


@pytest.mark.parametrize(
    ("nth", "exclusive", "outcome"),
    [
        (1, False, "applied"),  # while the plan reads the controller
        (2, False, "applied"),  # while the stale check after the go-ahead reads it
        (1, True, "stale"),  # ... and INPUT is exclusive: what ztplan would purge moved
        (2, True, "applied"),  # ... after the stale check: the plan's changes, no more
    ],
    ids=["plan-read", "stale-check-read", "plan-read-exclusive", "stale-check-read-exclusive"],
)
def test_foreign_rules_written_during_a_slow_controller_read(
    netns: str,
    state_dir: Path,
    controller: ControllerEmulator,
    nth: int,
    exclusive: bool,
    outcome: str,
) -> None:
    """Between ztplan's read of the firewall and its restore, fail2ban (or a human) inserts
    a rule at the head of FORWARD and one into INPUT. Foreign rules of a chain ztplan does
    not purge are not in the firewall's digest and ztplan never uses a position in such a
    chain: the apply goes ahead, and its jump (inserted at the head) and its own chain
    are right. Where ztplan would purge (INPUT exclusive), a foreign rule is part of what
    the plan decided on: seen by the stale check, it refuses naming the firewall, with
    nothing changed; come after that check, it is left for the next plan to purge."""
    text = ROUTED
    if exclusive:
        text = text.replace(
            "    filter:\n",
            '    filter:\n      INPUT: {exclusive: true, rules: ["-i lo -j ACCEPT"]}\n',
        )
    sh(netns, "iptables", "-A", "OUTPUT", "-o", "eth0", "-p", "icmp", "-j", "ACCEPT")
    before = full_dump(netns)
    controller.faults.latency = 0.5
    run = run_of(netns, state_dir, "gw-a", text)
    meddler = Meddler(controller, netns, nth, [BAN, SSH])
    meddler.start()
    if outcome == "stale":
        with pytest.raises(StalePlan) as refused:
            apply_spec(run)
        meddler.join()
        # The firewall's digest covers the rules of a chain it purges: that is what moved.
        assert refused.value.lines() == [
            "the live state changed since the plan was made (firewall); nothing was applied "
            "(run plan again and review the new changes)"
        ]
        assert added(before, full_dump(netns)) == [
            "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT",
            BAN_SAVED,
        ]
        assert controller.network(NWID)["routes"] == []
        assert not any(method == "POST" for method, _, _ in controller.request_log)
        assert meddler.requests is not None and meddler.requests[0] == meddler.requests[1]
        return
    result = apply_spec(run)
    meddler.join()
    assert meddler.requests is not None and meddler.requests[0] == meddler.requests[1]
    assert [s.status for s in result.steps] == ["done", "done", "done"]
    assert controller.network(NWID)["routes"] == [
        {"target": "0.0.0.0/0", "via": "10.6.6.2"},
        {"target": "10.6.4.0/22", "via": None},
    ]
    filter_rules = rules_of(netns)
    assert own_rules(netns, "gw-a") == OWN_RULES["gw-a"] + (
        ["-A ZT-gw-a.INPUT -i lo -j ACCEPT"] if exclusive else []
    )
    assert [r for r in filter_rules if r.startswith("-A FORWARD")] == [
        f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
        BAN_SAVED,
    ]
    assert "-A INPUT -p tcp -m tcp --dport 2222 -j ACCEPT" in filter_rules
    assert "-A OUTPUT -o eth0 -p icmp -j ACCEPT" in filter_rules
    again = run_of(netns, state_dir, "gw-a", text).plan()
    if exclusive:  # the rule came after the check: now the plan purges it, and says so
        assert [(str(c.address), c.reason) for c in again.changes] == [
            (
                'firewall.ipv4.filter.INPUT.foreign["-p tcp -m tcp --dport 2222 -j ACCEPT"]',
                "foreign rule in an exclusive chain",
            )
        ]
    else:
        assert again.changes == []


# --- rollback undoes ztplan's edits, not the ban fail2ban made meanwhile ----------------

F2B = [
    ["iptables", "-N", "f2b-sshd"],
    ["iptables", "-A", "f2b-sshd", "-j", "RETURN"],
    ["iptables", "-A", "INPUT", "-p", "tcp", "-m", "multiport", "--dports", "22", "-j", "f2b-sshd"],
]
"""fail2ban's sshd jail as it sets it up: its chain, and one jump into it from INPUT."""
F2B_BAN = ["iptables", "-I", "f2b-sshd", "1", "-s", "203.0.113.66/32", "-j", "REJECT"]
F2B_BAN_SAVED = "-A f2b-sshd -s 203.0.113.66/32 -j REJECT --reject-with icmp-port-unreachable"


class BanDuringApply(Silent):
    """Reports nothing; once the firewall step is done, fail2ban bans (its own process)."""

    def __init__(self, netns: str) -> None:
        self.netns = netns

    def step_done(self, step: object) -> None:
        if getattr(step, "provider", None) == "firewall":
            sh(self.netns, *F2B_BAN)


@pytest.mark.parametrize("failing", ["controller-500", "sysctl-write"])
def test_rollback_after_a_later_step_fails_keeps_a_ban_made_during_the_apply(
    netns: str, state_dir: Path, controller: ControllerEmulator, failing: str
) -> None:
    """The firewall step is done, fail2ban bans an address, then a later step fails: the
    rollback undoes exactly the plan's changes (own chains, jump, policy) and so the ban,
    which no snapshot of ztplan's holds, survives."""
    for argv in F2B:
        sh(netns, *argv)
    before = full_dump(netns)
    text = ROUTED
    if failing == "sysctl-write":  # a value the kernel refuses (EINVAL), after the firewall
        text = ROUTED.replace(
            "sysctl: {net.ipv4.ip_forward: 1}",
            'sysctl: {net.ipv4.ip_forward: 1, net.ipv4.ip_local_port_range: "70000 80000"}',
        )
    run = run_of(netns, state_dir, "gw-a", text)
    if failing == "controller-500":
        api = next(p for p in run.providers if p.name == "controller").api  # type: ignore[attr-defined]
        api.sleep = lambda seconds: None  # its retries need not wait in a test
        post = api.post

        def post_answered_500(path: str, body: dict[str, object]) -> object:
            controller.faults.status_5xx, controller.faults.status_5xx_code = api.attempts, 500
            return post(path, body)

        api.post = post_answered_500
    with pytest.raises(ApplyFailed) as failed:
        run.apply(approve=lambda plan: True, reporter=BanDuringApply(netns))
    message = str(failed.value)
    if failing == "controller-500":
        assert message.startswith("apply failed at step controller (announce): controller: POST ")
        assert "answered 500, 4 attempts" in message
        assert message.endswith(
            "rolled back: controller (announce), sysctl (forward), firewall (protect)"
        )
        assert controller.network(NWID)["routes"] == []
    else:
        assert message.startswith(
            "apply failed at step sysctl (forward): sysctl: net.ipv4.ip_local_port_range: "
            "cannot write '70000 80000' (Invalid argument)"
        )
        assert message.endswith("rolled back: sysctl (forward), firewall (protect)")
    after = full_dump(netns)
    assert added(before, after) == [F2B_BAN_SAVED]
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"


def test_a_revert_at_the_deadline_keeps_a_ban_made_in_the_window(
    tmp_path: Path, netns: str
) -> None:
    """`apply --confirm-within 2`, no `confirm`: the reverter undoes the apply's changes,
    read afresh at the deadline, and so keeps what fail2ban did in the window."""
    for argv in F2B:
        sh(netns, *argv)
    before = full_dump(netns)
    spec = tmp_path / "gw-a.yaml"
    spec.write_text(GW_A)
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
    assert own_rules(netns, "gw-a") == OWN_RULES["gw-a"]  # applied, for now
    sh(netns, *F2B_BAN)
    outcome = tmp_path / "state" / "gw-a.reverted.json"
    assert wait_for(outcome.exists), "not reverted"
    assert (
        json.loads(outcome.read_text())["outcome"]
        == "reverted: sysctl (forward), firewall (protect)"
    )
    assert added(before, full_dump(netns)) == [F2B_BAN_SAVED]
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"


# --- a partial plan is that rule and what it needs, nothing else ------------------------

ZT_OUT = 'firewall.ipv4.filter.FORWARD["-s 10.6.4.0/22 -i zt0 -j ACCEPT"]'
ICMP = 'firewall.ipv4.filter.FORWARD["-i zt0 -p icmp -j ACCEPT"]'


def test_a_targeted_plan_and_apply_of_one_rule_through_the_cli(tmp_path: Path, netns: str) -> None:
    """`plan --target ADDRESS` then `apply --target ADDRESS`: on a fresh host that is the
    rule, its own chain and the jump into it (what it cannot live without), and not the
    policy, the NAT or the sysctl; once those exist, it is the rule alone."""
    for argv in F2B:
        sh(netns, *argv)
    spec = tmp_path / "gw-a.yaml"
    spec.write_text(GW_A)
    before = full_dump(netns)
    planned = ztplan("plan", str(spec), "--netns", netns, "--target", ZT_OUT, cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert [line.strip() for line in planned.stdout.splitlines() if line.startswith("  + ")] == [
        '+ firewall.ipv4.filter.FORWARD.chain = "ZT-gw-a.FORWARD"',
        '+ firewall.ipv4.filter.FORWARD.jump = "first"',
        f"+ {ZT_OUT}",
    ]
    assert f"partial plan: 3 of 9 change(s), for {ZT_OUT} and what they depend on" in (
        planned.stdout
    )
    done = ztplan(
        "apply", str(spec), "--netns", netns, "--target", ZT_OUT, "--auto-approve", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    after = full_dump(netns)
    assert added(before, after) == [
        ":ZT-gw-a.FORWARD - [0:0]",
        f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
        "-A ZT-gw-a.FORWARD -s 10.6.4.0/22 -i zt0 -j ACCEPT",
    ]
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    # The whole spec, then one more rule of which only one is targeted.
    assert (
        ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path).returncode == 0
    )
    spec.write_text(
        GW_A.replace(
            '        - "-o zt0',
            '        - "-i zt0 -p icmp -j ACCEPT"\n        - "-i zt0 -p udp --dport 53 -j ACCEPT"\n'
            '        - "-o zt0',
        )
    )
    before = full_dump(netns)
    done = ztplan(
        "apply", str(spec), "--netns", netns, "--target", ICMP, "--auto-approve", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert added(before, full_dump(netns)) == ["-A ZT-gw-a.FORWARD -i zt0 -p icmp -j ACCEPT"]
    assert own_rules(netns, "gw-a")[1] == "-A ZT-gw-a.FORWARD -i zt0 -p icmp -j ACCEPT"


# --- comments that look like ztplan's are not ztplan's ----------------------------------

FILTER_ONLY = """\
version: 1
target: {name: gw-a}
firewall:
  ipv4:
    filter:
      FORWARD:
        - "-i zt0 -s 10.6.4.0/22 -j ACCEPT"
        - "-o zt0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"
"""
"""gw-a's FORWARD rules alone: its apply adds lines to the dump and changes none."""


@pytest.mark.parametrize("separator", ["\u2028", "\x85"], ids=["U+2028", "U+0085"])
def test_a_comment_hiding_a_tagged_rule_or_the_tags_word_is_foreign(
    netns: str, state_dir: Path, separator: str
) -> None:
    """`iptables-save` prints a comment as it was given, so a line separator other than
    "\\n" (which `str.splitlines` would cut at) can make half a comment read like a rule of
    ztplan 0.1, here one the spec asks for; and a comment may merely contain the word
    `ztplan`, or the tag's very words. None of them is ztplan's: the plan owns, moves and
    deletes none, and the apply only adds."""
    phantom = "-A FORWARD -s 10.6.4.0/22 -i zt0 -m comment --comment ztplan -j ACCEPT"
    for chain, match, comment, verdict in (
        ("FORWARD", "-s 192.0.2.7", f"note{separator}{phantom}", "DROP"),
        ("INPUT", "", f"x{separator}-A INPUT -m comment --comment ztplan -j ACCEPT", "DROP"),
        ("FORWARD", "-s 192.0.2.9", "ztplan is nice", "DROP"),
        ("INPUT", "", "ztplan2", "DROP"),
        ("FORWARD", "", "-m comment --comment ztplan", "LOG"),
    ):
        words = f"-A {chain} {match} -m comment --comment".split()
        sh(netns, "iptables", *words, comment, "-j", verdict)
    before = full_dump(netns)
    run = run_of(netns, state_dir, "gw-a", FILTER_ONLY)
    plan = run.plan()
    assert [(c.action.value, str(c.address)) for c in plan.changes] == [
        ("create", "firewall.ipv4.filter.FORWARD.chain"),
        ("create", "firewall.ipv4.filter.FORWARD.jump"),
        ("create", ZT_OUT),
        (
            "create",
            'firewall.ipv4.filter.FORWARD["-d 10.6.4.0/22 -o zt0 -m state --state '
            'RELATED,ESTABLISHED -j ACCEPT"]',
        ),
    ]
    assert plan.unmanaged == [
        f'firewall.ipv4.filter.FORWARD.foreign["-s 192.0.2.7/32 -m comment --comment '
        f'\\"note{separator}{phantom}\\" -j DROP"]',
        'firewall.ipv4.filter.FORWARD.foreign["-s 192.0.2.9/32 -m comment --comment '
        '\\"ztplan is nice\\" -j DROP"]',
        'firewall.ipv4.filter.FORWARD.foreign["-m comment --comment '
        '\\"-m comment --comment ztplan\\" -j LOG"]',
    ]
    apply_spec(run)
    assert added(before, full_dump(netns)) == [
        ":ZT-gw-a.FORWARD - [0:0]",
        f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
        *OWN_RULES["gw-a"],
    ]
    assert run_of(netns, state_dir, "gw-a", FILTER_ONLY).plan().changes == []


# --- a Docker host: a restart of dockerd moves its jumps, and the gateway still forwards --

DOCKER = """\
*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -o docker0 -j DOCKER
-A DOCKER-FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A DOCKER-FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
"""
"""What dockerd (28, with its default bridge) writes: FORWARD policy DROP, its chains,
its jumps at the head of FORWARD, and its NAT."""

DOCKER_RESTART = [
    ["iptables", "-D", "FORWARD", "-j", "DOCKER-USER"],
    ["iptables", "-D", "FORWARD", "-j", "DOCKER-FORWARD"],
    ["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD"],
    ["iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER"],
]
"""dockerd starting again: it deletes its jumps and inserts them at the head of FORWARD
(libnetwork's EnsureJumpRule), ahead of everything else there."""

MEMBER_IP, REMOTE = "10.6.4.5", "203.0.113.1"


@dataclass(frozen=True)
class Topology:
    """A gateway between a ZeroTier member and the Internet, as three namespaces joined by
    veth pairs: member zt0 10.6.4.5/22 -> gateway zt0 10.6.6.2/22; gateway eth0
    198.51.100.7/24 -> "Internet" eth0 198.51.100.1/24, which holds a remote host
    (203.0.113.1) and has no route back to 10.6.4.0/22: only SNAT brings answers home."""

    gw: str
    mem: str
    net: str


@pytest.fixture
def topology() -> Iterator[Topology]:
    if not (os.geteuid() == 0 and shutil.which("ip")):
        pytest.skip("needs root and iproute2")
    base = f"ztplan-t-{uuid.uuid4().hex[:8]}"
    names = Topology(f"{base}-gw", f"{base}-mem", f"{base}-net")
    ns = (names.gw, names.mem, names.net)

    def ip(*argv: str) -> None:
        subprocess.run(["ip", *argv], check=True, capture_output=True)

    try:
        for name in ns:
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        for link, peer in (("eth0", names.net), ("zt0", names.mem)):
            ip(*f"-n {names.gw} link add {link} type veth peer name {link} netns {peer}".split())
        for name, link, cidr in (
            (names.gw, "eth0", "198.51.100.7/24"),
            (names.gw, "zt0", "10.6.6.2/22"),
            (names.net, "eth0", "198.51.100.1/24"),
            (names.mem, "zt0", f"{MEMBER_IP}/22"),
        ):
            ip("-n", name, "addr", "add", cidr, "dev", link)
            ip("-n", name, "link", "set", link, "up")
        ip("-n", names.net, "addr", "add", f"{REMOTE}/32", "dev", "lo")
        ip("-n", names.gw, "route", "add", "default", "via", "198.51.100.1")
        ip("-n", names.mem, "route", "add", "default", "via", "10.6.6.2")
        yield names
    finally:
        for name in ns:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def member_to_internet(topology: Topology) -> list[tuple[bool, str | None]]:
    """A UDP datagram and a TCP connection from the member to the remote host, each
    answered by an echo server there with the source it saw: (answered, that source)."""
    from ztplan.twin.probe import Probe, ProbeRun, Server

    servers = [Server(topology.net, "ipv4", p, REMOTE, 7777) for p in ("udp", "tcp")]
    probes = [
        Probe(topology.mem, "ipv4", p, MEMBER_IP, sport, REMOTE, 7777)
        for p, sport in (("udp", 41001), ("tcp", 41002))
    ]
    run = ProbeRun(servers, probes, timeout=0.5)
    try:
        outcomes = run.run()
    finally:
        run.close()
    return [(o.answered, o.reply[0] if o.reply else None) for o in outcomes]


def test_a_docker_restart_causes_no_drift_and_the_gateway_still_forwards(
    topology: Topology, state_dir: Path
) -> None:
    """dockerd's jumps go back to the head of FORWARD on every start; ztplan's jump may
    stand behind them (YIELD_TO), so the next plan is empty. And that is not only the
    plan's opinion: real packets from a member still reach the Internet, SNATed, and their
    answers come back, before and after the restart."""
    sh(topology.gw, "iptables-restore", "--noflush", input=DOCKER)
    sh(topology.gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # dockerd turns it on too
    assert member_to_internet(topology) == [(False, None)] * 2  # Docker's FORWARD DROP
    before = full_dump(topology.gw)
    run = run_of(topology.gw, state_dir, "gw-a")
    apply_spec(run)
    assert added(before, full_dump(topology.gw)) == [
        ":ZT-gw-a.FORWARD - [0:0]",
        f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
        *OWN_RULES["gw-a"],
        ":ZT-gw-a.POSTROUTING - [0:0]",
        f"-A POSTROUTING {jump_rule('gw-a', 'POSTROUTING')}",
        "-A ZT-gw-a.POSTROUTING -s 10.6.4.0/22 -o eth0 -j SNAT --to-source 198.51.100.7",
    ]
    assert member_to_internet(topology) == [(True, "198.51.100.7")] * 2
    for argv in DOCKER_RESTART:
        sh(topology.gw, *argv)
    assert [r for r in rules_of(topology.gw) if r.startswith("-A FORWARD")] == [
        "-A FORWARD -j DOCKER-USER",
        "-A FORWARD -j DOCKER-FORWARD",
        f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
    ]
    assert run_of(topology.gw, state_dir, "gw-a").plan().changes == []
    assert member_to_internet(topology) == [(True, "198.51.100.7")] * 2


MANY = 4_500
"""Rules more than GW_A's: past the state file's 4,096-resource chunk and the journal's
2,000-change chunk (issue 14's streamed state and journal, and its lean changes)."""


def test_a_large_apply_among_docker_rules_keeps_them_forwards_and_reverts_whole(
    topology: Topology, state_dir: Path
) -> None:
    """The memory work of issue 14 on the real kernel, beside Docker's ruleset: a first
    apply of 4,500 rules more, with a ban arriving after the plan's read and before the
    restore, adds exactly ztplan's lines (the ban and every Docker line kept, in place),
    converges, and real packets from a member still reach the Internet, SNATed. A second
    apply left unconfirmed is reverted at its deadline to that very ruleset, and the state
    file kept beside its journal is put back byte for byte."""
    gw = topology.gw
    sh(gw, "iptables-restore", "--noflush", input=DOCKER)
    sh(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    drops = [f"-s 10.200.{i >> 8}.{i & 255}/32 -j DROP" for i in range(MANY)]
    listed = "".join(f'        - "{r}"\n' for r in drops)
    text = GW_A.replace("      FORWARD:\n", "      FORWARD:\n" + listed)
    before = full_dump(gw)

    class BanDuringTheRestore(Silent):
        def step_started(self, step: object) -> None:
            if getattr(step, "provider", None) == "firewall" and BAN_SAVED not in rules_of(gw):
                sh(gw, *BAN)

    run_of(gw, state_dir, "gw-a", text).apply(
        approve=lambda plan: True, reporter=BanDuringTheRestore()
    )
    applied = full_dump(gw)
    assert sorted(added(before, applied)) == sorted(
        [
            BAN_SAVED,
            ":ZT-gw-a.FORWARD - [0:0]",
            f"-A FORWARD {jump_rule('gw-a', 'FORWARD')}",
            *(f"-A ZT-gw-a.FORWARD {r}" for r in drops),
            *OWN_RULES["gw-a"],
            ":ZT-gw-a.POSTROUTING - [0:0]",
            f"-A POSTROUTING {jump_rule('gw-a', 'POSTROUTING')}",
            "-A ZT-gw-a.POSTROUTING -s 10.6.4.0/22 -o eth0 -j SNAT --to-source 198.51.100.7",
        ]
    )
    assert own_rules(gw, "gw-a")[:MANY] == [f"-A ZT-gw-a.FORWARD {r}" for r in drops]
    assert run_of(gw, state_dir, "gw-a", text).plan().changes == []
    assert member_to_internet(topology) == [(True, "198.51.100.7")] * 2
    state = state_dir / "gw-a.json"
    first = state.read_bytes()
    assert len(json.loads(first)["resources"]) > 4096

    spec = state_dir.parent / "gw-a.yaml"
    spec.write_text(text.replace(f'        - "{drops[0]}"\n', ""))
    done = ztplan(
        "apply",
        str(spec),
        "--netns",
        gw,
        "--auto-approve",
        "--no-verify",
        "--confirm-within",
        "5",
        cwd=state_dir.parent,
    )
    assert done.returncode == 0, done.stderr
    assert (state_dir / "gw-a.journal.state").read_bytes() == first != state.read_bytes()
    assert full_dump(gw) != applied
    assert wait_for((state_dir / "gw-a.reverted.json").exists), "not reverted"
    assert wait_for(lambda: not (state_dir / "gw-a.lock").exists())
    assert full_dump(gw) == applied
    assert state.read_bytes() == first
    assert not (state_dir / "gw-a.journal.state").exists()
    assert run_of(gw, state_dir, "gw-a", text).plan().changes == []
    assert member_to_internet(topology) == [(True, "198.51.100.7")] * 2


# --- a jump to nowhere, misspelt or not --------------------------------------------------


def test_a_misspelt_target_fails_validate_and_plan_naming_the_line(
    tmp_path: Path, netns: str
) -> None:
    """`-j ACCEPTT` is one letter from a verdict: a typo, refused as soon as the spec is
    read (validate needs neither the host nor root for it), by validate and plan alike."""
    (tmp_path / "gw-a.yaml").write_text(
        GW_A.replace("-i zt0 -s 10.6.4.0/22 -j ACCEPT", "-i zt0 -s 10.6.4.0/22 -j ACCEPTT")
    )
    before = full_dump(netns)
    expected = (
        "Error: gw-a.yaml:10: firewall.ipv4.filter.FORWARD[0]: jumps to ACCEPTT, which is no "
        "target: ACCEPT misspelt? (a name one letter from a target's is taken for a typo, not "
        "a chain)"
    )
    for command in (["validate", "gw-a.yaml"], ["plan", "gw-a.yaml", "--netns", netns]):
        done = ztplan(*command, cwd=tmp_path)
        assert one_error_line(done) == expected, command
        assert done.stdout == ""
    assert full_dump(netns) == before


def test_a_jump_to_a_chain_missing_here_passes_validate_and_fails_plan(
    tmp_path: Path, netns: str
) -> None:
    """`-j NOSUCHCHAIN` may name a chain another tool makes on the host (`DOCKER-USER`):
    validate, which does not read the host, passes it without a word; plan finds it in
    no live table and fails naming the line, with nothing applied."""
    (tmp_path / "gw-a.yaml").write_text(
        GW_A.replace("ESTABLISHED -j ACCEPT", "ESTABLISHED -j NOSUCHCHAIN")
    )
    done = ztplan("validate", "gw-a.yaml", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        "gw-a.yaml: valid (target gw-a)\n",
        "",
    )
    before = full_dump(netns)
    done = ztplan("plan", "gw-a.yaml", "--netns", netns, cwd=tmp_path)
    assert one_error_line(done) == (
        "Error: the plan has 1 error(s): gw-a.yaml:11: firewall.ipv4.filter.FORWARD[1]: jumps "
        "to NOSUCHCHAIN, which is no target and no chain of the spec or of the live ipv4 "
        "filter table"
    )
    assert "Error: gw-a.yaml:11: firewall.ipv4.filter.FORWARD[1]: jumps to NOSUCHCHAIN" in (
        done.stdout
    )
    done = ztplan("apply", "gw-a.yaml", "--netns", netns, "--auto-approve", cwd=tmp_path)
    assert one_error_line(done).startswith("Error: the plan has 1 error(s); nothing was applied")
    assert full_dump(netns) == before


# --- migrating a ruleset written by the first release -------------------------------------

RELEASE_0_1 = {
    "iptables-restore": """\
*filter
:FORWARD DROP [0:0]
:ZT-IN - [0:0]
:f2b-sshd - [0:0]
-A INPUT -p tcp -m multiport --dports 22 -j f2b-sshd
-A INPUT -i zt+ -m comment --comment ztplan -j ZT-IN
-A INPUT -i lo -j ACCEPT
-A FORWARD -s 10.6.4.0/22 -i zt0 -m comment --comment ztplan -j ACCEPT
-A FORWARD -s 192.0.2.9/32 -j DROP
-A FORWARD -d 10.6.4.0/22 -o zt0 -m state --state RELATED,ESTABLISHED {tag} -j ACCEPT
-A ZT-IN -p icmp -m comment --comment ztplan -j ACCEPT
-A ZT-IN -p udp -m udp --dport 53 -m comment --comment ztplan -j ACCEPT
-A f2b-sshd -j RETURN
COMMIT
*nat
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 10.6.4.0/22 -o eth0 {tag} -j SNAT --to-source 198.51.100.7
COMMIT
""".format(tag="-m comment --comment ztplan"),
    "ip6tables-restore": """\
*filter
:FORWARD DROP [0:0]
-A FORWARD -s 2001:db8:6::/64 -i zt0 -m comment --comment ztplan -j ACCEPT
-A FORWARD -p ipv6-icmp -j ACCEPT
COMMIT
""",
}
"""What ztplan 0.1 left on a host: its rules tagged in the built-in chains, its user chain
ZT-IN (tagged rules, a tagged jump from INPUT), among fail2ban's, Docker's and a human's."""

MIGRATED = """\
version: 1
target: {name: gw-a}
firewall:
  ipv4:
    nat:
      POSTROUTING: ["-o eth0 -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]
    filter:
      policy: {FORWARD: DROP}
      INPUT: ["-i zt+ -j ZT-IN"]
      ZT-IN: ["-p icmp -j ACCEPT", "-p udp --dport 53 -j ACCEPT"]
      FORWARD:
        - "-i zt0 -s 10.6.4.0/22 -j ACCEPT"
        - "-o zt0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"
  ipv6:
    filter:
      policy: {FORWARD: DROP}
      FORWARD: ["-i zt0 -s 2001:db8:6::/64 -j ACCEPT"]
"""
"""The same gateway's spec, as it was for 0.1 and is now."""


def foreign_lines(dump: str) -> list[str]:
    """The dump without ztplan's lines of either release: its own chains and their jumps
    (`ZT-`), and rules carrying 0.1's tag."""
    return [line for line in dump.split("\n") if "ZT-" not in line and not is_legacy(line)]


def test_a_first_release_ruleset_migrates_in_one_apply(netns: str, state_dir: Path) -> None:
    """The plan moves each tagged rule into the target's own chains (a delete at its
    `legacy` address, saying why, and a create in the own chain), and deletes 0.1's chain
    ZT-IN that the move empties; one apply (one transaction per family) does it, the next
    plan is empty, and every foreign rule keeps its place."""
    for tool, text in RELEASE_0_1.items():
        sh(netns, tool, "--noflush", input=text)
    before = full_dump(netns)
    run = run_of(netns, state_dir, "gw-a", MIGRATED)
    plan = run.plan()

    def legacy(where: str, rule: str) -> tuple[str, str]:
        family, table, chain = where.split(".")
        return (
            f'firewall.{where}.legacy["{rule}"]',
            f"tagged in {chain} by ztplan 0.1; ztplan's rules now live in its own chain "
            f"ZT-gw-a.{chain}",
        )

    state = "-m state --state RELATED,ESTABLISHED"
    assert [(str(c.address), c.reason) for c in plan.changes if c.action is Action.DELETE] == [
        legacy("ipv4.filter.INPUT", "-i zt+ -j ZT-IN"),
        legacy("ipv4.filter.FORWARD", "-s 10.6.4.0/22 -i zt0 -j ACCEPT"),
        legacy("ipv4.filter.FORWARD", f"-d 10.6.4.0/22 -o zt0 {state} -j ACCEPT"),
        legacy("ipv4.filter.ZT-IN", "-p icmp -j ACCEPT"),
        legacy("ipv4.filter.ZT-IN", "-p udp -m udp --dport 53 -j ACCEPT"),
        (
            "firewall.ipv4.filter.ZT-IN.legacy",
            "made by ztplan 0.1 for its rules, which now live in ZT-gw-a.ZT-IN",
        ),
        legacy("ipv4.nat.POSTROUTING", "-s 10.6.4.0/22 -o eth0 -j SNAT --to-source 198.51.100.7"),
        legacy("ipv6.filter.FORWARD", "-s 2001:db8:6::/64 -i zt0 -j ACCEPT"),
    ]
    shown = render.plan(plan, "human", False)
    assert (
        '  - firewall.ipv4.filter.ZT-IN.legacy = "ZT-IN"  (made by ztplan 0.1 for its rules, '
        "which now live in ZT-gw-a.ZT-IN)\n" in shown
    )
    # Each moved rule is created in the own chain, in the same step as its delete.
    creates = {str(c.address) for c in plan.changes if c.action is Action.CREATE}
    for change in plan.changes:
        if change.address.key and ".legacy[" in change.address:
            assert str(change.address).replace(".legacy[", "[") in creates
    assert {(c.provider, c.phase) for c in plan.changes} == {("firewall", "protect")}
    outcome = apply_spec(run)
    assert [(s.provider, s.status) for s in outcome.steps] == [("firewall", "done")]
    after = full_dump(netns)
    assert foreign_lines(after) == foreign_lines(before)
    assert not any(is_legacy(line) for line in after.split("\n"))
    assert ":ZT-IN - [0:0]" in before and ":ZT-IN - [0:0]" not in after
    assert own_rules(netns, "gw-a") == [
        *OWN_RULES["gw-a"],
        "-A ZT-gw-a.INPUT -i zt+ -j ZT-gw-a.ZT-IN",
        "-A ZT-gw-a.ZT-IN -p icmp -j ACCEPT",
        "-A ZT-gw-a.ZT-IN -p udp -m udp --dport 53 -j ACCEPT",
    ]
    assert run_of(netns, state_dir, "gw-a", MIGRATED).plan().changes == []


def test_a_failed_migration_is_rolled_back_to_the_first_releases_ruleset(
    netns: str, state_dir: Path
) -> None:
    """A later step fails after the migration's firewall step: rollback puts 0.1's rules
    back exactly where they stood (several in one chain, around a foreign one) and makes
    its chain ZT-IN again, so the dump is the one before, line for line."""
    for tool, text in RELEASE_0_1.items():
        sh(netns, tool, "--noflush", input=text)
    before = full_dump(netns)
    text = MIGRATED + 'sysctl: {net.ipv4.ip_local_port_range: "70000 80000"}\n'
    with pytest.raises(ApplyFailed, match="rolled back: sysctl \\(forward\\), firewall"):
        apply_spec(run_of(netns, state_dir, "gw-a", text))
    assert full_dump(netns) == before
