"""`ztplan sandbox` builds a gateway to try things on, and the README's flow works in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SPECS, needs_netns
from tests.e2e.test_cli import ztplan
from ztplan.sandbox import GATEWAY, PEER


@needs_netns
def test_sandbox_up_plan_apply_down(tmp_path: Path) -> None:
    if os.path.exists(f"/run/netns/{GATEWAY}"):
        pytest.skip("a sandbox is already up on this machine; not touching it")
    try:
        done = ztplan("sandbox", "up", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "eth0: UP 198.51.100.7/24 2001:db8:100::7/64" in done.stdout
        assert "zt0: UP 10.6.6.2/22" in done.stdout
        spec = str(SPECS / "gateway.yaml")
        assert (
            ztplan("plan", spec, "--netns", GATEWAY, "--detailed-exitcode", cwd=tmp_path).returncode
            == 2
        )
        assert (
            ztplan("apply", spec, "--netns", GATEWAY, "--auto-approve", cwd=tmp_path).returncode
            == 0
        )
        assert (
            ztplan("plan", spec, "--netns", GATEWAY, "--detailed-exitcode", cwd=tmp_path).returncode
            == 0
        )
        assert ztplan("sandbox", "status", cwd=tmp_path).returncode == 0
    finally:
        done = ztplan("sandbox", "down", cwd=tmp_path)
    assert done.stdout.strip() == f"removed {GATEWAY}, {PEER}"
    status = ztplan("sandbox", "status", cwd=tmp_path)
    assert status.returncode == 1 and "down" in status.stdout
