"""Views of the engine's models: text for a terminal, JSON, Markdown, Prometheus.

Pure functions of `ztplan.model` values; the CLI picks one by `--format`. The views are
imported only when asked for (the CLI's start-up time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ztplan.model import (
    ApplyOutcome,
    DriftReport,
    Finding,
    Plan,
    SpecSource,
    StepOutcome,
    Verification,
)

if TYPE_CHECKING:
    from ztplan.render.human import HumanReporter
    from ztplan.state import StateFile

__all__ = [
    "apply_outcome",
    "drift",
    "error",
    "errors",
    "findings",
    "metrics",
    "plan",
    "reporter",
    "states",
    "validation",
    "verification",
]


def plan(value: Plan, fmt: str, color: bool = False) -> str:
    if fmt == "json":
        return value.model_dump_json(indent=2) + "\n"
    if fmt == "markdown":
        from ztplan.render.markdown import render_markdown

        return render_markdown(value)
    from ztplan.render.human import render_plan

    return render_plan(value, color=color)


def drift(report: DriftReport, fmt: str) -> str:
    """Quiet (empty) when clean, except as JSON and Prometheus, which always say."""
    if fmt == "json":
        return report.model_dump_json(indent=2) + "\n"
    if fmt == "markdown":
        from ztplan.render.markdown import render_drift_markdown

        return render_drift_markdown(report)
    from ztplan.render.human import drift_lines

    return drift_lines(report)


def verification(value: Verification, fmt: str, color: bool = False) -> str:
    if fmt == "json":
        return value.model_dump_json(indent=2) + "\n"
    from ztplan.render.human import render_verification

    return "\n".join(render_verification(value, color)) + "\n"


def metrics(report: DriftReport, applied_at: str | None, commit: str | None) -> str:
    from ztplan.render.prometheus import render_metrics

    return render_metrics(report, applied_at, commit)


def apply_outcome(outcome: ApplyOutcome, fmt: str, color: bool = False) -> str:
    if fmt == "json":
        return outcome.model_dump_json(indent=2) + "\n"
    from ztplan.render.human import render_outcome

    return render_outcome(outcome, color)


def failed_steps(steps: Sequence[StepOutcome]) -> list[dict[str, object]]:
    return [s.model_dump() for s in steps]


def states(values: Sequence[StateFile], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([s.model_dump(mode="json") for s in values], indent=2) + "\n"
    from ztplan.render.human import render_states

    return render_states(values)


def findings(values: Sequence[Finding]) -> str:
    """Warnings and errors, one line each (validate's and the plan's)."""
    return "".join(
        f"{f.severity.capitalize()}: "
        f"{f.address + ': ' if f.address and f'{f.address}: ' not in f.message else ''}"
        f"{f.message}\n"
        for f in values
    )


def validation(source: SpecSource, target: str, fmt: str) -> str:
    if fmt == "json":
        return json.dumps({"valid": True, "spec": source.model_dump(), "target": target}) + "\n"
    return f"{source.path}: valid (target {target})\n"


def error(message: str, as_json: bool) -> str:
    return json.dumps({"error": message}) + "\n" if as_json else f"Error: {message}\n"


def errors(lines: Sequence[str], as_json: bool) -> str:
    """An error of several lines (a spec with three typos): a line each as text; as JSON
    one document, `error` the first line as for a single one and `errors` all of them."""
    if not as_json or len(lines) == 1:
        return "".join(error(line, as_json) for line in lines)
    return json.dumps({"error": lines[0], "errors": list(lines)}) + "\n"


def reporter(color: bool) -> HumanReporter:
    from ztplan.render.human import HumanReporter

    return HumanReporter(color)
