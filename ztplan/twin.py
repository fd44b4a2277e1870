"""Prove a gateway works with real packets through a twin of it (DESIGN §3 "Verification").

    image = read_image(LocalHost(netns))                  # what decides the packet path
    results = verify(image, [
        Flow("out v4", FlowKind.OUTBOUND, "ipv4", expected_source="198.51.100.7"),
        Flow("out v6", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER),
        Flow("in v4", FlowKind.INBOUND, "ipv4", port=22),  # expected blocked
        Flow("ssh", FlowKind.MANAGEMENT, "ipv4", port=22),
        Flow("mss", FlowKind.MSS, "ipv4"),
    ], prepare=lambda host: firewall.apply(host, changes, desired))  # optional: a plan's state

`verify` builds the twin (twin_build), lets `prepare` change the twin's gateway (and only
it) through an ordinary `Host`, sends every flow's packets at once (twin_probe) and judges
each by what the sockets saw. A flow that did not behave names its culprit from the
kernel's own nftables trace (twin_trace). The twin is removed before `verify` returns.

Sides: a `member` namespace on the ZeroTier side, the gateway twin, an `internet` namespace
on the WAN side that holds the next hop and a remote host (203.0.113.1, 2001:db8:ffff::1).

Errors: TwinUnavailable (no root, no netns, no nft: the caller says "verification skipped")
and TwinLoadFailed (the image does not load: the table and the tool's error), both
ZtplanError; a flow that fails is a result, never an exception.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from ztplan.host import Host
from ztplan.twin_build import TRACE_TABLE, Twin, build_twin
from ztplan.twin_image import Family, GatewayImage, read_image
from ztplan.twin_netns import inside, remove_stale_twins
from ztplan.twin_probe import Outcome, Probe, ProbeRun, Server
from ztplan.twin_trace import Culprit, TraceEvent, TraceListener, legacy_drops, resolve

__all__ = [
    "MEMBER",
    "WAN",
    "Culprit",
    "Flow",
    "FlowKind",
    "FlowResult",
    "GatewayImage",
    "read_image",
    "remove_stale_twins",
    "verify",
]

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


# --- building the probes ---------------------------------------------------------------------


def _management_servers(image: GatewayImage, twin: Twin, flow: Flow) -> list[Server]:
    """The gateway's own listeners on the flow's port, as the real gateway has them: a flow
    to a port nothing listens on is refused in the twin as on the gateway."""
    present = {str(ipaddress.ip_interface(a).ip) for i in image.interfaces for a in i.addresses}
    present |= {"0.0.0.0", "::", "127.0.0.1", "::1"}
    mine = [x for x in image.listeners if x.port == flow.port and x.address in present]
    servers = [
        Server(twin.names.gw, x.family, "tcp", x.address, x.port)
        for x in mine
        if x.family == flow.family
    ]
    if flow.family == "ipv4" and not servers and image.sysctl("net.ipv6.bindv6only") != "1":
        servers += [
            Server(twin.names.gw, "ipv6", "tcp", "::", x.port, dual_stack=True)
            for x in mine
            if x.family == "ipv6" and x.address == "::"
        ]
    return servers


def _plan_probes(twin: Twin, flows: Sequence[Flow]) -> tuple[list[Server], list[Probe | str]]:
    """Servers (deduplicated) and, per flow, its probe or why it cannot be sent."""
    layout, names = twin.layout, twin.names
    servers: dict[Server, None] = {}
    probes: list[Probe | str] = []
    for i, flow in enumerate(flows):
        sport = FIRST_PORT + i
        member = layout.member.get(flow.family)
        remote = flow.remote or layout.remote.get(flow.family)
        if flow.kind in (FlowKind.OUTBOUND, FlowKind.MSS, FlowKind.INBOUND) and member is None:
            probes.append(f"the ZeroTier interface {layout.zerotier} has no {flow.family} subnet")
            continue
        if remote is None:
            probes.append(f"no {flow.family} address for the Internet side")
            continue
        assert member is not None or flow.kind is FlowKind.MANAGEMENT
        # Servers bind the address they serve: a UDP answer then leaves from the address
        # the datagram was sent to (a wildcard socket would answer from the link's address).
        if flow.kind in (FlowKind.OUTBOUND, FlowKind.MSS):
            servers[Server(names.net, flow.family, flow.protocol, remote, flow.port)] = None
            probe = Probe(
                names.mem, flow.family, flow.protocol, str(member), sport, remote, flow.port
            )
        elif flow.kind is FlowKind.INBOUND:
            servers[Server(names.mem, flow.family, flow.protocol, str(member), flow.port)] = None
            target = flow.target or str(member)
            probe = Probe(names.net, flow.family, flow.protocol, remote, sport, target, flow.port)
        else:
            wan = flow.target or layout.wan.get(flow.family)
            if wan is None:
                probes.append(f"the gateway has no {flow.family} WAN address")
                continue
            for server in _management_servers(twin.image, twin, flow):
                servers[server] = None
            probe = Probe(names.net, flow.family, "tcp", remote, sport, wan, flow.port)
        probes.append(probe)
    return list(servers), probes


# --- judging ------------------------------------------------------------------------------------


def _read(twin: Twin, key: str) -> str | None:
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with inside(twin.names.gw), open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _kernel_note(twin: Twin, flow: Flow, outcome: Outcome) -> str:
    """No nftables chain dropped it: the sysctls that could have, and where it was last seen."""
    hints = []
    if flow.kind is not FlowKind.MANAGEMENT:
        zt = twin.layout.zerotier
        wan = twin.layout.wan_interface.get(flow.family, "")
        keys = (
            [
                "net.ipv4.ip_forward",
                f"net.ipv4.conf.{zt}.forwarding",
                f"net.ipv4.conf.{wan}.forwarding",
            ]
            if flow.family == "ipv4"
            else [
                "net.ipv6.conf.all.forwarding",
                f"net.ipv6.conf.{zt}.forwarding",
                f"net.ipv6.conf.{wan}.forwarding",
            ]
        )
        keys += (
            [f"net.ipv6.conf.{zt}.disable_ipv6", f"net.ipv6.conf.{wan}.disable_ipv6"]
            if flow.family == "ipv6"
            else []
        )
        for key in keys:
            value = _read(twin, key)
            bad = "1" if key.endswith("disable_ipv6") else "0"
            if value == bad:
                hints.append(f"{key} = {value}")
    elif not outcome.connected and outcome.error and outcome.error.startswith("refused"):
        return f"nothing listens on TCP port {flow.port} on the gateway"
    text = "no nftables chain dropped it"
    if hints:
        text += "; the kernel did not forward it: " + ", ".join(hints)
    if outcome.events:
        text += f"; last seen in {outcome.events[-1].where}"
    return text


@dataclass(frozen=True)
class _Run:
    """What judging a flow needs besides the flow and its outcome."""

    twin: Twin
    timeout: float
    legacy: list[Culprit]
    """Legacy DROP/REJECT rules and policies whose counters rose."""
    trace_lost: bool
    """The kernel dropped trace events (the receive buffer overflowed)."""
    icmp_drops: list[TraceEvent]
    """Dropped ICMP packets that belong to no flow (neighbour discovery)."""


def _culprit(run: _Run, flow: Flow, probe: Probe, outcome: Outcome, passed: bool) -> Culprit | None:
    twin = run.twin
    host = twin.gateway
    if passed:  # expected blocked: the last filtering rule that accepted the first packet
        accepts = [
            e
            for e in outcome.events
            if e.type == "rule"
            and e.verdict == "accept"
            and e.table not in ("nat", TRACE_TABLE)
            and e.packet is not None
            and e.packet.sport == probe.sport
        ]
        return resolve(host, accepts[-1], twin.native) if accepts else None
    if outcome.dropped is not None:
        return resolve(host, outcome.dropped, twin.native)
    legacy = [c for c in run.legacy if c.table.split()[0] == flow.family]
    if legacy:
        first = legacy[0]
        others = f"; also {', '.join(str(c) for c in legacy[1:])}" if legacy[1:] else ""
        note = "its packet counter rose during the test; legacy tables are not traced" + others
        return Culprit(first.stack, first.table, first.chain, first.rule, first.policy, note=note)
    if not twin.trace:
        return None  # nothing to name it by
    nd = [e for e in run.icmp_drops if e.packet is not None and e.packet.neighbour_discovery]
    if flow.family == "ipv6" and nd:
        found = resolve(host, nd[0], twin.native)
        note = "it dropped neighbour discovery (ICMPv6): IPv6 cannot resolve its next hops"
        return dataclasses.replace(found, note=note)
    if flow.family in twin.image.legacy:
        return Culprit(
            "iptables-legacy",
            note="no nftables chain dropped it and iptables-legacy tables are loaded",
        )
    note = _kernel_note(twin, flow, outcome)
    if run.trace_lost:
        note += " (some trace events were lost)"
    return Culprit("kernel", note=note)


def _judge(run: _Run, flow: Flow, probe: Probe | str, outcome: Outcome | None) -> FlowResult:
    if isinstance(probe, str) or outcome is None:
        return FlowResult(flow, False, False, f"not sent: {probe}")
    twin, timeout = run.twin, run.timeout
    layout = twin.layout
    seen = outcome.reply or (outcome.arrived[0] if outcome.arrived else None)
    source = seen[0] if seen else None
    why = (
        f"dropped after {outcome.seconds:.2f} s"
        if outcome.error == "dropped"
        else f"no answer in {timeout:g} s"
        if outcome.error == "no answer"
        else outcome.error or "no answer"
    )
    mss: int | None = None
    wrong_source = False
    if flow.kind is FlowKind.OUTBOUND:
        passed = outcome.answered
        remote = flow.remote or layout.remote.get(flow.family)
        if passed:
            observed = f"reached {remote} from {source}"
            expected = {
                MEMBER: layout.member.get(flow.family),
                WAN: layout.wan.get(flow.family),
            }.get(flow.expected_source or "", flow.expected_source)
            if expected is not None and source != expected:
                wrong_source = True
                observed += f", expected from {expected}"
        elif outcome.arrived:
            observed = f"reached {remote} from {source} but the answer did not come back ({why})"
        else:
            observed = why
    elif flow.kind is FlowKind.INBOUND:
        passed = bool(outcome.arrived) or outcome.connected
        target = flow.target or layout.member.get(flow.family)
        sender = source or flow.remote or layout.remote.get(flow.family)
        observed = f"reached {target} port {flow.port} from {sender}" if passed else why
    elif flow.kind is FlowKind.MANAGEMENT:
        passed = outcome.connected
        target = flow.target or layout.wan.get(flow.family)
        observed = f"connected to {target} port {flow.port}" if passed else why
    else:
        mss = seen[2] if seen else None
        limit = flow.max_mss or layout.wan_mtu.get(flow.family, 1500) - (
            40 if flow.family == "ipv4" else 60
        )
        passed = mss is not None and mss <= limit
        observed = (
            f"mss {mss} (at most {limit} expected)"
            if mss is not None
            else f"the SYN did not arrive: {why}"
        )
    ok = passed == (flow.expectation == "pass") and not wrong_source
    culprit = None
    if not ok and not wrong_source and (flow.kind is not FlowKind.MSS or mss is None):
        culprit = _culprit(run, flow, probe, outcome, passed)
    return FlowResult(
        flow,
        ok,
        passed,
        observed,
        culprit,
        source,
        mss if mss is not None else (seen[2] if seen else None),
        outcome.seconds,
    )


# --- the entry point ----------------------------------------------------------------------------


def verify(
    image: GatewayImage,
    flows: Sequence[Flow],
    *,
    trace: bool = True,
    prepare: Callable[[Host], None] | None = None,
    timeout: float = 0.5,
    zerotier: str | None = None,
) -> list[FlowResult]:
    """Build a twin of `image`, let `prepare` change its gateway, send every flow's packets
    (concurrently) and return one result per flow, in order. `trace` names culprits (and
    ends a dropped flow's wait early); `timeout` is how long a flow waits for an answer;
    `zerotier` picks the gateway's interface the member hangs off (default: the first
    ZeroTier interface). Raises TwinUnavailable or TwinLoadFailed, never for a failing flow.
    """
    expected = [
        f.expected_source
        for f in flows
        if f.kind is FlowKind.OUTBOUND and f.expected_source not in (None, MEMBER, WAN)
    ]
    remotes = [f.remote for f in flows if f.remote]
    with build_twin(
        image, zerotier, routes_back=[e for e in expected if e], remotes=remotes, trace=trace
    ) as twin:
        if prepare is not None:
            prepare(twin.gateway)
        servers, planned = _plan_probes(twin, flows)
        probes = [p for p in planned if isinstance(p, Probe)]
        run = ProbeRun(servers, probes, timeout)
        listener: TraceListener | None = None
        try:
            if trace:
                with inside(twin.names.gw):
                    listener = TraceListener(run.on_event)
                listener.start()
            outcomes = iter(run.run())
        finally:
            if listener is not None:
                listener.stop()
            run.close()
        legacy: list[Culprit] = []
        if image.legacy:
            for family in image.legacy:
                tool = "iptables-legacy-save" if family == "ipv4" else "ip6tables-legacy-save"
                legacy += legacy_drops(twin.gateway.run([tool, "-c"]).stdout, family)
        lost = listener is not None and listener.overflow
        context = _Run(twin, timeout, legacy, lost, run.icmp_drops)
        return [
            _judge(context, flow, probe, next(outcomes) if isinstance(probe, Probe) else None)
            for flow, probe in zip(flows, planned, strict=True)
        ]
