"""`ztplan import`: the spec of a gateway configured by hand, and adopting its rules.

`import_spec` reads the host as the providers do (firewall, the gateway's sysctls,
ndppd.conf, controller networks) and returns the spec describing it, written by `dump_spec`
under a comment header. It never writes, so it is safe on a production gateway.

Ownership. ztplan owns the rules of the target's own chains (`ZT-<target>.<chain>`, see
`ztplan.providers.firewall`), and rules made by hand stand in the built-in chains: planned
against its host, the imported spec shows one `create` per rule in ztplan's own chain (the
originals listed as unmanaged), and applying that would leave every rule twice. Declaring
the chains `exclusive` would delete other tools' rules too. So the spec stays truthful and
adoption is an explicit write, `adopt_rules` (`ztplan import --adopt`): in one
`*-restore --noflush` per family it makes the target's own chains with the rules the spec
declares, jumps to them, and deletes the originals (by their text, so a rule changed since
the read fails the whole transaction rather than another rule going); the plan is then
empty. Explicit, because it is a claim: an adopted rule later taken out of the spec is
deleted by apply. Counters restart at zero. Other tools' rules are left out, each named in
the header: see `FOREIGN_CHAINS`, `FOREIGN_INTERFACES` and `_why_foreign`. Rules already in
ztplan's own chains (of any target) are imported under the chain they serve.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ztplan import iptables as fw
from ztplan.address import Address
from ztplan.api import ApiClient
from ztplan.errors import LiveReadError, SpecError, ZtplanError
from ztplan.gateway import dump_spec
from ztplan.host import Host
from ztplan.ndppd_conf import NdppdConfError, parse_ndppd_conf
from ztplan.normalise import TOOLS, Normaliser
from ztplan.providers.ndppd import rule_method
from ztplan.providers.sysctl import key_path, normalise_value
from ztplan.spec import CHAIN_RE, TABLES, Controller, Spec, parse_spec, rule_problem

__all__ = [
    "FOREIGN_CHAINS",
    "FOREIGN_INTERFACES",
    "SYSCTLS",
    "adopt_rules",
    "import_spec",
    "problems_of",
]

FOREIGN_CHAINS = {
    "Docker": r"DOCKER(-.+)?",
    "fail2ban": r"f2b-.+",
    "libvirt": r"LIBVIRT_.+",
    "Kubernetes": r"KUBE-.+",
    "ufw": r"ufw6?-.+",
}
"""Owner -> pattern of its user chains: left out, with every rule that jumps to them."""
FOREIGN_INTERFACES = {"Docker": r"docker0|br-[0-9a-f]{12}", "libvirt": r"virbr\d+"}
"""Owner -> pattern of its interfaces. Docker's bridges are br-<12 hex>; a br-lan is a human's."""
_HAIRPIN = re.compile(r"-s (\S+)/32 -d \1/32 .*-j MASQUERADE")  # Docker, per published port
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.all.rp_filter")
"""What a gateway depends on; rp_filter only when it is not the kernel's 0."""
_UNTAGGED = """
Not ztplan's yet: {} rule(s) stand outside ztplan's own chains. Until they are adopted
(`ztplan import --adopt` moves them in), a plan shows a create for each in ztplan's own
chain and the originals as unmanaged; applying that would leave each rule twice."""
_NDPPD_EXTRA = ("route_ttl", "address_ttl", "autowire", "keepalive", "promiscuous", "retries")
"""ndppd.conf options the spec has no field for (on the file or a proxy)."""


@dataclass
class _Notes:
    """What the header says beside the spec."""

    left_out: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    untagged: int = 0
    invalid: list[str] = field(default_factory=list)
    """What `validate` refuses in the spec as imported: `line N: field: why`."""


def _owner(patterns: dict[str, str], name: str) -> str | None:
    return next((who for who, pattern in patterns.items() if re.fullmatch(pattern, name)), None)


def _jump(rule: str) -> str | None:
    return found.group(1) if (found := re.search(r"(?:^| )-[jg] (\S+)", rule)) else None


def _why_foreign(chain: str, rule: str, foreign: dict[str, str]) -> str | None:
    """Why a live rule is left out (None: import it). ztplan's own are ztplan's, always."""
    if not fw.is_legacy(rule):
        if chain in foreign:
            return foreign[chain]
        if (target := _jump(rule)) in foreign:
            return f"jumps to {target}: {foreign[target]}"
        for interface in re.findall(r"(?:^| )-[io] (\S+)", rule):
            if who := _owner(FOREIGN_INTERFACES, interface):
                return f"{who}'s interface {interface}"
        if _HAIRPIN.search(rule):
            return "Docker's NAT for a published port"
    problem = rule_problem(fw.untag_legacy(rule))
    return f"cannot be written in a spec: {problem}" if problem else None


