"""Who dropped a packet in the twin: nftables trace events, and the rule behind them.

The twin marks its TCP/UDP packets with `meta nftrace set 1` (twin_build.TRACE_RULESET);
for every base chain such a packet passes, the kernel sends NFT_MSG_TRACE messages to the
netlink group NFNLGRP_NFTRACE of that namespace: the rule that matched (table, chain, rule
handle, verdict), or the chain's policy, and with the first message of each chain the
packet's network and transport headers. `TraceListener` reads that group directly (what
`nft monitor trace` does, without nft's 0.3 s ruleset cache at 20,000 rules and without
its race: the socket is subscribed before the first packet leaves).

A drop is mapped back to what a human wrote:
    iptables-nft   the chain's rule handles, in order (`nft -a list chain`), give the rule's
                   position; the n-th `-A CHAIN` line of `iptables-nft-save -t TABLE` is it
                   (the handles come from a netlink rule dump: nft's listing of 10,000
                   iptables rules takes ~0.3 s)
    native nft     the rule's own line in `nft -a list chain`, or the chain's policy
    legacy         iptables-legacy is not traced: when no nft chain dropped the packet,
                   the legacy DROP/REJECT rules and policies whose counters rose are named
Every verdict comes from the kernel; nothing here evaluates a rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ztplan.host import Host

__all__ = [
    "Culprit",
    "Packet",
    "TraceEvent",
    "TraceListener",
    "decode_messages",
    "iptables_rule",
    "legacy_drops",
    "nft_chain_rules",
]

NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFT_MSG_TRACE = (10 << 8) | 17  # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_TRACE

# enum nft_trace_attributes (linux/netfilter/nf_tables.h)
A_TABLE, A_CHAIN, A_HANDLE, A_TYPE, A_VERDICT, A_ID = 1, 2, 3, 4, 5, 6
A_NETWORK, A_TRANSPORT, A_NFPROTO, A_POLICY = 8, 9, 15, 16
TYPES = {1: "policy", 2: "return", 3: "rule"}
VERDICTS = {0: "drop", 1: "accept", 2: "stolen", 3: "queue", 4: "repeat", 5: "stop"}
VERDICTS |= {-1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


@dataclass(frozen=True)
class Packet:
    """The headers the kernel reported: enough to tell which flow a packet belongs to."""

    version: int
    protocol: int
    """6 TCP, 17 UDP."""
    source: str
    destination: str
    sport: int
    dport: int
    icmp: int | None = None
    """ICMP / ICMPv6: the message type (ports are 0)."""

    @property
    def neighbour_discovery(self) -> bool:
        """ICMPv6 router/neighbour solicitation or advertisement (133-136): without them
        IPv6 cannot resolve a next hop, whatever the forwarding rules say."""
        return self.version == 6 and self.icmp in (133, 134, 135, 136)


@dataclass(frozen=True)
class TraceEvent:
    id: int
    family: str
    """The table's nft family: ip, ip6, inet, ..."""
    table: str
    chain: str
    type: str
    """rule (a rule matched), policy (the chain's policy applied), return, packet (the
    headers, as a chain starts)."""
    verdict: str
    """drop, accept, continue, jump, goto, return, ..."""
    handle: int | None = None
    target: str | None = None
    """The chain jumped or gone to."""
    packet: Packet | None = None
    """The headers; every event carries those of its packet as last reported."""

    @property
    def drops(self) -> bool:
        return self.verdict == "drop"

    @property
    def where(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


Stack = Literal["iptables-nft", "nftables", "iptables-legacy", "kernel"]


@dataclass(frozen=True)
class Culprit:
    """What dropped a flow's packet (or, for a flow expected blocked, what let it through)."""

    stack: Stack
    table: str = ""
    """`ipv4 filter` (iptables), `inet filter` (nft), empty for the kernel."""
    chain: str = ""
    rule: str | None = None
    """The iptables-save line (`-A FORWARD -j DROP`) or the nft rule; None for a policy."""
    policy: str | None = None
    verdict: str = "drop"
    note: str = ""

    def __str__(self) -> str:
        if self.stack == "kernel":
            return self.note
        tool = {"iptables-nft": "iptables", "nftables": "nftables table"}.get(
            self.stack, self.stack
        )
        where = f"{tool} {self.table}".strip()
        if self.chain:
            where += f" chain {self.chain}"
        what = (
            f"policy {self.policy}" if self.policy else f"rule `{self.rule}`" if self.rule else ""
        )
        text = f"{where}: {what}" if what else where
        return f"{text} ({self.note})" if self.note else text


# --- decoding ---------------------------------------------------------------------------------


def _attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[start + 4 : start + length]
        start += (length + 3) & ~3
    return out


def _packet(nfproto: int, network: bytes, transport: bytes) -> Packet | None:
    if nfproto == 2 and len(network) >= 20:
        version, protocol, addresses = 4, network[9], (network[12:16], network[16:20])
    elif nfproto == 10 and len(network) >= 40:
        version, protocol, addresses = 6, network[6], (network[8:24], network[24:40])
    else:
        return None
    source, destination = (str(ipaddress.ip_address(a)) for a in addresses)
    if protocol in (1, 58) and transport:  # ICMP, ICMPv6: the type, no ports
        return Packet(version, protocol, source, destination, 0, 0, transport[0])
    if len(transport) < 4:
        return None
    sport, dport = struct.unpack_from(">HH", transport)
    return Packet(version, protocol, source, destination, sport, dport)


def decode_messages(data: bytes, last: dict[int, Packet] | None = None) -> list[TraceEvent]:
    """One netlink read -> its trace events. `last` (trace id -> packet) carries the headers
    from the first event of a chain to the events after it that do not repeat them."""
    last = {} if last is None else last
    events: list[TraceEvent] = []
    offset = 0
    while offset + 20 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 20:
            break
        if kind == NFT_MSG_TRACE:
            family = FAMILIES.get(data[offset + 16], str(data[offset + 16]))
            attrs = _attributes(data, offset + 20, offset + length)
            trace_id = struct.unpack(">I", attrs.get(A_ID, b"\0\0\0\0"))[0]
            nfproto = struct.unpack(">I", attrs[A_NFPROTO])[0] if A_NFPROTO in attrs else 0
            if A_NETWORK in attrs:
                packet = _packet(nfproto, attrs[A_NETWORK], attrs.get(A_TRANSPORT, b""))
                if packet is not None:
                    last[trace_id] = packet
            kind_name = TYPES.get(struct.unpack(">I", attrs.get(A_TYPE, b"\0\0\0\0"))[0], "?")
            verdict, target = "continue", None
            if kind_name == "policy" and A_POLICY in attrs:
                verdict = VERDICTS.get(struct.unpack(">I", attrs[A_POLICY])[0] & 0xFF, "?")
            elif A_VERDICT in attrs:
                nested = _attributes(attrs[A_VERDICT], 0, len(attrs[A_VERDICT]))
                code = struct.unpack(">i", nested.get(1, b"\xff\xff\xff\xff"))[0]
                verdict = VERDICTS.get(code if code < 0 else code & 0xFF, str(code))
                if 2 in nested:
                    target = nested[2].rstrip(b"\0").decode()
            handle = struct.unpack(">Q", attrs[A_HANDLE])[0] if A_HANDLE in attrs else None
            if kind_name == "rule" and handle is None:
                kind_name = "packet"  # the headers alone, at the start of a chain
            events.append(
                TraceEvent(
                    id=trace_id,
                    family=family,
                    table=attrs.get(A_TABLE, b"").rstrip(b"\0").decode(),
                    chain=attrs.get(A_CHAIN, b"").rstrip(b"\0").decode(),
                    type=kind_name,
                    verdict=verdict,
                    handle=handle,
                    target=target,
                    packet=last.get(trace_id),
                )
            )
        offset += (length + 3) & ~3
    return events


class TraceListener:
    """Trace events of the namespace the socket was made in (make it inside the twin's
    gateway: `with inside(gw): TraceListener(...)`); a thread reads them and hands each to
    `on_event` as it comes (the probes stop waiting for a flow whose packet was dropped)."""

    def __init__(self, on_event: Callable[[TraceEvent], None]) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTRACE)
        self.sock.settimeout(0.05)
        self.on_event = on_event
        self.events: list[TraceEvent] = []
        self.overflow = False
        self._stop = threading.Event()
        self._last: dict[int, Packet] = {}
        self._thread = threading.Thread(target=self._read, name="twin-trace", daemon=True)

    def start(self) -> TraceListener:
        self._thread.start()
        return self

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:  # ENOBUFS: the kernel dropped events; say so, keep reading
                self.overflow = True
                continue
            for event in decode_messages(data, self._last):
                self.events.append(event)
                self.on_event(event)

    def stop(self) -> list[TraceEvent]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.events


