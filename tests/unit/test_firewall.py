"""ztplan.providers.firewall without a kernel: `iptables-save` text in, resources out; spec
in (through a canned normaliser), resources out; changes in, the exact
`iptables-restore --noflush` input out, and a fake kernel that converges on it.

(The real kernel is in tests/integration/test_firewall_ownership_netns.py.)"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.fake_host import FIXTURES, FakeKernel, ReplayHost, saved_dumps
from ztplan.address import Address
from ztplan.diff import diff_resources
from ztplan.errors import LiveReadError, SpecError
from ztplan.host import CommandResult
from ztplan.iptables import TABLES, jump_rule, parse_save
from ztplan.model import Action, Change, Resource, Snapshot
from ztplan.order import order_changes
from ztplan.plan import restrict
from ztplan.providers.firewall import Firewall, Layout, _place
from ztplan.spec import Spec, parse_spec

CASES = sorted(p.name for p in (FIXTURES / "firewall").iterdir() if p.is_dir())

# --- fakes ------------------------------------------------------------------------------


class CannedNormaliser:
    """The kernel's spelling of each spec rule, from a table (no scratch namespace);
    `external` names the chains a rule jumps to that the spec does not declare."""

    def __init__(
        self, spellings: Mapping[str, str] | None = None, external: Mapping[str, str] | None = None
    ) -> None:
        self.spellings = dict(spellings or {})
        self.external = dict(external or {})
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(
        self,
        family: str,
        rules: Sequence[tuple[str, str, str, str, tuple[str | int, ...]]],
        chains: Mapping[str, set[str]],
    ) -> list[tuple[str, tuple[str, ...]]]:
        self.calls.append((family, [r[3] for r in rules]))
        out = []
        for rule in rules:
            text = self.spellings.get(rule[3], rule[3])
            out.append((text, (self.external[rule[3]],) if rule[3] in self.external else ()))
        return out


def spec_of(firewall_yaml: str, name: str = "gw1") -> Spec:
    return parse_spec(
        f"version: 1\ntarget: {{name: {name}}}\nfirewall:\n" + firewall_yaml, "gw.yaml"
    )


def firewall_for(spec: Spec, normalise: CannedNormaliser | None = None) -> Firewall:
    return Firewall(Layout.of(spec), normalise=normalise or CannedNormaliser(), file="gw.yaml")


def plan_on(spec: Spec, host: ReplayHost) -> tuple[Firewall, list[Change], list[str], Snapshot]:
    firewall = firewall_for(spec)
    desired = firewall.desired(spec)
    before = firewall.read(host)
    changes, unmanaged = diff_resources("firewall", desired, before.resources)
    return firewall, order_changes(changes), unmanaged, before


def converge(spec: Spec, kernel: FakeKernel) -> tuple[Firewall, list[Change]]:
    """Plan and apply once; assert the second plan is empty."""
    firewall, changes, _, before = plan_on(spec, kernel)
    if changes:
        firewall.apply(kernel, changes, before)
    _, again, _, _ = plan_on(spec, kernel)
    assert again == [], [c.address for c in again]
    return firewall, changes


def dump(*lines: str, table: str = "filter") -> str:
    builtins = "".join(f":{c} ACCEPT [0:0]\n" for c in TABLES[table])
    return f"*{table}\n{builtins}" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


GATEWAY = """\
  ipv4:
    nat:
      POSTROUTING:
        - "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"
        - "-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"
    filter:
      policy: {FORWARD: DROP}
      FORWARD:
        - "-s 10.6.4.0/22 -i zt+ -j ACCEPT"
        - "-d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"
  ipv6:
    filter:
      policy: {FORWARD: DROP}
      FORWARD: ["-s 2001:db8:6::/64 -i zt+ -j ACCEPT"]
