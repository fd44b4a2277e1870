"""ztplan.providers.firewall without a kernel: `iptables-save` text in, resources out; spec
in (through a canned normaliser), resources out; changes in, the exact
`iptables-restore --noflush` input out."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence

import pytest

from tests.unit.fake_host import FIXTURES, ReplayHost, saved_dumps
from ztplan.diff import diff_resources
from ztplan.errors import LiveReadError, SpecError
from ztplan.host import CommandResult
from ztplan.model import Action, Change, Resource
from ztplan.providers.firewall import (
    TAG_ARGS,
    Firewall,
    Table,
    _edit_chain,
    _longest_increasing,
    parse_save,
    rule_address,
    untag,
)
from ztplan.spec import TABLES, Spec, parse_spec

CASES = sorted(p.name for p in (FIXTURES / "firewall").iterdir() if p.is_dir())
T = TAG_ARGS


# --- fakes ------------------------------------------------------------------------------


def tagged(rule: str) -> str:
    """How iptables-save prints a rule ztplan wrote: the comment match before the target."""
    head, sep, target = rule.partition(" -j ")
    return f"{head} {T}{sep}{target}" if sep else f"{T} {rule}"


class CannedNormaliser:
    """The kernel's spelling of each spec rule, from a table (no scratch namespace)."""

    def __init__(self, spellings: Mapping[str, str] | None = None) -> None:
        self.spellings = dict(spellings or {})
        self.calls: list[tuple[str, list[tuple[object, ...]], dict[str, set[str]]]] = []

    def __call__(
        self,
        family: str,
        rules: Sequence[tuple[str, str, str, str, tuple[str | int, ...]]],
        chains: Mapping[str, set[str]],
    ) -> list[str]:
        self.calls.append(
            (family, [tuple(r) for r in rules], {k: set(v) for k, v in chains.items()})
        )
        # The normaliser's answer is untagged (the spellings here are written as saved).
        return [untag(self.spellings.get(rule[3], tagged(rule[3]))) for rule in rules]


class FakeKernel(ReplayHost):
    """A tiny iptables for convergence checks: `*-save` prints the state; `*-restore` edits
    it as the kernel does (-A, -I N, -D N, -D by spec removes the first identical rule, -P, :CHAIN
    creates a user chain or flushes an existing one; without --noflush each table in the
    input is emptied first). A failing line leaves the family unchanged (one transaction)."""

    def __init__(self, dumps: Mapping[str, str]) -> None:
        super().__init__()
        self.tables = {family: parse_save(text) for family, text in dumps.items()}

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, input))
        family = "ipv6" if argv[0].startswith("ip6") else "ipv4"
        if argv[0].endswith("-save"):
            return CommandResult(key, 0, self.save(family), "")
        tables = copy.deepcopy(self.tables[family])
        try:
            self._restore(tables, input or "", noflush="--noflush" in argv)
        except ValueError as error:
            return CommandResult(key, 1, "", f"{argv[0]}: {error}\n")
        self.tables[family] = tables
        return CommandResult(key, 0, "", "")

    def save(self, family: str) -> str:
        out: list[str] = []  # a kernel without tables prints nothing at all
        for name, table in self.tables[family].items():
            out.append(f"*{name}")
            out += [f":{chain} {policy} [0:0]" for chain, policy in table.policies.items()]
            out += [f"-A {chain} {rule}" for chain, rules in table.rules.items() for rule in rules]
            out.append("COMMIT")
        return "".join(f"{line}\n" for line in out)

    @staticmethod
    def _restore(tables: dict[str, Table], text: str, noflush: bool) -> None:
        table: Table | None = None
        for line in text.splitlines():
            words = line.split()
            if not words or line.startswith("#") or line == "COMMIT":
                continue
            if line.startswith("*"):
                name = line[1:]
                if not noflush or name not in tables:
                    builtins = TABLES[name]
                    tables[name] = Table(
                        policies=dict.fromkeys(builtins, "ACCEPT"), rules={c: [] for c in builtins}
                    )
                table = tables[name]
                continue
            assert table is not None, f"a line before any table: {line}"
            if line.startswith(":"):
                chain, policy = words[0][1:], words[1]
                if policy != "-":
                    table.policies[chain] = policy
                else:
                    table.policies.setdefault(chain, "-")
                    table.rules[chain] = []
                continue
            command, chain, rest = words[0], words[1], words[2:]
            if chain not in table.policies:
                raise ValueError(f"Chain '{chain}' does not exist")
            rules = table.rules.setdefault(chain, [])
            if command == "-A":
                rules.append(" ".join(rest))
            elif command == "-I":
                number = int(rest[0])
                if not 1 <= number <= len(rules) + 1:
                    raise ValueError(f"index of insertion too big: {number}")
                rules.insert(number - 1, " ".join(rest[1:]))
            elif command == "-D" and len(rest) == 1 and rest[0].isdigit():
                number = int(rest[0])
                if not 1 <= number <= len(rules):
                    raise ValueError("Index of deletion too big")
                del rules[number - 1]
            elif command == "-D":
                rule = " ".join(rest)
                if rule not in rules:
                    raise ValueError("Bad rule (does a matching rule exist in that chain?)")
                rules.remove(rule)
            elif command == "-P":
                table.policies[chain] = rest[0]
            else:
                raise ValueError(f"unknown command {command}")


