"""Build a twin of a gateway out of three network namespaces and load its image.

    member (mem)                 gateway twin (gw)                    Internet (net)
      ztm0 10.6.6.3/22 <-veth->  ztXXXX 10.6.6.2/22 (as on the gateway)
                                 eth0 198.51.100.7/24  <-veth->   wan0 198.51.100.1/24 (next hop)
      default via 10.6.6.2       default via 198.51.100.1          lo 203.0.113.1 (a remote host)
                                 docker0, ... (every other         default via 198.51.100.7
                                 interface, its peer parked)

The gateway twin has the gateway's interface names, addresses and MTUs, its default routes,
forwarding and rp_filter sysctls, and its whole packet filter (twin.load). The addresses
around it come from twin.layout.

IPv6 duplicate address detection is off in the twin (1 s of tentative addresses otherwise).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztplan.errors import TwinLoadFailed
from ztplan.host import LocalHost, sysctl_key, sysctl_name
from ztplan.twin.image import FAMILIES, Family, GatewayImage
from ztplan.twin.layout import Layout, free_host, plan_layout
from ztplan.twin.load import load_filters
from ztplan.twin.netns import (
    TwinNames,
    check_available,
    create_namespace,
    inside,
    new_names,
    remove_namespace,
    remove_stale_twins,
)

__all__ = ["Twin", "build_twin"]

IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04


@dataclass
class Twin:
    names: TwinNames
    layout: Layout
    image: GatewayImage
    native: set[str] = field(default_factory=set)
    """Labels (`inet filter`) of the tables loaded with `nft -f`: their culprits are named
    in nft's syntax; the others map back to iptables-save lines."""
    routes_back: tuple[str, ...] = ()
    """Addresses the Internet side routes to the gateway (SNAT addresses a provider routes
    to it without the gateway holding them on the link)."""
    remotes: tuple[str, ...] = ()
    """More hosts on the Internet side (flows' own `remote` addresses)."""
    trace: bool = True

    @property
    def gateway(self) -> LocalHost:
        return LocalHost(self.names.gw)


