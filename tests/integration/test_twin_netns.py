"""The twin against the real kernel: a fake "real gateway" namespace per test, its image
read with read_image, then real packets through a twin of it.

    real gateway:  eth0 198.51.100.7/24 2001:db8:100::7/64  (default routes via .1 / ::1)
                   zt0  10.6.6.2/22 2001:db8:6::1/64, MTU 2800
                   docker0 172.17.0.1/16 (Docker-like cases)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, full_dump, needs_netns, sh
from ztplan.errors import TwinLoadFailed
from ztplan.host import Host, LocalHost
from ztplan.twin import MEMBER, WAN, Flow, FlowKind, FlowResult, read_image, verify
from ztplan.twin.image import NftTable
from ztplan.twin.netns import inside, new_names, remove_stale_twins

pytestmark = [needs_netns, pytest.mark.netns]

SUBNET = "10.6.4.0/22"
PREFIX6 = "2001:db8:6::/64"

NAT_GATEWAY = f"""\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i zt+ -s {SUBNET} -j ACCEPT
-A FORWARD -i eth0 -d {SUBNET} -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s {SUBNET} -d {SUBNET} -j RETURN
-A POSTROUTING -s {SUBNET} -j {{nat}}
COMMIT
"""
SNAT = "SNAT --to-source 198.51.100.7"

ROUTED_V6 = f"""\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i zt+ -s {PREFIX6} -j ACCEPT
-A FORWARD -i eth0 -d {PREFIX6} -m state --state RELATED,ESTABLISHED -j ACCEPT
COMMIT
"""

DOCKER = f"""\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
:ZT-gw1-FORWARD - [0:0]
-A FORWARD -j ZT-gw1-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -o docker0 -j DOCKER
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
-A ZT-gw1-FORWARD -i zt+ -s {SUBNET} -m comment --comment ztplan -j ACCEPT
-A ZT-gw1-FORWARD -i eth0 -d {SUBNET} -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment ztplan -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s {SUBNET} -d {SUBNET} -m comment --comment ztplan -j RETURN
-A POSTROUTING -s {SUBNET} -o eth0 -m comment --comment ztplan -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
"""  # noqa: E501

OUT4 = Flow("outbound v4", FlowKind.OUTBOUND, "ipv4", expected_source="198.51.100.7")
OUT4_UDP = Flow(
    "outbound v4 udp", FlowKind.OUTBOUND, "ipv4", protocol="udp", port=53, expected_source=WAN
)
IN4 = Flow("inbound v4", FlowKind.INBOUND, "ipv4", port=22)
OUT6 = Flow("outbound v6", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER)
IN6 = Flow("inbound v6", FlowKind.INBOUND, "ipv6", port=22)
SSH = Flow("ssh", FlowKind.MANAGEMENT, "ipv4", port=22)
MSS = Flow("mss", FlowKind.MSS, "ipv4")


def _link(ns: str, name: str, peer: str, addresses: list[str], mtu: int = 1500) -> None:
    subprocess.run(
        [
            "ip",
            "-n",
            ns,
            "link",
            "add",
            name,
            "mtu",
            str(mtu),
            "type",
            "veth",
            "peer",
            "name",
            peer,
        ],
        check=True,
    )
    for cidr in addresses:
        extra = ["nodad"] if ":" in cidr else []
        subprocess.run(["ip", "-n", ns, "addr", "add", cidr, "dev", name, *extra], check=True)
    for ifname in (name, peer):
        subprocess.run(["ip", "-n", ns, "link", "set", ifname, "up"], check=True)


@pytest.fixture
def gateway() -> Iterator[str]:
    """A namespace set up like a real gateway (links, addresses, default routes, forwarding),
    with an empty firewall: each test loads its own."""
    name = f"ztplan-t-gw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        _link(name, "eth0", "o0", ["198.51.100.7/24", "2001:db8:100::7/64"])
        _link(name, "zt0", "o1", ["10.6.6.2/22", "2001:db8:6::1/64"], mtu=2800)
        sh(name, "ip", "route", "add", "default", "via", "198.51.100.1")
        sh(name, "ip", "-6", "route", "add", "default", "via", "2001:db8:100::1")
        sh(name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def restore(ns: str, text: str, tool: str = "iptables-restore") -> None:
    sh(ns, tool, input=text)


def by_name(results: list[FlowResult]) -> dict[str, FlowResult]:
    return {r.flow.name: r for r in results}


def assert_ok(results: list[FlowResult]) -> None:
    bad = [f"{r.flow.name}: {r.observed} ({r.culprit})" for r in results if not r.ok]
    assert not bad, bad


@contextlib.contextmanager
def listening(ns: str, port: int) -> Iterator[None]:
    """A TCP listener on the real gateway (sshd's place) while the image is read."""
    with inside(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen()
    try:
        yield
    finally:
        sock.close()


# --- a working gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("nat", [SNAT, "MASQUERADE"])
def test_nat_gateway_outbound_with_its_source_and_inbound_blocked(gateway: str, nat: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=nat))
    restore(gateway, ROUTED_V6, "ip6tables-restore")
    image = read_image(LocalHost(gateway))
    results = by_name(verify(image, [OUT4, OUT4_UDP, IN4, OUT6, IN6]))
    assert_ok(list(results.values()))
    assert results["outbound v4"].observed == "reached 203.0.113.1 from 198.51.100.7"
    assert results["outbound v4 udp"].source == "198.51.100.7"
    assert results["outbound v6"].source == "2001:db8:6::2"  # the member's own, not NATed
    assert not results["inbound v4"].passed and not results["inbound v6"].passed


def test_a_wrong_expected_source_fails(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    image = read_image(LocalHost(gateway))
    flow = Flow("out", FlowKind.OUTBOUND, "ipv4", expected_source="198.51.100.99")
    (result,) = verify(image, [flow])
    assert result.passed and not result.ok
    assert "expected from 198.51.100.99" in result.observed


def test_docker_like_ruleset_works(gateway: str) -> None:
    _link(gateway, "docker0", "vethd", ["172.17.0.1/16"])
    restore(gateway, DOCKER)
    image = read_image(LocalHost(gateway))
    assert image.interface("docker0") is not None
    results = verify(image, [OUT4, OUT4_UDP, IN4])
    assert_ok(results)
    assert results[0].source == "198.51.100.7"  # MASQUERADE: the WAN address


def test_inbound_let_through_names_the_rule(gateway: str) -> None:
    restore(
        gateway,
        NAT_GATEWAY.format(nat=SNAT).replace(
            "-A FORWARD -i zt+",
            f"-A FORWARD -i eth0 -d {SUBNET} -p tcp --dport 22 -j ACCEPT\n-A FORWARD -i zt+",
        ),
    )
    (result,) = verify(read_image(LocalHost(gateway)), [IN4])
    assert result.passed and not result.ok
    assert result.culprit is not None and result.culprit.verdict == "accept"
    assert (
        result.culprit.rule == f"-A FORWARD -d {SUBNET} -i eth0 -p tcp -m tcp --dport 22 -j ACCEPT"
    )


def test_inbound_let_through_by_a_policy_accept(gateway: str) -> None:
    restore(gateway, "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n")
    (result,) = verify(read_image(LocalHost(gateway)), [IN4])
    assert result.passed and not result.ok
    assert str(result.culprit) == "let through by iptables ipv4 filter chain FORWARD: policy ACCEPT"


# --- what breaks a gateway, and who did it ---------------------------------------------------


def test_native_nft_forward_drop_is_named(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    sh(
        gateway,
        "nft",
        "-f",
        "-",
        input="table inet filter {\n"
        "  chain forward { type filter hook forward priority 0; policy drop; }\n"
        "}\n",
    )
    image = read_image(LocalHost(gateway))
    assert [t.label for t in image.native_tables] == ["inet filter"]
    (result,) = verify(image, [OUT4])
    assert not result.ok and not result.passed
    assert result.culprit is not None
    assert (result.culprit.stack, result.culprit.table, result.culprit.chain) == (
        "nftables",
        "inet filter",
        "forward",
    )
    assert result.culprit.policy == "drop"
    assert str(result.culprit) == "nftables table inet filter chain forward: policy drop"
    assert result.seconds < 0.3  # the traced drop ends the wait


def test_iptables_legacy_forward_drop_is_named(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    sh(gateway, "iptables-legacy", "-P", "FORWARD", "DROP")
    image = read_image(LocalHost(gateway))
    assert "ipv4" in image.legacy
    (result,) = verify(image, [OUT4], timeout=0.3)
    assert not result.ok
    assert result.culprit is not None and result.culprit.stack == "iptables-legacy"
    assert (result.culprit.table, result.culprit.chain, result.culprit.policy) == (
        "ipv4 filter",
        "FORWARD",
        "DROP",
    )
    assert str(result.culprit).startswith("iptables-legacy ipv4 filter chain FORWARD: policy DROP")


def test_foreign_drop_first_in_forward_is_named_by_its_text(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    sh(gateway, "iptables", "-I", "FORWARD", "1", "-s", "10.6.4.0/24", "-j", "DROP")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT4])
    assert not result.ok
    assert result.culprit is not None
    assert result.culprit.rule == "-A FORWARD -s 10.6.4.0/24 -j DROP"
    assert (
        str(result.culprit)
        == "iptables ipv4 filter chain FORWARD: rule `-A FORWARD -s 10.6.4.0/24 -j DROP`"
    )


def test_without_trace_a_failure_has_no_culprit_and_waits_the_timeout(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    sh(gateway, "iptables", "-I", "FORWARD", "1", "-j", "DROP")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT4], trace=False, timeout=0.3)
    assert not result.ok and result.culprit is None
    assert result.observed == "no answer in 0.3 s"
    assert result.seconds >= 0.3


def test_forward_policy_drop_without_rules_is_named(gateway: str) -> None:
    restore(gateway, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT4])
    assert result.culprit is not None
    assert str(result.culprit) == "iptables ipv4 filter chain FORWARD: policy DROP"


def test_forwarding_off_is_named_by_its_sysctl(gateway: str) -> None:
    sh(gateway, "sysctl", "-qw", "net.ipv4.ip_forward=0")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT4], timeout=0.3)
    assert not result.ok
    assert result.culprit is not None and result.culprit.stack == "kernel"
    assert "net.ipv4.ip_forward = 0" in str(result.culprit)


