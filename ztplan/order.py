"""Apply order: what protects first, what announces last (DESIGN §5).

The firewall goes first (it is what keeps the gateway safe and makes NAT work), then the
sysctls that turn forwarding on, then ndppd, and only then the controller's routes that
send members through the gateway; member settings last.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ztplan.model import Change

__all__ = ["RANK", "order_changes", "steps"]

RANK = {"firewall": 0, "sysctl": 1, "ndppd": 2, "controller": 3, "member": 4}


def order_changes(changes: Iterable[Change]) -> list[Change]:
    """Stable: within a provider, changes keep the order the diff gave them."""
    return sorted(changes, key=lambda c: RANK.get(c.provider, len(RANK)))


def steps(changes: Iterable[Change]) -> Iterator[tuple[str, list[Change]]]:
    """Consecutive changes of one provider, as one step each."""
    batch: list[Change] = []
    for change in changes:
        if batch and batch[-1].provider != change.provider:
            yield batch[0].provider, batch
            batch = []
        batch.append(change)
    if batch:
        yield batch[0].provider, batch
