"""ztplan.lock: one run per target, a lock that names its holder, stale locks reported and
removed only by id."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ztplan.errors import LockHeld, ZtplanError
from ztplan.lock import (
    UNREADABLE_GRACE,
    LockInfo,
    force_unlock,
    lock_path,
    locked,
    process_start_time,
    read_lock,
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return lock_path(tmp_path / "state", "gw1")


def dead_pid() -> int:
    """A pid no process can have: one above the kernel's limit."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def write_lock(path: Path, **fields: object) -> LockInfo:
    info = LockInfo.model_validate(
        {
            "id": "6f1c2a8e-0000-4000-8000-000000000001",
            "pid": dead_pid(),
            "host": socket.gethostname(),
            "user": "deploy",
            "operation": "apply",
            "created": "2026-01-02T03:04:05+00:00",
            **fields,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info.model_dump()) + "\n")
    return info


def test_lock_path_is_named_after_the_target(tmp_path: Path) -> None:
    assert lock_path(tmp_path, "gw1") == tmp_path / "gw1.lock"


def test_the_lock_is_taken_names_this_run_and_is_released(path: Path) -> None:
    with locked(path, "apply") as info:
        assert path.exists()
        on_disk = json.loads(path.read_text())
        assert on_disk == info.model_dump()
        assert (info.pid, info.host, info.operation) == (os.getpid(), socket.gethostname(), "apply")
        assert info.user and info.created and info.id
        assert read_lock(path) == info
    assert not path.exists()
    assert read_lock(path) is None


def test_the_lock_is_released_when_the_run_fails(path: Path) -> None:
    with pytest.raises(RuntimeError), locked(path, "apply"):
        raise RuntimeError("boom")
    assert not path.exists()


def test_each_run_gets_a_new_lock_id(path: Path) -> None:
    with locked(path, "plan") as first:
        pass
    with locked(path, "plan") as second:
        pass
    assert first.id != second.id


def test_a_second_run_fails_at_once_naming_the_holder(path: Path) -> None:
    with locked(path, "apply") as holder:
        with pytest.raises(LockHeld) as caught, locked(path, "plan"):
            pass
        error = caught.value
        assert error.stale is False
        assert error.info == holder
        assert str(error) == (
            f"{path}: the target is locked by pid {holder.pid} on {holder.host} "
            f"(user {holder.user}, operation apply, since {holder.created}, "
            f"lock id {holder.id}) (wait for it to finish, or pass --lock-timeout SECONDS to wait)"
        )
        assert read_lock(path) == holder  # the loser did not touch the holder's lock
    assert not path.exists()


def test_a_lock_of_a_dead_process_is_stale(path: Path) -> None:
    dead = write_lock(path)
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    error = caught.value
    assert error.stale is True
    assert error.info == dead
    assert str(error) == (
        f"{path}: stale lock left by pid {dead.pid} on {dead.host} (user deploy, operation "
        f"apply, since 2026-01-02T03:04:05+00:00, lock id {dead.id}); that process is gone "
        f"(if no apply is running, remove it with: ztplan force-unlock {dead.id})"
    )
    assert read_lock(path) == dead  # reported, never broken silently


def test_a_stale_lock_is_reported_at_once_even_with_a_timeout(path: Path) -> None:
    write_lock(path)
    with pytest.raises(LockHeld) as caught, locked(path, "apply", timeout=30):
        pass
    assert caught.value.stale is True


def test_a_lock_from_another_host_is_not_called_stale(path: Path) -> None:
    write_lock(path, host="other-host.invalid")
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is False
    assert "on other-host.invalid" in str(caught.value)


