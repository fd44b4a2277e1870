"""ztplan.ndppd_conf: reading ndppd.conf the way ndppd 0.2.x does, and writing it canonically."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztplan.ndppd_conf import (
    HEADER,
    MAX_INT,
    NdppdConf,
    NdppdConfError,
    Proxy,
    Rule,
    _format_address,
    format_ndppd_conf,
    meaning,
    normalise_prefix,
    parse_ndppd_conf,
)

# Debian's /usr/share/doc/ndppd/ndppd.conf-dist (ndppd 0.2.5-6), verbatim.
DEBIAN_DIST = """\
# route-ttl <integer> (NEW)
# This tells 'ndppd' how often to reload the route file /proc/net/ipv6_route.
# Default value is '30000' (30 seconds).

route-ttl 30000

# proxy <interface>
# This sets up a listener, that will listen for any Neighbor Solicitation
# messages, and respond to them according to a set of rules (see below).
# <interface> is required. You may have several 'proxy' sections.

proxy eth0 {
   
   # router <yes|no|true|false>
   # This option turns on or off the router flag for Neighbor Advertisement
   # messages. Default value is 'true'.
   
   router yes

   # timeout <integer>
   # Controls how long to wait for a Neighbor Advertisment message before 
   # invalidating the entry, in milliseconds. Default value is '500'.

   timeout 500   
   
   # ttl <integer>
   # Controls how long a valid or invalid entry remains in the cache, in 
   # milliseconds. Default value is '30000' (30 seconds).
   
   ttl 30000

   # rule <ip>[/<mask>]
   # This is a rule that the target address is to match against. If no netmask
   # is provided, /128 is assumed. You may have several rule sections, and the
   # addresses may or may not overlap.

   rule 1111:: {
      # Only one of 'static', 'auto' and 'interface' may be specified. Please
      # read 'ndppd.conf' manpage for details about the methods below.

      # 'auto' should work in most cases.

      # static (NEW)
      # 'ndppd' will immediately answer any Neighbor Solicitation Messages
      # (if they match the IP rule).

      # iface <interface>
      # 'ndppd' will forward the Neighbor Solicitation Message through the
      # specified interface - and only respond if a matching Neighbor
      # Advertisement Message is received.
      
      # auto (NEW)
      # Same as above, but instead of manually specifying the outgoing
      # interface, 'ndppd' will check for a matching route in /proc/net/ipv6_route.

      auto

      # Note that before version 0.2.2 of 'ndppd', if you didn't choose a
      # method, it defaulted to 'static'. For compatibility reasons we choose
      # to keep this behavior - for now (it may be removed in a future version).
   }
}
"""

# The ZeroTier "IPv6 exit gateway" guide's ndppd.conf.
ZEROTIER_GUIDE = "proxy eth0 {\n rule 2001:19f0:6001:1a6::/80 {\n static\n }\n}"

ZT_RULE = Rule(prefix="2001:19f0:6001:1a6::/80", method="static")


def _conf(*proxies: Proxy, route_ttl: int | None = None) -> NdppdConf:
    return NdppdConf(proxies=proxies, route_ttl=route_ttl)


# ------------------------------------------------------------------------ parsing


def test_debian_example() -> None:
    assert parse_ndppd_conf(DEBIAN_DIST) == NdppdConf(
        proxies=(
            Proxy(
                interface="eth0",
                rules=(Rule(prefix="1111::/128", method="auto"),),
                router=True,
                timeout=500,
                ttl=30000,
            ),
        ),
        route_ttl=30000,
    )


def test_installed_debian_example_if_present() -> None:
    try:
        with open("/usr/share/doc/ndppd/ndppd.conf-dist", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        pytest.skip("ndppd's example config is not installed")
    assert parse_ndppd_conf(text) == parse_ndppd_conf(DEBIAN_DIST)


def test_zerotier_guide() -> None:
    assert parse_ndppd_conf(ZEROTIER_GUIDE) == _conf(Proxy(interface="eth0", rules=(ZT_RULE,)))


def test_every_option() -> None:
    text = """
