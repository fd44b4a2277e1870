"""apply_plan: run a plan's steps in order, roll back on failure, write state.

Never half-applied: when a step fails (or the operator presses Ctrl-C, which stops after
the current step), the steps made in this run, the failing one included (a firewall step
may have restored IPv4 and failed on IPv6), are undone newest first, and the error says
what was undone. Undoing a step undoes exactly its changes (`Provider.rollback`).

Never strand members: a route through this gateway may be live on the controller while
its announce step is being undone (a timed-out write that landed anyway). If undoing a
controller step cannot be confirmed, the steps that make the gateway forward (firewall,
sysctl, ndppd) are left in place, the error says so, and the journal keeps the record for
the next plan: a gateway that forwards with no route is harmless, a route to a gateway
that does not forward drops every member off the Internet.

The snapshots come from the plan, read under the same lock. When time passed between the
read and the go-ahead (a prompt), the host is read again first, and the apply is refused
if anything moved: the operator approved changes against the state they saw.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import JsonValue

from ztplan.address import Address
from ztplan.errors import ApplyFailed, StalePlan, ZtplanError
from ztplan.host import Host
from ztplan.journal import (
    Journal,
    JournalStep,
    journal_path,
    log_event,
    remove_journal,
    write_journal,
)
from ztplan.model import Change, Plan, Snapshot, StepOutcome, digest_of
from ztplan.order import steps
from ztplan.providers import Provider
from ztplan.state import PreparedState, StateFile, prepare_state, resources_of, state_path

__all__ = [
    "ApplyResult",
    "Reporter",
    "apply_plan",
    "claims_of",
    "load_plan",
    "read_plan",
    "plan_steps",
    "refuse_if_stale",
    "refuse_stale_saved_plan",
    "undo_steps",
]

FORWARDING = ("firewall", "sysctl", "ndppd")
"""What makes the gateway forward: kept in place while a route through it may be live."""


Undone = Literal["undone", "stuck", "kept"]
"""How undoing a step ended: undone; its rollback failed; kept on purpose (forwarding)."""


class Reporter(Protocol):
    def step_started(self, step: JournalStep) -> None: ...
    def step_done(self, step: JournalStep) -> None: ...
    def rolled_back(self, step: JournalStep, how: Undone) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    state: StateFile
    journal: Journal
    """Kept on disk when the apply awaits confirmation."""
    steps: list[StepOutcome]


def plan_steps(changes: Sequence[Change]) -> list[JournalStep]:
    """The plan's changes as steps: consecutive changes of one provider in one phase."""
    return [
        JournalStep(index=i, provider=provider, phase=batch[0].phase, changes=batch)
        for i, (provider, batch) in enumerate(steps(changes))
    ]


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


MAX_PLAN_BYTES = 512 * 1024 * 1024
"""A saved plan of 2 x 50,000 rules is some tens of MB; a bound keeps /dev/zero out."""


def read_plan(path: Path) -> Plan:
    """A plan file as `plan -o` wrote it: a regular file, bounded (a FIFO would hang)."""
    from pydantic import ValidationError

    from ztplan.files import NotRegular, TooLarge, read_regular

    try:
        data = read_regular(str(path), MAX_PLAN_BYTES)
    except NotRegular as error:
        raise ZtplanError(f"{path}: {error.kind}, not a plan file") from None
    except TooLarge as error:
        raise ZtplanError(f"{path}: {error.size:,} bytes: not a plan file") from None
    except OSError as error:
        raise ZtplanError(f"{path}: cannot read it ({error.strerror or error})") from None
    try:
        return Plan.model_validate_json(data)
    except (ValidationError, ValueError) as error:
        raise ZtplanError(f"{path}: not a ztplan plan file ({error.__class__.__name__})") from None


def load_plan(path: Path) -> Plan:
    """A plan saved with `plan -o`, if this ztplan can apply it exactly."""
    from ztplan import __version__
    from ztplan.model import FORMAT_VERSION

    saved = read_plan(path)
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


