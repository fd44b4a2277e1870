"""The providers, and the one place that builds them with their I/O wired in.

    firewall    iptables/ip6tables: the target's own chains, jumps, policies
    sysctl      /proc/sys keys of the target namespace
    ndppd       ndppd.conf and the daemon running it
    controller  routes, pools and assign modes on the network controller
    member      this host's allowDefault & co. through the local service API
    persist     boot files (last: its desired state is the others' live state)

Modules with heavy imports (httpx ~0.1 s) are imported only when the spec needs them.
Apply order is `ztplan.order`'s, not this list's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ztplan.model import PlanContext
from ztplan.providers.base import Provider
from ztplan.spec import Spec

__all__ = [
    "CONTROLLER_URL_ENV",
    "MEMBER_TOKEN_FILE_ENV",
    "MEMBER_URL_ENV",
    "NAMES",
    "Provider",
    "Wiring",
    "build_providers",
]

NAMES = ("firewall", "sysctl", "ndppd", "controller", "member", "persist")

CONTROLLER_URL_ENV = "ZTPLAN_CONTROLLER_URL"
"""Overrides the spec's controller URL (the sandbox's emulator, a staging controller)."""
MEMBER_URL_ENV = "ZTPLAN_MEMBER_URL"
MEMBER_TOKEN_FILE_ENV = "ZTPLAN_MEMBER_TOKEN_FILE"
"""Override the member service's URL and token file (the sandbox's emulator)."""


@dataclass
class Wiring:
    """What the providers are built with, beyond the spec."""

    file: str = "spec"
    """The spec's name, for errors about it."""
    cache_dir: Path | None = None
    """Where the normaliser caches the kernel's spelling of rules."""
    netns: str | None = None
    root: Path = Path("/")
    """Where `persist` writes boot files."""
    context: PlanContext = field(default_factory=PlanContext)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


def build_providers(spec: Spec, wiring: Wiring) -> list[Provider]:
    """The providers the spec needs, in NAMES order, with their I/O wired in."""
    from ztplan.normalise import KernelNormaliser
    from ztplan.providers.firewall import Firewall, Layout
    from ztplan.providers.sysctl import Sysctl

    firewall = Firewall(
        Layout.of(spec), normalise=KernelNormaliser(cache_dir=wiring.cache_dir), file=wiring.file
    )
    sysctl = Sysctl(keys=list(spec.sysctl))
    providers: list[Provider] = [firewall, sysctl]
    if spec.ndppd is not None:
        from ztplan.providers.ndppd import Ndppd

        providers.append(Ndppd(config=spec.ndppd.config, pidfile=spec.ndppd.pidfile))
    if spec.controller is not None and spec.networks:
        from ztplan.api import shared_client
        from ztplan.providers.controller import Controller, controller_client

        api = controller_client(spec, shared_client(), wiring.env.get(CONTROLLER_URL_ENV))
        providers.append(Controller(api, spec.controller.kind, [n.id for n in spec.networks]))
    if spec.member is not None and spec.member.networks:
        from ztplan.api import shared_client
        from ztplan.providers.member import Member, member_client

        member = spec.member
        if wiring.env.get(MEMBER_URL_ENV):
            member = member.model_copy(update={"service_url": wiring.env[MEMBER_URL_ENV]})
        if wiring.env.get(MEMBER_TOKEN_FILE_ENV):
            member = member.model_copy(
                update={"token_file": wiring.env[MEMBER_TOKEN_FILE_ENV], "token_env": None}
            )
        api = member_client(member, shared_client())
        providers.append(Member(api, [n.id for n in member.networks]))
    from ztplan.providers.persist import make_persist

    # Always asked, `persist: none` included: a boot file left by hand is worth a warning.
    persist = make_persist(
        spec.persist, wiring.root, spec, wiring.netns, wiring.context, [firewall, sysctl]
    )
    if persist is not None:
        providers.append(persist)
    return [p for p in providers if p.manages(spec) or p.name == "persist"]
