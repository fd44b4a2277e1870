"""The providers: firewall, sysctl, ndppd, controller, member (one module each).

They are built in `ztplan.plan.build_providers` with their I/O wired in, and imported there
lazily where they need heavy libraries (httpx alone costs ~0.1 s). Apply order is
`ztplan.order`'s, not this list's.
"""

from __future__ import annotations

from ztplan.providers.base import Provider

__all__ = ["Provider"]
