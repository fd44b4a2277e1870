"""iptables and ip6tables: ztplan's rules in chains of their own, one set per target.

The spec keeps the shape people know (`filter: {FORWARD: [...]}`); the rules listed
under a chain go, in order, into the target's own chain (`ZT-gw1.FORWARD`, see
`ztplan.iptables.own_chain`), entered from the built-in chain by one jump. A user chain
of the spec (`ZT-IN`) is the target's own too (`ZT-gw1.ZT-IN`), and the spec's jumps to
it are renamed on the way in and out. This is how Docker (`DOCKER-USER`), fail2ban
(`f2b-*`), ufw and Tailscale (`ts-forward`) share a host: each owns its chains and keeps
one jump into them.

- Inside its own chains only ztplan writes (under the target's lock), so edits there are
  exact: by position from the snapshot read under that lock, or a whole-chain rewrite
  where that is cheaper.
- In chains others write to, ztplan touches only its jump (by its text; it is inserted
  at the head, a position nothing else can make wrong), the policies it manages, and,
  in a chain declared `exclusive`, the foreign rules it purges (by their text).
- The jump must not be shadowed: it may come after jumps of tools that put their hook
  first by design and re-insert it on every restart (Docker's `DOCKER-USER` and
  `DOCKER-FORWARD`, fail2ban's `f2b-*`, Tailscale's `ts-*`, other ztplan targets), and
  after nothing else. So a Docker restart causes no drift, and a foreign rule put ahead
  of the jump is drift that moves the jump back to the head.
- Apply turns exactly the plan's changes into one `*-restore --noflush` per family;
  rollback undoes exactly those changes (own chains put back whole, the jump and the
  policies and purged rules one by one), never a whole table.

Addresses (the spec's chain names, not the kernel's):
    firewall.ipv4.filter.FORWARD["-i zt+ -j ACCEPT"]  a rule of the target's own chain
    firewall.ipv4.filter.FORWARD                      that chain's rule order
    firewall.ipv4.filter.FORWARD.chain                the own chain itself (its kernel name)
    firewall.ipv4.filter.FORWARD.jump                 the jump into it ("first" when sound)
    firewall.ipv4.filter.policy.FORWARD               a built-in chain's policy
    firewall.ipv4.filter.FORWARD.foreign["..."]       a foreign rule (unmanaged, or purged)
    firewall.ipv4.filter.FORWARD.legacy["..."]        a rule ztplan 0.1 tagged in place
    firewall.ipv4.filter.ZT-IN.legacy                 a user chain of ztplan 0.1, emptied
                                                      by the move (deleted with its rules)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import JsonValue

from ztplan.address import Address
from ztplan.errors import LiveReadError, SpecError
from ztplan.host import FORWARDING, Host
from ztplan.iptables import (
    FAMILIES,
    TABLES,
    Table,
    is_legacy,
    jump_rule,
    jump_target,
    misspelt_target,
    own_chain,
    own_chain_parts,
    parse_save,
    rewrite_jumps,
    target_id,
    tokens,
    untag_legacy,
)
from ztplan.model import Action, Change, Finding, Resource, Snapshot
from ztplan.normalise import (
    TOOLS,
    KernelNormaliser,
    Normaliser,
    RuleRejected,
    SpecRule,
    restore_message,
)
from ztplan.spec import Spec, format_field, line_of

__all__ = ["YIELD_TO", "Firewall", "Layout", "restore_input", "rule_address"]


YIELD_TO = re.compile(
    r"DOCKER-USER|DOCKER-FORWARD|DOCKER-ISOLATION-STAGE-1|DOCKER-INGRESS|f2b-.+|ts-.+"
)
"""Foreign chains whose jump may stand ahead of ztplan's: tools that put their hook
first by design and re-insert it there whenever they restart."""

FIRST = "first"
"""The jump's value when it is sound: nothing but YIELD_TO jumps ahead of it."""
_REWRITE_AT = 8
"""Edits in one own chain beyond which a whole rewrite is sent instead (and at least a
quarter of the chain): one `-A` per rule beats positions recounted per edit."""


def _firewall(family: str, table: str, chain: str) -> Address:
    return Address.of("firewall", family, table, chain)


def rule_address(family: str, table: str, chain: str, rule: str) -> Address:
    """The address of a rule of the target's own chain for the spec's `chain`."""
    return _firewall(family, table, chain).item(rule)