"""
ZT_OUT = "-s 10.6.4.0/22 -i zt+ -j ACCEPT"
BACK = "-d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"
J_FORWARD = jump_rule("gw1", "FORWARD")

# --- read -------------------------------------------------------------------------------


def recorded(case: str) -> dict[str, object]:
    return json.loads((FIXTURES / "firewall" / case / "resources.json").read_text())


@pytest.mark.parametrize("case", CASES)
def test_read_gives_the_recorded_resources(case: str) -> None:
    host = ReplayHost(saved_dumps(case))
    snapshot = firewall_for(spec_of(GATEWAY)).read(host)
    got = {
        address: {"value": r.value, "owned": r.owned, "relative_order": r.relative_order}
        for address, r in snapshot.resources.items()
        if ".policy." not in address or r.value != "ACCEPT"
    }
    path = FIXTURES / "firewall" / case / "resources.json"
    if os.environ.get("ZTPLAN_UPDATE_GOLDEN"):
        path.write_text(json.dumps(got, indent=2) + "\n")
    assert got == recorded(case)
    assert sorted(host.commands()) == [("ip6tables-save",), ("iptables-save",)]  # at once


def test_only_the_targets_own_chains_are_owned() -> None:
    snapshot = firewall_for(spec_of(GATEWAY)).read(
        ReplayHost(saved_dumps("docker_host_own_chains"))
    )
    owned = sorted(a for a, r in snapshot.resources.items() if r.owned)
    assert owned == [
        "firewall.ipv4.filter.FORWARD.chain",
        "firewall.ipv4.filter.FORWARD.jump",
        f'firewall.ipv4.filter.FORWARD["{ZT_OUT}"]',
        "firewall.ipv4.nat.POSTROUTING.chain",
        "firewall.ipv4.nat.POSTROUTING.jump",
        'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"]',
        "firewall.ipv6.filter.FORWARD.chain",
        "firewall.ipv6.filter.FORWARD.jump",
        'firewall.ipv6.filter.FORWARD["-s 2001:db8:6::/64 -i zt+ -j ACCEPT"]',
    ]
    # Another target's jump and chain are neither owned nor foreign rules to report.
    assert not any("ZT-member" in a for a in snapshot.resources)


def test_the_jump_is_sound_behind_dockers_and_other_targets_only() -> None:
    snapshot = firewall_for(spec_of(GATEWAY)).read(
        ReplayHost(saved_dumps("docker_host_own_chains"))
    )
    jumps = {a: r.value for a, r in snapshot.resources.items() if a.endswith(".jump")}
    assert jumps == {
        "firewall.ipv4.filter.FORWARD.jump": "first",
        # Docker's MASQUERADE of its own subnet stands ahead of it: foreign, so not sound.
        "firewall.ipv4.nat.POSTROUTING.jump": "behind: -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "firewall.ipv6.filter.FORWARD.jump": "first",
    }


@pytest.mark.parametrize(
    ("ahead", "value"),
    [
        (["-j DOCKER-USER", "-j DOCKER-FORWARD"], "first"),
        (["-p tcp -m multiport --dports 22 -j f2b-sshd"], "first"),
        (["-j ts-forward"], "first"),
        ([jump_rule("other", "FORWARD")], "first"),
        (["-j ufw-before-forward"], "behind: -j ufw-before-forward"),
        (["-s 1.2.3.4/32 -j DROP"], "behind: -s 1.2.3.4/32 -j DROP"),
    ],
)
def test_what_may_stand_ahead_of_the_jump(ahead: list[str], value: str) -> None:
    chains = [f":{c} - [0:0]" for c in ("DOCKER-USER", "DOCKER-FORWARD", "f2b-sshd", "ts-forward")]
    lines = [*chains, ":ZT-gw1.FORWARD - [0:0]", *(f"-A FORWARD {r}" for r in ahead)]
    lines.append(f"-A FORWARD {J_FORWARD}")
    host = ReplayHost({("iptables-save",): dump(*lines), ("ip6tables-save",): ""})
    snapshot = firewall_for(spec_of(GATEWAY)).read(host)
    assert snapshot.resources[Address("firewall.ipv4.filter.FORWARD.jump")].value == value


def test_a_foreign_comment_that_contains_the_tag_is_not_ztplans() -> None:
    lines = [
        '-A FORWARD -s 192.0.2.9/32 -m comment --comment "ztplan is nice" -j DROP',
        "-A INPUT -m comment --comment ztplan2 -j DROP",
    ]
    host = ReplayHost({("iptables-save",): dump(*lines), ("ip6tables-save",): ""})
    snapshot = firewall_for(spec_of(GATEWAY)).read(host)
    assert [a for a, r in snapshot.resources.items() if r.owned] == []


def test_foreign_rules_do_not_move_the_digest_unless_purged() -> None:
    base = saved_dumps("docker_host_own_chains")
    banned = dict(base)
    banned[("iptables-save",)] = str(base[("iptables-save",)]).replace(
        "-A FORWARD -j DOCKER-USER\n",
        "-A FORWARD -j DOCKER-USER\n-A FORWARD -s 203.0.113.5/32 -j DROP\n",
    )
    plain = firewall_for(spec_of(GATEWAY))
    assert plain.read(ReplayHost(base)).digest == plain.read(ReplayHost(banned)).digest
    exclusive = spec_of(
        "  ipv4:\n    filter:\n      FORWARD: {exclusive: true, rules: ['-j ACCEPT']}\n"
    )
    purging = firewall_for(exclusive)
    assert purging.read(ReplayHost(base)).digest != purging.read(ReplayHost(banned)).digest


def test_a_failing_save_is_a_live_read_error() -> None:
    stderr = (
        "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
        "Permission denied (you must be root)\n"
    )
    host = ReplayHost({("iptables-save",): CommandResult(("iptables-save",), 4, "", stderr)})
    with pytest.raises(LiveReadError) as caught:
        firewall_for(spec_of(GATEWAY)).read(host)
    assert str(caught.value) == (
        "firewall: iptables-save failed: Could not fetch rule set generation id: "
        "Permission denied (you must be root)"
    )


# --- desired ----------------------------------------------------------------------------


def test_desired_is_the_own_chain_its_jump_then_its_rules() -> None:
    spec = spec_of(GATEWAY)
    normaliser = CannedNormaliser()
    desired = firewall_for(spec, normaliser).desired(spec)
    forward = [a for a in desired if a.startswith("firewall.ipv4.filter.FORWARD")]
    assert forward == [
        "firewall.ipv4.filter.FORWARD.chain",
        "firewall.ipv4.filter.FORWARD.jump",
        f'firewall.ipv4.filter.FORWARD["{ZT_OUT}"]',
        f'firewall.ipv4.filter.FORWARD["{BACK}"]',
        "firewall.ipv4.filter.FORWARD",
    ]
    assert desired[Address("firewall.ipv4.filter.FORWARD.chain")].value == "ZT-gw1.FORWARD"
    assert desired[Address("firewall.ipv4.filter.FORWARD")].value == [ZT_OUT, BACK]
    assert [family for family, _ in normaliser.calls] == ["ipv4", "ipv6"]


def test_a_user_chain_is_the_targets_own_and_has_no_jump_of_its_own() -> None:
    spec = spec_of(
        "  ipv4:\n    filter:\n      INPUT: ['-i zt+ -j ZT-IN']\n"
        "      ZT-IN: ['-p icmp -j ACCEPT']\n"
    )
    desired = firewall_for(spec).desired(spec)
    assert desired[Address("firewall.ipv4.filter.ZT-IN.chain")].value == "ZT-gw1.ZT-IN"
    assert Address("firewall.ipv4.filter.ZT-IN.jump") not in desired
    assert Address("firewall.ipv4.filter.INPUT.jump") in desired


def test_a_rule_carrying_ztplans_comment_is_refused_naming_its_line() -> None:
    spec = spec_of(
        "  ipv4:\n    filter:\n      FORWARD:\n"
        "        - '-m comment --comment ztplan:x -j ACCEPT'\n"
    )
    normaliser = CannedNormaliser(
        {"-m comment --comment ztplan:x -j ACCEPT": '-m comment --comment "ztplan:x" -j ACCEPT'}
    )
    with pytest.raises(SpecError) as caught:
        firewall_for(spec, normaliser).desired(spec)
    assert str(caught.value) == (
        "gw.yaml:7: firewall.ipv4.filter.FORWARD[0]: a rule without a `ztplan` comment: "
        "ztplan uses that comment to mark what it owns"
    )


def test_a_jump_to_a_chain_nowhere_is_a_plan_error_naming_the_line() -> None:
    spec = spec_of("  ipv4:\n    filter:\n      FORWARD: ['-j NOSUCHCHAIN', '-j DOCKER-USER']\n")
    firewall = firewall_for(
        spec,
        CannedNormaliser(
            external={"-j NOSUCHCHAIN": "NOSUCHCHAIN", "-j DOCKER-USER": "DOCKER-USER"}
        ),
    )
    firewall.desired(spec)
    host = ReplayHost({("iptables-save",): dump(":DOCKER-USER - [0:0]"), ("ip6tables-save",): ""})
    findings = firewall.check(spec, firewall.read(host))
    assert [(f.severity, f.address, f.message) for f in findings] == [
        (
            "error",
            "firewall.ipv4.filter.FORWARD[0]",
            "gw.yaml:6: firewall.ipv4.filter.FORWARD[0]: jumps to NOSUCHCHAIN, which is no "
            "target and no chain of the spec or of the live ipv4 filter table",
        )
    ]


def open_router_findings(firewall_yaml: str, sysctl: str, v6_policy: str = "ACCEPT") -> list[str]:
    """The open-router warnings' addresses, against a host whose FORWARD policies are
    ACCEPT (IPv4) and `v6_policy` (IPv6)."""
    spec = parse_spec(
        f"version: 1\ntarget: {{name: gw1}}\nsysctl: {{{sysctl}}}\nfirewall:\n{firewall_yaml}",
        "gw.yaml",
    )
    firewall = firewall_for(spec)
    firewall.desired(spec)
    v6 = dump().replace(":FORWARD ACCEPT", f":FORWARD {v6_policy}")
    host = ReplayHost({("iptables-save",): dump(), ("ip6tables-save",): v6})
    return [
        str(f.address)
        for f in firewall.check(spec, firewall.read(host))
        if "FORWARD policy ACCEPT" in f.message
    ]


NAT = "  ipv4:\n    nat:\n      POSTROUTING: ['-s 10.6.4.0/22 -j MASQUERADE']\n"


@pytest.mark.parametrize(
    ("firewall_yaml", "sysctl", "v6_policy", "warned"),
    [
        (NAT, "net.ipv4.ip_forward: 1", "ACCEPT", ["firewall.ipv4.filter.policy.FORWARD"]),
        (NAT + "    filter:\n      policy: {FORWARD: DROP}\n", "net.ipv4.ip_forward: 1",
         "ACCEPT", []),
        (NAT + "    filter:\n      FORWARD: ['-j DROP']\n", "net.ipv4.ip_forward: 1", "ACCEPT",
         []),
        (NAT, "net.ipv4.ip_forward: 0", "ACCEPT", []),
        (NAT, "net.ipv6.conf.all.forwarding: 1", "ACCEPT", ["firewall.ipv6.filter.policy.FORWARD"]),
        (NAT, "net.ipv6.conf.all.forwarding: 1", "DROP", []),  # the live policy closes it
        ("  ipv6:\n    filter:\n      policy: {FORWARD: DROP}\n",
         "net.ipv6.conf.all.forwarding: 1", "ACCEPT", []),
    ],
)  # fmt: skip
def test_forwarding_with_forward_policy_accept_is_an_open_router_warning(
    firewall_yaml: str, sysctl: str, v6_policy: str, warned: list[str]
) -> None:
    """IPv4 with NAT: the WAN side routes into the ZeroTier network. IPv6 (guide step 5
    written out, no firewall for it): the members' routed addresses are open to all."""
    assert open_router_findings(firewall_yaml, sysctl, v6_policy) == warned