def _write_sysctl(path: str, value: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise TwinLoadFailed(sysctl_key(path), str(error)) from None
    return True


def _index(ipr: Any, name: str) -> int:
    (index,) = ipr.link_lookup(ifname=name)
    return int(index)


def _add_address(ipr: Any, index: int, cidr: str) -> None:
    address, length = cidr.split("/")
    v6 = ":" in address
    ipr.addr(
        "add",
        index=index,
        address=address,
        prefixlen=int(length),
        **({"flags": IFA_F_NODAD} if v6 else {}),
    )


def _add_default(
    ipr: Any, family: Family, index: int, gateway: str | None, metric: int | None = None
) -> None:
    args: dict[str, Any] = {"dst": "0.0.0.0/0" if family == "ipv4" else "::/0", "oif": index}
    if gateway:
        args["gateway"] = gateway
        args["flags"] = RTNH_F_ONLINK  # a next hop outside the interface's own subnet, too
    if metric is not None:
        args["priority"] = metric
    ipr.route("add", family=2 if family == "ipv4" else 10, **args)


def _wire(twin: Twin) -> None:
    """Links, addresses and routes of the three namespaces."""
    from pyroute2 import IPRoute

    image, layout, names = twin.image, twin.layout, twin.names
    for name in names.all():
        with inside(name):
            for family_dir in ("all", "default"):
                _write_sysctl(f"/proc/sys/net/ipv6/conf/{family_dir}/accept_dad", "0")
    with inside(names.gw):
        gw = IPRoute()
    with inside(names.mem):
        mem = IPRoute()
    with inside(names.net):
        net = IPRoute()
    try:
        wan_peers: dict[str, str] = {}
        for number, iface in enumerate(image.interfaces):
            if iface.name == layout.zerotier:
                peer, where, ns = "ztm0", names.mem, mem
            elif iface.name in layout.wan_interface.values():
                peer, where, ns = f"wan{len(wan_peers)}", names.net, net
                wan_peers[iface.name] = peer
            else:
                peer, where, ns = f"park{number}", names.net, net
            gw.link(
                "add",
                ifname=iface.name,
                kind="veth",
                mtu=iface.mtu,
                peer={"ifname": peer, "net_ns_fd": f"/run/netns/{where}", "mtu": iface.mtu},
            )
            index = _index(gw, iface.name)
            for cidr in iface.addresses:
                _add_address(gw, index, cidr)
            gw.link("set", index=index, state="up" if iface.up else "down")
            if peer.startswith(("ztm", "wan")):
                ns.link("set", index=_index(ns, peer), state="up")
        for ns in (gw, mem, net):
            ns.link("set", index=_index(ns, "lo"), state="up")
        _wire_member(twin, mem)
        _wire_internet(twin, net, wan_peers)
        for route in image.routes:
            if image.interface(route.dev) is not None:
                with contextlib.suppress(Exception):  # a duplicate of one already added
                    _add_default(
                        gw, route.family, _index(gw, route.dev), route.gateway, route.metric
                    )
    finally:
        for ipr in (gw, mem, net):
            ipr.close()


def _wire_member(twin: Twin, mem: Any) -> None:
    zt = twin.image.interface(twin.layout.zerotier)
    assert zt is not None
    index = _index(mem, "ztm0")
    for family, address in twin.layout.member.items():
        net = next(n for n in zt.networks(family) if ipaddress.ip_address(address) in n.network)
        _add_address(mem, index, f"{address}/{net.network.prefixlen}")
        _add_default(mem, family, index, str(net.ip))


def _host_length(address: str) -> int:
    return 32 if ipaddress.ip_address(address).version == 4 else 128


def _wire_internet(twin: Twin, net: Any, wan_peers: dict[str, str]) -> None:
    image, layout = twin.image, twin.layout
    lo = _index(net, "lo")
    for remote in dict.fromkeys([*layout.remote.values(), *twin.remotes]):
        _add_address(net, lo, f"{remote}/{_host_length(remote)}")
    for family in FAMILIES:
        name = layout.wan_interface.get(family)
        if name is None or name not in wan_peers:
            continue
        wan = image.interface(name)
        assert wan is not None
        index = _index(net, wan_peers[name])
        route = next((r for r in image.routes if r.family == family and r.dev == name), None)
        hop = route.gateway if route is not None else None
        own = wan.networks(family)
        if hop is None:  # a device route: take a free address of the WAN subnet
            taken = {str(n.ip) for n in own}
            hop = free_host(own[0], taken) if own else None
        if hop is None:
            continue
        inner = next((n for n in own if ipaddress.ip_address(hop) in n.network), None)
        length = inner.network.prefixlen if inner else _host_length(hop)
        if ipaddress.ip_address(hop).is_link_local:
            length = 64
        with contextlib.suppress(Exception):  # v4 and v6 next hops on one link: added once
            _add_address(net, index, f"{hop}/{length}")
        back = layout.wan.get(family)
        if back is None:
            continue
        _add_default(net, family, index, back)
        own_addresses = {str(n.ip) for i in image.interfaces for n in i.networks(family)}
        for address in twin.routes_back:
            if address in own_addresses or ipaddress.ip_address(address).version != (
                4 if family == "ipv4" else 6
            ):
                continue  # the gateway answers for its own addresses on the link
            net.route(
                "add",
                dst=f"{address}/{_host_length(address)}",
                gateway=back,
                oif=index,
                flags=RTNH_F_ONLINK,
                family=2 if family == "ipv4" else 10,
            )


def _load_sysctls(twin: Twin) -> None:
    with inside(twin.names.gw):
        for path, value in twin.image.sysctls:
            _write_sysctl(path, value)


def _load_ndp_proxies(twin: Twin) -> None:
    """The gateway's NDP proxying, as kernel proxy entries in the twin: its own kernel
    entries where proxy_ndp makes them live, and for an ndppd rule whose prefix holds the
    twin's member, an entry for that address (ndppd's static, iface and auto methods all
    answer for a member that is there) with proxy_ndp on for its interface.

    A kernel entry's proxy_ndp is the image's (it is live, or it was not copied); an ndppd
    rule's interface gets proxy_ndp 1, which ndppd itself does not need."""
    image, member = twin.image, twin.layout.member.get("ipv6")
    lines: list[str] = []
    on: set[str] = set()
    for proxy in image.ndp_proxies:
        if image.interface(proxy.interface) is None:
            continue
        if proxy.source == "kernel":
            live = "1" in (
                image.sysctl("net.ipv6.conf.all.proxy_ndp"),
                image.sysctl(f"net.ipv6.conf.{sysctl_name(proxy.interface)}.proxy_ndp"),
            )
            if live:
                lines.append(f"neigh add proxy {proxy.prefix.split('/')[0]} dev {proxy.interface}")
                on.add(proxy.interface)
        elif member is not None and ipaddress.ip_address(member) in ipaddress.ip_network(
            proxy.prefix, strict=False
        ):
            lines.append(f"neigh add proxy {member} dev {proxy.interface}")
            on.add(proxy.interface)
    with inside(twin.names.gw):
        for name in sorted(on):
            _write_sysctl(f"/proc/sys/net/ipv6/conf/{name}/proxy_ndp", "1")
            # The kernel answers for a proxied address after a random delay of up to
            # proxy_delay (0.8 s), longer than a twin's flow waits; ndppd answers at once.
            _write_sysctl(f"/proc/sys/net/ipv6/neigh/{name}/proxy_delay", "0")
    if lines:
        done = twin.gateway.run(
            ["ip", "-6", "-batch", "-"], input="\n".join(dict.fromkeys(lines)) + "\n"
        )
        if done.returncode != 0:
            raise TwinLoadFailed(
                "the NDP proxy entries", done.stderr.strip() or "ip -6 neigh failed"
            )


@contextlib.contextmanager
def build_twin(
    image: GatewayImage,
    zerotier: str | None = None,
    *,
    routes_back: Sequence[str] = (),
    remotes: Sequence[str] = (),
    trace: bool = True,
) -> Iterator[Twin]:
    """A loaded twin of `image`, removed on leaving the block (also on an error or a
    KeyboardInterrupt; after a SIGKILL, by the next twin's `remove_stale_twins`)."""
    check_available()
    remove_stale_twins()
    layout = plan_layout(image, zerotier)
    twin = Twin(new_names(), layout, image, set(), tuple(routes_back), tuple(remotes), trace)
    made: list[str] = []
    try:
        for name in twin.names.all():
            create_namespace(name)
            made.append(name)
        try:
            _wire(twin)
        except (OSError, ValueError) as error:  # pyroute2's NetlinkError is an OSError
            raise TwinLoadFailed("the gateway's interfaces and routes", str(error)) from None
        _load_sysctls(twin)
        _load_ndp_proxies(twin)
        twin.native = load_filters(twin.gateway, image, trace)
        yield twin
    finally:
        for name in made:
            remove_namespace(name)