def _foreign_chains(table: fw.Table, builtins: Sequence[str]) -> dict[str, str]:
    """User chains left out: other tools', names a spec cannot hold, and (to a fixed point)
    chains jumped to only from rules left out."""
    foreign: dict[str, str] = {}
    for chain in set(table.rules) - set(builtins):
        if who := _owner(FOREIGN_CHAINS, chain):
            foreign[chain] = who
        elif chain in ("policy", "chains") or not re.fullmatch(CHAIN_RE, chain):
            foreign[chain] = "a chain name a spec cannot hold"
    while True:
        kept, dropped = set[str](), set[str]()
        for chain, rules in table.rules.items():
            for rule in rules:
                if (target := _jump(rule)) in table.rules and target not in builtins:
                    (dropped if _why_foreign(chain, rule, foreign) else kept).add(target)
        if not (new := dropped - kept - set(foreign)):
            return foreign
        foreign.update(dict.fromkeys(new, "reached only from rules left out"))


def _own_chains(table: fw.Table) -> dict[str, list[str]]:
    """ztplan's own chains taken out of `table` (with the jumps into them), by the chain
    they serve: `ZT-gw1.FORWARD` -> FORWARD."""
    own: dict[str, list[str]] = {}
    names = {c: parts[1] for c in table.rules if (parts := fw.own_chain_parts(c))}
    for chain in names:
        own.setdefault(names[chain], []).extend(
            fw.rewrite_jumps(r, names) for r in table.rules.pop(chain)
        )
        table.policies.pop(chain, None)
    for chain, rules in table.rules.items():
        table.rules[chain] = [r for r in rules if fw.jump_target(r) not in names]
    return own


def _table(where: str, table: fw.Table, builtins: Sequence[str], notes: _Notes) -> dict[str, Any]:
    """One table in the spec's shape: non-ACCEPT policies, then the non-empty chains."""
    owned = _own_chains(table)
    for chain in owned:
        table.rules.setdefault(chain, [])
    foreign = _foreign_chains(table, builtins)
    policy = {c: p for c, p in table.policies.items() if c in builtins and p != "ACCEPT"}
    out: dict[str, Any] = {"policy": policy} if policy else {}
    for chain, rules in table.rules.items():
        if chain in foreign and rules and not any(map(fw.is_legacy, rules)):
            notes.left_out.append(
                f"{where} {chain}: whole chain, {len(rules)} rule(s) ({foreign[chain]})"
            )
            continue
        tagged = {fw.untag_legacy(r) for r in rules if fw.is_legacy(r)} | set(owned.get(chain, []))
        kept: list[str] = []
        for rule in [*owned.get(chain, []), *rules]:
            text = fw.untag_legacy(rule)
            if why := _why_foreign(chain, rule, foreign):
                notes.left_out.append(f"{where} {chain}: {text}  ({why})")
            elif text in kept:  # a spec holds a rule once; a plan deletes extra tagged copies
                notes.other.append(f"{where} {chain}: `{text}` is there twice, the spec once")
            else:
                kept.append(text)
                notes.untagged += text not in tagged
        if kept:
            out[chain] = kept
    return out


def _save(host: Host, tool: str) -> dict[str, fw.Table]:
    done = host.run([tool])
    if done.returncode != 0:
        raise LiveReadError("firewall", f"{tool} failed: {done.stderr.strip()}")
    return fw.parse_save(done.stdout)


