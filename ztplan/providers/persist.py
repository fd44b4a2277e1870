"""Boot persistence as a provider: the boot files are resources.

After apply, the live firewall and sysctls are saved where the distribution restores them
at boot, and ndppd is enabled at boot; the plan shows *boot drift*, live state that a
reboot would lose or change.

What boots must be what runs, foreign rules (Docker, fail2ban) included: netfilter-persistent
and iptables-services restore a whole ruleset. So a boot file's desired content is the live
state of the firewall and sysctl providers, not the spec: this provider is built with
those providers and with the run's `PlanContext` (their snapshots and planned changes,
filled in by `make_plan` before this provider, which comes last, is asked). A file whose
source has planned changes is "the live state after apply": apply saves it from a fresh
read, once every other step has run. ndppd is enabled at boot only where systemd runs it
(root `/`, no netns, no `pidfile`); elsewhere ztplan starts ndppd itself.

Addresses: persist["etc/iptables/rules.v4"] (relative to the root dir), persist["ndppd.service"].
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import JsonValue

from ztplan.address import Address
from ztplan.errors import LiveReadError
from ztplan.host import Host
from ztplan.iptables import parse_save
from ztplan.model import Change, Finding, PlanContext, Resource, Snapshot
from ztplan.providers.base import Provider
from ztplan.spec import Spec
from ztplan.state import write_atomic

__all__ = ["AFTER_APPLY", "BootFile", "Persist", "boot_files", "detect_kind", "make_persist"]

AFTER_APPLY = "the live state after apply"
"""The desired value of a boot file whose source the plan changes."""

FIREWALL_FILES = {
    "debian": ("etc/iptables/rules.v4", "etc/iptables/rules.v6", 0o640),
    "redhat": ("etc/sysconfig/iptables", "etc/sysconfig/ip6tables", 0o600),
}
"""kind -> (IPv4 file, IPv6 file) under the root dir, and their mode: the one the distribution's
own saver leaves (netfilter-persistent's plugins chmod 0640; `iptables.init save`, 0600)."""
RESTORERS = {
    "debian": ("netfilter-persistent", "usr/sbin/netfilter-persistent"),
    "redhat": ("iptables-services", "usr/libexec/iptables/iptables.init"),
}
"""kind -> (what restores the files at boot, a file it installs)."""
SYSCTL_FILE = "etc/sysctl.d/90-ztplan.conf"
HEADER = "# Written by ztplan after apply; restored at boot by {}. The next apply rewrites it.\n"
_KINDS = {"debian": "debian", "ubuntu": "debian", "rhel": "redhat", "fedora": "redhat"}
_KINDS |= {"centos": "redhat", "rocky": "redhat", "almalinux": "redhat"}
Previous = dict[Path, tuple[str, int] | None]
"""Path -> (text, mode) it had before a write, or None when it did not exist."""


@dataclass(frozen=True)
class BootFile:
    """What one boot file should hold, given the live state."""

    path: Path
    text: str
    name: str = ""
    """Relative to the root dir: the address, persist["etc/iptables/rules.v4"]."""
    source: str = ""
    """What it saves: "firewall.ipv4", "firewall.ipv6" or "sysctl"."""
    mode: int = 0o644


def detect_kind(root: Path) -> str:
    """debian | redhat | none, from os-release under `root`: ID first, then ID_LIKE (where
    a derivative such as Linux Mint names its parents)."""
    for name in ("etc/os-release", "usr/lib/os-release"):
        with contextlib.suppress(OSError, ValueError):  # missing, or an unbalanced quote
            words = shlex.split((root / name).read_text(encoding="utf-8"), comments=True)
            fields = dict(word.partition("=")[::2] for word in words)
            ids = f"{fields.get('ID', '')} {fields.get('ID_LIKE', '')}".lower().split()
            return next((_KINDS[i] for i in ids if i in _KINDS), "none")
    return "none"


def _ruleset(save: str) -> str:
    """`*-save` output as a boot file's body: no comments (timestamps), no counters."""
    lines = []
    for line in save.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("["):  # `iptables-save -c`: `[packets:bytes] -A ...`
            line = line.partition("] ")[2]
        elif line.startswith(":") and line.endswith("]"):
            line = line[: line.rindex("[")] + "[0:0]"
        lines.append(line + "\n")
    return "".join(lines)


def boot_files(
    kind: str, root: Path, firewall_raw: Mapping[str, str] | None, sysctl: Mapping[str, str] | None
) -> list[BootFile]:
    """What should be on disk for `kind` given the live state (pure). `firewall_raw` is the
    firewall snapshot's raw (family -> `*-save` text); `sysctl` is key -> live value."""
    if kind not in FIREWALL_FILES:
        return []
    out = []
    v4, v6, mode = FIREWALL_FILES[kind]
    for family, name in (("ipv4", v4), ("ipv6", v6)):
        if firewall_raw is not None and family in firewall_raw:
            text = HEADER.format(RESTORERS[kind][0]) + _ruleset(firewall_raw[family])
            out.append(BootFile(root / name, text, name, f"firewall.{family}", mode))
    if sysctl is not None:
        body = "".join(f"{k} = {' '.join(str(v).split())}\n" for k, v in sorted(sysctl.items()))
        text = HEADER.format("systemd-sysctl") + body
        out.append(BootFile(root / SYSCTL_FILE, text, SYSCTL_FILE, "sysctl"))
    return out


def _sysctl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        key = key.strip().lstrip("-")  # `-key = value`: ignore errors
        if sep and key and key[0] not in "#;":
            if "/" in key and ("." not in key or key.index("/") < key.index(".")):
                key = key.translate(str.maketrans("/.", "./"))  # sysctl.d(5): `/` first
            out[key] = " ".join(value.split())
    return out


def _meaning(file: BootFile, text: str) -> tuple[object, set[str], JsonValue]:
    """(what to compare, its items for a +/- detail, a short summary)."""
    if file.source == "sysctl":
        values = _sysctl(text)
        return values, {f"{k} = {v}" for k, v in values.items()}, dict(values)
    tables = {  # a table with no rules and only ACCEPT policies is as good as none
        name: table
        for name, table in parse_save(_ruleset(text)).items()
        if any(table.rules.values()) or set(table.policies.values()) - {"ACCEPT", "-"}
    }
    items: set[str] = set()
    for t, tab in tables.items():  # ACCEPT is every built-in chain's default: not an item
        for chain, policy in tab.policies.items():
            if policy != "ACCEPT":
                items.add(f"{t}: -N {chain}" if policy == "-" else f"{t}: -P {chain} {policy}")
        items |= {f"{t}: -A {c} {r}" for c, rules in tab.rules.items() for r in rules}
    count = sum(len(rules) for table in tables.values() for rules in table.rules.values())
    return tables, items, f"{count} rules ({', '.join(sorted(tables)) or 'no tables'})"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LiveReadError("persist", f"cannot read {path} ({error.strerror})") from None


def _holds(file: BootFile, text: str | None) -> str:
    """A boot file's resource value: what it holds by meaning, and a digest of that meaning
    (so `==` is "boots the same"; a missing file boots the same as an empty one)."""
    meaning, _, summary = _meaning(file, text or "")
    digest = hashlib.sha256(_canonical(meaning).encode()).hexdigest()[:12]
    return f"{_summary(summary)} [{digest}]"


def _canonical(meaning: object) -> str:
    """The meaning as text that is equal exactly when the meanings are (tables and keys in
    any order: what a restore of them does is the same)."""
    if isinstance(meaning, dict):
        return repr(sorted((k, _canonical(v)) for k, v in meaning.items()))
    if hasattr(meaning, "policies") and hasattr(meaning, "rules"):
        return repr((sorted(meaning.policies.items()), sorted(meaning.rules.items())))
    return repr(meaning)


def _summary(value: JsonValue) -> str:
    if isinstance(value, dict):
        return f"{len(value)} values"
    return str(value)


def _drift(file: BootFile, on_disk: str | None) -> tuple[str, tuple[str, ...]]:
    """(why the file would change, the items it gains and loses) against the live state."""
    _, have, _ = _meaning(file, on_disk or "")
    _, want, _ = _meaning(file, file.text)
    added, removed = sorted(want - have), sorted(have - want)
    what = "values" if file.source == "sysctl" else "rules"
    lost = on_disk is None or bool(added)
    reason = f"live {what} would be lost at reboot" if lost else "would change at reboot"
    detail = [f"+ {i}" for i in added] + [f"- {i}" for i in removed] or ["order differs"]
    detail = detail[:10] + [f"... {len(detail) - 10} more"] * (len(detail) > 10)
    return reason, tuple(detail)


def write_boot_files(files: Sequence[BootFile]) -> Previous:
    """Write (atomically) each file that differs by meaning; all or nothing. Returns what
    each written file was before, for `restore_boot_files` (a later step failing)."""
    previous: Previous = {}
    for file in files:
        old = _read(file.path)
        if _holds(file, old) == _holds(file, file.text):
            continue
        try:
            mode = stat.S_IMODE(file.path.stat().st_mode) if old is not None else 0
            write_atomic(file.path, file.text, file.mode)  # a failed write leaves the old file
            previous[file.path] = None if old is None else (old, mode)
        except OSError as error:
            message = f"cannot write {file.path} ({error.strerror or error})"
            try:
                restore_boot_files(previous)
            except OSError as undo:
                message += f"; nor put back the files written before it ({undo.strerror})"
            raise LiveReadError("persist", message) from None
    return previous


def restore_boot_files(previous: Previous) -> None:
    """Put back what `write_boot_files` replaced (and remove what it created)."""
    for path, old in previous.items():
        if old is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        else:
            write_atomic(path, *old)


def _address(name: str) -> Address:
    return Address.of("persist").item(name)


class Persist:
    """Boot files for `kind` (debian | redhat) under `root`; `ndppd`: enable ndppd.service
    at boot. `sources` are the run's firewall and sysctl providers (read afresh to save)."""

    name: ClassVar[str] = "persist"

    def __init__(
        self,
        kind: str,
        root: Path,
        context: PlanContext,
        sources: Sequence[Provider] = (),
        ndppd: bool = False,
        findings: Sequence[Finding] = (),
    ) -> None:
        self.kind = kind
        self.root = root
        self.context = context
        self.sources = {p.name: p for p in sources if p.name in ("firewall", "sysctl")}
        self.ndppd = ndppd
        self.findings = list(findings)

    def manages(self, spec: Spec) -> bool:
        return self.kind in FIREWALL_FILES

    def _files(self, snapshots: Mapping[str, Snapshot]) -> list[BootFile]:
        raw = {n: s.raw for n, s in snapshots.items() if isinstance(s.raw, dict)}
        # The sysctl file is ztplan's own: with no sysctl in the spec it should hold none.
        return boot_files(self.kind, self.root, raw.get("firewall"), raw.get("sysctl", {}))

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        """What each boot file should hold: the live state just read (the context's
        snapshots), or AFTER_APPLY where the plan changes its source. Reads the files
        themselves, to say what a reboot would lose."""
        out: dict[Address, Resource] = {}
        for file in self._files(self.context.snapshots):
            address = _address(file.name)
            on_disk = _read(file.path)
            if any(c.address.within(file.source) for c in self.context.changes):
                out[address] = Resource(address, AFTER_APPLY, reason="saved after apply")
                continue
            value = _holds(file, file.text)
            if value == _holds(file, on_disk):
                if on_disk is not None:  # missing and meant to hold nothing: nothing to say
                    out[address] = Resource(address, value)
            else:
                reason, detail = _drift(file, on_disk)
                out[address] = Resource(address, value, reason=reason, detail=detail)
        if self.ndppd:
            address = _address("ndppd.service")
            out[address] = Resource(address, "enabled", reason="would not start at boot")
        return out

    def read(self, host: Host) -> Snapshot:
        resources: dict[Address, Resource] = {}
        raw: dict[str, JsonValue] = {}
        for file in self._files(self.context.snapshots):
            address = _address(file.name)
            text = _read(file.path)
            if text is not None:
                resources[address] = Resource(address, _holds(file, text), owned=False)
            mode = stat.S_IMODE(file.path.stat().st_mode) if text is not None else None
            raw[file.name] = None if text is None else [text, mode]
        if self.ndppd:
            address = _address("ndppd.service")
            enabled = host.run(["systemctl", "is-enabled", "ndppd"]).returncode == 0
            resources[address] = Resource(
                address, "enabled" if enabled else "disabled", owned=False
            )
            raw["ndppd.service"] = "enabled" if enabled else "disabled"
        return Snapshot.of(resources, raw=raw)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        return list(self.findings)

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        """Save afresh (one `*-save` per family, the sysctl keys) the files the changes
        name, and enable ndppd. All or nothing: on failure the files are put back."""
        names = {c.address.key for c in changes}
        fresh = {name: p.read(host) for name, p in self.sources.items()}
        files = [f for f in self._files(fresh) if f.name in names]
        previous = write_boot_files(files)
        if self.ndppd and "ndppd.service" in names:
            done = host.run(["systemctl", "enable", "ndppd"])
            if done.returncode != 0:
                restore_boot_files(previous)
                raise LiveReadError("persist", f"systemctl enable ndppd: {done.stderr.strip()}")

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        """Put back the files the changes name as `before` read them (from its raw alone:
        a revert has no plan, and so no context)."""
        raw = before.raw if isinstance(before.raw, dict) else {}
        names = {c.address.key for c in changes}
        previous: Previous = {}
        for name, old in raw.items():
            if name in names and name != "ndppd.service":
                path = self.root / name
                previous[path] = (
                    (str(old[0]), int(old[1] or 0o644)) if isinstance(old, list) else None
                )
        restore_boot_files(previous)
        if "ndppd.service" in names and raw.get("ndppd.service") == "disabled":
            host.run(["systemctl", "disable", "ndppd"])


def make_persist(
    setting: str,
    root: Path,
    spec: Spec,
    netns: str | None,
    context: PlanContext,
    sources: Sequence[Provider],
) -> Persist | None:
    """The run's persistence from the spec's `persist` and `--root`, with its findings: a
    boot file (netfilter-persistent's, say) a reboot would restore instead of the rules
    ztplan applies, a missing restorer, a namespace that would overwrite the host's files.
    None when there is nothing to persist and nothing to say."""
    kind = detect_kind(root) if setting == "auto" else setting
    firewall = netns is None and spec.firewall is not None  # a namespace is not booted
    found = [n for v4, v6, _ in FIREWALL_FILES.values() for n in (v4, v6) if (root / n).exists()]
    said = []
    if setting == "auto" and kind == "none":
        said.append(f"auto: {root / 'etc/os-release'} names no Debian or Red Hat family")
    if kind == "none" and firewall and found:
        said.append(f"a reboot restores {root / found[0]}, not the rules ztplan applies")
    if kind in RESTORERS and firewall and not (root / RESTORERS[kind][1]).exists():
        said.append(f"{RESTORERS[kind][0]} is not installed: nothing restores the rules at boot")
    findings = [Finding(severity="warning", message=m, address="persist") for m in said]
    if kind in FIREWALL_FILES and netns is not None and root.resolve() == Path("/"):
        findings.append(
            Finding(
                severity="error",
                address="persist",
                message=f"{kind} with --netns would make the namespace's rules this host's "
                "boot firewall; pass --root DIR, or set persist: none",
            )
        )
        kind = "none"
    if kind not in FIREWALL_FILES and not findings:
        return None
    on_systemd = root.resolve() == Path("/") and os.path.isdir("/run/systemd/system")
    ndppd = spec.ndppd is not None and spec.ndppd.pidfile is None and netns is None and on_systemd
    return Persist(kind, root, context, sources, ndppd and kind in FIREWALL_FILES, findings)
