"""`ztplan sandbox` builds a gateway to try things on, and README's demo works in it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SPECS, needs_netns
from tests.e2e.test_cli import ztplan
from ztplan.sandbox import GATEWAY, PEER

SANDBOX_ENV = (
    "ZTPLAN_CONTROLLER_URL",
    "ZEROTIER_CENTRAL_TOKEN",
    "ZTPLAN_MEMBER_URL",
    "ZTPLAN_MEMBER_TOKEN_FILE",
)


@needs_netns
def test_sandbox_up_demo_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.path.exists(f"/run/netns/{GATEWAY}"):
        pytest.skip("a sandbox is already up on this machine; not touching it")
    try:
        done = ztplan("sandbox", "up", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "eth0: UP 198.51.100.7/24 2001:db8:100::7/64" in done.stdout
        assert "zt0: UP 10.6.6.2/22" in done.stdout
        assert "controller emulator: http://127.0.0.1:" in done.stdout
        env = ztplan("sandbox", "env", cwd=tmp_path)
        assert env.returncode == 0, env.stderr
        names = []
        for line in env.stdout.splitlines():  # export NAME=value
            name, _, value = line.removeprefix("export ").partition("=")
            monkeypatch.setenv(name, value)
            names.append(name)
        assert tuple(names) == SANDBOX_ENV
        # README's demo: the gateway in the sandbox, the member in its peer namespace.
        for spec, netns in (("gateway.yaml", GATEWAY), ("member.yaml", PEER)):
            path = str(SPECS / spec)
            done = ztplan("plan", path, "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
            assert done.returncode == 2, done.stderr
            done = ztplan("apply", path, "--netns", netns, "--auto-approve", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            done = ztplan("plan", path, "--netns", netns, "--detailed-exitcode", cwd=tmp_path)
            assert done.returncode == 0, done.stdout + done.stderr
        assert ztplan("sandbox", "status", cwd=tmp_path).returncode == 0
    finally:
        done = ztplan("sandbox", "down", cwd=tmp_path)
    assert done.stdout.strip() == f"removed the controller emulator, {GATEWAY}, {PEER}"
    assert not os.path.exists(f"/etc/ztplan/netns/{GATEWAY}")
    status = ztplan("sandbox", "status", cwd=tmp_path)
    assert status.returncode == 1 and "down" in status.stdout
