"""state/<target>.journal.json: what an apply in progress has done, for crash recovery.

Written (atomically) before the first step, with everything needed to undo it: each
provider's pre-apply snapshot (`raw`), each step's changes and the spec text; the state
file as it was is kept beside it as `<target>.journal.state` (a hard link: the apply
replaces the state file by a new one, never in place). Progress is
then appended, one line and an fsync each, to `<target>.journal.log` (rewriting megabytes
of snapshots after every step would cost more than the step):

    <journal id> done <step>       the step was made
    <journal id> undone <step>     it was rolled back
    <journal id> stuck <step>      its rollback failed: it may be (partly) in place
    <journal id> kept <step>       left in place on purpose (forwarding, while a route
                                   through this gateway may be live on the controller)
    <journal id> outcome <text>    how a confirm-or-revert window ended

A successful apply removes the journal; so does a rollback that put everything back. A
journal still there when the next run starts means an apply was killed (or could not roll
back): that run says what it had done, and plans from the true live state. Confirm-or-revert
keeps the journal, with its deadline, until `ztplan confirm`; the reverter uses it to undo
the apply, and records its outcome in it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ztplan.errors import ZtplanError
from ztplan.files import STATE_LIMIT, NotRegular, read_regular
from ztplan.model import Change
from ztplan.state import write_atomic

__all__ = [
    "Journal",
    "JournalStep",
    "journal_path",
    "log_event",
    "previous_path",
    "read_journal",
    "remove_journal",
    "write_journal",
]


class JournalStep(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    index: int
    provider: str
    phase: str
    changes: list[Change]

    @property
    def name(self) -> str:
        return f"{self.provider} ({self.phase})" if self.phase else self.provider


class Journal(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    version: int = 3
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    pid: int = Field(default_factory=os.getpid)
    host: str = Field(default_factory=socket.gethostname)
    started: float = Field(default_factory=time.time, description="Unix time.")
    target: str
    netns: str | None = None
    root: str = Field(default="/", description="--root of the run (where persist writes).")
    spec_file: str = Field(description="Where the spec came from (for messages).")
    spec_text: str = Field(description="The spec, to rebuild the providers for a revert.")
    snapshots: dict[str, Any] = Field(description="Each provider's pre-apply raw snapshot.")
    steps: list[JournalStep] = Field(description="The planned steps, in order.")
    confirm_by: float | None = Field(
        default=None, description="Unix time after which an unconfirmed apply is reverted."
    )
    previous_kept: bool = Field(
        default=False,
        description="The state file before this apply is kept beside the journal "
        "(`<target>.journal.state`): a revert puts it back. False: there was none.",
    )
    previous_state: str | None = Field(
        default=None,
        description="The state file before this apply, as journals of version 2 held it.",
    )
    done: list[int] = Field(default_factory=list, description="Steps made (from the log).")
    undone: list[int] = Field(default_factory=list, description="Steps rolled back.")
    stuck: list[int] = Field(default_factory=list, description="Steps whose rollback failed.")
    kept: list[int] = Field(
        default_factory=list, description="Steps left in place on purpose (forwarding)."
    )
    outcome: str | None = Field(default=None, description="How a confirm window ended.")

    def in_place(self) -> list[JournalStep]:
        """The steps that may still be in effect: made and not rolled back, stuck, or kept
        on purpose."""
        return [
            s
            for s in self.steps
            if (s.index in self.done and s.index not in self.undone)
            or s.index in self.stuck
            or s.index in self.kept
        ]

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.started))
        in_place = self.in_place()
        # A step whose rollback failed may or may not be in effect (a controller write
        # with no answer, say): it is not called "in place", nor "not in place".
        done = ", ".join(s.name for s in in_place if s.index not in self.stuck) or "nothing"
        left = [s.name for s in self.steps if s not in in_place]
        stuck = [s.name for s in self.steps if s.index in self.stuck]
        kept = [s.name for s in self.steps if s.index in self.kept]
        text = (
            f"an apply of {self.target} (pid {self.pid} on {self.host}, started {when}) did "
            f"not finish: in place: {done}; not in place: {', '.join(left) or 'nothing'}"
        )
        if stuck:
            text += f"; its rollback FAILED for {', '.join(stuck)}, which may be in place"
        if kept:
            text += (
                f"; kept on purpose, since a route through this gateway may be live: "
                f"{', '.join(kept)}"
            )
        return text


def journal_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.journal.json"


def _log(path: Path) -> Path:
    return path.with_suffix(".log")


def previous_path(path: Path) -> Path:
    """Where the journal at `path` keeps the state file as it was before its apply."""
    return path.with_suffix(".state")


def read_journal(path: Path) -> Journal | None:
    try:
        journal = Journal.model_validate_json(read_regular(str(path), STATE_LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError):
        return None  # torn, foreign or of another version: nothing can be resumed from it
    try:
        lines = read_regular(str(_log(path)), STATE_LIMIT).decode(errors="replace").split("\n")
    except FileNotFoundError:
        lines = []
    except OSError as error:  # what was done is unknown: say so, never guess "nothing"
        why = error.kind if isinstance(error, NotRegular) else error.__class__.__name__
        raise ZtplanError(
            f"{_log(path)}: unreadable journal log ({why})",
            "it records which steps of an unfinished apply were done: restore it from a "
            "backup, or move the journal files aside once the gateway is checked by hand",
        ) from None
    for line in lines:  # a torn last line has no newline and is ignored by the split below
        run, _, event = line.partition(" ")
        kind, _, value = event.partition(" ")
        if run == journal.id and value:
            step = kind in _STEP_EVENTS and value.isdigit()
            _note(journal, kind, int(value) if step else value)
    return journal


_STEP_EVENTS = ("done", "undone", "stuck", "kept")


def _note(journal: Journal, kind: str, value: int | str) -> None:
    """One event on the journal in memory: a step's index under its kind, or the outcome."""
    if kind in _STEP_EVENTS and isinstance(value, int):
        getattr(journal, kind).append(value)
    elif kind == "outcome":
        journal.outcome = str(value)


