"""Build a twin of a gateway out of three network namespaces and load its image.

    member (mem)                 gateway twin (gw)                    Internet (net)
      ztm0 10.6.6.3/22 <-veth->  ztXXXX 10.6.6.2/22 (as on the gateway)
                                 eth0 198.51.100.7/24  <-veth->   wan0 198.51.100.1/24 (next hop)
      default via 10.6.6.2       default via 198.51.100.1          lo 203.0.113.1 (a remote host)
                                 docker0, ... (every other         default via 198.51.100.7
                                 interface, its peer parked)

The gateway twin has the gateway's interface names, addresses and MTUs, its default routes,
forwarding and rp_filter sysctls, and its whole packet filter: iptables-nft tables through
iptables-nft-restore, native nftables tables through `nft -f`, iptables-legacy tables through
iptables-legacy-restore, ipsets through `ipset restore`. Then each iptables-nft table's nft
listing is compared with the gateway's own: iptables-save cannot print every nft rule (a
native `table ip filter` with a set match comes out as a bare `-j DROP`), and a twin that
differs silently would answer for another gateway. A difference is loaded from the nft
listing instead, or is a TwinLoadFailed naming the table. The answer depends on the image
only, so it is computed once per image and process.

IPv6 duplicate address detection is off in the twin (1 s of tentative addresses otherwise).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ztplan.errors import TwinLoadFailed
from ztplan.host import CommandResult, LocalHost
from ztplan.twin_image import FAMILIES, Family, GatewayImage, NftTable
from ztplan.twin_netns import (
    TwinNames,
    check_available,
    create_namespace,
    inside,
    new_names,
    remove_namespace,
    remove_stale_twins,
)

__all__ = [
    "TRACE_TABLE",
    "Layout",
    "Twin",
    "build_twin",
    "nft_shape",
    "plan_layout",
    "strip_owner_flag",
]

TRACE_TABLE = "ztplan_twin_trace"
TRACE_RULESET = f"""table inet {TRACE_TABLE} {{
\tchain pre {{
\t\ttype filter hook prerouting priority -2000000000; policy accept;
\t\tmeta l4proto {{ tcp, udp, icmp, ipv6-icmp }} meta nftrace set 1
\t}}
\tchain out {{
\t\ttype filter hook output priority -2000000000; policy accept;
\t\tmeta l4proto {{ tcp, udp, icmp, ipv6-icmp }} meta nftrace set 1
\t}}
}}
"""
"""Marks the twin's TCP, UDP and ICMP packets (all of them are test packets, or the
neighbour discovery they need) for nftables tracing, before every other chain; accepting
here decides nothing for the later chains."""

RESTORE = {"ipv4": "iptables-nft-restore", "ipv6": "ip6tables-nft-restore"}
LEGACY_RESTORE = {"ipv4": "iptables-legacy-restore", "ipv6": "ip6tables-legacy-restore"}
REMOTE = {
    "ipv4": ("203.0.113.1", "192.0.2.1", "198.18.0.1", "100.64.0.1"),
    "ipv6": ("2001:db8:ffff::1", "2001:db8:fffe::1", "3fff:ffff::1"),
}
"""Candidate addresses of "a host on the Internet" (documentation ranges first); the first
that is not in any of the gateway's networks is used."""

IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04


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


# --- pure helpers ---------------------------------------------------------------------------


def strip_owner_flag(text: str) -> str:
    """A table's `flags owner` (and `persist`) tie it to the process that loaded it: in the
    twin that is `nft -f`, which exits at once, so the flags go."""

    def fix(match: re.Match[str]) -> str:
        kept = [f for f in match.group(1).split(",") if f.strip() not in ("owner", "persist")]
        return f"\tflags {','.join(kept)}\n" if kept else ""

    return re.sub(r"^\tflags ([^\n]*)\n", fix, text, flags=re.M)


def nft_shape(text: str) -> dict[str, list[str]]:
    """A table's nft listing as block name -> lines, counters zeroed and blocks unordered:
    what must be equal for two tables to filter alike. An empty base chain with policy
    accept filters nothing (iptables-nft makes its built-in chains only when first used),
    so it is left out."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("\t") and not line.startswith("\t\t") and stripped.endswith("{"):
            current = blocks.setdefault(stripped, [])
        elif current is not None and line.startswith("\t\t"):
            current.append(re.sub(r"counter packets \d+ bytes \d+", "counter", stripped))
    return {
        name: lines
        for name, lines in blocks.items()
        if not (
            name.startswith("chain ")
            and len(lines) == 1
            and lines[0].startswith("type ")
            and lines[0].endswith("policy accept;")
        )
    }


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if "Error" in line or "error" in line:
            return re.sub(r"^\S*: ", "", line.strip())
    return stderr.strip().splitlines()[0] if stderr.strip() else "failed"


def _free_host(
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
        wanted = zerotier or "a ZeroTier interface (zt+)"
        raise TwinLoadFailed("the gateway's interfaces", f"no {wanted} on the gateway")
    zt = next((i for i in zts if i.addresses), zts[0])
    taken = {str(ipaddress.ip_interface(a).ip) for i in image.interfaces for a in i.addresses}
    taken |= {r.gateway for r in image.routes if r.gateway}
    networks = [ipaddress.ip_interface(a).network for i in image.interfaces for a in i.addresses]
    layout = Layout(zerotier=zt.name)
    for family in FAMILIES:
        for net in _global_first(zt.networks(family)):
            member = _free_host(net, taken)
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


# --- building --------------------------------------------------------------------------------


def _write_sysctl(path: str, value: str) -> bool:
    try:
        with open(path, "w", encoding="ascii") as handle:
            handle.write(value)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise TwinLoadFailed(
            path.removeprefix("/proc/sys/").replace("/", "."), str(error)
        ) from None
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
            hop = _free_host(own[0], taken) if own else None
        if hop is None:
            continue
        inner = next((n for n in own if ipaddress.ip_address(hop) in n.network), None)
        length = inner.network.prefixlen if inner else (32 if family == "ipv4" else 128)
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


def _run_all(jobs: Sequence[tuple[str, Callable[[], CommandResult]]]) -> None:
    """Run the loaders side by side (v4 and v6 restores of 10,000 rules each take ~0.3 s
    of kernel time); a failure names its table and quotes the tool."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: (job[0], job[1]()), jobs))
    for what, done in results:
        if done.returncode != 0:
            raise TwinLoadFailed(what, _first_error(done.stderr))


