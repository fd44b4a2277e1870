"""`controller.kind: central-v2` through the CLI, as a user runs it, against the emulator: the
API key never shows in output, errors, plans, state or the emulator's log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
KEY = "ztsa-cli-key-s3cr3t-0123456789"
SPEC = f"""\
version: 1
target: {{name: gw-v2}}
controller: {{kind: central-v2, token_env: ZT_V2_KEY}}
networks:
  - id: "{NWID}"
    routes:
      - {{target: 10.6.4.0/22}}
      - {{target: 0.0.0.0/0, via: 10.6.6.2}}
    ip_pools: [{{start: 10.6.4.1, end: 10.6.7.254}}]
    mtu: 1500
    dns: {{domain: zt.example.com, servers: [10.6.6.2]}}
"""


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=KEY) as emu:
        emu.add_network(NWID)
        yield emu


def ztplan(*args: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ZT_V2_KEY": KEY,
        "ZTPLAN_CONTROLLER_URL": url,
        "ZTPLAN_STATE_DIR": str(cwd / "state"),
        "NO_COLOR": "1",
    }
    env.pop("ZTPLAN_CONTROLLER_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "ztplan", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def everything_written(tmp_path: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())


def test_plan_apply_converge_and_the_key_is_nowhere(
    emulator: ControllerEmulator, tmp_path: Path
) -> None:
    (tmp_path / "gw.yaml").write_text(SPEC)
    url = emulator.url + "/api/v2"
    runs = [
        ztplan("plan", "gw.yaml", "--detailed-exitcode", "-o", "plan.json", cwd=tmp_path, url=url)
    ]
    assert runs[0].returncode == 2, runs[0].stderr
    assert '~ controller.network["8056c2e21c000001"].routes' in runs[0].stdout
    assert '~ controller.network["8056c2e21c000001"].mtu: 2800 -> 1500' in runs[0].stdout
    runs.append(ztplan("apply", "plan.json", cwd=tmp_path, url=url))
    assert runs[-1].returncode == 0, runs[-1].stderr
    runs.append(ztplan("plan", "gw.yaml", "--detailed-exitcode", "--json", cwd=tmp_path, url=url))
    assert runs[-1].returncode == 0, runs[-1].stderr
    assert json.loads(runs[-1].stdout)["changes"] == []
    runs.append(ztplan("show", "--state", cwd=tmp_path, url=url))
    assert runs[-1].returncode == 0, runs[-1].stderr
    runs.append(ztplan("drift", "gw.yaml", cwd=tmp_path, url=url))
    assert runs[-1].returncode == 0, runs[-1].stderr
    assert (tmp_path / "state" / "gw-v2.json").exists()
    for done in runs:
        assert KEY not in done.stdout + done.stderr
    assert KEY not in everything_written(tmp_path)
    assert KEY not in repr(emulator.request_log)


def test_an_expired_key_is_one_line_that_names_the_url_and_not_the_key(
    emulator: ControllerEmulator, tmp_path: Path
) -> None:
    (tmp_path / "gw.yaml").write_text(SPEC)
    emulator.v2_key_expired = True
    url = emulator.url + "/api/v2"
    done = ztplan("plan", "gw.yaml", cwd=tmp_path, url=url)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"Error: controller: GET {url}/network/{NWID} answered 401: New Central refused the API "
        "key (invalid or expired API key); service-account keys expire"
    )
    assert KEY not in done.stdout + done.stderr + everything_written(tmp_path)


def test_an_unknown_network_is_refused_and_nothing_is_created(
    emulator: ControllerEmulator, tmp_path: Path
) -> None:
    (tmp_path / "gw.yaml").write_text(SPEC.replace(NWID, "8056c2e21c00beef"))
    done = ztplan("apply", "gw.yaml", "--auto-approve", cwd=tmp_path, url=emulator.url + "/api/v2")
    assert done.returncode == 1
    assert "network 8056c2e21c00beef does not exist in this New Central organisation" in done.stderr
    assert [m for m, _, _ in emulator.request_log] == ["GET"]
