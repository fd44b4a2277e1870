"""Desired vs live -> changes. One generic function keyed by address; providers never diff.

desired only                      -> create (an element of an ordered list: `follows` the
                                     nearest desired element before it that is live)
live only, owned                  -> delete (the live resource's `reason`, if it has one)
live only, foreign, in a purging scope -> delete ("foreign rule in exclusive chain")
live only, foreign, in a scope    -> unmanaged (reported, left alone)
both, values differ               -> update (deepdiff says what changed inside)
an ordered list whose common elements come in another order -> update ("rule order")

An ordered list is a desired resource with `relative_order`: its value lists the values of
its elements, each the resource at `address.item(value)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import JsonValue

from ztplan.model import Action, Address, Change, Resource, new_change

__all__ = ["diff_resources", "same_relative_order"]


def same_relative_order(desired: JsonValue, live: JsonValue) -> bool:
    """Whether the elements present in both sequences come in the same order in each."""
    want = desired if isinstance(desired, list) else []
    have = live if isinstance(live, list) else []
    common = set(map(str, want)) & set(map(str, have))
    return [x for x in map(str, want) if x in common] == [x for x in map(str, have) if x in common]


def _describe(before: JsonValue, after: JsonValue) -> list[str]:
    if not isinstance(before, dict | list) or not isinstance(after, dict | list):
        return []
    from deepdiff import DeepDiff  # lazy: ~0.1 s to import, needed only for nested values

    delta = DeepDiff(before, after, verbose_level=2)
    lines: list[str] = []
    for kind, items in delta.to_dict().items():
        entries = items.items() if isinstance(items, dict) else ((i, None) for i in items)
        for where, what in entries:
            where = str(where).removeprefix("root")
            lines.append(
                f"{kind.replace('_', ' ')}: {where}" + (f" {what}" if what is not None else "")
            )
    return lines


def _anchors(
    desired: Mapping[Address, Resource], live: Mapping[Address, Resource]
) -> dict[Address, str]:
    """For each element of an ordered list that is not live: the value of the nearest
    element before it (in desired order) that is live, or "" for the head. Anchored to live
    elements only, a partial apply that creates one of several new elements still places it
    right; new elements with the same anchor go in desired order."""
    out: dict[Address, str] = {}
    for address, want in desired.items():
        if not want.relative_order or not isinstance(want.value, list):
            continue
        anchor = ""
        under = Address(want.members or address)
        for value in map(str, want.value):
            element = under.item(value)
            if element in live:
                anchor = value
            else:
                out[element] = anchor
    return out


def diff_resources(
    provider: str,
    desired: Mapping[Address, Resource],
    live: Mapping[Address, Resource],
) -> tuple[list[Change], list[Address]]:
    """Changes that make `live` match `desired`, and the foreign addresses left alone."""
    changes: list[Change] = []
    unmanaged: list[Address] = []
    scopes: Sequence[Resource] = [r for r in desired.values() if r.scope]
    # Anchors are of elements not live: with none (a plan with nothing to create), the
    # 100,000 element addresses of a long chain need not be made again.
    follows = _anchors(desired, live) if any(a not in live for a in desired) else {}
    for address, want in desired.items():
        have = live.get(address)
        if want.relative_order:
            if not same_relative_order(want.value, have.value if have else []):
                changes.append(
                    new_change(
                        address,
                        provider,
                        Action.UPDATE,
                        before=have.value if have else [],
                        after=want.value,
                        reason=want.reason or "rule order",
                    )
                )
        elif have is None:
            changes.append(
                new_change(
                    address,
                    provider,
                    Action.CREATE,
                    after=want.value,
                    reason=want.reason,
                    detail=list(want.detail),
                    follows=follows.get(address),
                )
            )
        elif have.value != want.value:
            changes.append(
                new_change(
                    address,
                    provider,
                    Action.UPDATE,
                    before=have.value,
                    after=want.value,
                    reason=want.reason,
                    detail=list(want.detail) or _describe(have.value, want.value),
                )
            )
    for address, have in live.items():
        if address in desired or have.relative_order:
            continue
        if have.owned:
            changes.append(
                new_change(
                    address,
                    provider,
                    Action.DELETE,
                    before=have.value,
                    reason=have.reason or "no longer in the spec",
                )
            )
            continue
        scope = next((s for s in scopes if s.scope and address.startswith(s.scope)), None)
        if scope is not None and scope.purge:
            changes.append(
                new_change(
                    address,
                    provider,
                    Action.DELETE,
                    before=have.value,
                    reason="foreign rule in an exclusive chain",
                )
            )
        elif scope is not None:
            unmanaged.append(address)
    return changes, unmanaged
