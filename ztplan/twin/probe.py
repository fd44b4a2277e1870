"""Real packets through the twin: echo servers and clients, all in this process.

Every socket is opened inside its namespace (twin.netns.inside) and then used from plain
threads, so a handful of flows costs a few milliseconds, not a Python start-up per flow.

Servers answer each TCP connection or UDP datagram with one line, `ADDRESS PORT MSS`: the
source they saw, and for TCP the MSS option of the SYN that reached them (TCP_SAVE_SYN: the
kernel keeps the SYN's headers for the accepted socket). A client's outcome is what its own
socket saw (connected, refused, unreachable, the server's line) plus what the server saw.

A client stops waiting when the trace reports its packet dropped: a dropped SYN is only
sent again after a second, a dropped UDP datagram never, so nothing could still arrive
within the timeout. Without a traced drop (iptables-legacy, routing) it waits it out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ztplan.twin.netns import inside
from ztplan.twin.trace import Packet, TraceEvent

__all__ = ["Outcome", "Probe", "ProbeRun", "Server", "syn_mss"]

TCP_SAVE_SYN = 27
TCP_SAVED_SYN = 28


@dataclass(frozen=True)
class Server:
    namespace: str
    family: Literal["ipv4", "ipv6"]
    protocol: Literal["tcp", "udp"]
    address: str
    """The address to bind (`0.0.0.0`, `::` or one address)."""
    port: int
    dual_stack: bool = False
    """An IPv6 `::` socket that also takes IPv4 (as a daemon listening on `[::]` does)."""


@dataclass(frozen=True)
class Probe:
    """One client: from `source`:`sport` in `namespace` to `destination`:`dport`."""

    namespace: str
    family: Literal["ipv4", "ipv6"]
    protocol: Literal["tcp", "udp"]
    source: str
    sport: int
    destination: str
    dport: int

    def owns(self, packet: Packet) -> bool:
        """A packet of this probe's connection, either way (ports are unique per run)."""
        return (
            packet.version == (4 if self.family == "ipv4" else 6)
            and packet.protocol == (6 if self.protocol == "tcp" else 17)
            and {packet.sport, packet.dport} == {self.sport, self.dport}
        )


@dataclass
class Outcome:
    answered: bool = False
    """The server's line came back to the client."""
    connected: bool = False
    """TCP: the handshake completed (UDP: same as answered)."""
    reply: tuple[str, int, int | None] | None = None
    """What the server saw: source address, source port, SYN MSS."""
    error: str | None = None
    """`refused (TCP reset)`, `unreachable (...)`, `dropped`, `no answer`."""
    arrived: list[tuple[str, int, int | None]] = field(default_factory=list)
    """What the server side recorded for this probe (its source port)."""
    events: list[TraceEvent] = field(default_factory=list)
    dropped: TraceEvent | None = None
    seconds: float = 0.0


def syn_mss(saved: bytes) -> int | None:
    """The MSS option of a SYN's saved IP + TCP headers (TCP_SAVED_SYN)."""
    if not saved:
        return None
    start = (saved[0] & 0x0F) * 4 if saved[0] >> 4 == 4 else 40
    if len(saved) < start + 20:
        return None
    end = start + (saved[start + 12] >> 4) * 4
    i = start + 20
    while i < min(end, len(saved)):
        kind = saved[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(saved):
            break
        length = saved[i + 1]
        if kind == 2 and length == 4:
            return int(struct.unpack_from(">H", saved, i + 2)[0])
        i += max(length, 2)
    return None


def _family(family: str) -> socket.AddressFamily:
    return socket.AF_INET if family == "ipv4" else socket.AF_INET6


def _error_text(code: int) -> str:
    if code == errno.ECONNREFUSED:
        return "refused (TCP reset or ICMP port unreachable)"
    if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM):
        return f"unreachable ({os.strerror(code)})"
    return os.strerror(code)