# --- apply: the exact restore input -----------------------------------------------------


def test_a_fresh_gateway_is_one_restore_per_family() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    v4, v6 = kernel.restores()
    assert v4 == (
        "*filter\n"
        ":ZT-gw1.FORWARD - [0:0]\n"
        f"-A ZT-gw1.FORWARD {ZT_OUT}\n"
        f"-A ZT-gw1.FORWARD {BACK}\n"
        f"-I FORWARD 1 {J_FORWARD}\n"
        "-P FORWARD DROP\n"
        "COMMIT\n"
        "*nat\n"
        ":ZT-gw1.POSTROUTING - [0:0]\n"
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN\n"
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7\n"
        f"-I POSTROUTING 1 {jump_rule('gw1', 'POSTROUTING')}\n"
        "COMMIT\n"
    )
    assert v6.startswith("*filter\n:ZT-gw1.FORWARD - [0:0]\n")


def test_the_live_rules_that_are_as_desired_are_the_desired_objects() -> None:
    """Issue 14: 2 x 50,000 rules are held once, not once desired and once live."""
    kernel = FakeKernel()
    firewall, _ = converge(spec_of(GATEWAY), kernel)
    wanted = firewall.desired(spec_of(GATEWAY))
    live = firewall.read(kernel).resources
    rule = Address(f'firewall.ipv4.filter.FORWARD["{ZT_OUT}"]')
    (key,) = [a for a in live if a == rule]
    assert live[rule] is wanted[rule] and key is next(a for a in wanted if a == rule)
    fresh = firewall_for(spec_of(GATEWAY)).read(kernel)  # no desired state to share
    assert fresh.resources == live and fresh.resources[rule] is not wanted[rule]


