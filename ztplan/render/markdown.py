"""Plan -> Markdown for a pull-request comment or $GITHUB_STEP_SUMMARY.

A reviewer sees the values, not only the addresses: before -> after for a value, the
entries that come and go for a list (routes, pools), and, as diffs, the ndppd proxies and
what a boot file gains or loses.
"""

from __future__ import annotations

import json

from pydantic import JsonValue

from ztplan.model import Action, Change, DriftReport, FlowVerdict, Plan
from ztplan.render.human import render_source, where

__all__ = ["render_drift_markdown", "render_markdown"]

_WORD = {
    Action.CREATE: "create",
    Action.UPDATE: "update",
    Action.DELETE: "delete",
    Action.REPLACE: "replace",
}


def _code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


def _json(value: JsonValue) -> str:
    return json.dumps(value, ensure_ascii=False)


MAX_ROWS = 200
"""A pull-request comment holds 65,536 characters; past this many changes, point to the
full plan instead of being cut off mid-table."""


def _cell(change: Change) -> str:
    """The change's values, for the table's last column."""
    if change.action is Action.CREATE:
        return "" if change.address.endswith("]") else _code(_json(change.after))
    if change.action is Action.DELETE:
        reason = f" ({change.reason})" if change.reason else ""
        return ("" if change.address.endswith("]") else _code(_json(change.before))) + reason
    if isinstance(change.before, list) and isinstance(change.after, list) and not change.reason:
        was, now = [_json(x) for x in change.before], [_json(x) for x in change.after]
        parts = [f"+ {_code(x)}" for x in now if x not in was]
        parts += [f"− {_code(x)}" for x in was if x not in now]
        return "<br>".join(parts) or "order"
    text = f"{_code(_json(change.before))} → {_code(_json(change.after))}"
    return text + (f" ({change.reason})" if change.reason else "")


def _diffs(plan: Plan) -> list[str]:
    """The ndppd proxies and boot files as diffs (what a reviewer reads as a config)."""
    out: list[str] = []
    ndppd = [c for c in plan.changes if c.provider == "ndppd" and c.address != "ndppd.daemon"]
    if ndppd:
        out += ["ndppd.conf:", "", "```diff"]
        for change in ndppd:
            out += _ndppd_lines(change)
        out += ["```", ""]
    for change in plan.changes:
        if change.provider == "persist" and change.detail:
            out += [f"{_code(change.address)} ({change.reason}):", "", "```diff"]
            out += list(change.detail)
            out += ["```", ""]
    return out


def _ndppd_line(change: Change, value: JsonValue) -> str:
    steps = change.address.steps
    proxy = f"proxy {steps[2].key}" if len(steps) > 2 else "ndppd"
    if change.address.names[-1:] == ("rule",):
        return f"{proxy}: rule {change.address.key} {value}"
    if change.address.names[-1:] == ("rules",):
        return f"{proxy}: rules in the order {_json(value)}"
    return f"{proxy} {_json(value)}"


def _ndppd_lines(change: Change) -> list[str]:
    """One proxy or rule as ndppd.conf reads it, `-` before and `+` after."""
    lines = []
    if change.action is not Action.CREATE:
        lines.append("- " + _ndppd_line(change, change.before))
    if change.action is not Action.DELETE:
        lines.append("+ " + _ndppd_line(change, change.after))
    return lines


def _verification(plan: Plan) -> list[str]:
    """The flows as a table: now -> after, what was seen, who dropped it."""
    verification = plan.verification
    if verification is None:
        return []
    if verification.skipped:
        return [f"Verification skipped: {verification.skipped}", ""]

    def state(verdict: FlowVerdict | None) -> str:
        if verdict is None:
            return ""
        return "skip" if verdict.skipped else "ok" if verdict.ok else "**FAIL**"

    out = [
        "Verification (real packets through a twin of the gateway):",
        "",
        "| flow | expected | now | after | seen |",
        "|---|---|---|---|---|",
    ]
    for check in verification.flows:
        shown = check.after if check.after is not None else check.now
        seen = ""
        if shown is not None:
            seen = _code(shown.observed) + (f" ({_code(shown.culprit)})" if shown.culprit else "")
        what = f"{check.name} ({check.kind} {check.family} {check.protocol}/{check.port})"
        out.append(
            f"| {what} | {check.expect} | {state(check.now)} | {state(check.after)} | {seen} |"
        )
    return [*out, ""]


def render_markdown(plan: Plan, max_rows: int = MAX_ROWS, full_plan: str = "plan.json") -> str:
    """Summary table, then warnings and errors, then the changes in a collapsed block."""
    adds, changes, destroys = plan.summary()
    out = [
        f"### ztplan plan: {plan.target}",
        "",
        "| target | add | change | destroy | spec |",
        "|---|---|---|---|---|",
        f"| {_code(where(plan))} | {adds} | {changes} | {destroys} | "
        f"{_code(render_source(plan.spec))} |",
        "",
    ]
    if plan.controller_url:
        out += [f"Controller: {_code(plan.controller_url)}", ""]
    for finding in plan.findings:
        icon = "**Error**" if finding.severity == "error" else "**Warning**"
        about = f" {_code(finding.address)}" if finding.address else ""
        out.append(f"- {icon}{about}: {finding.message}")
    if plan.findings:
        out.append("")
    out += _verification(plan)
    if not plan.changes:
        out.append("No changes. The live state matches the spec.")
    else:
        out.append(f"<details><summary>{len(plan.changes)} change(s)</summary>")
        out.append("")
        out.append("| step | action | address | change |")
        out.append("|---|---|---|---|")
        out.extend(
            f"| {c.phase or c.provider} | {_WORD[c.action]} | {_code(c.address)} | {_cell(c)} |"
            for c in plan.changes[:max_rows]
        )
        if len(plan.changes) > max_rows:
            out.append("")
            out.append(
                f"... and {len(plan.changes) - max_rows} more change(s), not shown: see the "
                f"full plan ({full_plan}, or `ztplan show {full_plan}`)."
            )
        out.append("")
        out.extend(_diffs(plan))
        out.append("</details>")
    if plan.unmanaged:
        out.append("")
        out.append(f"{len(plan.unmanaged)} unmanaged (foreign) resource(s) left alone.")
    return "\n".join(out) + "\n"


def render_drift_markdown(report: DriftReport) -> str:
    if report.plan is None:
        return f"### ztplan drift: {report.target}\n\nThe check failed: {report.error}\n"
    if not report.plan.changes and not report.plan.errors:
        return ""
    return render_markdown(report.plan).replace("### ztplan plan:", "### ztplan drift:", 1)
