"""Attacks on the spec text itself (issue 12): YAML that overflows the stack, expands to
billions of values, or trips a constructor, and values that validate but reach the kernel
or the controller as something else. Each is one SpecError naming the field."""

from __future__ import annotations

import time

import pytest

from ztplan.errors import SpecError
from ztplan.spec import parse_spec

FILE = "gw.yaml"
HEAD = "version: 1\ntarget: {name: gw1}\n"


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, FILE)
    return str(caught.value)


# --- the YAML -------------------------------------------------------------------------------


def test_100000_nested_lists_are_one_line_not_a_recursion_error() -> None:
    assert error_of(HEAD + "x: " + "[" * 100_000 + "]" * 100_000 + "\n") in (
        f"{FILE}: nested deeper than 32 levels",
        f"{FILE}:3: not valid YAML: exceeded maximum nesting depth",
    )
    block = "".join("  " * i + "- \n" for i in range(60))  # block style: no flow limit
    assert error_of(HEAD + "x:\n" + block) == f"{FILE}: nested deeper than 32 levels"


def test_an_alias_bomb_in_valid_fields_is_refused_before_validation() -> None:
    """20 KB of valid YAML that expands to 4,000,000 rules: the previous release validated
    them (8 s) and handed them all to the kernel round trip."""
    rules = ", ".join(f'"-s 10.0.{i >> 8}.{i & 255} -j ACCEPT"' for i in range(200))
    chains = "\n".join(f"        C{i}: *r" for i in range(1, 2000))
    text = (
        HEAD + "firewall:\n  ipv4: &family\n    filter: &table\n"
        f"        C0: &r [{rules}]\n{chains}\n"
        "    nat: *table\n    mangle: *table\n    raw: *table\n    security: *table\n"
        "  ipv6: *family\n"
    )
    started = time.monotonic()
    assert error_of(text) == f"{FILE}: more than 2,000,000 values once YAML aliases are expanded"
    assert time.monotonic() - started < 2


def test_aliases_used_with_measure_are_fine() -> None:
    text = HEAD + (
        "firewall:\n  ipv4:\n    filter:\n      FORWARD: &rules ['-i zt+ -j ACCEPT']\n"
        "      INPUT: *rules\n"
    )
    spec = parse_spec(text, FILE)
    assert spec.firewall is not None and spec.firewall.ipv4 is not None
    assert spec.firewall.ipv4.tables()["filter"].chains["INPUT"].rules == ["-i zt+ -j ACCEPT"]


def test_an_alias_that_contains_itself_is_refused() -> None:
    assert error_of(HEAD + "x: &a [1, *a]\n") == f"{FILE}: a YAML alias that contains itself"


@pytest.mark.parametrize(
    ("yaml_text", "said"),
    [
        ("? [a]\n: b\n", "a mapping key must be a plain value, not a list or mapping"),
        ("x: " + "1" * 5000 + "\n", "a number too long to read (more than 4300 digits)"),
        ("x: !!timestamp 2020-13-45\n", "month must be in 1..12"),
        ("x: !!int abc\n", "invalid literal for int() with base 10: 'abc'"),
        ("x: !!float abc\n", "could not convert string to float: 'abc'"),
    ],
    ids=["unhashable-key", "5000-digits", "bad-date", "bad-int", "bad-float"],
)
def test_a_constructor_failure_is_a_yaml_error_with_its_line(yaml_text: str, said: str) -> None:
    """Each was an internal error (TypeError, ValueError)."""
    line = error_of(HEAD + yaml_text)
    assert line == f"{FILE}:3: not valid YAML: {said}"


def test_an_echoed_input_is_clipped_to_one_short_line() -> None:
    line = error_of(HEAD.replace("gw1", "x" * 100_000 + "!"))
    assert len(line) < 200
    assert line.endswith("…'") or line.endswith("…")


