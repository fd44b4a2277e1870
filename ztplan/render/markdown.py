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


def render_markdown(plan: Plan) -> str:
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
        out.append("| action | address |")
        out.append("|---|---|")
        out.extend(f"| {_WORD[c.action]} | {_code(c.address)} |" for c in plan.changes)
        out.append("")
        out.append("</details>")
    if plan.unmanaged:
        out.append("")
        out.append(f"{len(plan.unmanaged)} unmanaged (foreign) resource(s) left alone.")
    return "\n".join(out) + "\n"
