"""The twin's parsers and pure parts: raw tool (or kernel) output in, values out. No root."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.unit.fake_host import ReplayHost
from ztplan.errors import TwinUnavailable
from ztplan.host import CommandResult, proc_sys_path, sysctl_key, sysctl_name
from ztplan.twin import MEMBER, Culprit, Flow, FlowKind
from ztplan.twin.culprit import (
    dump_request,
    iptables_rule,
    legacy_drops,
    nft_chain_rules,
    parse_rule_dump,
)
from ztplan.twin.image import (
    DefaultRoute,
    GatewayImage,
    Interface,
    Listener,
    NdpProxy,
    is_trivial_save,
    ndppd_config_path,
    parse_addresses,
    parse_listeners,
    parse_proxy_neighbours,
    parse_routes,
    read_image,
    split_nft_ruleset,
    sysctl_paths,
)
from ztplan.twin.layout import plan_layout
from ztplan.twin.load import first_error, nft_shape, strip_owner_flag
from ztplan.twin.netns import check_available, new_names, owner_alive
from ztplan.twin.probe import Packet, Probe, syn_mss
from ztplan.twin.trace import NFT_MSG_TRACE, decode_messages

ADDR_JSON = json.dumps(
    [
        {
            "ifname": "lo",
            "flags": ["LOOPBACK", "UP"],
            "mtu": 65536,
            "addr_info": [
                {"family": "inet", "local": "127.0.0.1", "prefixlen": 8, "scope": "host"}
            ],
        },
        {
            "ifname": "eth0",
            "flags": ["BROADCAST", "UP", "LOWER_UP"],
            "mtu": 1500,
            "addr_info": [
                {"family": "inet", "local": "198.51.100.7", "prefixlen": 24, "scope": "global"},
                {"family": "inet6", "local": "2001:db8:100::7", "prefixlen": 64, "scope": "global"},
                {"family": "inet6", "local": "fe80::1", "prefixlen": 64, "scope": "link"},
            ],
        },
        {
            "ifname": "ztabcdef12",
            "flags": ["BROADCAST", "UP"],
            "mtu": 2800,
            "addr_info": [
                {"family": "inet", "local": "10.6.6.2", "prefixlen": 22, "scope": "global"}
            ],
        },
        {"ifname": "docker0", "flags": ["BROADCAST", "NO-CARRIER"], "mtu": 1500, "addr_info": []},
    ]
)


def test_parse_addresses_roles_prefixes_and_no_link_local() -> None:
    interfaces = parse_addresses(ADDR_JSON, "zt+", ["eth0"])
    assert interfaces == [
        Interface("eth0", ("198.51.100.7/24", "2001:db8:100::7/64"), 1500, "wan"),
        Interface("ztabcdef12", ("10.6.6.2/22",), 2800, "zerotier"),
        Interface("docker0", (), 1500, "other", up=False),
    ]


def test_parse_routes_plain_and_multipath() -> None:
    text = json.dumps(
        [
            {"dst": "default", "gateway": "198.51.100.1", "dev": "eth0", "flags": []},
            {
                "dst": "default",
                "metric": 200,
                "nexthops": [{"gateway": "192.0.2.1", "dev": "eth1"}],
            },
            {"dst": "default", "dev": "ppp0", "flags": []},
        ]
    )
    assert parse_routes(text, "ipv4") == [
        DefaultRoute("ipv4", "eth0", "198.51.100.1"),
        DefaultRoute("ipv4", "eth1", "192.0.2.1", 200),
        DefaultRoute("ipv4", "ppp0", None),
    ]
    assert parse_routes("", "ipv6") == []


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1
   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2
   2: 0764336C:0016 0164336C:D431 01 00000000:00000000 00:00000000 00000000     0        0 3
  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 0
   1: B80D0120000000000000000001000000:01BB 00000000000000000000000000000000:0000 0A 0
"""


def test_parse_listeners_from_proc_net_tcp() -> None:
    assert parse_listeners(PROC_NET_TCP) == [
        Listener("ipv4", "0.0.0.0", 22),
        Listener("ipv4", "127.0.0.1", 631),
        Listener("ipv6", "::", 22),
        Listener("ipv6", "2001:db8::1", 443),
    ]


