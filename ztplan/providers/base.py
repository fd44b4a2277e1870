"""The contract every provider keeps (NAPALM's driver lifecycle, Terraform's vocabulary).

    read     = the running config (live, owned and foreign; never writes)
    desired  = the candidate (normalised from the spec; never touches live state)
    apply    = commit exactly these changes, as one transaction where the backend has one
    rollback = put back what `read` saw

Providers normalise and execute; they never diff (that is `ztplan.diff`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import JsonValue

from ztplan.host import Host
from ztplan.model import Address, Change, Finding, Resource, Snapshot
from ztplan.spec import Spec

__all__ = ["Provider"]


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

    def apply(
        self,
        host: Host,
        changes: Sequence[Change],
        desired: Mapping[Address, JsonValue],
        before: Snapshot | None = None,
    ) -> None:
        """Make exactly these changes (one transaction where the backend allows).

        `desired` holds the desired values of all the provider's resources: a chain's full
        rule order is needed to place one new rule. `before` is the snapshot the changes
        were planned against, when it is known to be current (read under the same lock).
        """
        ...

    def rollback(self, host: Host, before: Snapshot) -> None:
        """Put the live state back to `before` (as `read` returned it)."""
        ...
