"""iptables and ip6tables: read with one `*-save`, apply with one `*-restore --noflush`.

Ownership: every rule ztplan writes carries the comment match `-m comment --comment ztplan`;
rules without it are foreign and only ever deleted from a chain declared `exclusive`.

Normalisation lets the kernel parse: the spec's rules are loaded into a scratch network
namespace and read back with `*-save`, so equivalent spellings compare equal and a typo is
a plan-time error with the rule's spec path. Results are cached by the digest of the input.

Addresses:
    firewall.ipv4.filter.policy.FORWARD             a built-in chain's policy
    firewall.ipv4.filter.FORWARD["-i zt+ -j ACCEPT"] an owned rule (normalised, tag removed)
    firewall.ipv4.filter.FORWARD                    the order of the chain's owned rules
    firewall.ipv4.filter.FORWARD.foreign["..."]     a foreign rule (unmanaged, or purged)
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from pydantic import JsonValue

from ztplan.errors import LiveReadError, SpecError
from ztplan.host import Host, LocalHost
from ztplan.model import Action, Address, Change, Finding, Resource, Snapshot
from ztplan.spec import FAMILIES, TABLES, Spec, format_field, line_of

__all__ = ["TAG", "Firewall", "KernelNormaliser", "is_owned", "parse_save", "rule_address", "untag"]

TAG = "ztplan"
TAG_ARGS = f"-m comment --comment {TAG}"
"""How iptables-save prints the ownership tag (unquoted: the word needs no quotes)."""

CACHE_VERSION = 2
"""Bumped when the cached spellings could differ (a change in how rules are tagged)."""

TOOLS = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}


# --- parsing iptables-save -----------------------------------------------------------


@dataclass
class Table:
    policies: dict[str, str] = field(default_factory=dict)
    """Chain -> policy ('-' for user chains)."""
    rules: dict[str, list[str]] = field(default_factory=dict)
    """Chain -> rule texts as saved, without `-A CHAIN `."""


def parse_save(text: str) -> dict[str, Table]:
    """iptables-save output -> table name -> Table (comments and counters dropped)."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), Table())
        elif current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chain, policy = (line[1:].split() + ["-"])[:2]
            current.policies[chain] = policy
            current.rules.setdefault(chain, [])
        elif line.startswith("-A "):
            chain, _, rule = line[3:].partition(" ")
            current.rules.setdefault(chain, []).append(rule)
    return tables


_TAG_HEAD = TAG_ARGS + " "
_TAG_MID = " " + TAG_ARGS + " "
_TAG_TAIL = " " + TAG_ARGS


def is_owned(rule: str) -> bool:
    return _TAG_MID in rule or rule.startswith(_TAG_HEAD) or rule.endswith(_TAG_TAIL)


def untag(rule: str) -> str:
    """The rule without its ownership tag (iptables-save's spelling has single spaces)."""
    if rule.startswith(_TAG_HEAD):
        return rule[len(_TAG_HEAD) :]
    if _TAG_MID in rule:
        return rule.replace(_TAG_MID, " ", 1)
    return rule.removesuffix(_TAG_TAIL)


def rule_address(family: str, table: str, chain: str, rule: str, foreign: bool = False) -> Address:
    kind = ".foreign" if foreign else ""
    # JSON-quoted; the f-string is the same text when nothing needs escaping (and ~10x faster).
    quoted = (
        f'"{rule}"'
        if '"' not in rule and "\\" not in rule
        else json.dumps(rule, ensure_ascii=False)
    )
    return f"firewall.{family}.{table}.{chain}{kind}[{quoted}]"


def _chain_address(family: str, table: str, chain: str) -> Address:
    return f"firewall.{family}.{table}.{chain}"


def _split_address(address: Address) -> tuple[str, str, str]:
    family, table, rest = address.split(".", 3)[1:]
    return family, table, re.split(r"[.\[]", rest, maxsplit=1)[0]


# --- normalisation in a scratch namespace ---------------------------------------------