def test_one_new_rule_is_one_insert_at_its_place() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    kernel.calls.clear()
    spec = spec_of(
        GATEWAY.replace(
            f'        - "{ZT_OUT}"\n',
            f'        - "{ZT_OUT}"\n        - "-i zt+ -p icmp -j ACCEPT"\n',
        )
    )
    _, changes = converge(spec, kernel)
    assert [(c.action.value, c.follows) for c in changes] == [("create", ZT_OUT)]
    assert kernel.restores()[0] == "*filter\n-I ZT-gw1.FORWARD 2 -i zt+ -p icmp -j ACCEPT\nCOMMIT\n"


def test_a_deleted_rule_is_deleted_by_its_place_in_the_own_chain() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    kernel.calls.clear()
    _, changes = converge(spec_of(GATEWAY.replace(f'        - "{ZT_OUT}"\n', "")), kernel)
    assert [c.action.value for c in changes] == ["delete"]
    assert kernel.restores()[0] == "*filter\n-D ZT-gw1.FORWARD 1\nCOMMIT\n"


def test_a_reorder_rewrites_the_own_chain_whole() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    kernel.calls.clear()
    swapped = GATEWAY.replace(
        f'        - "{ZT_OUT}"\n        - "{BACK}"\n', f'        - "{BACK}"\n        - "{ZT_OUT}"\n'
    )
    _, changes = converge(spec_of(swapped), kernel)
    assert [c.reason for c in changes] == ["rule order"]
    assert kernel.restores()[0] == (
        f"*filter\n:ZT-gw1.FORWARD - [0:0]\n-A ZT-gw1.FORWARD {BACK}\n"
        f"-A ZT-gw1.FORWARD {ZT_OUT}\nCOMMIT\n"
    )


