"""The values a run passes around: resources, changes, findings, the plan and the outcomes.

This module imports nothing of ztplan but `ztplan.address` and knows nothing of output:
renderers in `ztplan.render` read these values, the engine builds them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, JsonValue, computed_field, model_validator

from ztplan.address import Address

__all__ = [
    "FORMAT_VERSION",
    "Action",
    "Address",
    "ApplyOutcome",
    "Change",
    "DriftReport",
    "Finding",
    "FlowCheck",
    "FlowVerdict",
    "Partial",
    "Plan",
    "PlanContext",
    "Resource",
    "Snapshot",
    "SpecSource",
    "StepOutcome",
    "Verification",
    "digest_of",
]

FORMAT_VERSION = "2"
"""Version of the plan JSON document; bumped on any incompatible change (2: typed
addresses, `follows`, `partial`, `counts`, `host`, `controller_url`)."""


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
    members: str | None = None
    """For an ordered list: the address its elements are found under, as
    `Address(members).item(value)` (None: under the list's own address)."""
    scope: str | None = None
    """Desired side: live foreign resources whose address starts with this are in a place the
    spec manages (a chain): reported as unmanaged, or deleted when `purge`."""
    purge: bool = False
    """Desired side: delete the foreign resources in `scope` (a chain declared `exclusive`)."""
    reason: str = ""
    """Why a change to it is made, when there is more to say than the values: on the live
    side, why an owned resource the spec no longer wants goes (a rule of ztplan 0.1 being
    moved); on the desired side, why it differs (a boot file a reboot would lose)."""
    detail: tuple[str, ...] = ()
    """Desired side: what differs inside the value, when the provider knows it better than
    a generic comparison would (the rules a boot file lacks)."""


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


@dataclass
class PlanContext:
    """What a plan has found so far, for a provider whose desired state depends on the
    others' live state (persist: the boot files must hold what runs). `make_plan` fills it
    in provider order; such a provider comes last."""

    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


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
        "members, teardown or boot (see ztplan.order).",
    )
    follows: str | None = Field(
        default=None,
        description="For a new element of an ordered list (a rule of ztplan's own chain): the "
        'live element it goes right after, or "" for the head of the list. Planned against '
        "the live list, so a partial (--target) apply places it exactly.",
    )


_EVERY_FIELD = set(Change.model_fields)


def new_change(
    address: Address,
    provider: str,
    action: Action,
    *,
    before: JsonValue = None,
    after: JsonValue = None,
    reason: str = "",
    detail: list[str] | None = None,
    phase: str = "",
    follows: str | None = None,
) -> Change:
    """A Change of values typed already (a plan's own), not validated again: a first apply
    of 2 x 50,000 rules makes 100,000 of them, 1.6 KB each when validated and ~0.4 KB so.
    Only a rule's case is taken so (an Address, text or nothing before and after): any
    other value is validated as before, so a value JSON cannot hold (a set, a tuple, a
    key that is not text) still fails the plan, not the state written after the steps.
    Every field is given, so one set of their names serves as each one's fields-set
    (shared: the model is frozen, and model_copy copies it)."""
    fields = {
        "before": before,
        "after": after,
        "reason": reason,
        "detail": detail if detail is not None else [],
        "phase": phase,
        "follows": follows,
    }
    if not (type(address) is Address and _text_or_none(before) and _text_or_none(after)):
        return Change(address=address, provider=provider, action=action, **fields)  # type: ignore[arg-type]
    return Change.model_construct(
        _EVERY_FIELD,
        address=address,
        provider=provider,
        action=action,
        **fields,
    )


def _text_or_none(value: JsonValue) -> bool:
    return value is None or type(value) is str


def in_phase(change: Change, phase: str) -> Change:
    """`change` in `phase` (model_copy, without copying its fields-set)."""
    return Change.model_construct(
        change.__pydantic_fields_set__, **{**change.__dict__, "phase": phase}
    )


class Finding(_Frozen):
    """A warning or error about the spec or the live state (the guide's mistakes)."""

    severity: Literal["warning", "error"]
    message: str
    address: str | None = Field(
        default=None,
        description="What it is about: a resource address, a spec field path "
        "(`firewall.ipv4.nat.POSTROUTING[1]`) or a topic (`persist`, `apply.interrupted`).",
    )


class FlowVerdict(_Frozen):
    """What a flow did in the twin."""

    ok: bool = Field(description="It behaved as expected (or could not be sent: `skipped`).")
    passed: bool = Field(description="The traffic got through (MSS: was clamped).")
    skipped: bool = Field(
        default=False,
        description="The twin could not send it (no address of the family on the ZeroTier "
        "side, say): neither a pass nor a failure.",
    )
    observed: str = Field(description="One phrase: `reached 203.0.113.1 from 198.51.100.7`.")
    culprit: str | None = Field(
        default=None,
        description="When not ok: the table, chain and rule (or policy) that dropped it, or "
        "let it in.",
    )


