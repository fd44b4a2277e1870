"""What decides a gateway's packet path, read from a live host: the input of a twin.

`read_image(host)` reads, through `Host.run`/`read_proc` only (so `--netns` and a replaying
host work) and without ever writing:

    iptables-nft      `iptables-nft-save`, `ip6tables-nft-save` (the text iptables-restore takes)
    nftables          `nft list ruleset`, split per table: the tables iptables-nft made (kept to
                      check, in the twin, that iptables-save showed all of them) and the
                      native ones (`table inet filter`, firewalld's `inet firewalld`, ...)
    iptables-legacy   `iptables-legacy-save`, `ip6tables-legacy-save`, only when they hold
                      a rule or a non-ACCEPT policy (the kernel runs both stacks)
    ipset             `ipset save`, only when a rule matches a set (`-m set`)
    sysctls           forwarding, rp_filter, disable_ipv6, proxy_ndp, proxy_arp: all, default
                      and per interface
    NDP proxies       the kernel's proxy neighbours (`ip -6 neigh show proxy`) and, when an
                      ndppd runs in the target's namespace, the prefixes of its config's rules
                      (ndppd answers neighbour discovery for members' addresses on the WAN
                      side: without it a members' prefix inside the WAN /64 is unreachable)
    interfaces        names, addresses with prefix length, MTU (`ip -j addr`); a role each:
                      zerotier (the name matches the ZeroTier pattern), wan (holds a default
                      route), other
    default routes    `ip -j route show default`, IPv4 and IPv6
    listeners         TCP sockets in LISTEN state (`/proc/net/tcp{,6}` as the target sees it)

Nothing here interprets a rule: the twin hands this text to the same kernel tools.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ztplan.errors import LiveReadError
from ztplan.host import CommandResult, Host, proc_sys_path

__all__ = [
    "DefaultRoute",
    "Family",
    "GatewayImage",
    "Interface",
    "Listener",
    "NdpProxy",
    "NftTable",
    "is_trivial_save",
    "parse_addresses",
    "ndppd_config_path",
    "parse_listeners",
    "parse_proxy_neighbours",
    "parse_routes",
    "read_image",
    "split_nft_ruleset",
]

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")
NFT_FAMILY = {"ipv4": "ip", "ipv6": "ip6"}
"""The nft family of the tables iptables-nft makes for each iptables family."""

SAVE = {"ipv4": "iptables-nft-save", "ipv6": "ip6tables-nft-save"}
LEGACY_SAVE = {"ipv4": "iptables-legacy-save", "ipv6": "ip6tables-legacy-save"}


@dataclass(frozen=True)
class Interface:
    name: str
    addresses: tuple[str, ...]
    """CIDRs as `ip` prints them (`10.6.6.2/22`), link-local IPv6 left out (the kernel
    makes its own on every link)."""
    mtu: int
    role: Literal["zerotier", "wan", "other"]
    up: bool = True

    def networks(self, family: Family) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        version = 4 if family == "ipv4" else 6
        nets = [ipaddress.ip_interface(a) for a in self.addresses]
        return [n for n in nets if n.version == version]


@dataclass(frozen=True)
class DefaultRoute:
    family: Family
    dev: str
    gateway: str | None
    """The next hop (`None`: a device route)."""
    metric: int | None = None


@dataclass(frozen=True)
class NftTable:
    family: str
    """nft's family: ip, ip6, inet, arp, bridge, netdev."""
    name: str
    text: str
    """The table as `nft list ruleset` prints it (loadable with `nft -f`)."""
    iptables: bool
    """Made by iptables-nft (its family and name are in `iptables-nft-save`): the twin loads
    it with iptables-restore and compares its listing with `text`."""

    @property
    def label(self) -> str:
        return f"{self.family} {self.name}"


@dataclass(frozen=True)
class Listener:
    family: Family
    address: str
    """The bound address; `0.0.0.0` / `::` for any."""
    port: int


@dataclass(frozen=True)
class NdpProxy:
    """Neighbour solicitations for `prefix` answered on `interface` by the gateway."""

    interface: str
    prefix: str
    """An address (`/128`) for a kernel entry, a prefix for an ndppd rule."""
    source: Literal["kernel", "ndppd"]


