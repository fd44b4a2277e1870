"""The guide's mistakes that span providers, found at plan time (DESIGN §4).

Each check reads the spec (and, where it says so, the interfaces of the target namespace)
and returns findings; none raises. Single-provider checks live in the providers' `check`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping, Sequence

from ztplan.model import Finding
from ztplan.spec import Spec, rule_words

_QUOTING = re.compile(r"['\"\\\\]")
"""What makes shlex's words differ from the rule's substrings (spec.rule_words)."""

__all__ = ["check_spec"]

Addresses = Mapping[str, Sequence[str]]


def _option(words: Sequence[str], *names: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in names:
            return words[i + 1]
    return None


def _rules(
    spec: Spec, family: str, table: str, chain: str, *needed: str
) -> Iterator[tuple[int, list[str]]]:
    """(index, words) of a chain's rules, but those that cannot hold each of the `needed`
    words: a rule that quotes or escapes nothing holds a word only as a substring, and a
    substring test is cheaper than the words of each of 100,000 rules."""
    fam = getattr(spec.firewall, family, None) if spec.firewall else None
    tab = getattr(fam, table, None) if fam else None
    if tab is None or chain not in tab.chains:
        return
    for i, rule in enumerate(tab.chains[chain].rules):
        if all(word in rule for word in needed) or _QUOTING.search(rule):
            yield i, rule_words(rule)


def _via_outside_routes(spec: Spec) -> list[Finding]:
    findings = []
    for network in spec.networks:
        nets = [ipaddress.ip_network(r.target) for r in network.routes or []]
        for i, route in enumerate(network.routes or []):
            if route.via is None:
                continue
            via = ipaddress.ip_address(route.via)
            if not any(via.version == n.version and via in n and n.prefixlen > 0 for n in nets):
                findings.append(
                    Finding(
                        severity="error",
                        address=f'controller.network["{network.id}"].routes[{i}]',
                        message=f"via {via} is outside every managed route of the network, so "
                        f"members cannot reach it; add the subnet that holds {via} as a route",
                    )
                )
    return findings


def _default_via_on_zerotier(spec: Spec, addresses: Addresses) -> list[Finding]:
    if spec.firewall is None and spec.ndppd is None:
        return []  # not a gateway's spec: the via is another host
    zerotier = {a for name, addrs in addresses.items() if name.startswith("zt") for a in addrs}
    findings = []
    for network in spec.networks:
        for route in network.routes or []:
            target = ipaddress.ip_network(route.target)
            if target.prefixlen == 0 and route.via and route.via not in zerotier:
                findings.append(
                    Finding(
                        severity="warning",
                        address=f'controller.network["{network.id}"].routes',
                        message=f"the default route goes via {route.via}, which is not an address "
                        "of this host's ZeroTier interface (zt*): members would send their traffic "
                        "to a host that is not this gateway",
                    )
                )
    return findings


def _snat_source_on_wan(spec: Spec, addresses: Addresses) -> list[Finding]:
    findings = []
    for i, words in _rules(spec, "ipv4", "nat", "POSTROUTING", "SNAT"):
        source = _option(words, "--to-source")
        if _option(words, "-j", "--jump") != "SNAT" or not source:
            continue
        first = source.split("-")[0].split(":")[0]
        wan = _option(words, "-o", "--out-interface")
        held = (
            addresses.get(wan, [])
            if wan and not wan.endswith("+")
            else [a for addrs in addresses.values() for a in addrs]
        )
        if first not in held:
            where = f"interface {wan}" if wan else "any interface"
            findings.append(
                Finding(
                    severity="warning",
                    address=f"firewall.ipv4.nat.POSTROUTING[{i}]",
                    message=f"SNAT --to-source {first} is not an address of {where} here; if the "
                    "public address is dynamic, use `-j MASQUERADE` instead",
                )
            )
    return findings


def _forward_drop_lets_zerotier_out(spec: Spec) -> list[Finding]:
    findings = []
    for family in ("ipv4", "ipv6"):
        fam = getattr(spec.firewall, family, None) if spec.firewall else None
        table = fam.filter if fam else None
        if table is None or table.policy.get("FORWARD") != "DROP":
            continue
        version = 4 if family == "ipv4" else 6
        subnets = [
            ipaddress.ip_network(r.target)
            for n in spec.networks
            for r in n.routes or []
            if ipaddress.ip_network(r.target).version == version
            and ipaddress.ip_network(r.target).prefixlen > 0
        ]
        out = False
        for _, words in _rules(spec, family, "filter", "FORWARD", "ACCEPT"):
            if _option(words, "-j", "--jump") != "ACCEPT" or "!" in words:
                continue
            iface = _option(words, "-i", "--in-interface") or ""
            source = _option(words, "-s", "--source")
            inside = False
            if source:
                try:
                    net = ipaddress.ip_network(source, strict=False)
                    inside = any(net.version == s.version and net.subnet_of(s) for s in subnets)  # type: ignore[arg-type]
                except ValueError:
                    inside = False
            if iface.startswith("zt") or inside:
                out = True
        if not out:
            findings.append(
                Finding(
                    severity="warning",
                    address=f"firewall.{family}.filter.policy.FORWARD",
                    message="FORWARD policy DROP, and no FORWARD rule accepts traffic from the "
                    "ZeroTier side (-i zt+ or -s <network subnet>): members lose the Internet",
                )
            )
    return findings


def _needs_host(spec: Spec) -> bool:
    gateway_default = (spec.firewall is not None or spec.ndppd is not None) and any(
        r.via and ipaddress.ip_network(r.target).prefixlen == 0
        for n in spec.networks
        for r in n.routes or []
    )
    return gateway_default or any(
        _option(words, "-j", "--jump") == "SNAT"
        for _, words in _rules(spec, "ipv4", "nat", "POSTROUTING", "SNAT")
    )


_ADDRESS_OPTIONS = ("-s", "--source", "-d", "--destination")


def _zero_prefix_on_an_address(spec: Spec) -> list[Finding]:
    """`-d 10.6.4.0/0` is "any address": the guide's own typo that opens a rule to all."""
    findings = []
    for family in ("ipv4", "ipv6"):
        fam = getattr(spec.firewall, family, None) if spec.firewall else None
        for table_name, table in (fam.tables() if fam else {}).items():
            for chain, chain_spec in table.chains.items():
                for i, rule in enumerate(chain_spec.rules):
                    if "/0" not in rule:
                        continue  # no value ends with it
                    words = rule.split()
                    for j, word in enumerate(words[:-1]):
                        value = words[j + 1]
                        if word not in _ADDRESS_OPTIONS or not value.endswith("/0"):
                            continue
                        address = value.split("/")[0].lstrip("!")
                        try:
                            if ipaddress.ip_address(address).is_unspecified:
                                continue  # 0.0.0.0/0 says what it means
                        except ValueError:
                            continue
                        findings.append(
                            Finding(
                                severity="warning",
                                address=f"firewall.{family}.{table_name}.{chain}[{i}]",
                                message=f"{word} {value} matches every address (a /0 prefix); "
                                f"did you mean a longer prefix for {address}?",
                            )
                        )
    return findings


