"""The `gateway:` shorthand -> ordinary resources: the guide's exit gateway as data, safe by
default.

    NAT        ipv4.nat.POSTROUTING: no NAT inside the subnet, then SNAT or MASQUERADE
    IPv4       ipv4.filter: FORWARD policy DROP; out from the ZeroTier side (the subnet); in
               from the WAN side only replies (the guide left FORWARD open: an open router)
    IPv6       ipv6.filter: FORWARD policy DROP; out from the ZeroTier side; in from the WAN
               side only replies (stateful, the default) or open
    MSS        mangle FORWARD: TCP SYNs clamped to the path MTU, both families (ZeroTier's
               MTU is 2800, a WAN's 1500: TCP stalls where path MTU discovery fails)
    sysctl     net.ipv4.ip_forward, net.ipv6.conf.all.forwarding
    ndppd      a proxy on the WAN interface for the members' prefix
    controller the subnet, 0.0.0.0/0 via the gateway, the members' IPv6 prefix; the pool;
               mtu and dns as given

Resources written out beside the shorthand are kept; one written in both places is an
error naming both, never a silent merge.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from ztplan.errors import SpecError
from ztplan.spec import Gateway, Spec, format_field, line_of

__all__ = ["dump_spec", "expand_gateway", "gateway_parts"]


def gateway_parts(gw: Gateway) -> dict[str, Any]:
    """The resources the shorthand stands for, in the spec's own (YAML) shape."""
    zt, wan = gw.zerotier_interface, gw.wan_interface
    routes: list[dict[str, Any]] = []
    network: dict[str, Any] = {"id": gw.network, "routes": routes}
    firewall: dict[str, Any] = {}
    sysctl: dict[str, int] = {}
    proxies: list[dict[str, Any]] = []
    if gw.ipv4 is not None:
        subnet = gw.ipv4.subnet
        nat = (
            f"-s {subnet} -o {wan} -j MASQUERADE"
            if gw.ipv4.nat == "masquerade"
            else f"-s {subnet} -j SNAT --to-source {gw.ipv4.nat}"
        )
        firewall["ipv4"] = {
            "nat": {"POSTROUTING": [f"-s {subnet} -d {subnet} -j RETURN", nat]},
            "filter": {
                "policy": {"FORWARD": gw.forward_policy},
                "FORWARD": [
                    f"-i {zt} -s {subnet} -j ACCEPT",
                    f"-i {wan} -d {subnet} -m state --state RELATED,ESTABLISHED -j ACCEPT",
                ],
            },
        }
        routes += [{"target": subnet}, {"target": "0.0.0.0/0", "via": gw.ipv4.address}]
        if gw.ipv4.pool:
            hosts = ipaddress.IPv4Network(subnet)
            network["ip_pools"] = [{"start": str(hosts[1]), "end": str(hosts[-2])}]
        sysctl["net.ipv4.ip_forward"] = 1
    if gw.ipv6 is not None:
        prefix = gw.ipv6.prefix
        inbound = f"-i {wan} -d {prefix}" + (
            " -m state --state RELATED,ESTABLISHED" if gw.ipv6.inbound == "stateful" else ""
        )
        firewall["ipv6"] = {
            "filter": {
                "policy": {"FORWARD": "DROP"},
                "FORWARD": [f"-i {zt} -s {prefix} -j ACCEPT", f"{inbound} -j ACCEPT"],
            }
        }
        members = gw.ipv6.ndp_proxy.prefix if gw.ipv6.ndp_proxy else prefix
        routes.append({"target": members})
        sysctl["net.ipv6.conf.all.forwarding"] = 1
        if gw.ipv6.ndp_proxy is not None:
            rule = {"prefix": gw.ipv6.ndp_proxy.prefix, "method": gw.ipv6.ndp_proxy.method}
            proxies.append({"interface": wan, "rules": [rule]})
    if gw.mss_clamp:
        clamp = "-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
        for family in firewall:
            firewall[family]["mangle"] = {"FORWARD": [clamp]}
    if gw.mtu is not None:
        network["mtu"] = gw.mtu
    if gw.dns is not None:
        network["dns"] = gw.dns.model_dump()
    parts: dict[str, Any] = {"networks": [network], "firewall": firewall, "sysctl": sysctl}
    if proxies:
        parts["ndppd"] = {"proxies": proxies}
    return parts