SpecRule = tuple[str, str, str, str, tuple[str | int, ...]]
"""(family, table, chain, rule text, spec path) of one desired rule."""

_MISSING_CHAIN = re.compile(r"Chain '([^']+)' does not exist|Couldn't load target `([^']+)'")


class RuleRejected(Exception):
    """A desired rule the kernel will not take as one rule; `path` is its place in the spec."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class KernelNormaliser:
    """Turns a family's desired rules into the kernel's spelling, via a scratch netns.

    The rules go in tagged (as apply will write them), so the spelling is exactly what a
    later iptables-save shows once the tag is taken out again."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._known: dict[str, dict[str, str]] = {}
        """family -> "table<TAB>rule as written" -> kernel spelling (untagged)."""

    def _cache_file(self, family: str) -> Path | None:
        return self.cache_dir / f"normalise-{family}.json" if self.cache_dir else None

    def _load(self, family: str) -> dict[str, str]:
        if family not in self._known:
            cache = self._cache_file(family)
            known: dict[str, str] = {}
            try:
                if cache is not None and cache.exists():
                    data = json.loads(cache.read_text())
                    if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                        known = {str(k): str(v) for k, v in data.get("rules", {}).items()}
            except (OSError, ValueError):
                known = {}  # a broken cache only costs time
            self._known[family] = known
        return self._known[family]

    def _save(self, family: str) -> None:
        cache = self._cache_file(family)
        if cache is None:
            return
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "rules": self._known[family]}))
            os.replace(tmp, cache)
        except OSError:
            pass  # a cache that cannot be written only costs time

    def __call__(
        self, family: str, rules: Sequence[SpecRule], chains: Mapping[str, set[str]]
    ) -> list[str]:
        """The kernel's spelling of each rule (without the ownership tag), in input order.

        A rule's spelling depends only on its family, table and text, so each is cached on
        its own: after a one-rule edit of a long spec only that rule visits the kernel.
        """
        known = self._load(family)
        keys = [f"{table}\t{rule}" for _, table, _, rule, _ in rules]
        missing = [r for r, key in zip(rules, keys, strict=True) if key not in known]
        if missing:
            with _scratch_namespace() as host:
                spelled = self._round_trip(host, family, missing, chains)
            for rule, text in zip(missing, spelled, strict=True):
                known[f"{rule[1]}\t{rule[3]}"] = text
            self._save(family)
        return [known[key] for key in keys]

    def _round_trip(
        self, host: Host, family: str, rules: Sequence[SpecRule], chains: Mapping[str, set[str]]
    ) -> list[str]:
        save, restore = TOOLS[family]
        # A jump to a chain the spec does not declare (one a foreign tool owns, say) would
        # fail in the empty scratch namespace; declare such chains there and try again.
        extra: set[str] = set()
        for _ in range(64):
            done = host.run([restore], input=_scratch_input(rules, chains, extra))
            if done.returncode == 0:
                break
            missing = _MISSING_CHAIN.search(done.stderr)
            name = (missing.group(1) or missing.group(2)) if missing else None
            if name and name not in extra and re.fullmatch(r"[A-Za-z0-9_.-]{1,28}", name):
                extra.add(name)
                continue
            self._raise_bad_rule(host, family, rules, chains, extra, done.stderr)
        saved = parse_save(host.run([save]).stdout)
        result: list[str] = []
        position: dict[tuple[str, str], int] = {}
        expected = collections.Counter((r[1], r[2]) for r in rules)
        for (table, chain), count in expected.items():
            if len(saved.get(table, Table()).rules.get(chain, [])) != count:
                self._raise_expanding_rule(host, family, rules, chains, extra)
        for _, table, chain, _, _ in rules:
            kernel = saved[table].rules[chain]
            index = position.get((table, chain), 0)
            position[(table, chain)] = index + 1
            result.append(untag(kernel[index]))
        return result

    def _raise_bad_rule(
        self,
        host: Host,
        family: str,
        rules: Sequence[SpecRule],
        chains: Mapping[str, set[str]],
        extra: set[str],
        stderr: str,
    ) -> None:
        # The reported line is not reliable (nft reports some errors at COMMIT), so find the
        # first bad rule by bisecting on prefixes of the input: log2(n) restores.
        _, restore = TOOLS[family]

        def fails(count: int) -> bool:
            return (
                host.run([restore], input=_scratch_input(rules[:count], chains, extra)).returncode
                != 0
            )

        count = bisect.bisect_left(range(1, len(rules) + 1), True, key=fails) + 1
        bad = rules[min(count, len(rules)) - 1]
        message = _restore_message(
            host.run([restore], input=_scratch_input([bad], chains, extra)).stderr or stderr
        )
        raise RuleRejected(bad[4], f"the kernel rejects this rule: {message}")

    def _raise_expanding_rule(
        self,
        host: Host,
        family: str,
        rules: Sequence[SpecRule],
        chains: Mapping[str, set[str]],
        extra: set[str],
    ) -> None:
        save, restore = TOOLS[family]
        for rule in rules:
            host.run([restore], input=_scratch_input([rule], chains, extra))
            count = sum(
                len(t.rules.get(rule[2], [])) for t in parse_save(host.run([save]).stdout).values()
            )
            if count != 1:
                raise RuleRejected(
                    rule[4],
                    f"this rule becomes {count} kernel rules (several addresses or a name "
                    "that resolves to several); write one rule per address",
                )
        raise LiveReadError("firewall", "the kernel returned the rules in an unexpected shape")


