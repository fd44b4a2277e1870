"""`ztplan import`: the spec of a gateway configured by hand, and adopting its rules.

`import_spec` reads the host as the providers do (firewall, the gateway's sysctls,
ndppd.conf, controller networks) and returns the spec describing it, written by `dump_spec`
under a comment header. It never writes, so it is safe on a production gateway.

Ownership. ztplan owns a rule only when it carries `-m comment --comment ztplan`, and rules
made by hand do not: planned against its host, the imported spec shows one `create` per
untagged rule (the originals as unmanaged), and applying that would append tagged copies
behind the originals, every rule twice. Declaring the chains `exclusive` would delete the
originals and other tools' rules instead. So the spec stays truthful and adoption is an
explicit write, `adopt_rules` (`ztplan import --adopt`): it tags the live rules the spec
declares where they stand, one `*-restore --noflush` per family; the plan is then empty.
Explicit, because tagging is a claim: an adopted rule later taken out of the spec is deleted
by apply. A rule is re-tagged as `-D CHAIN <rule>` + `-I CHAIN N <tag> <rule>`: deleting by
text, not number, makes a rule changed since the read fail the whole transaction rather than
replace another rule. Its counters restart at zero. Other tools' rules are left out, each
named in the header: see `FOREIGN_CHAINS`, `FOREIGN_INTERFACES` and `_why_foreign`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ztplan.api import ApiClient
from ztplan.errors import LiveReadError, ZtplanError
from ztplan.gateway import dump_spec
from ztplan.host import Host
from ztplan.model import Address
from ztplan.ndppd_conf import NdppdConfError, parse_ndppd_conf
from ztplan.providers import firewall as fw
from ztplan.providers.ndppd import rule_method
from ztplan.providers.sysctl import key_path, normalise_value
from ztplan.spec import CHAIN_RE, TABLES, Controller, Spec, parse_spec, rule_problem

__all__ = ["FOREIGN_CHAINS", "FOREIGN_INTERFACES", "SYSCTLS", "adopt_rules", "import_spec"]

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
Not ztplan's yet: {} rule(s) lack the tag `-m comment --comment ztplan`. Until they are
adopted (`ztplan import --adopt`), a plan shows a create for each and the originals as
unmanaged; applying that would append tagged copies behind the originals."""
_NDPPD_EXTRA = ("route_ttl", "address_ttl", "autowire", "keepalive", "promiscuous", "retries")
"""ndppd.conf options the spec has no field for (on the file or a proxy)."""


@dataclass
class _Notes:
    """What the header says beside the spec."""

    left_out: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    untagged: int = 0


def _owner(patterns: dict[str, str], name: str) -> str | None:
    return next((who for who, pattern in patterns.items() if re.fullmatch(pattern, name)), None)


def _jump(rule: str) -> str | None:
    return found.group(1) if (found := re.search(r"(?:^| )-[jg] (\S+)", rule)) else None


def _why_foreign(chain: str, rule: str, foreign: dict[str, str]) -> str | None:
    """Why a live rule is left out (None: import it). A tagged rule is ztplan's, always."""
    if not fw.is_owned(rule):
        if chain in foreign:
            return foreign[chain]
        if (target := _jump(rule)) in foreign:
            return f"jumps to {target}: {foreign[target]}"
        for interface in re.findall(r"(?:^| )-[io] (\S+)", rule):
            if who := _owner(FOREIGN_INTERFACES, interface):
                return f"{who}'s interface {interface}"
        if _HAIRPIN.search(rule):
            return "Docker's NAT for a published port"
    problem = rule_problem(fw.untag(rule))
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


def _table(where: str, table: fw.Table, builtins: Sequence[str], notes: _Notes) -> dict[str, Any]:
    """One table in the spec's shape: non-ACCEPT policies, then the non-empty chains."""
    foreign = _foreign_chains(table, builtins)
    policy = {c: p for c, p in table.policies.items() if c in builtins and p != "ACCEPT"}
    out: dict[str, Any] = {"policy": policy} if policy else {}
    for chain, rules in table.rules.items():
        if chain in foreign and rules and not any(map(fw.is_owned, rules)):
            notes.left_out.append(
                f"{where} {chain}: whole chain, {len(rules)} rule(s) ({foreign[chain]})"
            )
            continue
        tagged = {fw.untag(rule) for rule in rules if fw.is_owned(rule)}
        kept: list[str] = []
        for rule in rules:
            text = fw.untag(rule)
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
    for family, (save, _) in fw.TOOLS.items():
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
    return "".join(re.sub(r"[\x00-\x1f\x7f]", "?", f"# {x}").rstrip() + "\n" for x in lines) + "\n"


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
    text = dump_spec(spec)
    parse_spec(text, "imported spec")  # the checks `ztplan validate` makes; raises SpecError
    return _header(host, datetime.now(UTC), notes) + text


def adopt_rules(host: Host, spec: Spec, normalise: fw.Normaliser | None = None) -> list[Address]:
    """Tag the untagged live rules `spec` declares, each in its place, in one `*-restore
    --noflush` per family; the addresses adopted. Idempotent: a tagged rule (and an untagged
    twin of it) is left alone; if the IPv6 transaction fails, the IPv4 one stays done."""
    wanted: dict[str, dict[tuple[str, str], list[str]]] = {}
    for address, resource in fw.Firewall(normalise=normalise).desired(spec).items():
        if resource.relative_order and isinstance(resource.value, list):
            _, family, table, chain = address.split(".", 3)
            wanted.setdefault(family, {})[(table, chain)] = [str(r) for r in resource.value]
    adopted: list[Address] = []
    for family, chains in wanted.items():
        save, restore = fw.TOOLS[family]
        live = _save(host, save)
        lines: dict[str, list[str]] = {}
        for (table, chain), rules in chains.items():
            have = live.get(table, fw.Table()).rules.get(chain, [])
            todo = set(rules) - {fw.untag(rule) for rule in have if fw.is_owned(rule)}
            for position, rule in enumerate(have, 1):
                if rule in todo:  # the first untagged copy only
                    todo.discard(rule)
                    lines.setdefault(table, []).append(
                        f"-D {chain} {rule}\n-I {chain} {position} {fw.TAG_ARGS} {rule}"
                    )
                    adopted.append(fw.rule_address(family, table, chain, rule))
        if lines:
            text = "".join(f"*{t}\n" + "\n".join(ls) + "\nCOMMIT\n" for t, ls in lines.items())
            done = host.run([restore, "--noflush"], input=text)
            if done.returncode != 0:
                raise LiveReadError("firewall", f"{restore}: {done.stderr.strip()}; none adopted")
    return adopted
