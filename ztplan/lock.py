"""state/<target>.lock: one run at a time per target, and the lock names its holder.

Taking the lock: the LockInfo JSON is written to a temp file in the same directory and
fsynced, then hard-linked to the lock's name. `link` fails when the name exists, so two runs
cannot both take it, and a lock is complete before anyone can see it: a loser never reads a
half-written lock (the previous release created the file first and wrote it after, and
losers reported live holders as stale). Where the file system has no hard links, the lock
falls back to O_EXCL and readers give a lock that does not parse a short grace period.

Who holds it, beyond a pid: the kernel's boot id and the holder's start time
(/proc/PID/stat), so a recycled pid or a reboot is not mistaken for the holder.

    holder on                      stale when
    this host, this boot           that pid with that start time is gone
    this host, an earlier boot     always (the boot is over)
    another host                   never: ztplan cannot see its processes, and says so

A stale lock is reported, never broken silently; `force_unlock(path, id)` removes a lock
whose id matches, whoever holds it (the id is the proof the user read the holder), and
returns its LockInfo so the caller can say whose it was. Locks of the previous release
(no boot id, no start time) read as before: stale when the pid is gone. Every problem with
the lock file (a symlink, a directory, a read-only or full state dir) is a LockError.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import random
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ztplan.errors import LockError, LockHeld

__all__ = [
    "LockInfo",
    "boot_id",
    "force_unlock",
    "lock_path",
    "locked",
    "pid_alive",
    "process_start_time",
    "read_lock",
]

UNREADABLE_GRACE = 5.0
"""Seconds a lock that does not parse is taken to be still being written (by the previous
release, or on a file system without hard links) before it is reported as stale."""
MAX_LOCK_BYTES = 64 * 1024
"""A lock is a few hundred bytes; a bigger file is read as damaged, not loaded."""


class LockInfo(BaseModel):
    """The lock's JSON: who holds the target and since when."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    id: str
    """Random id of this lock; `ztplan force-unlock ID` needs it."""
    pid: int
    """The holder's process id (0 when the lock file is unreadable)."""
    host: str
    """The holder's hostname."""
    user: str
    """The user the holder runs as."""
    operation: str
    """What the holder does: plan, apply, drift, import."""
    created: str
    """When the lock was taken (ISO 8601, UTC)."""
    boot_id: str | None = None
    """The holder host's boot id: a lock from an earlier boot of this host is stale. None in
    locks of the previous release."""
    start_time: int | None = None
    """The holder's start time in clock ticks since boot (/proc/PID/stat field 22): with the
    pid it names one process, so a recycled pid is not taken for the holder."""


UNKNOWN = LockInfo(
    id="unknown", pid=0, host="unknown", user="unknown", operation="unknown", created="unknown"
)
"""What an unreadable lock (damaged, or still being written by an old release) says."""


def lock_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.lock"


def boot_id() -> str | None:
    """This kernel's boot id (None without procfs)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def process_start_time(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot; None if it is gone or unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
        # The name (field 2) is in parentheses and may hold spaces or ')': split after the last.
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int, host: str, start_time: int | None = None) -> bool:
    """Whether `pid` (started at `start_time`, when known) runs here; a process on another
    host is assumed alive."""
    if host != socket.gethostname():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    if start_time is None:
        return True
    actual = process_start_time(pid)
    return actual is None or actual == start_time  # unreadable (hidepid): do not guess gone


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _new_info(operation: str) -> LockInfo:
    return LockInfo(
        id=str(uuid.uuid4()),
        pid=os.getpid(),
        host=socket.gethostname(),
        user=_user(),
        operation=operation,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        boot_id=boot_id(),
        start_time=process_start_time(os.getpid()),
    )


# --- the file -----------------------------------------------------------------------------


def _os_problem(error: OSError, directory: Path) -> tuple[str, str | None]:
    """An OSError on the state dir as a sentence and a hint."""
    code = error.errno
    if code == errno.EROFS:
        return f"the state directory {directory} is on a read-only file system", (
            "pass --state-dir DIR on a writable file system"
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left in the state directory {directory}", "free some space"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write in the state directory {directory}", (
            "run as the user that owns it, or pass --state-dir DIR"
        )
    if code in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        return f"the state directory {directory} is not a directory", "pass --state-dir DIR"
    return f"cannot use the state directory {directory} ({error.strerror or error})", None


@dataclass(frozen=True)
class _Found:
    """A lock file as read: its holder (UNKNOWN when it does not parse), its age and
    identity (device, inode), to remove exactly this file later."""

    info: LockInfo
    parsed: bool
    age: float
    identity: tuple[int, int]


def _inspect(path: Path) -> _Found | None:
    """The lock at `path`, None when there is none; LockError when `path` is not a lock."""
    try:
        # O_NOFOLLOW: a symlink is never followed; O_NONBLOCK: a FIFO does not hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise LockError(
                str(path),
                "is a symbolic link, not a lock ztplan wrote (ztplan never follows links here)",
                f"remove it: rm {path}",
            ) from None
        if error.errno == errno.ENOTDIR:
            raise LockError(str(path), f"{path.parent} is not a directory") from None
        raise LockError(str(path), f"cannot read the lock ({error.strerror or error})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise LockError(str(path), f"is {kind}, not a lock file", f"remove it: rm -r {path}")
        data = os.read(fd, MAX_LOCK_BYTES + 1) if info.st_size <= MAX_LOCK_BYTES else b""
    except OSError as error:
        raise LockError(str(path), f"cannot read the lock ({error.strerror or error})") from None
    finally:
        os.close(fd)
    age = max(time.time() - info.st_mtime, 0.0)
    identity = (info.st_dev, info.st_ino)
    try:
        return _Found(LockInfo.model_validate_json(data), True, age, identity)
    except (ValidationError, ValueError):
        return _Found(UNKNOWN, False, age, identity)


def read_lock(path: Path) -> LockInfo | None:
    """The lock's holder (id "unknown" when the file does not parse); None when there is no
    lock file there (nothing, or something that is not a regular file: `locked` says what)."""
    try:
        found = _inspect(path)
    except LockError:
        return None
    return None if found is None else found.info


def _write_temp(directory: Path, name: str, info: LockInfo) -> tuple[str, tuple[int, int]]:
    """A complete, fsynced copy of the lock beside its final name."""
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o644)
        data = (json.dumps(info.model_dump()) + "\n").encode()
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    os.close(fd)
    return temp, (st.st_dev, st.st_ino)


def _create(path: Path, info: LockInfo) -> tuple[int, int] | None:
    """Take the lock: its identity, or None when another lock is there."""
    try:
        temp, identity = _write_temp(path.parent, path.name, info)
    except OSError as error:
        message, hint = _os_problem(error, path.parent)
        raise LockError(str(path), f"cannot take the lock: {message}", hint) from None
    try:
        os.link(temp, path)
        return identity
    except FileExistsError:
        return None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            message, hint = _os_problem(error, path.parent)
            raise LockError(str(path), f"cannot take the lock: {message}", hint) from None
        return _create_exclusive(path, info)  # no hard links here (vfat, some FUSE)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def _create_exclusive(path: Path, info: LockInfo) -> tuple[int, int] | None:
    """The fallback: O_EXCL, then write (readers give an unparsable lock a grace period)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return None
    except OSError as error:
        message, hint = _os_problem(error, path.parent)
        raise LockError(str(path), f"cannot take the lock: {message}", hint) from None
    try:
        os.write(fd, (json.dumps(info.model_dump()) + "\n").encode())
        os.fsync(fd)
        st = os.fstat(fd)
    except OSError as error:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        message, hint = _os_problem(error, path.parent)
        raise LockError(str(path), f"cannot take the lock: {message}", hint) from None
    os.close(fd)
    return st.st_dev, st.st_ino