def test_ipv6_input_drop_that_cuts_neighbour_discovery_is_named(gateway: str) -> None:
    restore(gateway, ROUTED_V6.replace(":INPUT ACCEPT", ":INPUT DROP"), "ip6tables-restore")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT6], timeout=0.3)
    assert not result.ok
    assert result.culprit is not None
    assert (result.culprit.table, result.culprit.chain, result.culprit.policy) == (
        "ipv6 filter",
        "INPUT",
        "DROP",
    )
    assert "neighbour discovery" in result.culprit.note


@pytest.mark.parametrize("allow", [False, True])
def test_input_policy_drop_cuts_ssh_unless_allowed(gateway: str, allow: bool) -> None:
    rules = "-A INPUT -p tcp --dport 22 -j ACCEPT\n" if allow else ""
    restore(gateway, f"*filter\n:INPUT DROP [0:0]\n{rules}COMMIT\n")
    with listening(gateway, 22):
        image = read_image(LocalHost(gateway))
    (result,) = verify(image, [SSH])
    assert result.ok is allow, result.observed
    if not allow:
        assert result.culprit is not None
        assert str(result.culprit) == "iptables ipv4 filter chain INPUT: policy DROP"
    else:
        assert result.observed == "connected to 198.51.100.7 port 22"


def test_management_port_nothing_listens_on(gateway: str) -> None:
    (result,) = verify(read_image(LocalHost(gateway)), [SSH])
    assert not result.ok
    assert result.culprit is not None
    assert str(result.culprit) == "nothing listens on TCP port 22 on the gateway"


