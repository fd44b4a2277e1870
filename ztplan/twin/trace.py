"""nftables trace events of the twin's gateway, read from the kernel.

The twin marks its TCP, UDP and ICMP packets with `meta nftrace set 1` (twin.load's
TRACE_RULESET); for every base chain such a packet passes, the kernel sends NFT_MSG_TRACE
messages to the netlink group NFNLGRP_NFTRACE of that namespace: the rule that matched
(table, chain, rule handle, verdict), or the chain's policy, and with the first message of
each chain the packet's network and transport headers. `TraceListener` reads that group
directly: what `nft monitor trace` does, without nft's 0.3 s ruleset cache at 20,000 rules
and without its race (this socket is subscribed before the first packet leaves).
twin.culprit maps an event back to the rule a human wrote.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Packet", "TraceEvent", "TraceListener", "decode_messages", "netlink_attributes"]

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


# --- decoding ---------------------------------------------------------------------------------


def netlink_attributes(data: bytes, start: int, end: int) -> dict[int, bytes]:
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
            attrs = netlink_attributes(data, offset + 20, offset + length)
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
                nested = netlink_attributes(attrs[A_VERDICT], 0, len(attrs[A_VERDICT]))
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
