"""apply_plan: run a plan's steps in order, roll back on failure, write state.

Never half-applied: when a step fails, every provider touched in this run (the failing
one included: a firewall step may have restored IPv4 and failed on IPv6) is put back to
the snapshot taken before, newest first, and the error says what was put back.

The snapshots come from the plan, read under the same lock. When time passed between the
read and the go-ahead (a prompt), the host is read again first, and the apply is refused
if anything moved: the operator approved changes against the state they saw.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydantic import JsonValue

from ztplan.errors import ApplyFailed, StalePlan, ZtplanError
from ztplan.host import Host
from ztplan.journal import Journal, journal_path, mark_done, remove_journal, write_journal
from ztplan.model import Address, Change, Plan, Snapshot, digest_of
from ztplan.order import steps
from ztplan.persist import Persist
from ztplan.providers import Provider
from ztplan.state import StateFile, write_state

__all__ = [
    "ApplyResult",
    "Reporter",
    "apply_plan",
    "load_plan",
    "refuse_if_stale",
    "refuse_stale_saved_plan",
    "step_name",
]


class Reporter(Protocol):
    def step_started(self, provider: str, changes: Sequence[Change]) -> None: ...
    def step_done(self, provider: str, changes: Sequence[Change]) -> None: ...
    def rolled_back(self, provider: str, ok: bool) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    state: StateFile
    journal: Journal
    """Kept on disk when the apply awaits confirmation."""


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


def _crash_point(point: str) -> None:
    """Test hook: die here as a power cut would (ZTPLAN_TEST_KILL_AT=step:N|state)."""
    if os.environ.get("ZTPLAN_TEST_KILL_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def step_name(provider: str, changes: Sequence[Change]) -> str:
    return f"{provider} ({changes[0].phase})" if changes and changes[0].phase else provider


def load_plan(path: Path) -> Plan:
    """A plan saved with `plan -o`, if this ztplan can apply it exactly."""
    from pydantic import ValidationError

    from ztplan import __version__
    from ztplan.model import FORMAT_VERSION

    try:
        saved = Plan.model_validate_json(path.read_bytes())
    except (OSError, ValidationError, ValueError) as error:
        raise ZtplanError(f"{path}: not a ztplan plan file ({error.__class__.__name__})") from None
    if saved.format_version != FORMAT_VERSION or saved.ztplan_version != __version__:
        raise ZtplanError(
            f"{path}: made by ztplan {saved.ztplan_version} (format {saved.format_version}); "
            f"this is {__version__}",
            "plan again with this version",
        )
    if not saved.spec_text:
        raise ZtplanError(f"{path}: the plan carries no spec; plan again with -o")
    return saved


def refuse_stale_saved_plan(name: str, saved: Plan, fresh: Plan, state: StateFile | None) -> None:
    """Terraform's check: the state and the live state must be what the plan was made from.
    `fresh` is a plan made now; the addresses whose changes differ are what moved."""
    state_now = (state.lineage, state.serial) if state else (None, None)
    if (saved.state_lineage, saved.state_serial) != state_now:
        raise StalePlan(
            f"{name}: the state moved since the plan was made (serial "
            f"{saved.state_serial} -> {state_now[1]}); nothing was applied",
            "plan again",
        )
    if any(saved.snapshots.get(n) != d for n, d in fresh.snapshots.items()):
        old = {c.address: (c.action, c.before) for c in saved.changes}
        new = {c.address: (c.action, c.before) for c in fresh.changes}
        moved = sorted(a for a in old.keys() | new.keys() if old.get(a) != new.get(a))
        shown = ", ".join(moved[:5]) + (f" and {len(moved) - 5} more" if len(moved) > 5 else "")
        raise StalePlan(
            f"{name}: the live state changed since the plan was made"
            + (f" ({shown})" if moved else "")
            + "; nothing was applied",
            "plan again and review the new changes",
        )


def apply_plan(
    plan: Plan,
    snapshots: Mapping[str, Snapshot],
    host: Host,
    providers: Sequence[Provider],
    reporter: Reporter,
    state_dir: Path,
    previous: StateFile | None,
    managed: Mapping[Address, JsonValue],
    spec_text: str = "",
    confirm_by: float | None = None,
    carried: Mapping[Address, str] | None = None,
    persist: Persist | None = None,
) -> ApplyResult:
    """Apply `plan` (made from `snapshots`, which must be current) and record `managed`,
    the desired value of every resource the spec manages, as the new state.

    A journal in `state_dir` follows the steps (crash recovery); with `confirm_by` it is
    kept after success, for the revert that happens unless `ztplan confirm` comes first.
    `carried`: digests of resources this (partial, --target) apply leaves as they were.
    With `persist`, the plan's persist changes are made last, from a fresh read.
    """
    by_name = {p.name: p for p in providers}
    # persist is no provider: its step saves what the others left (ztplan.persist).
    boot = [c for c in plan.changes if c.provider == "persist"]
    planned = [(name, changes) for name, changes in steps(plan.changes) if name != "persist"]
    journal_file = journal_path(state_dir, plan.target)
    journal = Journal(
        target=plan.target,
        netns=host.netns,
        spec_file=plan.spec.path,
        spec_text=spec_text,
        snapshots={name: snapshots[name].raw for name, _ in planned},
        steps=[step_name(name, changes) for name, changes in planned],
        confirm_by=confirm_by,
        previous_state=previous.model_dump_json(indent=2) + "\n" if previous else None,
        persist_root=str(persist.root) if persist is not None else None,
    )
    write_journal(journal_file, journal)
    touched: list[Provider] = []

    def failed(step: str, error: Exception) -> ApplyFailed:
        cause = str(error) if isinstance(error, ZtplanError) else repr(error)
        rolled, not_rolled = _rollback(touched, snapshots, host, reporter)
        if not not_rolled:
            remove_journal(journal_file)  # all put back: nothing left to recover
        return ApplyFailed(step, cause, rolled, not_rolled)

    for number, (name, changes) in enumerate(planned):
        _crash_point(f"step:{number}")
        provider = by_name[name]
        reporter.step_started(name, changes)
        # The snapshot describes the host only until this provider's first step changes it.
        before = None if provider in touched else snapshots[name]
        if provider not in touched:
            touched.append(provider)
        try:
            provider.apply(host, changes, plan.desired, before)
        except Exception as error:  # any failure, a bug included, rolls back
            raise failed(name, error) from error
        mark_done(journal_file, journal, step_name(name, changes))
        reporter.step_done(name, changes)
    if persist is not None and boot:
        reporter.step_started("persist", boot)
        try:  # all or nothing itself: on failure the old boot files are back
            persist.save(host, providers)
        except Exception as error:
            raise failed("persist", error) from error
        reporter.step_done("persist", boot)
    _crash_point("state")
    # Each step is a transaction that either took whole or raised (and the controller and
    # member steps re-read what they wrote), so what the spec asks is now what is live.
    digests = dict(carried or {})
    digests.update((address, digest_of(value)) for address, value in managed.items())
    state = write_state(state_dir, previous, plan.target, host.netns, plan.spec, digests)
    if confirm_by is None:
        remove_journal(journal_file)
    return ApplyResult(state=state, journal=journal)


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
