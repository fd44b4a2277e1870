"""ztplan.spec: the reference specs load, and every bad input is one exact line naming the
file, the line and the field path (README: Safety)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztplan.errors import SpecError
from ztplan.spec import format_field, load_spec, parse_spec, rule_problem, rule_words

SPECS = Path(__file__).resolve().parent.parent.parent / "specs"
FILE = "specs/gw.yaml"
HEAD = "version: 1\ntarget: {name: gw1}\n"


def forward(*rules: str) -> str:
    """A spec whose ipv4 filter FORWARD chain holds `rules` as written (YAML scalars);
    the first rule is on line 7."""
    lines = "".join(f"        - {rule}\n" for rule in rules)
    return HEAD + "firewall:\n  ipv4:\n    filter:\n      FORWARD:\n" + lines


def error_of(text: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, FILE)
    return caught.value


# --- the reference specs --------------------------------------------------------------


def test_gateway_spec_loads() -> None:
    spec = load_spec(str(SPECS / "gateway.yaml"))
    assert spec.target.name == "gw1"
    assert spec.firewall is not None and spec.firewall.ipv4 is not None
    nat = spec.firewall.ipv4.tables()["nat"]
    assert nat.chains["POSTROUTING"].rules == [
        "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-s 10.6.4.0/22 -j SNAT --to-source 45.32.69.220",
    ]
    assert spec.firewall.ipv6 is not None
    assert spec.firewall.ipv6.tables()["filter"].policy == {"FORWARD": "DROP"}
    assert spec.sysctl == {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1}
    assert [str(r.target) for r in spec.networks[0].routes or []] == [
        "10.6.4.0/22",
        "0.0.0.0/0",
        "2001:19f0:6001:1a6::/80",
    ]


def test_masquerade_spec_loads_with_the_gateway_shorthand_expanded() -> None:
    spec = load_spec(str(SPECS / "gateway-masquerade.yaml"))
    assert spec.target.name == "gw-home"
    assert spec.gateway is None  # expanded into the resources below
    assert [n.id for n in spec.networks] == ["8056c2e21c000001"]
    assert spec.firewall is not None and spec.firewall.ipv6 is not None


def test_member_spec_loads() -> None:
    spec = load_spec(str(SPECS / "member.yaml"))
    assert spec.target.name == "laptop"
    assert spec.member is not None
    assert spec.member.networks[0].allow_default is True
    assert spec.sysctl == {"net.ipv4.conf.all.rp_filter": 2}


def test_a_missing_spec_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as caught:
        load_spec(str(path))
    assert str(caught.value) == f"{path}: no such spec file"  # the same words as read_spec's


# --- one exact line per mistake -------------------------------------------------------

CONTROL = "a rule on one line without control characters (newline, NUL, tab...)"
COMMAND = "(write only what follows `-A CHAIN`; the chain is the key above)"

CASES = {
    "newline_in_rule": (
        forward('"-j ACCEPT\\n-A INPUT -j DROP"'),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: {CONTROL}",
    ),
    "nul_in_rule": (
        forward('"-i zt+ -j ACCEPT"', '"-j ACCEPT\\0"'),
        f"{FILE}:8: firewall.ipv4.filter.FORWARD[1]: {CONTROL}",
    ),
    "tab_in_rule": (
        forward('"-i zt+\\t-j ACCEPT"'),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: {CONTROL}",
    ),
    "append_command_in_rule": (
        forward('"-A INPUT -j ACCEPT"'),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: rule arguments without the command -A "
        + COMMAND,
    ),
    "table_option_in_rule": (
        forward('"-t nat -j MASQUERADE"'),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: rule arguments without the command -t "
        + COMMAND,
    ),
    "unbalanced_quote": (
        forward("'-m comment --comment \"oops -j ACCEPT'"),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: a rule with balanced quotes",
    ),
    "empty_rule": (
        forward('"  "'),
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: an iptables rule, not an empty string",
    ),
    "duplicate_rule_in_chain": (
        forward('"-j ACCEPT"', '"-i zt+ -j ACCEPT"', '"-j ACCEPT"'),
        f"{FILE}:6: firewall.ipv4.filter.FORWARD: each rule once; '-j ACCEPT' is written twice",
    ),
    "duplicate_rule_in_exclusive_chain": (
        HEAD + "firewall:\n  ipv4:\n    filter:\n"
        "      ZT-IN: {exclusive: true, rules: ['-j ACCEPT', '-j ACCEPT']}\n",
        f"{FILE}:6: firewall.ipv4.filter.ZT-IN.rules: each rule once; '-j ACCEPT' is written twice",
    ),
    "rule_in_exclusive_chain_with_control_character": (
        HEAD + "firewall:\n  ipv4:\n    filter:\n      ZT-IN:\n        exclusive: true\n"
        '        rules: ["-j ACCEPT", "-j DROP\\r"]\n',
        f"{FILE}:8: firewall.ipv4.filter.ZT-IN.rules[1]: {CONTROL}",
    ),
    "duplicate_yaml_key": (
        HEAD + "target: {name: gw2}\n",
        f"{FILE}:3: not valid YAML: duplicate key 'target'",
    ),
    "duplicate_sysctl_key": (
        HEAD + "sysctl:\n  net.ipv4.ip_forward: 1\n  net.ipv4.ip_forward: 0\n",
        f"{FILE}:5: not valid YAML: duplicate key 'net.ipv4.ip_forward'",
    ),
    "unknown_field": (
        HEAD + "firewal:\n  ipv4: {}\n",
        f"{FILE}:3: firewal: not a known field; did you mean `firewall`? (see `ztplan schema`)",
    ),
    "unknown_field_nested": (
        HEAD + "ndppd:\n  proxies:\n    - interface: eth0\n      rulez: []\n",
        f"{FILE}:6: ndppd.proxies[0].rulez: not a known field; did you mean `rules`? "
        "(see `ztplan schema`)",
    ),
    "unknown_field_nothing_near": (
        HEAD + "colour: blue\n",
        f"{FILE}:3: colour: not a known field (check the spelling; see `ztplan schema`)",
    ),
    "missing_target_name": (
        "version: 1\ntarget: {}\n",
        f"{FILE}:2: target.name: required field is missing",
    ),
    "target_name_of_a_journal": (
        "version: 1\ntarget: {name: gw.journal}\n",
        f"{FILE}:2: target.name: a name that does not end in `.journal`: "
        "state/gw.journal.json is the journal file of target gw",
    ),
    "target_name_of_a_revert_outcome": (
        "version: 1\ntarget: {name: gw.reverted}\n",
        f"{FILE}:2: target.name: a name that does not end in `.reverted`: "
        "state/gw.reverted.json is the revert outcome file of target gw",
    ),
    "missing_target": (
        "version: 1\n",
        f"{FILE}: target: required field is missing",
    ),
    "version_2": (
        "version: 2\ntarget: {name: gw1}\n",
        f"{FILE}:1: version: Input should be 1, got 2",
    ),
    "policy_on_user_chain": (
        HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {ZT-IN: DROP}\n"
        "      ZT-IN: ['-j ACCEPT']\n",
        f"{FILE}:6: firewall.ipv4.filter.policy.ZT-IN: a built-in chain of filter "
        "(INPUT, FORWARD, OUTPUT); user chains have no policy",
    ),
    "policy_on_chain_of_another_table": (
        HEAD + "firewall:\n  ipv6:\n    nat:\n      policy:\n        FORWARD: DROP\n",
        f"{FILE}:7: firewall.ipv6.nat.policy.FORWARD: a built-in chain of nat "
        "(PREROUTING, INPUT, OUTPUT, POSTROUTING); user chains have no policy",
    ),
    "bad_policy_value": (
        HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {FORWARD: REJECT}\n",
        f"{FILE}:6: firewall.ipv4.filter.policy.FORWARD: "
        "Input should be 'ACCEPT' or 'DROP', got 'REJECT'",
    ),
    "bad_network_id": (
        HEAD + "networks:\n  - id: 8056C2E21C00000\n",
        f"{FILE}:4: networks[0].id: a network id: 16 lowercase hex digits, got '8056C2E21C00000'",
    ),
    "route_target_with_host_bits": (
        HEAD + "networks:\n  - id: 8056c2e21c000001\n    routes:\n"
        "      - {target: 10.6.4.0/22}\n      - {target: 10.6.4.1/22}\n",
        f"{FILE}:7: networks[0].routes[1].target: "
        "an IP network with a prefix length (10.6.4.1/22 has host bits set)",
    ),
    "route_via_not_an_address": (
        HEAD + "networks:\n  - id: 8056c2e21c000001\n    routes:\n"
        "      - {target: 0.0.0.0/0, via: gateway}\n",
        f"{FILE}:6: networks[0].routes[0].via: an IPv4 or IPv6 address",
    ),
    "invalid_yaml_flow": (
        HEAD + "firewall: [unclosed\n",
        f"{FILE}:4: not valid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    "invalid_yaml_indentation": (
        HEAD + "sysctl:\n  net.ipv4.ip_forward: 1\n net.ipv6.conf.all.forwarding: 1\n",
        f"{FILE}:5: not valid YAML: expected <block end>, but found '<block mapping start>'",
    ),
    "not_a_mapping": (
        "- version: 1\n",
        f"{FILE}: a YAML mapping with `version: 1` and `target: {{name: ...}}`",
    ),
}


@pytest.mark.parametrize(("text", "message"), CASES.values(), ids=CASES.keys())
def test_a_bad_spec_is_one_exact_line(text: str, message: str) -> None:
    error = error_of(text)
    assert str(error) == message
    assert "\n" not in str(error)


def test_a_bad_spec_is_one_line_per_problem_all_at_once() -> None:
    """A user fixes a spec in one round: every problem, in the file's order, each on a
    line of its own; the first is the error's message, as for a single problem."""
    error = error_of(
        HEAD + "firewall:\n"
        "  ipv4:\n"
        "    filter:\n"
        "      polcy: {FORWARD: DROP}\n"
        "      FORWARD: ['-i zt+ -j ACCEPT']\n"
        "sysctls:\n"
        "  net.ipv4.ip_forward: 1\n"
        "networks:\n"
        "  - id: 8056c2e21c000001\n"
        "    routes: [{target: 10.6.4.0/33}]\n"
        "    ip_pool: []\n"
        "colour: blue\n"
    )
    assert error.lines() == [
        f"{FILE}:6: firewall.ipv4.filter.polcy: not a known field; did you mean `policy`? "
        "(see `ztplan schema`)",
        f"{FILE}:8: sysctls: not a known field; did you mean `sysctl`? (see `ztplan schema`)",
        f"{FILE}:12: networks[0].routes[0].target: an IP network with a prefix length "
        "('10.6.4.0/33' does not appear to be an IPv4 or IPv6 network)",
        f"{FILE}:13: networks[0].ip_pool: not a known field; did you mean `ip_pools`? "
        "(see `ztplan schema`)",
        f"{FILE}:14: colour: not a known field (check the spelling; see `ztplan schema`)",
    ]
    assert str(error) == error.lines()[0]


