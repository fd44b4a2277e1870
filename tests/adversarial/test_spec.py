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
