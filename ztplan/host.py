"""The host a target lives on: commands and /proc/sys files, optionally inside a netns.

Providers talk to a `Host`, never to `subprocess` or `open()` directly, so tests can hand
them a replaying or failing host, and `--netns` is one constructor argument.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ztplan.errors import LiveReadError

__all__ = [
    "CommandResult",
    "Host",
    "LocalHost",
    "NETNS_CONFIG_DIR",
    "NETNS_DIR",
    "inside_netns",
    "FORWARDING",
    "proc_sys_path",
    "sysctl_key",
    "sysctl_name",
]

NETNS_DIR = "/run/netns"
PROC_SYS = "/proc/sys"
FORWARDING = {"ipv4": "net.ipv4.ip_forward", "ipv6": "net.ipv6.conf.all.forwarding"}
"""The sysctl key that turns forwarding on, per family."""


def proc_sys_path(key: str) -> str:
    """`net.ipv4.conf.eth0/100.rp_filter` -> /proc/sys/net/ipv4/conf/eth0.100/rp_filter.

    sysctl(8) writes a dot inside a name (a VLAN interface) as `/`; the spec does the same.
    """
    return os.path.join(PROC_SYS, *(part.replace("/", ".") for part in key.split(".")))


def sysctl_key(path: str) -> str:
    """The key of a /proc/sys path, as sysctl(8) spells it (proc_sys_path's inverse)."""
    parts = path.removeprefix(PROC_SYS + "/").split("/")
    return ".".join(part.replace(".", "/") for part in parts)


def sysctl_name(name: str) -> str:
    """An interface name as one part of a sysctl key: `eth0.100` -> `eth0/100`."""
    return name.replace(".", "/")


NETNS_CONFIG_DIR = "/etc/ztplan/netns"
"""Where a namespace's copies of /etc files live: /etc/X of namespace NAME is
NETNS_CONFIG_DIR/NAME/X."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Host(Protocol):
    netns: str | None

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        """Run argv (never a shell string) in the target's namespace; never raises on exit code."""
        ...

    def read_proc(self, path: str) -> str:
        """Read a /proc/sys file as the target namespace sees it."""
        ...

    def write_proc(self, path: str, value: str) -> None:
        """Write a /proc/sys file in the target namespace."""
        ...

    def shares_with_host(self, path: str) -> bool:
        """Whether the target namespace sees the host's own copy of this /proc/sys file: a
        setting the namespace does not isolate, which a write would change for the whole
        host. True on the host itself."""
        ...

    def addresses(self) -> dict[str, list[str]]:
        """Interface name -> its IP addresses (no prefix length), in the target namespace."""
        ...

    def config_path(self, path: str) -> str:
        """Where the target's copy of a config file lives: /etc/X of a namespace is
        /etc/ztplan/netns/NAME/X. (Not `ip netns exec`'s /etc/netns/NAME/X: that one it
        bind-mounts over /etc/X in every command run in the namespace, and complains on
        each when the host has no /etc/X.)"""
        ...

    def read_file(self, path: str) -> str | None:
        """A file's text, or None when it does not exist."""
        ...

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Replace a file atomically (temp file + rename)."""
        ...

    def remove_file(self, path: str) -> None:
        """Remove a file if it exists."""
        ...


CLONE_NEWNET = 0x40000000


@functools.cache
def _libc() -> Any:
    import ctypes  # ~6 ms, and only with a namespace (pyroute2's pushns cost ~0.15 s)

    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        import ctypes

        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


@contextlib.contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace `name` (an `ip netns` name),
    then bring it back; other threads stay where they are. What the block opens there (a
    /proc/sys/net file, a socket) belongs to that namespace for good. Two setns(2) calls:
    no fork, no `ip netns exec`, microseconds."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


@dataclass
class LocalHost:
    """This machine, or one of its network namespaces (`ip netns` names)."""

    netns: str | None = None

    def __post_init__(self) -> None:
        if self.netns is not None and (
            not self.netns or "/" in self.netns or self.netns in (".", "..") or "\0" in self.netns
        ):  # it names paths under /run/netns and /etc/ztplan/netns: never a way out of them
            raise LiveReadError(
                "host", f"{self.netns!r} is not a network namespace name (no '/', not '..')"
            )
        if self.netns is not None and not os.path.exists(os.path.join(NETNS_DIR, self.netns)):
            raise LiveReadError(
                "host",
                f"no network namespace named {self.netns!r}",
                "list them with `ip netns list`; `ztplan sandbox up` makes ztplan-sandbox",
            )

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        """The command's output goes to an unnamed temporary file, not a pipe: through a
        pipe's 64 KiB the child waits for this process to read each piece, and with other
        threads holding the GIL a save of 50,000 rules took three times the kernel's time."""
        import locale
        import tempfile

        full = list(argv) if self.netns is None else ["ip", "netns", "exec", self.netns, *argv]
        with tempfile.TemporaryFile() as out:
            try:
                done = subprocess.run(
                    full, input=input, stdout=out, stderr=subprocess.PIPE, text=True, check=False
                )
            except FileNotFoundError:
                raise LiveReadError(
                    "host", f"{argv[0]} is not installed", "apt-get install iptables iproute2"
                ) from None
            out.seek(0)
            stdout = out.read().decode(locale.getpreferredencoding(False))
        if "\r" in stdout:  # as text mode reads a pipe (universal newlines)
            stdout = stdout.replace("\r\n", "\n").replace("\r", "\n")
        return CommandResult(tuple(argv), done.returncode, stdout, done.stderr)

    def _inside(self) -> contextlib.AbstractContextManager[None]:
        # /proc/sys/net shows the namespace of the thread that opens the file, so this
        # thread enters the namespace for the open only, then comes back.
        return contextlib.nullcontext() if self.netns is None else inside_netns(self.netns)

    def read_proc(self, path: str) -> str:
        with self._inside(), open(path, encoding="utf-8") as handle:
            return handle.read()

    def write_proc(self, path: str, value: str) -> None:
        with self._inside(), open(path, "w", encoding="utf-8") as handle:
            handle.write(value)

    def shares_with_host(self, path: str) -> bool:
        """The same file (device and inode) from both sides. The host's copy is held open
        (O_PATH: no read permission needed) while the namespace looks its copy up, so the
        kernel cannot drop and renumber it in between: a file the namespace does not
        isolate is then the very same inode, and a per-namespace one never is."""
        if self.netns is None:
            return True
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # the host has no such file (an interface of the namespace only)
        try:
            with self._inside():
                inside = os.stat(path)
            outside = os.fstat(fd)
        finally:
            os.close(fd)
        return (inside.st_dev, inside.st_ino) == (outside.st_dev, outside.st_ino)

    def addresses(self) -> dict[str, list[str]]:
        """From `ip -json address` (one process: pyroute2 cost ~0.15 s to import, and its
        `NetNS` forked a helper per namespace). Each address is the kernel's IFA_ADDRESS,
        as pyroute2 gave it: `ip` prints it as "address" when it differs from IFA_LOCAL
        (the peer of a point-to-point link), else as "local". OSError when it fails."""
        import json

        try:
            done = self.run(["ip", "-json", "address", "show"])
        except LiveReadError as error:
            raise OSError(str(error)) from None
        if done.returncode != 0:
            raise OSError(f"ip address show: {done.stderr.strip() or done.returncode}")
        out: dict[str, list[str]] = {}
        for link in json.loads(done.stdout or "[]"):
            found = out.setdefault(str(link.get("ifname")), [])
            for info in link.get("addr_info", []):
                address = info.get("address", info.get("local"))
                if address is not None:
                    found.append(str(address))
        return out

    def config_path(self, path: str) -> str:
        """Refuses (LiveReadError) a path that would leave the namespace's folder, by `..`
        or by a symlink inside it: ztplan writes there as root."""
        if self.netns is None or not path.startswith("/etc/"):
            return path
        root = os.path.join(NETNS_CONFIG_DIR, self.netns)
        inside = os.path.normpath(os.path.join(root, path.removeprefix("/etc/")))
        real_root = os.path.realpath(root)
        if (
            os.path.commonpath([inside, root]) != root
            or inside == root
            or os.path.commonpath([os.path.realpath(inside), real_root]) != real_root
        ):
            raise LiveReadError(
                "host",
                f"{path}: leaves the namespace's config folder {root}/",
                "name a file under /etc/ without '..' or symlinks out of it",
            )
        return inside

    def read_file(self, path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        from ztplan.state import write_atomic

        write_atomic(Path(path), text, mode)

    def remove_file(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
