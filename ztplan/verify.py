"""A converged plan means a working gateway: the flows of a spec, proven with real packets.

Which flows:
    the `gateway:` shorthand   outbound IPv4 from a member, seen from the SNAT address (or the
                               WAN address, for MASQUERADE); outbound IPv6 with the member's
                               own address; unsolicited inbound to a member, blocked (IPv6:
                               passed when `inbound: open`); a TCP SYN's MSS clamped
    `verify.flows`             as written
    management ports           the TCP ports the gateway listens on from the WAN side now
                               (sshd's), and `verify.management_ports`: expected reachable
                               after a change exactly when they are reachable now

Where (ztplan.run): `plan` verifies the live state and the state the plan would produce (its
firewall and sysctl changes made in the twin by the providers themselves) and shows each
flow now -> after; `apply` refuses a plan that cuts a management flow that works now;
`drift` and `verify` check the live state. The twin (ztplan.twin) gives every verdict: no
rule is evaluated here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

from ztplan.errors import LiveReadError, TwinUnavailable, ZtplanError
from ztplan.host import Host
from ztplan.iptables import Table, is_legacy, jump_target, parse_save
from ztplan.model import Finding, FlowCheck, FlowVerdict, Verification
from ztplan.spec import Spec
from ztplan.twin import MEMBER, WAN, Flow, FlowKind, FlowResult, GatewayImage, read_image, verify
from ztplan.twin.image import FAMILIES

__all__ = ["PlanFailsInTwin", "field_warnings", "flows_for", "interfaces_of", "verify_spec"]


class PlanFailsInTwin(ZtplanError):
    """The plan's firewall or sysctl changes fail in the twin, a copy of this host: the
    apply would fail the same way (and roll back), so the plan says so first."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the plan's changes fail on a copy of this host: {cause}")


WEB = 443


def interfaces_of(spec: Spec) -> tuple[str, list[str]]:
    """(the ZeroTier interface pattern, the WAN interfaces) the twin is built around."""
    gateway = spec._shorthand
    zerotier = (spec.verify.zerotier_interface if spec.verify else None) or (
        gateway.zerotier_interface if gateway else "zt+"
    )
    wan = (spec.verify.wan_interface if spec.verify else None) or (
        gateway.wan_interface if gateway else None
    )
    return zerotier, [wan] if wan else []


def _shorthand_flows(spec: Spec) -> list[Flow]:
    gateway = spec._shorthand
    if gateway is None:
        return []
    flows: list[Flow] = []
    if gateway.ipv4 is not None:
        source = WAN if gateway.ipv4.nat == "masquerade" else gateway.ipv4.nat
        flows += [
            Flow("member to Internet v4", FlowKind.OUTBOUND, "ipv4", expected_source=source),
            Flow("Internet to member v4", FlowKind.INBOUND, "ipv4", port=WEB),
        ]
        if gateway.mss_clamp:
            flows.append(Flow("MSS clamped v4", FlowKind.MSS, "ipv4"))
    if gateway.ipv6 is not None:
        inbound: Literal["pass", "blocked"] = (
            "pass" if gateway.ipv6.inbound == "open" else "blocked"
        )
        flows += [
            Flow("member to Internet v6", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER),
            Flow("Internet to member v6", FlowKind.INBOUND, "ipv6", port=WEB, expect=inbound),
        ]
        if gateway.mss_clamp:
            flows.append(Flow("MSS clamped v6", FlowKind.MSS, "ipv6"))
    return flows


def _declared_flows(spec: Spec) -> list[Flow]:
    out = []
    for flow in spec.verify.flows if spec.verify else []:
        source = {"wan": WAN, "member": MEMBER}.get(flow.source or "", flow.source)
        out.append(
            Flow(
                flow.name,
                FlowKind(flow.kind),
                flow.family,
                flow.protocol,
                flow.port,
                expect=flow.expect,
                expected_source=source,
                max_mss=flow.max_mss,
            )
        )
    return out


def management_ports(spec: Spec, image: GatewayImage) -> list[tuple[str, int]]:
    """(family, port) of the TCP ports the gateway serves on its WAN address or on any."""
    wanted = set(spec.verify.management_ports if spec.verify else [])
    found: set[tuple[str, int]] = set()
    for family in FAMILIES:
        wan = image.wan(family)
        if wan is None:
            continue
        addresses = {"0.0.0.0", "::"} | {str(ipaddress.ip_interface(a).ip) for a in wan.addresses}
        for listener in image.listeners:
            if listener.family == family and listener.address in addresses:
                found.add((family, listener.port))
        found |= {(family, port) for port in wanted}
    return sorted(found)


