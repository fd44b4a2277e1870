"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    """The client a provider talks to the emulator with (a file may make its own)."""
    with httpx.Client(timeout=httpx.Timeout(2.0)) as client:
        yield client