def test_a_shadowed_jump_moves_to_the_head_by_its_text() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    kernel.run(
        ["iptables-restore", "--noflush"], "*filter\n-I FORWARD 1 -s 1.2.3.4/32 -j DROP\nCOMMIT\n"
    )
    kernel.calls.clear()
    _, changes = converge(spec_of(GATEWAY), kernel)
    assert [(c.address, c.before) for c in changes] == [
        ("firewall.ipv4.filter.FORWARD.jump", "behind: -s 1.2.3.4/32 -j DROP")
    ]
    assert (
        kernel.restores()[0]
        == f"*filter\n-D FORWARD {J_FORWARD}\n-I FORWARD 1 {J_FORWARD}\nCOMMIT\n"
    )
    assert kernel.tables["ipv4"]["filter"].rules["FORWARD"] == [J_FORWARD, "-s 1.2.3.4/32 -j DROP"]


def test_a_docker_restart_reinserting_its_jumps_first_causes_no_drift() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    docker = "*filter\n:DOCKER-USER - [0:0]\n:DOCKER-FORWARD - [0:0]\n"
    docker += "-I FORWARD 1 -j DOCKER-FORWARD\n-I FORWARD 1 -j DOCKER-USER\nCOMMIT\n"
    kernel.run(["iptables-restore", "--noflush"], docker)
    _, changes, _, _ = plan_on(spec_of(GATEWAY), kernel)
    assert changes == []