def _firewall(host: Host, notes: _Notes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for family, (save, _) in TOOLS.items():
        for name, table in _save(host, save).items():
            if name not in TABLES:
                if any(table.rules.values()):
                    notes.left_out.append(f"{family} {name}: the whole table (not managed)")
            elif spelled := _table(f"{family} {name}", table, TABLES[name], notes):
                out.setdefault(family, {})[name] = spelled
    return out


def _sysctls(host: Host) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for key in SYSCTLS:
        try:
            value = normalise_value(host.read_proc(key_path(key)))
        except FileNotFoundError:
            continue  # not a key of this kernel or namespace (IPv6 off, say)
        except OSError as error:
            raise LiveReadError("sysctl", f"{key}: cannot read ({error.strerror})") from None
        if not (key.endswith(".rp_filter") and value == "0"):
            out[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
    return out


def _ndppd(host: Host, config: str, pidfile: str | None, notes: _Notes) -> dict[str, Any] | None:
    path = host.config_path(config)
    if (text := host.read_file(path)) is None:
        return None
    try:
        conf = parse_ndppd_conf(text)
    except NdppdConfError as error:
        raise LiveReadError("ndppd", f"{path}: {error}", "fix it, or name another file") from None
    proxies = [
        {"interface": p.interface}
        | {k: v for k in ("router", "timeout", "ttl") if (v := getattr(p, k)) is not None}
        | {"rules": [{"prefix": r.prefix, "method": rule_method(r)} for r in p.rules]}
        for p in conf.proxies
    ]
    extra = {k for o in (conf, *conf.proxies) for k in _NDPPD_EXTRA if vars(o).get(k) is not None}
    extra |= {"autovia" for p in conf.proxies for r in p.rules if r.autovia is not None}
    if extra:
        notes.other.append(
            f"ndppd: {', '.join(sorted(extra)).replace('_', '-')} in {path}: no spec field; "
            "an ndppd apply rewrites the file without them"
        )
    if host.netns and not pidfile:  # no systemd unit in a namespace: ztplan runs ndppd there
        notes.other.append(f"ndppd: set ndppd.pidfile to the -p of an ndppd running {path}")
    return {"config": config, "pidfile": pidfile, "proxies": proxies}


def _networks(
    host: Host, networks: Sequence[str], controller: Controller, api: ApiClient
) -> list[dict[str, Any]]:
    """Routes and pools of the networks, read by the controller provider (any kind), and
    the mtu, dns and New Central subnets where they are not ZeroTier's defaults: a setting
    left at its default is left unmanaged, as a hand-built gateway had it."""
    from ztplan.providers.controller import Controller as ControllerProvider
    from ztplan.providers.controller_backend import NO_DNS

    if bad := [n for n in networks if not re.fullmatch(r"[0-9a-f]{16}", n)]:
        raise ZtplanError(f"{bad[0]!r} is not a ZeroTier network id (16 lowercase hex digits)")
    raw = ControllerProvider(api, controller.kind, list(networks)).read(host).raw
    out = []
    for nwid, live in raw.items():
        network: dict[str, Any] = {
            "id": nwid,
            "routes": [{k: v for k, v in r.items() if v} for r in live["routes"]],
            "ip_pools": live["ip_pools"],
        }
        if live.get("mtu") not in (None, 2800):
            network["mtu"] = live["mtu"]
        if live.get("dns", NO_DNS) != NO_DNS:
            network["dns"] = live["dns"]
        network |= {k: live[k] for k in ("v4_subnet", "v6_subnet") if live.get(k)}
        out.append(network)
    return out


def _header(host: Host, when: datetime, notes: _Notes) -> str:
    netns = f", network namespace {host.netns}" if host.netns else ""
    lines = [
        f"Imported by `ztplan import` from host {socket.gethostname()}{netns}",
        f"at {when.isoformat(timespec='seconds')}. Review it before committing it.",
    ]
    if notes.untagged:
        lines += _UNTAGGED.format(notes.untagged).split("\n")
    if notes.left_out:
        lines += ["", "Left out (ztplan leaves them alone):", *(f"  {x}" for x in notes.left_out)]
    if notes.other:
        lines += ["", "Notes:", *(f"  {line}" for line in notes.other)]
    if notes.invalid:
        lines += ["", "Fix before applying (the controller holds what ztplan refuses):"]
        lines += [f"  {line}" for line in notes.invalid]
    return "".join(_comment(x) for x in lines) + "\n"


def _comment(text: str) -> str:
    """One comment line of the header, whatever a live rule's comment holds: YAML also ends
    a line at U+0085, U+2028 and U+2029, and text after them would be read as spec."""
    return "".join(c if c.isprintable() else "?" for c in f"# {text}").rstrip() + "\n"


def import_spec(
    host: Host,
    *,
    target: str,
    networks: Sequence[str] = (),
    controller: Controller | None = None,
    api: ApiClient | None = None,
    ndppd_config: str = "/etc/ndppd.conf",
    ndppd_pidfile: str | None = None,
) -> str:
    """The YAML spec of `host` as it is, under a comment header. Reads; never writes.
    `controller` is written as given (it holds no token), `api` reads its `networks`;
    `ndppd_pidfile` is the `-p` of an ndppd ztplan did not start. Raises ZtplanError."""
    notes = _Notes()
    if networks and (controller is None or api is None):
        raise ZtplanError("networks to import need their controller (its kind) and an API client")
    parts: dict[str, Any] = {
        "controller": controller.model_dump(exclude_none=True) if controller else None,
        "networks": _networks(host, networks, controller, api) if controller and api else None,
        "firewall": _firewall(host, notes),
        "sysctl": _sysctls(host),
        "ndppd": _ndppd(host, ndppd_config, ndppd_pidfile, notes),
    }
    data = {"version": 1, "target": {"name": target}} | {k: v for k, v in parts.items() if v}
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:  # a bug: import should have left it out
        where, why = ".".join(map(str, error.errors()[0]["loc"])), error.errors()[0]["msg"]
        raise ZtplanError(f"the live {where} cannot be written in a spec: {why}") from None
    text, when = dump_spec(spec), datetime.now(UTC)
    notes.invalid = problems_of(text)
    if notes.invalid:  # written all the same, as the controller holds it; each problem at
        # its line of the final text (the header is comments: it moves lines, nothing else)
        notes.invalid = problems_of(_header(host, when, notes) + text)
    return _header(host, when, notes) + text


def problems_of(text: str) -> list[str]:
    """What `ztplan validate` refuses in an imported spec, as `line N: field: why`: only
    what a controller holds and ztplan refuses (a pool outside every route, say), since
    the model accepted the rest when it was imported."""
    try:
        parse_spec(text, "")
    except SpecError as error:
        return [
            f"line {e.line}: {e.field}: {e.expected}" if e.line else f"{e.field}: {e.expected}"
            for e in [error, *error.also]
        ]
    return []


def adopt_rules(host: Host, spec: Spec, normalise: Normaliser | None = None) -> list[Address]:
    """Move the live rules `spec` declares that stand outside ztplan's own chains into
    them, in one `*-restore --noflush` per family (see the module docstring); the addresses
    adopted. Idempotent: a rule already in the own chain is left alone, and so is a twin of
    it outside. A user chain of the spec whose rules all moved, and whose every jump moved
    too, is deleted. If the IPv6 transaction fails, the IPv4 one stays done."""
    from ztplan.diff import diff_resources
    from ztplan.model import Action
    from ztplan.providers.firewall import Firewall, Layout, restore_input

    firewall = Firewall(Layout.of(spec), normalise=normalise)
    desired = firewall.desired(spec)
    before = firewall.read(host)
    changes, _ = diff_resources(firewall.name, desired, before.resources)
    creates = [c for c in changes if c.action is Action.CREATE]
    adopted: list[Address] = []
    for family, (_, restore) in TOOLS.items():
        live = (before.parsed or {}).get(family, {})
        extra: dict[str, list[str]] = {}
        moved: dict[tuple[str, str], list[str]] = {}
        for change in creates:
            names, key = change.address.names, change.address.key
            if names[0] != family or key is None or len(names) != 3:
                continue  # not a rule (a chain, a jump) or another family's
            table, chain = names[1], names[2]
            have = live.get(table, fw.Table()).rules.get(chain, [])
            if key in have and key not in moved.get((table, chain), []):
                extra.setdefault(table, []).append(f"-D {chain} {key}")
                moved.setdefault((table, chain), []).append(key)
                adopted.append(change.address)
        if not moved:
            continue
        for (table, chain), texts in moved.items():
            rules = live.get(table, fw.Table()).rules
            if chain in TABLES[table] or set(rules.get(chain, [])) - set(texts):
                continue
            jumps = [
                (hook, r)
                for hook, hook_rules in rules.items()
                for r in hook_rules
                if fw.jump_target(r) == chain
            ]
            if all(r in moved.get((table, hook), []) for hook, r in jumps):
                extra[table] += [f"-F {chain}", f"-X {chain}"]
        # ztplan 0.1's rules among them move in the same transaction (their plan would),
        # and a chain of 0.1's that the move empties goes with them.
        legacy = [
            c for c in changes if c.address.names[3:] == ("legacy",) and c.action is Action.DELETE
        ]
        mine = [c for c in [*creates, *legacy] if c.address.names[0] == family]
        done = host.run(
            [restore, "--noflush"], input=restore_input(firewall, family, mine, live, extra)
        )
        if done.returncode != 0:
            raise LiveReadError("firewall", f"{restore}: {done.stderr.strip()}; none adopted")
    return adopted