class FlowCheck(_Frozen):
    """One flow of a verification, on the live state and on the state the plan makes."""

    name: str
    kind: str = Field(description="outbound, inbound, management or mss.")
    family: str
    protocol: str
    port: int
    expect: Literal["pass", "blocked"]
    now: FlowVerdict | None = None
    after: FlowVerdict | None = Field(
        default=None, description="In the state the plan would produce (plan, apply)."
    )

    @property
    def cut(self) -> bool:
        """A management flow that works now and would not after: a lock-out."""
        return (
            self.kind == "management"
            and self.now is not None
            and self.now.passed
            and self.after is not None
            and not self.after.passed
        )


class Verification(_Frozen):
    """Real packets through a twin of the gateway (ztplan.verify)."""

    skipped: str | None = Field(
        default=None, description="Why no verification was made (no root, no netns...)."
    )
    flows: list[FlowCheck] = Field(default_factory=list)
    warnings: list[str] = Field(
        default_factory=list, description="What the twin could not read or reproduce."
    )

    @property
    def failing_now(self) -> list[FlowCheck]:
        return [f for f in self.flows if f.now is not None and not f.now.ok]

    @property
    def failing_after(self) -> list[FlowCheck]:
        return [f for f in self.flows if f.after is not None and not f.after.ok]

    @property
    def lockouts(self) -> list[FlowCheck]:
        return [f for f in self.flows if f.cut]


class Partial(_Frozen):
    """A plan restricted with --target: what was asked, and how much of the plan is kept."""

    targets: list[str] = Field(description="The --target addresses (or prefixes) as given.")
    kept: int = Field(description="Changes kept: those targeted and what they depend on.")
    total: int = Field(description="Changes of the whole plan.")


class Counts(_Frozen):
    add: int
    change: int
    destroy: int


class Plan(_Frozen):
    """The whole answer of `ztplan plan`; also the saved plan file and `--json` output."""

    format_version: str = FORMAT_VERSION
    ztplan_version: str
    target: str = Field(description="The target's name (spec `target.name`).")
    host: str = Field(default="", description="The host name of the machine the plan was read on.")
    netns: str | None = Field(default=None, description="Network namespace the host was read in.")
    controller_url: str | None = Field(
        default=None, description="The controller API actually used (after overrides), if any."
    )
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
        description="Desired value of every resource the spec manages: apply records their "
        "digests as the new state.",
    )
    partial: Partial | None = Field(
        default=None, description="Set when --target restricted the plan: the rest is not applied."
    )
    verification: Verification | None = Field(
        default=None,
        description="The gateway's flows, now and after the plan, with real packets through a "
        "twin; None when not asked for (--no-verify).",
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

    @model_validator(mode="before")
    @classmethod
    def _computed_fields_are_output_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and "counts" in data:
            data = {k: v for k, v in data.items() if k != "counts"}
        return data

    @computed_field(  # type: ignore[prop-decorator]
        description="To add, to change and to destroy (a replace is one of each)."
    )
    @property
    def counts(self) -> Counts:
        add, change, destroy = self.summary()
        return Counts(add=add, change=change, destroy=destroy)

    @property
    def has_changes(self) -> bool:
        return bool(self.changes)

    def summary(self) -> tuple[int, int, int]:
        """(to add, to change, to destroy): a replace counts as one add and one destroy."""
        counts = dict.fromkeys(Action, 0)
        for change in self.changes:
            counts[change.action] += 1
        replace = counts[Action.REPLACE]
        return (
            counts[Action.CREATE] + replace,
            counts[Action.UPDATE],
            counts[Action.DELETE] + replace,
        )

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]


class StepOutcome(_Frozen):
    """One step of an apply: a provider in one phase, and how it ended."""

    provider: str
    phase: str
    changes: int = Field(description="How many changes the step holds.")
    status: Literal["done", "failed", "rolled back", "not rolled back", "kept", "not run"]
    """`kept`: left in place on purpose by a rollback (forwarding, while a route through
    this gateway may be live on the controller)."""
    error: str | None = None


class ApplyOutcome(_Frozen):
    """What `apply --json` prints: the steps and how they ended, and the state written."""

    format_version: str = FORMAT_VERSION
    target: str
    applied: bool = Field(description="Whether every step was made (and the state written).")
    steps: list[StepOutcome] = Field(default_factory=list)
    serial: int | None = Field(default=None, description="The state serial written, if any.")
    confirm_by: float | None = Field(
        default=None, description="Unix time the apply is reverted at unless confirmed."
    )
    counts: Counts | None = None
    error: str | None = None


class DriftReport(_Frozen):
    """What `drift` found: the changes a plan would make now, and the findings."""

    format_version: str = FORMAT_VERSION
    target: str
    checked_at: float
    plan: Plan | None = Field(default=None, description="None: the check itself failed.")
    error: str | None = None

    @property
    def drifted(self) -> list[Change]:
        return list(self.plan.changes) if self.plan is not None else []
