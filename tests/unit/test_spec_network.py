"""ztplan.spec: a network's mtu, dns and subnets, and `kind: central-v2`; each bad value is one
exact line naming the file, the line and the field."""

from __future__ import annotations

import pytest

from ztplan.errors import SpecError
from ztplan.spec import parse_spec

FILE = "specs/gw.yaml"


def network(setting: str, kind: str = "central-v2") -> str:
    """A spec with one network; `setting` is on line 6."""
    return (
        "version: 1\ntarget: {name: gw1}\n"
        f"controller: {{kind: {kind}}}\n"
        "networks:\n  - id: 8056c2e21c000001\n"
        f"    {setting}\n"
    )


def error_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(text, FILE)
    return str(caught.value)


def test_central_v2_with_every_new_setting_loads() -> None:
    spec = parse_spec(
        network(
            "mtu: 1500\n    dns: {domain: zt.example.com, servers: [10.6.6.2, 'FD00::53']}\n"
            "    v4_subnet: 10.6.4.0/22\n    v6_subnet: '2001:19f0:6001:1a6::/64'"
        ),
        FILE,
    )
    assert spec.controller is not None and spec.controller.kind == "central-v2"
    net = spec.networks[0]
    assert net.mtu == 1500 and net.v4_subnet == "10.6.4.0/22"
    assert net.dns is not None and net.dns.servers == ["10.6.6.2", "fd00::53"]


@pytest.mark.parametrize("kind", ["central", "local"])
def test_mtu_and_dns_are_for_every_kind(kind: str) -> None:
    spec = parse_spec(network("mtu: 2800\n    dns: {domain: '', servers: []}", kind), FILE)
    assert spec.networks[0].mtu == 2800


RANGE = "an integer MTU from 1280 to 10000 (ZeroTier's limits), got {}; 1500 or less for a "
RANGE += "gateway whose WAN link is 1500 bytes"
DOMAIN = (
    "a DNS search domain like zt.example.com (labels of letters, digits and `-`, up to 63 "
    'characters each and 127 in all, no trailing dot), or "" for none; got {}'
)
CASES = {
    "mtu_low": ("mtu: 1279", f"networks[0].mtu: {RANGE.format(1279)}"),
    "mtu_high": ("mtu: 10001", f"networks[0].mtu: {RANGE.format(10001)}"),
    "mtu_yes": ("mtu: yes", f"networks[0].mtu: {RANGE.format(True)}"),
    "mtu_string": ("mtu: '1500'", f"networks[0].mtu: {RANGE.format(repr('1500'))}"),
    "dns_bad_server": (
        "dns: {domain: zt.example.com, servers: [10.6.6.256]}",
        "networks[0].dns.servers[0]: an IPv4 or IPv6 address",
    ),
    "dns_server_with_prefix": (
        "dns: {domain: zt.example.com, servers: [10.6.6.2/24]}",
        "networks[0].dns.servers[0]: an IPv4 or IPv6 address",
    ),
    "dns_five_servers": (
        "dns: {domain: a.b, servers: [10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, 10.0.0.5]}",
        "networks[0].dns.servers: at most 4 servers (members keep only the first 4), got 5",
    ),
    "dns_twice": (
        "dns: {domain: a.b, servers: [10.0.0.1, 10.0.0.1]}",
        "networks[0].dns.servers: each server once",
    ),
    "dns_underscore": (
        "dns: {domain: my_net.example, servers: []}",
        f"networks[0].dns.domain: {DOMAIN.format(repr('my_net.example'))}",
    ),
    "dns_trailing_dot": (
        "dns: {domain: example.com., servers: []}",
        f"networks[0].dns.domain: {DOMAIN.format(repr('example.com.'))}",
    ),
    "dns_label_too_long": (
        f"dns: {{domain: {'a' * 64}.com, servers: []}}",
        f"networks[0].dns.domain: {DOMAIN.format(repr('a' * 64 + '.com'))}",
    ),
    "dns_servers_without_domain": (
        "dns: {domain: '', servers: [10.6.6.2]}",
        "networks[0].dns: a `domain` with the servers: members apply pushed DNS only when the "
        "search domain is set",
    ),
    "dns_no_servers_key": (
        "dns: {domain: a.b}",
        "networks[0].dns.servers: required field is missing",
    ),
    "v4_subnet_v6": ("v4_subnet: 'fd00::/64'", "networks[0].v4_subnet: an IPv4 subnet"),
    "v6_subnet_host_bits": (
        "v6_subnet: 'fd00::1/64'",
        "networks[0].v6_subnet: an IP network with a prefix length (fd00::1/64 has host bits set)",
    ),
}


@pytest.mark.parametrize(("setting", "message"), CASES.values(), ids=CASES.keys())
def test_a_bad_network_setting_is_one_exact_line(setting: str, message: str) -> None:
    assert error_of(network(setting)) == f"{FILE}:6: {message}"


def test_a_domain_of_127_characters_is_the_longest() -> None:
    longest = ".".join(["a" * 63, "b" * 63])  # 127 characters
    parse_spec(network(f"dns: {{domain: {longest}, servers: []}}"), FILE)
    assert "127 in all" in error_of(network(f"dns: {{domain: {longest}c, servers: []}}"))


@pytest.mark.parametrize(
    ("kind", "name"), [("central", "Legacy Central"), ("local", "a self-hosted controller")]
)
def test_subnets_are_new_central_only(kind: str, name: str) -> None:
    assert error_of(network("v4_subnet: 10.6.4.0/22", kind)) == (
        f"{FILE}:6: networks[0].v4_subnet: a setting of New Central only "
        f"(`controller.kind: central-v2`); {name} has none"
    )


def test_an_unknown_kind_names_the_three() -> None:
    assert error_of(network("mtu: 1500", "central-v3")) == (
        f"{FILE}:3: controller.kind: Input should be 'central', 'central-v2' or 'local', "
        "got 'central-v3'"
    )


def test_the_gateway_shorthand_passes_mtu_and_dns_to_its_network() -> None:
    spec = parse_spec(
        "version: 1\ntarget: {name: gw1}\ncontroller: {kind: central-v2}\n"
        "gateway:\n  network: 8056c2e21c000001\n  wan_interface: eth0\n"
        "  ipv4: {subnet: 10.6.4.0/22, address: 10.6.6.2, nat: masquerade}\n"
        "  mtu: 1500\n  dns: {domain: zt.example.com, servers: [10.6.6.2]}\n",
        FILE,
    )
    (net,) = spec.networks
    assert net.mtu == 1500 and net.dns is not None and net.dns.domain == "zt.example.com"