def test_every_semantic_problem_is_reported_too() -> None:
    error = error_of(
        HEAD + "networks:\n  - id: 8056c2e21c000001\n  - id: 8056c2e21c000001\n"
        "member:\n  networks: [{id: 8056c2e21c000002}, {id: 8056c2e21c000002}]\n"
    )
    assert error.lines() == [
        f"{FILE}:3: networks: a `controller:` section saying where the networks live",
        f"{FILE}:5: networks[1].id: each network once; 8056c2e21c000001 is written twice",
        f"{FILE}:7: member.networks[1].id: each network once; 8056c2e21c000002 is written twice",
    ]


def test_a_single_problem_is_a_single_line() -> None:
    assert error_of(HEAD + "sysctls: {}\n").lines() == [
        f"{FILE}:3: sysctls: not a known field; did you mean `sysctl`? (see `ztplan schema`)"
    ]


def test_the_error_carries_file_field_and_line_apart() -> None:
    error = error_of(forward('"-j ACCEPT"', '"-A FORWARD -j DROP"'))
    assert (error.file, error.field, error.line) == (
        FILE,
        "firewall.ipv4.filter.FORWARD[1]",
        8,
    )
    assert error.expected.startswith("rule arguments without the command -A")


def test_a_jump_to_a_misspelt_target_is_refused_naming_its_line() -> None:
    """iptables would take `ACCEPTT` for a chain; one letter from a verdict, it is a typo,
    refused when the spec is read, without the host."""
    assert str(error_of(forward('"-j ACCEPT"', '"-i zt+ -j ACCEPTT"'))) == (
        f"{FILE}:8: firewall.ipv4.filter.FORWARD[1]: jumps to ACCEPTT, which is no target: "
        "ACCEPT misspelt? (a name one letter from a target's is taken for a typo, not a chain)"
    )
    assert "MASQUERADE misspelt?" in str(error_of(forward('"--jump MASQUARADE"')))
    assert "DROP misspelt?" in str(error_of(forward("\"-m comment --comment 'a b' -g drop\"")))