@pytest.mark.parametrize("clamp", [True, False])
def test_mss_is_clamped_to_the_wan_mtu(gateway: str, clamp: bool) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    if clamp:
        sh(
            gateway,
            "iptables",
            "-t",
            "mangle",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--tcp-flags",
            "SYN,RST",
            "SYN",
            "-j",
            "TCPMSS",
            "--clamp-mss-to-pmtu",
        )
    (result,) = verify(read_image(LocalHost(gateway)), [MSS])
    assert result.ok is clamp
    assert result.mss == (1460 if clamp else 2760)  # ZeroTier side MTU 2800 - 40


@pytest.mark.skipif(shutil.which("ipset") is None, reason="needs ipset")
def test_ipsets_are_loaded_into_the_twin(gateway: str) -> None:
    sh(gateway, "ipset", "create", "blocked", "hash:ip")
    sh(gateway, "ipset", "add", "blocked", "10.6.4.1")  # the twin's member
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    sh(
        gateway,
        "iptables",
        "-I",
        "FORWARD",
        "-m",
        "set",
        "--match-set",
        "blocked",
        "src",
        "-j",
        "DROP",
    )
    image = read_image(LocalHost(gateway))
    assert image.ipsets is not None and "blocked" in image.ipsets
    (result,) = verify(image, [OUT4])
    assert not result.ok
    assert result.culprit is not None
    assert result.culprit.rule == "-A FORWARD -m set --match-set blocked src -j DROP"