def write_journal(path: Path, journal: Journal, previous: Path | None = None) -> None:
    """Write the journal of a new apply; `previous`: the state file it will replace, kept
    beside the journal (a hard link, so the 13 MB of 2 x 50,000 rules are neither read nor
    copied; a copy where the file system has no hard links)."""
    remove_journal(path)  # a new apply: no progress of an older one may count
    journal.previous_kept = previous is not None
    if previous is not None:
        try:
            os.link(previous, previous_path(path))
        except OSError:
            shutil.copyfile(previous, previous_path(path))
            _fsync(previous_path(path))
    write_atomic(path, itertools.chain(_journal_json(journal), ["\n"]), mode=0o600)


_CHUNK = 2000


def _journal_json(journal: Journal) -> Iterator[str | bytes]:
    """`journal.model_dump_json()`, in pieces, as it is written. The journal of 2 x 50,000
    rules holds the saves and the spec (some 15 MB), which model_dump_json would hold
    twice more (growing, then copied): the fields are encoded by json's iterencode, the
    steps' changes (100,000 of a first apply: 40 MB as dicts) by pydantic, a few thousand
    at a time."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
    names = list(Journal.model_fields)
    cut = names.index("steps")
    head = encoder.iterencode(journal.model_dump(mode="json", include=set(names[:cut])))
    held = next(head)
    for piece in head:  # all but the head's closing brace
        yield held
        held = piece
    yield ',"steps":['
    changes = _changes_json()
    for i, step in enumerate(journal.steps):
        fields = encoder.encode(step.model_dump(mode="json", exclude={"changes"}))
        yield ("," if i else "") + fields[:-1] + ',"changes":['
        for start in range(0, len(step.changes), _CHUNK):
            listed = changes.dump_json(step.changes[start : start + _CHUNK])
            yield (b"," if start else b"") + listed[1:-1]
        yield "]}"
    yield "],"
    tail = encoder.iterencode(journal.model_dump(mode="json", include=set(names[cut + 1 :])))
    next(tail)  # the tail's opening brace
    yield from tail


@functools.cache
def _changes_json() -> TypeAdapter[list[Change]]:
    return TypeAdapter(list[Change])


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def log_event(path: Path, journal: Journal, kind: str, value: int | str) -> None:
    """Record one event (`done 3`, `undone 3`, `outcome ...`): on disk before going on."""
    _note(journal, kind, value)
    text = str(value).replace("\n", " ")
    with open(_log(path), "a", encoding="utf-8") as handle:
        handle.write(f"{journal.id} {kind} {text}\n")
        handle.flush()
        os.fsync(handle.fileno())


def remove_journal(path: Path) -> None:
    for file in (path, _log(path), previous_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(file)