def test_a_bad_rule_in_a_long_spec_is_found_fast() -> None:
    """The field's line came from the pure-Python composer: 6 s for 100,000 rules."""
    rules = "".join(
        f'        - "-s 10.0.{i >> 8 & 255}.{i & 255} -j ACCEPT"\n' for i in range(100_000)
    )
    text = HEAD + "firewall:\n  ipv4:\n    filter:\n      FORWARD:\n" + rules + '        - "-A X"\n'
    started = time.monotonic()
    assert error_of(text).startswith(f"{FILE}:100007: firewall.ipv4.filter.FORWARD[100000]:")
    assert time.monotonic() - started < 4


# --- networks the controller would silently rewrite ----------------------------------------

NETWORK = "controller: {kind: local}\nnetworks:\n  - id: 8056c2e21c000001\n"


def network(routes: str = "[{target: 10.6.4.0/22}]", pools: str = "[]") -> str:
    return HEAD + NETWORK + f"    routes: {routes}\n    ip_pools: {pools}\n"


@pytest.mark.parametrize(
    ("routes", "pools", "expected"),
    [
        (
            "[{target: 10.6.4.0}]",
            "[]",
            "gw.yaml:6: networks[0].routes[0].target: an IP network with its prefix length "
            "(e.g. 10.6.4.0/24), got '10.6.4.0'",
        ),
        (
            "[{target: 10.6.4.0/22}, {target: 10.6.4.0/22}]",
            "[]",
            "gw.yaml:6: networks[0].routes[1].target: each target once; 10.6.4.0/22 is also "
            "routes[0] (members install only one route per target)",
        ),
        (
            "[{target: 0.0.0.0/0, via: 'fd00::1'}]",
            "[]",
            "gw.yaml:6: networks[0].routes[0].via: an IPv4 address, like the target 0.0.0.0/0 "
            "(the controller stores a via of the other family as null: on-link)",
        ),
        (
            "[{target: 10.6.4.0/22}]",
            "[{start: 10.6.7.254, end: 10.6.4.1}]",
            "gw.yaml:7: networks[0].ip_pools[0].end: an address at or after start 10.6.7.254",
        ),
        (
            "[{target: 10.6.4.0/22}]",
            "[{start: 10.6.4.1, end: 'fd00::9'}]",
            "gw.yaml:7: networks[0].ip_pools[0].end: an IPv4 address, like start 10.6.4.1",
        ),
        (
            "[{target: 10.6.4.0/22}, {target: 0.0.0.0/0, via: 10.6.6.2}]",
            "[{start: 10.9.0.1, end: 10.9.0.9}]",
            "gw.yaml:7: networks[0].ip_pools[0]: a range inside one of the network's on-link "
            "routes (without via: 10.6.4.0/22); the controller assigns no address from "
            "10.9.0.1-10.9.0.9",
        ),
        (
            "[]",
            "[{start: 10.6.4.1, end: 10.6.4.9}]",
            "gw.yaml:7: networks[0].ip_pools[0]: a range inside one of the network's on-link "
            "routes (without via: none); the controller assigns no address from "
            "10.6.4.1-10.6.4.9",
        ),
    ],
    ids=[
        "no-prefix",
        "duplicate-route",
        "via-other-family",
        "start-after-end",
        "mixed-families",
        "pool-outside-routes",
        "pool-without-routes",
    ],
)
def test_routes_and_pools_the_controller_would_rewrite_are_refused(
    routes: str, pools: str, expected: str
) -> None:
    assert error_of(network(routes, pools)) == expected


def test_a_good_network_still_validates() -> None:
    text = network(
        "[{target: 10.6.4.0/22}, {target: 0.0.0.0/0, via: 10.6.6.2}, {target: '2001:db8::/64'}]",
        "[{start: 10.6.4.1, end: 10.6.7.254}, {start: '2001:db8::1', end: '2001:db8::ff'}]",
    )
    assert len(parse_spec(text, FILE).networks[0].routes or []) == 3