def test_a_jump_to_a_chain_the_spec_or_the_host_may_have_is_not_a_typo() -> None:
    parse_spec(
        forward('"-j DOCKER-USER"', '"-j NOSUCHCHAIN"', "\"-m comment --comment '-j ACCEPTT'\""),
        FILE,
    )
    declared = HEAD + (
        "firewall:\n  ipv4:\n    filter:\n      FORWARD: ['-j DROPS']\n      DROPS: ['-j DROP']\n"
    )
    parse_spec(declared, FILE)  # the spec's own chain, however it is named


# --- sysctl keys and values -----------------------------------------------------------

SYSCTL_KEY = "a sysctl key like net.ipv4.ip_forward (dot-separated names, no path components)"
SYSCTL_CASES = {
    "traversal_from_the_start": ("../../etc/x", f'sysctl["../../etc/x"]: {SYSCTL_KEY}'),
    "traversal_inside": ("net/../../x", f'sysctl["net/../../x"]: {SYSCTL_KEY}'),
    "traversal_after_dots": ("net.ipv4./../x", f'sysctl["net.ipv4./../x"]: {SYSCTL_KEY}'),
    "boolean_value": (
        "net.ipv4.ip_forward: yes",
        'sysctl["net.ipv4.ip_forward"]: an integer or a string',
    ),
}


