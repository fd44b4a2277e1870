"""What dropped a flow's packet, said the way a human wrote it.

    iptables-nft   the rule's position in its chain (the handles, in order, from a netlink
                   rule dump: `nft -a list chain` spends ~0.3 s translating 10,000 iptables
                   rules) picks the n-th `-A CHAIN` line of `iptables-nft-save -t TABLE`
    native nft     the rule's own line in `nft -a list chain`, or the chain's policy
    legacy         iptables-legacy is not traced: the DROP/REJECT rules and DROP policies
                   whose counters rose during the test are named (the twin's counters start
                   at zero and only test packets pass)
Read from the twin's own rules, not the image: a `prepare` may have changed them. Every
verdict comes from the kernel; nothing here evaluates a rule.
"""

from __future__ import annotations

import re
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from ztplan.host import Host
from ztplan.twin.image import SAVE
from ztplan.twin.trace import FAMILIES, NETLINK_NETFILTER, TraceEvent, netlink_attributes

__all__ = [
    "Culprit",
    "chain_handles",
    "dump_request",
    "iptables_rule",
    "legacy_drops",
    "nft_chain_rules",
    "parse_rule_dump",
    "resolve",
]

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
        if self.verdict == "accept":
            text = f"let through by {text}"
        return f"{text} ({self.note})" if self.note else text


NFT_MSG_GETRULE = (10 << 8) | 7
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFTA_RULE_HANDLE = 3
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
        attrs = netlink_attributes(data, offset + 20, offset + length)
        if NFTA_RULE_HANDLE in attrs:
            handles.append(struct.unpack(">Q", attrs[NFTA_RULE_HANDLE])[0])
        offset += (length + 3) & ~3
    return handles, False


def chain_handles(namespace: str, family: str, table: str, chain: str) -> list[int]:
    """The chain's rule handles in order, straight from the kernel: `nft -a list chain`
    would print 10,000 iptables rules first (~0.3 s, translating every xt match)."""
    from ztplan.twin.netns import inside

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


def chain_lines(save: str, chain: str) -> list[str]:
    """The `-A CHAIN` lines of an iptables-save dump of one table, in order."""
    prefix = f"-A {chain} "
    return [line for line in save.splitlines() if line.startswith(prefix)]


def iptables_rule(save: str, chain: str, position: int) -> str | None:
    """The `position`-th (0-based) `-A CHAIN` line of an iptables-save dump of one table."""
    lines = chain_lines(save, chain)
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
        # Both read 10,000 rules at that size (~0.15 s each): side by side.
        with ThreadPoolExecutor(max_workers=1) as pool:
            saved = pool.submit(host.run, [SAVE[family], "-t", event.table])
            handles = chain_handles(host.netns, event.family, event.table, event.chain)
            dump = saved.result().stdout
        lines = chain_lines(dump, event.chain)
        if event.handle in handles and len(lines) == len(handles):  # one line per handle
            line = lines[handles.index(event.handle)]
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