def spec_of(firewall_yaml: str) -> Spec:
    return parse_spec("version: 1\ntarget: {name: gw1}\nfirewall:\n" + firewall_yaml, "gw.yaml")


def plan_firewall(
    firewall: Firewall, spec: Spec, host: ReplayHost | FakeKernel
) -> tuple[list[Change], list[str], dict[str, Resource]]:
    desired = firewall.desired(spec)
    changes, unmanaged = diff_resources("firewall", desired, firewall.read(host).resources)
    return changes, unmanaged, desired


def dump(*lines: str, table: str = "filter") -> str:
    """A one-table iptables-save dump; `lines` are the `:CHAIN` and `-A` lines."""
    return f"*{table}\n" + "".join(f"{line}\n" for line in lines) + "COMMIT\n"


FILTER = (":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]")


# --- parse_save -------------------------------------------------------------------------


def test_parse_save_of_a_docker_host() -> None:
    tables = parse_save((FIXTURES / "firewall/docker_host/iptables-save.txt").read_text())
    assert list(tables) == ["raw", "filter", "nat"]
    assert tables["raw"] == Table(
        policies={"PREROUTING": "ACCEPT", "OUTPUT": "ACCEPT"},
        rules={"PREROUTING": [], "OUTPUT": []},
    )
    assert tables["filter"].policies == {
        "INPUT": "ACCEPT",
        "FORWARD": "DROP",
        "OUTPUT": "ACCEPT",
        "DOCKER": "-",
        "DOCKER-ISOLATION-STAGE-1": "-",
        "DOCKER-ISOLATION-STAGE-2": "-",
        "DOCKER-USER": "-",
    }
    assert tables["filter"].rules["FORWARD"] == [
        "-j DOCKER-USER",
        "-j DOCKER-ISOLATION-STAGE-1",
        "-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-o docker0 -j DOCKER",
        "-i docker0 ! -o docker0 -j ACCEPT",
        "-i docker0 -o docker0 -j ACCEPT",
        f"-s 10.6.4.0/22 -i zt+ {T} -j ACCEPT",
    ]
    assert tables["filter"].rules["INPUT"] == []
    assert tables["nat"].rules["POSTROUTING"] == [
        "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        f"-s 10.6.4.0/22 -d 10.6.4.0/22 {T} -j RETURN",
        "-s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE",
    ]
    assert tables["nat"].rules["DOCKER"] == [
        "-i docker0 -j RETURN",
        "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80",
    ]


def test_parse_save_drops_comments_counters_and_lines_outside_tables() -> None:
    text = (
        "-A FORWARD -j STRAY\n"
        "# Generated by iptables-save v1.8.7 on Mon Jan  1 00:00:00 2024\n"
        "*mangle\n"
        ":PREROUTING ACCEPT [123:4567]\n"
        ":MY-MARKS - [0:0]\n"
        "\n"
        "-A PREROUTING -j MY-MARKS\n"
        '-A MY-MARKS -m comment --comment "mark it" -j MARK --set-xmark 0x1/0xffffffff\n'
        "COMMIT\n"
        "# Completed on Mon Jan  1 00:00:00 2024\n"
    )
    assert parse_save(text) == {
        "mangle": Table(
            policies={"PREROUTING": "ACCEPT", "MY-MARKS": "-"},
            rules={
                "PREROUTING": ["-j MY-MARKS"],
                "MY-MARKS": ['-m comment --comment "mark it" -j MARK --set-xmark 0x1/0xffffffff'],
            },
        )
    }


def test_parse_save_of_nothing() -> None:
    assert parse_save("") == {}


# --- read -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_read_gives_the_recorded_resources(case: str) -> None:
    host = ReplayHost(saved_dumps(case))
    snapshot = Firewall(normalise=CannedNormaliser()).read(host)
    expected = json.loads((FIXTURES / "firewall" / case / "resources.json").read_text())
    assert {
        address: {"value": r.value, "owned": r.owned, "relative_order": r.relative_order}
        for address, r in snapshot.resources.items()
    } == expected
    assert all(r.address == a for a, r in snapshot.resources.items())
    assert host.commands() == [("iptables-save",), ("ip6tables-save",)]
    assert snapshot.raw == {
        "ipv4": host.outputs[("iptables-save",)],
        "ipv6": host.outputs[("ip6tables-save",)],
    }