@dataclass(frozen=True)
class GatewayImage:
    """Everything that decides the gateway's packet path (see the module docstring)."""

    iptables: dict[str, str] = field(default_factory=dict)
    """Family -> iptables-nft-save text."""
    nft_tables: tuple[NftTable, ...] = ()
    """Every nftables table, iptables-nft's and native ones."""
    legacy: dict[str, str] = field(default_factory=dict)
    """Family -> iptables-legacy-save text, only for families whose legacy tables hold
    something."""
    ipsets: str | None = None
    """`ipset save` output, when the rules match sets."""
    sysctls: tuple[tuple[str, str], ...] = ()
    """(/proc/sys path, value) in the order they must be written: the global forwarding
    switches reset the per-interface ones, so they come first."""
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[DefaultRoute, ...] = ()
    listeners: tuple[Listener, ...] = ()
    ndp_proxies: tuple[NdpProxy, ...] = ()
    warnings: tuple[str, ...] = ()
    """What could not be read (a tool not installed) and so is not in the twin."""

    @property
    def native_tables(self) -> tuple[NftTable, ...]:
        return tuple(t for t in self.nft_tables if not t.iptables)

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def wan(self, family: Family) -> Interface | None:
        """The interface of the family's first default route (else the first WAN one)."""
        for route in self.routes:
            if route.family == family and self.interface(route.dev) is not None:
                return self.interface(route.dev)
        return next((i for i in self.interfaces if i.role == "wan" and i.networks(family)), None)

    def zerotier(self) -> list[Interface]:
        return [i for i in self.interfaces if i.role == "zerotier"]

    def sysctl(self, key: str) -> str | None:
        """The value of a key as sysctl(8) spells it (`net.ipv4.ip_forward`; a dot inside
        an interface's name written `/`: host.sysctl_name) as read, or None."""
        path = proc_sys_path(key)
        return next((v for p, v in self.sysctls if p == path), None)


# --- parsers (raw tool output in, values out) ----------------------------------------------


def _matches(name: str, pattern: str) -> bool:
    """iptables' interface wildcard: `zt+` is every name starting with `zt`."""
    return name.startswith(pattern[:-1]) if pattern.endswith("+") else name == pattern


def parse_addresses(text: str, zerotier: str, wan: Sequence[str]) -> list[Interface]:
    """`ip -j addr show` -> interfaces (loopback left out: every namespace has its own)."""
    out: list[Interface] = []
    for link in json.loads(text or "[]"):
        name = str(link["ifname"])
        if name == "lo":
            continue
        addresses = tuple(
            f"{a['local']}/{a['prefixlen']}"
            for a in link.get("addr_info", [])
            if a.get("family") in ("inet", "inet6") and a.get("scope") != "link"
        )
        role: Literal["zerotier", "wan", "other"] = (
            "zerotier" if _matches(name, zerotier) else "wan" if name in wan else "other"
        )
        up = "UP" in link.get("flags", [])
        out.append(Interface(name, addresses, int(link.get("mtu", 1500)), role, up))
    return out


def parse_routes(text: str, family: Family) -> list[DefaultRoute]:
    """`ip -j [-6] route show default` -> default routes (a multipath route: its first hop)."""
    out: list[DefaultRoute] = []
    for route in json.loads(text or "[]"):
        hop: dict[str, Any] = route
        if "dev" not in route and route.get("nexthops"):
            hop = route["nexthops"][0]
        if "dev" not in hop:
            continue
        metric = route.get("metric")
        out.append(
            DefaultRoute(
                family, str(hop["dev"]), hop.get("gateway"), None if metric is None else int(metric)
            )
        )
    return out


def _hex_address(text: str) -> str:
    """/proc/net/tcp prints addresses as 32-bit words in host (little-endian) order."""
    raw = b"".join(bytes.fromhex(text[i : i + 8])[::-1] for i in range(0, len(text), 8))
    return str(ipaddress.ip_address(raw))


