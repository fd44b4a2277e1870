"""The ndppd provider with Debian's real ndppd, started inside a test namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztplan.diff import diff_resources
from ztplan.host import LocalHost
from ztplan.model import Change
from ztplan.providers.ndppd import Ndppd
from ztplan.spec import Spec, parse_spec

pytestmark = pytest.mark.skipif(shutil.which("ndppd") is None, reason="needs Debian's ndppd")

SPEC = """\
version: 1
target: {name: gw}
controller: {kind: local, token_file: /dev/null}
networks:
  - id: 8056c2e21c000001
    routes: [{target: "2001:19f0:6001:1a6::/64"}]
ndppd:
  config: CONFIG
  pidfile: PIDFILE
  proxies:
    - interface: eth0
      rules: [{prefix: "2001:19f0:6001:1a6::/80", method: static}]
"""


@pytest.fixture
def files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    config, pidfile = tmp_path / "ndppd.conf", tmp_path / "ndppd.pid"
    yield config, pidfile
    if pidfile.exists():  # never leave a daemon behind
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass


def spec_for(files: tuple[Path, Path], text: str = SPEC) -> Spec:
    config, pidfile = files
    return parse_spec(
        text.replace("CONFIG", str(config)).replace("PIDFILE", str(pidfile)), "s.yaml"
    )


def plan(provider: Ndppd, spec: Spec, host: LocalHost) -> list[Change]:
    return diff_resources(provider.name, provider.desired(spec), provider.read(host).resources)[0]


def apply(provider: Ndppd, spec: Spec, host: LocalHost) -> list[Change]:
    before = provider.read(host)
    planned = plan(provider, spec, host)
    provider.apply(host, planned, before)
    return planned


def daemon_netns(pidfile: Path) -> str:
    pid = pidfile.read_text().strip()
    return subprocess.run(
        ["ip", "netns", "identify", pid], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_apply_writes_the_file_and_runs_ndppd_in_the_namespace(
    netns: str, files: tuple[Path, Path]
) -> None:
    host, spec = LocalHost(netns), spec_for(files)
    provider = Ndppd(config=str(files[0]), pidfile=str(files[1]))
    assert [(c.action.value, c.address, c.after) for c in plan(provider, spec, host)] == [
        ("create", 'ndppd.proxy["eth0"]', {"router": None, "timeout": None, "ttl": None}),
        ("create", 'ndppd.proxy["eth0"].rule["2001:19f0:6001:1a6::/80"]', "static"),
        ("update", "ndppd.daemon", "running"),
    ]
    apply(provider, spec, host)
    assert files[0].read_text() == (
        "# Managed by ztplan; changes here are reported as drift.\n\n"
        "proxy eth0 {\n    rule 2001:19f0:6001:1a6::/80 {\n        static\n    }\n}\n"
    )
    assert oct(files[0].stat().st_mode & 0o777) == "0o644"
    assert daemon_netns(files[1]) == netns
    assert plan(provider, spec, host) == []


def test_comments_and_spacing_are_not_drift_but_a_new_proxy_is(
    netns: str, files: tuple[Path, Path]
) -> None:
    host, spec = LocalHost(netns), spec_for(files)
    provider = Ndppd(config=str(files[0]), pidfile=str(files[1]))
    apply(provider, spec, host)
    files[0].write_text(
        "# edited by hand\nproxy eth0 {\n rule 2001:19F0:6001:01a6::/80 { static }\n}\n"
    )
    assert plan(provider, spec, host) == []
    files[0].write_text(files[0].read_text() + "proxy zt0 {\n rule 2001:db8::/64 { auto }\n}\n")
    assert [(c.action.value, c.address) for c in plan(provider, spec, host)] == [
        ("update", "ndppd.daemon"),  # the file changed under the running daemon
        ("delete", 'ndppd.proxy["zt0"]'),
        ("delete", 'ndppd.proxy["zt0"].rule["2001:db8::/64"]'),
    ]
    apply(provider, spec, host)
    assert plan(provider, spec, host) == []
    assert "zt0" not in files[0].read_text()


def test_a_dead_daemon_is_planned_and_restarted(netns: str, files: tuple[Path, Path]) -> None:
    host, spec = LocalHost(netns), spec_for(files)
    provider = Ndppd(config=str(files[0]), pidfile=str(files[1]))
    apply(provider, spec, host)
    os.kill(int(files[1].read_text()), signal.SIGKILL)
    subprocess.run(["sleep", "0.2"], check=True)
    changes = plan(provider, spec, host)
    assert [(c.address, c.before, c.after) for c in changes] == [
        ("ndppd.daemon", "stopped", "running")
    ]
    apply(provider, spec, host)
    assert daemon_netns(files[1]) == netns
    assert plan(provider, spec, host) == []


def test_rollback_restores_the_old_file_and_daemon_state(
    netns: str, files: tuple[Path, Path]
) -> None:
    host, spec = LocalHost(netns), spec_for(files)
    provider = Ndppd(config=str(files[0]), pidfile=str(files[1]))
    files[0].write_text("proxy eth0 {\n    rule 2001:db8::/64 {\n        static\n    }\n}\n")
    before = provider.read(host)
    planned = apply(provider, spec, host)
    provider.rollback(host, before, planned)
    assert (
        files[0].read_text() == "proxy eth0 {\n    rule 2001:db8::/64 {\n        static\n    }\n}\n"
    )
    assert provider.read(host).digest == before.digest  # daemon stopped again, old rules


def test_the_guides_mistakes_are_findings(netns: str, files: tuple[Path, Path]) -> None:
    host = LocalHost(netns)
    text = SPEC.replace(
        'rules: [{prefix: "2001:19f0:6001:1a6::/80", method: static}]',
        'rules: [{prefix: "2001:19f0:6001:1a6::/80", method: auto}, '
        '{prefix: "2001:db8:1::/80", method: "iface:zt9"}]',
    )
    text = text.replace("interface: eth0", "interface: eth9")
    spec = spec_for(files, text)
    provider = Ndppd(config=str(files[0]), pidfile=str(files[1]))
    findings = provider.check(spec, provider.read(host))
    assert [(f.severity, f.address, f.message) for f in findings] == [
        ("error", 'ndppd.proxy["eth9"]', "no interface eth9 in the target namespace"),
        (
            "warning",
            'ndppd.proxy["eth9"].rule["2001:19f0:6001:1a6::/80"]',
            "method auto depends on the kernel's routes and was seen to be flaky in the guide; "
            "use static or iface:<zerotier interface>",
        ),
        (
            "error",
            'ndppd.proxy["eth9"].rule["2001:db8:1::/80"]',
            "no interface zt9 in the target namespace",
        ),
        (
            "error",
            'ndppd.proxy["eth9"].rule["2001:db8:1::/80"]',
            "2001:db8:1::/80 is outside the network's IPv6 routes (2001:19f0:6001:1a6::/64): "
            "ndppd would answer for addresses the members do not have",
        ),
    ]