def test_read_of_a_docker_host_owns_only_the_tagged_rules() -> None:
    snapshot = Firewall(normalise=CannedNormaliser()).read(ReplayHost(saved_dumps("docker_host")))
    owned = sorted(a for a, r in snapshot.resources.items() if r.owned)
    assert owned == [
        'firewall.ipv4.filter.FORWARD["-s 10.6.4.0/22 -i zt+ -j ACCEPT"]',
        'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"]',
        'firewall.ipv6.filter.FORWARD["-s 2001:19f0:6001:1a6::/64 -i zt+ -j ACCEPT"]',
    ]
    assert snapshot.resources["firewall.ipv4.filter.FORWARD"] == Resource(
        "firewall.ipv4.filter.FORWARD",
        ["-s 10.6.4.0/22 -i zt+ -j ACCEPT"],
        owned=False,
        relative_order=True,
    )
    # A foreign rule that carries a comment of its own is not mistaken for an owned one.
    fail2ban = "-s 2001:db8::1/128 -m comment --comment fail2ban-like -j DROP"
    assert (
        snapshot.resources[rule_address("ipv6", "filter", "FORWARD", fail2ban, True)].owned is False
    )


def test_tables_absent_from_the_dump_have_accept_policies_and_nothing_else() -> None:
    snapshot = Firewall(normalise=CannedNormaliser()).read(
        ReplayHost(saved_dumps("fresh_nft_host"))
    )
    assert snapshot.resources == {
        f"firewall.{family}.{table}.policy.{chain}": Resource(
            f"firewall.{family}.{table}.policy.{chain}", "ACCEPT", owned=False
        )
        for family in ("ipv4", "ipv6")
        for table, chains in TABLES.items()
        for chain in chains
    }


def test_reading_twice_gives_the_same_digest_and_a_change_moves_it() -> None:
    firewall = Firewall(normalise=CannedNormaliser())
    dumps = saved_dumps("docker_host")
    first = firewall.read(ReplayHost(dumps))
    assert firewall.read(ReplayHost(dumps)).digest == first.digest
    text = (FIXTURES / "firewall/docker_host/iptables-save.txt").read_text()
    dumps[("iptables-save",)] = text.replace(":FORWARD DROP", ":FORWARD ACCEPT")
    assert firewall.read(ReplayHost(dumps)).digest != first.digest


def test_a_failing_save_is_a_live_read_error() -> None:
    stderr = (
        "iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: "
        "Permission denied (you must be root)\n"
    )
    host = ReplayHost({("iptables-save",): CommandResult(("iptables-save",), 4, "", stderr)})
    with pytest.raises(LiveReadError) as caught:
        Firewall(normalise=CannedNormaliser()).read(host)
    message = str(caught.value)
    assert message.startswith("firewall: iptables-save failed: ")
    assert message.endswith("Permission denied (you must be root)")
    assert caught.value.provider == "firewall"


# --- desired ----------------------------------------------------------------------------

GATEWAY = """\
  ipv4:
    nat:
      POSTROUTING:
        - "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"
        - "-s 10.6.4.0/22 -j SNAT --to-source 45.32.69.220"
    filter:
      policy: {FORWARD: DROP}
      FORWARD: ["-i zt+ -s 10.6.4.0/22 -j ACCEPT", "-j ZT-IN"]
      ZT-IN: {exclusive: true, rules: ["-p icmp -j ACCEPT"]}
  ipv6:
    filter:
      FORWARD: ["-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT"]
"""
KERNEL = {
    "-i zt+ -s 10.6.4.0/22 -j ACCEPT": f"-s 10.6.4.0/22 -i zt+ {T} -j ACCEPT",
    "-p icmp -j ACCEPT": f"-p icmp {T} -j ACCEPT",
    "-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT": (
        f"-s 2001:19f0:6001:1a6::/64 -i zt+ {T} -j ACCEPT"
    ),
}


def test_desired_resources_use_the_kernel_spelling() -> None:
    resources = Firewall(normalise=CannedNormaliser(KERNEL)).desired(spec_of(GATEWAY))

    def rule(family: str, table: str, chain: str, text: str) -> tuple[str, Resource]:
        address = rule_address(family, table, chain, text)
        return address, Resource(address, text)

    def chain(
        family: str, table: str, name: str, rules: list[str], purge: bool = False
    ) -> tuple[str, Resource]:
        address = f"firewall.{family}.{table}.{name}"
        scope = f"{address}.foreign["
        return address, Resource(
            address, list(rules), relative_order=True, scope=scope, purge=purge
        )

    snat = "-s 10.6.4.0/22 -j SNAT --to-source 45.32.69.220"
    ret = "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"
    zt = "-s 10.6.4.0/22 -i zt+ -j ACCEPT"
    zt6 = "-s 2001:19f0:6001:1a6::/64 -i zt+ -j ACCEPT"
    assert resources == dict(
        [
            (
                "firewall.ipv4.filter.policy.FORWARD",
                Resource("firewall.ipv4.filter.policy.FORWARD", "DROP"),
            ),
            rule("ipv4", "filter", "FORWARD", zt),
            rule("ipv4", "filter", "FORWARD", "-j ZT-IN"),
            rule("ipv4", "filter", "ZT-IN", "-p icmp -j ACCEPT"),
            rule("ipv4", "nat", "POSTROUTING", ret),
            rule("ipv4", "nat", "POSTROUTING", snat),
            chain("ipv4", "filter", "FORWARD", [zt, "-j ZT-IN"]),
            chain("ipv4", "filter", "ZT-IN", ["-p icmp -j ACCEPT"], purge=True),
            chain("ipv4", "nat", "POSTROUTING", [ret, snat]),
            rule("ipv6", "filter", "FORWARD", zt6),
            chain("ipv6", "filter", "FORWARD", [zt6]),
        ]
    )