def claims_of(desired: Mapping[Address, JsonValue], ndppd_config: str | None) -> dict[str, str]:
    """What a target holds that no other target on its host may hold differently."""
    # Without a parse of 100,000 addresses: a sysctl key's starts `sysctl[`, a policy's is
    # `firewall.<family>.<table>.policy.<chain>` (no key; a rule's text may hold ".policy.").
    claims = {
        str(a): str(v)
        for a, v in desired.items()
        if a.startswith(("sysctl[", "sysctl."))
        or ("[" not in a and ".policy." in a and a.startswith("firewall."))
    }
    if ndppd_config is not None:
        claims["ndppd.config"] = ndppd_config
    return claims


def undo_steps(
    done: Sequence[JournalStep],
    snapshots: Mapping[str, Snapshot],
    host: Host,
    providers: Mapping[str, Provider],
    on_step: Callable[[JournalStep, Undone, Exception | None], None],
    boot: JournalStep | None = None,
) -> tuple[list[str], list[str]]:
    """Undo `done`, newest first; (undone, not undone) step names. Once a controller step
    cannot be undone, the steps that make the gateway forward are kept (module docstring),
    and, when the plan had a `boot` step, what is kept is saved for boot: a reboot must not
    bring back a gateway that does not forward while the route through it may be live."""
    undone: list[str] = []
    kept: list[str] = []
    route_may_be_live = False
    for step in reversed(done):
        if route_may_be_live and step.provider in FORWARDING:
            kept.append(f"{step.name} (kept: a route through this gateway may be live)")
            on_step(step, "kept", None)
            continue
        try:
            providers[step.provider].rollback(host, snapshots[step.provider], step.changes)
        except Exception as error:  # keep going: put back as much as possible
            kept.append(f"{step.name} ({error})")
            route_may_be_live |= step.provider == "controller"
            on_step(step, "stuck", error)
        else:
            undone.append(step.name)
            on_step(step, "undone", None)
    if route_may_be_live and boot is not None and boot.provider in providers:
        try:
            providers[boot.provider].apply(host, boot.changes, snapshots[boot.provider])
        except Exception as error:
            kept.append(f"{boot.name} (the kept forwarding is NOT saved for boot: {error})")
            on_step(boot, "stuck", error)
        else:
            kept.append(f"{boot.name} (the kept forwarding saved for boot)")
            on_step(boot, "kept", None)
    return undone, kept


