"""Attacks on state/<target>.lock (issue 12): a loser must never call a live holder stale,
pid reuse and other hosts must be told apart, force-unlock must remove any lock by its id,
and every odd lock file or state dir is one clear line, within the lock timeout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.adversarial.cli import BARE_SPEC, one_error_line, ztplan
from ztplan.errors import LockError, LockHeld
from ztplan.journal import Journal
from ztplan.lock import (
    boot_id,
    force_unlock,
    lock_path,
    locked,
    process_start_time,
    read_lock,
)

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return lock_path(tmp_path / "state", "gw1")


def write_lock(path: Path, **fields: object) -> dict[str, object]:
    data: dict[str, object] = {
        "id": "6f1c2a8e-0000-4000-8000-000000000001",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": "deploy",
        "operation": "apply",
        "created": "2026-01-02T03:04:05+00:00",
        **fields,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    return data


def test_fifty_processes_racing_never_call_a_live_holder_stale(path: Path) -> None:
    """The previous release created the file and wrote it after: 53 of 980 losers read it
    empty and reported its live holder as stale."""
    path.parent.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "tests.adversarial.lock_race", str(path), "50", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    counts = json.loads(done.stdout)
    print(f"lock race, 50 processes x 20 rounds: {counts}")
    assert counts["won"] + counts["lost"] + counts["other"] == 1000
    assert counts["won"] >= 1 and counts["lost"] >= 1, counts
    assert counts["stale"] == 0, counts
    assert counts["other"] == 0, counts
    assert not path.exists()


def test_a_lock_being_written_is_not_stale_and_the_wait_honours_the_timeout(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("")  # an old release between its O_EXCL create and its write
    started = time.monotonic()
    with pytest.raises(LockHeld) as caught, locked(path, "apply", timeout=0.6):
        pass
    waited = time.monotonic() - started
    assert caught.value.stale is False
    assert 0.5 <= waited < 3, waited
    assert "still being written" in str(caught.value)


def test_a_recycled_pid_is_not_taken_for_the_holder(path: Path) -> None:
    """The lock names a pid that runs, but that process started at another time: the
    holder is gone and its pid was given to someone else."""
    mine = process_start_time(os.getpid())
    assert mine is not None
    write_lock(path, boot_id=boot_id(), start_time=mine + 12345)
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is True
    assert "that process is gone" in str(caught.value)


def test_a_lock_from_an_earlier_boot_of_this_host_is_stale(path: Path) -> None:
    write_lock(path, boot_id="00000000-0000-4000-8000-000000000000", start_time=1)
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is True
    assert "before this host last booted" in str(caught.value)


def test_a_lock_of_another_host_says_so_and_is_not_stale(path: Path) -> None:
    write_lock(path, host="other-host.invalid", boot_id="x", start_time=1)
    with pytest.raises(LockHeld) as caught, locked(path, "apply"):
        pass
    assert caught.value.stale is False
    assert "on another host: ztplan cannot tell whether it still runs" in str(caught.value)
    assert "ztplan force-unlock 6f1c2a8e-0000-4000-8000-000000000001" in str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"pid": 1},  # a live, unrelated process (old-format lock: no start time)
        {"pid": 1, "boot_id": "b", "start_time": 1},
        {"host": "other-host.invalid"},
    ],
    ids=["live-unrelated-pid", "recycled-pid", "other-host"],
)
def test_force_unlock_removes_any_lock_whose_id_matches(
    path: Path, fields: dict[str, object]
) -> None:
    """The previous release refused ("still runs") and such a lock could never go."""
    data = write_lock(path, **fields)
    removed = force_unlock(path, str(data["id"]))
    assert (removed.pid, removed.host, removed.operation) == (
        data["pid"],
        data["host"],
        "apply",
    )
    assert not path.exists()


def test_the_cli_force_unlock_says_whose_lock_it_removed(tmp_path: Path) -> None:
    path = lock_path(tmp_path / "state", "gw1")
    write_lock(path, pid=1, host="other-host.invalid")
    done = ztplan("force-unlock", "6f1c2a8e-0000-4000-8000-000000000001", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "held by pid 1 on other-host.invalid, apply since 2026-01-02" in done.stdout
    assert not path.exists()


# --- odd lock files and state dirs, through the CLI ---------------------------------------


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    spec = tmp_path / "gw.yaml"
    spec.write_text(BARE_SPEC)
    return spec


def _plan_out(tmp_path: Path, spec: Path, *extra: str) -> str:
    started = time.monotonic()
    done = ztplan(
        "plan",
        str(spec),
        "-o",
        str(tmp_path / "plan.json"),
        "--lock-timeout",
        "1",
        *extra,
        cwd=tmp_path,
        timeout=30,
    )
    assert time.monotonic() - started < 20
    return one_error_line(done)


def test_a_dangling_symlink_as_lock_is_one_line_not_a_spin(tmp_path: Path, spec: Path) -> None:
    """The previous release spun at 100 % CPU forever, ignoring --lock-timeout."""
    lock = lock_path(tmp_path / "state", "gw1")
    lock.parent.mkdir()
    lock.symlink_to(tmp_path / "nowhere")
    line = _plan_out(tmp_path, spec)
    assert line == (
        f"Error: {lock}: is a symbolic link, not a lock ztplan wrote (ztplan never follows "
        f"links here) (remove it: rm {lock})"
    )
    done = ztplan(
        "apply", str(spec), "--auto-approve", "--lock-timeout", "1", cwd=tmp_path, timeout=30
    )
    assert one_error_line(done) == line
    assert lock.is_symlink() and not (tmp_path / "nowhere").exists()


def test_a_symlink_to_a_file_is_not_followed(tmp_path: Path, spec: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock = lock_path(tmp_path / "state", "gw1")
    lock.parent.mkdir()
    lock.symlink_to(victim)
    assert "is a symbolic link" in _plan_out(tmp_path, spec)
    assert victim.read_text() == "precious\n"


def test_a_directory_as_lock_is_one_line(tmp_path: Path, spec: Path) -> None:
    lock = lock_path(tmp_path / "state", "gw1")
    lock.mkdir(parents=True)
    assert _plan_out(tmp_path, spec) == (
        f"Error: {lock}: is a directory, not a lock file (remove it: rm -r {lock})"
    )


def test_a_fifo_as_lock_does_not_hang(tmp_path: Path, spec: Path) -> None:
    lock = lock_path(tmp_path / "state", "gw1")
    lock.parent.mkdir()
    os.mkfifo(lock)
    assert _plan_out(tmp_path, spec).endswith(
        f"is not a regular file, not a lock file (remove it: rm -r {lock})"
    )


def test_a_state_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(LockError) as caught, locked(lock_path(tmp_path / "state", "gw1"), "plan"):
        pass
    assert f"the state directory {tmp_path / 'state'} is not a directory" in str(caught.value)


needs_mount = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def _in_private_mount(tmp_path: Path, spec: Path, mount: str) -> str:
    """plan -o with the state dir on a tmpfs mounted by `mount`, in a mount namespace of
    its own (the host's mounts are never touched)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    argv = " ".join(
        [
            sys.executable,
            "-m",
            "ztplan",
            "plan",
            str(spec),
            "-o",
            str(tmp_path / "plan.json"),
            "--state-dir",
            str(state),
        ]
    )
    script = f"set -e; {mount.format(state=state)}; exec {argv}"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return one_error_line(done)