RULESET = """\
table ip filter {
\tchain FORWARD {
\t\ttype filter hook forward priority filter; policy drop;
\t\tiifname "zt*" counter packets 3 bytes 180 accept
\t}
}
table inet filter {
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t}
}
table inet f2b-table {
\tflags owner
\tchain input {
\t\ttype filter hook input priority filter - 1; policy accept;
\t}
}
"""


def test_split_nft_ruleset_per_table() -> None:
    tables = split_nft_ruleset(RULESET)
    assert [(f, n) for f, n, _ in tables] == [
        ("ip", "filter"),
        ("inet", "filter"),
        ("inet", "f2b-table"),
    ]
    assert tables[1][2].startswith("table inet filter {\n") and tables[1][2].endswith("}\n")


def test_strip_owner_flag() -> None:
    table = split_nft_ruleset(RULESET)[2][2]
    assert "flags" not in strip_owner_flag(table)
    assert strip_owner_flag("table x y {\n\tflags dormant,owner\n}\n") == (
        "table x y {\n\tflags dormant\n}\n"
    )


def test_nft_shape_ignores_counters_order_and_empty_accept_chains() -> None:
    a = (
        "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; "
        "policy accept;\n\t}\n\n\tchain FORWARD {\n\t\ttype filter hook forward priority filter;"
        " policy drop;\n\t\tcounter packets 5 bytes 9 accept\n\t}\n\n\tchain X {\n\t}\n}\n"
    )
    b = (
        "table ip filter {\n\tchain X {\n\t}\n\n\tchain FORWARD {\n\t\ttype filter hook forward "
        "priority filter; policy drop;\n\t\tcounter packets 0 bytes 0 accept\n\t}\n}\n"
    )
    assert nft_shape(a) == nft_shape(b)
    assert nft_shape(a) != nft_shape(b.replace(" accept\n\t}\n}", " drop\n\t}\n}"))


def test_first_error_quotes_the_tools_own_line() -> None:
    iptables = (
        "iptables-restore v1.8.9 (nf_tables): Couldn't load match `nosuchmatch':No such file "
        "or directory\n\nError occurred at line: 3\nTry `iptables-restore -h' or "
        "'iptables-restore --help' for more information.\n"
    )
    assert first_error(iptables) == (
        "Couldn't load match `nosuchmatch':No such file or directory (line 3)"
    )
    nft = "/dev/stdin:3:16-16: Error: syntax error, unexpected newline\n\t\tno such\n\t\t^\n"
    assert first_error(nft) == "syntax error, unexpected newline (line 3)"
    assert first_error("") == "failed"


