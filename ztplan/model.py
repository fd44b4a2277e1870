"""The values a run passes around: resources, changes, findings and the plan.

This module imports nothing else of ztplan and knows nothing of output: renderers in
`ztplan.render` read these values, the engine builds them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "FORMAT_VERSION",
    "Action",
    "Address",
    "Change",
    "Finding",
    "Plan",
    "Resource",
    "Snapshot",
    "SpecSource",
    "digest_of",
]

FORMAT_VERSION = "1"
"""Version of the plan JSON document; bumped on any incompatible change."""

Address = str
"""A resource address (DESIGN §4), e.g. 'sysctl["net.ipv4.ip_forward"]'."""


def digest_of(value: Any) -> str:
    """A stable sha256 of a JSON-able value (sorted keys), used for snapshots and state."""
    if isinstance(value, str) and '"' not in value and "\\" not in value and value.isprintable():
        text = f'"{value}"'  # what json.dumps gives, without its cost (state of 20,000 rules)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REPLACE = "replace"


class Resource(NamedTuple):
    """One managed (or foreign) thing, with `value` normalised so that `==` means "same".

    A NamedTuple, not a frozen dataclass: a large firewall makes 40,000 of these per plan,
    and a tuple is made ~4x faster."""

    address: Address
    value: JsonValue
    owned: bool = True
    """False for live things ztplan did not create (a foreign rule): never deleted unless purged."""
    relative_order: bool = False
    """`value` is a sequence whose elements are managed elsewhere; only the relative order of
    the elements present on both sides counts (so adding a rule is not also a reorder)."""
    scope: str | None = None
    """Desired side: live foreign resources whose address starts with this are in a place the
    spec manages (a chain): reported as unmanaged, or deleted when `purge`."""
    purge: bool = False
    """Desired side: delete the foreign resources in `scope` (a chain declared `exclusive`)."""


@dataclass(frozen=True)
class Snapshot:
    """What a provider read from the live host. `raw` is what rollback restores; never saved."""

    resources: dict[Address, Resource]
    raw: Any = None
    digest: str = field(default="")
    parsed: Any = None
    """The provider's own reading of `raw` (parsed tables), so apply need not parse again."""

    @classmethod
    def of(cls, resources: dict[Address, Resource], raw: Any = None) -> Snapshot:
        values = {a: [r.value, r.owned] for a, r in resources.items()}
        return cls(resources=resources, raw=raw, digest=digest_of(values))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SpecSource(_Frozen):
    """Where the spec came from: a file, or a file at a git commit."""

    path: str = Field(
        description="Path of the spec file (inside the repository when `repo` is set)."
    )
    repo: str | None = Field(default=None, description="Git work tree the spec was read from.")
    commit: str | None = Field(default=None, description="Commit sha the spec was read at.")
    ref: str | None = Field(default=None, description="The ref as given (--ref), if any.")
    dirty: bool | None = Field(
        default=None,
        description="For a path inside a git work tree: whether that tree had uncommitted changes.",
    )


class Change(_Frozen):
    """One thing apply will do to one resource."""

    address: Address = Field(description="What is changed (DESIGN §4).")
    provider: str = Field(
        description="The provider that applies it: the first word of the address."
    )
    action: Action = Field(description="create, update, delete or replace.")
    before: JsonValue = Field(default=None, description="Live value; null for create.")
    after: JsonValue = Field(default=None, description="Desired value; null for delete.")
    reason: str = Field(default="", description="Why, in one phrase.")
    detail: list[str] = Field(
        default_factory=list, description="For updates: what changed inside the value."
    )
    phase: str = Field(
        default="",
        description="When in the apply it runs: withdraw, protect, forward, proxy, announce, "
        "members or teardown (see ztplan.order).",
    )


class Finding(_Frozen):
    """A warning or error about the spec or the live state (the guide's mistakes)."""

    severity: Literal["warning", "error"]
    message: str
    address: Address | None = None


class Plan(_Frozen):
    """The whole answer of `ztplan plan`; also the saved plan file and `--json` output."""

    format_version: str = FORMAT_VERSION
    ztplan_version: str
    target: str = Field(description="The target's name (spec `target.name`).")
    netns: str | None = Field(default=None, description="Network namespace the host was read in.")
    spec: SpecSource
    changes: list[Change] = Field(description="In apply order.")
    findings: list[Finding] = Field(default_factory=list)
    unmanaged: list[Address] = Field(
        default_factory=list, description="Foreign live resources in managed places, left alone."
    )
    snapshots: dict[str, str] = Field(
        default_factory=dict, description="Digest of each provider's live snapshot."
    )
    desired: dict[Address, JsonValue] = Field(
        default_factory=dict,
        description="Desired value of every resource the spec manages (apply needs a chain's "
        "whole order to place one rule, and records these digests as the new state).",
    )
    state_lineage: str | None = Field(
        default=None, description="Lineage of the state the plan was made against."
    )
    state_serial: int | None = Field(
        default=None, description="Serial of that state: a saved plan is stale once it moved."
    )
    spec_text: str | None = Field(
        default=None,
        description="The spec itself (no secrets: tokens come from the environment), so a "
        "saved plan can be applied exactly, whatever the spec file says by then.",
    )

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def counts(self) -> dict[Action, int]:
        counts = dict.fromkeys(Action, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    def summary(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy): a replace counts as one add and one destroy."""
        counts = self.counts()
        replace = counts[Action.REPLACE]
        return (
            counts[Action.CREATE] + replace,
            counts[Action.UPDATE],
            counts[Action.DELETE] + replace,
        )

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]
