"""state/<target>.lock: one run at a time per target, and the lock names its holder.

The lock file is created with O_EXCL, so two runs cannot both take it; it holds JSON
(LockInfo) so a blocked run can say who holds it. A lock whose pid is gone on this host is
stale: reported as such, never broken silently; `ztplan force-unlock ID` removes it.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ztplan.errors import LockHeld, ZtplanError

__all__ = ["LockInfo", "force_unlock", "lock_path", "locked", "pid_alive", "read_lock"]


class LockInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    pid: int
    host: str
    user: str
    operation: str
    created: str


def lock_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.lock"


def read_lock(path: Path) -> LockInfo | None:
    try:
        return LockInfo.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError):
        # Half-written by a run killed between create and write: holder unknown.
        return LockInfo(
            id="unknown",
            pid=0,
            host="unknown",
            user="unknown",
            operation="unknown",
            created="unknown",
        )


def pid_alive(pid: int, host: str) -> bool:
    """Whether `pid` runs here; a process on another host is assumed alive."""
    if host != socket.gethostname():
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(info: LockInfo) -> bool:
    return info.pid <= 0 or not pid_alive(info.pid, info.host)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@contextlib.contextmanager
def locked(path: Path, operation: str, timeout: float = 0.0) -> Iterator[LockInfo]:
    """Hold the lock for the `with` block; wait up to `timeout` seconds for it."""
    info = LockInfo(
        id=str(uuid.uuid4()),
        pid=os.getpid(),
        host=socket.gethostname(),
        user=_user(),
        operation=operation,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            holder = read_lock(path)
            if holder is None:
                continue  # released between our open and our read
            stale = _is_stale(holder)
            if stale or time.monotonic() >= deadline:
                raise LockHeld(holder, stale, str(path)) from None
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(info.model_dump()) + "\n")
        yield info
    finally:
        with contextlib.suppress(FileNotFoundError):
            current = read_lock(path)
            if current is not None and current.id == info.id:
                os.unlink(path)


def force_unlock(path: Path, lock_id: str) -> LockInfo:
    """Remove the lock if its id is `lock_id` (the id guards against removing a newer lock)."""
    holder = read_lock(path)
    if holder is None:
        raise ZtplanError(f"{path}: no lock to remove")
    if holder.id != lock_id:
        raise ZtplanError(
            f"{path}: the lock id is {holder.id}, not {lock_id}",
            "copy the id from the error that reported the lock",
        )
    if not _is_stale(holder):
        raise ZtplanError(
            f"{path}: pid {holder.pid} on {holder.host} still runs ({holder.operation}); "
            "not removing a live lock"
        )
    os.unlink(path)
    return holder
