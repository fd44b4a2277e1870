"""make_plan: read the host, turn the spec into desired resources, diff, order, check."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import JsonValue

from ztplan import __version__
from ztplan.checks import check_spec
from ztplan.diff import diff_resources
from ztplan.host import Host
from ztplan.model import Change, Finding, Plan, Snapshot, SpecSource
from ztplan.order import order_changes
from ztplan.persist import Persist
from ztplan.providers import Provider
from ztplan.providers.firewall import Firewall, KernelNormaliser
from ztplan.providers.sysctl import Sysctl
from ztplan.spec import Spec
from ztplan.state import StateFile

__all__ = ["build_providers", "make_plan", "restrict"]

CONTROLLER_URL_ENV = "ZTPLAN_CONTROLLER_URL"
"""Overrides the spec's controller URL (the sandbox's emulator, a staging controller)."""
MEMBER_URL_ENV = "ZTPLAN_MEMBER_URL"
MEMBER_TOKEN_FILE_ENV = "ZTPLAN_MEMBER_TOKEN_FILE"
"""Override the member service's URL and token file (the sandbox's emulator)."""


def build_providers(spec: Spec, file: str, cache_dir: Path | None) -> list[Provider]:
    """The providers the spec needs, with their I/O wired in."""
    providers: list[Provider] = [
        Firewall(normalise=KernelNormaliser(cache_dir=cache_dir), file=file),
        Sysctl(keys=list(spec.sysctl)),
    ]
    if spec.ndppd is not None:
        from ztplan.providers.ndppd import Ndppd

        providers.append(Ndppd(config=spec.ndppd.config, pidfile=spec.ndppd.pidfile))
    if spec.controller is not None and spec.networks:
        from ztplan.api import shared_client
        from ztplan.providers.controller import Controller, controller_client

        api = controller_client(spec, shared_client(), os.environ.get(CONTROLLER_URL_ENV))
        providers.append(Controller(api, spec.controller.kind, [n.id for n in spec.networks]))
    if spec.member is not None and spec.member.networks:
        from ztplan.api import shared_client
        from ztplan.providers.member import Member, member_client

        member = spec.member
        if os.environ.get(MEMBER_URL_ENV):
            member = member.model_copy(update={"service_url": os.environ[MEMBER_URL_ENV]})
        if os.environ.get(MEMBER_TOKEN_FILE_ENV):
            member = member.model_copy(
                update={"token_file": os.environ[MEMBER_TOKEN_FILE_ENV], "token_env": None}
            )
        api = member_client(member, shared_client())
        providers.append(Member(api, [n.id for n in member.networks]))
    return [p for p in providers if p.manages(spec)]


def _matches(address: str, target: str) -> bool:
    return address == target or address.startswith((target + ".", target + "["))


DEPENDS = {"announce": ("protect", "forward", "proxy"), "teardown": ("withdraw",)}
"""A route is announced only through a gateway that is ready; forwarding is torn down only
after the routes through it are withdrawn."""


def restrict(changes: Sequence[Change], targets: Sequence[str]) -> list[Change]:
    """The changes at or under `targets`, plus those the kept ones depend on (in order)."""
    chosen = {c.address for c in changes if any(_matches(c.address, t) for t in targets)}
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
    persist: Persist | None = None,
) -> tuple[Plan, dict[str, Snapshot]]:
    """The plan, and the snapshots it was made from (apply rolls back to them). `notes` are
    findings from outside the providers (an interrupted apply's journal); `targets`
    restricts the changes to those addresses and what they depend on. With `persist`, the
    boot files are compared with the live state just read (boot drift)."""
    changes = []
    unmanaged = []
    findings: list[Finding] = list(notes)
    snapshots: dict[str, Snapshot] = {}
    desired_values: dict[str, JsonValue] = {}
    for provider in providers:
        desired = provider.desired(spec)  # first: a bad spec fails before any live read
        snapshot = provider.read(host)
        snapshots[provider.name] = snapshot
        found, foreign = diff_resources(provider.name, desired, snapshot.resources)
        changes.extend(found)
        unmanaged.extend(foreign)
        findings.extend(provider.check(spec, snapshot))
        desired_values.update({a: r.value for a, r in desired.items()})

    def addresses() -> Mapping[str, Sequence[str]] | None:
        try:
            return host.addresses()
        except OSError:
            return None

    findings.extend(check_spec(spec, addresses))
    if persist is not None:
        changes.extend(persist.changes(host, snapshots, changes))
    ordered = order_changes(changes)
    if targets:
        kept = restrict(ordered, targets)
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
        netns=host.netns,
        spec=source,
        changes=ordered,
        findings=findings,
        unmanaged=unmanaged,
        snapshots={name: s.digest for name, s in snapshots.items()},
        desired=desired_values,
        state_lineage=state.lineage if state else None,
        state_serial=state.serial if state else None,
        spec_text=spec._text or None,
    )
    return plan, snapshots
