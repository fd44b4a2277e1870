"""Load a gateway's packet filter into the twin's gateway, exactly or not at all.

    ipsets            `ipset restore` (first: rules refer to them)
    native nftables   one `nft -f` of every native table (`flags owner` dropped: the owner
                      would be that short-lived nft) plus the twin's trace table
    iptables-nft      `iptables-nft-restore` / `ip6tables-nft-restore` of the saved text
    iptables-legacy   `iptables-legacy-restore` / `ip6tables-legacy-restore`
run side by side. A failure is a TwinLoadFailed naming the table and quoting the tool.

Then each iptables-nft table's nft listing is compared with the gateway's own:
iptables-save cannot print every nft rule (a native `table ip filter` with a set match
comes out as a bare `-j DROP`), and a twin that differs silently would answer for another
gateway. A difference is loaded from the nft listing instead, or is a TwinLoadFailed.
The answer depends on the image only, so it is computed once per image and process.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from ztplan.errors import TwinLoadFailed
from ztplan.host import CommandResult, Host
from ztplan.twin.image import FAMILIES, GatewayImage, NftTable

__all__ = [
    "TRACE_RULESET",
    "TRACE_TABLE",
    "first_error",
    "load_filters",
    "nft_shape",
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


def first_error(stderr: str) -> str:
    """The line of a tool's stderr that says what is wrong: nft's `Error: ...` (with the
    input line it points at), iptables-restore's own message (with its `line N`)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "Error:" in line:
            where = re.match(r"^\S+?:(\d+):", line)
            message = line[line.index("Error:") + len("Error: ") :]
            return f"{message} (line {where.group(1)})" if where else message
    at = next(
        (m.group(1) for x in lines if (m := re.match(r"Error occurred at line: (\d+)", x))), None
    )
    for line in lines:
        text = re.sub(r"^\S*tables\S*( v[\d.]+)?( \([^)]*\))?: ", "", line)
        if not text.startswith(("Error occurred at line", "Try `")):
            return f"{text} (line {at})" if at else text
    return "failed"


def _run_all(jobs: Sequence[tuple[str, Callable[[], CommandResult]]]) -> None:
    """Run the loaders side by side (v4 and v6 restores of 10,000 rules each take ~0.3 s
    of kernel time); a failure names its table and quotes the tool."""
    if not jobs:
        return
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = list(pool.map(lambda job: (job[0], job[1]()), jobs))
    for what, done in results:
        if done.returncode != 0:
            raise TwinLoadFailed(what, first_error(done.stderr))


def load_filters(host: Host, image: GatewayImage, trace: bool = True) -> set[str]:
    """Load `image`'s filters through `host` (the twin's gateway); return the labels of the
    tables loaded with nft (their culprits are named in nft's syntax)."""
    if image.ipsets:
        done = host.run(["ipset", "restore", "-exist"], input=image.ipsets)
        if done.returncode != 0:
            raise TwinLoadFailed("the ipsets", first_error(done.stderr))
    natives = [t for t in image.native_tables if t.label != f"inet {TRACE_TABLE}"]
    nft_text = "".join(strip_owner_flag(t.text) for t in natives)
    nft_text += TRACE_RULESET if trace else ""
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
    return {t.label for t in natives} | _check_iptables_tables(host, image)


def _runner(host: Host, argv: list[str], text: str) -> Callable[[], CommandResult]:
    return lambda: host.run(argv, input=text)


def _name_bad_table(host: Host, tables: Sequence[NftTable], detail: str) -> None:
    """`nft -f` of all native tables failed: load them one by one (`--check`) to name one."""
    for table in tables:
        done = host.run(["nft", "--check", "-f", "-"], input=strip_owner_flag(table.text))
        if done.returncode != 0:
            raise TwinLoadFailed(f"nftables table {table.label}", first_error(done.stderr))


_FAITHFUL: dict[str, bool] = {}
"""Digest of (iptables-save text, nft listing) of a table -> whether restoring the one gives
the other. It depends on the image alone, not on the twin (a plan verifies the live image
and then the planned state of the same image), and nft's listing of 10,000 iptables rules
costs ~0.4 s, so each answer is kept for the life of the process."""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _check_iptables_tables(host: Host, image: GatewayImage) -> set[str]:
    """The iptables-nft tables that had to be loaded from nft's listing instead."""
    tables = [t for t in image.nft_tables if t.iptables]
    family_of = {"ip": "ipv4", "ip6": "ipv6"}
    keys = {
        t.label: _digest(image.iptables.get(family_of.get(t.family, ""), ""), t.text)
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
    native: set[str] = set()
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
                f"cannot load its listing back: {first_error(loaded.stderr)}",
            )
        native.add(table.label)
    return native