def test_a_dropped_family_deletes_its_chain_and_jump_after_forwarding() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    kernel.calls.clear()
    without_v6 = GATEWAY.split("  ipv6:")[0]
    _, changes = converge(spec_of(without_v6), kernel)
    assert {c.phase for c in changes} == {"teardown"}
    assert kernel.restores()[0] == (
        f"*filter\n-D FORWARD {J_FORWARD}\n-F ZT-gw1.FORWARD\n-X ZT-gw1.FORWARD\nCOMMIT\n"
    )


def test_a_partial_plan_applies_that_rule_and_nothing_else() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    spec = spec_of(
        GATEWAY.replace(
            f'        - "{ZT_OUT}"\n',
            '        - "-i zt+ -p icmp -j ACCEPT"\n        - "-i zt+ -p udp -j ACCEPT"\n',
        )
    )
    firewall, changes, _, before = plan_on(spec, kernel)
    assert {c.action.value for c in changes} == {"create", "delete"}
    kept = restrict(changes, ['firewall.ipv4.filter.FORWARD["-i zt+ -p udp -j ACCEPT"]'])
    kernel.calls.clear()
    firewall.apply(kernel, kept, before)
    assert kernel.restores() == ["*filter\n-I ZT-gw1.FORWARD 1 -i zt+ -p udp -j ACCEPT\nCOMMIT\n"]


def test_an_exclusive_chain_purges_foreign_rules_by_their_text() -> None:
    spec = spec_of("  ipv4:\n    filter:\n      FORWARD: {exclusive: true, rules: ['-j ACCEPT']}\n")
    kernel = FakeKernel(
        {
            "ipv4": dump(
                "-A FORWARD -s 1.2.3.4/32 -j DROP",
                f"-A FORWARD {jump_rule('other', 'FORWARD')}",
                ":ZT-other.FORWARD - [0:0]",
            )
        }
    )
    _, changes = converge(spec, kernel)
    purged = [c for c in changes if ".foreign[" in c.address]
    assert [c.reason for c in purged] == ["foreign rule in an exclusive chain"]
    assert "-D FORWARD -s 1.2.3.4/32 -j DROP\n" in kernel.restores()[0]
    # Another target's jump is ztplan's, not foreign: it stays.
    assert jump_rule("other", "FORWARD") in kernel.tables["ipv4"]["filter"].rules["FORWARD"]


def test_rules_of_the_first_release_move_into_the_own_chain_in_one_transaction() -> None:
    dumps = saved_dumps("release_0_1_docker_host")
    kernel = FakeKernel(
        {"ipv4": str(dumps[("iptables-save",)]), "ipv6": str(dumps[("ip6tables-save",)])}
    )
    spec = spec_of(
        "  ipv4:\n    filter:\n      FORWARD: ['-s 10.6.4.0/22 -i zt+ -j ACCEPT']\n"
        "    nat:\n      POSTROUTING: ['-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN']\n"
    )
    _, changes = converge(spec, kernel)
    moved = [c for c in changes if ".legacy[" in c.address]
    assert moved and all("ztplan 0.1" in c.reason for c in moved)
    assert all(c.phase == "protect" for c in changes if c.address.names[0] == "ipv4")
    assert len([t for t in kernel.restores() if t]) == 2  # one per family
    v4 = kernel.save("ipv4")
    assert "--comment ztplan " not in v4 and "ZT-gw1.FORWARD -s 10.6.4.0/22 -i zt+ -j ACCEPT" in v4


# --- rollback ---------------------------------------------------------------------------


def test_rollback_undoes_ztplans_edits_and_keeps_a_ban_added_meanwhile() -> None:
    kernel = FakeKernel({"ipv4": dump(":f2b-sshd - [0:0]", "-A INPUT -p tcp -j f2b-sshd")})
    spec = spec_of(GATEWAY)
    firewall, changes, _, before = plan_on(spec, kernel)
    firewall.apply(kernel, changes, before)
    ban = "-s 203.0.113.66/32 -j REJECT --reject-with icmp-port-unreachable"
    kernel.run(["iptables-restore", "--noflush"], f"*filter\n-I f2b-sshd 1 {ban}\nCOMMIT\n")
    firewall.rollback(kernel, before, changes)
    assert kernel.tables["ipv4"]["filter"].rules["f2b-sshd"] == [ban]
    assert "ZT-gw1.FORWARD" not in kernel.tables["ipv4"]["filter"].rules
    assert kernel.tables["ipv4"]["filter"].policies["FORWARD"] == "ACCEPT"
    assert firewall.read(kernel).digest == before.digest


