"""Drift as Prometheus text, for node_exporter's textfile collector."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from ztplan.model import DriftReport

__all__ = ["render_metrics"]


def _label(value: str) -> str:
    """Escape a label value as the exposition format asks (backslash, quote, newline)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(report: DriftReport, applied_at: str | None, applied_commit: str | None) -> str:
    """A report without a plan means the check failed: success 0, and no drift counts."""
    t = f'target="{_label(report.target)}"'
    plan, checked_at = report.plan, report.checked_at
    lines = [
        "# HELP ztplan_check_success Whether the last drift check of the target worked.",
        "# TYPE ztplan_check_success gauge",
        f"ztplan_check_success{{{t}}} {0 if plan is None else 1}",
        "# HELP ztplan_last_check_timestamp_seconds When the target was last checked.",
        "# TYPE ztplan_last_check_timestamp_seconds gauge",
        f"ztplan_last_check_timestamp_seconds{{{t}}} {checked_at:.3f}",
    ]
    if plan is not None:
        counts = Counter(c.provider for c in plan.changes)
        lines += [
            "# HELP ztplan_drift_resources Resources whose live state differs from the spec.",
            "# TYPE ztplan_drift_resources gauge",
        ]
        for provider in sorted(set(plan.snapshots) | set(counts)):
            lines.append(
                f'ztplan_drift_resources{{{t},provider="{_label(provider)}"}} {counts[provider]}'
            )
    if applied_at is not None:
        when = datetime.fromisoformat(applied_at).timestamp()
        lines += [
            "# HELP ztplan_last_apply_timestamp_seconds When the last successful apply ended.",
            "# TYPE ztplan_last_apply_timestamp_seconds gauge",
            f"ztplan_last_apply_timestamp_seconds{{{t}}} {when:.3f}",
        ]
    if applied_commit:
        lines += [
            "# HELP ztplan_applied_commit_info The spec commit of the last successful apply.",
            "# TYPE ztplan_applied_commit_info gauge",
            f'ztplan_applied_commit_info{{{t},commit="{_label(applied_commit)}"}} 1',
        ]
    return "\n".join(lines) + "\n"