def _load_filters(twin: Twin) -> None:
    image, host = twin.image, twin.gateway
    if image.ipsets:
        done = host.run(["ipset", "restore", "-exist"], input=image.ipsets)
        if done.returncode != 0:
            raise TwinLoadFailed("the ipsets", _first_error(done.stderr))
    natives = [t for t in image.native_tables if t.label != f"inet {TRACE_TABLE}"]
    nft_text = "".join(strip_owner_flag(t.text) for t in natives)
    nft_text += TRACE_RULESET if twin.trace else ""
    jobs: list[tuple[str, Callable[[], CommandResult]]] = []
    if nft_text:
        jobs.append(
            ("the native nftables tables", lambda: host.run(["nft", "-f", "-"], input=nft_text))
        )
    for family in FAMILIES:
        text = image.iptables.get(family, "")
        if text.strip():
            jobs.append(
                (
                    f"the {family} iptables-nft tables ({RESTORE[family]})",
                    _runner(host, [RESTORE[family]], text),
                )
            )
        legacy = image.legacy.get(family)
        if legacy:
            jobs.append(
                (
                    f"the {family} iptables-legacy tables",
                    _runner(host, [LEGACY_RESTORE[family]], legacy),
                )
            )
    try:
        _run_all(jobs)
    except TwinLoadFailed as error:
        if error.what == "the native nftables tables":
            _name_bad_table(host, natives, error.detail)
        raise
    twin.native = {t.label for t in natives}
    _check_iptables_tables(twin)


def _runner(host: LocalHost, argv: list[str], text: str) -> Callable[[], CommandResult]:
    return lambda: host.run(argv, input=text)


def _name_bad_table(host: LocalHost, tables: Sequence[Any], detail: str) -> None:
    """`nft -f` of all native tables failed: load them one by one (`--check`) to name one."""
    for table in tables:
        done = host.run(["nft", "--check", "-f", "-"], input=strip_owner_flag(table.text))
        if done.returncode != 0:
            raise TwinLoadFailed(f"nftables table {table.label}", _first_error(done.stderr))


_FAITHFUL: dict[str, bool] = {}
"""Digest of (iptables-save text, nft listing) of a table -> whether restoring the one gives
the other. It depends on the image alone, not on the twin (a plan verifies the live image
and then the planned state of the same image), and nft's listing of 10,000 iptables rules
costs ~0.4 s, so each answer is kept for the life of the process."""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _check_iptables_tables(twin: Twin) -> None:
    host = twin.gateway
    tables = [t for t in twin.image.nft_tables if t.iptables]
    family_of = {"ip": "ipv4", "ip6": "ipv6"}
    keys = {
        t.label: _digest(twin.image.iptables.get(family_of.get(t.family, ""), ""), t.text)
        for t in tables
    }
    unknown = [t for t in tables if keys[t.label] not in _FAITHFUL]

    def faithful(table: NftTable) -> bool:
        done = host.run(["nft", "list", "table", *table.label.split()])
        return done.returncode == 0 and nft_shape(done.stdout) == nft_shape(table.text)

    if unknown:
        with ThreadPoolExecutor(max_workers=min(4, len(unknown))) as pool:
            for table, same in zip(unknown, pool.map(faithful, unknown), strict=True):
                _FAITHFUL[keys[table.label]] = same
    for table in tables:
        if _FAITHFUL[keys[table.label]]:
            continue
        # iptables-save did not show all of this table: load nft's own listing instead.
        host.run(["nft", "delete", "table", *table.label.split()])
        loaded = host.run(["nft", "-f", "-"], input=strip_owner_flag(table.text))
        if loaded.returncode != 0:
            raise TwinLoadFailed(
                f"nftables table {table.label}",
                "iptables-nft-save does not show all of it (rules added with nft?) and nft "
                f"cannot load its listing back: {_first_error(loaded.stderr)}",
            )
        twin.native.add(table.label)


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
        _load_filters(twin)
        yield twin
    finally:
        for name in made:
            remove_namespace(name)
