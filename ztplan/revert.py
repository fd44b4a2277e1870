"""Confirm or revert (Junos' `commit confirmed`, `netplan try`): an apply made with
`--confirm-within N` is undone by itself unless `ztplan confirm` comes within N seconds.

The undo must happen even when the SSH session that started the apply died with the
network it changed. So it is not left to that process: a detached reverter (its own
session, no terminal, stdio on a log file, so neither SIGHUP nor a closed pty reaches it)
sleeps until the deadline, then, if the apply's journal is still there and still the same
apply, undoes its steps (exactly their changes: a fail2ban ban added in the window stays),
restores the previous state file, removes the journal and records the outcome in
`<target>.reverted.json`, where `confirm` and the next plan read it. `ztplan confirm`
removes the journal first; the reverter then finds nothing to do.

The reverter runs as root with a file from the state dir as its only instruction, so it
starts as nothing else could hijack it: an isolated interpreter (`python -I`: no current
directory, no PYTHON* variables, no user site on the import path), absolute paths, `/` as
its working directory and an environment of only what the spec's providers read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from ztplan.apply import undo_steps
from ztplan.errors import ZtplanError
from ztplan.files import STATE_LIMIT, open_regular, read_regular
from ztplan.host import Host
from ztplan.journal import (
    Journal,
    JournalStep,
    journal_path,
    previous_path,
    read_journal,
    remove_journal,
)
from ztplan.model import Snapshot
from ztplan.providers import Provider
from ztplan.state import state_path, write_atomic

__all__ = ["arm_reverter", "confirm", "read_outcome", "revert", "reverter_env"]

_KEEP = (
    "ZTPLAN_CONTROLLER_URL",
    "ZTPLAN_CONTROLLER_TOKEN",
    "ZTPLAN_MEMBER_URL",
    "ZTPLAN_MEMBER_TOKEN_FILE",
    "ZEROTIER_CENTRAL_TOKEN",
)


def reverter_env(names: Sequence[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The reverter's whole environment: a fixed PATH and only the variables the spec's
    providers read (`names`: its token_env variables)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
    }
    for name in (*_KEEP, *names):
        if name in environ:
            env[name] = environ[name]
    return env


def arm_reverter(state_dir: Path, target: str, journal: Journal, env: Mapping[str, str]) -> int:
    """Start the detached reverter for `journal`; return its pid."""
    state_dir = state_dir.resolve()
    log = _open_log(state_dir / f"{target}.revert.log")
    child = subprocess.Popen(
        [
            os.path.abspath(sys.executable),  # not realpath: a venv is found by its path
            "-I",
            "-m",
            "ztplan",
            "revert-at-deadline",
            "--state-dir",
            str(state_dir),
            "--target-name",
            target,
            "--journal-id",
            journal.id,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        close_fds=True,
        cwd="/",
        env=dict(env),
    )
    if log != subprocess.DEVNULL:
        os.close(log)
    return child.pid


def _open_log(path: Path) -> int:
    """The reverter's log, for appending; never a FIFO's blocking open or a followed link.
    When it cannot be had, the reverter runs without one: the apply is already made, and
    its revert matters more than its log."""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644
        )
    except OSError:
        return subprocess.DEVNULL
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return subprocess.DEVNULL
    os.set_blocking(fd, True)
    return fd


def _outcome_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.reverted.json"


def read_outcome(state_dir: Path, target: str) -> dict[str, str] | None:
    """How the last confirm window of `target` ended, if it was reverted."""
    try:
        data = json.loads(read_regular(str(_outcome_path(state_dir, target)), STATE_LIMIT))
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def record_outcome(state_dir: Path, target: str, journal: Journal, outcome: str) -> None:
    write_atomic(
        _outcome_path(state_dir, target),
        json.dumps(
            {
                "journal": journal.id,
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "outcome": outcome,
            }
        )
        + "\n",
    )


def clear_outcome(state_dir: Path, target: str) -> None:
    _outcome_path(state_dir, target).unlink(missing_ok=True)


def confirm(state_dir: Path, target: str) -> Journal:
    """Keep the last apply: remove its journal before the reverter's deadline."""
    path = journal_path(state_dir, target)
    journal = read_journal(path)
    if journal is not None and journal.outcome == "failed":
        raise ZtplanError(
            f"{target}: the apply failed, so there is nothing to confirm: "
            + journal.summary().removeprefix(f"an apply of {target} "),
            "ztplan plan says what it left in place; apply again",
        )
    if journal is None or journal.confirm_by is None:
        done = read_outcome(state_dir, target)
        if done is not None:
            raise ZtplanError(
                f"{target}: too late: the apply was reverted at {done.get('at')} "
                f"({done.get('outcome')})",
                "check with ztplan plan, and apply again",
            )
        raise ZtplanError(f"{target}: no apply is waiting for confirmation")
    if time.time() >= journal.confirm_by:
        raise ZtplanError(
            f"{target}: too late: the deadline passed and the apply is being reverted",
            "check with ztplan plan, and apply again",
        )
    remove_journal(path)
    return journal


def revert(
    state_dir: Path,
    journal: Journal,
    host: Host,
    providers: Mapping[str, Provider],
) -> tuple[list[str], list[str]]:
    """Undo the journal's steps that are in place; put the previous state file back.
    (reverted, not reverted) step names; a state file that cannot be put back is one of
    the latter, named as such."""
    snapshots = {name: Snapshot(resources={}, raw=raw) for name, raw in journal.snapshots.items()}
    steps: list[JournalStep] = [s for s in journal.in_place() if s.provider in providers]
    path = journal_path(state_dir, journal.target)
    from ztplan.journal import log_event

    def record(step: JournalStep, how: str, error: Exception | None) -> None:
        log_event(path, journal, how, step.index)

    # The state before the apply is opened first: a `confirm` racing this revert removes
    # the file with the journal, and the steps are undone by then.
    with contextlib.ExitStack() as stack:
        kept: BinaryIO | OSError | None = None
        if journal.previous_kept:
            try:
                kept = stack.enter_context(open_regular(str(previous_path(path)), STATE_LIMIT))
            except OSError as error:
                kept = error
        boot = next((s for s in journal.steps if s.provider == "persist"), None)
        reverted, failed = undo_steps(steps, snapshots, host, providers, record, boot)
        if failed:
            return reverted, failed
        state = state_path(state_dir, journal.target)
        if kept is not None:
            failed += _put_back(kept, previous_path(path), state)
        elif journal.previous_state is not None:  # a journal of version 2
            write_atomic(state, journal.previous_state)
        else:
            state.unlink(missing_ok=True)
    return reverted, failed


def _put_back(kept: BinaryIO | OSError, name: Path, state: Path) -> list[str]:
    """The state file as it was before the apply, copied into place (readers see the
    applied state or the one before, whole; the kept file stays, so a revert can be run
    again). [] or what could not be put back."""
    try:
        if isinstance(kept, OSError):
            raise kept
        write_atomic(state, iter(lambda: kept.read(1 << 20), b""))
    except OSError as error:
        return [
            f"the state file ({name}: {error.strerror or error.__class__.__name__}; "
            f"{state} still records the apply)"
        ]
    return []
