"""Plan -> the stable JSON document (DESIGN §4): the one serialisation of a plan."""

from __future__ import annotations

from ztplan.model import Plan

__all__ = ["render_json"]


def render_json(plan: Plan) -> str:
    return plan.model_dump_json(indent=2) + "\n"
