"""make_plan: read the host, turn the spec into desired resources, diff, order, check."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence

from pydantic import JsonValue

from ztplan import __version__
from ztplan.address import Address
from ztplan.checks import check_spec
from ztplan.diff import diff_resources
from ztplan.errors import ZtplanError
from ztplan.host import Host
from ztplan.model import Action, Change, Finding, Partial, Plan, PlanContext, Snapshot, SpecSource
from ztplan.order import order_changes
from ztplan.providers import Provider
from ztplan.providers.base import Fetching
from ztplan.spec import Spec
from ztplan.state import StateFile

__all__ = ["DEPENDS", "FROM_OTHERS", "make_plan", "restrict"]


DEPENDS = {"announce": ("protect", "forward", "proxy"), "teardown": ("withdraw",)}
"""A route is announced only through a gateway that is ready; forwarding is torn down only
after the routes through it are withdrawn."""


FROM_OTHERS = ("persist",)
"""Providers whose desired and live states are the others' live state (PlanContext): each
is read after the providers before it."""


@contextlib.contextmanager
def _reading(providers: Sequence[Provider], host: Host) -> Iterator[Callable[[], list[Snapshot]]]:
    """Read each provider's live state in a thread of its own, from now on; the block gets
    the snapshots, in order, by calling what it is given. The waits (the kernel's saves,
    each network's GET) overlap each other and the block's own work. A provider that
    splits its read (`Fetching`) only fetches in its thread: what it fetched is
    interpreted in this one, when asked for (after the block's desired states). A failure
    is the first failing provider's, in order, as when they were read one by one; after
    one (or Ctrl-C), the other reads are not waited for: they only read."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=max(len(providers), 1), thread_name_prefix="ztplan-read")

    def start(provider: Provider) -> Callable[[], Snapshot]:
        if isinstance(provider, Fetching):
            fetching = pool.submit(provider.fetch, host)
            return lambda: provider.interpret(fetching.result())
        return pool.submit(provider.read, host).result

    try:
        reading = [start(p) for p in providers]
        yield lambda: [snapshot() for snapshot in reading]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _prefixes(address: Address) -> set[str]:
    """Every address `address` is under (`firewall.ipv4`, ..., `firewall.ipv4.filter.FORWARD`)."""
    out: set[str] = set()
    text = ""
    for step in address.steps[:-1]:
        if step.name is not None:
            text = f"{text}.{step.name}" if text else step.name
        else:
            text = str(Address(text).item(str(step.key)))
        out.add(text)
    return out


def _needed(change: Change, prefixes: set[str]) -> bool:
    """A create that what is kept needs first: of a container itself, or of a plain name
    right below one (a rule of `...FORWARD` needs `...FORWARD.chain` and `...FORWARD.jump`)."""
    if change.action is not Action.CREATE:
        return False
    steps = change.address.steps
    parent = str(change.address).rpartition(".")[0] if steps[-1].name is not None else ""
    return change.address in prefixes or parent in prefixes


def restrict(changes: Sequence[Change], targets: Sequence[str]) -> list[Change]:
    """The changes at or under `targets`, with what the kept ones depend on: the creates
    of their containers (a rule's chain and jump) and the phases they need (in order)."""
    chosen = {c.address for c in changes if any(c.address.within(t) for t in targets)}
    prefixes: set[str] = set()
    for address in chosen:
        prefixes |= _prefixes(address)
    chosen |= {c.address for c in changes if _needed(c, prefixes)}
    needs = {p for c in changes if c.address in chosen for p in DEPENDS.get(c.phase, ())}
    return [c for c in changes if c.address in chosen or c.phase in needs]


def make_plan(
    spec: Spec,
    source: SpecSource,
    host: Host,
    providers: Sequence[Provider],
    state: StateFile | None = None,
    notes: Sequence[Finding] = (),
    targets: Sequence[str] = (),
    context: PlanContext | None = None,
    controller_url: str | None = None,
) -> tuple[Plan, dict[str, Snapshot]]:
    """The plan, and the snapshots it was made from (apply edits and rolls back from them).

    `notes` are findings from outside the providers (an interrupted apply's journal);
    `targets` restricts the changes to those addresses and what they depend on (a target
    that matches nothing is an error). `context` is the one the providers were built with:
    filled in provider order, for a provider whose desired state is the others' live state.
    """
    context = context if context is not None else PlanContext()
    context.snapshots.clear()  # a run may plan more than once (apply, after a prompt)
    context.changes.clear()
    unmanaged: list[Address] = []
    findings: list[Finding] = list(notes)
    desired_values: dict[Address, JsonValue] = {}
    known: list[Mapping[Address, object]] = []  # what --target may name (no copy)
    # The live states are read (in threads) while the desired states are made from the
    # spec; a bad spec still fails first, before any read is looked at. A provider that
    # plans from the others' live state (persist) comes after them.
    leading = [p for p in providers if p.name not in FROM_OTHERS]
    with _reading(leading, host) as read:
        wanted = {p.name: p.desired(spec) for p in leading}
        live = dict(zip(wanted, read(), strict=True))
    for provider in providers:
        if provider.name in wanted:
            desired, snapshot = wanted[provider.name], live[provider.name]
        else:
            desired = provider.desired(spec)
            snapshot = provider.read(host)
        context.snapshots[provider.name] = snapshot
        found, foreign = diff_resources(provider.name, desired, snapshot.resources)
        context.changes.extend(found)
        unmanaged.extend(foreign)
        findings.extend(provider.check(spec, snapshot))
        desired_values.update((a, r.value) for a, r in desired.items())  # no copy of 100,000
        known += [desired, snapshot.resources]

    def addresses() -> Mapping[str, Sequence[str]] | None:
        try:
            return host.addresses()
        except OSError:
            return None

    findings.extend(check_spec(spec, addresses, source.path))
    # The same changes, in order and phase, in place of those found (a first apply of
    # 2 x 50,000 rules finds 100,000: 37 MB, let go one by one as they are ordered).
    ordered = order_changes(context.changes, consume=True)
    context.changes.extend(ordered)
    partial = None
    if targets:
        unknown = [t for t in targets if not any(a.within(t) for m in known for a in m)]
        if unknown:
            raise ZtplanError(
                f"--target {unknown[0]} matches no resource of the spec or of the live state",
                "run plan without --target to see the addresses",
            )
        kept = restrict(ordered, targets)
        partial = Partial(targets=list(targets), kept=len(kept), total=len(ordered))
        findings.insert(
            0,
            Finding(
                severity="warning",
                address="target",
                message=f"partial plan: {len(kept)} of {len(ordered)} change(s), for "
                f"{', '.join(targets)} and what they depend on; the rest is not applied",
            ),
        )
        ordered = kept
    # Built from values made and typed here: validating 20,000 of them again costs ~0.07 s.
    plan = Plan.model_construct(
        ztplan_version=__version__,
        target=spec.target.name,
        host=socket.gethostname(),
        netns=host.netns,
        controller_url=controller_url,
        spec=source,
        changes=ordered,
        findings=findings,
        unmanaged=unmanaged,
        snapshots={name: s.digest for name, s in context.snapshots.items()},
        desired=desired_values,
        partial=partial,
        state_lineage=state.lineage if state else None,
        state_serial=state.serial if state else None,
        spec_text=spec._text or None,
    )
    return plan, dict(context.snapshots)