route-ttl 1000
address-ttl 2000
proxy zt0 {
    router no
    timeout 250
    ttl 10000
    autowire yes
    keepalive no
    retries 3
    promiscuous yes
    rule 2001:db8::/64 {
        iface zt1
        autovia yes
    }
    rule 2001:db8:1::/64 {
        auto
    }
}
"""
    assert parse_ndppd_conf(text) == NdppdConf(
        proxies=(
            Proxy(
                interface="zt0",
                rules=(
                    Rule(prefix="2001:db8::/64", method="iface", iface="zt1", autovia=True),
                    Rule(prefix="2001:db8:1::/64", method="auto"),
                ),
                router=False,
                timeout=250,
                ttl=10000,
                autowire=True,
                keepalive=False,
                retries=3,
                promiscuous=True,
            ),
        ),
        route_ttl=1000,
        address_ttl=2000,
    )


def test_empty_file_and_rule_less_proxy() -> None:
    # The man page wants >= 1 proxy and >= 1 rule per proxy; the real binary starts either way.
    assert parse_ndppd_conf("") == NdppdConf(proxies=())
    assert parse_ndppd_conf("# nothing\n\n") == NdppdConf(proxies=())
    empty = _conf(Proxy(interface="eth0", rules=()))
    assert parse_ndppd_conf("proxy eth0 {\n}\n") == empty
    assert parse_ndppd_conf("proxy eth0\n") == empty  # braces are optional in ndppd's parser


@pytest.mark.parametrize(
    "text",
    [
        ZEROTIER_GUIDE,
        "proxy eth0 { rule 2001:19f0:6001:1a6::/80 { static } }",
        "proxy eth0{rule 2001:19f0:6001:1a6::/80{static}}",
        "proxy = eth0 {\n  rule = 2001:19f0:6001:1a6::/80 {\n    static\n  }\n}\n",
        "\n\n\t proxy\teth0\t{  \n\n rule 2001:19f0:6001:1a6::/80 {\r\n static \r\n }\r\n}\r\n",
        "# x\nproxy eth0 { # trailing\n# own line\n rule 2001:19f0:6001:1a6::/80 { static }\n}#x",
        "// c++ style\nproxy eth0 { // x\n rule 2001:19f0:6001:1a6::/80 { static } }",
        "/* block\n comment */ proxy eth0 /* in */ {\n rule 2001:19f0:6001:1a6::/80 { static } }",
        "proxy eth0 {\n rule 2001:19F0:6001:01a6::/80 {\n static\n }\n}",
        "proxy eth0 {\n rule 2001:19f0:6001:01A6:0:0:0:0/80 {\n static\n }\n}",
        "proxy eth0 {\n rule 2001:19f0:6001:1a6::dead:beef/80 {\n static\n }\n}",  # host bits
        "proxy eth0 {\n rule 2001:19f0:6001:1a6::/080 {\n static\n }\n}",
    ],
)
def test_spelling_variants_mean_the_same(text: str) -> None:
    assert parse_ndppd_conf(text) == parse_ndppd_conf(ZEROTIER_GUIDE)


def test_option_order_and_proxy_order_do_not_matter() -> None:
    a = """
route-ttl 5
proxy eth0 {
    router no
    ttl 7
    rule ::1 { static }
}
proxy eth1 {
    rule ::2 { auto }
}
"""
    b = """
