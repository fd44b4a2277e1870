"""Plan -> Markdown for a pull-request comment or $GITHUB_STEP_SUMMARY."""

from __future__ import annotations

from ztplan.model import Action, Plan
from ztplan.render.human import render_source

__all__ = ["render_markdown"]

_WORD = {
    Action.CREATE: "create",
    Action.UPDATE: "update",
    Action.DELETE: "delete",
    Action.REPLACE: "replace",
}


def _code(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`"


MAX_ROWS = 200
"""A pull-request comment holds 65,536 characters; past this many changes, point to the
full plan instead of being cut off mid-table."""


def render_markdown(plan: Plan, max_rows: int = MAX_ROWS, full_plan: str = "plan.json") -> str:
    """Summary table, then warnings and errors, then the changes in a collapsed block."""
    adds, changes, destroys = plan.summary()
    out = [
        f"### ztplan plan: {plan.target}",
        "",
        "| target | add | change | destroy | spec |",
        "|---|---|---|---|---|",
        f"| {plan.target} | {adds} | {changes} | {destroys} | {_code(render_source(plan.spec))} |",
        "",
    ]
    for finding in plan.findings:
        icon = "**Error**" if finding.severity == "error" else "**Warning**"
        out.append(f"- {icon}: {finding.message}")
    if plan.findings:
        out.append("")
    if not plan.changes:
        out.append("No changes. The live state matches the spec.")
    else:
        out.append(f"<details><summary>{len(plan.changes)} change(s)</summary>")
        out.append("")
        out.append("| step | action | address |")
        out.append("|---|---|---|")
        out.extend(
            f"| {c.phase or c.provider} | {_WORD[c.action]} | {_code(c.address)} |"
            for c in plan.changes[:max_rows]
        )
        if len(plan.changes) > max_rows:
            out.append("")
            out.append(
                f"... and {len(plan.changes) - max_rows} more change(s), not shown: see the "
                f"full plan ({full_plan}, or `ztplan show {full_plan}`)."
            )
        out.append("")
        out.append("</details>")
    if plan.unmanaged:
        out.append("")
        out.append(f"{len(plan.unmanaged)} unmanaged (foreign) resource(s) left alone.")
    return "\n".join(out) + "\n"