def sysctl_spec(entry: str) -> str:
    """The bad entry is on line 5, after a good key on line 4."""
    if ":" not in entry:
        entry += ": 1"
    return HEAD + f"sysctl:\n  net.ipv6.conf.all.forwarding: 1\n  {entry}\n"


@pytest.mark.parametrize(("entry", "expected"), SYSCTL_CASES.values(), ids=SYSCTL_CASES.keys())
def test_a_bad_sysctl_entry_is_refused_naming_the_key(entry: str, expected: str) -> None:
    error = error_of(sysctl_spec(entry))
    message = str(error)
    assert message.startswith(f"{FILE}:")
    assert expected in message
    assert "\n" not in message


def test_a_yes_sysctl_value_is_refused_not_read_as_true() -> None:
    error = error_of(HEAD + "sysctl:\n  net.ipv4.ip_forward: yes\n")
    assert str(error) == (
        f'{FILE}:4: sysctl["net.ipv4.ip_forward"]: an integer or a string, got True'
    )


def test_a_traversing_sysctl_key_message() -> None:
    error = error_of(HEAD + "sysctl:\n  ../../etc/x: 1\n")
    assert str(error) == f'{FILE}:4: sysctl["../../etc/x"]: {SYSCTL_KEY}'


@pytest.mark.parametrize(
    ("entry", "key"),
    [("../../etc/x", "../../etc/x"), ("net.ipv4.ip_forward: yes", "net.ipv4.ip_forward")],
    ids=["traversal", "boolean"],
)
def test_a_bad_sysctl_entry_names_its_own_line_and_field(entry: str, key: str) -> None:
    error = error_of(sysctl_spec(entry))
    assert (error.line, error.field) == (5, f'sysctl["{key}"]')


def test_sysctl_values_with_spaces_and_vlan_keys_are_accepted() -> None:
    spec = parse_spec(
        HEAD + "sysctl:\n  net.ipv4.tcp_rmem: '4096 131072 6291456'\n"
        "  net.ipv4.conf.eth0/100.rp_filter: 2\n",
        FILE,
    )
    assert spec.sysctl == {
        "net.ipv4.tcp_rmem": "4096 131072 6291456",
        "net.ipv4.conf.eth0/100.rp_filter": 2,
    }


# --- chains -----------------------------------------------------------------------------


def test_a_chain_as_a_list_and_as_a_mapping() -> None:
    spec = parse_spec(
        HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {FORWARD: DROP}\n"
        "      FORWARD: ['-j ZT-IN']\n      ZT-IN: {exclusive: true, rules: ['-j ACCEPT']}\n",
        FILE,
    )
    assert spec.firewall is not None and spec.firewall.ipv4 is not None
    table = spec.firewall.ipv4.tables()["filter"]
    assert table.policy == {"FORWARD": "DROP"}
    assert table.chains["FORWARD"].rules == ["-j ZT-IN"]
    assert table.chains["FORWARD"].exclusive is False
    assert table.chains["ZT-IN"].rules == ["-j ACCEPT"]
    assert table.chains["ZT-IN"].exclusive is True