proxy eth1 { rule ::2 { auto } }
proxy eth0 {
    rule ::1 { static }
    ttl 7
    router no
}
route-ttl 5
"""
    assert parse_ndppd_conf(a) == parse_ndppd_conf(b)
    assert [p.interface for p in parse_ndppd_conf(b).proxies] == ["eth0", "eth1"]


def test_rule_order_is_kept_and_compared() -> None:
    # Deliberately conservative: ndppd 0.2.5 answers the same either way (see module docstring).
    a = "proxy eth0 {\n rule 2001:db8::/64 { static }\n rule 2001:db8::/48 { iface eth1 }\n}"
    b = "proxy eth0 {\n rule 2001:db8::/48 { iface eth1 }\n rule 2001:db8::/64 { static }\n}"
    assert parse_ndppd_conf(a) != parse_ndppd_conf(b)
    assert [r.prefix for r in parse_ndppd_conf(a).proxies[0].rules] == [
        "2001:db8::/64",
        "2001:db8::/48",
    ]


def test_options_interleaved_with_rules_keep_rule_order() -> None:
    a = "proxy eth0 {\n rule ::1 { static }\n router no\n rule ::2 { auto }\n}"
    b = "proxy eth0 {\n router no\n rule ::1 { static }\n rule ::2 { auto }\n}"
    assert parse_ndppd_conf(a) == parse_ndppd_conf(b)


@pytest.mark.parametrize(
    ("word", "value"),
    [("yes", True), ("YES", True), ("true", True), ("True", True), ("no", False), ("FALSE", False)],
)
def test_booleans_are_case_insensitive_like_strcasecmp(word: str, value: bool) -> None:
    conf = parse_ndppd_conf(f"proxy eth0 {{\n router {word}\n}}")
    assert conf.proxies[0].router is value


def test_several_statements_on_one_line() -> None:
    # ndppd's parser reads `key value key value ...`; newlines only end a value.
    conf = parse_ndppd_conf("proxy eth0 { router no timeout 9 rule ::1 { iface eth1 autovia no } }")
    assert conf.proxies[0] == Proxy(
        interface="eth0",
        rules=(Rule(prefix="::1/128", method="iface", iface="eth1", autovia=False),),
        router=False,
        timeout=9,
    )


def test_slash_star_slash_closes_a_comment_like_ndppd() -> None:
    # ndppd starts looking for "*/" at the '*' of "/*".
    assert parse_ndppd_conf("/*/ proxy eth0") == _conf(Proxy(interface="eth0", rules=()))


def test_leading_zeros_are_read_like_strtol() -> None:
    """The length check that keeps int() from 5,000 digits counts digits after the zeros."""
    conf = parse_ndppd_conf("proxy eth0 {\n ttl " + "0" * 5000 + "7\n}\n")
    assert conf.proxies[0].ttl == 7


# ------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        # unbalanced braces
        ("proxy eth0 {\n rule ::1 {\n static\n }\n", 1, "never closed"),
        ("proxy eth0 {\n}\nproxy eth1 {\n rule ::1 { static }\n", 3, "never closed"),
        ("proxy eth0 {\n rule ::1 { static }\n}\n}\nproxy eth9 { }\n", 4, "'}' without"),
        ("proxy eth0 { rule ::1 { static } } }", 1, "'}' without"),
        # '{' on its own line: ndppd attaches it to nothing
        ("proxy eth0\n{\n rule ::1 { static }\n}\n", 2, "same line"),
        ("proxy eth0 {\n rule ::1\n {\n static\n }\n}\n", 3, "same line"),
        # a comment swallowing the '{'
        ("proxy eth0 # main {\n rule ::1 { static }\n}\n", 3, "'}' without"),
        ("proxy eth0 # main {\n rule ::1 { static }\n", 2, "unknown top-level option 'rule'"),
        # unknown keywords (ndppd ignores them silently)
        ("proxy eth0 {\n rule ::1 { static }\n}\nfoo bar\n", 4, "unknown top-level option 'foo'"),
        ("proxy eth0 {\n\n  deadtime 5\n}\n", 3, "unknown proxy option 'deadtime'"),
        ("proxy eth0 {\n rule ::1 {\n  static\n  via eth1\n }\n}\n", 4, "unknown rule option"),
        ("proxy eth0 {\n rule ::1 {\n  interface eth1\n }\n}\n", 3, "unknown rule option"),
        ("rou.ter yes\n", 1, "unknown top-level option 'rou'"),
        # bad prefixes (ndppd silently reads all of these as ::/128, or as /0)
        ("proxy eth0 {\n rule nonsense { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n\n rule 2001:db8::/129 { static }\n}\n", 3, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule 2001:db8::/ { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule 2001:db8::/64/7 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule 1.2.3.4 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule ::ffff:1.2.3.4/120 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule fe80::1%eth0/64 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule 2001:db8:::/64 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule 00000::1 { static }\n}\n", 2, "not an IPv6 prefix"),
        ("proxy eth0 {\n rule { static }\n}\n", 2, "needs an IPv6 prefix"),
        # methods
        ("proxy eth0 {\n rule ::1 {\n }\n}\n", 2, "no method"),
        ("proxy eth0 {\n rule ::1\n}\n", 2, "no method"),
        ("proxy eth0 {\n rule ::1 {\n  autovia yes\n }\n}\n", 2, "no method"),
        ("proxy eth0 {\n rule ::1 {\n  static\n  auto\n }\n}\n", 4, "only one of"),
        ("proxy eth0 {\n rule ::1 {\n  iface eth1\n  static\n }\n}\n", 4, "only one of"),
        ("proxy eth0 {\n rule ::1 { static auto }\n}\n", 2, "takes no value"),
        ("proxy eth0 {\n rule ::1 { static autovia no }\n}\n", 2, "got 'autovia'"),
        ("proxy eth0 {\n rule ::1 {\n  iface\n }\n}\n", 3, "needs an interface name"),
        ("proxy eth0 {\n rule ::1 {\n  iface\n  eth1\n }\n}\n", 3, "needs an interface name"),
        # repeats: ndppd uses an unspecified one of them
        ("route-ttl 1\nroute-ttl 2\n", 2, "repeated (first on line 1)"),
        ("proxy eth0 {\n router yes\n router no\n}\n", 3, "repeated"),
        ("proxy eth0 {\n rule ::1 {\n  static\n  static\n }\n}\n", 4, "repeated"),
        ("proxy eth0 {\n}\n\nproxy eth0 {\n}\n", 4, "second proxy on eth0 (first on line 1)"),
        # values
        ("proxy eth0 {\n router yes;\n}\n", 2, "';' is not a separator"),
        ("proxy eth0 {\n rule ::1 { static; }\n}\n", 2, "takes no value"),
        ("proxy eth0 {\n rule ::1 { static }\n};\n", 3, "';' is not a separator"),
        ("proxy eth0 {\n router\n yes\n}\n", 2, "same line"),
        ("proxy eth0 {\n router maybe\n}\n", 2, "yes/no/true/false"),
        ("proxy eth0 {\n router 1\n}\n", 2, "yes/no/true/false"),
        ("proxy eth0 {\n timeout 500ms\n}\n", 2, "whole number"),
        ("proxy eth0 {\n timeout -1\n}\n", 2, "whole number"),
        ("proxy eth0 {\n timeout 0x10\n}\n", 2, "whole number"),
        ("proxy eth0 {\n ttl 2147483648\n}\n", 2, "whole number"),
        ("proxy eth0 {\n ttl " + "9" * 5000 + "\n}\n", 2, "whole number"),  # int() refused it
        ("route-ttl\n", 1, "whole number"),
        ("proxy eth0 {\n router yes { }\n}\n", 2, "takes no { } block"),
        ("route-ttl 5 { }\n", 1, "takes no { } block"),
        # interface names
        ("proxy {\n rule ::1 { static }\n}\n", 1, "needs an interface name"),
        ("proxy eth0#x {\n}\n", 1, "not a Linux interface name"),
        ("proxy averyveryverylongname {\n}\n", 1, "not a Linux interface name"),
        ("proxy .. {\n}\n", 1, "not a Linux interface name"),
        ("proxy eth0 {\n rule ::1 { iface eth/1 }\n}\n", 2, "not a Linux interface name"),
        # quotes never worked in 0.2.x
        ('proxy "eth0" {\n}\n', 1, "quoted"),
        ("proxy eth0 {\n 'router' yes\n}\n", 2, "quoted"),
        # characters ndppd chokes on
        ("proxy eth0 {\n rule ::1 { static \x01 }\n}\n", 2, "control characters"),
        ("proxy eth0 {\n\n\n \u00e9 }\n", 4, "unexpected character"),
        ("proxy eth0 {\n}\n# \0 hidden\n", 3, "NUL"),
        ("proxy eth0 {\n /* never closed\n}\n", 2, "never closed"),
        # too deep
        ("proxy eth0 {\n rule ::1 {\n  static {\n  }\n }\n}\n", 3, "nest only two deep"),
        ("{\n", 1, "same line"),
    ],
)
def test_errors_carry_line_numbers(text: str, line: int, fragment: str) -> None:
    with pytest.raises(NdppdConfError) as info:
        parse_ndppd_conf(text)
    assert info.value.line == line, str(info.value)
    assert fragment in info.value.message
    assert str(info.value).startswith(f"line {line}: ")


def test_error_is_a_value_error() -> None:
    err = NdppdConfError(3, "boom")
    assert isinstance(err, ValueError)
    assert (err.line, err.message, str(err)) == (3, "boom", "line 3: boom")


def test_deep_nesting_does_not_recurse() -> None:
    with pytest.raises(NdppdConfError):
        parse_ndppd_conf("a {" * 100_000)


# ---------------------------------------------------------------------- formatting


def test_format_canonical_text() -> None:
    conf = NdppdConf(
        proxies=(
            Proxy(
                interface="zt0",
                rules=(
                    Rule(prefix="2001:DB8:0:01::/64", method="iface", iface="eth1", autovia=False),
                    Rule(prefix="2001:db8::1", method="static"),
                ),
                retries=3,
                router=False,
                promiscuous=True,
            ),
            Proxy(interface="eth0", rules=(ZT_RULE,), ttl=30000),
        ),
        address_ttl=7,
        route_ttl=30000,
    )
    assert format_ndppd_conf(conf) == (
        f"{HEADER}\n"
        "route-ttl 30000\n"
        "address-ttl 7\n"
        "\n"
        "proxy eth0 {\n"
        "    ttl 30000\n"
        "    rule 2001:19f0:6001:1a6::/80 {\n"
        "        static\n"
        "    }\n"
        "}\n"
        "\n"
        "proxy zt0 {\n"
        "    router no\n"
        "    promiscuous yes\n"
        "    retries 3\n"
        "    rule 2001:db8:0:1::/64 {\n"
        "        iface eth1\n"
        "        autovia no\n"
        "    }\n"
        "    rule 2001:db8::1/128 {\n"
        "        static\n"
        "    }\n"
        "}\n"
    )


def test_format_zerotier_guide_and_empty() -> None:
    assert format_ndppd_conf(parse_ndppd_conf(ZEROTIER_GUIDE)) == (
        f"{HEADER}\n\nproxy eth0 {{\n    rule 2001:19f0:6001:1a6::/80 {{\n        static\n"
        "    }\n}\n"
    )
    assert format_ndppd_conf(NdppdConf(proxies=())) == f"{HEADER}\n"
    assert format_ndppd_conf(_conf(Proxy("eth0", ()))) == f"{HEADER}\n\nproxy eth0 {{\n}}\n"


def test_meaning_normalises_and_sorts() -> None:
    conf = _conf(
        Proxy("zt0", (Rule("2001:DB8::1/64", "auto"), Rule("::0001", "static"))),
        Proxy("eth0", ()),
    )
    assert meaning(conf) == _conf(
        Proxy("eth0", ()),
        Proxy("zt0", (Rule("2001:db8::/64", "auto"), Rule("::1/128", "static"))),
    )
    assert meaning(meaning(conf)) == meaning(conf)


INJECTED_NAMES = [
    "eth0 { }",
    "eth0 {",
    "eth0}",
    "}",
    "eth0\n",
    "eth0\nproxy evil",
    "eth0\r",
    "eth0;",
    "eth0#",
    "eth 0",
    "eth0\t",
    '"eth0"',
    "'eth0'",
    "eth0\x00",
    "eth0\x1b",
    "eth/0",
    "//eth0",
    "/*",
    "=eth0",
    "",
    ".",
    "..",
    "a" * 16,
    "éth0",
    "eth0\u2028",
]


@pytest.mark.parametrize("name", INJECTED_NAMES)
def test_format_refuses_bad_proxy_interface(name: str) -> None:
    with pytest.raises(ValueError, match="interface name"):
        format_ndppd_conf(_conf(Proxy(interface=name, rules=())))


@pytest.mark.parametrize("name", [*INJECTED_NAMES, None])
def test_format_refuses_bad_rule_iface(name: str | None) -> None:
    conf = _conf(Proxy("eth0", (Rule("2001:db8::/64", "iface", iface=name),)))
    with pytest.raises(ValueError, match="interface name"):
        format_ndppd_conf(conf)


@pytest.mark.parametrize(
    "prefix",
    [
        "2001:db8::/64 {",
        "2001:db8::/64 { static } } proxy evil {",
        "2001:db8::/64\nproxy evil",
        "2001:db8::/64;",
        "2001:db8::/64#",
        " 2001:db8::/64",
        "2001:db8::/64 ",
        "::ffff:1.2.3.4",
        "::1.2.3.4/128",
        "fe80::1%eth0/64",
        "fe80::1%eth0",
        "2001:db8::/129",
        "2001:db8::/",
        "2001:db8::/+64",
        "2001:db8::/64/7",
        "1.2.3.0/24",
        "",
        "nonsense",
        "２００１:db8::/64",  # fullwidth digits: int() would accept them
    ],
)
def test_format_refuses_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="IPv6 prefix"):
        format_ndppd_conf(_conf(Proxy("eth0", (Rule(prefix, "static"),))))


@pytest.mark.parametrize(
    "bad",
    [
        Rule("::1", "static; iface eth1"),
        Rule("::1", "Static"),
        Rule("::1", "static\n"),
        Rule("::1", "static", iface="eth1"),
        Rule("::1", "auto", iface="eth1"),
        Rule("::1", "static", autovia=1),  # type: ignore[arg-type]
        Rule("::1", "static", autovia="yes"),  # type: ignore[arg-type]
        "rule ::1 { static }",
    ],
)
def test_format_refuses_bad_rule(bad: Rule) -> None:
    with pytest.raises(ValueError):
        format_ndppd_conf(_conf(Proxy("eth0", (bad,))))


@pytest.mark.parametrize(
    "changes",
    [
        {"router": 1},
        {"router": "yes"},
        {"keepalive": "no\nproxy evil {"},
        {"timeout": True},
        {"timeout": -1},
        {"timeout": MAX_INT + 1},
        {"timeout": 1.5},
        {"ttl": "500"},
        {"retries": "3 }"},
        {"rules": [Rule("::1", "static")]},
    ],
)
def test_format_refuses_bad_proxy_options(changes: dict[str, object]) -> None:
    proxy = replace(Proxy("eth0", ()), **changes)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        format_ndppd_conf(_conf(proxy))


@pytest.mark.parametrize(
    "conf",
    [
        NdppdConf(proxies=(), route_ttl=-5),
        NdppdConf(proxies=(), route_ttl=False),
        NdppdConf(proxies=(), address_ttl="30000\nproxy evil"),  # type: ignore[arg-type]
        NdppdConf(proxies=[Proxy("eth0", ())]),  # type: ignore[arg-type]
        NdppdConf(proxies=(Proxy("eth0", ()), Proxy("eth0", (ZT_RULE,)))),
        NdppdConf(proxies=("proxy eth0 { }",)),  # type: ignore[arg-type]
        "proxy eth0 { }",
    ],
)
def test_format_refuses_bad_conf(conf: NdppdConf) -> None:
    with pytest.raises(ValueError):
        format_ndppd_conf(conf)


def test_extreme_but_valid_values() -> None:
    conf = _conf(
        Proxy(
            interface="a.b:c@d+e-f_g99",
            rules=(Rule("::/0", "auto"), Rule("ffff:" * 7 + "ffff", "iface", iface="-")),
            timeout=0,
            ttl=MAX_INT,
        ),
        route_ttl=0,
    )
    assert parse_ndppd_conf(format_ndppd_conf(conf)) == meaning(conf)


# ------------------------------------------------------------------------ properties

IFNAMES = st.from_regex(r"[A-Za-z0-9_.:@+-]{1,15}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
OPT_BOOL = st.none() | st.booleans()
OPT_INT = st.none() | st.integers(0, MAX_INT)


@st.composite
def prefixes(draw: st.DrawFn) -> str:
    """Any IPv6 prefix, in any spelling ndppd and ipaddress both read the same way."""
    value = draw(st.integers(0, 2**128 - 1))
    address = ipaddress.IPv6Address(value)
    spelled = draw(
        st.sampled_from(
            [
                _format_address(value),
                address.exploded,
                address.exploded.upper(),
                _format_address(value).upper(),
            ]
        )
    )
    length = draw(st.none() | st.integers(0, 128))
    if length is None:
        return spelled
    return f"{spelled}/{draw(st.sampled_from([str(length), f'{length:03d}']))}"


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    method = draw(st.sampled_from(["static", "auto", "iface"]))
    return Rule(
        prefix=draw(prefixes()),
        method=method,
        iface=draw(IFNAMES) if method == "iface" else None,
        autovia=draw(OPT_BOOL),
    )


PROXIES = st.builds(
    Proxy,
    interface=IFNAMES,
    rules=st.lists(rules(), max_size=4).map(tuple),
    router=OPT_BOOL,
    timeout=OPT_INT,
    ttl=OPT_INT,
    autowire=OPT_BOOL,
    keepalive=OPT_BOOL,
    promiscuous=OPT_BOOL,
    retries=OPT_INT,
)
CONFS = st.builds(
    NdppdConf,
    proxies=st.lists(PROXIES, max_size=4, unique_by=lambda p: p.interface).map(tuple),
    route_ttl=OPT_INT,
    address_ttl=OPT_INT,
)


@given(CONFS)
def test_roundtrip(conf: NdppdConf) -> None:
    text = format_ndppd_conf(conf)
    assert parse_ndppd_conf(text) == meaning(conf)
    assert format_ndppd_conf(parse_ndppd_conf(text)) == text
    assert text.startswith(HEADER + "\n") and text.endswith("\n")
    assert re.fullmatch(r"[ -~\n]*", text), "only printable ASCII and newlines"
    body = text.removeprefix(HEADER + "\n")
    assert not set(body) & set(";'\"#\t\r"), "nothing but the grammar's own characters"


# A second, deliberately sloppy writer: random order, spelling, layout and comments.
_COMMENTS = st.sampled_from(["", " # c", "\t// c {", " /* } */", " #}}{{", " #"])
_SPACES = st.sampled_from([" ", "\t", "  ", " \t "])


def _bool_word(draw: st.DrawFn, value: bool) -> str:
    return draw(st.sampled_from(["yes", "true", "YES", "True"] if value else ["no", "false", "NO"]))


@st.composite
def sloppy_text(draw: st.DrawFn, conf: NdppdConf) -> str:
    def newline() -> str:
        return draw(_COMMENTS) + "\n" + draw(st.sampled_from(["", "\n", "  # own line\n"]))

    def sep() -> str:  # between statements: a newline with optional comments, or spaces
        return newline() if draw(st.booleans()) else draw(_SPACES)

    def kv(key: str, value: str) -> str:
        eq = draw(st.sampled_from([" ", " = ", "=", "\t"]))
        return f"{key}{eq}{value}"

    def respell(prefix: str) -> str:
        net = ipaddress.IPv6Network(prefix)
        host = draw(st.integers(0, 2 ** (128 - net.prefixlen) - 1))  # host bits are ignored
        addr = ipaddress.IPv6Address(int(net.network_address) | host)
        text = draw(st.sampled_from([addr.exploded, _format_address(int(addr)).upper()]))
        if net.prefixlen == 128 and draw(st.booleans()):
            return text
        return f"{text}/{net.prefixlen}"

    top: list[str] = []
    if conf.route_ttl is not None:
        top.append(kv("route-ttl", str(conf.route_ttl)))
    if conf.address_ttl is not None:
        top.append(kv("address-ttl", str(conf.address_ttl)))
    for proxy in conf.proxies:
        options: list[str] = []
        for name in ("router", "autowire", "keepalive", "promiscuous"):
            value = getattr(proxy, name)
            if value is not None:
                options.append(kv(name, _bool_word(draw, value)))
        for name in ("timeout", "ttl", "retries"):
            value = getattr(proxy, name)
            if value is not None:
                options.append(kv(name, str(value)))
        options = draw(st.permutations(options))
        body = list(options)
        for rule in proxy.rules:  # rules keep their order; options land anywhere
            inner = [rule.method if rule.method != "iface" else kv("iface", str(rule.iface))]
            if rule.autovia is not None:
                inner.insert(draw(st.integers(0, 1)), kv("autovia", _bool_word(draw, rule.autovia)))
            where = draw(st.integers(0, len(body)))
            after = [i for i, s in enumerate(body) if s.startswith("rule")]
            where = max([where, *[i + 1 for i in after]])
            # `static autovia no` on one line reads as static with the value "autovia",
            # so a keyword without a value must end its line.
            joined = (newline() if inner[0] in ("static", "auto") else sep()).join(inner)
            body.insert(where, f"{kv('rule', respell(rule.prefix))} {{{sep()}{joined}{sep()}}}")
        block = sep().join(body)
        top.append(f"{kv('proxy', proxy.interface)} {{{sep()}{block}{sep()}}}")
    return draw(st.sampled_from(["", "# lead\n", "\n\n"])) + sep().join(draw(st.permutations(top)))


@given(st.data(), CONFS)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_sloppy_text_means_the_same(data: st.DataObject, conf: NdppdConf) -> None:
    canon = meaning(conf)
    text = data.draw(sloppy_text(canon))
    assert parse_ndppd_conf(text) == canon


GRAMMAR_CHARS = st.sampled_from(
    list("proxy rule static auto iface eth0 ::1/64 {}#;=\n\t/*'\"\x01é")
)


@given(st.lists(GRAMMAR_CHARS, max_size=80).map("".join))
def test_parser_only_raises_its_own_error(text: str) -> None:
    try:
        conf = parse_ndppd_conf(text)
    except NdppdConfError as err:
        assert 1 <= err.line <= text.count("\n") + 1
    else:
        assert parse_ndppd_conf(format_ndppd_conf(conf)) == conf


@given(st.text(max_size=20), st.text(max_size=40), st.text(max_size=20))
def test_any_strings_either_refused_or_roundtrip(name: str, prefix: str, iface: str) -> None:
    conf = _conf(Proxy(name, (Rule(prefix, "iface", iface=iface),)))
    try:
        text = format_ndppd_conf(conf)
    except ValueError:
        return
    assert parse_ndppd_conf(text) == meaning(conf)


@given(st.integers(0, 2**128 - 1))
def test_address_text_is_rfc5952_and_never_dotted(value: int) -> None:
    text = _format_address(value)
    assert "." not in text
    assert ipaddress.IPv6Address(text) == ipaddress.IPv6Address(value)
    if not ipaddress.IPv6Address(value).ipv4_mapped:
        assert text == ipaddress.IPv6Address(value).compressed
    assert normalise_prefix(text) == f"{text}/128"


def test_ipv4_mapped_addresses_are_written_in_hex() -> None:
    assert normalise_prefix("::ffff:102:304") == "::ffff:102:304/128"
