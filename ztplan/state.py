"""state/<target>.json: what the last apply left, written atomically (Terraform's shape).

`serial` grows by one on each write; `lineage` is fixed when the file is first made, so a
state file copied from another target is recognised. No secrets are ever written here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ztplan import __version__
from ztplan.errors import ZtplanError
from ztplan.files import STATE_LIMIT, NotRegular, read_regular
from ztplan.model import Address, SpecSource

__all__ = [
    "StateFile",
    "read_state",
    "read_states",
    "state_path",
    "write_atomic",
    "write_state",
]


class StateFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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


def state_path(state_dir: Path, target: str) -> Path:
    return state_dir / f"{target}.json"


def read_state(state_dir: Path, target: str) -> StateFile | None:
    path = state_path(state_dir, target)
    try:
        return StateFile.model_validate_json(read_regular(str(path), STATE_LIMIT))
    except FileNotFoundError:
        return None
    except (OSError, ValidationError, ValueError) as error:
        why = error.kind if isinstance(error, NotRegular) else error.__class__.__name__
        raise ZtplanError(
            f"{path}: unreadable state file ({why})",
            "move it aside; the next apply writes a new one",
        ) from None


def read_states(state_dir: Path) -> list[StateFile]:
    """Every target's state in the directory (unreadable ones are skipped: each target's
    own run reports its own)."""
    out = []
    for path in sorted(state_dir.glob("*.json")):
        if path.name.endswith(".journal.json") or path.name.startswith("."):
            continue
        try:
            out.append(StateFile.model_validate_json(read_regular(str(path), STATE_LIMIT)))
        except (OSError, ValidationError, ValueError):
            continue
    return out


def write_atomic(path: Path, data: str, mode: int = 0o644) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_state(
    state_dir: Path,
    previous: StateFile | None,
    target: str,
    netns: str | None,
    spec: SpecSource,
    resources: dict[Address, str],
    claims: dict[str, str] | None = None,
) -> StateFile:
    state = StateFile(
        serial=(previous.serial + 1) if previous else 1,
        lineage=previous.lineage if previous else str(uuid.uuid4()),
        ztplan_version=__version__,
        target=target,
        netns=netns,
        spec=spec,
        applied_at=datetime.now(UTC).isoformat(timespec="seconds"),
        resources=dict(sorted(resources.items())),
        claims=dict(sorted((claims or {}).items())),
    )
    # pydantic's own serialiser: ~5x faster than json.dumps on 20,000 resources.
    write_atomic(state_path(state_dir, target), state.model_dump_json(indent=2) + "\n")
    return state