def apply_plan(
    plan: Plan,
    snapshots: Mapping[str, Snapshot],
    host: Host,
    providers: Sequence[Provider],
    reporter: Reporter,
    state_dir: Path,
    previous: StateFile | None,
    *,
    spec_text: str = "",
    root: str = "/",
    confirm_by: float | None = None,
    claims: Mapping[str, str] | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> ApplyResult:
    """Apply `plan` (made from `snapshots`, which must be current) and record the digests
    of its desired values as the new state (a partial plan: of what it changed, the rest
    carried over from `previous`).

    A journal in `state_dir` follows the steps (crash recovery); with `confirm_by` it is
    kept after success, for the revert that happens unless `ztplan confirm` comes first.
    `stop()` is asked before each step (Ctrl-C): true stops there and undoes what was done.
    """
    by_name = {p.name: p for p in providers}
    planned = plan_steps(plan.changes)
    journal_file = journal_path(state_dir, plan.target)
    journal = Journal(
        target=plan.target,
        netns=host.netns,
        root=root,
        spec_file=plan.spec.path,
        spec_text=spec_text,
        snapshots={s.provider: snapshots[s.provider].raw for s in planned},
        steps=planned,
        confirm_by=confirm_by,
    )
    write_journal(journal_file, journal, state_path(state_dir, plan.target) if previous else None)
    # The new state does not depend on how the steps go: it is made, written and synced
    # beside the state file while the steps wait for the kernel and the controller (at
    # 2 x 50,000 rules: 100,000 digests and a file of 13 MB), and put in place after them.
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ztplan-state")
    preparing = pool.submit(
        lambda: prepare_state(
            state_dir,
            previous,
            plan.target,
            host.netns,
            plan.spec,
            _digests(plan, previous),
            dict(claims or {}),
        )
    )
    pool.shutdown(wait=False)  # the one job runs on
    made: list[JournalStep] = []
    outcomes = {s.index: "not run" for s in planned}
    errors: dict[int, str] = {}

    def undone(step: JournalStep, how: Undone, error: Exception | None) -> None:
        outcomes[step.index] = {"undone": "rolled back", "kept": "kept"}.get(how, "not rolled back")
        if error is not None:
            errors[step.index] = str(error)
        log_event(journal_file, journal, how, step.index)
        reporter.rolled_back(step, how)

    def failed(step: str, cause: str) -> ApplyFailed:
        _discard(preparing)  # the state stays as it was
        boot = next((s for s in planned if s.provider == "persist"), None)
        rolled, not_rolled = undo_steps(made, snapshots, host, by_name, undone, boot)
        if not not_rolled:
            remove_journal(journal_file)  # all put back: nothing left to recover
        elif confirm_by is not None:  # kept for the next plan; no reverter waits on it
            log_event(journal_file, journal, "outcome", "failed")
        error = ApplyFailed(step, cause, rolled, not_rolled)
        error.steps = _outcomes(planned, outcomes, errors)
        return error

    for step in planned:
        if stop():
            raise failed(step.name, "interrupted (Ctrl-C) before this step")
        _crash_point(f"step:{step.index}")
        reporter.step_started(step)
        made.append(step)
        try:
            by_name[step.provider].apply(host, step.changes, snapshots[step.provider])
        except Exception as error:  # any failure, a bug included, rolls back
            outcomes[step.index] = "failed"
            errors[step.index] = str(error) if isinstance(error, ZtplanError) else repr(error)
            raise failed(step.name, errors[step.index]) from error
        outcomes[step.index] = "done"
        log_event(journal_file, journal, "done", step.index)
        reporter.step_done(step)
    if planned and stop():  # Ctrl-C during the last step: it finished, but the run stops
        raise failed(planned[-1].name, "interrupted (Ctrl-C) while this step ran")
    _crash_point("state")
    state = preparing.result().commit()
    if confirm_by is None:
        remove_journal(journal_file)
    return ApplyResult(state=state, journal=journal, steps=_outcomes(planned, outcomes, errors))


def _discard(preparing: Future[PreparedState]) -> None:
    """Remove the next state written ahead (waiting for it: a few tenths of a second at
    most, and then no file is left behind)."""
    if preparing.exception() is None:
        preparing.result().discard()


def _digests(plan: Plan, previous: StateFile | None) -> Mapping[Address, str]:
    """The state an applied plan leaves. Each step is a transaction that either took whole
    or raised (and the controller and member steps re-read what they wrote), so what the
    plan asks is then what is live: the digests of its desired values (a partial plan: of
    what it changed, the rest carried over from `previous`)."""
    if plan.partial is not None:
        digests = resources_of(previous) if previous else {}
        touched = {c.address for c in plan.changes}
        digests.update((a, digest_of(v)) for a, v in plan.desired.items() if a in touched)
        return digests
    return _Digests(plan.desired)


class _Digests(Mapping[Address, str]):
    """The digests of `values`, each made when asked for: the state file is written one
    resource at a time, and 100,000 digests held at once would be 12 MB."""

    def __init__(self, values: Mapping[Address, Any]) -> None:
        self._of = values

    def __getitem__(self, address: Address) -> str:
        return digest_of(self._of[address])

    def __iter__(self) -> Iterator[Address]:
        return iter(self._of)

    def __len__(self) -> int:
        return len(self._of)


def _outcomes(
    planned: Sequence[JournalStep], outcomes: Mapping[int, str], errors: Mapping[int, str]
) -> list[StepOutcome]:
    return [
        StepOutcome(
            provider=s.provider,
            phase=s.phase,
            changes=len(s.changes),
            status=outcomes[s.index],  # type: ignore[arg-type]
            error=errors.get(s.index),
        )
        for s in planned
    ]
