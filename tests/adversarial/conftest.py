"""Fixtures of the adversarial tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.adversarial import stranded
from ztplan.testing.emulator import ControllerEmulator


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[ControllerEmulator]:
    """A self-hosted controller holding NWID and NWID2, the run's URL and token set."""
    with ControllerEmulator(token="tk") as emu:
        emu.add_network(stranded.NWID)
        emu.add_network(stranded.NWID2)
        monkeypatch.setenv("ZTPLAN_CONTROLLER_URL", emu.url)
        monkeypatch.setenv("ZT_TOKEN", "tk")
        yield emu
    while stranded.clients:
        stranded.clients.pop().close()
