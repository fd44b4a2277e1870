"""`ztplan import` against the real kernel (the issue's "done when"): a gateway built by hand
with the guide's own commands, plus a Docker-like chain, real ndppd and a controller network
on the emulator, is imported, adopted, and then plans no changes, in the library and the CLI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, full_dump, open_spec, rules_of, sh
from ztplan.api import ApiClient
from ztplan.host import LocalHost
from ztplan.importer import adopt_rules, import_spec
from ztplan.model import Plan
from ztplan.normalise import KernelNormaliser
from ztplan.spec import Controller, parse_spec
from ztplan.testing.emulator import ControllerEmulator

pytestmark = pytest.mark.skipif(shutil.which("ndppd") is None, reason="needs Debian's ndppd")

NWID = "8056c2e21c000001"
TOKEN_ENV = "ZTPLAN_TEST_IMPORT_TOKEN"
PREFIX = "2001:19f0:6001:1a6::/64"
NDPPD_CONF = "proxy eth0 {\n    rule 2001:19f0:6001:1a6::/80 {\n        static\n    }\n}\n"
GUIDE = [  # the guide's commands, as a person types them
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.6.4.0/22", "-d", "10.6.4.0/22"]
    + ["-j", "RETURN"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.6.4.0/22", "-j", "SNAT"]
    + ["--to-source", "198.51.100.7"],
    ["ip6tables", "-P", "FORWARD", "DROP"],
    ["ip6tables", "-A", "FORWARD", "-i", "zt+", "-s", PREFIX, "-j", "ACCEPT"],
    ["ip6tables", "-A", "FORWARD", "-i", "eth0", "-d", PREFIX, "-j", "ACCEPT"],
    ["sysctl", "-w", "net.ipv4.ip_forward=1"],
    ["sysctl", "-w", "net.ipv6.conf.all.forwarding=1"],
    ["iptables", "-N", "DOCKER-USER"],  # and Docker was installed later
    ["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"],
    ["iptables", "-A", "FORWARD", "-i", "zt+", "-s", "10.6.4.0/22", "-j", "ACCEPT"],
]


@dataclass
class Gateway:
    """The hand-built gateway: its namespace, ndppd's files, the controller emulator."""

    netns: str
    config: Path
    pidfile: Path
    emulator: ControllerEmulator
    tmp: Path

    def import_text(self) -> str:
        controller = Controller(kind="local", url=self.emulator.url, token_env=TOKEN_ENV)
        with httpx.Client() as client:
            api = ApiClient(self.emulator.url, {"X-ZT1-Auth": "t0ken"}, client)
            return import_spec(
                LocalHost(self.netns),
                target="gw1",
                networks=[NWID],
                controller=controller,
                api=api,
                ndppd_config=str(self.config),
                ndppd_pidfile=str(self.pidfile),
            )

    def plan(self, text: str) -> Plan:
        return open_spec(text, self.netns, self.tmp / "state", name="imported.yaml").plan()


