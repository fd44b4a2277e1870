"""The providers, in the order they are read. Explicit: no plugin discovery by name."""

from __future__ import annotations

from ztplan.providers.base import Provider

__all__ = ["PROVIDER_NAMES", "Provider"]

PROVIDER_NAMES = ("firewall", "sysctl", "ndppd", "controller", "member")
"""Every provider, in apply order (ztplan.order). They are built in ztplan.plan with their
I/O wired in, and imported there lazily: httpx alone costs ~0.1 s to import."""