def parse_listeners(text: str) -> list[Listener]:
    """/proc/net/tcp and /proc/net/tcp6 (concatenated) -> the sockets in LISTEN state (0A)."""
    seen: dict[Listener, None] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[0] == "sl" or fields[3] != "0A" or ":" not in fields[1]:
            continue
        address, port = fields[1].split(":")
        family: Family = "ipv4" if len(address) == 8 else "ipv6"
        seen[Listener(family, _hex_address(address), int(port, 16))] = None
    return list(seen)


_TABLE_HEAD = re.compile(r"^table (\S+) (\S+) \{")


def split_nft_ruleset(text: str) -> list[tuple[str, str, str]]:
    """`nft list ruleset` -> (family, name, text) per table (nft prints each table from
    `table FAMILY NAME {` at column 0 to a lone `}`)."""
    out: list[tuple[str, str, str]] = []
    current: list[str] | None = None
    head: tuple[str, str] = ("", "")
    for line in text.splitlines():
        match = _TABLE_HEAD.match(line)
        if current is None:
            if match:
                head = (match.group(1), match.group(2).strip('"'))
                current = [line]
            continue
        current.append(line)
        if line == "}":
            out.append((*head, "\n".join(current) + "\n"))
            current = None
    return out


def parse_proxy_neighbours(text: str) -> list[NdpProxy]:
    """`ip -6 -j neigh show proxy` -> the kernel's proxy entries."""
    return [
        NdpProxy(str(n["dev"]), f"{n['dst']}/128", "kernel")
        for n in json.loads(text or "[]")
        if "dst" in n and "dev" in n
    ]


def ndppd_config_path(cmdline: str) -> str:
    """The config an ndppd command line reads (`-c PATH`, `-cPATH`, `--config PATH`)."""
    argv = cmdline.split()
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return "/etc/ndppd.conf"


def _ndppd_proxies(host: Host, warnings: list[str]) -> list[NdpProxy]:
    """The rules of the ndppd daemons that run in the target's network namespace, read
    from the config each was started with."""
    from ztplan.ndppd_conf import NdppdConfError, parse_ndppd_conf

    found = _run(host, ["pgrep", "-a", "-x", "ndppd"])
    here = _run(host, ["readlink", "/proc/self/ns/net"])
    if found is None or here is None:
        return []
    out: list[NdpProxy] = []
    for line in found.stdout.splitlines():
        pid, _, cmdline = line.strip().partition(" ")
        theirs = _run(host, ["readlink", f"/proc/{pid}/ns/net"])
        if theirs is None or theirs.stdout.strip() != here.stdout.strip():
            continue  # another namespace's ndppd
        path = ndppd_config_path(cmdline)
        text = host.read_file(path)
        try:
            conf = parse_ndppd_conf(text or "")
        except NdppdConfError as error:
            warnings.append(
                f"ndppd (pid {pid}) runs with {path}, which ztplan cannot read: {error}"
            )
            continue
        if text is None:
            warnings.append(f"ndppd (pid {pid}) runs with {path}, which is gone")
        out += [
            NdpProxy(proxy.interface, rule.prefix, "ndppd")
            for proxy in conf.proxies
            for rule in proxy.rules
        ]
    return out


def is_trivial_save(text: str) -> bool:
    """An iptables-save dump with no rule and only ACCEPT policies: the same as nothing."""
    for line in text.splitlines():
        if line.startswith("-A "):
            return False
        if line.startswith(":") and line.split()[1:2] not in (["ACCEPT"], ["-"]):
            return False
    return True


def _saved_tables(text: str) -> set[str]:
    return {line[1:].strip() for line in text.splitlines() if line.startswith("*")}


# --- reading a host --------------------------------------------------------------------------


def _ok(done: CommandResult) -> bool:
    return done.returncode == 0


def _run(host: Host, argv: Sequence[str]) -> CommandResult | None:
    """A command that may be missing on the host (legacy tools, ipset): None then."""
    try:
        done = host.run(argv)
    except LiveReadError:
        return None
    return done if _ok(done) else None