FIRST_RELEASE = dump(
    ":ZT-IN - [0:0]",
    "-A INPUT -i zt+ -m comment --comment ztplan -j ZT-IN",
    "-A INPUT -i lo -j ACCEPT",
    "-A FORWARD -s 10.6.4.0/22 -i zt+ -m comment --comment ztplan -j ACCEPT",
    "-A FORWARD -s 192.0.2.9/32 -j DROP",
    "-A FORWARD -d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED "
    "-m comment --comment ztplan -j ACCEPT",
    "-A ZT-IN -p icmp -m comment --comment ztplan -j ACCEPT",
    "-A ZT-IN -p udp -m comment --comment ztplan -j ACCEPT",
)
"""ztplan 0.1's rules in FORWARD around a foreign one, and its user chain ZT-IN."""
MIGRATED = (
    f"  ipv4:\n    filter:\n      FORWARD: ['{ZT_OUT}', '{BACK}']\n"
    "      INPUT: ['-i zt+ -j ZT-IN']\n      ZT-IN: ['-p icmp -j ACCEPT', '-p udp -j ACCEPT']\n"
)


def test_a_first_release_chain_emptied_by_the_migration_is_deleted_with_its_rules() -> None:
    """ZT-IN held only 0.1's rules and only 0.1's jump led to it: once they move into the
    target's own chains it is debris, deleted in the same transaction (`-X` after the
    `-D`s), and said so at its own `legacy` address."""
    kernel = FakeKernel({"ipv4": FIRST_RELEASE})
    _, changes = converge(spec_of(MIGRATED), kernel)
    chain = next(c for c in changes if c.address == "firewall.ipv4.filter.ZT-IN.legacy")
    assert (chain.action, chain.before) == (Action.DELETE, "ZT-IN")
    assert chain.reason == "made by ztplan 0.1 for its rules, which now live in ZT-gw1.ZT-IN"
    assert kernel.restores()[0].index("-D ZT-IN ") < kernel.restores()[0].index("-X ZT-IN\n")
    assert "ZT-IN" not in kernel.tables["ipv4"]["filter"].rules


def test_a_first_release_chain_with_a_foreign_rule_or_jump_is_not_deleted() -> None:
    for extra in ("-A ZT-IN -p tcp --dport 22 -j ACCEPT", "-A OUTPUT -j ZT-IN"):
        kernel = FakeKernel({"ipv4": FIRST_RELEASE.replace("COMMIT", f"{extra}\nCOMMIT")})
        snapshot = firewall_for(spec_of(MIGRATED)).read(kernel)
        assert Address("firewall.ipv4.filter.ZT-IN.legacy") not in snapshot.resources


def test_rollback_of_a_migration_puts_each_rule_back_where_it_stood() -> None:
    """Undoing several deletes in one chain: each goes back after the nearest rule that
    stood before it and is there now, counting the ones put back already (a count of the
    rules ahead of it as they are now would put two of them in the wrong order)."""
    kernel = FakeKernel({"ipv4": FIRST_RELEASE})
    spec = spec_of(MIGRATED)
    firewall, changes, _, before = plan_on(spec, kernel)
    firewall.apply(kernel, changes, before)
    ban = "-s 203.0.113.66/32 -j DROP"  # fail2ban, at the head, meanwhile
    kernel.run(["iptables-restore", "--noflush"], f"*filter\n-I FORWARD 1 {ban}\nCOMMIT\n")
    firewall.rollback(kernel, before, changes)
    rules = kernel.tables["ipv4"]["filter"].rules
    original = parse_save(FIRST_RELEASE)["filter"].rules
    assert rules["FORWARD"] == [ban, *original["FORWARD"]]
    assert rules["ZT-IN"] == original["ZT-IN"]
    assert rules["INPUT"] == original["INPUT"]
    assert not any(c.startswith("ZT-gw1.") for c in rules)