def _restore_message(stderr: str) -> str:
    for line in stderr.splitlines():
        line = re.sub(r"^\S*tables-(restore|save)( v[\d.]+)?( \([^)]*\))?: ", "", line.strip())
        if line and not line.startswith(("Error occurred at line", "Try `")):
            return line
    return stderr.strip() or "rejected"


def _scratch_input(
    rules: Sequence[SpecRule], chains: Mapping[str, set[str]], extra: set[str]
) -> str:
    out: list[str] = []
    for table in dict.fromkeys(r[1] for r in rules):
        out.append(f"*{table}")
        for chain in sorted(chains.get(table, set()) | extra):
            if chain not in TABLES[table]:
                out.append(f":{chain} - [0:0]")
        out.extend(f"-A {c} {TAG_ARGS} {r}" for _, t, c, r, _ in rules if t == table)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def _scratch_namespace() -> Iterator[Host]:
    """A throwaway, empty network namespace (made and removed with pyroute2)."""
    from pyroute2 import netns as pyroute2_netns

    name = f"ztplan-scratch-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        pyroute2_netns.create(name)
    except OSError as error:
        raise LiveReadError(
            "firewall",
            f"cannot create a scratch network namespace to check the rules ({error})",
            "ztplan needs root (CAP_SYS_ADMIN) to normalise rules",
        ) from None
    try:
        yield LocalHost(name)
    finally:
        pyroute2_netns.remove(name)


Normaliser = Callable[[str, Sequence[SpecRule], Mapping[str, set[str]]], list[str]]


# --- the provider ----------------------------------------------------------------------


