"""apply_plan: run a plan's steps in order, roll back on failure, read back, write state.

Never half-applied: when a step fails, every provider touched in this run (the failing
one included: a firewall step may have restored IPv4 and failed on IPv6) is put back to
the snapshot taken before, newest first, and the error says what was put back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ztplan.errors import ApplyFailed, ZtplanError
from ztplan.host import Host
from ztplan.model import Change, Plan, Snapshot, digest_of
from ztplan.order import steps
from ztplan.providers import Provider
from ztplan.spec import Spec
from ztplan.state import StateFile, write_state

__all__ = ["ApplyResult", "Reporter", "apply_plan"]


class Reporter(Protocol):
    def step_started(self, provider: str, changes: Sequence[Change]) -> None: ...
    def step_done(self, provider: str, changes: Sequence[Change]) -> None: ...
    def rolled_back(self, provider: str, ok: bool) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    state: StateFile
    remaining: int
    """Changes a fresh plan still finds after the apply (0 when it converged)."""


def apply_plan(
    spec: Spec,
    plan: Plan,
    snapshots: Mapping[str, Snapshot],
    host: Host,
    providers: Sequence[Provider],
    reporter: Reporter,
    state_dir: Path,
    previous: StateFile | None,
) -> ApplyResult:
    by_name = {p.name: p for p in providers}
    touched: list[Provider] = []
    for name, changes in steps(plan.changes):
        provider = by_name[name]
        reporter.step_started(name, changes)
        touched.append(provider)
        try:
            provider.apply(host, changes, plan.desired)
        except Exception as error:  # any failure, a bug included, rolls back
            cause = str(error) if isinstance(error, ZtplanError) else repr(error)
            rolled, not_rolled = _rollback(touched, snapshots, host, reporter)
            raise ApplyFailed(name, cause, rolled, not_rolled) from error
        reporter.step_done(name, changes)

    # Read back: the state records what the host really holds, and a second plan is empty.
    from ztplan.diff import diff_resources

    digests: dict[str, str] = {}
    remaining = 0
    for provider in providers:
        desired = provider.desired(spec)
        live = provider.read(host).resources
        changes, _ = diff_resources(provider.name, desired, live)
        remaining += len(changes)
        digests.update({a: digest_of(live[a].value) for a in desired if a in live})
    state = write_state(state_dir, previous, plan.target, host.netns, plan.spec, digests)
    return ApplyResult(state=state, remaining=remaining)


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