class ProbeRun:
    """Servers, then all probes at once; `outcomes[i]` belongs to `probes[i]`."""

    def __init__(self, servers: Sequence[Server], probes: Sequence[Probe], timeout: float) -> None:
        self.probes = list(probes)
        self.timeout = timeout
        self.outcomes = [Outcome() for _ in self.probes]
        self.icmp_drops: list[TraceEvent] = []
        """Dropped ICMP packets (no flow's own: neighbour discovery, errors)."""
        self._lock = threading.Lock()
        self._wake = [os.pipe() for _ in self.probes]
        self._servers: list[tuple[socket.socket, str]] = []
        self._clients: list[socket.socket] = []
        self._stop = threading.Event()
        try:
            for server in servers:
                self._servers.append((self._open_server(server), server.protocol))
            for probe in self.probes:
                self._clients.append(self._open_client(probe))
        except BaseException:
            self.close()
            raise

    # --- sockets -------------------------------------------------------------------------

    def _open_server(self, server: Server) -> socket.socket:
        kind = socket.SOCK_STREAM if server.protocol == "tcp" else socket.SOCK_DGRAM
        with inside(server.namespace):
            sock = socket.socket(_family(server.family), kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if server.family == "ipv6":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if server.dual_stack else 1)
        sock.bind((server.address, server.port))
        if server.protocol == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, 1)
            sock.listen(64)
        sock.setblocking(False)
        return sock

    def _open_client(self, probe: Probe) -> socket.socket:
        kind = socket.SOCK_STREAM if probe.protocol == "tcp" else socket.SOCK_DGRAM
        with inside(probe.namespace):
            sock = socket.socket(_family(probe.family), kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if probe.family == "ipv6":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((probe.source, probe.sport))
        sock.setblocking(False)
        return sock

    def close(self) -> None:
        for sock in [s for s, _ in self._servers] + self._clients:
            sock.close()
        for r, w in self._wake:
            os.close(r)
            os.close(w)
        self._servers, self._clients, self._wake = [], [], []

    # --- trace ---------------------------------------------------------------------------

    def on_event(self, event: TraceEvent) -> None:
        """Called by the trace thread: file the event under its probe; a drop wakes it."""
        if event.packet is None:
            return
        if event.packet.icmp is not None:
            if event.drops:
                with self._lock:
                    self.icmp_drops.append(event)
            return
        for i, probe in enumerate(self.probes):
            if probe.owns(event.packet):
                outcome = self.outcomes[i]
                with self._lock:
                    outcome.events.append(event)
                    if event.drops and outcome.dropped is None:
                        outcome.dropped = event
                        with contextlib.suppress(OSError):
                            os.write(self._wake[i][1], b"x")
                return

    # --- running -------------------------------------------------------------------------

    def run(self) -> list[Outcome]:
        serving = threading.Thread(target=self._serve, name="twin-servers", daemon=True)
        serving.start()
        clients = [
            threading.Thread(target=self._client, args=(i,), name=f"twin-probe-{i}", daemon=True)
            for i in range(len(self.probes))
        ]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        self._stop.set()
        serving.join()
        return self.outcomes

    def _serve(self) -> None:
        listening = {sock.fileno(): (sock, protocol) for sock, protocol in self._servers}
        while not self._stop.is_set():
            if not listening:
                return
            ready, _, _ = select.select(list(listening), [], [], 0.02)
            for fd in ready:
                sock, protocol = listening[fd]
                with contextlib.suppress(OSError):
                    if protocol == "tcp":
                        conn, peer = sock.accept()
                        with conn:
                            saved = conn.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)
                            self._answer(peer, syn_mss(saved), lambda b, c=conn: c.sendall(b))
                    else:
                        _, peer = sock.recvfrom(512)
                        self._answer(peer, None, lambda b, s=sock, p=peer: s.sendto(b, p))

    def _answer(self, peer: tuple[object, ...], mss: int | None, send: object) -> None:
        address, port = str(peer[0]), int(str(peer[1]))
        if address.startswith("::ffff:"):
            address = address.removeprefix("::ffff:")
        seen = (address, port, mss)
        with self._lock:
            for probe, outcome in zip(self.probes, self.outcomes, strict=True):
                if probe.sport == port:
                    outcome.arrived.append(seen)
        assert callable(send)
        send(f"{address} {port} {mss if mss is not None else '-'}\n".encode())

    def _client(self, i: int) -> None:
        probe, sock, outcome = self.probes[i], self._clients[i], self.outcomes[i]
        wake, fd = self._wake[i][0], sock.fileno()
        started = time.perf_counter()
        deadline = started + self.timeout

        def wait(for_write: bool) -> str:
            """'ready', 'dropped' or 'timeout'."""
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    return "timeout"
                r, w, _ = select.select(
                    [wake] if for_write else [fd, wake], [fd] if for_write else [], [], left
                )
                if wake in r and outcome.dropped is not None and fd not in r and fd not in w:
                    return "dropped"
                if r or w:
                    return "ready"

        try:
            target = (probe.destination, probe.dport)
            if probe.protocol == "tcp":
                code = sock.connect_ex(target)
                if code not in (0, errno.EINPROGRESS):
                    outcome.error = _error_text(code)
                    return
                state = wait(True)
                if state != "ready":
                    outcome.error = "dropped" if state == "dropped" else "no answer"
                    return
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    outcome.error = _error_text(code)
                    return
                outcome.connected = True
            else:
                sock.connect(target)  # so that ICMP errors come back on this socket
                sock.send(b"ztplan twin probe\n")
            state = wait(False)
            if state != "ready":
                outcome.error = "dropped" if state == "dropped" else "no answer"
                return
            try:
                data = sock.recv(512)
            except OSError as error:
                outcome.error = _error_text(error.errno or 0)
                return
            parts = data.decode(errors="replace").split()
            if len(parts) == 3:
                mss = None if parts[2] == "-" else int(parts[2])
                outcome.reply = (parts[0], int(parts[1]), mss)
                outcome.answered = outcome.connected = True
            elif not data:
                outcome.error = "closed without an answer"
        finally:
            outcome.seconds = time.perf_counter() - started
