"""A converged plan means a working gateway (issue 11's "done when"), through the CLI: real
packets through a twin of a gateway namespace that looks like a real one (Docker's chains,
a native nftables table, iptables-legacy rules, a foreign DROP, a listening SSH port)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import full_dump, needs_netns, sh
from tests.e2e.test_cli import ZTPLAN, ztplan

pytestmark = needs_netns

SPEC = """\
version: 1
target: {name: gw}
gateway:
  network: 8056c2e21c000001
  wan_interface: eth0
  ipv4: {subnet: 10.6.4.0/22, address: 10.6.6.2, nat: masquerade, pool: false}
  ipv6: {prefix: "2001:db8:6::/64"}
"""
DOCKER = [
    ["iptables", "-P", "FORWARD", "DROP"],
    *(["iptables", "-N", c] for c in ("DOCKER", "DOCKER-USER", "DOCKER-FORWARD",
                                      "DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2")),
    ["iptables", "-A", "FORWARD", "-j", "DOCKER-USER"],
    ["iptables", "-A", "FORWARD", "-j", "DOCKER-FORWARD"],
    ["iptables", "-A", "DOCKER-USER", "-j", "RETURN"],
    ["iptables", "-A", "DOCKER-FORWARD", "-j", "DOCKER-ISOLATION-STAGE-1"],
    ["iptables", "-A", "DOCKER-FORWARD", "-o", "docker0", "-j", "DOCKER"],
    ["iptables", "-A", "DOCKER-ISOLATION-STAGE-1", "-i", "docker0", "!", "-o", "docker0",
     "-j", "DOCKER-ISOLATION-STAGE-2"],
    ["iptables", "-A", "DOCKER-ISOLATION-STAGE-2", "-o", "docker0", "-j", "DROP"],
    ["iptables", "-t", "nat", "-N", "DOCKER"],
    ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "172.17.0.0/16", "!", "-o", "docker0",
     "-j", "MASQUERADE"],
]  # fmt: skip


@pytest.fixture
def gateway() -> Iterator[str]:
    """A gateway's namespace: eth0 to the Internet (v4 and v6 default routes), zt0 on the
    ZeroTier network (v4 and routed v6), as `ztplan plan` sees a real one."""
    name = f"ztplan-t-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for inside, outside, addresses in (
            ("eth0", "o0", ["198.51.100.7/24", "2001:db8:100::7/64"]),
            ("zt0", "o1", ["10.6.6.2/22", "2001:db8:6::2/64"]),
        ):
            sh(name, "ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
            for address in addresses:
                sh(name, "ip", "addr", "add", address, "dev", inside, "nodad")
            sh(name, "ip", "link", "set", inside, "up")
            sh(name, "ip", "link", "set", outside, "up")
        sh(name, "ip", "route", "add", "default", "via", "198.51.100.1")
        sh(name, "ip", "-6", "route", "add", "default", "via", "2001:db8:100::1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "gw.yaml"
    path.write_text(SPEC)
    return path


def applied(tmp_path: Path, spec: Path, netns: str) -> None:
    done = ztplan("apply", str(spec), "--netns", netns, "--auto-approve", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout


def test_on_a_docker_host_the_shorthand_forwards_and_blocks_inbound(
    tmp_path: Path, spec: Path, gateway: str
) -> None:
    for argv in DOCKER:
        sh(gateway, *argv)
    plan = ztplan("plan", str(spec), "--netns", gateway, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    # now -> after for each flow: nothing forwards now (forwarding off, Docker's DROP policy)
    assert "(now -> after this plan):" in plan.stdout
    assert "  FAIL -> ok    member to Internet v4 (outbound ipv4 tcp/443): reached " in plan.stdout
    applied(tmp_path, spec, gateway)
    done = ztplan("verify", str(spec), "--netns", gateway, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert (
        "  ok    member to Internet v4 (outbound ipv4 tcp/443): reached 203.0.113.1 from "
        "198.51.100.7" in lines
    )  # MASQUERADE: the member is seen as the WAN address
    assert any(
        line.startswith("  ok    Internet to member v4 (inbound ipv4 tcp/443 expected blocked)")
        for line in lines
    )
    assert any("member to Internet v6" in line and "from 2001:db8:6::" in line for line in lines)
    # Docker restarts and puts its jumps first again: no drift, and it still forwards.
    sh(gateway, "iptables", "-D", "FORWARD", "-j", "DOCKER-USER")
    sh(gateway, "iptables", "-D", "FORWARD", "-j", "DOCKER-FORWARD")
    sh(gateway, "iptables", "-I", "FORWARD", "1", "-j", "DOCKER-FORWARD")
    sh(gateway, "iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
    drift = ztplan("drift", str(spec), "--netns", gateway, cwd=tmp_path)
    assert (drift.returncode, drift.stdout) == (0, ""), drift.stdout + drift.stderr


@pytest.mark.parametrize(
    ("breakage", "culprit"),
    [
        (
            [["nft", "add", "table", "inet", "filter"],
             ["nft", "add", "chain", "inet", "filter", "forward",
              "{ type filter hook forward priority 0; policy drop; }"]],
            "nftables table inet filter chain forward: policy drop",
        ),
        ([["iptables-legacy", "-P", "FORWARD", "DROP"]], "iptables-legacy"),
        ([["iptables", "-I", "FORWARD", "1", "-s", "10.6.4.0/22", "-j", "DROP"]],
         "-s 10.6.4.0/22 -j DROP"),
    ],
    ids=["native-nft-table", "iptables-legacy", "foreign-drop-first"],
)  # fmt: skip
def test_what_ztplan_does_not_own_breaks_the_path_and_is_named(
    tmp_path: Path, spec: Path, gateway: str, breakage: list[list[str]], culprit: str
) -> None:
    applied(tmp_path, spec, gateway)
    assert ztplan("verify", str(spec), "--netns", gateway, cwd=tmp_path).returncode == 0
    for argv in breakage:
        sh(gateway, *argv)
    done = ztplan("verify", str(spec), "--netns", gateway, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    failing = [line for line in done.stdout.splitlines() if line.startswith("  FAIL")]
    assert any("member to Internet v4" in line and culprit in line for line in failing), failing
    drift = ztplan("drift", str(spec), "--netns", gateway, cwd=tmp_path)
    assert drift.returncode == 2, drift.stdout + drift.stderr
    assert any(
        line.startswith("drift: gw: flow member to Internet v4") and culprit in line
        for line in drift.stdout.splitlines()
    ), drift.stdout


def listen(netns: str, port: int) -> subprocess.Popen[bytes]:
    """A TCP listener in the gateway's namespace (sshd's stand-in)."""
    code = (
        "import socket,time;s=socket.socket();"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        f"s.bind(('0.0.0.0',{port}));s.listen(8);time.sleep(300)"
    )
    child = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", code])
    for _ in range(100):
        if f":{port:04X} " in sh(netns, "cat", "/proc/net/tcp"):
            return child
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the listener did not start")


def test_an_apply_that_cuts_ssh_is_refused_with_nothing_changed(
    tmp_path: Path, gateway: str
) -> None:
    ssh = listen(gateway, 22)
    try:
        spec = tmp_path / "lock.yaml"
        spec.write_text(SPEC + "firewall:\n  ipv4:\n    filter:\n      policy: {INPUT: DROP}\n")
        before = full_dump(gateway)
        done = ztplan("apply", str(spec), "--netns", gateway, "--auto-approve", cwd=tmp_path)
        assert done.returncode == 1
        assert (
            done.stderr.strip()
            .splitlines()[-1]
            .startswith(
                "Error: this apply would cut tcp/22 (ipv4) from the WAN side, reachable now "
                "(iptables ipv4 filter chain INPUT: policy DROP); nothing was applied"
            )
        )
        assert "  ok   -> FAIL  management tcp/22 v4" in done.stdout
        assert full_dump(gateway) == before
        assert sh(gateway, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
        # Allowing SSH in the same spec makes it acceptable.
        spec.write_text(
            SPEC + "firewall:\n  ipv4:\n    filter:\n      policy: {INPUT: DROP}\n"
            "      INPUT: ['-p tcp --dport 22 -j ACCEPT', "
            "'-m state --state RELATED,ESTABLISHED -j ACCEPT']\n"
        )
        ok = ztplan("apply", str(spec), "--netns", gateway, "--auto-approve", cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
    finally:
        ssh.kill()
        ssh.wait()


def test_verification_can_be_skipped_and_says_so_when_it_cannot_run(
    tmp_path: Path, spec: Path, gateway: str
) -> None:
    plan = ztplan("plan", str(spec), "--netns", gateway, "--no-verify", cwd=tmp_path)
    assert plan.returncode == 0 and "Verification" not in plan.stdout
    sh(gateway, "ip", "link", "set", "zt0", "name", "wg0")  # no ZeroTier interface any more
    plan = ztplan("plan", str(spec), "--netns", gateway, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.count("Verification skipped: ") == 1


def test_no_twin_is_left_behind_a_killed_verify(tmp_path: Path, spec: Path, gateway: str) -> None:
    applied(tmp_path, spec, gateway)
    env = {**os.environ, "ZTPLAN_STATE_DIR": str(tmp_path / "state")}
    child = subprocess.Popen(
        [*ZTPLAN, "verify", str(spec), "--netns", gateway], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    for _ in range(400):  # until its twin exists
        if any(f"ztplan-twin-{child.pid}-" in n for n in os.listdir("/run/netns")):
            break
        time.sleep(0.01)
    else:
        child.kill()
        pytest.skip("the verify ended before its twin was seen")
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert any(f"ztplan-twin-{child.pid}-" in n for n in os.listdir("/run/netns"))
    assert ztplan("verify", str(spec), "--netns", gateway, cwd=tmp_path).returncode == 0
    assert not any(f"ztplan-twin-{child.pid}-" in n for n in os.listdir("/run/netns"))
