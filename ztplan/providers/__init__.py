"""The providers, in the order they are read. Explicit: no plugin discovery by name."""

from __future__ import annotations

from ztplan.providers.base import Provider
from ztplan.providers.firewall import Firewall
from ztplan.providers.sysctl import Sysctl

__all__ = ["PROVIDERS", "Provider"]

PROVIDERS: tuple[type[Provider], ...] = (Firewall, Sysctl)