def test_desired_hands_the_normaliser_each_family_once_with_spec_paths() -> None:
    normaliser = CannedNormaliser(KERNEL)
    Firewall(normalise=normaliser).desired(spec_of(GATEWAY))
    assert normaliser.calls == [
        (
            "ipv4",
            [
                (
                    "ipv4",
                    "filter",
                    "FORWARD",
                    "-i zt+ -s 10.6.4.0/22 -j ACCEPT",
                    ("firewall", "ipv4", "filter", "FORWARD", 0),
                ),
                (
                    "ipv4",
                    "filter",
                    "FORWARD",
                    "-j ZT-IN",
                    ("firewall", "ipv4", "filter", "FORWARD", 1),
                ),
                (
                    "ipv4",
                    "filter",
                    "ZT-IN",
                    "-p icmp -j ACCEPT",
                    ("firewall", "ipv4", "filter", "ZT-IN", 0),
                ),
                (
                    "ipv4",
                    "nat",
                    "POSTROUTING",
                    "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
                    ("firewall", "ipv4", "nat", "POSTROUTING", 0),
                ),
                (
                    "ipv4",
                    "nat",
                    "POSTROUTING",
                    "-s 10.6.4.0/22 -j SNAT --to-source 45.32.69.220",
                    ("firewall", "ipv4", "nat", "POSTROUTING", 1),
                ),
            ],
            {"filter": {"FORWARD", "ZT-IN"}, "nat": {"POSTROUTING"}},
        ),
        (
            "ipv6",
            [
                (
                    "ipv6",
                    "filter",
                    "FORWARD",
                    "-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT",
                    ("firewall", "ipv6", "filter", "FORWARD", 0),
                ),
            ],
            {"filter": {"FORWARD"}},
        ),
    ]


def test_two_spellings_of_one_rule_are_one_error_naming_the_second() -> None:
    spec = spec_of(
        "  ipv4:\n    filter:\n      FORWARD:\n"
        "        - -i zt+ -s 10.6.4.0/22 -j ACCEPT\n"
        "        - -s 10.6.4.0/22 -i zt+ -j ACCEPT\n"
    )
    normaliser = CannedNormaliser(
        {
            "-i zt+ -s 10.6.4.0/22 -j ACCEPT": f"-s 10.6.4.0/22 -i zt+ {T} -j ACCEPT",
            "-s 10.6.4.0/22 -i zt+ -j ACCEPT": f"-s 10.6.4.0/22 -i zt+ {T} -j ACCEPT",
        }
    )
    with pytest.raises(SpecError) as caught:
        Firewall(normalise=normaliser, file="gw.yaml").desired(spec)
    assert str(caught.value) == (
        "gw.yaml:8: firewall.ipv4.filter.FORWARD[1]: the same rule as another in this chain "
        "once normalised: -s 10.6.4.0/22 -i zt+ -j ACCEPT"
    )


def test_a_spec_without_a_firewall_wants_nothing() -> None:
    """...and is still read: rules ztplan wrote earlier are deleted, as for a dropped family."""
    spec = parse_spec("version: 1\ntarget: {name: gw1}\n", "gw.yaml")
    normaliser = CannedNormaliser()
    firewall = Firewall(normalise=normaliser)
    assert firewall.manages(spec) is True
    assert firewall.desired(spec) == {}
    assert normaliser.calls == []


# --- apply: the exact restore input -----------------------------------------------------


def restore(text: str, family: str = "ipv4") -> tuple[tuple[str, ...], str]:
    tool = "iptables-restore" if family == "ipv4" else "ip6tables-restore"
    return (tool, "--noflush"), text


SAVE4 = (("iptables-save",), None)
SAVE6 = (("ip6tables-save",), None)