def test_is_trivial_save() -> None:
    assert is_trivial_save("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    assert is_trivial_save("")
    assert not is_trivial_save("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    assert not is_trivial_save("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j DROP\nCOMMIT\n")


# --- read_image through a replaying host -----------------------------------------------------

SAVE4 = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
SAVE4 += "-A FORWARD -m set --match-set blocked src -j DROP\nCOMMIT\n"


def _host() -> ReplayHost:
    outputs: dict[tuple[str, ...], str | CommandResult] = {
        ("iptables-nft-save",): SAVE4,
        ("ip6tables-nft-save",): "",
        ("nft", "list", "ruleset"): RULESET,
        ("iptables-legacy-save",): "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
        ("ip6tables-legacy-save",): "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n",
        ("ipset", "save"): "create blocked hash:ip family inet\nadd blocked 10.6.7.7\n",
        ("ip", "-j", "-4", "route", "show", "default"): json.dumps(
            [{"dst": "default", "gateway": "198.51.100.1", "dev": "eth0"}]
        ),
        ("ip", "-j", "-6", "route", "show", "default"): "[]",
        ("ip", "-j", "addr", "show"): ADDR_JSON,
        ("cat", "/proc/net/tcp", "/proc/net/tcp6"): PROC_NET_TCP,
        ("ip", "-6", "-j", "neigh", "show", "proxy"): json.dumps(
            [{"dst": "2001:db8:100::42", "dev": "eth0", "proxy": None}]
        ),
        ("pgrep", "-a", "-x", "ndppd"): "812 ndppd -d -c /etc/ztplan/netns/gw/ndppd.conf\n"
        "913 ndppd -c /etc/ndppd.conf\n",
        ("readlink", "/proc/self/ns/net"): "net:[4026532300]\n",
        ("readlink", "/proc/812/ns/net"): "net:[4026532300]\n",
        ("readlink", "/proc/913/ns/net"): "net:[4026531840]\n",  # the host's: not this one
    }
    files = {path: "1\n" for path in sysctl_paths(["eth0", "ztabcdef12", "docker0"])}
    files["/proc/sys/net/ipv4/conf/eth0/rp_filter"] = "2\n"
    files["/etc/ztplan/netns/gw/ndppd.conf"] = (
        "proxy eth0 {\n    rule 2001:db8:100:0:1::/80 {\n        static\n    }\n}\n"
    )
    return ReplayHost(outputs, files)


def test_read_image_reads_everything_and_never_writes() -> None:
    host = _host()
    image = read_image(host)
    assert host.writes == []
    assert all(input is None for _, input in host.calls)
    assert image.iptables["ipv4"] == SAVE4
    assert [(t.label, t.iptables) for t in image.nft_tables] == [
        ("ip filter", True),
        ("inet filter", False),
        ("inet f2b-table", False),
    ]
    assert [t.label for t in image.native_tables] == ["inet filter", "inet f2b-table"]
    assert list(image.legacy) == ["ipv6"]  # the ipv4 legacy table holds nothing
    assert image.ipsets is not None and "add blocked" in image.ipsets
    assert image.wan("ipv4") == image.interface("eth0")
    assert [i.name for i in image.zerotier()] == ["ztabcdef12"]
    assert image.sysctl("net.ipv4.ip_forward") == "1"
    assert dict(image.sysctls)["/proc/sys/net/ipv4/conf/eth0/rp_filter"] == "2"
    assert Listener("ipv4", "0.0.0.0", 22) in image.listeners
    assert image.ndp_proxies == (
        NdpProxy("eth0", "2001:db8:100::42/128", "kernel"),
        NdpProxy("eth0", "2001:db8:100:0:1::/80", "ndppd"),  # only this namespace's ndppd
    )
    assert image.warnings == ()


def test_read_image_without_sets_does_not_ask_ipset_and_says_what_it_missed() -> None:
    host = _host()
    host.outputs[("iptables-nft-save",)] = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"
    host.outputs[("nft", "list", "ruleset")] = CommandResult(("nft",), 127, "", "not found")
    host.outputs[("pgrep", "-a", "-x", "ndppd")] = CommandResult(("pgrep",), 1, "", "")
    image = read_image(host)
    assert ("ipset", "save") not in [argv for argv, _ in host.calls]
    assert image.ipsets is None
    assert image.nft_tables == ()
    assert image.warnings and "nft" in image.warnings[0]
    assert [p.source for p in image.ndp_proxies] == ["kernel"]  # no ndppd runs


def test_ndppd_config_path_from_its_command_line() -> None:
    assert ndppd_config_path("ndppd -d -c /etc/x.conf -p /run/p") == "/etc/x.conf"
    assert ndppd_config_path("ndppd -c/etc/y.conf") == "/etc/y.conf"
    assert ndppd_config_path("ndppd --config=/etc/z.conf") == "/etc/z.conf"
    assert ndppd_config_path("ndppd -d") == "/etc/ndppd.conf"


def test_parse_proxy_neighbours() -> None:
    text = json.dumps([{"dst": "2001:db8::7", "dev": "eth0", "proxy": None}, {"dev": "eth1"}])
    assert parse_proxy_neighbours(text) == [NdpProxy("eth0", "2001:db8::7/128", "kernel")]


def test_global_forwarding_sysctls_come_before_the_per_interface_ones() -> None:
    paths = sysctl_paths(["eth0"])
    assert paths.index("/proc/sys/net/ipv4/ip_forward") < paths.index(
        "/proc/sys/net/ipv4/conf/eth0/forwarding"
    )


# --- the layout --------------------------------------------------------------------------------


def test_plan_layout_picks_free_addresses() -> None:
    image = GatewayImage(
        interfaces=(
            Interface("eth0", ("203.0.113.7/24", "2001:db8:100::7/64"), 1500, "wan"),
            Interface("zt0", ("10.6.4.1/22", "fd00:6::1/88", "2001:db8:6::1/64"), 2800, "zerotier"),
        ),
        routes=(DefaultRoute("ipv4", "eth0", "203.0.113.1"),),
    )
    layout = plan_layout(image)
    assert layout.member == {"ipv4": "10.6.4.2", "ipv6": "2001:db8:6::2"}  # global before ULA
    assert layout.remote["ipv4"] == "192.0.2.1"  # 203.0.113.1 is the gateway's own subnet
    # No IPv6 default route: the WAN interface is still the one with the role (the twin
    # then has no IPv6 route out either, as on the gateway).
    assert layout.wan == {"ipv4": "203.0.113.7", "ipv6": "2001:db8:100::7"}
    assert layout.wan_mtu == {"ipv4": 1500, "ipv6": 1500}


# --- the trace ---------------------------------------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _trace(family: int, table: str, chain: str, **fields: object) -> bytes:
    body = struct.pack("=BBH", family, 0, 0)
    body += _attr(1, table.encode() + b"\0") + _attr(2, chain.encode() + b"\0")
    body += _attr(6, struct.pack(">I", 7)) + _attr(15, struct.pack(">I", 2))
    body += _attr(4, struct.pack(">I", int(str(fields.get("type", 3)))))
    if "handle" in fields:
        body += _attr(3, struct.pack(">Q", int(str(fields["handle"]))))
    if "verdict" in fields:
        body += _attr(0x8000 | 5, _attr(1, struct.pack(">i", int(str(fields["verdict"])))))
    if "policy" in fields:
        body += _attr(16, struct.pack(">I", int(str(fields["policy"]))))
    if fields.get("headers"):
        ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 6, 4, 1, 203, 0, 113, 1])
        body += _attr(8, ip) + _attr(9, struct.pack(">HH", 45000, 443) + b"\0" * 16)
    return struct.pack("=IHHII", 16 + len(body), NFT_MSG_TRACE, 0, 0, 0) + body