def _remove(path: Path, identity: tuple[int, int], lock_id: str) -> bool:
    """Unlink the lock if it is still that file with that id (not a newer lock that took
    its place); whether it was removed."""
    try:
        found = _inspect(path)
    except LockError:
        return False
    if found is None or found.identity != identity or found.info.id != lock_id:
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        message, hint = _os_problem(error, path.parent)
        raise LockError(str(path), f"cannot remove the lock: {message}", hint) from None
    return True


# --- who holds it -------------------------------------------------------------------------


def _judge(found: _Found) -> tuple[bool, str]:
    """(stale, why) for a lock someone else holds; `why` is empty for a live local holder."""
    info = found.info
    if not found.parsed:
        if found.age < UNREADABLE_GRACE:
            return False, "being written"
        return True, "its content is not a lock (damaged, or its writer was killed)"
    if info.host != socket.gethostname():
        return False, "remote"
    here = boot_id()
    if info.boot_id is not None and here is not None and info.boot_id != here:
        return True, "it was taken before this host last booted"
    if not pid_alive(info.pid, info.host, info.start_time if info.boot_id == here else None):
        return True, "that process is gone"
    return False, ""


@contextlib.contextmanager
def locked(
    path: Path,
    operation: str,
    timeout: float = 0.0,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[LockInfo]:
    """Hold the lock for the `with` block; wait up to `timeout` seconds for a live holder.

    Raises LockHeld (at once when the lock is stale, after `timeout` when it is held) or
    LockError (the lock file or the state dir cannot be used); never anything else."""
    info = _new_info(operation)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        message, hint = _os_problem(error, path.parent)
        raise LockError(str(path), f"cannot take the lock: {message}", hint) from None
    deadline = clock() + max(timeout, 0.0)
    while True:
        identity = _create(path, info)
        if identity is not None:
            break
        found = _inspect(path)
        if found is not None:
            stale, why = _judge(found)
            if stale or clock() >= deadline:
                raise LockHeld(found.info, stale, str(path), why)
        elif clock() >= deadline + 1.0:  # released and re-taken, again and again
            raise LockError(str(path), "the lock changes hands too fast to take it")
        if found is not None:
            sleep(min(random.uniform(0.05, 0.2), max(deadline - clock(), 0.01)))
    try:
        yield info
    finally:
        # A lock that cannot be removed is reported as stale by the next run: never let it
        # hide what the block raised.
        with contextlib.suppress(LockError):
            _remove(path, identity, info.id)


def force_unlock(path: Path, lock_id: str) -> LockInfo:
    """Remove the lock if its id is `lock_id`, whoever holds it (the id guards against
    removing a newer lock); the LockInfo it held, for the caller to say whose it was."""
    found = _inspect(path)
    if found is None:
        raise LockError(str(path), "no lock to remove")
    if found.info.id != lock_id:
        raise LockError(
            str(path),
            f"the lock id is {found.info.id}, not {lock_id}",
            "copy the id from the error that reported the lock",
        )
    if not _remove(path, found.identity, lock_id):
        raise LockError(str(path), "the lock changed while it was being removed; run again")
    return found.info
