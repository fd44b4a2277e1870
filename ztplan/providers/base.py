"""The contract every provider keeps (NAPALM's driver lifecycle, Terraform's vocabulary).

    read     = the running config (live, owned and foreign; never writes)
    desired  = the candidate (normalised from the spec)
    apply    = commit exactly these changes, as one transaction where the backend has one
    rollback = undo exactly these changes, putting back what `read` saw of them

Providers normalise and execute; they never diff (that is `ztplan.diff`): `apply` gets
the plan's changes and turns them into backend input, nothing more, so a partial or saved
plan does what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from ztplan.host import Host
from ztplan.model import Address, Change, Finding, Resource, Snapshot
from ztplan.spec import Spec

__all__ = ["Fetching", "Provider"]


@runtime_checkable
class Provider(Protocol):
    name: ClassVar[str]
    """The first word of every address the provider owns ("firewall")."""

    def manages(self, spec: Spec) -> bool:
        """Whether the spec has anything for this provider (if not, it is not even read)."""
        ...

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        """The spec's part, normalised so that `==` with live values means "same"."""
        ...

    def read(self, host: Host) -> Snapshot:
        """The live resources, owned and foreign. Never writes."""
        ...

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """Warnings and errors about this provider's part (the guide's mistakes)."""
        ...

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        """Make exactly these changes (one transaction where the backend allows).

        `before` is the snapshot the changes were planned against, read under this run's
        lock: what they are edits of (a rule's position in ztplan's own chain).
        """
        ...

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        """Undo `changes`, which were applied wholly, in part or not at all: put back what
        `before` held for the resources they touch, and nothing else. Reads the live
        state afresh; `before` may have been rebuilt from its `raw` (a journal)."""
        ...


@runtime_checkable
class Fetching(Provider, Protocol):
    """A provider whose `read` is `interpret(fetch(host))`: the waiting (commands,
    requests) apart from the parsing, so that a plan can fetch while it makes the desired
    states and interpret after them, in order (the firewall: its saves are the kernel's
    time, and its snapshot can then share the objects `desired` made)."""

    def fetch(self, host: Host) -> Any:
        """What `read` reads from the host, as it came. Never writes."""
        ...

    def interpret(self, fetched: Any) -> Snapshot:
        """The snapshot of what `fetch` returned."""
        ...
