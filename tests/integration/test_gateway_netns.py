"""Plan and apply the firewall and sysctl providers against the real kernel, in a netns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Silent, apply_spec, full_dump, open_spec, rules_of, sh
from ztplan.errors import ApplyFailed, SpecError
from ztplan.host import CommandResult, LocalHost
from ztplan.model import Action, Plan
from ztplan.run import Run
from ztplan.spec import parse_spec

GATEWAY = """\
version: 1
target: {name: gw}
firewall:
  ipv4:
    nat:
      POSTROUTING:
        - "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"
        - "-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"
    filter:
      policy: {FORWARD: DROP}
      FORWARD:
        - "-i zt+ -s 10.6.4.0/22 -j ACCEPT"
        - "-i eth0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"
  ipv6:
    filter:
      policy: {FORWARD: DROP}
      FORWARD:
        - "-i zt+ -s 2001:db8:6::/64 -j ACCEPT"
        - "-i eth0 -d 2001:db8:6::/64 -j ACCEPT"
sysctl:
  net.ipv4.ip_forward: 1
  net.ipv6.conf.all.forwarding: 1
"""


def run_for(netns: str, state_dir: Path, text: str = GATEWAY) -> Run:
    return open_spec(text, netns, state_dir)


J = '-m comment --comment "ztplan:gw" -j ZT-gw.'


def actions(plan: Plan) -> list[tuple[str, str]]:
    return [(c.action.value, c.address) for c in plan.changes]


def test_plan_of_an_empty_namespace_is_exactly_the_spec(netns: str, state_dir: Path) -> None:
    plan = run_for(netns, state_dir).plan()
    zt_out = 'firewall.ipv4.filter.FORWARD["-s 10.6.4.0/22 -i zt+ -j ACCEPT"]'
    back = (
        'firewall.ipv4.filter.FORWARD["-d 10.6.4.0/22 -i eth0 -m state --state '
        'RELATED,ESTABLISHED -j ACCEPT"]'
    )
    assert actions(plan) == [
        ("update", "firewall.ipv4.filter.policy.FORWARD"),
        ("create", "firewall.ipv4.filter.FORWARD.chain"),
        ("create", "firewall.ipv4.filter.FORWARD.jump"),
        ("create", zt_out),
        ("create", back),
        ("create", "firewall.ipv4.nat.POSTROUTING.chain"),
        ("create", "firewall.ipv4.nat.POSTROUTING.jump"),
        ("create", 'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"]'),
        (
            "create",
            'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]',
        ),
        ("update", "firewall.ipv6.filter.policy.FORWARD"),
        ("create", "firewall.ipv6.filter.FORWARD.chain"),
        ("create", "firewall.ipv6.filter.FORWARD.jump"),
        ("create", 'firewall.ipv6.filter.FORWARD["-s 2001:db8:6::/64 -i zt+ -j ACCEPT"]'),
        ("create", 'firewall.ipv6.filter.FORWARD["-d 2001:db8:6::/64 -i eth0 -j ACCEPT"]'),
        ("update", 'sysctl["net.ipv4.ip_forward"]'),
        ("update", 'sysctl["net.ipv6.conf.all.forwarding"]'),
    ]
    policy = next(c for c in plan.changes if c.address == "firewall.ipv4.filter.policy.FORWARD")
    assert (policy.before, policy.after) == ("ACCEPT", "DROP")
    chain = next(c for c in plan.changes if c.address == "firewall.ipv4.filter.FORWARD.chain")
    assert chain.after == "ZT-gw.FORWARD"
    assert plan.host and plan.netns == netns


def test_apply_converges_and_writes_what_the_spec_says(netns: str, state_dir: Path) -> None:
    run = run_for(netns, state_dir)
    apply_spec(run)
    assert run.plan().changes == []
    assert rules_of(netns, "ipv4", "filter") == [
        ":INPUT ACCEPT [0:0]",
        ":FORWARD DROP [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":ZT-gw.FORWARD - [0:0]",
        f"-A FORWARD {J}FORWARD",
        "-A ZT-gw.FORWARD -s 10.6.4.0/22 -i zt+ -j ACCEPT",
        "-A ZT-gw.FORWARD -d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ]
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert sh(netns, "sysctl", "-n", "net.ipv6.conf.all.forwarding").strip() == "1"
    state = json.loads((state_dir / "gw.json").read_text())
    assert state["claims"] == {
        "firewall.ipv4.filter.policy.FORWARD": "DROP",
        "firewall.ipv6.filter.policy.FORWARD": "DROP",
        'sysctl["net.ipv4.ip_forward"]': "1",
        'sysctl["net.ipv6.conf.all.forwarding"]': "1",
    }


def test_drift_after_a_manual_delete_and_sysctl_is_planned_back(
    netns: str, state_dir: Path
) -> None:
    run = run_for(netns, state_dir)
    apply_spec(run)
    sh(netns, "iptables", "-t", "nat", "-D", "ZT-gw.POSTROUTING", "2")
    sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    sh(netns, "ip6tables", "-P", "FORWARD", "ACCEPT")
    plan = run.plan()
    assert actions(plan) == [
        (
            "create",
            'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]',
        ),
        ("update", "firewall.ipv6.filter.policy.FORWARD"),
        ("update", 'sysctl["net.ipv4.ip_forward"]'),
    ]
    apply_spec(run)
    assert run.plan().changes == []
    # Back in its place: after the RETURN rule, as the spec orders them.
    assert rules_of(netns, "ipv4", "nat")[-2:] == [
        "-A ZT-gw.POSTROUTING -s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-A ZT-gw.POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7",
    ]


def test_equivalent_spellings_are_the_same_rule(netns: str, state_dir: Path) -> None:
    apply_spec(run_for(netns, state_dir))
    respelled = GATEWAY.replace(
        '"-i zt+ -s 10.6.4.0/22 -j ACCEPT"',
        '"--source 10.6.4.0/255.255.252.0 --in-interface zt+ --jump ACCEPT"',
    )
    assert respelled != GATEWAY
    assert run_for(netns, state_dir, respelled).plan().changes == []


def test_foreign_rules_are_kept_in_place_and_reported(netns: str, state_dir: Path) -> None:
    sh(netns, "iptables", "-A", "FORWARD", "-j", "LOG")  # e.g. a human's rule
    sh(netns, "iptables", "-N", "DOCKER-USER")
    sh(netns, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")
    run = run_for(netns, state_dir)
    plan = run.plan()
    assert plan.unmanaged == [
        'firewall.ipv4.filter.FORWARD.foreign["-j LOG"]',
        'firewall.ipv4.filter.FORWARD.foreign["-j DOCKER-USER"]',
    ]
    apply_spec(run)
    forward = [r for r in rules_of(netns) if r.startswith("-A FORWARD")]
    assert forward == [f"-A FORWARD {J}FORWARD", "-A FORWARD -j LOG", "-A FORWARD -j DOCKER-USER"]
    # Removing a rule from the spec deletes only that owned rule; foreign ones stay.
    shorter = GATEWAY.replace('        - "-i zt+ -s 10.6.4.0/22 -j ACCEPT"\n', "")
    run2 = run_for(netns, state_dir, shorter)
    assert actions(run2.plan()) == [
        ("delete", 'firewall.ipv4.filter.FORWARD["-s 10.6.4.0/22 -i zt+ -j ACCEPT"]')
    ]
    apply_spec(run2)
    assert [r for r in rules_of(netns) if r.startswith("-A FORWARD")] == forward
    assert [r for r in rules_of(netns) if r.startswith("-A ZT-gw.FORWARD")] == [
        "-A ZT-gw.FORWARD -d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"
    ]


def test_new_rule_goes_between_its_neighbours_and_reorder_is_fixed(
    netns: str, state_dir: Path
) -> None:
    apply_spec(run_for(netns, state_dir))
    middle = GATEWAY.replace(
        '        - "-i eth0 -d 10.6.4.0/22 -m state',
        '        - "-i zt+ -p tcp --dport 22 -j ACCEPT"\n'
        '        - "-i eth0 -d 10.6.4.0/22 -m state',
    )
    run = run_for(netns, state_dir, middle)
    assert actions(run.plan()) == [
        ("create", 'firewall.ipv4.filter.FORWARD["-i zt+ -p tcp -m tcp --dport 22 -j ACCEPT"]')
    ]
    apply_spec(run)
    own = [r for r in rules_of(netns) if r.startswith("-A ZT-gw.FORWARD")]
    assert own[1] == "-A ZT-gw.FORWARD -i zt+ -p tcp -m tcp --dport 22 -j ACCEPT"
    # Someone moves a rule to the top by hand: the plan says "rule order" and apply fixes it.
    sh(netns, "iptables", "-D", "ZT-gw.FORWARD", "3")
    sh(netns, "iptables", "-I", "ZT-gw.FORWARD", "1", *own[2].split()[2:])
    plan = run.plan()
    assert [(c.action, c.address, c.reason) for c in plan.changes] == [
        (Action.UPDATE, "firewall.ipv4.filter.FORWARD", "rule order")
    ]
    apply_spec(run)
    assert [r for r in rules_of(netns) if r.startswith("-A ZT-gw.FORWARD")] == own
    assert run.plan().changes == []


def test_exclusive_chain_purges_foreign_rules(netns: str, state_dir: Path) -> None:
    sh(netns, "iptables", "-A", "INPUT", "-p", "udp", "--dport", "9993", "-j", "ACCEPT")
    sh(netns, "iptables", "-A", "INPUT", "-j", "LOG")
    text = GATEWAY.replace(
        "    filter:\n      policy: {FORWARD: DROP}\n      FORWARD:",
        "    filter:\n      INPUT: {exclusive: true, rules: "
        '["-p udp --dport 9993 -j ACCEPT"]}\n      policy: {FORWARD: DROP}\n'
        "      FORWARD:",
        1,
    )
    run = run_for(netns, state_dir, text)
    plan = run.plan()
    purges = [
        (c.action.value, c.address, c.reason)
        for c in plan.changes
        if c.address.startswith("firewall.ipv4.filter.INPUT")
    ]
    assert purges == [
        ("create", "firewall.ipv4.filter.INPUT.chain", ""),
        ("create", "firewall.ipv4.filter.INPUT.jump", ""),
        ("create", 'firewall.ipv4.filter.INPUT["-p udp -m udp --dport 9993 -j ACCEPT"]', ""),
        (
            "delete",
            'firewall.ipv4.filter.INPUT.foreign["-p udp -m udp --dport 9993 -j ACCEPT"]',
            "foreign rule in an exclusive chain",
        ),
        (
            "delete",
            'firewall.ipv4.filter.INPUT.foreign["-j LOG"]',
            "foreign rule in an exclusive chain",
        ),
    ]
    apply_spec(run)
    assert [r for r in rules_of(netns) if r.startswith(("-A INPUT", "-A ZT-gw.INPUT"))] == [
        f"-A INPUT {J}INPUT",
        "-A ZT-gw.INPUT -p udp -m udp --dport 9993 -j ACCEPT",
    ]
    assert run.plan().changes == []


def test_a_rule_the_kernel_rejects_is_a_plan_time_error_with_its_path(
    netns: str, state_dir: Path
) -> None:
    bad = GATEWAY.replace(
        '"-i eth0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"',
        '"-i eth0 -p tcp --dport 99999 -j ACCEPT"',
    )
    before = full_dump(netns)
    with pytest.raises(SpecError) as error:
        run_for(netns, state_dir, bad).plan()
    assert str(error.value).startswith(
        "spec.yaml:13: firewall.ipv4.filter.FORWARD[1]: the kernel rejects this rule: "
        "invalid port/service `99999' specified"
    )
    jump = GATEWAY.replace('"-i zt+ -s 2001:db8:6::/64 -j ACCEPT"', '"-j NO-SUCH-TARGET --foo"')
    with pytest.raises(
        SpecError, match=r"firewall\.ipv6\.filter\.FORWARD\[0\]: the kernel rejects"
    ):
        run_for(netns, state_dir, jump).plan()
    assert full_dump(netns) == before


def test_a_jump_to_no_chain_is_a_plan_error_naming_the_line(netns: str, state_dir: Path) -> None:
    typo = GATEWAY.replace('"-i zt+ -s 2001:db8:6::/64 -j ACCEPT"', '"-i zt+ -j NOSUCHCHAIN"')
    plan = run_for(netns, state_dir, typo).plan()
    assert [(f.severity, f.message) for f in plan.errors] == [
        (
            "error",
            "spec.yaml:18: firewall.ipv6.filter.FORWARD[0]: jumps to NOSUCHCHAIN, which is no "
            "target and no chain of the spec or of the live ipv6 filter table",
        )
    ]
    sh(netns, "ip6tables", "-N", "NOSUCHCHAIN")  # now it is one
    assert run_for(netns, state_dir, typo).plan().errors == []


def test_a_rule_that_becomes_two_kernel_rules_is_refused(netns: str, state_dir: Path) -> None:
    two = GATEWAY.replace(
        '"-i zt+ -s 10.6.4.0/22 -j ACCEPT"', '"-s 10.1.0.0/16,10.2.0.0/16 -j ACCEPT"'
    )
    with pytest.raises(SpecError, match=r"FORWARD\[0\]: this rule becomes 2 kernel rules"):
        run_for(netns, state_dir, two).plan()


def test_injection_is_refused_before_anything_runs(
    netns: str, state_dir: Path, tmp_path: Path
) -> None:
    before = full_dump(netns)
    for rule in (
        '"-j ACCEPT\\n-A INPUT -j DROP"',
        '"-j ACCEPT\\0"',
        '"-j ACCEPT -A INPUT"',
        '"-j ACCEPT\\nCOMMIT\\n*nat"',
        "'-m comment --comment \"x -j ACCEPT'",
    ):
        text = GATEWAY.replace('"-i zt+ -s 10.6.4.0/22 -j ACCEPT"', rule)
        with pytest.raises(
            SpecError, match=r"spec\.yaml:\d+: firewall\.ipv4\.filter\.FORWARD\[0\]"
        ):
            parse_spec(text, "spec.yaml")
    assert full_dump(netns) == before


@dataclass
class FailingHost:
    """The real namespace, except that one restore fails: the v6 half of an apply."""

    inner: LocalHost
    fail_on: str

    @property
    def netns(self) -> str | None:
        return self.inner.netns

    def run(self, argv, input=None):  # type: ignore[no-untyped-def]
        if argv[0] == self.fail_on and "--noflush" in argv:
            return CommandResult(tuple(argv), 1, "", f"{self.fail_on}: line 3 failed")
        return self.inner.run(argv, input)

    def read_proc(self, path: str) -> str:
        return self.inner.read_proc(path)

    def write_proc(self, path: str, value: str) -> None:
        self.inner.write_proc(path, value)

    def addresses(self) -> dict[str, list[str]]:
        return self.inner.addresses()

    def config_path(self, path: str) -> str:
        return self.inner.config_path(path)

    def shares_with_host(self, path: str) -> bool:
        return self.inner.shares_with_host(path)


def test_a_restore_failing_half_way_rolls_the_firewall_back(netns: str, state_dir: Path) -> None:
    sh(netns, "iptables", "-A", "FORWARD", "-j", "LOG")
    run = run_for(netns, state_dir)
    before = full_dump(netns)
    run.host = FailingHost(run.host, "ip6tables-restore")  # type: ignore[assignment]
    with pytest.raises(ApplyFailed) as error:
        apply_spec(run)
    assert str(error.value) == (
        "apply failed at step firewall (protect): firewall: ip6tables-restore failed: "
        "line 3 failed; rolled back: firewall (protect)"
    )
    assert full_dump(netns) == before  # the IPv4 half that had succeeded is gone again
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert not (state_dir / "gw.json").exists()
    assert not list(state_dir.glob(".gw.json.*"))  # nor the state written ahead


def test_a_failing_later_step_rolls_back_earlier_ones(netns: str, state_dir: Path) -> None:
    run = run_for(netns, state_dir)
    before = full_dump(netns)

    class BrokenSysctlHost(FailingHost):
        def write_proc(self, path: str, value: str) -> None:
            raise PermissionError(13, "Permission denied")

    run.host = BrokenSysctlHost(run.host, "none")  # type: ignore[assignment]
    with pytest.raises(ApplyFailed) as error:
        apply_spec(run)
    assert "apply failed at step sysctl (forward)" in str(error.value)
    assert str(error.value).endswith("rolled back: sysctl (forward), firewall (protect)")
    assert full_dump(netns) == before


def test_contract_read_twice_equal_and_rollback_restores(netns: str, state_dir: Path) -> None:
    run = run_for(netns, state_dir)
    for provider in run.providers:
        first, second = provider.read(run.host), provider.read(run.host)
        assert first.digest == second.digest
    snapshots = {p.name: p.read(run.host) for p in run.providers}
    plan = run.plan()
    apply_spec(run)
    for provider in run.providers:
        changes = [c for c in plan.changes if c.provider == provider.name]
        assert provider.read(run.host).digest != snapshots[provider.name].digest
        provider.rollback(run.host, snapshots[provider.name], changes)
        assert provider.read(run.host).digest == snapshots[provider.name].digest


def test_reference_spec_plans_and_applies_everything(
    netns: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from tests.conftest import SPECS
    from ztplan.providers.ndppd import Ndppd
    from ztplan.testing.emulator import ControllerEmulator

    with ControllerEmulator(token="t0ken") as emulator:
        emulator.add_network("8056c2e21c000001")
        monkeypatch.setenv("ZTPLAN_CONTROLLER_URL", emulator.url + "/api/v1")
        monkeypatch.setenv("ZEROTIER_CENTRAL_TOKEN", "t0ken")
        run = open_spec((SPECS / "gateway.yaml").read_text(), netns, state_dir)
        try:
            plan = run.plan()
            assert [c.provider for c in plan.changes] == (
                ["firewall"] * 20 + ["sysctl"] * 2 + ["ndppd"] * 3 + ["controller"] * 2
            )
            assert [c.address for c in plan.changes][-2:] == [
                'controller.network["8056c2e21c000001"].routes',
                'controller.network["8056c2e21c000001"].ip_pools',
            ]
            assert [f.message for f in plan.findings] == [
                "SNAT --to-source 45.32.69.220 is not an address of any interface here; if the "
                "public address is dynamic, use `-j MASQUERADE` instead",
            ]
            assert plan.controller_url == emulator.url + "/api/v1"
            apply_spec(run)
            assert run.plan().changes == []
            assert emulator.network("8056c2e21c000001")["routes"] == [
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "10.6.4.0/22", "via": None},
                {"target": "2001:19f0:6001:1a6::/80", "via": None},
            ]
            conf = Path(f"/etc/ztplan/netns/{netns}/ndppd.conf").read_text()
            assert "rule 2001:19f0:6001:1a6::/80 {" in conf
        finally:
            Ndppd().stop(LocalHost(netns))
            shutil.rmtree(f"/etc/ztplan/netns/{netns}", ignore_errors=True)


def test_the_shorthand_and_the_written_out_guide_plan_alike(
    netns: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import ROOT, SPECS
    from ztplan.testing.emulator import ControllerEmulator

    with ControllerEmulator(token="t0ken") as emulator:
        emulator.add_network("8056c2e21c000001")
        monkeypatch.setenv("ZTPLAN_CONTROLLER_URL", emulator.url + "/api/v1")
        monkeypatch.setenv("ZEROTIER_CENTRAL_TOKEN", "t0ken")
        plans = []
        for path in (SPECS / "gateway.yaml", ROOT / "tests/fixtures/gateway/guide-shorthand.yaml"):
            # The flows the shorthand declares are verified; the resources are the same.
            plan = open_spec(path.read_text(), netns, state_dir, verify=False).plan()
            plans.append(plan.model_dump(include={"changes", "findings", "desired", "unmanaged"}))
    assert len(plans[0]["changes"]) == 27
    assert plans[0] == plans[1]


def test_withdrawing_a_gateway_removes_its_route_before_its_nat(
    netns: str, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ztplan.testing.emulator import ControllerEmulator

    nwid = "8056c2e21c000001"
    up = GATEWAY + (
        "controller: {kind: local, token_env: ZT_TOKEN}\n"
        f"networks:\n  - id: '{nwid}'\n    routes:\n"
        "      - {target: 10.6.4.0/22}\n      - {target: 0.0.0.0/0, via: 10.6.6.2}\n"
    )
    down = (
        up.replace('        - "-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"\n', "")
        .replace("net.ipv4.ip_forward: 1", "net.ipv4.ip_forward: 0")
        .replace("      - {target: 0.0.0.0/0, via: 10.6.6.2}\n", "")
    )
    with ControllerEmulator(token="tk") as emulator:
        emulator.add_network(nwid)
        monkeypatch.setenv("ZTPLAN_CONTROLLER_URL", emulator.url)
        monkeypatch.setenv("ZT_TOKEN", "tk")
        apply_spec(run_for(netns, state_dir, up))

        seen: list[tuple[str, bool, bool]] = []  # (step, default route on, NAT in place)

        class Watching(Silent):
            def step_started(self, step: object) -> None:
                routes = emulator.network(nwid)["routes"]
                default = any(r["target"] == "0.0.0.0/0" for r in routes)
                nat = any("SNAT" in r for r in rules_of(netns, "ipv4", "nat"))
                seen.append((getattr(step, "name", ""), default, nat))

        run = run_for(netns, state_dir, down)
        run.apply(approve=lambda plan: True, reporter=Watching())
        assert seen == [
            ("controller (withdraw)", True, True),  # the route goes first, while NAT works
            ("sysctl (teardown)", False, True),
            ("firewall (teardown)", False, True),  # the NAT goes last, when no member uses it
        ]
        assert run.plan().changes == []
