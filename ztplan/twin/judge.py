"""A flow's verdict from what its sockets saw, and its culprit from the trace.

ok = the traffic got through (or was blocked) as the flow expects, and came from the
expected source. When not ok, the culprit, in this order: the traced drop of one of the
flow's packets; for a flow expected blocked that passed, the last filtering rule that
accepted it; an iptables-legacy DROP whose counter rose; for IPv6, the chain that dropped
neighbour discovery; else the kernel (forwarding sysctls off, nothing listening, and where
the packet was last seen).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from ztplan.host import proc_sys_path, sysctl_name
from ztplan.twin.build import Twin
from ztplan.twin.culprit import Culprit, resolve
from ztplan.twin.flow import MEMBER, WAN, Flow, FlowKind, FlowResult
from ztplan.twin.load import TRACE_TABLE
from ztplan.twin.netns import inside
from ztplan.twin.probe import Outcome, Probe
from ztplan.twin.trace import TraceEvent

__all__ = ["Judging", "judge_flow"]


def _read(twin: Twin, key: str) -> str | None:
    path = proc_sys_path(key)
    try:
        with inside(twin.names.gw), open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _kernel_note(twin: Twin, flow: Flow, outcome: Outcome) -> str:
    """No nftables chain dropped it: the sysctls that could have, and where it was last seen."""
    hints = []
    if flow.kind is not FlowKind.MANAGEMENT:
        zt = sysctl_name(twin.layout.zerotier)
        wan = sysctl_name(twin.layout.wan_interface.get(flow.family, ""))
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
    unanswered = _unproxied_on_link(twin) if flow.family == "ipv6" else None
    if unanswered:
        text += f"; {unanswered}"
    if outcome.events:
        text += f"; last seen in {outcome.events[-1].where}"
    return text


def _unproxied_on_link(twin: Twin) -> str | None:
    """The member's IPv6 address inside the WAN link's own prefix with nothing answering
    neighbour discovery for it there: the next hop cannot reach the member (ndppd's job)."""
    member, wan = twin.layout.member.get("ipv6"), twin.layout.wan_interface.get("ipv6")
    interface = twin.image.interface(wan) if wan else None
    if member is None or interface is None:
        return None
    address = ipaddress.ip_address(member)
    on_link = next((n for n in interface.networks("ipv6") if address in n.network), None)
    proxied = any(
        p.interface == interface.name and address in ipaddress.ip_network(p.prefix, strict=False)
        for p in twin.image.ndp_proxies
    )
    if on_link is None or proxied:
        return None
    return (
        f"the member's {member} is inside {interface.name}'s on-link prefix {on_link.network} "
        "and nothing answers neighbour discovery for it there (ndppd, proxy_ndp)"
    )


@dataclass(frozen=True)
class Judging:
    """What judging a flow needs besides the flow and its outcome."""

    twin: Twin
    timeout: float
    legacy: list[Culprit]
    """Legacy DROP/REJECT rules and policies whose counters rose."""
    trace_lost: bool
    """The kernel dropped trace events (the receive buffer overflowed)."""
    icmp_drops: list[TraceEvent]
    """Dropped ICMP packets that belong to no flow (neighbour discovery)."""


def _let_through(twin: Twin, probe: Probe, outcome: Outcome) -> TraceEvent | None:
    """The accept that let the flow's first packet through a filtering chain: the last
    accepting rule of an iptables filter table or a native table, else such a chain's
    accepting policy (a FORWARD policy ACCEPT with no rules)."""

    def filtering(e: TraceEvent) -> bool:
        label = f"{e.family} {e.table}"
        if label == f"inet {TRACE_TABLE}":
            return False
        return label in twin.native or (e.family in ("ip", "ip6") and e.table == "filter")

    accepts = [
        e
        for e in outcome.events
        if e.verdict == "accept"
        and filtering(e)
        and e.packet is not None
        and e.packet.sport == probe.sport
    ]
    rules = [e for e in accepts if e.type == "rule"]
    chosen = rules or accepts
    return chosen[-1] if chosen else None


def _culprit(
    run: Judging, flow: Flow, probe: Probe, outcome: Outcome, passed: bool
) -> Culprit | None:
    twin = run.twin
    host = twin.gateway
    if passed:  # expected blocked: what let it in
        accept = _let_through(twin, probe, outcome)
        return resolve(host, accept, twin.native) if accept is not None else None
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


def judge_flow(run: Judging, flow: Flow, probe: Probe | str, outcome: Outcome | None) -> FlowResult:
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
