"""The twin's network namespaces: names that say who owns them, creation, removal, and
entering one for a moment to open a socket there.

A twin is three namespaces, `ztplan-twin-<pid>-<start>-<random>-{gw,mem,net}`: `pid` and
`start` (the process's start time in clock ticks, /proc/PID/stat field 22) name the ztplan
process that made it. A SIGKILLed ztplan cannot remove its twin, so every new twin first
removes those whose owner is gone: no process with that pid, or one that started at another
time (the pid was reused). A live process's twin, and any namespace not named like this
(the host's own, another tool's), is never touched.

Sockets are opened inside a namespace by switching only the calling thread there with
setns(2) and back (a socket stays in the namespace it was made in): no fork, no `ip netns
exec`, a few microseconds per socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
from dataclasses import dataclass

from ztplan.errors import TwinUnavailable
from ztplan.host import NETNS_DIR, inside_netns

__all__ = [
    "ROLES",
    "TwinNames",
    "check_available",
    "create_namespace",
    "inside",
    "new_names",
    "remove_namespace",
    "remove_stale_twins",
]

PREFIX = "ztplan-twin-"
ROLES = ("gw", "mem", "net")
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)-([0-9a-f]+)-({'|'.join(ROLES)})$")
_libc = ctypes.CDLL(None, use_errno=True)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, None when there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return int(stat.rpartition(")")[2].split()[19])


@dataclass(frozen=True)
class TwinNames:
    gw: str
    mem: str
    net: str

    def all(self) -> tuple[str, str, str]:
        return (self.gw, self.mem, self.net)


def new_names() -> TwinNames:
    pid = os.getpid()
    stem = f"{PREFIX}{pid}-{_start_time(pid) or 0}-{secrets.token_hex(3)}"
    return TwinNames(f"{stem}-gw", f"{stem}-mem", f"{stem}-net")


def owner_alive(name: str) -> bool | None:
    """For a twin's namespace name: whether the process that made it still runs (None: not
    a twin's name)."""
    match = _NAME.match(name)
    if match is None:
        return None
    return _start_time(int(match.group(1))) == int(match.group(2))


def remove_stale_twins() -> list[str]:
    """Remove the namespaces of twins whose ztplan process is gone; return their names."""
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []
    removed = []
    for name in names:
        if owner_alive(name) is False:
            remove_namespace(name)
            removed.append(name)
    return removed


def check_available() -> None:
    """Raise TwinUnavailable when this process cannot build a twin."""
    if os.geteuid() != 0:
        raise TwinUnavailable("building a twin needs root (network namespaces, nftables)")
    for tool in ("ip", "nft", "iptables-nft-restore", "ip6tables-nft-restore"):
        if shutil.which(tool) is None:
            raise TwinUnavailable(f"{tool} is not installed")
    if not os.path.exists("/proc/self/ns/net"):
        raise TwinUnavailable("this kernel has no network namespaces")


def create_namespace(name: str) -> None:
    from pyroute2 import netns as pyroute2_netns

    try:
        pyroute2_netns.create(name)
    except OSError as error:
        raise TwinUnavailable(f"cannot create a network namespace ({error})") from None


def remove_namespace(name: str) -> None:
    """Unmount and unlink `/run/netns/NAME`; the kernel frees the namespace (and the veth
    pairs in it) once nothing holds it. Missing is fine."""
    path = os.path.join(NETNS_DIR, name)
    _libc.umount2(path.encode(), 2)  # MNT_DETACH
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


inside = inside_netns
"""Run the block with this thread in namespace `name` (other threads stay where they are);
sockets opened in the block belong to that namespace for good."""