# --- sysctls and rules ----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["net.//.//x", "net.ipv4.//", "net.ipv4./.x"])
def test_a_sysctl_key_that_leaves_its_place_is_refused_at_validate(key: str) -> None:
    """`net.//.//x` passed validate and ended the plan in 'internal error: ValueError'."""
    assert error_of(HEAD + f"sysctl: {{'{key}': 1}}\n").startswith(f'{FILE}:3: sysctl["{key}"]:')


def test_a_sysctl_integer_the_kernel_cannot_hold_is_refused_at_validate() -> None:
    assert error_of(HEAD + "sysctl: {net.ipv4.ip_forward: " + "9" * 40 + "}\n") == (
        f'{FILE}:3: sysctl["net.ipv4.ip_forward"]: an integer of at most 64 bits, got '
        "9999999999999999999999999999999999999999"
    )
    assert parse_spec(HEAD + "sysctl: {net.core.rmem_max: 18446744073709551615}\n", FILE)


@pytest.mark.parametrize(
    ("escape", "shown"),
    [
        ("\\L", "U+2028 (LINE SEPARATOR)"),
        ("\\P", "U+2029 (PARAGRAPH SEPARATOR)"),
        ("\\N", "U+0085 (NEXT LINE)"),
        ("\\x9b", "U+009B (a C1 control character)"),
    ],
)
def test_unicode_line_breaks_in_a_rule_are_refused_as_what_they_are(
    escape: str, shown: str
) -> None:
    """They were refused as 'rule arguments without the command -A': str.splitlines had
    already made two rules of one."""
    rule = f'"-j ACCEPT{escape}-A INPUT -j DROP"'  # a YAML double-quoted escape
    text = HEAD + f"firewall:\n  ipv4:\n    filter:\n      FORWARD:\n        - {rule}\n"
    assert error_of(text) == (
        f"{FILE}:7: firewall.ipv4.filter.FORWARD[0]: a rule on one line: {shown} is a line "
        "break or control character"
    )


# --- secrets ----------------------------------------------------------------------------------

TOKEN = "Zb4kq9Tx2Lm7Wc1Rv8Hn3Yp6Gd5Fs0Ej"  # the shape of a Central token


@pytest.mark.parametrize(
    "controller",
    [
        f"{{kind: central, url: 'https://ops:{TOKEN}@api.zerotier.com/api/v1'}}",
        f"{{kind: central, url: 'https://ops:{TOKEN}@api.zerotier.com/api v1'}}",  # bad URL too
        f"{{kind: central, token_env: {TOKEN}}}",
        f"{{kind: central, token_env: '{TOKEN}-x'}}",  # not a variable name either
    ],
    ids=["userinfo", "userinfo-in-a-bad-url", "token-as-token_env", "token-not-a-name"],
)
def test_a_token_in_the_spec_is_refused_and_never_echoed(controller: str) -> None:
    line = error_of(HEAD + f"controller: {controller}\n")
    assert TOKEN not in line
    assert line.startswith(f"{FILE}:3: controller.")


def test_userinfo_says_where_the_token_goes() -> None:
    line = error_of(HEAD + f"controller: {{kind: local, url: 'http://u:{TOKEN}@127.0.0.1:9993'}}\n")
    assert line == (
        f"{FILE}:3: controller.url: a URL without user or password (put the token in token_env "
        "or token_file: the spec is committed and printed)"
    )
    member = HEAD + f"member: {{service_url: 'http://x:{TOKEN}@127.0.0.1:9993'}}\n"
    assert error_of(member).startswith(f"{FILE}:3: member.service_url: a URL without user")


def test_ordinary_variable_names_are_fine() -> None:
    for name in ("ZEROTIER_CENTRAL_TOKEN", "ZT_TOKEN_2", "token"):
        assert parse_spec(HEAD + f"controller: {{kind: central, token_env: {name}}}\n", FILE)