@pytest.fixture
def gateway(netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    for argv in GUIDE:
        sh(netns, *argv)
    config, pidfile = tmp_path / "ndppd.conf", tmp_path / "ndppd.pid"
    config.write_text(NDPPD_CONF)
    monkeypatch.setenv(TOKEN_ENV, "t0ken")
    try:
        sh(netns, "ndppd", "-d", "-c", str(config), "-p", str(pidfile))
        for _ in range(100):  # ndppd forks; the pid file appears once it runs
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.02)
        with ControllerEmulator(token="t0ken") as emulator:
            emulator.add_network(
                NWID,
                routes=[
                    {"target": "10.6.4.0/22", "via": None},
                    {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                    {"target": "2001:19f0:6001:1a6::/80", "via": None},
                ],
                ipAssignmentPools=[{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
            )
            yield Gateway(netns, config, pidfile, emulator, tmp_path)
    finally:
        if pidfile.exists():  # the daemon this fixture started, by its pid
            try:
                os.kill(int(pidfile.read_text()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass


JUMP = '-m comment --comment "ztplan:gw1" -j ZT-gw1.'
FORWARD_V6 = [
    f"-A FORWARD {JUMP}FORWARD",
    f"-A ZT-gw1.FORWARD -s {PREFIX} -i zt+ -j ACCEPT",
    f"-A ZT-gw1.FORWARD -d {PREFIX} -i eth0 -j ACCEPT",
]


def test_imported_and_adopted_gateway_plans_no_changes(gateway: Gateway) -> None:
    text = gateway.import_text()
    spec = parse_spec(text, "imported.yaml")
    assert "# Left out (ztplan leaves them alone):" in text
    assert "#   ipv4 filter FORWARD: -j DOCKER-USER  (jumps to DOCKER-USER: Docker)" in text
    assert spec.sysctl == {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1}
    assert spec.ndppd is not None and spec.ndppd.pidfile == str(gateway.pidfile)
    assert [n.model_dump(exclude_none=True) for n in spec.networks] == [
        {
            "id": NWID,
            "routes": [
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "10.6.4.0/22"},
                {"target": "2001:19f0:6001:1a6::/80"},
            ],
            "ip_pools": [{"start": "10.6.4.1", "end": "10.6.7.254"}],
        }
    ]
    before = full_dump(gateway.netns)
    adopted = adopt_rules(
        LocalHost(gateway.netns), spec, KernelNormaliser(cache_dir=gateway.tmp / "cache")
    )
    assert len(adopted) == 5
    # The same rules, moved into the target's own chains; Docker's jump untouched.
    assert full_dump(gateway.netns) != before
    assert [r for r in rules_of(gateway.netns, "ipv4", "filter") if r.startswith("-A")] == [
        f"-A FORWARD {JUMP}FORWARD",
        "-A FORWARD -j DOCKER-USER",
        "-A ZT-gw1.FORWARD -s 10.6.4.0/22 -i zt+ -j ACCEPT",
    ]
    assert [r for r in rules_of(gateway.netns, "ipv6", "filter") if r.startswith("-A")] == (
        FORWARD_V6
    )
    assert [r for r in rules_of(gateway.netns, "ipv4", "nat") if r.startswith("-A")] == [
        f"-A POSTROUTING {JUMP}POSTROUTING",
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7",
    ]
    plan = gateway.plan(text)
    assert plan.changes == []
    assert plan.unmanaged == ['firewall.ipv4.filter.FORWARD.foreign["-j DOCKER-USER"]']
    assert adopt_rules(LocalHost(gateway.netns), spec) == []  # idempotent

    spec_file = gateway.tmp / "imported.yaml"
    spec_file.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "ztplan", "plan", str(spec_file), "--netns", gateway.netns]
        + ["--detailed-exitcode", "--state-dir", str(gateway.tmp / "state")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert "No changes." in done.stdout


def test_without_adoption_the_plan_shows_only_the_own_chains_as_creates(
    gateway: Gateway,
) -> None:
    """What the module docstring promises: one create per rule in ztplan's own chains (and
    the chains and jumps), nothing else, and the hand-made originals listed as unmanaged."""
    plan = gateway.plan(gateway.import_text())
    own = [
        ("create", f"firewall.{f}.{t}.{c}.{k}")
        for f, t, c in (("ipv4", "nat", "POSTROUTING"), ("ipv4", "filter", "FORWARD"),
                        ("ipv6", "filter", "FORWARD"))
        for k in ("chain", "jump")
    ]  # fmt: skip
    assert sorted((c.action.value, c.address) for c in plan.changes) == sorted(
        own
        + [
            ("create", 'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"]'),
            (
                "create",
                'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]',
            ),
            ("create", f'firewall.ipv6.filter.FORWARD["-s {PREFIX} -i zt+ -j ACCEPT"]'),
            ("create", f'firewall.ipv6.filter.FORWARD["-d {PREFIX} -i eth0 -j ACCEPT"]'),
            ("create", 'firewall.ipv4.filter.FORWARD["-s 10.6.4.0/22 -i zt+ -j ACCEPT"]'),
        ]
    )
    assert f'firewall.ipv6.filter.FORWARD.foreign["-s {PREFIX} -i zt+ -j ACCEPT"]' in (
        plan.unmanaged
    )


def test_a_network_validate_refuses_is_imported_adopted_and_named_on_stderr(
    gateway: Gateway,
) -> None:
    """The controller holds a pool outside every route (it never refuses one): `import
    --adopt` still adopts the rules and writes the network as it is, names the problem at
    its line in the header, and says on stderr that there is something to fix."""
    gateway.emulator.add_network(
        NWID,
        routes=[{"target": "10.6.4.0/22", "via": None}],
        ipAssignmentPools=[{"ipRangeStart": "10.9.0.1", "ipRangeEnd": "10.9.0.9"}],
    )
    out = gateway.tmp / "imported.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "ztplan", "import", "--netns", gateway.netns, "--network", NWID]
        + ["--controller-kind", "local", "--controller-url", gateway.emulator.url]
        + ["--token-env", TOKEN_ENV, "--ndppd-config", str(gateway.config)]
        + ["--ndppd-pidfile", str(gateway.pidfile), "--target-name", "gw1", "--adopt"]
        + ["-o", str(out), "--state-dir", str(gateway.tmp / "state")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "Adopted 5 rule(s): moved into ztplan's own chains.",
        f"Wrote {out}.",
        "Warning: 1 problem(s) to fix before applying: see the header.",
    ]
    text = out.read_text()
    line = text.splitlines().index("  - start: 10.9.0.1") + 1
    assert (
        f"#   line {line}: networks[0].ip_pools[0]: a range inside one of the network's on-link "
        "routes (without via: 10.6.4.0/22); the controller assigns no address from "
        "10.9.0.1-10.9.0.9"
    ) in text.splitlines()
    assert f"-A ZT-gw1.FORWARD -s {PREFIX} -i zt+ -j ACCEPT" in rules_of(
        gateway.netns, "ipv6", "filter"
    )
    validate = subprocess.run(
        [sys.executable, "-m", "ztplan", "validate", str(out)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert validate.returncode == 1
    assert f"{out}:{line}: networks[0].ip_pools[0]: a range inside" in validate.stderr
