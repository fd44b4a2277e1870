"""The controller's plan-time finding: a gateway network's MTU larger than a 1500-byte WAN
link, with no TCP MSS clamping."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ztplan.api import ApiClient
from ztplan.model import Snapshot
from ztplan.providers.controller import Controller
from ztplan.spec import parse_spec

NWID = "8056c2e21c000001"
CLAMP = '"-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"'
NAT = 'nat: {POSTROUTING: ["-s 10.6.4.0/22 -j MASQUERADE"]}'
FIX = (
    "connections through this gateway can stall where path MTU discovery fails; set the "
    "network's `mtu: 1500`, or add `-p tcp --tcp-flags SYN,RST SYN -j TCPMSS "
    "--clamp-mss-to-pmtu` to mangle FORWARD"
)


def messages(network: str, firewall: str | None, live: Any = 2800, sysctl: str = "") -> list[str]:
    text = (
        "version: 1\ntarget: {name: gw}\ncontroller: {kind: central-v2}\n"
        f"networks:\n  - {{id: '{NWID}'{network}}}\n"
    ) + (f"sysctl: {{{sysctl}}}\n" if sysctl else "")
    if firewall is not None:
        text += f"firewall:\n{firewall}"
    with httpx.Client() as client:  # check() only reads the snapshot: never used
        provider = Controller(ApiClient("http://x", {}, client), "central-v2", [NWID])
        snapshot = Snapshot({}, raw={NWID: {"mtu": live}})
        findings = provider.check(parse_spec(text, "s.yaml"), snapshot)
    assert all(f.severity == "warning" for f in findings)
    assert all(f.address == f'controller.network["{NWID}"].mtu' for f in findings)
    return [f.message for f in findings]


def test_the_default_mtu_on_a_gateway_without_clamping_warns() -> None:
    assert messages("", f"  ipv4:\n    {NAT}\n") == [
        "MTU 2800 (ZeroTier's default) is more than a 1500-byte WAN link carries, and no TCPMSS "
        f"rule in mangle clamps ipv4 TCP: {FIX}"
    ]


def test_a_live_mtu_the_spec_leaves_alone_is_named_as_it_is() -> None:
    (message,) = messages("", f"  ipv4:\n    {NAT}\n", live=9000)
    assert message.startswith("MTU 9000 is more than")


@pytest.mark.parametrize(
    ("network", "firewall"),
    [
        (", mtu: 1500", f"  ipv4:\n    {NAT}\n"),  # the spec's mtu wins over the live 2800
        ("", f"  ipv4:\n    {NAT}\n    mangle: {{FORWARD: [{CLAMP}]}}\n"),
        ("", None),  # no firewall: a member's or a controller-only spec, not a gateway
    ],
)
def test_no_warning(network: str, firewall: str | None) -> None:
    assert messages(network, firewall) == []


def test_each_family_needs_its_own_clamp() -> None:
    firewall = (
        f"  ipv4:\n    mangle: {{FORWARD: [{CLAMP}]}}\n"
        '  ipv6:\n    filter: {FORWARD: ["-i zt+ -j ACCEPT"]}\n'
    )
    (message,) = messages(", mtu: 2800", firewall)
    assert message.startswith("MTU 2800 is more than a 1500-byte WAN link carries, and no TCPMSS")
    assert "no TCPMSS rule in mangle clamps ipv6 TCP" in message


def test_a_family_forwarded_without_a_firewall_of_its_own_is_named_too() -> None:
    """The guide's step 5: IPv6 forwarding turned on, only an IPv4 firewall written."""
    (message,) = messages("", f"  ipv4:\n    {NAT}\n", sysctl="net.ipv6.conf.all.forwarding: 1")
    assert "no TCPMSS rule in mangle clamps ipv4 and ipv6 TCP" in message


def test_an_unknown_live_mtu_is_no_warning() -> None:
    assert messages("", f"  ipv4:\n    {NAT}\n", live=None) == []
