"""Prove a gateway works with real packets through a twin of it (DESIGN §3 "Verification").

    image = read_image(LocalHost(netns))                  # what decides the packet path
    results = verify(image, [
        Flow("out v4", FlowKind.OUTBOUND, "ipv4", expected_source="198.51.100.7"),
        Flow("out v6", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER),
        Flow("in v4", FlowKind.INBOUND, "ipv4", port=22),  # expected blocked
        Flow("ssh", FlowKind.MANAGEMENT, "ipv4", port=22),
        Flow("mss", FlowKind.MSS, "ipv4"),
    ], prepare=lambda host: firewall.apply(host, changes, desired))  # optional: a plan's state

`verify` builds the twin (twin.build), lets `prepare` change the twin's gateway (and only
it) through an ordinary `Host`, sends every flow's packets at once (twin.probe) and judges
each by what the sockets saw. A flow that did not behave names its culprit from the
kernel's own nftables trace (twin.trace, twin.culprit). The twin is removed before `verify` returns.

Sides: a `member` namespace on the ZeroTier side, the gateway twin, an `internet` namespace
on the WAN side that holds the next hop and a remote host (203.0.113.1, 2001:db8:ffff::1).

Errors: TwinUnavailable (no root, no netns, no nft: the caller says "verification skipped")
and TwinLoadFailed (the image does not load: the table and the tool's error), both
ZtplanError; a flow that fails is a result, never an exception.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from ztplan.host import Host
from ztplan.twin.build import Twin, build_twin
from ztplan.twin.culprit import Culprit, legacy_drops
from ztplan.twin.flow import FIRST_PORT, MEMBER, WAN, Flow, FlowKind, FlowResult
from ztplan.twin.image import LEGACY_SAVE, GatewayImage, read_image
from ztplan.twin.judge import Judging, judge_flow
from ztplan.twin.netns import inside, remove_stale_twins
from ztplan.twin.probe import Probe, ProbeRun, Server
from ztplan.twin.trace import TraceListener

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
                saved = twin.gateway.run([LEGACY_SAVE[family], "-c"]).stdout
                legacy += legacy_drops(saved, family)
        lost = listener is not None and listener.overflow
        context = Judging(twin, timeout, legacy, lost, run.icmp_drops)
        return [
            judge_flow(context, flow, probe, next(outcomes) if isinstance(probe, Probe) else None)
            for flow, probe in zip(flows, planned, strict=True)
        ]