class Firewall:
    """iptables/ip6tables rules and built-in chain policies."""

    name: ClassVar[str] = "firewall"

    def __init__(self, normalise: Normaliser | None = None, file: str = "spec") -> None:
        self.normalise: Normaliser = normalise or KernelNormaliser()
        self.file = file
        """The spec's name, for errors about its rules."""

    def manages(self, spec: Spec) -> bool:
        """Always: rules ztplan wrote are its own whatever the spec says now, so a spec
        without a firewall section deletes them (as it does without one family)."""
        return True

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out: dict[Address, Resource] = {}
        for family in FAMILIES:
            fam = getattr(spec.firewall, family, None) if spec.firewall else None
            if fam is None:
                continue
            rules: list[SpecRule] = []
            chains: dict[str, set[str]] = {}
            for table_name, table in fam.tables().items():
                for chain, policy in table.policy.items():
                    address = f"firewall.{family}.{table_name}.policy.{chain}"
                    out[address] = Resource(address, policy)
                chains[table_name] = set(table.chains)
                for chain, chain_spec in table.chains.items():
                    for i, rule in enumerate(chain_spec.rules):
                        spec_path: tuple[str | int, ...] = ("firewall", family, table_name)
                        spec_path += (chain, i)
                        rules.append((family, table_name, chain, rule, spec_path))
            try:
                normalised = self.normalise(family, rules, chains)
            except RuleRejected as error:
                raise SpecError(
                    self.file, format_field(error.path), error.message, line_of(spec, error.path)
                ) from None
            by_chain: dict[tuple[str, str], list[str]] = {}
            for (_, table_name, chain, _, path), rule in zip(rules, normalised, strict=True):
                address = rule_address(family, table_name, chain, rule)
                if address in out:
                    raise SpecError(
                        self.file,
                        format_field(path),
                        f"the same rule as another in this chain once normalised: {rule}",
                        line_of(spec, path),
                    )
                out[address] = Resource(address, rule)
                by_chain.setdefault((table_name, chain), []).append(rule)
            for table_name, table in fam.tables().items():
                for chain, chain_spec in table.chains.items():
                    address = _chain_address(family, table_name, chain)
                    out[address] = Resource(
                        address,
                        list(by_chain.get((table_name, chain), [])),
                        relative_order=True,
                        scope=f"{address}.foreign[",
                        purge=chain_spec.exclusive,
                    )
        return out

    def read(self, host: Host) -> Snapshot:
        resources: dict[Address, Resource] = {}
        raw: dict[str, str] = {}
        parsed: dict[str, dict[str, Table]] = {}
        canonical: list[str] = []
        for family, (save, _) in TOOLS.items():
            done = host.run([save])
            if done.returncode != 0:
                raise LiveReadError(self.name, f"{save} failed: {_restore_message(done.stderr)}")
            raw[family] = done.stdout
            tables = parsed[family] = parse_save(done.stdout)
            for table_name, builtins in TABLES.items():
                # A table nothing has used yet is not in the dump (nft makes tables lazily);
                # its built-in chains are there in effect, with the kernel's ACCEPT policy.
                tables.setdefault(table_name, Table(policies=dict.fromkeys(builtins, "ACCEPT")))
            for table_name, table in sorted(tables.items()):
                if table_name not in TABLES:
                    continue
                if any(table.rules.values()) or set(table.policies.values()) != {"ACCEPT"}:
                    canonical.append(f"*{family} {table_name}")
                    canonical += (f":{c} {p}" for c, p in sorted(table.policies.items()))
                    canonical += (f"-A {c} {r}" for c, rules in table.rules.items() for r in rules)
                for chain, policy in table.policies.items():
                    if policy != "-":
                        address = f"firewall.{family}.{table_name}.policy.{chain}"
                        resources[address] = Resource(address, policy, owned=False)
                for chain, chain_rules in table.rules.items():
                    owned: list[JsonValue] = []
                    for rule in chain_rules:
                        mine = is_owned(rule)
                        text = untag(rule) if mine else rule
                        if mine:
                            owned.append(text)
                        address = rule_address(family, table_name, chain, text, not mine)
                        if address in resources:
                            address = _unique(resources, address)
                        resources[address] = Resource(address, text, owned=mine)
                    if owned:
                        address = _chain_address(family, table_name, chain)
                        resources[address] = Resource(
                            address, owned, owned=False, relative_order=True
                        )
        # Hashing the parsed tables is ~20x cheaper than hashing 20,000 resources; parsed,
        # not raw, so an empty table and an absent one (the same to the kernel) are equal.
        digest = _sha256("\n".join(canonical))
        return Snapshot(resources=resources, raw=raw, digest=digest, parsed=parsed)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """A DROP policy the spec no longer manages, over a chain whose ztplan rules all
        go: what let traffic through is deleted and the DROP stays."""
        findings = []
        for address, resource in snapshot.resources.items():
            if ".policy." not in address or resource.value != "DROP":
                continue
            family, table, _ = _split_address(address)
            chain = address.rsplit(".", 1)[1]
            fam = getattr(spec.firewall, family, None) if spec.firewall else None
            spec_table = getattr(fam, table, None) if fam else None
            if spec_table is not None and (
                chain in spec_table.policy or chain in spec_table.chains
            ):
                continue
            if _chain_address(family, table, chain) in snapshot.resources:  # owned rules there
                findings.append(
                    Finding(
                        severity="warning",
                        address=address,
                        message=f"the {chain} policy stays DROP while ztplan deletes its "
                        f"rules in {family} {table} {chain} (no longer in the spec): traffic "
                        "they let through will be dropped; write the policy you want",
                    )
                )
        return findings

    def apply(
        self,
        host: Host,
        changes: Sequence[Change],
        desired: Mapping[Address, JsonValue],
        before: Snapshot | None = None,
    ) -> None:
        """One `*-restore --noflush` per family with changes.

        Rule positions come from `before` (the snapshot the plan was made from, read under
        the same lock a moment ago) when given, else from a fresh `*-save`.
        """
        known = before.parsed if before is not None and isinstance(before.parsed, dict) else {}
        touched: dict[str, dict[str, set[str]]] = {}  # family -> table -> chains
        policies: dict[str, dict[str, list[str]]] = {}
        purged: set[Address] = set()
        for change in changes:
            family, table, chain = _split_address(change.address)
            if ".policy." in change.address:
                chain = change.address.rsplit(".", 1)[1]
                policies.setdefault(family, {}).setdefault(table, []).append(
                    f"-P {chain} {change.after}"
                )
                continue
            touched.setdefault(family, {}).setdefault(table, set()).add(chain)
            if ".foreign[" in change.address and change.action is Action.DELETE:
                purged.add(change.address)
        for family in FAMILIES:
            if family not in touched and family not in policies:
                continue
            save, restore = TOOLS[family]
            if family in known:
                live = known[family]
            else:
                saved = host.run([save])
                if saved.returncode != 0:  # editing blind would duplicate or flush rules
                    raise LiveReadError(
                        self.name, f"{save} failed: {_restore_message(saved.stderr)}"
                    )
                live = parse_save(saved.stdout)
            text: list[str] = []
            for table in sorted(set(touched.get(family, {})) | set(policies.get(family, {}))):
                text.append(f"*{table}")
                live_table = live.get(table, Table())
                for chain in sorted(touched.get(family, {}).get(table, set())):
                    if chain not in live_table.policies and chain not in TABLES[table]:
                        text.append(f":{chain} - [0:0]")
                for chain in sorted(touched.get(family, {}).get(table, set())):
                    order = desired.get(_chain_address(family, table, chain), [])
                    text.extend(
                        _edit_chain(
                            chain,
                            live_table.rules.get(chain, []),
                            [str(r) for r in order] if isinstance(order, list) else [],
                            {a for a in purged if _split_address(a) == (family, table, chain)},
                            family,
                            table,
                        )
                    )
                text.extend(policies.get(family, {}).get(table, []))
                text.append("COMMIT")
            done = host.run([restore, "--noflush"], input="\n".join(text) + "\n")
            if done.returncode != 0:
                raise LiveReadError(self.name, f"{restore} failed: {_restore_message(done.stderr)}")

    def rollback(self, host: Host, before: Snapshot) -> None:
        """Restore each family's tables from the dump `read` took (one restore each).

        A table absent from that dump (nft makes tables only when first used) but present
        now is restored empty with ACCEPT policies: what "absent" meant to the kernel.
        """
        raw = before.raw if isinstance(before.raw, dict) else {}
        failed: list[str] = []
        for family, (save, restore) in TOOLS.items():
            old = raw.get(family, "")
            had = set(parse_save(old))
            now = set(parse_save(host.run([save]).stdout))
            empty = [
                f"*{table}\n"
                + "".join(f":{chain} ACCEPT [0:0]\n" for chain in TABLES[table])
                + "COMMIT\n"
                for table in sorted(now - had)
                if table in TABLES
            ]
            if not old.strip() and not empty:
                continue
            done = host.run([restore], input=old + "".join(empty))
            if done.returncode != 0:
                failed.append(f"{restore}: {_restore_message(done.stderr)}")
        if failed:
            raise LiveReadError(self.name, "; ".join(failed))


