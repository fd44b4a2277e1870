"""Boot persistence: after apply, the live firewall and sysctls are saved where the
distribution restores them at boot and ndppd is enabled at boot; the plan shows *boot
drift*, live state that a reboot would lose or change.

What boots must be what runs, foreign rules (Docker, fail2ban) included: netfilter-persistent
and iptables-services restore a whole ruleset. So the files depend on the live state, not
only on the spec, and this is no Provider (`desired(spec)` could not say what they hold):
`make_plan` asks `Persist.changes` with the snapshots it has just read; `apply_plan` ends
with `Persist.save`, which saves afresh once every other step has run. ndppd is enabled at
boot only where systemd runs it (root `/`, no netns, no `pidfile`); elsewhere ztplan starts
ndppd itself and nothing is recorded for boot.

Addresses: persist["etc/iptables/rules.v4"] (relative to the root dir), persist["ndppd.service"].
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from ztplan.errors import LiveReadError
from ztplan.host import Host
from ztplan.model import Action, Change, Finding, Snapshot
from ztplan.providers import Provider
from ztplan.providers.firewall import parse_save
from ztplan.spec import Spec
from ztplan.state import write_atomic

__all__ = ["BootFile", "Persist", "boot_drift", "boot_files", "detect_kind", "make_persist"]
__all__ += ["restore_boot_files", "write_boot_files"]

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


def _change(
    name: str, before: JsonValue, after: JsonValue, reason: str, detail: Any = ()
) -> Change:
    """`before` None: the file is missing (a create)."""
    action = Action.CREATE if before is None else Action.UPDATE
    return Change(
        address=f'persist["{name}"]',
        provider="persist",
        action=action,
        before=before,
        after=after,
        reason=reason,
        detail=list(detail),
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LiveReadError("persist", f"cannot read {path} ({error.strerror})") from None


def boot_drift(files: Sequence[BootFile]) -> list[Change]:
    """A change per file whose content on disk differs by meaning from what it should be
    (a missing file counts as empty: nothing live is lost when nothing is there)."""
    changes = []
    for file in files:
        on_disk = _read(file.path)
        have, have_items, before = _meaning(file, on_disk or "")
        want, want_items, after = _meaning(file, file.text)
        if have == want:
            continue
        added, removed = sorted(want_items - have_items), sorted(have_items - want_items)
        what = "values" if file.source == "sysctl" else "rules"
        lost = on_disk is None or bool(added)
        reason = f"live {what} would be lost at reboot" if lost else "would change at reboot"
        detail = [f"+ {i}" for i in added] + [f"- {i}" for i in removed] or ["order differs"]
        detail = detail[:10] + [f"... {len(detail) - 10} more"] * (len(detail) > 10)
        before = None if on_disk is None else before
        changes.append(_change(file.name, before, after, reason, detail))
    return changes


def write_boot_files(files: Sequence[BootFile]) -> Previous:
    """Write (atomically) each file that differs by meaning; all or nothing. Returns what
    each written file was before, for `restore_boot_files` (a later step failing)."""
    drifted = {c.address for c in boot_drift(files)}
    previous: Previous = {}
    for file in (f for f in files if f'persist["{f.name}"]' in drifted):
        try:
            old = _read(file.path)
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


@dataclass(frozen=True)
class Persist:
    """Where a run persists to: `kind` debian | redhat under `root`; `ndppd`: enable
    ndppd.service at boot (systemd, root `/`, no netns, no pidfile)."""

    kind: str
    root: Path
    ndppd: bool = False

    def files(self, snapshots: Mapping[str, Snapshot]) -> list[BootFile]:
        raw = {n: s.raw for n, s in snapshots.items() if isinstance(s.raw, dict)}
        # The sysctl file is ztplan's own: with no sysctl in the spec it should hold none.
        return boot_files(self.kind, self.root, raw.get("firewall"), raw.get("sysctl", {}))

    def changes(
        self, host: Host, snapshots: Mapping[str, Snapshot], planned: Sequence[Change]
    ) -> list[Change]:
        """The plan's persist part, from the snapshots make_plan has just read: boot drift,
        except for a file whose source the plan changes (its drift now says nothing): that
        one is written after apply."""
        out = []
        for file in self.files(snapshots):
            if any(c.address.startswith((f"{file.source}.", f"{file.source}[")) for c in planned):
                on_disk = _read(file.path)
                before = None if on_disk is None else _meaning(file, on_disk)[2]
                out.append(
                    _change(file.name, before, "the live state after apply", "saved after apply")
                )
            else:
                out.extend(boot_drift([file]))
        if self.ndppd and host.run(["systemctl", "is-enabled", "ndppd"]).returncode != 0:
            out.append(_change("ndppd.service", "disabled", "enabled", "would not start at boot"))
        return out

    def save(self, host: Host, providers: Sequence[Provider]) -> Previous:
        """After every other step: read afresh (one `*-save` per family, the sysctl keys),
        write the files that differ and enable ndppd. All or nothing: on failure the files
        are put back before raising. Returns what `restore_boot_files` needs."""
        fresh = {p.name: p.read(host) for p in providers if p.name in ("firewall", "sysctl")}
        previous = write_boot_files(self.files(fresh))
        if self.ndppd:
            done = host.run(["systemctl", "enable", "ndppd"])
            if done.returncode != 0:
                restore_boot_files(previous)
                raise LiveReadError("persist", f"systemctl enable ndppd: {done.stderr.strip()}")
        return previous


def make_persist(
    setting: str, root: Path, spec: Spec, netns: str | None
) -> tuple[Persist | None, list[Finding]]:
    """The run's persistence from the spec's `persist` and `--root`, and findings about it:
    a boot file (netfilter-persistent's, say) a reboot would restore instead of the rules
    ztplan applies, a missing restorer, a namespace that would overwrite the host's files."""
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
    if kind not in FIREWALL_FILES:
        return None, findings
    if netns is not None and root.resolve() == Path("/"):
        message = (
            f"{kind} with --netns would make the namespace's rules this host's boot "
            "firewall; pass --root DIR, or set persist: none"
        )
        return None, [*findings, Finding(severity="error", message=message, address="persist")]
    on_systemd = root.resolve() == Path("/") and os.path.isdir("/run/systemd/system")
    ndppd = spec.ndppd is not None and spec.ndppd.pidfile is None and netns is None and on_systemd
    return Persist(kind, root, ndppd), findings
