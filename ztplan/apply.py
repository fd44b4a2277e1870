"""apply_plan: run a plan's steps in order, roll back on failure, write state.

Never half-applied: when a step fails, every provider touched in this run (the failing
one included: a firewall step may have restored IPv4 and failed on IPv6) is put back to
the snapshot taken before, newest first, and the error says what was put back.

The snapshots come from the plan, read under the same lock. When time passed between the
read and the go-ahead (a prompt), the host is read again first, and the apply is refused
if anything moved: the operator approved changes against the state they saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import JsonValue

from ztplan.errors import ApplyFailed, StalePlan, ZtplanError
from ztplan.host import Host
from ztplan.model import Address, Change, Plan, Snapshot, digest_of
from ztplan.order import steps
from ztplan.providers import Provider
from ztplan.state import StateFile, write_state

__all__ = ["ApplyResult", "Reporter", "apply_plan", "refuse_if_stale"]


class Reporter(Protocol):
    def step_started(self, provider: str, changes: Sequence[Change]) -> None: ...
    def step_done(self, provider: str, changes: Sequence[Change]) -> None: ...
    def rolled_back(self, provider: str, ok: bool) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    state: StateFile


def refuse_if_stale(plan: Plan, host: Host, providers: Sequence[Provider]) -> dict[str, Snapshot]:
    """Read the host again; raise StalePlan naming what moved since the plan was made."""
    fresh = {p.name: p.read(host) for p in providers}
    moved = sorted(
        name
        for name, digest in plan.snapshots.items()
        if name in fresh and fresh[name].digest != digest
    )
    if moved:
        raise StalePlan(
            f"the live state changed since the plan was made ({', '.join(moved)}); "
            "nothing was applied",
            "run plan again and review the new changes",
        )
    return fresh


def apply_plan(
    plan: Plan,
    snapshots: Mapping[str, Snapshot],
    host: Host,
    providers: Sequence[Provider],
    reporter: Reporter,
    state_dir: Path,
    previous: StateFile | None,
    managed: Mapping[Address, JsonValue],
) -> ApplyResult:
    """Apply `plan` (made from `snapshots`, which must be current) and record `managed`,
    the desired value of every resource the spec manages, as the new state."""
    by_name = {p.name: p for p in providers}
    touched: list[Provider] = []
    for name, changes in steps(plan.changes):
        provider = by_name[name]
        reporter.step_started(name, changes)
        touched.append(provider)
        try:
            provider.apply(host, changes, plan.desired, snapshots[name])
        except Exception as error:  # any failure, a bug included, rolls back
            cause = str(error) if isinstance(error, ZtplanError) else repr(error)
            rolled, not_rolled = _rollback(touched, snapshots, host, reporter)
            raise ApplyFailed(name, cause, rolled, not_rolled) from error
        reporter.step_done(name, changes)
    # Each step is a transaction that either took whole or raised (and the controller and
    # member steps re-read what they wrote), so what the spec asks is now what is live.
    digests = {address: digest_of(value) for address, value in managed.items()}
    state = write_state(state_dir, previous, plan.target, host.netns, plan.spec, digests)
    return ApplyResult(state=state)


def _rollback(
    touched: Sequence[Provider], snapshots: Mapping[str, Snapshot], host: Host, reporter: Reporter
) -> tuple[list[str], list[str]]:
    rolled: list[str] = []
    not_rolled: list[str] = []
    for provider in reversed(touched):
        try:
            provider.rollback(host, snapshots[provider.name])
        except Exception as error:  # keep going: put back as much as possible
            not_rolled.append(f"{provider.name} ({error})")
            reporter.rolled_back(provider.name, False)
        else:
            rolled.append(provider.name)
            reporter.rolled_back(provider.name, True)
    return rolled, not_rolled
