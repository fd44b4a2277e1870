"""Plan -> text for a terminal, in Terraform's manner. The only home of `+ - ~` and colours."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from pydantic import JsonValue

from ztplan.model import (
    Action,
    ApplyOutcome,
    Change,
    DriftReport,
    FlowCheck,
    FlowVerdict,
    Plan,
    SpecSource,
    Verification,
)

if TYPE_CHECKING:
    from ztplan.state import StateFile

__all__ = [
    "HumanReporter",
    "drift_lines",
    "render_outcome",
    "render_plan",
    "render_source",
    "render_states",
    "render_verification",
    "summary_line",
    "value_text",
]


class _Step(Protocol):
    provider: str
    phase: str

    @property
    def name(self) -> str: ...

    @property
    def changes(self) -> Sequence[Change]: ...


_SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-", Action.REPLACE: "-/+"}
_COLOUR = {Action.CREATE: "32", Action.UPDATE: "33", Action.DELETE: "31", Action.REPLACE: "35"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _value(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False)


def value_text(change: Change) -> str:
    """before -> after in one line (a list: what comes and goes), for drift lines."""
    if change.action is Action.CREATE:
        return f" = {_value(change.after)}" if not change.address.endswith("]") else ""
    if change.action is Action.DELETE:
        return ""
    if isinstance(change.before, list) and isinstance(change.after, list) and not change.reason:
        was, now = [_value(x) for x in change.before], [_value(x) for x in change.after]
        parts = [f"+{x}" for x in now if x not in was] + [f"-{x}" for x in was if x not in now]
        return ": " + ", ".join(parts)
    return f": {_value(change.before)} -> {_value(change.after)}"


def render_source(source: SpecSource) -> str:
    where = source.path
    if source.commit:
        where += f" @ {source.commit[:12]}"
        if source.ref and source.ref != source.commit:
            where += f" ({source.ref})"
    if source.dirty:
        where += " (work tree has uncommitted changes)"
    return where


def summary_line(plan: Plan) -> str:
    adds, changes, destroys = plan.summary()
    return f"Plan: {adds} to add, {changes} to change, {destroys} to destroy."


def _change_lines(change: Change, color: bool) -> list[str]:
    head = f"  {_SYMBOL[change.action]} {change.address}"
    lines: list[str] = []
    if change.action is Action.UPDATE and isinstance(change.before, list) and change.reason:
        lines.append(_paint(f"{head}  ({change.reason})", _COLOUR[change.action], color))
        lines.extend(f"        was: {line}" for line in map(str, change.before))
        after = change.after if isinstance(change.after, list) else []
        lines.extend(f"        now: {line}" for line in map(str, after))
    elif change.action is Action.UPDATE and isinstance(change.before, list):
        # A list compared as a set (routes, pools): show what goes and what comes.
        after = change.after if isinstance(change.after, list) else []
        was, now = [_value(x) for x in change.before], [_value(x) for x in after]
        lines.append(_paint(head, _COLOUR[change.action], color))
        lines.extend(
            _paint(f"      - {x}", _COLOUR[Action.DELETE], color) for x in was if x not in now
        )
        lines.extend(
            _paint(f"      + {x}", _COLOUR[Action.CREATE], color) for x in now if x not in was
        )
    elif change.action is Action.UPDATE:
        lines.append(
            _paint(
                f"{head}: {_value(change.before)} -> {_value(change.after)}",
                _COLOUR[change.action],
                color,
            )
        )
        lines.extend(f"        {d}" for d in change.detail)
    else:
        reason = f"  ({change.reason})" if change.reason else ""
        shown = change.after if change.action is Action.CREATE else change.before
        if not change.address.endswith("]"):  # the value is not already in the address
            head += f" = {_value(shown)}"
        lines.append(_paint(head + reason, _COLOUR[change.action], color))
    return lines


def where(plan: Plan) -> str:
    """The host (and namespace) a plan was read on: `gw1 on host vm (netns ztplan-sandbox)`."""
    host = f" on host {plan.host}" if plan.host else ""
    return plan.target + host + (f" (netns {plan.netns})" if plan.netns else "")


def render_plan(plan: Plan, color: bool = False) -> str:
    out = [f"Spec: {render_source(plan.spec)}", f"Target: {where(plan)}"]
    if plan.controller_url:
        out.append(f"Controller: {plan.controller_url}")
    out.append("")
    for finding in plan.findings:
        label = "Error" if finding.severity == "error" else "Warning"
        code = "31;1" if finding.severity == "error" else "33;1"
        about = (
            f"{finding.address}: "
            if finding.address and finding.address not in finding.message
            else ""
        )
        out.append(_paint(f"{label}: ", code, color) + about + finding.message)
    if plan.findings:
        out.append("")
    shown = render_verification(plan.verification, color)
    if shown:
        out += [*shown, ""]
    if not plan.changes and plan.errors:
        out.append(_paint("No changes planned, but the plan has errors (above).", "31;1", color))
    elif not plan.changes:
        out.append(_paint("No changes. The live state matches the spec.", "32;1", color))
    else:
        out.append("ztplan will make these changes, in this order:")
        step = None
        number = 0
        for change in plan.changes:
            if (change.provider, change.phase) != step:
                step = (change.provider, change.phase)
                number += 1
                phase = f" ({change.phase})" if change.phase else ""
                out.append("")
                out.append(f"  {number}. {change.provider}{phase}")
            out.extend(_change_lines(change, color))
        out.append("")
        out.append(_paint(summary_line(plan), "1", color))
    if plan.unmanaged:
        out.append("")
        out.append(f"Unmanaged (foreign, left alone): {len(plan.unmanaged)}")
        out.extend(f"    {address}" for address in plan.unmanaged)
    return "\n".join(out) + "\n"


def _state(verdict: FlowVerdict | None, color: bool) -> str:
    if verdict is None:
        return "  -  "
    if verdict.skipped:
        return "skip "
    return _paint("ok   ", "32", color) if verdict.ok else _paint("FAIL ", "31;1", color)


def _flow_line(check: FlowCheck, color: bool, both: bool) -> str:
    shown = check.after if check.after is not None else check.now
    expect = " expected blocked" if check.expect == "blocked" else ""
    what = f"{check.name} ({check.kind} {check.family} {check.protocol}/{check.port}{expect})"
    said = ""
    if shown is not None:
        said = f": {shown.observed}" + (f"; {shown.culprit}" if shown.culprit else "")
    states = _state(check.now, color) + ("-> " + _state(check.after, color) if both else "")
    return f"  {states} {what}{said}"


def render_verification(verification: Verification | None, color: bool = False) -> list[str]:
    """The flows, now (and after the plan, when the plan changes the packet path)."""
    if verification is None:
        return []
    if verification.skipped:
        return [f"Verification skipped: {verification.skipped}"]
    both = any(c.after is not None for c in verification.flows)
    head = "now -> after this plan" if both else "now"
    out = [f"Verification, real packets through a twin of this gateway ({head}):"]
    out += [_flow_line(c, color, both) for c in verification.flows]
    out += [f"  note: {w}" for w in verification.warnings]
    return out


def drift_lines(report: DriftReport) -> str:
    """One line per drifted resource, with before -> after, for cron mail and CI logs."""
    plan = report.plan
    if plan is None:
        return ""
    lines = [
        f"drift: {plan.target}: {_SYMBOL[c.action]} {c.address}{value_text(c)}"
        + (f" ({c.reason})" if c.reason else "")
        for c in plan.changes
    ]
    lines += [
        f"drift: {plan.target}: {f.severity}: {f.address + ': ' if f.address else ''}{f.message}"
        for f in plan.findings
        if f.severity == "error"
    ]
    for check in plan.verification.failing_now if plan.verification else []:
        assert check.now is not None
        culprit = f"; {check.now.culprit}" if check.now.culprit else ""
        should = "pass" if check.expect == "pass" else "be blocked"
        lines.append(
            f"drift: {plan.target}: flow {check.name} ({check.kind} {check.family} "
            f"{check.protocol}/{check.port}) should {should}: {check.now.observed}{culprit}"
        )
    return "".join(line + "\n" for line in lines)


def render_outcome(outcome: ApplyOutcome, color: bool = False) -> str:
    if outcome.confirm_by is not None:
        return f"Apply complete. State serial {outcome.serial} written (not confirmed yet).\n"
    if outcome.serial is None:
        return ""
    return _paint(f"Apply complete. State serial {outcome.serial} written.", "32;1", color) + "\n"


def render_states(states: Sequence[StateFile]) -> str:
    """`show --state`: one short paragraph per target."""
    out = []
    for state in states:
        kinds: dict[str, int] = {}
        for address in state.resources:
            provider = address.partition(".")[0].partition("[")[0]
            kinds[provider] = kinds.get(provider, 0) + 1
        owned = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "nothing"
        out += [
            f"{state.target}: serial {state.serial}, applied {state.applied_at}"
            + (f" in netns {state.netns}" if state.netns else ""),
            f"  spec: {render_source(state.spec)}",
            f"  manages: {owned}",
        ]
        claims = [f"{k} = {v}" for k, v in state.claims.items()]
        if claims:
            out.append(f"  holds: {'; '.join(claims)}")
        out.append("")
    return "\n".join(out)


class HumanReporter:
    """Apply progress on stderr, one line a step; a step that takes a while says so
    (after 2 s, then every 10 s), as Terraform's "Still creating..." does."""

    def __init__(self, color: bool = False, first: float = 2.0, every: float = 10.0) -> None:
        self.color = color
        self.first = first
        self.every = every
        self._done = threading.Event()
        self._ticker: threading.Thread | None = None

    def _tick(self, name: str, started: float) -> None:
        wait = self.first
        while not self._done.wait(wait):
            elapsed = int(time.monotonic() - started)
            print(f"{name}: still applying... {elapsed} s elapsed", file=sys.stderr)
            wait = self.every

    def step_started(self, step: _Step) -> None:
        print(f"{step.name}: applying {len(step.changes)} change(s)...", file=sys.stderr)
        self._done = threading.Event()
        self._ticker = threading.Thread(
            target=self._tick, args=(step.name, time.monotonic()), daemon=True
        )
        self._ticker.start()

    def _stop(self) -> None:
        self._done.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None

    def step_done(self, step: _Step) -> None:
        self._stop()
        print(_paint(f"{step.name}: done", "32", self.color), file=sys.stderr)

    def rolled_back(self, step: _Step, how: str) -> None:
        self._stop()
        text = {
            "undone": f"{step.name}: rolled back",
            "kept": f"{step.name}: kept in place (a route through this gateway may be live)",
        }.get(how, f"{step.name}: NOT rolled back")
        print(_paint(text, "31;1" if how == "stuck" else "33", self.color), file=sys.stderr)