APPLY_CASES = {
    "new_rule_in_an_empty_chain": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i zt+ -j ACCEPT']\n",
        dump(*FILTER),
        "",
        [SAVE4, restore(f"*filter\n-A FORWARD {T} -i zt+ -j ACCEPT\nCOMMIT\n")],
    ),
    "new_rule_in_a_table_absent_from_the_dump": (
        "  ipv4:\n    nat:\n      POSTROUTING: ['-s 10.6.4.0/22 -j MASQUERADE']\n",
        "",
        "",
        [SAVE4, restore(f"*nat\n-A POSTROUTING {T} -s 10.6.4.0/22 -j MASQUERADE\nCOMMIT\n")],
    ),
    "new_rule_between_two_owned_rules": (
        "  ipv4:\n    filter:\n"
        "      FORWARD: ['-i a -j ACCEPT', '-i b -j ACCEPT', '-i c -j ACCEPT']\n",
        dump(
            *FILTER,
            "-A FORWARD -j DOCKER-USER",
            f"-A FORWARD -i a {T} -j ACCEPT",
            f"-A FORWARD -i c {T} -j ACCEPT",
        ),
        "",
        [SAVE4, restore(f"*filter\n-I FORWARD 3 {T} -i b -j ACCEPT\nCOMMIT\n")],
    ),
    "new_first_rule_goes_before_the_owned_ones": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i a -j ACCEPT', '-i b -j ACCEPT']\n",
        dump(*FILTER, "-A FORWARD -j DOCKER-USER", f"-A FORWARD -i b {T} -j ACCEPT"),
        "",
        [SAVE4, restore(f"*filter\n-I FORWARD 2 {T} -i a -j ACCEPT\nCOMMIT\n")],
    ),
    "rule_removed": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i a -j ACCEPT']\n",
        dump(
            *FILTER,
            f"-A FORWARD -i a {T} -j ACCEPT",
            "-A FORWARD -j DOCKER-USER",
            f"-A FORWARD -i b {T} -j ACCEPT",
        ),
        "",
        [SAVE4, restore("*filter\n-D FORWARD 3\nCOMMIT\n")],
    ),
    "reorder_moves_only_the_moved_rule": (
        "  ipv4:\n    filter:\n"
        "      FORWARD: ['-i d -j ACCEPT', '-i a -j ACCEPT', '-i b -j ACCEPT', '-i c -j ACCEPT']\n",
        dump(*FILTER, *(f"-A FORWARD -i {x} {T} -j ACCEPT" for x in "abcd")),
        "",
        [
            SAVE4,
            restore(f"*filter\n-D FORWARD 4\n-I FORWARD 1 {T} -i d -j ACCEPT\nCOMMIT\n"),
        ],
    ),
    "swap_of_two_rules": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i b -j ACCEPT', '-i a -j ACCEPT']\n",
        dump(*FILTER, f"-A FORWARD -i a {T} -j ACCEPT", f"-A FORWARD -i b {T} -j ACCEPT"),
        "",
        [
            SAVE4,
            restore(f"*filter\n-D FORWARD 1\n-A FORWARD {T} -i a -j ACCEPT\nCOMMIT\n"),
        ],
    ),
    "foreign_rule_kept_in_place_owned_rules_after_it": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i a -j ACCEPT', '-i b -j ACCEPT']\n",
        dump(*FILTER, "-A FORWARD -j DOCKER-USER"),
        "",
        [
            SAVE4,
            restore(
                f"*filter\n-A FORWARD {T} -i a -j ACCEPT\n-A FORWARD {T} -i b -j ACCEPT\nCOMMIT\n"
            ),
        ],
    ),
    "new_owned_rule_stays_before_a_later_foreign_rule": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i a -j ACCEPT', '-i b -j ACCEPT']\n",
        dump(
            *FILTER,
            ":X - [0:0]",
            ":Y - [0:0]",
            "-A FORWARD -j X",
            f"-A FORWARD -i a {T} -j ACCEPT",
            "-A FORWARD -j Y",
        ),
        "",
        [SAVE4, restore(f"*filter\n-I FORWARD 3 {T} -i b -j ACCEPT\nCOMMIT\n")],
    ),
    "exclusive_chain_purges_foreign_rules": (
        "  ipv4:\n    filter:\n      ZT-IN: {exclusive: true, rules: ['-i a -j ACCEPT']}\n",
        dump(
            *FILTER,
            ":ZT-IN - [0:0]",
            "-A ZT-IN -s 192.0.2.1/32 -j DROP",
            f"-A ZT-IN -i a {T} -j ACCEPT",
            "-A ZT-IN -j RETURN",
        ),
        "",
        [SAVE4, restore("*filter\n-D ZT-IN 3\n-D ZT-IN 1\nCOMMIT\n")],
    ),
    "new_user_chain_is_declared_once_before_its_rules": (
        "  ipv4:\n    filter:\n"
        "      FORWARD: ['-j ZT-IN']\n      ZT-IN: {exclusive: true, rules: ['-i a -j ACCEPT']}\n",
        dump(*FILTER),
        "",
        [
            SAVE4,
            restore(
                f"*filter\n:ZT-IN - [0:0]\n-A FORWARD {T} -j ZT-IN\n"
                f"-A ZT-IN {T} -i a -j ACCEPT\nCOMMIT\n"
            ),
        ],
    ),
    "existing_user_chain_is_not_redeclared": (
        "  ipv4:\n    filter:\n      DOCKER-USER: ['-i zt+ -j RETURN']\n",
        dump(*FILTER, ":DOCKER-USER - [0:0]", "-A DOCKER-USER -j RETURN"),
        "",
        [SAVE4, restore(f"*filter\n-A DOCKER-USER {T} -i zt+ -j RETURN\nCOMMIT\n")],
    ),
    "policy_change": (
        "  ipv4:\n    filter:\n      policy: {FORWARD: DROP}\n",
        dump(*FILTER),
        "",
        [SAVE4, restore("*filter\n-P FORWARD DROP\nCOMMIT\n")],
    ),
    "only_the_family_with_changes_is_restored": (
        "  ipv4:\n    filter:\n      FORWARD: ['-i a -j ACCEPT']\n"
        "  ipv6:\n    filter:\n      policy: {FORWARD: DROP}\n      FORWARD: ['-i a -j ACCEPT']\n",
        dump(*FILTER, f"-A FORWARD -i a {T} -j ACCEPT"),
        dump(*FILTER, f"-A FORWARD -i a {T} -j ACCEPT"),
        [SAVE6, restore("*filter\n-P FORWARD DROP\nCOMMIT\n", "ipv6")],
    ),
    "both_families_and_two_tables": (
        "  ipv4:\n    nat:\n      POSTROUTING: ['-o eth0 -j MASQUERADE']\n"
        "    filter:\n      policy: {FORWARD: DROP}\n      FORWARD: ['-i zt+ -j ACCEPT']\n"
        "  ipv6:\n    filter:\n      FORWARD: ['-i zt+ -j ACCEPT']\n",
        dump(*FILTER),
        dump(*FILTER),
        [
            SAVE4,
            restore(
                f"*filter\n-A FORWARD {T} -i zt+ -j ACCEPT\n-P FORWARD DROP\nCOMMIT\n"
                f"*nat\n-A POSTROUTING {T} -o eth0 -j MASQUERADE\nCOMMIT\n"
            ),
            SAVE6,
            restore(f"*filter\n-A FORWARD {T} -i zt+ -j ACCEPT\nCOMMIT\n", "ipv6"),
        ],
    ),
    "docker_host_new_rule_after_the_owned_one": (
        "  ipv4:\n    filter:\n      policy: {FORWARD: DROP}\n"
        "      FORWARD: ['-i zt+ -s 10.6.4.0/22 -j ACCEPT', '-i eth0 -o zt+ -j ACCEPT']\n"
        "    nat:\n      POSTROUTING: ['-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN']\n"
        "  ipv6:\n    filter:\n      policy: {FORWARD: DROP}\n"
        "      FORWARD: ['-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT']\n",
        (FIXTURES / "firewall/docker_host/iptables-save.txt").read_text(),
        (FIXTURES / "firewall/docker_host/ip6tables-save.txt").read_text(),
        [SAVE4, restore(f"*filter\n-A FORWARD {T} -i eth0 -o zt+ -j ACCEPT\nCOMMIT\n")],
    ),
    "duplicate_owned_rule_removed_foreign_rules_untouched": (
        "  ipv4:\n    filter:\n      INPUT: ['-i zt+ -j ACCEPT']\n",
        (FIXTURES / "firewall/fail2ban_duplicate_owned/iptables-save.txt").read_text(),
        "",
        [SAVE4, restore("*filter\n-D INPUT 2\nCOMMIT\n")],
    ),
}