def _inbound_v6_open(spec: Spec) -> list[Finding]:
    """An IPv6 FORWARD accept from the WAN side to the members' prefix with no state match:
    every host on the Internet reaches every member (the guide's appendix made it stateful)."""
    findings = []
    prefixes = [
        ipaddress.ip_network(r.target)
        for n in spec.networks
        for r in n.routes or []
        if ipaddress.ip_network(r.target).version == 6 and ipaddress.ip_network(r.target).prefixlen
    ]
    for i, words in _rules(spec, "ipv6", "filter", "FORWARD", "ACCEPT", "-d"):
        if _option(words, "-j", "--jump") != "ACCEPT" or "--state" in words or "--ctstate" in words:
            continue
        target = _option(words, "-d", "--destination")
        iface = _option(words, "-i", "--in-interface") or ""
        if target is None or iface.startswith("zt"):
            continue
        try:
            net = ipaddress.ip_network(target, strict=False)
        except ValueError:
            continue
        if any(net.version == p.version and (net.overlaps(p)) for p in prefixes) or not prefixes:
            findings.append(
                Finding(
                    severity="warning",
                    address=f"firewall.ipv6.filter.FORWARD[{i}]",
                    message=f"accepts all inbound IPv6 to {net} from the WAN side, not only "
                    "replies: every host on the Internet reaches the members; add "
                    "`-m state --state RELATED,ESTABLISHED` (the gateway shorthand's "
                    "`inbound: stateful`) unless that is what you want",
                )
            )
    return findings


def check_spec(
    spec: Spec,
    addresses: Addresses | Callable[[], Addresses | None] | None,
    file: str = "spec",
) -> list[Finding]:
    """All cross-provider findings. `addresses` (or a function that reads them, called only
    when a check needs the host: reading costs ~0.1 s) None means they are unknown; `file`
    names the spec in findings that point at a line."""
    findings = _via_outside_routes(spec) + _forward_drop_lets_zerotier_out(spec)
    findings += _zero_prefix_on_an_address(spec) + _inbound_v6_open(spec)
    if spec._shorthand is not None and spec._shorthand.forward_policy == "ACCEPT":
        findings.append(
            Finding(
                severity="warning",
                address="gateway.forward_policy",
                message="FORWARD policy ACCEPT with NAT: anyone next to the WAN can route "
                "through this gateway into the ZeroTier network (an open router); the "
                "default DROP forwards only what the gateway's rules accept",
            )
        )
    if callable(addresses):
        addresses = addresses() if _needs_host(spec) else None
    if addresses is not None:
        findings += _default_via_on_zerotier(spec, addresses) + _snat_source_on_wan(spec, addresses)
    return findings