def flows_for(spec: Spec, image: GatewayImage) -> list[Flow]:
    """The flows to check (module docstring); management flows last, expectation "pass"
    (`plan` expects of them after a change what it finds now)."""
    flows = _shorthand_flows(spec) + _declared_flows(spec)
    flows += [
        Flow(f"management tcp/{port} {family[-2:]}", FlowKind.MANAGEMENT, family, port=port)  # type: ignore[arg-type]
        for family, port in management_ports(spec, image)
    ]
    return flows


def _verdict(result: FlowResult) -> FlowVerdict:
    skipped = result.observed.startswith("not sent:")
    return FlowVerdict(
        ok=result.ok or skipped,
        passed=result.passed,
        observed=result.observed,
        culprit=str(result.culprit) if result.culprit is not None else None,
        skipped=skipped,
    )


def _check(flow: Flow, expect: str) -> FlowCheck:
    return FlowCheck(
        name=flow.name,
        kind=flow.kind.value,
        family=flow.family,
        protocol=flow.protocol,
        port=flow.port,
        expect=expect,  # type: ignore[arg-type]
    )


def verify_spec(
    spec: Spec,
    host: Host,
    prepare: Callable[[Host], None] | None = None,
    *,
    read: Callable[..., GatewayImage] = read_image,
    run: Callable[..., list[FlowResult]] = verify,
) -> tuple[Verification, GatewayImage | None]:
    """Verify the live state (`now`) and, with `prepare`, the state it makes in the twin
    (`after`). A twin that cannot be built here is a skipped verification, said once; an
    image the twin cannot reproduce is an error (ZtplanError), never a silent pass."""
    zerotier, wan = interfaces_of(spec)
    try:
        image = read(host, zerotier=zerotier, wan=wan)
        flows = flows_for(spec, image)
        if not flows:
            return Verification(
                skipped="no flows to check (no gateway: shorthand, no "
                "verify: flows, no management port listening)"
            ), image
        member_side = None if zerotier.endswith("+") else zerotier  # a pattern: the first
        now = run(image, flows, zerotier=member_side)
    except TwinUnavailable as error:
        return Verification(skipped=error.reason), None
    try:
        after = run(image, flows, zerotier=member_side, prepare=prepare) if prepare else None
    except LiveReadError as error:  # the plan's own changes fail on this kernel
        raise PlanFailsInTwin(str(error)) from None
    checks = []
    for i, flow in enumerate(flows):
        if flow.kind is FlowKind.MANAGEMENT:
            # Reachable afterwards exactly when reachable now: a port closed today is not
            # the change's fault, one open today must stay open.
            expect = "pass" if now[i].passed else "blocked"
            check = _check(flow, expect).model_copy(
                update={"now": _verdict(now[i]).model_copy(update={"ok": True})}
            )
            if after is not None:
                ok = after[i].passed == now[i].passed
                check = check.model_copy(
                    update={"after": _verdict(after[i]).model_copy(update={"ok": ok})}
                )
        else:
            check = _check(flow, flow.expectation).model_copy(update={"now": _verdict(now[i])})
            if after is not None:
                check = check.model_copy(update={"after": _verdict(after[i])})
        checks.append(check)
    return Verification(flows=checks, warnings=list(image.warnings)), image


def field_warnings(image: GatewayImage, forwarding: bool) -> list[Finding]:
    """What breaks gateways in the field and only the live host shows: a foreign base chain
    on the forward hook, iptables-legacy tables beside iptables-nft, Docker's DOCKER-USER
    holding rules that run before ztplan's."""
    findings = []
    if forwarding:
        for table in image.native_tables:
            if re.search(r"hook\s+forward", table.text):
                findings.append(
                    Finding(
                        severity="warning",
                        address=f"nftables.{table.family}.{table.name}",
                        message=f"the native nftables table {table.label} has a base chain on "
                        "the forward hook (another tool: firewalld, nftables.conf): it sees "
                        "every forwarded packet too, and may drop what ztplan's rules accept",
                    )
                )
    for family in sorted(image.legacy):
        findings.append(
            Finding(
                severity="warning",
                address=f"iptables-legacy.{family}",
                message=f"iptables-legacy {family} tables hold rules or policies beside "
                "iptables-nft: the kernel runs both, ztplan manages only iptables-nft, and "
                "a packet must pass both",
            )
        )
    for family, text in sorted(image.iptables.items()):
        saved = parse_save(text).get("filter", Table())
        rules = saved.rules.get("DOCKER-USER", [])
        busy = [r for r in rules if jump_target(r) != "RETURN" and not is_legacy(r)]
        if busy and any(jump_target(r) == "DOCKER-USER" for r in saved.rules.get("FORWARD", [])):
            findings.append(
                Finding(
                    severity="warning",
                    address=f"firewall.{family}.filter.FORWARD.jump",
                    message=f"Docker's DOCKER-USER chain ({family}) holds rules of its own "
                    f"(first: {busy[0]}) and Docker keeps its jump ahead of ztplan's: they "
                    "run before ztplan's rules",
                )
            )
    return findings
