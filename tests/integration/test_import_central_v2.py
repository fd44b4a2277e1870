"""`ztplan import` of a New Central network, over real HTTP against the emulator: the library
with a replaying host, and the CLI in a namespace of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.unit.fake_host import ReplayHost
from ztplan.diff import diff_resources
from ztplan.host import LocalHost
from ztplan.importer import import_spec
from ztplan.providers.controller import Controller, controller_client
from ztplan.spec import Controller as ControllerSpec
from ztplan.spec import parse_spec
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
KEY = "ztsa-import-key-0123456789"
V2 = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=KEY) as emu:
        emu.add_network(NWID)
        config = {
            "routes": [
                {"target": "10.6.4.0/22", "via": None},
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "fd00::/64", "via": None},  # the IPv6 pool's on-link route
            ],
            "v4IpAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
            "v6IpAssignmentPools": [{"ipRangeStart": "fd00::1", "ipRangeEnd": "fd00::ff"}],
            "mtu": 1500,
            "dns": {"domain": "zt.example.com", "servers": ["10.6.6.2"]},
            "v4Subnet": "10.6.4.0/22",
        }
        answer = httpx.post(f"{emu.url}/api/v2/network/{NWID}", headers=V2, json={"config": config})
        assert answer.status_code == 200
        yield emu


def test_a_v2_network_imports_into_a_spec_that_plans_no_changes(
    emulator: ControllerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZT_V2_KEY", KEY)
    monkeypatch.delenv("ZTPLAN_CONTROLLER_TOKEN", raising=False)
    controller = ControllerSpec(
        kind="central-v2", url=emulator.url + "/api/v2", token_env="ZT_V2_KEY"
    )
    host = ReplayHost({("iptables-save",): "", ("ip6tables-save",): ""})
    with httpx.Client() as http:
        bare = parse_spec(
            f"version: 1\ntarget: {{name: gw}}\ncontroller: {controller.model_dump_json()}\n",
            "bare.yaml",
        )
        api = controller_client(bare, http)
        text = import_spec(host, target="gw", networks=[NWID], controller=controller, api=api)
        assert KEY not in text
        spec = parse_spec(text, "imported.yaml")
        (network,) = spec.networks
        assert network.model_dump(exclude_none=True) == {
            "id": NWID,
            "routes": [
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "10.6.4.0/22"},
                {"target": "fd00::/64"},
            ],
            "ip_pools": [
                {"start": "10.6.4.1", "end": "10.6.7.254"},
                {"start": "fd00::1", "end": "fd00::ff"},
            ],
            "mtu": 1500,
            "dns": {"domain": "zt.example.com", "servers": ["10.6.6.2"]},
            "v4_subnet": "10.6.4.0/22",
        }
        p = Controller(api, "central-v2", [NWID])
        assert diff_resources(p.name, p.desired(spec), p.read(LocalHost(None)).resources)[0] == []
    assert {m for m, _, _ in emulator.request_log[1:]} == {"GET"}  # import and plan only read


def test_the_cli_imports_from_new_central(
    emulator: ControllerEmulator, netns: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ZT_V2_KEY": KEY,
        "ZTPLAN_CONTROLLER_URL": emulator.url + "/api/v2",
        "ZTPLAN_STATE_DIR": str(tmp_path / "state"),
    }
    env.pop("ZTPLAN_CONTROLLER_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "ztplan", "import", "--netns", netns, "--network", NWID]
        + ["--controller-kind", "central-v2", "--token-env", "ZT_V2_KEY"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert KEY not in done.stdout + done.stderr
    spec = parse_spec(done.stdout, "imported.yaml")
    assert spec.controller is not None and spec.controller.kind == "central-v2"
    assert spec.networks[0].v4_subnet == "10.6.4.0/22"