def test_a_chain_name_longer_than_the_kernel_allows_is_refused() -> None:
    name = "Z" * 29
    error = error_of(HEAD + f"firewall:\n  ipv4:\n    filter:\n      {name}: ['-j ACCEPT']\n")
    assert error.field == f"firewall.ipv4.filter.{name}"
    assert error.expected == f"a chain name: up to 28 letters, digits, _ or -, got '{name}'"


# --- rule_problem and format_field -----------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [
        "-i zt+ -s 10.6.4.0/22 -j ACCEPT",
        '-m comment --comment "from the guide" -j ACCEPT',
        "-m state --state RELATED,ESTABLISHED -j ACCEPT",
    ],
)
def test_rule_problem_accepts_ordinary_rules(rule: str) -> None:
    assert rule_problem(rule) is None


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ("-j ACCEPT\x7f", CONTROL),
        ("--insert FORWARD 1 -j ACCEPT", "rule arguments without the command --insert " + COMMAND),
        ("-j ACCEPT -F", "rule arguments without the command -F " + COMMAND),
        ("-P FORWARD DROP", "rule arguments without the command -P " + COMMAND),
    ],
)
def test_rule_problem_names_what_is_wrong(rule: str, problem: str) -> None:
    assert rule_problem(rule) == problem


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("firewall", "ipv4", "filter", "FORWARD", 1), "firewall.ipv4.filter.FORWARD[1]"),
        (("firewall", "ipv4", "filter", "policy", "ZT-IN"), "firewall.ipv4.filter.policy.ZT-IN"),
        (("sysctl", "net.ipv4.ip_forward"), 'sysctl["net.ipv4.ip_forward"]'),
        (
            ("sysctl", "net.ipv4.conf.eth0/100.rp_filter"),
            'sysctl["net.ipv4.conf.eth0/100.rp_filter"]',
        ),
        (("firewall", "ipv4", "filter", "ZT.IN", 0), 'firewall.ipv4.filter["ZT.IN"][0]'),
        (("networks", 0, "routes", 2, "via"), "networks[0].routes[2].via"),
        ((0,), "[0]"),
        ((), ""),
    ],
)
def test_format_field(loc: tuple[str | int, ...], field: str) -> None:
    assert format_field(loc) == field


def test_allow_default_on_two_networks_is_refused_at_validate() -> None:
    """A member sends its default route through one gateway: the plan said so with the
    live flags; validate says so from the spec alone, naming each extra network."""
    text = HEAD + (
        "member:\n  networks:\n"
        '    - {id: "8056c2e21c000001", allow_default: true}\n'
        '    - {id: "8056c2e21c000002", allow_default: false}\n'
        '    - {id: "8056c2e21c000003", allow_default: true}\n'
    )
    assert error_of(text).lines() == [
        f"{FILE}:7: member.networks[2].allow_default: true on one network only: networks[0] "
        "(8056c2e21c000001) has it too, and a member sends its default route through one "
        "gateway"
    ]


@pytest.mark.parametrize("value", ['"yes"', '"on"', '"1 2"'])
def test_a_word_for_a_numeric_sysctl_is_refused_at_validate(value: str) -> None:
    """`ip_forward: "yes"` planned `"0" -> "yes"` and failed at apply (EINVAL)."""
    assert str(error_of(HEAD + f"sysctl:\n  net.ipv4.ip_forward: {value}\n")) == (
        f'{FILE}:4: sysctl["net.ipv4.ip_forward"]: a number (ip_forward takes one), got '
        + value.replace('"', "'")
    )


def test_a_numeric_sysctl_written_as_a_string_and_other_keys_words_pass() -> None:
    spec = parse_spec(
        HEAD + 'sysctl:\n  net.ipv4.ip_forward: "1"\n  net.ipv4.tcp_congestion_control: bbr\n',
        FILE,
    )
    assert spec.sysctl == {"net.ipv4.ip_forward": "1", "net.ipv4.tcp_congestion_control": "bbr"}


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \t\r\nab-'\"\\\u00a0\u3000\x0b")), max_size=20))
def test_rule_words_are_shlex_words(rule: str) -> None:
    """The fast path splits on shlex's own white space only (not on U+00A0 or VT)."""
    try:
        expected = shlex.split(rule)
    except ValueError:
        with pytest.raises(ValueError):
            rule_words(rule)
        return
    assert rule_words(rule) == expected