# --- back to the rules ------------------------------------------------------------------------

NFT_MSG_GETRULE = (10 << 8) | 7
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
FAMILY_NUMBERS = {name: number for number, name in FAMILIES.items()}


def _nul(text: str) -> bytes:
    return text.encode() + b"\0"


def dump_request(family: str, table: str, chain: str) -> bytes:
    """NFT_MSG_GETRULE, dump, filtered by table and chain."""
    attrs = b""
    for kind, payload in ((1, _nul(table)), (2, _nul(chain))):
        raw = struct.pack("=HH", 4 + len(payload), kind) + payload
        attrs += raw + b"\0" * (-len(raw) % 4)
    body = struct.pack("=BBH", FAMILY_NUMBERS[family], 0, 0) + attrs
    return (
        struct.pack("=IHHII", 16 + len(body), NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        + body
    )


def parse_rule_dump(data: bytes) -> tuple[list[int], bool]:
    """One read of a rule dump -> (rule handles in chain order, the dump is done)."""
    handles: list[int] = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return handles, True
        attrs = _attributes(data, offset + 20, offset + length)
        if A_HANDLE in attrs:  # NFTA_RULE_HANDLE is 3 too
            handles.append(struct.unpack(">Q", attrs[A_HANDLE])[0])
        offset += (length + 3) & ~3
    return handles, False


def chain_handles(namespace: str, family: str, table: str, chain: str) -> list[int]:
    """The chain's rule handles in order, straight from the kernel: `nft -a list chain`
    would print 10,000 iptables rules first (~0.3 s, translating every xt match)."""
    from ztplan.twin_netns import inside

    with inside(namespace):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    with sock:
        sock.settimeout(2.0)
        sock.send(dump_request(family, table, chain))
        handles: list[int] = []
        done = False
        while not done:
            more, done = parse_rule_dump(sock.recv(1 << 20))
            handles += more
    return handles


_HANDLE = re.compile(r"^\t\t(.*) # handle (\d+)$")


def nft_chain_rules(listing: str) -> list[tuple[int, str]]:
    """`nft -a list chain ...` -> (handle, rule text) in chain order, counters left out."""
    out: list[tuple[int, str]] = []
    for line in listing.splitlines():
        match = _HANDLE.match(line)
        if match:
            text = re.sub(r" ?counter packets \d+ bytes \d+", "", match.group(1)).strip()
            out.append((int(match.group(2)), text))
    return out


def iptables_rule(save: str, chain: str, position: int) -> str | None:
    """The `position`-th (0-based) `-A CHAIN` line of an iptables-save dump of one table."""
    prefix = f"-A {chain} "
    lines = [line for line in save.splitlines() if line.startswith(prefix)]
    return lines[position] if 0 <= position < len(lines) else None


def resolve(host: Host, event: TraceEvent, native: set[str]) -> Culprit:
    """The culprit for a trace event (a drop, or the accept that let a packet through),
    read from the twin's own rules (a `prepare` may have changed them since the image)."""
    label = f"{event.family} {event.table}"
    iptables = event.family in ("ip", "ip6") and label not in native
    family = "ipv4" if event.family == "ip" else "ipv6"
    verdict = event.verdict
    if event.type == "policy":
        if iptables:
            table = f"{family} {event.table}"
            return Culprit(
                "iptables-nft", table, event.chain, policy=verdict.upper(), verdict=verdict
            )
        return Culprit("nftables", label, event.chain, policy=verdict, verdict=verdict)
    if iptables and host.netns is not None:
        handles = chain_handles(host.netns, event.family, event.table, event.chain)
        if event.handle in handles:
            save = "iptables-nft-save" if family == "ipv4" else "ip6tables-nft-save"
            dump = host.run([save, "-t", event.table]).stdout
            count = sum(1 for x in dump.splitlines() if x.startswith(f"-A {event.chain} "))
            line = iptables_rule(dump, event.chain, handles.index(event.handle))
            if line is not None and count == len(handles):
                table = f"{family} {event.table}"
                return Culprit("iptables-nft", table, event.chain, rule=line, verdict=verdict)
    listing = host.run(["nft", "-a", "list", "chain", event.family, event.table, event.chain])
    text = dict(nft_chain_rules(listing.stdout)).get(event.handle or -1)
    stack: Stack = "iptables-nft" if iptables else "nftables"
    table = f"{family} {event.table}" if iptables else label
    return Culprit(
        stack, table, event.chain, rule=text or f"handle {event.handle}", verdict=verdict
    )


def legacy_drops(save: str, family: str) -> list[Culprit]:
    """`iptables-legacy-save -c` -> the DROP/REJECT rules and DROP policies that counted
    packets (the twin's counters start at zero, and only test packets pass)."""
    out: list[Culprit] = []
    table = ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith(":"):
            match = re.match(r"^:(\S+) (DROP) \[(\d+):\d+\]", line)
            if match and int(match.group(3)) > 0:
                out.append(
                    Culprit("iptables-legacy", f"{family} {table}", match.group(1), policy="DROP")
                )
        else:
            match = re.match(r"^\[(\d+):\d+\] (-A (\S+) .*-j (DROP|REJECT)\b.*)$", line)
            if match and int(match.group(1)) > 0:
                out.append(
                    Culprit(
                        "iptables-legacy", f"{family} {table}", match.group(3), rule=match.group(2)
                    )
                )
    return out