MEMBERS_IN_WAN = "2001:db8:100:0:1::/80"
NDPPD_CONF = f"proxy eth0 {{\n    rule {MEMBERS_IN_WAN} {{\n        static\n    }}\n}}\n"


def _members_inside_the_wan_prefix(ns: str) -> None:
    """The guide's IPv6: the members' /80 is part of the WAN's /64, so the WAN side looks
    for them on its link and the gateway must answer neighbour discovery for them."""
    sh(ns, "ip", "addr", "del", "2001:db8:6::1/64", "dev", "zt0")
    sh(ns, "ip", "addr", "add", "2001:db8:100:0:1::1/80", "dev", "zt0", "nodad")


@pytest.mark.parametrize("proxied", [False, True])
def test_members_inside_the_wan_prefix_need_the_kernels_ndp_proxy(
    gateway: str, proxied: bool
) -> None:
    _members_inside_the_wan_prefix(gateway)
    if proxied:
        sh(gateway, "sysctl", "-qw", "net.ipv6.conf.eth0.proxy_ndp=1")
        sh(gateway, "ip", "-6", "neigh", "add", "proxy", "2001:db8:100:0:1::2", "dev", "eth0")
    (result,) = verify(read_image(LocalHost(gateway)), [OUT6], timeout=0.3)
    assert result.ok is proxied, result.observed
    if not proxied:
        assert result.culprit is not None
        assert "nothing answers neighbour discovery" in str(result.culprit)


@pytest.mark.skipif(shutil.which("ndppd") is None, reason="needs ndppd")
def test_members_inside_the_wan_prefix_answered_by_a_running_ndppd(
    gateway: str, tmp_path: Path
) -> None:
    _members_inside_the_wan_prefix(gateway)
    conf, pidfile = tmp_path / "ndppd.conf", tmp_path / "ndppd.pid"
    conf.write_text(NDPPD_CONF)
    sh(gateway, "ndppd", "-d", "-c", str(conf), "-p", str(pidfile))
    try:
        deadline = time.monotonic() + 5
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        image = read_image(LocalHost(gateway))
        assert [(p.interface, p.prefix, p.source) for p in image.ndp_proxies] == [
            ("eth0", MEMBERS_IN_WAN, "ndppd")
        ]
        (result,) = verify(image, [OUT6])
        assert result.ok, result.observed
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)


# --- fidelity: what iptables-save cannot show ------------------------------------------------


def test_native_ip_filter_table_is_loaded_from_nft_not_iptables_save(gateway: str) -> None:
    """iptables-nft-save prints this table's set match as a bare `-A FORWARD -j DROP`;
    the twin sees the difference and loads nft's listing instead."""
    sh(
        gateway,
        "nft",
        "-f",
        "-",
        input=(
            "table ip filter {\n"
            "  set blocked { type ipv4_addr; elements = { 10.6.7.7 } }\n"
            "  chain FORWARD { type filter hook forward priority 0; policy accept;\n"
            "    ip saddr @blocked drop; }\n"
            "}\n"
        ),
    )
    assert "-A FORWARD -j DROP" in sh(gateway, "iptables-save")
    image = read_image(LocalHost(gateway))
    (result,) = verify(image, [Flow("out", FlowKind.OUTBOUND, "ipv4")])
    assert result.ok, result.observed  # 10.6.4.1 is not in the set