def _sha256(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _unique(resources: Mapping[Address, Resource], address: Address) -> Address:
    """Identical rules twice in one chain: the second gets ` #2` (it is then an extra)."""
    if address not in resources:
        return address
    n = 2
    while f"{address} #{n}" in resources:
        n += 1
    return f"{address} #{n}"


def _edit_chain(
    chain: str, live: list[str], desired: list[str], purged: set[Address], family: str, table: str
) -> list[str]:
    """The fewest `-D`/`-I` lines that make the chain's owned rules read `desired`, in order.

    Owned rules already in place and in the right relative order stay untouched (the
    longest run of them that is in desired order); the rest are deleted, then the missing
    ones are inserted next to their desired neighbours. Foreign rules stay where they are
    unless purged.
    """
    mine = [is_owned(rule) for rule in live]
    texts = [untag(rule) if own else rule for rule, own in zip(live, mine, strict=True)]
    index = {rule: i for i, rule in enumerate(desired)}
    pairs = [(pos, index[t]) for pos, t in enumerate(texts) if mine[pos] and t in index]
    ranks = [rank for _, rank in pairs]
    if all(a < b for a, b in zip(ranks, ranks[1:], strict=False)):
        keep = {pos for pos, _ in pairs}  # the usual case: nothing is out of order
    else:
        keep = _longest_increasing(pairs)
    doomed: list[int] = []
    chain_now: list[tuple[str, bool]] = []  # (untagged rule, owned) after the deletions
    for pos, text in enumerate(texts):
        if mine[pos]:
            drop = pos not in keep
        else:
            drop = bool(purged) and rule_address(family, table, chain, text, True) in purged
        if drop:
            doomed.append(pos)
        else:
            chain_now.append((text, mine[pos]))
    # By number, last first, so earlier numbers stay valid: `-D CHAIN RULE` would delete
    # the first identical rule, the wrong one when a rule is in the chain twice.
    lines = [f"-D {chain} {pos + 1}" for pos in reversed(doomed)]
    owned_at = [i for i, (_, mine) in enumerate(chain_now) if mine]
    cursor = owned_at[0] if owned_at else len(chain_now)
    present = {text for text, own in chain_now if own}
    for rule in desired:
        wanted = (rule, True)
        if cursor < len(chain_now) and chain_now[cursor] == wanted:  # the usual case
            cursor += 1
            continue
        found = None
        if rule in present:  # scan only for rules that are there (a new one is not)
            found = next((i for i in range(cursor, len(chain_now)) if chain_now[i] == wanted), None)
        if found is not None:
            cursor = found + 1
            continue
        if cursor >= len(chain_now):
            lines.append(f"-A {chain} {TAG_ARGS} {rule}")
        else:
            lines.append(f"-I {chain} {cursor + 1} {TAG_ARGS} {rule}")
        chain_now.insert(cursor, (rule, True))
        cursor += 1
    return lines


def _longest_increasing(pairs: list[tuple[int, int]]) -> set[int]:
    """Of (live position, desired index) pairs in live order, the live positions of a longest
    run whose desired indices increase: the owned rules that can stay where they are."""
    tails: list[int] = []
    tail_at: list[int] = []
    parent: list[int] = [-1] * len(pairs)
    for i, (_, rank) in enumerate(pairs):
        k = bisect.bisect_left(tails, rank)
        if k == len(tails):
            tails.append(rank)
            tail_at.append(i)
        else:
            tails[k] = rank
            tail_at[k] = i
        parent[i] = tail_at[k - 1] if k else -1
    keep: set[int] = set()
    i = tail_at[-1] if tail_at else -1
    while i >= 0:
        keep.add(pairs[i][0])
        i = parent[i]
    return keep