def test_decode_trace_messages_carries_headers_and_verdicts() -> None:
    data = _trace(2, "filter", "FORWARD", headers=True, verdict=-1)
    data += _trace(2, "filter", "FORWARD", handle=12, verdict=0)
    data += _trace(1, "filter", "forward", type=1, policy=0)
    events = decode_messages(data)
    assert [(e.family, e.type, e.verdict, e.handle) for e in events] == [
        ("ip", "packet", "continue", None),
        ("ip", "rule", "drop", 12),
        ("inet", "policy", "drop", None),
    ]
    packet = Packet(4, 6, "10.6.4.1", "203.0.113.1", 45000, 443)
    assert all(e.packet == packet for e in events)  # carried by the trace id
    probe = Probe("mem", "ipv4", "tcp", "10.6.4.1", 45000, "203.0.113.1", 443)
    assert probe.owns(packet)
    assert probe.owns(Packet(4, 6, "203.0.113.1", "198.51.100.7", 443, 45000))  # the answer
    assert not probe.owns(Packet(4, 17, "10.6.4.1", "203.0.113.1", 45000, 443))


def test_nft_chain_rules_and_the_matching_iptables_line() -> None:
    listing = (
        "table ip filter {\n\tchain FORWARD { # handle 2\n"
        "\t\ttype filter hook forward priority filter; policy drop;\n"
        '\t\tiifname "zt*" counter packets 0 bytes 0 accept # handle 7\n'
        "\t\tip saddr 10.6.4.0/24 counter packets 4 bytes 240 drop # handle 9\n\t}\n}\n"
    )
    assert nft_chain_rules(listing) == [
        (7, 'iifname "zt*" accept'),
        (9, "ip saddr 10.6.4.0/24 drop"),
    ]
    save = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -i zt+ -j ACCEPT\n"
    save += "-A FORWARD -s 10.6.4.0/24 -j DROP\n"
    assert iptables_rule(save, "FORWARD", 1) == "-A FORWARD -s 10.6.4.0/24 -j DROP"
    assert iptables_rule(save, "FORWARD", 2) is None


def test_rule_dump_request_and_handles() -> None:
    request = dump_request("ip", "filter", "FORWARD")
    length, kind, flags = struct.unpack_from("=IHH", request)
    assert (length, kind, flags & 0x300) == (len(request), (10 << 8) | 7, 0x300)
    assert b"filter\0" in request and b"FORWARD\0" in request

    def rule(handle: int) -> bytes:
        body = (
            struct.pack("=BBH", 2, 0, 0)
            + _attr(1, b"filter\0")
            + _attr(3, struct.pack(">Q", handle))
        )
        return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 6, 2, 1, 0) + body

    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + b"\0" * 4
    assert parse_rule_dump(rule(4) + rule(9)) == ([4, 9], False)
    assert parse_rule_dump(rule(12) + done) == ([12], True)


