"""Let the kernel be the parser: the spec's rules, round-tripped through a scratch netns.

Each desired rule is loaded into an empty, throwaway network namespace with
`*-restore` and read back with `*-save`, so equivalent spellings compare equal
(`-i zt+ -s X` is saved `-s X/22 -i zt+`) and a typo is an error at plan time with the
rule's place in the spec. A rule's spelling depends only on its family, table and text,
so each is cached on its own (under the state dir): after a one-rule edit of a long spec
only that rule visits the kernel.

A jump to a chain the spec does not declare (`-j DOCKER-USER`) cannot load in the empty
namespace ("Chain 'X' does not exist" / "Couldn't load target `X'"): such a name is
declared there as a chain and remembered as an *external* reference of the rule, which
the plan then checks against the live table (`-j NOSUCHCHAIN` may be in none). A name one
letter from a target's (`-j ACCEPTT`) never gets here: the spec refuses it as a typo.

Scratch namespaces are named `ztplan-scratch-<pid>-<random>`; one left behind by a run
that was killed is removed by the next run (`remove_stale_scratch`).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import json
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ztplan.errors import LiveReadError
from ztplan.files import STATE_LIMIT, read_regular
from ztplan.host import NETNS_DIR, Host, LocalHost
from ztplan.iptables import TABLES, Table, jump_target, parse_save

__all__ = [
    "TOOLS",
    "KernelNormaliser",
    "Normaliser",
    "RuleRejected",
    "Spelled",
    "SpecRule",
    "remove_stale_scratch",
    "restore_message",
]

TOOLS = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}
CACHE_VERSION = 4
"""Bumped when cached spellings could differ (3: untagged rules, external references) or
the file's shape changes (4: a spelling that is the rule as written is stored as null,
which most are, and external references apart, which few rules have: a cache of 100,000
rules loads in a fifth of the time and memory)."""
SCRATCH = "ztplan-scratch-"

SpecRule = tuple[str, str, str, str, tuple[str | int, ...]]
"""(family, table, chain, rule text, spec path) of one desired rule."""
Spelled = tuple[str, tuple[str, ...]]
"""(the kernel's spelling, the chains it jumps to that the spec does not declare)."""
Normaliser = Callable[[str, Sequence[SpecRule], Mapping[str, set[str]]], list[Spelled]]

_MISSING_CHAIN = re.compile(r"Chain '([^']+)' does not exist|Couldn't load target `([^']+)'")
_TOOL_PREFIX = re.compile(r"^\S*tables(-legacy|-nft)?-(restore|save)( v[\d.]+)?( \([^)]*\))?:\s*")


class RuleRejected(Exception):
    """A desired rule the kernel will not take as one rule; `path` is its place in the spec."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def restore_message(stderr: str) -> str:
    """The kernel's own reason from `*-restore`'s stderr, without the tool's prefix and
    the lines that only point at the input (`Error occurred at line`, `Try ...`)."""
    for line in stderr.split("\n"):
        line = _TOOL_PREFIX.sub("", line.strip())
        if line and not line.startswith(("Error occurred at line", "Try `")):
            return line
    return stderr.strip() or "rejected"


class KernelNormaliser:
    """Turns a family's desired rules into the kernel's spelling, via a scratch netns."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self._spelled: dict[str, dict[str, Any]] = {}
        """family -> "table<TAB>rule as written" -> its spelling, None when the same."""
        self._externals: dict[str, dict[str, Any]] = {}
        """family -> the same keys -> the chains the rule jumps to outside the spec."""

    def _cache_file(self, family: str) -> Path | None:
        return self.cache_dir / f"normalise-{family}.json" if self.cache_dir else None

    def _load(self, family: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The family's cache as the file holds it; its values are checked as they are
        used (a broken cache only costs time)."""
        if family not in self._spelled:
            cache = self._cache_file(family)
            spelled: Any = {}
            externals: Any = {}
            try:
                if cache is not None and cache.exists():  # bounded, never a FIFO's hang
                    data = json.loads(read_regular(str(cache), STATE_LIMIT))
                    if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                        spelled = data.get("rules", {})
                        externals = data.get("externals", {})
            except (OSError, ValueError):
                pass
            if not isinstance(spelled, dict) or not isinstance(externals, dict):
                spelled, externals = {}, {}
            self._spelled[family], self._externals[family] = spelled, externals
        return self._spelled[family], self._externals[family]

    def _save(self, family: str) -> None:
        cache = self._cache_file(family)
        if cache is None:
            return
        document = {
            "version": CACHE_VERSION,
            "rules": self._spelled[family],
            "externals": self._externals[family],
        }
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(document))
            os.replace(tmp, cache)
        except OSError:
            pass  # a cache that cannot be written only costs time

    def __call__(
        self, family: str, rules: Sequence[SpecRule], chains: Mapping[str, set[str]]
    ) -> list[Spelled]:
        """The spelling of each rule, in input order. `chains`: table -> the user chains
        the spec declares (jumps to them are not external)."""
        spelled, externals = self._load(family)
        answer: list[Spelled] = []
        missing: list[int] = []  # one pass, no list of keys kept: 100,000 rules are 8 MB
        for i, (_, table, _, rule, _) in enumerate(rules):
            key = f"{table}\t{rule}"
            if not _cached(spelled, externals, key):
                missing.append(i)
                answer.append((rule, ()))
                continue
            found = externals.get(key)
            answer.append((spelled[key] or rule, tuple(found) if found else ()))
        if missing:
            with scratch_namespace() as host:
                answers = _round_trip(host, family, [rules[i] for i in missing], chains)
            for i, (text, found) in zip(missing, answers, strict=True):
                _, table, _, written, _ = rules[i]
                key = f"{table}\t{written}"
                spelled[key] = None if text == written else text
                if found:
                    externals[key] = list(found)
                else:
                    externals.pop(key, None)
                answer[i] = (text, found)
            self._save(family)
        # Not kept: a family's cache of 50,000 rules is some 20 MB, and a run asks once.
        del self._spelled[family], self._externals[family]
        return answer


def _cached(spelled: Mapping[str, Any], externals: Mapping[str, Any], key: str) -> bool:
    """Whether the cache answers for `key` with values of the right types."""
    text = spelled.get(key, False)
    if text is not None and (type(text) is not str or not text):
        return False
    found = externals.get(key)
    return found is None or (type(found) is list and all(type(x) is str for x in found))


def _round_trip(
    host: Host, family: str, rules: Sequence[SpecRule], chains: Mapping[str, set[str]]
) -> list[Spelled]:
    save, restore = TOOLS[family]
    extra: set[str] = set()
    for _ in range(64):
        done = host.run([restore], input=_scratch_input(rules, chains, extra))
        if done.returncode == 0:
            break
        missing = _MISSING_CHAIN.search(done.stderr)
        name = (missing.group(1) or missing.group(2)) if missing else None
        if name and name not in extra and re.fullmatch(r"[^\s]{1,28}", name):
            extra.add(name)
            continue
        _raise_bad_rule(host, family, rules, chains, extra, done.stderr)
    saved = parse_save(host.run([save]).stdout)
    expected = collections.Counter((r[1], r[2]) for r in rules)
    for (table, chain), count in expected.items():
        if len(saved.get(table, Table()).rules.get(chain, [])) != count:
            _raise_expanding_rule(host, family, rules, chains, extra)
    result: list[Spelled] = []
    position: dict[tuple[str, str], int] = {}
    for _, table, chain, _, _ in rules:
        index = position.get((table, chain), 0)
        position[(table, chain)] = index + 1
        text = saved[table].rules[chain][index]
        target = jump_target(text)
        result.append((text, (target,) if target in extra else ()))
    return result


def _raise_bad_rule(
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
        scratch = _scratch_input(rules[:count], chains, extra)
        return host.run([restore], input=scratch).returncode != 0

    count = bisect.bisect_left(range(1, len(rules) + 1), True, key=fails) + 1
    bad = rules[min(count, len(rules)) - 1]
    message = restore_message(
        host.run([restore], input=_scratch_input([bad], chains, extra)).stderr or stderr
    )
    raise RuleRejected(bad[4], f"the kernel rejects this rule: {message}")


def _raise_expanding_rule(
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


def _scratch_input(
    rules: Sequence[SpecRule], chains: Mapping[str, set[str]], extra: set[str]
) -> str:
    out: list[str] = []
    for table in dict.fromkeys(r[1] for r in rules):
        out.append(f"*{table}")
        for chain in sorted(chains.get(table, set()) | extra):
            if chain not in TABLES[table]:
                out.append(f":{chain} - [0:0]")
        out.extend(f"-A {c} {r}" for _, t, c, r, _ in rules if t == table)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def _pid_of(name: str) -> int | None:
    try:
        return int(name[len(SCRATCH) :].split("-")[0])
    except ValueError:
        return None


def remove_stale_scratch() -> list[str]:
    """Remove scratch namespaces whose ztplan process is gone (killed mid-normalise)."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(NETNS_DIR):
            pid = _pid_of(name) if name.startswith(SCRATCH) else None
            if pid is None or pid == os.getpid() or os.path.exists(f"/proc/{pid}"):
                continue
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def scratch_namespace() -> Iterator[Host]:
    """A throwaway, empty network namespace (`ip netns add`: cheaper than importing
    pyroute2 for it), removed on the way out."""
    remove_stale_scratch()
    name = f"{SCRATCH}{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    except FileNotFoundError:
        made = None
    if made is None or made.returncode != 0:
        why = (made.stderr.strip() if made is not None else "") or "ip (iproute2) is missing"
        raise LiveReadError(
            "firewall",
            f"cannot create a scratch network namespace to check the rules ({why})",
            "ztplan needs root (CAP_SYS_ADMIN) to normalise rules",
        )
    try:
        yield LocalHost(name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
