"""Plan -> text for a terminal, in Terraform's manner. The only home of `+ - ~` and colours."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from pydantic import JsonValue

from ztplan.model import Action, Change, Plan, SpecSource

__all__ = ["HumanReporter", "drift_lines", "render_plan", "render_source", "summary_line"]

_SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.DELETE: "-", Action.REPLACE: "-/+"}
_COLOUR = {Action.CREATE: "32", Action.UPDATE: "33", Action.DELETE: "31", Action.REPLACE: "35"}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def _value(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False)


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


def render_plan(plan: Plan, color: bool = False) -> str:
    target = plan.target + (f" (netns {plan.netns})" if plan.netns else "")
    out = [f"Spec: {render_source(plan.spec)}", f"Target: {target}", ""]
    for finding in plan.findings:
        label = "Error" if finding.severity == "error" else "Warning"
        code = "31;1" if finding.severity == "error" else "33;1"
        where = f"{finding.address}: " if finding.address else ""
        out.append(_paint(f"{label}: ", code, color) + where + finding.message)
    if plan.findings:
        out.append("")
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


def drift_lines(plan: Plan) -> str:
    """One line per drifted resource, for cron mail and CI logs."""
    return "".join(
        f"drift: {plan.target}: {_SYMBOL[c.action]} {c.address}"
        + (f" ({c.reason})" if c.reason else "")
        + "\n"
        for c in plan.changes
    )


class HumanReporter:
    """Apply progress on stderr, one line a step."""

    def __init__(self, color: bool = False) -> None:
        self.color = color

    def step_started(self, provider: str, changes: Sequence[Change]) -> None:
        print(f"{provider}: applying {len(changes)} change(s)...", file=sys.stderr)

    def step_done(self, provider: str, changes: Sequence[Change]) -> None:
        print(_paint(f"{provider}: done", "32", self.color), file=sys.stderr)

    def rolled_back(self, provider: str, ok: bool) -> None:
        text = f"{provider}: rolled back" if ok else f"{provider}: ROLLBACK FAILED"
        print(_paint(text, "33" if ok else "31;1", self.color), file=sys.stderr)