@dataclass(frozen=True)
class Layout:
    """What the spec declares of the firewall, as `read` and `apply` need it without the
    spec: the chains per (family, table) and which of them are exclusive."""

    target: str
    chains: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    exclusive: frozenset[tuple[str, str, str]] = frozenset()

    @classmethod
    def of(cls, spec: Spec) -> Layout:
        chains: dict[tuple[str, str], tuple[str, ...]] = {}
        exclusive: set[tuple[str, str, str]] = set()
        for family in FAMILIES:
            fam = getattr(spec.firewall, family, None) if spec.firewall else None
            for table_name, table in (fam.tables() if fam else {}).items():
                chains[(family, table_name)] = tuple(table.chains)
                exclusive |= {
                    (family, table_name, c) for c, cs in table.chains.items() if cs.exclusive
                }
        return cls(spec.target.name, chains, frozenset(exclusive))

    def private(self, family: str, table: str) -> dict[str, str]:
        """The spec's user chains of a table -> their kernel names (`ZT-IN` -> `ZT-gw1.ZT-IN`)."""
        builtins = TABLES.get(table, ())
        return {
            c: own_chain(self.target, c)
            for c in self.chains.get((family, table), ())
            if c not in builtins
        }


@dataclass
class _Where:
    """An address of this provider, taken apart."""

    family: str
    table: str
    chain: str
    kind: str
    """rule | order | chain | jump | policy | foreign | legacy"""
    key: str | None = None
    occurrence: int = 1


def _where(address: Address) -> _Where:
    names = address.names
    if len(names) < 3 or names[0] not in FAMILIES:
        raise LiveReadError("firewall", f"not a firewall address: {address}")
    family, table = names[0], names[1]
    if names[2] == "policy" and len(names) == 4:
        return _Where(family, table, names[3], "policy")
    key = address.key
    if len(names) == 3:
        return _Where(
            family, table, names[2], "rule" if key is not None else "order", key, address.occurrence
        )
    return _Where(family, table, names[2], names[3], key, address.occurrence)


def _unique(resources: Mapping[Address, Resource], address: Address) -> Address:
    """Identical rules twice in one chain: the second gets ` #2` (it is then an extra)."""
    if address not in resources:
        return address
    n = 2
    while address.nth(n) in resources:
        n += 1
    return address.nth(n)


def _carries_tag(rule: str) -> bool:
    """Whether a rule carries a comment ztplan uses for ownership (`ztplan`, `ztplan:*`)."""
    if "ztplan" not in rule:  # the usual case, without reading the words of every rule
        return False
    words = list(tokens(rule))
    return any(
        w == "--comment"
        and (words[i + 1].strip('"') == "ztplan" or words[i + 1].strip('"').startswith("ztplan:"))
        for i, w in enumerate(words[:-1])
    )