def canned_kernel() -> CannedNormaliser:
    return CannedNormaliser(
        {
            "-i zt+ -s 10.6.4.0/22 -j ACCEPT": f"-s 10.6.4.0/22 -i zt+ {T} -j ACCEPT",
            "-i eth0 -o zt+ -j ACCEPT": f"-i eth0 -o zt+ {T} -j ACCEPT",
            "-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT": (
                f"-s 2001:19f0:6001:1a6::/64 -i zt+ {T} -j ACCEPT"
            ),
        }
    )


@pytest.mark.parametrize(
    ("spec_yaml", "live4", "live6", "expected"), APPLY_CASES.values(), ids=APPLY_CASES.keys()
)
def test_apply_writes_exactly_this_restore_input_and_converges(
    spec_yaml: str,
    live4: str,
    live6: str,
    expected: list[tuple[tuple[str, ...], str | None]],
) -> None:
    firewall = Firewall(normalise=canned_kernel())
    spec = spec_of(spec_yaml)
    host = FakeKernel({"ipv4": live4, "ipv6": live6})
    foreign_before = {a: r for a, r in firewall.read(host).resources.items() if ".foreign[" in a}
    changes, _, desired = plan_firewall(firewall, spec, host)
    assert changes, "the case must need changes"
    host.calls.clear()
    firewall.apply(host, changes, {a: r.value for a, r in desired.items()})
    assert host.calls == expected
    # The same host read again matches the spec: nothing left to change.
    again, unmanaged, _ = plan_firewall(firewall, spec, host)
    assert again == []
    purged = {c.address for c in changes if ".foreign[" in c.address}
    after = firewall.read(host).resources
    assert {a: r for a, r in after.items() if ".foreign[" in a} == {
        a: r for a, r in foreign_before.items() if a not in purged
    }
    assert set(unmanaged) <= set(foreign_before)


def test_apply_with_no_changes_runs_nothing() -> None:
    host = ReplayHost()
    Firewall(normalise=CannedNormaliser()).apply(host, [], {})
    assert host.calls == []