def test_a_lock_that_stays_unreadable_is_stale_with_an_unknown_holder(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("")
    old = time.time() - UNREADABLE_GRACE - 1  # its writer had all the time it needed
    os.utime(path, (old, old))
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is True
    assert caught.value.info.id == "unknown"
    assert "its content is not a lock" in str(caught.value)
    assert "ztplan force-unlock unknown" in str(caught.value)
    assert force_unlock(path, "unknown").id == "unknown"
    assert not path.exists()


def test_a_fresh_unreadable_lock_is_being_written_not_stale(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text('{"id": "half')
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is False
    assert str(caught.value) == (
        f"{path}: the target is locked by a run whose lock is still being written (holder "
        "not known yet) (pass --lock-timeout SECONDS to wait)"
    )


def test_the_lock_names_the_holder_beyond_its_pid(path: Path) -> None:
    with locked(path, "apply") as info:
        assert info.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{os.getpid()}/stat").read_text()
        assert info.start_time == int(stat.rsplit(")", 1)[1].split()[19])


def test_a_lock_of_the_previous_release_is_read_as_before(path: Path) -> None:
    """No boot id, no start time: stale when the pid is gone, held while it runs."""
    write_lock(path)
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is True
    live = write_lock(path, pid=os.getpid())
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is False
    assert caught.value.info == live


def test_process_start_time_reads_a_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    script = tmp_path / "a) b (c"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o755)
    child = subprocess.Popen([str(script)])
    try:
        for _ in range(100):
            if "a) b" in Path(f"/proc/{child.pid}/stat").read_text():
                break
            time.sleep(0.01)
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        assert process_start_time(child.pid) == int(stat.rsplit(")", 1)[1].split()[19])
    finally:
        child.kill()
        child.wait()
    assert process_start_time(dead_pid()) is None


def test_lock_timeout_waits_for_the_holder_to_release(path: Path) -> None:
    taken = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with locked(path, "apply"):
                taken.set()
                release.wait(10)
        except BaseException as error:  # reported to the test thread
            errors.append(error)
            taken.set()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(10)
        first = read_lock(path)
        assert first is not None and first.operation == "apply"
        timer = threading.Timer(0.3, release.set)
        timer.start()
        with locked(path, "plan", timeout=30) as mine:
            assert release.is_set()  # we got it only after the holder let go
            assert mine.id != first.id
            assert read_lock(path) == mine
        assert not path.exists()
    finally:
        release.set()
        thread.join(10)
    assert errors == []


def test_without_a_timeout_there_is_no_wait(path: Path) -> None:
    with locked(path, "apply"):
        with pytest.raises(LockHeld), locked(path, "plan", timeout=0):
            pass


# --- force_unlock -------------------------------------------------------------------------


def test_force_unlock_removes_a_dead_holders_lock_by_its_id(path: Path) -> None:
    dead = write_lock(path)
    assert force_unlock(path, dead.id) == dead
    assert not path.exists()
    with locked(path, "apply"):  # and the target can be locked again
        assert path.exists()


def test_force_unlock_refuses_a_wrong_id(path: Path) -> None:
    dead = write_lock(path)
    with pytest.raises(ZtplanError) as caught:
        force_unlock(path, "not-the-id")
    assert str(caught.value) == (
        f"{path}: the lock id is {dead.id}, not not-the-id "
        "(copy the id from the error that reported the lock)"
    )
    assert path.exists()


def test_force_unlock_removes_a_live_holders_lock_by_its_id(path: Path) -> None:
    """The id is the proof the user read the holder: any lock goes, and the caller is told
    whose it was."""
    with locked(path, "apply") as holder:
        assert force_unlock(path, holder.id) == holder
        assert not path.exists()
        with locked(path, "plan"):  # the target can be locked again at once
            pass


def test_the_release_leaves_a_newer_lock_alone(path: Path) -> None:
    with locked(path, "apply") as holder:
        force_unlock(path, holder.id)
        newer = write_lock(path, pid=os.getpid(), id="newer")
    assert read_lock(path) == newer


def test_force_unlock_removes_a_holder_on_another_host(path: Path) -> None:
    other = write_lock(path, host="other-host.invalid")
    assert force_unlock(path, other.id) == other
    assert not path.exists()


def test_force_unlock_without_a_lock(path: Path) -> None:
    with pytest.raises(ZtplanError) as caught:
        force_unlock(path, "anything")
    assert str(caught.value) == f"{path}: no lock to remove"
