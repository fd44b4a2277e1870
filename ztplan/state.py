"""state/<target>.json: what the last apply left, written atomically (Terraform's shape).

`serial` grows by one on each write; `lineage` is fixed when the file is first made, so a
state file copied from another target is recognised. No secrets are ever written here.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quoted
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError

from ztplan import __version__
from ztplan.address import PATTERN as ADDRESS_PATTERN
from ztplan.errors import ZtplanError
from ztplan.files import STATE_LIMIT, NotRegular, read_regular
from ztplan.model import Address, SpecSource

__all__ = [
    "StateFile",
    "read_state",
    "read_states",
    "resources_of",
    "state_path",
    "PreparedState",
    "Written",
    "prepare_state",
    "write_atomic",
    "write_state",
]


class StateFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    version: int = Field(default=1, description="Format of this file.")
    serial: int = Field(description="Bumped on every write.")
    lineage: str = Field(description="Fixed when the state was first written.")
    ztplan_version: str
    target: str
    netns: str | None = None
    spec: SpecSource
    applied_at: str = Field(description="UTC time of the apply, ISO 8601.")
    resources: dict[Address, str] = Field(
        description="Digest of each resource the spec manages, as read back after the apply."
    )
    claims: dict[str, str] = Field(
        default_factory=dict,
        description="What this target holds on its host that another target may not hold "
        "differently: chain policies and sysctl keys (address -> value) and ndppd's config "
        "file (`ndppd.config` -> path). Another target's plan is an error on a conflict.",
    )

    _path: Path | None = PrivateAttr(default=None)
    """The file it was read from, when its resources were not kept (`read_state`)."""

    @property
    def text(self) -> str:
        """The file's text: read again when the resources were not kept (a run reads it
        under the target's lock, so it is the file checked), else this state written."""
        if self._path is not None:
            return read_regular(str(self._path), STATE_LIMIT).decode()
        return self.model_dump_json(indent=2) + "\n"


class _Checked(StateFile):
    """The whole file checked, the resources' addresses by the same pattern as Address's,
    but as plain strings: made in Rust and let go at once."""

    resources: dict[Annotated[str, StringConstraints(pattern=ADDRESS_PATTERN)], str]  # type: ignore[assignment]


def state_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.json"


def read_state(state_dir: Path, target: str, resources: bool = True) -> StateFile | None:
    """The target's state, checked whole. With `resources` False, the resources are not
    kept (a plan never reads them, and the 100,000 digests of 2 x 50,000 rules are 33 MB
    and 0.05 s more): the state has none; `text` and `resources_of` read the file again."""
    path = state_path(state_dir, target)
    try:
        data = read_regular(str(path), STATE_LIMIT)  # bounded, never a FIFO's hang
        if resources:
            return StateFile.model_validate_json(data)
        checked = _Checked.model_validate_json(data)
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as error:
        why = error.kind if isinstance(error, NotRegular) else error.__class__.__name__
        raise ZtplanError(
            f"{path}: unreadable state file ({why})",
            "move it aside; the next apply writes a new one",
        ) from None
    fields = {name: getattr(checked, name) for name in StateFile.model_fields}
    state = StateFile.model_construct(**{**fields, "resources": {}})
    state._path = path
    return state


def resources_of(state: StateFile) -> dict[Address, str]:
    """The state's resources, read again when `read_state` did not keep them (under the
    target's lock: the file read then)."""
    if state._path is None:
        return dict(state.resources)
    try:
        data = read_regular(str(state._path), STATE_LIMIT)
        return dict(StateFile.model_validate_json(data).resources)
    except (OSError, ValidationError, ValueError) as error:
        raise ZtplanError(
            f"{state._path}: unreadable state file ({error.__class__.__name__})"
        ) from None


def read_states(
    state_dir: Path,
    read: Mapping[Path, StateFile | None] | None = None,
    resources: bool = True,
) -> list[StateFile]:
    """Every target's state in the directory (unreadable ones are skipped: each target's
    own run reports its own). `read`: files already read (None: there was none), taken as
    they are rather than parsed again (100,000 resources take a while); `resources` as
    for `read_state`."""
    out = []
    for path in sorted(state_dir.glob("*.json")):
        if path.name.endswith(".journal.json") or path.name.startswith("."):
            continue
        if read is not None and path in read:
            known = read[path]
            if known is not None:
                out.append(known)
            continue
        try:
            state = read_state(path.parent, path.name.removesuffix(".json"), resources)
        except ZtplanError:
            continue
        if state is not None:
            out.append(state)
    return out