def test_a_rejected_restore_is_a_live_read_error() -> None:
    stderr = (
        "iptables-restore v1.8.9 (nf_tables): Couldn't load match `conntrack':No such file "
        "or directory\n\nError occurred at line: 2\n"
        "Try `iptables-restore -h' or 'iptables-restore --help' for more information.\n"
    )
    host = ReplayHost(
        {
            ("iptables-save",): "",
            ("iptables-restore", "--noflush"): CommandResult(
                ("iptables-restore", "--noflush"), 1, "", stderr
            ),
        }
    )
    change = Change(
        address='firewall.ipv4.filter.FORWARD["-m conntrack --ctstate NEW -j ACCEPT"]',
        provider="firewall",
        action=Action.CREATE,
        after="-m conntrack --ctstate NEW -j ACCEPT",
    )
    with pytest.raises(LiveReadError) as caught:
        Firewall(normalise=CannedNormaliser()).apply(
            host, [change], {"firewall.ipv4.filter.FORWARD": [change.after]}
        )
    assert str(caught.value) == (
        "firewall: iptables-restore failed: Couldn't load match `conntrack':No such file or "
        "directory"
    )


def test_apply_refuses_to_edit_when_the_save_before_it_fails() -> None:
    host = ReplayHost(
        {
            ("iptables-save",): CommandResult(("iptables-save",), 1, "", "iptables-save: busy\n"),
            ("iptables-restore", "--noflush"): "",
        }
    )
    change = Change(
        address='firewall.ipv4.filter.ZT-IN["-j ACCEPT"]',
        provider="firewall",
        action=Action.CREATE,
        after="-j ACCEPT",
    )
    with pytest.raises(LiveReadError):
        Firewall(normalise=CannedNormaliser()).apply(
            host, [change], {"firewall.ipv4.filter.ZT-IN": ["-j ACCEPT"]}
        )
    # Declaring ZT-IN blind would flush it if it exists: nothing may be restored.
    assert ("iptables-restore", "--noflush") not in host.commands()


def test_a_duplicate_owned_rule_after_another_converges_in_one_apply() -> None:
    spec = spec_of("  ipv4:\n    filter:\n      INPUT: ['-i zt+ -j ACCEPT', '-i eth0 -j DROP']\n")
    host = FakeKernel(
        {
            "ipv4": dump(
                *FILTER,
                f"-A INPUT -i zt+ {T} -j ACCEPT",
                f"-A INPUT -i eth0 {T} -j DROP",
                f"-A INPUT -i zt+ {T} -j ACCEPT",
            ),
            "ipv6": "",
        }
    )
    firewall = Firewall(normalise=CannedNormaliser())
    changes, _, desired = plan_firewall(firewall, spec, host)
    firewall.apply(host, changes, {a: r.value for a, r in desired.items()})
    assert host.tables["ipv4"]["filter"].rules["INPUT"] == [
        f"-i zt+ {T} -j ACCEPT",
        f"-i eth0 {T} -j DROP",
    ]


def test_a_chain_name_with_a_dot_is_refused_by_the_spec() -> None:
    """Dots would make addresses ambiguous (firewall.ipv4.filter.ZT.IN[...])."""
    with pytest.raises(SpecError, match=r"firewall\.ipv4\.filter\[\"ZT\.IN\"\]: a chain name"):
        spec_of("  ipv4:\n    filter:\n      ZT.IN: ['-i a -j ACCEPT']\n")


# --- rollback ---------------------------------------------------------------------------


def test_rollback_restores_each_family_from_the_dump_read_saw() -> None:
    before4 = dump(
        *FILTER,
        ":DOCKER-USER - [0:0]",
        "-A FORWARD -j DOCKER-USER",
        f"-A FORWARD -i a {T} -j ACCEPT",
    )
    before6 = dump(":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]")
    host = FakeKernel({"ipv4": before4, "ipv6": before6})
    firewall = Firewall(normalise=CannedNormaliser())
    snapshot = firewall.read(host)
    spec = spec_of(
        "  ipv4:\n    filter:\n      policy: {FORWARD: DROP}\n      FORWARD: ['-i b -j ACCEPT']\n"
        "  ipv6:\n    filter:\n      policy: {FORWARD: ACCEPT}\n"
    )
    changes, _, desired = plan_firewall(firewall, spec, host)
    firewall.apply(host, changes, {a: r.value for a, r in desired.items()})
    assert firewall.read(host).digest != snapshot.digest
    host.calls.clear()
    firewall.rollback(host, snapshot)
    assert firewall.read(host).resources == snapshot.resources
    restores = [(argv, text) for argv, text in host.calls if argv[0].endswith("-restore")]
    assert restores == [
        (("iptables-restore",), snapshot.raw["ipv4"]),
        (("ip6tables-restore",), snapshot.raw["ipv6"]),
    ]
    assert parse_save(snapshot.raw["ipv4"]) == parse_save(before4)