@needs_mount
def test_a_read_only_state_dir_is_one_line(tmp_path: Path, spec: Path) -> None:
    line = _in_private_mount(tmp_path, spec, "mount -t tmpfs -o ro,size=1m ztplan-ro {state}")
    assert line == (
        f"Error: {tmp_path}/state/gw1.lock: cannot take the lock: the state directory "
        f"{tmp_path}/state is on a read-only file system (pass --state-dir DIR on a writable "
        "file system)"
    )


@needs_mount
def test_a_full_state_dir_is_one_line(tmp_path: Path, spec: Path) -> None:
    fill = (
        "mount -t tmpfs -o size=8k ztplan-full {state}; dd if=/dev/zero of={state}/fill "
        "bs=4k count=16 2>/dev/null || true"
    )
    line = _in_private_mount(tmp_path, spec, fill)
    assert line == (
        f"Error: {tmp_path}/state/gw1.lock: cannot take the lock: no space left in the state "
        f"directory {tmp_path}/state (free some space)"
    )


def test_read_only_and_full_state_dirs_without_root(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same sentences where no tmpfs can be mounted (CI without root)."""
    import errno

    import ztplan.lock as lock_module

    path.parent.mkdir(parents=True)
    for code, words in ((errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")):

        def refuse(*args: object, code: int = code, **kwargs: object) -> object:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(lock_module.tempfile, "mkstemp", refuse)
        with pytest.raises(LockError) as caught, locked(path, "apply"):
            pass
        assert words in str(caught.value)
        assert read_lock(path) is None


@pytest.mark.parametrize("name", ["gw1.json", "gw1.journal.log", "gw1.reverted.json"])
def test_a_fifo_among_the_state_files_does_not_hang(tmp_path: Path, spec: Path, name: str) -> None:
    """State, journal and revert outcome are ztplan's own files, but one replaced by a FIFO
    hung every later run (`read_bytes` waits for a writer): each is read as a bounded
    regular file, and a run that needs it stops with one line naming it."""
    state = tmp_path / "state"
    state.mkdir()
    if name == "gw1.journal.log":  # the log is read only beside a journal
        (state / "gw1.journal.json").write_text(
            Journal(
                target="gw1", spec_file="gw.yaml", spec_text=BARE_SPEC, snapshots={}, steps=[]
            ).model_dump_json()
        )
    os.mkfifo(state / name)
    done = ztplan("plan", str(spec), cwd=tmp_path, timeout=30)
    if name == "gw1.reverted.json":  # only `confirm` and the next plan read it: a note, or none
        assert done.returncode == 0, done.stderr
        return
    why = "a FIFO"
    assert one_error_line(done) == (
        f"Error: {state / name}: unreadable {'state file' if name == 'gw1.json' else 'journal log'}"
        f" ({why})"
        + (
            " (move it aside; the next apply writes a new one)"
            if name == "gw1.json"
            else " (it records which steps of an unfinished apply were done: restore it from a "
            "backup, or move the journal files aside once the gateway is checked by hand)"
        )
    )
