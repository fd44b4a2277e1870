"""Where the twin's member and Internet hosts sit around the gateway's own addresses.

The member takes the first free address of the ZeroTier interface's subnet (global IPv6
before ZeroTier's fc/fd ones); the Internet side's remote host is the first documentation
address outside every network of the gateway. Pure: an image in, a Layout out.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ztplan.errors import TwinUnavailable
from ztplan.twin.image import FAMILIES, Family, GatewayImage

__all__ = ["REMOTE", "Layout", "free_host", "plan_layout"]

REMOTE = {
    "ipv4": ("203.0.113.1", "192.0.2.1", "198.18.0.1", "100.64.0.1"),
    "ipv6": ("2001:db8:ffff::1", "2001:db8:fffe::1", "3fff:ffff::1"),
}
"""Candidate addresses of "a host on the Internet" (documentation ranges first); the first
that is not in any of the gateway's networks is used."""


@dataclass(frozen=True)
class Layout:
    """The addresses the twin chose around the gateway's own (no prefix lengths)."""

    zerotier: str
    """The gateway twin's interface the member hangs off."""
    member: dict[Family, str] = field(default_factory=dict)
    remote: dict[Family, str] = field(default_factory=dict)
    """A host on the Internet side (on the Internet namespace's loopback)."""
    wan: dict[Family, str] = field(default_factory=dict)
    """The gateway's own WAN address (what MASQUERADE writes)."""
    wan_interface: dict[Family, str] = field(default_factory=dict)
    wan_mtu: dict[Family, int] = field(default_factory=dict)


def free_host(
    net: ipaddress.IPv4Interface | ipaddress.IPv6Interface, taken: set[str]
) -> str | None:
    for count, host in enumerate(net.network.hosts()):
        if str(host) not in taken:
            return str(host)
        if count > 1024:
            break
    return None


def _global_first(nets: Sequence[Any]) -> list[Any]:
    """Global unicast before ULA (ZeroTier's rfc4193 and 6plane addresses are fd/fc)."""
    return sorted(nets, key=lambda n: n.ip in ipaddress.ip_network("fc00::/7"))


def plan_layout(image: GatewayImage, zerotier: str | None = None) -> Layout:
    zts = [i for i in image.zerotier() if zerotier in (None, i.name)]
    if not zts:
        wanted = f"interface {zerotier}" if zerotier else "ZeroTier interface"
        raise TwinUnavailable(f"the gateway has no {wanted} for a member to hang off")
    zt = next((i for i in zts if i.addresses), zts[0])
    taken = {str(ipaddress.ip_interface(a).ip) for i in image.interfaces for a in i.addresses}
    taken |= {r.gateway for r in image.routes if r.gateway}
    networks = [ipaddress.ip_interface(a).network for i in image.interfaces for a in i.addresses]
    layout = Layout(zerotier=zt.name)
    for family in FAMILIES:
        for net in _global_first(zt.networks(family)):
            member = free_host(net, taken)
            if member:
                layout.member[family] = member
                break
        remote = next(
            (
                a
                for a in REMOTE[family]
                if a not in taken and not any(ipaddress.ip_address(a) in n for n in networks)
            ),
            None,
        )
        if remote:
            layout.remote[family] = remote
        wan = image.wan(family)
        if wan is not None:
            layout.wan_interface[family] = wan.name
            layout.wan_mtu[family] = wan.mtu
            own = _global_first(wan.networks(family))
            if own:
                layout.wan[family] = str(own[0].ip)
    return layout