def test_rollback_empties_tables_created_since_the_snapshot() -> None:
    host = FakeKernel({"ipv4": "", "ipv6": ""})
    firewall = Firewall(normalise=CannedNormaliser())
    snapshot = firewall.read(host)
    spec = spec_of("  ipv4:\n    nat:\n      POSTROUTING: ['-o eth0 -j MASQUERADE']\n")
    changes, _, desired = plan_firewall(firewall, spec, host)
    firewall.apply(host, changes, {a: r.value for a, r in desired.items()})
    assert host.tables["ipv4"]["nat"].rules["POSTROUTING"] == [f"{T} -o eth0 -j MASQUERADE"]
    firewall.rollback(host, snapshot)
    assert host.tables["ipv4"]["nat"].rules["POSTROUTING"] == []
    assert firewall.read(host).resources == snapshot.resources
    assert not any(argv == ("ip6tables-restore",) for argv, _ in host.calls)


def test_a_failing_rollback_says_which_tool_failed() -> None:
    dumps: dict[tuple[str, ...], str | CommandResult] = {
        ("iptables-save",): dump(*FILTER),
        ("ip6tables-save",): "",
    }
    firewall = Firewall(normalise=CannedNormaliser())
    snapshot = firewall.read(ReplayHost(dumps))
    host = ReplayHost(
        {
            **dumps,
            ("iptables-restore",): CommandResult(
                ("iptables-restore",), 1, "", "iptables-restore v1.8.9 (nf_tables): line 2 failed\n"
            ),
        }
    )
    with pytest.raises(LiveReadError) as caught:
        firewall.rollback(host, snapshot)
    assert str(caught.value) == "firewall: iptables-restore: line 2 failed"


# --- _edit_chain and _longest_increasing ------------------------------------------------


def owned(rule: str) -> str:
    return f"{T} {rule}"


@pytest.mark.parametrize(
    ("live", "desired", "purged", "lines"),
    [
        pytest.param([], [], set(), [], id="nothing_to_do"),
        pytest.param([owned("-j A")], ["-j A"], set(), [], id="already_in_place"),
        pytest.param(["-j X"], [], set(), [], id="foreign_alone_is_left"),
        pytest.param(
            [owned("-j A"), owned("-j B")],
            [],
            set(),
            ["-D C 2", "-D C 1"],
            id="all_owned_removed",
        ),
        pytest.param(
            [],
            ["-j A", "-j B"],
            set(),
            [f"-A C {T} -j A", f"-A C {T} -j B"],
            id="empty_chain_filled_in_order",
        ),
        pytest.param(
            [owned(f"-j {x}") for x in "DCBA"],
            ["-j A", "-j B", "-j C", "-j D"],
            set(),
            [
                "-D C 3",
                "-D C 2",
                "-D C 1",
                f"-A C {T} -j B",
                f"-A C {T} -j C",
                f"-A C {T} -j D",
            ],
            id="reversed_keeps_one",
        ),
        pytest.param(
            ["-j X", owned("-j A")],
            ["-j B", "-j A"],
            set(),
            [f"-I C 2 {T} -j B"],
            id="insert_before_first_owned_after_foreign",
        ),
        pytest.param(
            ["-j X", owned("-j A"), "-j Y"],
            ["-j A"],
            {rule_address("ipv4", "filter", "C", "-j Y", foreign=True)},
            ["-D C 3"],
            id="purge_one_foreign_keep_other",
        ),
        pytest.param(
            [owned("-j A"), "-j X", owned("-j A")],
            ["-j A"],
            set(),
            ["-D C 1"],
            id="duplicate_owned_deleted_once",
        ),
    ],
)
def test_edit_chain(
    live: list[str], desired: list[str], purged: set[str], lines: list[str]
) -> None:
    assert _edit_chain("C", live, desired, purged, "ipv4", "filter") == lines


@pytest.mark.parametrize(
    ("pairs", "keep"),
    [
        pytest.param([], set(), id="empty"),
        pytest.param([(4, 0)], {4}, id="one"),
        pytest.param([(0, 0), (5, 1), (7, 2)], {0, 5, 7}, id="already_ordered"),
        pytest.param([(0, 3), (1, 2), (2, 1), (3, 0)], {3}, id="reversed"),
        pytest.param([(0, 2), (1, 0), (2, 1)], {1, 2}, id="first_moved_to_the_end"),
        pytest.param([(0, 1), (1, 2), (2, 3), (3, 0)], {0, 1, 2}, id="last_moved_to_the_front"),
        pytest.param([(0, 0), (1, 0)], {1}, id="equal_ranks_keep_one"),
    ],
)
def test_longest_increasing(pairs: list[tuple[int, int]], keep: set[int]) -> None:
    assert _longest_increasing(pairs) == keep


def test_longest_increasing_keeps_a_longest_run() -> None:
    ranks = [3, 0, 4, 1, 5, 2, 6]
    pairs = [(10 + i, r) for i, r in enumerate(ranks)]
    kept = _longest_increasing(pairs)
    in_order = [r for (pos, r) in pairs if pos in kept]
    assert in_order == sorted(in_order)
    assert len(kept) == 4  # e.g. 0 1 2 6 or 3 4 5 6