def read_image(host: Host, *, zerotier: str = "zt+", wan: Sequence[str] = ()) -> GatewayImage:
    """Read a gateway's image from a live host; never writes.

    `zerotier` is the ZeroTier interface as iptables matches it (`zt+`); `wan` names the WAN
    interfaces (default: those that hold a default route).
    """
    warnings: list[str] = []
    iptables: dict[str, str] = {}
    for family in FAMILIES:
        done = host.run([SAVE[family]])
        if not _ok(done):
            raise LiveReadError("twin", f"{SAVE[family]} failed: {done.stderr.strip()}")
        iptables[family] = done.stdout

    owned = {(NFT_FAMILY[f], t) for f in FAMILIES for t in _saved_tables(iptables[f])}
    tables: list[NftTable] = []
    listed = _run(host, ["nft", "list", "ruleset"])
    if listed is None:
        warnings.append("nft is not installed or failed: native nftables tables were not read")
    else:
        for fam, name, text in split_nft_ruleset(listed.stdout):
            tables.append(NftTable(fam, name, text, (fam, name) in owned))

    legacy: dict[str, str] = {}
    for family in FAMILIES:
        saved = _run(host, [LEGACY_SAVE[family]])
        if saved is not None and not is_trivial_save(saved.stdout):
            legacy[family] = saved.stdout

    ipsets = None
    dumps = list(iptables.values()) + list(legacy.values())
    if any("-m set " in text or "--match-set" in text for text in dumps):
        saved = _run(host, ["ipset", "save"])
        if saved is None:
            warnings.append("the rules match ipsets but `ipset save` failed: sets not read")
        else:
            ipsets = saved.stdout

    routes: list[DefaultRoute] = []
    for family in FAMILIES:
        argv = ["ip", "-j", "-4" if family == "ipv4" else "-6", "route", "show", "default"]
        done = host.run(argv)
        if not _ok(done):
            raise LiveReadError("twin", f"{' '.join(argv)} failed: {done.stderr.strip()}")
        routes += parse_routes(done.stdout, family)

    done = host.run(["ip", "-j", "addr", "show"])
    if not _ok(done):
        raise LiveReadError("twin", f"ip -j addr show failed: {done.stderr.strip()}")
    wan_names = list(wan) or [r.dev for r in routes]
    interfaces = parse_addresses(done.stdout, zerotier, wan_names)

    tcp = host.run(["cat", "/proc/net/tcp", "/proc/net/tcp6"])  # tcp6 is absent without IPv6
    listeners = parse_listeners(tcp.stdout)

    proxies: list[NdpProxy] = []
    neighbours = _run(host, ["ip", "-6", "-j", "neigh", "show", "proxy"])
    if neighbours is not None:
        proxies += parse_proxy_neighbours(neighbours.stdout)
    proxies += _ndppd_proxies(host, warnings)

    return GatewayImage(
        iptables=iptables,
        nft_tables=tuple(tables),
        legacy=legacy,
        ipsets=ipsets,
        sysctls=tuple(_read_sysctls(host, interfaces)),
        interfaces=tuple(interfaces),
        routes=tuple(routes),
        listeners=tuple(listeners),
        ndp_proxies=tuple(proxies),
        warnings=tuple(warnings),
    )


def sysctl_paths(interfaces: Sequence[str]) -> list[str]:
    """The forwarding and reverse-path sysctls, in write order: a global forwarding switch
    rewrites every interface's, so the per-interface values go after it."""
    paths = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ]
    for name in ("all", "default", *interfaces):
        paths += [
            f"/proc/sys/net/ipv4/conf/{name}/rp_filter",
            f"/proc/sys/net/ipv4/conf/{name}/proxy_arp",
            f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6",
            f"/proc/sys/net/ipv6/conf/{name}/proxy_ndp",
        ]
    for name in ("default", *interfaces):
        paths += [
            f"/proc/sys/net/ipv4/conf/{name}/forwarding",
            f"/proc/sys/net/ipv6/conf/{name}/forwarding",
        ]
    return paths


def _read_sysctls(host: Host, interfaces: Sequence[Interface]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for path in sysctl_paths([i.name for i in interfaces]):
        try:
            out.append((path, host.read_proc(path).strip()))
        except OSError:
            continue  # IPv6 disabled in the kernel, an interface gone meanwhile
    return out
