"""The flows a twin checks, and what it found: plain values, no I/O.

outbound    member -> a host on the Internet; the answer must come back, from the
            expected source (the SNAT address, WAN for MASQUERADE, MEMBER for routed
            IPv6)
inbound     a host on the Internet -> the member, unsolicited: expected blocked
management  a host on the Internet -> the gateway's WAN address, TCP: expected reachable
mss         a member's TCP SYN through the gateway: its MSS on the Internet side must be
            clamped (default: at most the WAN MTU - 40, - 60 for IPv6)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ztplan.twin.culprit import Culprit
from ztplan.twin.image import Family

__all__ = ["FIRST_PORT", "MEMBER", "WAN", "Flow", "FlowKind", "FlowResult"]

MEMBER = "member"
"""`expected_source`: the member's own address (routed IPv6)."""
WAN = "wan"
"""`expected_source`: the gateway's WAN address (MASQUERADE)."""

FIRST_PORT = 45000
"""Clients' source ports (one per flow, so that a traced packet names its flow)."""


class FlowKind(StrEnum):
    OUTBOUND = "outbound"
    """Member -> a host on the Internet; the answer must come back."""
    INBOUND = "inbound"
    """A host on the Internet -> the member, unsolicited."""
    MANAGEMENT = "management"
    """A host on the Internet -> the gateway's WAN address, TCP."""
    MSS = "mss"
    """A member's TCP SYN through the gateway: its MSS on the Internet side."""


SIDES = {
    FlowKind.OUTBOUND: ("member", "internet"),
    FlowKind.INBOUND: ("internet", "member"),
    FlowKind.MANAGEMENT: ("internet", "gateway"),
    FlowKind.MSS: ("member", "internet"),
}


@dataclass(frozen=True)
class Flow:
    """One flow to check. `expect` defaults to "pass", "blocked" for inbound flows."""

    name: str
    kind: FlowKind
    family: Family
    protocol: Literal["tcp", "udp"] = "tcp"
    port: int = 443
    """The server's port (the member's for inbound, the gateway's for management)."""
    expect: Literal["pass", "blocked"] | None = None
    expected_source: str | None = None
    """Outbound: the source the Internet side must see (an address, MEMBER or WAN);
    None checks only that the answer comes back."""
    max_mss: int | None = None
    """MSS: the largest acceptable (default: the WAN MTU - 40 for IPv4, - 60 for IPv6)."""
    remote: str | None = None
    """The Internet-side host (default: the twin's 203.0.113.1 / 2001:db8:ffff::1)."""
    target: str | None = None
    """Inbound / management: where the Internet side sends to (default: the member's
    address / the gateway's WAN address)."""

    def __post_init__(self) -> None:
        if self.kind in (FlowKind.MANAGEMENT, FlowKind.MSS) and self.protocol != "tcp":
            raise ValueError(f"flow {self.name!r}: a {self.kind} flow is TCP")
        if not 0 < self.port < 65536:
            raise ValueError(f"flow {self.name!r}: port {self.port} is not a port")

    @property
    def expectation(self) -> Literal["pass", "blocked"]:
        if self.expect is not None:
            return self.expect
        return "blocked" if self.kind is FlowKind.INBOUND else "pass"

    @property
    def from_side(self) -> str:
        return SIDES[self.kind][0]

    @property
    def to_side(self) -> str:
        return SIDES[self.kind][1]


@dataclass(frozen=True)
class FlowResult:
    flow: Flow
    ok: bool
    """The flow behaved as expected."""
    passed: bool
    """What the kernel did: the traffic got through (for MSS: clamped as required)."""
    observed: str
    """One phrase: `reached 203.0.113.1 from 198.51.100.7`, `no answer in 0.5 s`, ..."""
    culprit: Culprit | None = None
    """When not ok: what dropped it (or, for a flow expected blocked, what let it in)."""
    source: str | None = None
    """The source address the far side saw."""
    mss: int | None = None
    seconds: float = 0.0
