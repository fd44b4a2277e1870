"""ztplan.address: `Address.parse` checks the whole grammar with one expression (a state
file of 100,000 addresses is read on every plan); it must accept exactly what the
step-by-step parser `_parse` accepts."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ztplan.address import Address, _parse

PIECES = st.sampled_from(
    [
        "firewall",
        "sysctl",
        ".",
        "ipv4",
        "[",
        "]",
        '"',
        "\\",
        '\\"',
        "\\u00e9",
        "\\u12",
        "\\n",
        "\\x",
        " #",
        "2",
        "0",
        "1",
        "12",
        "\n",
        "\x00",
        "\x1f",
        "\x7f",
        "é",
        "-s 10.0.0.1/32",
        "ZT-gw1",
        "~",
        "+",
        " ",
        "/",
        "'",
    ]  # fmt: skip
)


def _parses(text: str) -> bool:
    try:
        _parse.__wrapped__(text)
    except ValueError:
        return False
    return True


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
@example('firewall.ipv4.filter.FORWARD["-s 10.0.0.1/32 -j ACCEPT"] #2\n')
@example('sysctl["a\\u00e9\\/b"]')
@example('sysctl["a\\qb"]')
@example('a[""]')
@example("a #1")
@example("a #02")
@example("a #10")
def test_parse_accepts_exactly_what_the_step_parser_does(text: str) -> None:
    if _parses(text):
        assert Address.parse(text) == text
    else:
        with pytest.raises(ValueError):
            Address.parse(text)


def test_a_refusal_says_where() -> None:
    with pytest.raises(ValueError, match=r"not a resource address: 'firewall\.ipv4\[x' \(at 13\)"):
        Address.parse("firewall.ipv4[x")


ADDRESSES = TypeAdapter(list[Address])


@settings(max_examples=1500, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
@example('firewall.ipv4.filter.FORWARD["-s 10.0.0.1/32 -j ACCEPT"] #2\n')
@example('sysctl["\\u00e9"] #\u0663')  # a digit of another script: Python's \d, and Rust's
@example("a #1")
@example("a #1\u0663")
def test_pydantic_accepts_exactly_what_parse_does(text: str) -> None:
    """Models (state, saved plans) check addresses with pydantic-core's own regex engine."""
    if _parses(text):
        (address,) = ADDRESSES.validate_python([text])
        assert type(address) is Address and address == text
    else:
        with pytest.raises(ValidationError):
            ADDRESSES.validate_python([text])