def expand_gateway(spec: Spec, file: str) -> Spec:
    """The spec with its `gateway:` block replaced by the resources it stands for."""
    gw = spec.gateway
    if gw is None:
        return spec
    data = dump_data(spec)
    data.pop("gateway", None)
    parts = gateway_parts(gw)

    def conflict(explicit: tuple[Any, ...], made_by: tuple[str, ...]) -> SpecError:
        return SpecError(
            file,
            format_field(explicit),
            f"also set by {format_field(made_by)} (the gateway shorthand); write it in one "
            "place: drop it here, or write the gateway out (ztplan validate --expand)",
            line_of(spec, explicit),
        )

    networks = data.setdefault("networks", [])
    for i, network in enumerate(networks):
        if network["id"] == gw.network:
            raise conflict(("networks", i, "id"), ("gateway", "network"))
    networks.extend(parts["networks"])

    for family, tables in parts["firewall"].items():
        fam = data.setdefault("firewall", {}).setdefault(family, {})
        for table_name, table in tables.items():
            have = fam.setdefault(table_name, {})
            for key, value in table.items():
                if key == "policy":
                    for chain, policy in value.items():
                        if chain in have.get("policy", {}):
                            raise conflict(
                                ("firewall", family, table_name, "policy", chain),
                                ("gateway", family),
                            )
                        have.setdefault("policy", {})[chain] = policy
                elif key in have:
                    raise conflict(("firewall", family, table_name, key), ("gateway", family))
                else:
                    have[key] = value

    for key, value in parts["sysctl"].items():
        current = data.setdefault("sysctl", {}).get(key)
        if current is not None and str(current) != str(value):
            raise conflict(("sysctl", key), ("gateway",))
        data["sysctl"][key] = value

    for proxy in parts.get("ndppd", {}).get("proxies", []):
        ndppd = data.setdefault("ndppd", {})
        for i, have in enumerate(ndppd.get("proxies", [])):
            if have["interface"] == proxy["interface"]:
                raise conflict(
                    ("ndppd", "proxies", i, "interface"), ("gateway", "ipv6", "ndp_proxy")
                )
        ndppd.setdefault("proxies", []).append(proxy)

    expanded = Spec.model_validate(data)
    expanded._text = spec._text
    expanded._shorthand = gw
    return expanded


def dump_data(spec: Spec) -> dict[str, Any]:
    """The spec as plain data in the YAML's own shape (chains beside `policy`, not under
    `chains`; a chain that is only a rule list written as a list)."""
    data: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in ("networks", "sysctl"):
        if not data.get(key):
            data.pop(key, None)
    if data.get("persist") == "none":  # the default: not written
        data.pop("persist")
    for family in ("ipv4", "ipv6"):
        fam = data.get("firewall", {}).get(family) or {}
        for table_name, table in list(fam.items()):
            flat: dict[str, Any] = {}
            if table.get("policy"):
                flat["policy"] = table["policy"]
            for chain, chain_spec in table.get("chains", {}).items():
                flat[chain] = chain_spec if chain_spec.get("exclusive") else chain_spec["rules"]
            fam[table_name] = flat
    return data


class _Dumper(yaml.SafeDumper):
    """Quotes strings that begin with `-` (rules), as a person would write them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if value.startswith("-") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_spec(spec: Spec) -> str:
    """YAML of a spec, as a person would write it (for `validate --expand`)."""
    return yaml.dump(dump_data(spec), Dumper=_Dumper, sort_keys=False, width=100)