def test_a_table_that_does_not_load_is_an_error_naming_it(gateway: str) -> None:
    image = read_image(LocalHost(gateway))
    broken = NftTable(
        "inet", "broken", "table inet broken {\n\tchain c {\n\t\tno such thing\n\t}\n}\n", False
    )
    image = dataclasses.replace(image, nft_tables=(*image.nft_tables, broken))
    with pytest.raises(TwinLoadFailed, match="nftables table inet broken"):
        verify(image, [OUT4])


def test_a_restore_that_fails_is_an_error_quoting_iptables(gateway: str) -> None:
    image = read_image(LocalHost(gateway))
    text = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m nosuchmatch -j ACCEPT\nCOMMIT\n"
    image = dataclasses.replace(image, iptables={**image.iptables, "ipv4": text})
    with pytest.raises(TwinLoadFailed) as caught:
        verify(image, [OUT4])
    assert str(caught.value) == (
        "cannot reproduce the ipv4 iptables-nft tables (iptables-nft-restore) in the twin: "
        "Couldn't load match `nosuchmatch':No such file or directory (line 3)"
    )
    assert not _twins()


# --- the twin and only the twin ----------------------------------------------------------------


def test_prepare_changes_the_twin_and_only_the_twin(gateway: str) -> None:
    restore(gateway, NAT_GATEWAY.format(nat=SNAT))
    before = full_dump(gateway)
    image = read_image(LocalHost(gateway))
    seen: list[str | None] = []

    def prepare(host: Host) -> None:
        seen.append(host.netns)
        host.run(["iptables", "-I", "FORWARD", "1", "-j", "DROP"])
        host.write_proc("/proc/sys/net/ipv6/conf/all/forwarding", "0")

    results = verify(image, [OUT4, OUT6], prepare=prepare)
    assert seen and seen[0] != gateway and str(seen[0]).endswith("-gw")
    assert not results[0].ok and results[0].culprit is not None
    assert results[0].culprit.rule == "-A FORWARD -j DROP"
    assert not results[1].ok
    assert full_dump(gateway) == before
    assert sh(gateway, "cat", "/proc/sys/net/ipv6/conf/all/forwarding").strip() == "1"
    assert verify(image, [OUT4])[0].ok  # the image itself still works


def _twins() -> set[str]:
    return {n for n in os.listdir("/run/netns") if n.startswith("ztplan-twin-")}


def test_no_twin_is_left_after_verify(gateway: str) -> None:
    before = _twins()
    verify(read_image(LocalHost(gateway)), [OUT4])
    with pytest.raises(RuntimeError):
        verify(
            read_image(LocalHost(gateway)),
            [OUT4],
            prepare=lambda host: (_ for _ in ()).throw(RuntimeError("x")),
        )
    assert _twins() == before


KILLED = """
import sys, time
from ztplan.host import LocalHost
from ztplan.twin import Flow, FlowKind, read_image, verify

def prepare(host):
    open(sys.argv[2], "w").write(host.netns)
    time.sleep(60)

verify(read_image(LocalHost(sys.argv[1])), [Flow("o", FlowKind.OUTBOUND, "ipv4")], prepare=prepare)
"""


def test_sigkill_leaves_a_twin_that_the_next_call_removes(gateway: str, tmp_path: Path) -> None:
    marker = tmp_path / "twin"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED, gateway, str(marker)], cwd=ROOT, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while not marker.exists() or not marker.read_text():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline, "the child never reached prepare"
            time.sleep(0.02)
        stem = marker.read_text().removesuffix("-gw")
        assert stem.startswith(f"ztplan-twin-{child.pid}-")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stderr is not None:
            child.stderr.close()
    left = {f"{stem}-{role}" for role in ("gw", "mem", "net")}
    assert left <= _twins()  # SIGKILL: nothing could clean up

    # A live process's twin (this one's) and names not made by a twin are never touched.
    mine = new_names().gw
    other = "ztplan-twin-not-a-twin"
    for name in (mine, other):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert verify(read_image(LocalHost(gateway)), [OUT4])  # the next call cleans up
        assert not left & _twins()
        assert {mine, other} <= set(os.listdir("/run/netns"))
        assert remove_stale_twins() == []
    finally:
        for name in (mine, other):
            subprocess.run(["ip", "netns", "del", name], check=False)