def test_legacy_drops_are_the_counters_that_rose() -> None:
    save = (
        "*filter\n:INPUT ACCEPT [9:900]\n:FORWARD DROP [2:120]\n:OUTPUT ACCEPT [0:0]\n"
        "[0:0] -A FORWARD -s 1.2.3.4/32 -j DROP\n[3:180] -A FORWARD -p udp -j REJECT\nCOMMIT\n"
    )
    assert legacy_drops(save, "ipv4") == [
        Culprit("iptables-legacy", "ipv4 filter", "FORWARD", policy="DROP"),
        Culprit("iptables-legacy", "ipv4 filter", "FORWARD", rule="-A FORWARD -p udp -j REJECT"),
    ]


def test_culprit_sentences() -> None:
    rule = Culprit("iptables-nft", "ipv4 filter", "FORWARD", rule="-A FORWARD -j DROP")
    assert str(rule) == "iptables ipv4 filter chain FORWARD: rule `-A FORWARD -j DROP`"
    policy = Culprit("nftables", "inet filter", "forward", policy="drop")
    assert str(policy) == "nftables table inet filter chain forward: policy drop"
    assert str(Culprit("kernel", note="net.ipv4.ip_forward = 0")) == "net.ipv4.ip_forward = 0"


def test_syn_mss_reads_the_option() -> None:
    ip = bytes([0x45]) + b"\0" * 19
    tcp = struct.pack(">HHIIBBHHH", 45000, 443, 0, 0, 0x60, 0x02, 0, 0, 0)
    assert syn_mss(ip + tcp + bytes([2, 4]) + struct.pack(">H", 1460)) == 1460
    nop_first = struct.pack(">HHIIBBHHH", 45000, 443, 0, 0, 0x70, 0x02, 0, 0, 0)
    assert syn_mss(ip + nop_first + bytes([1, 1, 1, 1, 2, 4, 0x05, 0xB4])) == 1460
    assert syn_mss(b"") is None


# --- names, availability, flows ----------------------------------------------------------------


def test_twin_names_say_who_owns_them() -> None:
    names = new_names()
    assert names.gw.startswith(f"ztplan-twin-{os.getpid()}-") and names.gw.endswith("-gw")
    assert all(len(n) <= 64 for n in names.all())
    assert owner_alive(names.mem) is True
    stem = names.gw.removesuffix("-gw")
    pid, start = stem.split("-")[2:4]
    assert owner_alive(f"ztplan-twin-{pid}-{int(start) + 1}-abcdef-net") is False  # pid reused
    assert owner_alive("ztplan-twin-999999999-1-abcdef-gw") is False
    assert owner_alive("ztplan-sandbox") is None
    assert owner_alive("ztplan-twin-not-a-twin") is None


def test_no_root_means_twin_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(TwinUnavailable, match="needs root"):
        check_available()


def test_flow_defaults_and_checks() -> None:
    assert Flow("in", FlowKind.INBOUND, "ipv4").expectation == "blocked"
    out = Flow("out", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER)
    assert (out.expectation, out.from_side, out.to_side) == ("pass", "member", "internet")
    with pytest.raises(ValueError, match="TCP"):
        Flow("ssh", FlowKind.MANAGEMENT, "ipv4", protocol="udp", port=22)
    with pytest.raises(ValueError, match="port"):
        Flow("x", FlowKind.OUTBOUND, "ipv4", port=0)


def test_a_sysctl_of_an_interface_with_a_dot_in_its_name_is_found() -> None:
    """A VLAN WAN (eth0.100): its keys are read as sysctl(8) spells them, `eth0/100`; the
    image and the twin looked for /proc/sys/net/ipv6/conf/eth0/100/..., which is no file."""
    image = GatewayImage(
        sysctls=(
            ("/proc/sys/net/ipv6/conf/eth0.100/proxy_ndp", "1"),
            ("/proc/sys/net/ipv4/ip_forward", "1"),
        )
    )
    key = f"net.ipv6.conf.{sysctl_name('eth0.100')}.proxy_ndp"
    assert key == "net.ipv6.conf.eth0/100.proxy_ndp"
    assert image.sysctl(key) == "1"
    assert image.sysctl("net.ipv4.ip_forward") == "1"
    assert sysctl_key("/proc/sys/net/ipv6/conf/eth0.100/proxy_ndp") == key
    assert proc_sys_path(key) == "/proc/sys/net/ipv6/conf/eth0.100/proxy_ndp"