_CHUNK = 1 << 20


def write_atomic(path: Path, data: str | bytes | Iterable[str | bytes], mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file.

    `data` is text (UTF-8), bytes, or either in pieces (`json.JSONEncoder.iterencode`'s);
    text is encoded a megabyte at a time, so a state or journal of tens of MB is not held
    twice, as text and as bytes."""
    Written(path, data, mode).commit()


class Written:
    """A file written and synced beside `path` (`.name.*.tmp`), not yet in its place:
    `commit` renames it in (readers see the old or the new file, whole), `discard`
    removes it. What write_atomic does, in two steps, so that the writing and the fsync
    can be done ahead, while something else runs."""

    def __init__(
        self, path: Path, data: str | bytes | Iterable[str | bytes], mode: int = 0o644
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                for piece in [data] if isinstance(data, str | bytes) else data:
                    if isinstance(piece, bytes):
                        handle.write(piece)
                        continue
                    for start in range(0, len(piece), _CHUNK):
                        handle.write(piece[start : start + _CHUNK].encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(self.tmp, mode)
        except BaseException:
            self.discard()
            raise

    def commit(self) -> None:
        try:
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


@dataclass
class PreparedState:
    """A new state, written and synced beside the state file: `commit` puts it in place."""

    state: StateFile
    written: Written

    def commit(self) -> StateFile:
        """The new state in place; the state returned reads its resources from it."""
        self.written.commit()
        self.state._path = self.written.path
        return self.state

    def discard(self) -> None:
        self.written.discard()


def prepare_state(
    state_dir: Path,
    previous: StateFile | None,
    target: str,
    netns: str | None,
    spec: SpecSource,
    resources: Mapping[Address, str],
    claims: dict[str, str] | None = None,
) -> PreparedState:
    """The next state of `target`, written beside its file (an apply writes it while its
    steps run, and puts it in place once they all took). Called under the target's lock:
    a temp file of its state left there is an apply's that was killed, and goes.

    `resources` (address -> digest) are read once each, in order, as the file is written:
    an apply passes a view that makes each digest as it is asked for, so the 100,000
    digests of 2 x 50,000 rules are never all held. The state committed does not hold them
    either: like `read_state(resources=False)`, it reads its file again when asked."""
    for stale in state_dir.glob(f".{target}.json.*.tmp"):
        if _TEMP.fullmatch(stale.name.removeprefix(f".{target}.json.")):
            with contextlib.suppress(OSError):
                stale.unlink()
    # Built from values typed here, not validated again: 100,000 addresses to re-check.
    state = StateFile.model_construct(
        version=1,
        serial=(previous.serial + 1) if previous else 1,
        lineage=previous.lineage if previous else str(uuid.uuid4()),
        ztplan_version=__version__,
        target=target,
        netns=netns,
        spec=spec,
        applied_at=datetime.now(UTC).isoformat(timespec="seconds"),
        resources={},
        claims=dict(sorted((claims or {}).items())),
    )
    return PreparedState(
        state, Written(state_path(state_dir, target), _state_json(state, resources))
    )


_TEMP = re.compile(r"[a-z0-9_]{8}\.tmp")
"""What `tempfile.mkstemp` adds to a prefix: `.gw.json.` + this is gw's own temp file,
never that of a target named `gw.json` (`.gw.json.json.` + ...)."""

_RESOURCES = b'\n  "resources": {}'


def _state_json(state: StateFile, resources: Mapping[Address, str]) -> Iterator[bytes]:
    """The state file, as `model_dump_json(indent=2)` spells it, in pieces: pydantic's own
    serialiser for everything but the resources, which are written a few thousand at a
    time between its halves."""
    head, _, tail = StateFile.__pydantic_serializer__.to_json(state, indent=2).partition(_RESOURCES)
    yield head
    if not resources:
        yield _RESOURCES
    else:
        yield _RESOURCES[:-1]
        keys = sorted(resources)
        for start in range(0, len(keys), 4096):
            yield (
                ",".join(
                    f"\n    {_quoted(a)}: {_quoted(resources[a])}"
                    for a in keys[start : start + 4096]
                )
                + ("," if start + 4096 < len(keys) else "\n  }")
            ).encode()
    yield tail
    yield b"\n"


def write_state(
    state_dir: Path,
    previous: StateFile | None,
    target: str,
    netns: str | None,
    spec: SpecSource,
    resources: Mapping[Address, str],
    claims: dict[str, str] | None = None,
) -> StateFile:
    return prepare_state(state_dir, previous, target, netns, spec, resources, claims).commit()