def test_rollback_of_an_edit_puts_the_own_chain_back_whole() -> None:
    kernel = FakeKernel()
    converge(spec_of(GATEWAY), kernel)
    spec = spec_of(GATEWAY.replace(f'        - "{ZT_OUT}"\n', ""))
    firewall, changes, _, before = plan_on(spec, kernel)
    firewall.apply(kernel, changes, before)
    firewall.rollback(kernel, before, changes)
    assert kernel.tables["ipv4"]["filter"].rules["ZT-gw1.FORWARD"] == [ZT_OUT, BACK]


def test_rollback_after_a_failed_restore_changes_nothing() -> None:
    kernel = FakeKernel()
    spec = spec_of(GATEWAY)
    firewall, changes, _, before = plan_on(spec, kernel)
    kernel.calls.clear()
    firewall.rollback(kernel, before, changes)  # nothing was applied: nothing to undo
    assert kernel.restores() == []


def test_a_rejected_restore_keeps_the_kernels_reason() -> None:
    host = ReplayHost(
        {
            ("iptables-save",): "",
            ("ip6tables-save",): "",
            ("iptables-restore", "--noflush"): CommandResult(
                ("iptables-restore", "--noflush"),
                4,
                "",
                "iptables-restore v1.8.9 (nf_tables): \n"
                "line 2: RULE_APPEND failed (Invalid argument): rule in chain FORWARD\n",
            ),
        }
    )
    spec = spec_of("  ipv4:\n    filter:\n      FORWARD: ['-j SNAT --to-source 1.1.1.1']\n")
    firewall, changes, _, before = plan_on(spec, host)
    with pytest.raises(LiveReadError) as caught:
        firewall.apply(host, changes, before)
    assert str(caught.value) == (
        "firewall: iptables-restore failed: line 2: RULE_APPEND failed (Invalid argument): "
        "rule in chain FORWARD"
    )


def test_two_targets_on_one_host_keep_each_others_rules() -> None:
    kernel = FakeKernel()
    member = spec_of(
        "  ipv4:\n    filter:\n      FORWARD: ['-i zt+ -p icmp -j ACCEPT']\n", name="member"
    )
    converge(spec_of(GATEWAY), kernel)
    converge(member, kernel)
    _, again, _, _ = plan_on(spec_of(GATEWAY), kernel)
    assert again == []
    rules = kernel.tables["ipv4"]["filter"].rules
    assert rules["ZT-gw1.FORWARD"] == [ZT_OUT, BACK] and rules["ZT-member.FORWARD"]


def test_unknown_addresses_are_refused() -> None:
    firewall = firewall_for(spec_of(GATEWAY))
    change = Change(address="firewall.ipv4", provider="firewall", action=Action.DELETE)
    with pytest.raises(LiveReadError):
        firewall.apply(FakeKernel(), [change], firewall.read(FakeKernel()))
    assert isinstance(Resource(Address("x"), 1), Resource)


def _place_by_index(
    kept: list[str], creates: list[tuple[str, str]]
) -> tuple[list[str], list[tuple[int, str, bool]]]:
    """`_place` as it was written first (quadratic): the oracle of the test below."""
    final = list(kept)
    after: dict[str, int] = {}
    inserts = []
    for rule, anchor in creates:
        base = final.index(anchor) + 1 if anchor else 0
        position = base + after.get(anchor, 0)
        after[anchor] = after.get(anchor, 0) + 1
        inserts.append((position, rule, position == len(final)))
        final.insert(position, rule)
    return final, inserts


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_place_puts_creates_where_inserting_one_by_one_would(data: st.DataObject) -> None:
    kept = data.draw(st.lists(st.sampled_from("abcdefg"), max_size=8))
    anchors = st.sampled_from(["", *kept])
    creates = [(f"new{i}", data.draw(anchors)) for i in range(data.draw(st.integers(0, 8)))]
    assert _place(kept, creates, "ZT-gw1.FORWARD") == _place_by_index(kept, creates)
