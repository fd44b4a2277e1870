"""sysctl keys, read and written under /proc/sys of the target's network namespace."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import ClassVar

from ztplan.address import Address
from ztplan.errors import LiveReadError
from ztplan.host import PROC_SYS, Host, proc_sys_path
from ztplan.model import Change, Finding, Resource, Snapshot
from ztplan.spec import Spec

__all__ = ["Sysctl", "key_path"]


def key_path(key: str) -> str:
    """`net.ipv4.conf.eth0/100.rp_filter` -> /proc/sys/net/ipv4/conf/eth0.100/rp_filter.

    sysctl(8) writes a dot inside a name (a VLAN interface) as `/`; the spec does the same.
    The key was checked in spec.py; the resolved path is checked again here so that no
    spelling can leave /proc/sys.
    """
    if any(part.replace("/", ".") in ("", ".", "..") for part in key.split(".")):
        raise ValueError(f"{key!r} is not a sysctl key")
    path = proc_sys_path(key)
    if os.path.commonpath([os.path.normpath(path), PROC_SYS]) != PROC_SYS:
        raise ValueError(f"{key!r} is not a sysctl key")
    return path


def normalise_value(value: object) -> str:
    """Multi-valued keys print tab-separated (`4096\t131072\t6291456`); compare word by word."""
    return " ".join(str(value).split())


def _address(key: str) -> Address:
    return Address.of("sysctl").item(key)


class Sysctl:
    name: ClassVar[str] = "sysctl"

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._keys = list(keys)
        """The keys to read: the spec's (a sysctl tree has thousands of foreign keys)."""

    def manages(self, spec: Spec) -> bool:
        return bool(spec.sysctl)

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        return {
            _address(key): Resource(_address(key), normalise_value(value))
            for key, value in spec.sysctl.items()
        }

    def read(self, host: Host) -> Snapshot:
        resources: dict[Address, Resource] = {}
        for key in self._keys:
            try:
                value = host.read_proc(key_path(key))
            except FileNotFoundError:
                raise LiveReadError(
                    self.name,
                    f"{key}: no such key in this kernel or namespace",
                    "check the spelling, and that the interface in the key exists",
                ) from None
            except OSError as error:
                raise LiveReadError(self.name, f"{key}: cannot read ({error.strerror})") from None
            if host.netns is not None:
                self._refuse_host_wide(host, key)
            resources[_address(key)] = Resource(_address(key), normalise_value(value), owned=False)
        return Snapshot.of(
            resources, raw={key: resources[_address(key)].value for key in self._keys}
        )

    def _refuse_host_wide(self, host: Host, key: str) -> None:
        """In a namespace, only keys it isolates: others would be written to the whole host.

        Only `net.*` keys can be per network namespace, and not all of them are (a table
        registered for every namespace shares one file): the kernel is asked, file by file.
        """
        shared = not key.startswith("net.")
        if not shared:
            try:
                shared = host.shares_with_host(key_path(key))
            except OSError as error:
                raise LiveReadError(
                    self.name, f"{key}: cannot tell whether it is per namespace ({error.strerror})"
                ) from None
        if shared:
            raise LiveReadError(
                self.name,
                f"{key}: not isolated by the network namespace {host.netns}: setting it there "
                "would change it for the whole host",
                "with --netns only per-namespace net.* keys; set host-wide keys on the host",
            )

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        return []

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        for change in changes:
            key = str(change.address.key)
            try:
                host.write_proc(key_path(key), str(change.after).replace(" ", "\t") + "\n")
            except OSError as error:
                raise LiveReadError(
                    self.name, f"{key}: cannot write {change.after!r} ({error.strerror})"
                ) from None

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        raw = before.raw if isinstance(before.raw, dict) else {}
        failed = []
        touched = {str(c.address.key) for c in changes}
        for key, value in raw.items():
            if key not in touched:
                continue
            try:
                if normalise_value(host.read_proc(key_path(key))) != value:
                    host.write_proc(key_path(key), str(value).replace(" ", "\t") + "\n")
            except OSError as error:
                failed.append(f"{key} ({error.strerror})")
        if failed:
            raise LiveReadError(self.name, f"could not restore {', '.join(failed)}")