class Firewall:
    """iptables/ip6tables: the target's own chains, their jumps, built-in chain policies."""

    name: ClassVar[str] = "firewall"

    def __init__(
        self, layout: Layout, normalise: Normaliser | None = None, file: str = "spec"
    ) -> None:
        self.layout = layout
        self.target = layout.target
        self.tid = target_id(layout.target)
        self.normalise: Normaliser = normalise or KernelNormaliser()
        self.file = file
        """The spec's name, for errors about its rules."""
        self.wanted: Mapping[Address, Resource] = {}
        """What the last `desired` made (`interpret` keeps the live rules that equal it as
        those very objects)."""
        self.externals: dict[Address, tuple[tuple[str | int, ...], str]] = {}
        """After `desired`: rules that jump to a chain the spec does not declare -> (their
        spec path, that chain); `check` looks for it in the live table."""

    def manages(self, spec: Spec) -> bool:
        """Always: the target's own chains are its own whatever the spec says now, so a
        spec without a firewall section deletes them (as it does without one family)."""
        return True

    # --- the spec's side ----------------------------------------------------------------

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out: dict[Address, Resource] = {}
        self.externals = {}
        for family in FAMILIES:
            fam = getattr(spec.firewall, family, None) if spec.firewall else None
            if fam is None:
                continue
            rules: list[SpecRule] = []
            spans: list[tuple[str, str, int, bool]] = []  # table, chain, rules' end, exclusive
            declared: dict[str, set[str]] = {}
            for table_name, table in fam.tables().items():
                for chain, policy in table.policy.items():
                    address = Address.of("firewall", family, table_name, "policy", chain)
                    out[address] = Resource(address, policy)
                declared[table_name] = {c for c in table.chains if c not in TABLES[table_name]}
                for chain, chain_spec in table.chains.items():
                    for i, rule in enumerate(chain_spec.rules):
                        path: tuple[str | int, ...] = ("firewall", family, table_name, chain, i)
                        rules.append((family, table_name, chain, rule, path))
                    spans.append((table_name, chain, len(rules), chain_spec.exclusive))
            try:
                spelled = self.normalise(family, rules, declared)
            except RuleRejected as error:
                raise self._spec_error(spec, error.path, error.message) from None
            start = 0
            for table_name, chain, end, exclusive in spans:  # a chain's address made once
                # The chain and its jump first: they read as the heading of its rules.
                base = _firewall(family, table_name, chain)
                out[base.dot("chain")] = Resource(base.dot("chain"), own_chain(self.target, chain))
                builtin = chain in TABLES[table_name]
                if builtin:
                    out[base.dot("jump")] = Resource(base.dot("jump"), FIRST)
                texts: list[JsonValue] = []
                for k in range(start, end):
                    text, externals = spelled[k]
                    if _carries_tag(text):
                        raise self._spec_error(
                            spec,
                            rules[k][4],
                            "a rule without a `ztplan` comment: ztplan uses that "
                            "comment to mark what it owns",
                        )
                    address = base.item(text)
                    if address in out:  # only this chain's rules are under its address
                        raise self._spec_error(
                            spec,
                            rules[k][4],
                            f"the same rule as another in this chain once normalised: {text}",
                        )
                    out[address] = Resource(address, text)
                    texts.append(text)
                    for name in externals:
                        self.externals[address] = (rules[k][4], name)
                start = end
                out[base] = Resource(
                    base,
                    texts,
                    relative_order=True,
                    scope=f"{base}.foreign[",
                    purge=exclusive and builtin,
                )
        self.wanted = out
        return out

    def _spec_error(self, spec: Spec, path: tuple[str | int, ...], message: str) -> SpecError:
        return SpecError(self.file, format_field(path), message, line_of(spec, path))

    # --- the live side ------------------------------------------------------------------

    def read(self, host: Host) -> Snapshot:
        return self.interpret(self.fetch(host))

    def fetch(self, host: Host) -> dict[str, str]:
        """Each family's save, one after the other (two at once are slower: nf_tables
        serialises them): the kernel's part of `read`, which a plan runs while it makes
        the desired states."""
        saved = {}
        for family, (save, _) in TOOLS.items():
            done = host.run([save])
            if done.returncode != 0:
                raise LiveReadError(self.name, f"{save} failed: {restore_message(done.stderr)}")
            saved[family] = done.stdout
        return saved

    def interpret(self, saved: Mapping[str, str]) -> Snapshot:
        """The snapshot of what `fetch` saved. A rule of an own chain that `desired` made
        just so is kept as that very object (its address and resource): 2 x 50,000 rules
        are then held once, not twice (26 MB)."""
        resources: dict[Address, Resource] = {}
        raw = dict(saved)
        parsed = {f: self._read_family(f, text, resources) for f, text in raw.items()}
        # The digest covers what ztplan owns or decides on (its chains, jumps, policies,
        # rules of exclusive chains), not foreign rules it leaves alone: a fail2ban ban
        # between plan and apply does not make a saved plan stale.
        # (Hashed line by line: the text of 100,000 rules need not be built whole.)
        hashed, separator = hashlib.sha256(), b""
        for address, resource in resources.items():
            if resource.owned or ".foreign[" not in address or self._purged(address):
                hashed.update(separator + f"{address}\t{resource.value}".encode())
                separator = b"\n"
        digest = "sha256:" + hashed.hexdigest()
        return Snapshot(resources=resources, raw=raw, digest=digest, parsed=parsed)

    def _read_family(
        self, family: str, saved: str, resources: dict[Address, Resource]
    ) -> dict[str, Table]:
        tables = parse_save(saved)
        for table_name, builtins in TABLES.items():
            # A table nothing has used yet is not in the dump (nft makes tables lazily);
            # its built-in chains are there in effect, with the kernel's ACCEPT policy.
            tables.setdefault(table_name, Table(policies=dict.fromkeys(builtins, "ACCEPT")))
        for table_name in TABLES:
            self._read_table(family, table_name, tables[table_name], resources)
        return tables

    def _purged(self, address: Address) -> bool:
        where = _where(address)
        return (where.family, where.table, where.chain) in self.layout.exclusive

    def _logical_chain(self, family: str, table: str, part: str) -> str:
        for chain in self.layout.chains.get((family, table), ()):
            if own_chain(self.target, chain).endswith("." + part):
                return chain
        return part  # a chain the spec no longer declares (shortened names stay shortened)

    def _to_logical(self, family: str, table: str) -> dict[str, str]:
        return {v: k for k, v in self.layout.private(family, table).items()}

    def _read_table(
        self, family: str, table_name: str, table: Table, resources: dict[Address, Resource]
    ) -> None:
        builtins = TABLES[table_name]
        for chain in builtins:
            address = Address.of("firewall", family, table_name, "policy", chain)
            resources[address] = Resource(address, table.policies.get(chain, "ACCEPT"), owned=False)
        logical = self._to_logical(family, table_name)
        for chain, rules in table.rules.items():
            parts = own_chain_parts(chain)
            if parts is not None and parts[0] == self.tid:
                name = self._logical_chain(family, table_name, parts[1])
                base = _firewall(family, table_name, name)
                resources[base.dot("chain")] = Resource(base.dot("chain"), chain)
                texts = [rewrite_jumps(r, logical) for r in rules] if logical else rules
                wanted = self.wanted
                for text in texts:
                    address = base.item(text)
                    if address in resources:
                        address = _unique(resources, address)
                    resource = Resource(address, text)
                    same = wanted.get(address)
                    if same == resource:
                        resource = same
                    resources[resource.address] = resource
                resources[base] = Resource(base, list(texts), owned=False, relative_order=True)
                continue
            if chain not in builtins and not any(map(is_legacy, rules)):
                continue  # a foreign user chain: none of ztplan's business
            base = _firewall(family, table_name, chain)
            jump = jump_rule(self.target, chain) if chain in builtins else None
            positions: list[int] = []
            for i, rule in enumerate(rules):
                if rule == jump:
                    positions.append(i)
                elif is_legacy(rule):
                    address = _unique(resources, base.dot("legacy").item(untag_legacy(rule)))
                    resources[address] = Resource(
                        address,
                        untag_legacy(rule),
                        reason=f"tagged in {chain} by ztplan 0.1; ztplan's rules now live in "
                        f"its own chain {own_chain(self.target, chain)}",
                    )
                elif chain in builtins and not self._other_target(rule):
                    address = _unique(resources, base.dot("foreign").item(rule))
                    resources[address] = Resource(address, rule, owned=False)
            if chain not in builtins and self._made_by_legacy(table, chain):
                resources[base.dot("legacy")] = Resource(
                    base.dot("legacy"),
                    chain,
                    reason="made by ztplan 0.1 for its rules, which now live in "
                    f"{own_chain(self.target, chain)}",
                )
            if positions:
                ahead = [r for r in rules[: positions[0]] if not self._yields(r)]
                value = FIRST if not ahead else f"behind: {ahead[0]}"
                if len(positions) > 1:
                    value = f"{len(positions)} copies"
                resources[base.dot("jump")] = Resource(base.dot("jump"), value)

    @staticmethod
    def _made_by_legacy(table: Table, chain: str) -> bool:
        """A user chain ztplan 0.1 made (chains carry no tag): every rule in it and every
        jump to it is tagged, so the plan that moves them leaves it empty and unused."""
        rules = table.rules.get(chain, [])
        jumps = [r for rs in table.rules.values() for r in rs if jump_target(r) == chain]
        return bool(rules) and all(map(is_legacy, rules + jumps))

    def _other_target(self, rule: str) -> bool:
        target = jump_target(rule)
        parts = own_chain_parts(target) if target else None
        return parts is not None and parts[0] != self.tid

    def _yields(self, rule: str) -> bool:
        """Whether a foreign rule may stand ahead of the jump (see YIELD_TO)."""
        if is_legacy(rule):  # ztplan 0.1's rules: the same plan deletes them
            return True
        target = jump_target(rule)
        return target is not None and (bool(YIELD_TO.fullmatch(target)) or self._other_target(rule))

    # --- findings -----------------------------------------------------------------------

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        return (
            self._missing_chains(spec, snapshot)
            + self._drop_left_behind(spec, snapshot)
            + self._open_router(spec, snapshot)
        )

    def _open_router(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """Forwarding on with the FORWARD policy ACCEPT (the spec's, else the live one) and
        no catch-all DROP. IPv4 with NAT: anyone next to the WAN can route through the
        gateway into the ZeroTier network. IPv6: the members' prefix is routed, no NAT
        hides it, so every host on the Internet reaches every member."""
        findings = []
        for family, key in FORWARDING.items():
            fam = getattr(spec.firewall, family, None) if spec.firewall else None
            if str(spec.sysctl.get(key)) != "1":
                continue
            if family == "ipv4":
                nat = fam.nat.chains.get("POSTROUTING") if fam and fam.nat else None
                if nat is None or not any(
                    jump_target(r) in ("SNAT", "MASQUERADE") for r in nat.rules
                ):
                    continue
            policy_address = Address(f"firewall.{family}.filter.policy.FORWARD")
            live = snapshot.resources.get(policy_address)
            policy = (fam.filter.policy.get("FORWARD") if fam and fam.filter else None) or (
                live.value if live else "ACCEPT"
            )
            forward = fam.filter.chains.get("FORWARD") if fam and fam.filter else None
            closed = forward is not None and any(
                r.split() in (["-j", "DROP"], ["-j", "REJECT"]) for r in forward.rules
            )
            if policy != "ACCEPT" or closed:
                continue
            findings.append(
                Finding(
                    severity="warning",
                    address=policy_address,
                    message="IPv4 forwarding and NAT with the FORWARD policy ACCEPT: anyone "
                    "next to the WAN can route through this gateway into the ZeroTier network "
                    "(an open router); set `policy: {FORWARD: DROP}` and accept the ZeroTier "
                    "subnet out and replies back"
                    if family == "ipv4"
                    else "IPv6 forwarding with the FORWARD policy ACCEPT: the members' "
                    "addresses are routed, not NATed, so every host on the Internet reaches "
                    "every member; set ipv6 `policy: {FORWARD: DROP}` and accept the ZeroTier "
                    "prefix out and replies back (the gateway shorthand's `inbound: stateful`)",
                )
            )
        return findings

    def _missing_chains(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """A jump to a chain that neither the spec nor the live table defines (`-j NOSUCHCHAIN`):
        the apply would fail on it, so the plan does first, naming the spec line."""
        parsed = snapshot.parsed if isinstance(snapshot.parsed, dict) else {}
        findings = []
        for address, (path, chain) in self.externals.items():
            where = _where(address)
            live = parsed.get(where.family, {}).get(where.table, Table())
            if chain in live.policies or misspelt_target(chain):
                continue  # there; or a typo the spec checks name with a suggestion
            line = line_of(spec, path)
            field = format_field(path)
            findings.append(
                Finding(
                    severity="error",
                    address=field,
                    message=f"{self.file}{f':{line}' if line else ''}: {field}: jumps to "
                    f"{chain}, which is no target and no chain of the spec or of the live "
                    f"{where.family} {where.table} table",
                )
            )
        return findings

    def _drop_left_behind(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """A DROP policy the spec no longer manages, over a chain whose ztplan rules all
        go: what let traffic through is deleted and the DROP stays."""
        findings = []
        layout = Layout.of(spec)
        for address, resource in snapshot.resources.items():
            if ".policy." not in address or resource.value != "DROP":
                continue
            where = _where(address)
            fam = getattr(spec.firewall, where.family, None) if spec.firewall else None
            spec_table = getattr(fam, where.table, None) if fam else None
            if spec_table is not None and where.chain in spec_table.policy:
                continue
            if where.chain in layout.chains.get((where.family, where.table), ()):
                continue
            if _firewall(where.family, where.table, where.chain).dot("chain") in snapshot.resources:
                findings.append(
                    Finding(
                        severity="warning",
                        address=address,
                        message=f"the {where.chain} policy stays DROP while ztplan deletes its "
                        f"rules in {where.family} {where.table} {where.chain} (no longer in the "
                        "spec): traffic they let through will be dropped; write the policy you "
                        "want",
                    )
                )
        return findings

    # --- apply and rollback -------------------------------------------------------------

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        """Exactly these changes, one `*-restore --noflush` per family. `before` is the
        snapshot they were planned against, read under this run's lock: positions inside
        the target's own chains come from it (only ztplan writes there)."""
        tables = _parsed(before)
        by_family: dict[str, list[Change]] = {}
        for change in changes:
            by_family.setdefault(_where(change.address).family, []).append(change)
        for family, family_changes in by_family.items():
            self._restore(
                host, family, restore_input(self, family, family_changes, tables.get(family, {}))
            )

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        """Undo `changes` (made wholly, in part or not at all): the target's own chains
        they touched go back to `before` whole; its jumps, the policies and the foreign
        rules they touched, one by one. Read afresh, so nothing else is touched."""
        old = _parsed(before)
        families = dict.fromkeys(_where(c.address).family for c in changes)
        failed = []
        for family in families:
            done = host.run([TOOLS[family][0]])
            if done.returncode != 0:
                failed.append(f"{TOOLS[family][0]}: {restore_message(done.stderr)}")
                continue
            now = parse_save(done.stdout)
            undo = _Undo(self, family, old.get(family, {}), now)
            for change in changes:
                if _where(change.address).family == family:
                    undo.add(change)
            text = undo.render()
            if text:
                try:
                    self._restore(host, family, text)
                except LiveReadError as error:
                    failed.append(str(error))
        if failed:
            raise LiveReadError(self.name, "; ".join(failed))

    def _restore(self, host: Host, family: str, text: str) -> None:
        restore = TOOLS[family][1]
        done = host.run([restore, "--noflush"], input=text)
        if done.returncode != 0:
            raise LiveReadError(self.name, f"{restore} failed: {restore_message(done.stderr)}")

    def physical(self, family: str, table: str, chain: str) -> str:
        return own_chain(self.target, chain)


def restore_input(
    firewall: Firewall,
    family: str,
    changes: Sequence[Change],
    live: Mapping[str, Table],
    extra: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """The `*-restore --noflush` input that makes `changes` (one family) on `live`, with
    `extra` lines last in their tables."""
    edit = _Edit(firewall, family, live)
    for change in changes:
        edit.add(change)
    return edit.render(extra)


def _parsed(snapshot: Snapshot) -> dict[str, dict[str, Table]]:
    if isinstance(snapshot.parsed, dict):
        return snapshot.parsed
    raw = snapshot.raw if isinstance(snapshot.raw, dict) else {}
    return {family: parse_save(str(text)) for family, text in raw.items()}


class _TableEdit:
    """One table's part of a restore, in the order a transaction needs it."""

    def __init__(self) -> None:
        self.declare: list[str] = []
        self.unhook: list[str] = []
        self.own: list[str] = []
        self.hook: list[str] = []
        self.drop: list[str] = []
        self.policies: list[str] = []

    def lines(self) -> list[str]:
        return [
            *(f":{c} - [0:0]" for c in self.declare),
            *self.unhook,
            *self.own,
            *self.hook,
            *self.drop,
            *self.policies,
        ]


class _Edit:
    """The restore input that makes exactly one family's changes."""

    def __init__(self, firewall: Firewall, family: str, live: Mapping[str, Table]) -> None:
        self.fw = firewall
        self.family = family
        self.live = live
        self.tables: dict[str, _TableEdit] = {}
        self.chains: dict[tuple[str, str], _ChainEdit] = {}
        self.hooked: dict[tuple[str, str, str], dict[str, list[str]]] = {}
        """(table, chain, foreign|legacy) -> a rule's text as keyed -> its copies as saved."""

    def _table(self, name: str) -> _TableEdit:
        return self.tables.setdefault(name, _TableEdit())

    def _chain(self, table: str, chain: str) -> _ChainEdit:
        key = (table, chain)
        if key not in self.chains:
            physical = own_chain(self.fw.target, chain)
            live = self.live.get(table, Table()).rules.get(physical)
            to_logical = self.fw._to_logical(self.family, table)
            rules = [rewrite_jumps(r, to_logical) for r in live] if live and to_logical else live
            self.chains[key] = _ChainEdit(physical, None if rules is None else list(rules))
        return self.chains[key]

    def add(self, change: Change) -> None:
        where = _where(change.address)
        table = self._table(where.table)
        hook_rules = self.live.get(where.table, Table()).rules.get(where.chain, [])
        if where.kind == "policy":
            table.policies.append(f"-P {where.chain} {change.after}")
        elif where.kind == "chain":
            chain = self._chain(where.table, where.chain)
            if change.action is Action.CREATE:
                chain.created = True
            elif change.action is Action.DELETE:
                chain.deleted = True
        elif where.kind == "jump":
            jump = jump_rule(self.fw.target, where.chain)
            if change.action in (Action.UPDATE, Action.DELETE):
                table.unhook += [f"-D {where.chain} {jump}"] * hook_rules.count(jump)
            if change.action in (Action.CREATE, Action.UPDATE):
                table.hook.append(f"-I {where.chain} 1 {jump}")
        elif where.kind == "legacy" and where.key is None and change.action is Action.DELETE:
            table.drop.append(f"-X {where.chain}")  # after the `-D`s of its rules (unhook)
        elif where.kind in ("foreign", "legacy") and change.action is Action.DELETE:
            table.unhook.append(f"-D {where.chain} {self._live_text(where, hook_rules)}")
        elif where.kind == "rule" and where.key is not None:
            chain = self._chain(where.table, where.chain)
            if change.action is Action.DELETE:
                chain.deletes.append((where.key, where.occurrence))
            elif change.action is Action.CREATE:
                chain.creates.append((where.key, change.follows or ""))
        elif where.kind == "order" and isinstance(change.after, list):
            self._chain(where.table, where.chain).order = [str(r) for r in change.after]
        else:
            raise LiveReadError("firewall", f"cannot apply {change.action} {change.address}")

    def _live_text(self, where: _Where, rules: Sequence[str]) -> str:
        """The text of the n-th foreign or ztplan 0.1 rule of a built-in chain, as saved.
        The chain is read once for all of its deletes (an exclusive chain may purge
        thousands: a scan per delete was quadratic)."""
        key = (where.table, where.chain, where.kind)
        if key not in self.hooked:
            found: dict[str, list[str]] = {}
            for rule in rules:
                if where.kind == "foreign":
                    found.setdefault(rule, []).append(rule)
                elif is_legacy(rule):
                    found.setdefault(untag_legacy(rule), []).append(rule)
            self.hooked[key] = found
        copies = self.hooked[key].get(where.key or "", [])
        if len(copies) >= where.occurrence:
            return copies[where.occurrence - 1]
        raise LiveReadError(
            "firewall",
            f"{where.family} {where.table} {where.chain} no longer holds {where.key!r}",
            "plan again",
        )

    def render(self, extra: Mapping[str, Sequence[str]] | None = None) -> str:
        """The restore input; `extra` lines go last in their table (import's deletions of
        the rules it moved)."""
        for (table_name, _), chain in self.chains.items():
            to_physical = self.fw.layout.private(self.family, table_name)
            chain.emit(self._table(table_name), to_physical)
        for name, lines in (extra or {}).items():
            self._table(name).drop.extend(lines)
        out = []
        for name, table in self.tables.items():
            lines = table.lines()
            if lines:
                out += [f"*{name}", *lines, "COMMIT"]
        return "\n".join(out) + "\n"


@dataclass
class _ChainEdit:
    """The edits of one of the target's own chains. `live` is None when it does not exist."""

    physical: str
    live: list[str] | None
    created: bool = False
    deleted: bool = False
    deletes: list[tuple[str, int]] = field(default_factory=list)
    creates: list[tuple[str, str]] = field(default_factory=list)
    """(rule, the live rule it follows or "" for the head), in desired order."""
    order: list[str] | None = None

    def emit(self, table: _TableEdit, to_physical: Mapping[str, str]) -> None:
        def spell(rule: str) -> str:
            return rewrite_jumps(rule, to_physical) if to_physical else rule

        if self.deleted:
            if self.live is not None:
                table.drop += [f"-F {self.physical}", f"-X {self.physical}"]
            return
        rules = list(self.live or [])
        doomed: list[int] = []
        places: dict[str, list[int]] = {}  # a rule -> where it stands (copies in order)
        if self.deletes:
            for i, r in enumerate(rules):
                places.setdefault(r, []).append(i)
        for text, occurrence in self.deletes:
            hits = places.get(text, [])
            if len(hits) < occurrence:
                raise LiveReadError(
                    "firewall", f"{self.physical} no longer holds {text!r}", "plan again"
                )
            doomed.append(hits[occurrence - 1])
        gone = set(doomed)
        kept = [r for i, r in enumerate(rules) if i not in gone] if gone else rules
        final, inserts = _place(kept, self.creates, self.physical)
        if self.order is not None:
            rank = {r: i for i, r in enumerate(self.order)}
            final = sorted(final, key=lambda r: rank.get(r, len(rank)))
        edits = len(doomed) + len(inserts)
        rewrite = (
            self.live is None
            or self.created
            or self.order is not None
            or (edits > _REWRITE_AT and edits * 4 > len(rules))
        )
        if rewrite:  # declaring the chain creates it, or flushes it (atomically)
            table.declare.append(self.physical)
            table.own += [f"-A {self.physical} {spell(r)}" for r in final]
            return
        # By number, last first, so the earlier numbers stay valid; then the inserts, each
        # at its place in the chain as the edits before it left it.
        table.own += [f"-D {self.physical} {i + 1}" for i in sorted(doomed, reverse=True)]
        for position, rule, at_end in inserts:
            if at_end:
                table.own.append(f"-A {self.physical} {spell(rule)}")
            else:
                table.own.append(f"-I {self.physical} {position + 1} {spell(rule)}")


def _place(
    kept: list[str], creates: Sequence[tuple[str, str]], chain: str
) -> tuple[list[str], list[tuple[int, str, bool]]]:
    """The chain after inserting `creates` (each right after the first copy of its anchor,
    after earlier creates with the same anchor), and the inserts as (0-based position, rule,
    at end), each as the inserts before it left the chain.

    In linear time (plus a log per create): an insert's position is its anchor's place + 1
    plus the earlier creates that went at or before that place, which a Fenwick tree over
    the places counts. (Finding each anchor with `list.index` and inserting into the list
    was quadratic: minutes for 25,000 new rules among 50,000.)"""
    if not creates:
        return kept, []
    first: dict[str, int] = {}
    for i, rule in enumerate(kept):
        first.setdefault(rule, i)
    tree = [0] * (len(kept) + 2)  # slot s (1-based in the tree): after kept[s - 1]; 0: head
    groups: dict[int, list[str]] = {}
    inserts = []
    for done, (rule, anchor) in enumerate(creates):
        if anchor and anchor not in first:
            raise LiveReadError("firewall", f"{chain} no longer holds {anchor!r}", "plan again")
        slot = first[anchor] + 1 if anchor else 0
        before, i = 0, slot + 1
        while i > 0:  # creates placed so far in slots <= slot
            before += tree[i]
            i -= i & -i
        i = slot + 1
        while i < len(tree):
            tree[i] += 1
            i += i & -i
        position = slot + before
        inserts.append((position, rule, position == len(kept) + done))
        groups.setdefault(slot, []).append(rule)
    final = list(groups.get(0, ()))
    for i, rule in enumerate(kept):
        final.append(rule)
        final += groups.get(i + 1, ())
    return final, inserts


class _Undo:
    """The restore input that undoes one family's changes, given what was there before and
    what is there now."""

    def __init__(
        self,
        firewall: Firewall,
        family: str,
        before: Mapping[str, Table],
        now: Mapping[str, Table],
    ) -> None:
        self.fw = firewall
        self.family = family
        self.before = before
        self.now = now
        self.tables: dict[str, _TableEdit] = {}
        self.chains: set[tuple[str, str]] = set()
        self.jumps: set[tuple[str, str]] = set()
        self.policies: set[tuple[str, str]] = set()
        self.legacy_chains: set[tuple[str, str]] = set()
        self.hooked: dict[tuple[str, str, str, str], None] = {}
        """(table, chain, kind, text) of the foreign and 0.1 rules the changes deleted."""
        self.back: dict[tuple[str, str], list[int]] = {}
        """(table, chain) -> the places in `before` of the rules to put back into it."""
        self.gone: dict[tuple[str, str], list[str]] = {}
        """(table, chain) -> the rules this undo deletes from it first (ztplan's jumps)."""

    def _table(self, name: str) -> _TableEdit:
        return self.tables.setdefault(name, _TableEdit())

    def add(self, change: Change) -> None:
        where = _where(change.address)
        if where.kind in ("rule", "order", "chain"):
            self.chains.add((where.table, where.chain))
        elif where.kind == "jump":
            self.chains.add((where.table, where.chain))
            self.jumps.add((where.table, where.chain))
        elif where.kind == "policy":
            self.policies.add((where.table, where.chain))
        elif where.kind == "legacy" and where.key is None:
            self.legacy_chains.add((where.table, where.chain))
        elif where.kind in ("foreign", "legacy"):
            self.hooked[(where.table, where.chain, where.kind, where.key or "")] = None

    def render(self) -> str:
        for table, chain in sorted(self.jumps):
            self._undo_jump(table, chain)
        for table, chain in sorted(self.chains):
            self._undo_chain(table, chain)
        for table, chain in sorted(self.policies):
            was = self.before.get(table, Table()).policies.get(chain, "ACCEPT")
            if self.now.get(table, Table()).policies.get(chain, "ACCEPT") != was:
                self._table(table).policies.append(f"-P {chain} {was}")
        for table, chain in sorted(self.legacy_chains):
            # Made again first: its rules and the jump to it are put back below.
            if chain in self.before.get(table, Table()).policies:
                if chain not in self.now.get(table, Table()).policies:
                    self._table(table).declare.append(chain)
        for table, chain, kind, text in self.hooked:
            self._undo_hooked(table, chain, kind, text)
        self._put_back()
        out = []
        for name, edit in self.tables.items():
            lines = edit.lines()
            if lines:
                out += [f"*{name}", *lines, "COMMIT"]
        return "\n".join(out) + "\n" if out else ""

    def _undo_jump(self, table: str, chain: str) -> None:
        jump = jump_rule(self.fw.target, chain)
        was = self.before.get(table, Table()).rules.get(chain, [])
        now = self.now.get(table, Table()).rules.get(chain, [])
        if [r == jump for r in was] == [r == jump for r in now]:  # the jump where it was
            return
        self._table(table).unhook += [f"-D {chain} {jump}"] * now.count(jump)
        self.gone.setdefault((table, chain), []).extend([jump] * now.count(jump))
        if jump in was:
            self.back.setdefault((table, chain), []).append(was.index(jump))

    def _undo_chain(self, table: str, chain: str) -> None:
        physical = own_chain(self.fw.target, chain)
        was = self.before.get(table, Table()).rules.get(physical)
        now = self.now.get(table, Table()).rules.get(physical)
        if was == now:
            return
        edit = self._table(table)
        if was is None:
            # Made by the apply: unhook every jump to it (but the target's own jump, which
            # `_undo_jump` handles), then remove it.
            jump = jump_rule(self.fw.target, chain)
            for hook, rules in self.now.get(table, Table()).rules.items():
                for r in rules:
                    if jump_target(r) == physical and not (
                        r == jump and hook == chain and (table, chain) in self.jumps
                    ):
                        edit.unhook.append(f"-D {hook} {r}")
                        self.gone.setdefault((table, hook), []).append(r)
            edit.drop += [f"-F {physical}", f"-X {physical}"]
        else:
            edit.declare.append(physical)
            edit.own += [f"-A {physical} {r}" for r in was]

    def _undo_hooked(self, table: str, chain: str, kind: str, text: str) -> None:
        was = self.before.get(table, Table()).rules.get(chain, [])
        now = self.now.get(table, Table()).rules.get(chain, [])

        def same(rule: str) -> bool:
            return (
                rule == text
                if kind == "foreign"
                else is_legacy(rule) and untag_legacy(rule) == text
            )

        places = [i for i, r in enumerate(was) if same(r)]
        missing = len(places) - sum(map(same, now))
        # `-D CHAIN rule` deletes the first of identical rules: those are the ones missing.
        self.back.setdefault((table, chain), []).extend(places[: max(missing, 0)])

    def _put_back(self) -> None:
        """Insert the rules to put back in the order they stood, each right after the
        nearest rule that stood before it and stands there now (the ones put back before
        it included); with none, right before the nearest that stood after it; with
        neither, last. Counting the inserts made before each, no two of them swap; and a
        rule others added meanwhile keeps its place among those it was put between (a ban
        inserted at the head stays ahead of everything put back)."""
        for (table, chain), places in self.back.items():
            was = self.before.get(table, Table()).rules.get(chain, [])
            rules = list(self.now.get(table, Table()).rules.get(chain, []))
            for rule in self.gone.get((table, chain), []):
                if rule in rules:
                    rules.remove(rule)
            for i in sorted(set(places)):
                after = next((was[k] for k in range(i - 1, -1, -1) if was[k] in rules), None)
                ahead = next((was[k] for k in range(i + 1, len(was)) if was[k] in rules), None)
                if after is not None:
                    position = rules.index(after) + 1
                else:
                    position = rules.index(ahead) if ahead is not None else len(rules)
                rules.insert(position, was[i])
                self._table(table).hook.append(f"-I {chain} {position + 1} {was[i]}")


def live_rules(snapshot: Snapshot, family: str, table: str, chain: str) -> list[str] | None:
    """The rules of a chain in a snapshot (None: no such chain): for tests and import."""
    return _parsed(snapshot).get(family, {}).get(table, Table()).rules.get(chain)
