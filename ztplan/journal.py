"""state/<target>.journal.json: what an apply in progress has done, for crash recovery.

Written (atomically) before the first step, with everything needed to put the host back
(each provider's pre-apply snapshot and the spec text); each step done is then appended,
one line and an fsync, to `<target>.journal.log` (rewriting megabytes of snapshots after
every step would cost more than the step). A
successful apply removes it; so does a rollback that put everything back. A journal that
is still there when the next run starts means an apply was killed: that run says what it
had done, and plans from the true live state. Confirm-or-revert keeps the journal, with
its deadline, until `ztplan confirm`; the reverter uses it to put the host back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ztplan.state import write_atomic

__all__ = [
    "Journal",
    "journal_path",
    "mark_done",
    "read_journal",
    "remove_journal",
    "write_journal",
]


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    pid: int = Field(default_factory=os.getpid)
    host: str = Field(default_factory=socket.gethostname)
    started: float = Field(default_factory=time.time, description="Unix time.")
    target: str
    netns: str | None = None
    spec_file: str = Field(description="Where the spec came from (for messages).")
    spec_text: str = Field(description="The spec, to rebuild the providers for a revert.")
    snapshots: dict[str, Any] = Field(description="Each provider's pre-apply raw snapshot.")
    steps: list[str] = Field(description="The planned steps, `provider (phase)`, in order.")
    done: list[str] = Field(default_factory=list, description="Steps completed so far.")
    confirm_by: float | None = Field(
        default=None, description="Unix time after which an unconfirmed apply is reverted."
    )
    previous_state: str | None = Field(
        default=None, description="The state file before this apply (a revert puts it back)."
    )
    persist_root: str | None = Field(
        default=None,
        description="--root of the boot files this apply wrote (a revert rewrites "
        "them from the reverted live state).",
    )

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        done = ", ".join(self.done) or "nothing"
        left = [s for s in self.steps if s not in self.done]
        return (
            f"an apply of {self.target} (pid {self.pid} on {self.host}, started {when}) did "
            f"not finish: done: {done}; not done: {', '.join(left) or 'nothing'}"
        )


def journal_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.journal.json"


def _log(path: Path) -> Path:
    return path.with_suffix(".log")


def read_journal(path: Path) -> Journal | None:
    try:
        journal = Journal.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError):
        return None  # torn or foreign: nothing can be resumed from it
    try:
        lines = _log(path).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:  # `<journal id> <step>`; a torn last line has no newline
        run, _, step = line.partition(" ")
        if run == journal.id and step:
            journal.done.append(step)
    return journal


def write_journal(path: Path, journal: Journal) -> None:
    remove_journal(path)  # a new apply: no progress of an older one may count
    write_atomic(path, journal.model_dump_json() + "\n", mode=0o600)


def mark_done(path: Path, journal: Journal, step: str) -> None:
    """Record that `step` is done: one appended line, on disk before the next step."""
    journal.done.append(step)
    with open(_log(path), "a", encoding="utf-8") as handle:
        handle.write(f"{journal.id} {step}\n")
        handle.flush()
        os.fsync(handle.fileno())


def remove_journal(path: Path) -> None:
    for file in (path, _log(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
