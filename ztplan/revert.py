"""Confirm or revert (Junos' `commit confirmed`, `netplan try`): an apply made with
`--confirm-within N` is undone by itself unless `ztplan confirm` comes within N seconds.

The undo must happen even when the SSH session that started the apply died with the
network it changed. So it is not left to that process: a detached reverter (its own
session, no terminal, stdio on /dev/null, so neither SIGHUP nor a closed pty reaches it)
sleeps until the deadline, then takes the target's lock and, if the apply's journal is
still there and still the same apply, puts every provider back from the snapshots in the
journal, restores the previous state file and removes the journal. `ztplan confirm`
removes the journal first; the reverter then finds nothing to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ztplan.errors import ZtplanError
from ztplan.journal import Journal, journal_path, read_journal, remove_journal

__all__ = ["arm_reverter", "confirm", "revert", "run_reverter"]


def arm_reverter(state_dir: Path, target: str, journal: Journal) -> int:
    """Start the detached reverter for `journal`; return its pid."""
    log = open(state_dir / f"{target}.revert.log", "ab")  # noqa: SIM115 - the child's
    child = subprocess.Popen(
        [
            sys.executable,
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
        env=os.environ.copy(),
    )
    log.close()
    return child.pid


def confirm(state_dir: Path, target: str) -> Journal:
    """Keep the last apply: remove its journal before the reverter's deadline."""
    path = journal_path(state_dir, target)
    journal = read_journal(path)
    if journal is None or journal.confirm_by is None:
        raise ZtplanError(f"{target}: no apply is waiting for confirmation")
    if time.time() >= journal.confirm_by:
        raise ZtplanError(
            f"{target}: too late: the deadline passed and the apply is being reverted",
            "check with ztplan plan, and apply again",
        )
    remove_journal(path)
    return journal


def revert(state_dir: Path, journal: Journal) -> tuple[list[str], list[str]]:
    """Put the host back as the journal's snapshots saw it; (reverted, failed)."""
    from ztplan.host import LocalHost
    from ztplan.model import Snapshot
    from ztplan.plan import build_providers
    from ztplan.spec import parse_spec
    from ztplan.state import state_path, write_atomic

    spec = parse_spec(journal.spec_text, journal.spec_file)
    host = LocalHost(journal.netns)
    providers = {p.name: p for p in build_providers(spec, journal.spec_file, None)}
    reverted: list[str] = []
    failed: list[str] = []
    order = list(dict.fromkeys(step.split(" ")[0] for step in journal.steps))
    for name in reversed(order):
        if name not in providers or name not in journal.snapshots:
            continue
        try:
            providers[name].rollback(host, Snapshot(resources={}, raw=journal.snapshots[name]))
        except Exception as error:  # keep going: put back as much as possible
            failed.append(f"{name} ({error})")
        else:
            reverted.append(name)
    if journal.persist_root is not None and not failed:  # boot files follow the live state
        from ztplan.persist import make_persist

        persist, _ = make_persist(spec.persist, Path(journal.persist_root), spec, journal.netns)
        if persist is not None:
            try:
                persist.save(host, list(providers.values()))
            except Exception as error:
                failed.append(f"persist ({error})")
            else:
                reverted.append("persist")
    state = state_path(state_dir, journal.target)
    if journal.previous_state is not None:
        write_atomic(state, journal.previous_state)
    else:
        state.unlink(missing_ok=True)
    return reverted, failed


def run_reverter(state_dir: Path, target: str, journal_id: str) -> str:
    """The detached process: wait for the deadline, then revert unless confirmed."""
    from ztplan.lock import lock_path, locked

    path = journal_path(state_dir, target)
    journal = read_journal(path)
    if journal is None or journal.id != journal_id or journal.confirm_by is None:
        return "nothing to revert"
    while (left := journal.confirm_by - time.time()) > 0:
        time.sleep(min(left, 1.0))
        current = read_journal(path)
        if current is None or current.id != journal_id:
            return "confirmed in time"
    with locked(lock_path(state_dir, target), "revert", timeout=300):
        current = read_journal(path)
        if current is None or current.id != journal_id:
            return "confirmed in time"
        reverted, failed = revert(state_dir, current)
        remove_journal(path)
    return f"reverted: {', '.join(reverted) or 'nothing'}" + (
        f"; FAILED: {', '.join(failed)}" if failed else ""
    )
