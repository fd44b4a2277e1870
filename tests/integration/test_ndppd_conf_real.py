"""The real ndppd reads what format_ndppd_conf writes, and reads it the way we meant.

Everything runs inside a throwaway network namespace with two veth pairs (eth0/eth1,
eth2/eth3), never in the host's namespace. Skipped unless we are root and ndppd and ip(8)
are installed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztplan.ndppd_conf import (
    MAX_INT,
    NdppdConf,
    Proxy,
    Rule,
    format_ndppd_conf,
    meaning,
    parse_ndppd_conf,
)

NDPPD = shutil.which(
    "ndppd", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
)
IP = shutil.which("ip", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(NDPPD is None, reason="ndppd is not installed"),
    pytest.mark.skipif(IP is None, reason="ip(8) is not installed"),
]

IFACES = ("eth0", "eth1", "eth2", "eth3")


def _ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)


def _alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (it is not our child once daemonized)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    name = f"ztplan-test-ndppdconf-{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.decode().strip()}")
    try:
        _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        _ip("-n", name, "link", "add", "eth2", "type", "veth", "peer", "name", "eth3")
        for iface in IFACES:
            _ip("-n", name, "link", "set", iface, "up")
        yield name
    finally:
        # Anything still running in the namespace was started by these tests.
        assert IP is not None
        pids = subprocess.run(
            [IP, "netns", "pids", name], capture_output=True, text=True, timeout=10
        ).stdout.split()
        for pid in pids:
            _kill(int(pid))
        subprocess.run([IP, "netns", "del", name], capture_output=True, timeout=10)


def _in_namespace(pid: int, netns: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{netns}").st_ino


SAMPLE = NdppdConf(
    proxies=(
        Proxy(
            interface="eth0",
            rules=(
                Rule(prefix="2001:19f0:6001:1a6::/80", method="static"),
                Rule(prefix="2001:DB8:0:01::/64", method="iface", iface="eth1"),
                Rule(prefix="2001:db8:2::/48", method="auto"),
            ),
            router=True,
            timeout=500,
            ttl=30000,
        ),
        Proxy(
            interface="eth2",
            rules=(Rule(prefix="2001:db8:3::1", method="iface", iface="eth3", autovia=False),),
            router=False,
            autowire=False,
            keepalive=True,
            promiscuous=False,
            retries=3,
        ),
    ),
    route_ttl=30000,
    address_ttl=30000,
)


def test_daemon_starts_on_formatted_config(netns: str, tmp_path: Path) -> None:
    conf_file = tmp_path / "ndppd.conf"
    pid_file = tmp_path / "ndppd.pid"
    conf_file.write_text(format_ndppd_conf(SAMPLE))
    assert NDPPD is not None and IP is not None
    pid = None
    try:
        started = subprocess.run(
            [IP, "netns", "exec", netns, NDPPD, "-c", str(conf_file), "-d", "-p", str(pid_file)],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not pid_file.exists():
            time.sleep(0.05)
        assert pid_file.exists(), "ndppd wrote no pid file"
        time.sleep(0.05)  # let the write finish
        pid = int(pid_file.read_text().strip())
        assert _in_namespace(pid, netns)
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "ndppd"
        time.sleep(1)  # interfaces are bound after daemonizing; a bad one ends the process
        assert _alive(pid), "ndppd exited after starting"
    finally:
        if pid is not None:
            _kill(pid)
    assert pid is not None and not _alive(pid)


# --------------------------------------------------- what ndppd itself reads (-vvvv)


def _ndppd_reading(netns: str, text: str) -> tuple[str, list[str], list[str]]:
    """Run ndppd in the foreground with -vvvv until it has set everything up.

    Returns the config tree it dumps (itself ndppd.conf syntax), its rule::create() lines
    and its error lines.
    """
    assert NDPPD is not None and IP is not None
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
        f.write(text)
    lines: list[str] = []
    try:
        proc = subprocess.Popen(
            [IP, "netns", "exec", netns, NDPPD, "-vvvv", "-c", f.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        buffer = b""
        deadline = time.monotonic() + 5
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline and b"fixup_pollfds" not in buffer:
                if not sel.select(timeout=0.1):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buffer += chunk
        proc.terminate()
        proc.communicate(timeout=5)
        lines = buffer.decode().splitlines()
    finally:
        os.unlink(f.name)
    dump = [line.removeprefix("(debug) ") for line in lines if line.startswith("(debug) ")]
    start = end = dump.index("{")
    depth = 1
    while depth:  # no value can contain a brace, so counting them finds the dump's end
        end += 1
        depth += dump[end].count("{") - dump[end].count("}")
    tree = "\n".join(dump[start + 1 : end])
    creates = [line for line in lines if "rule::create()" in line]
    errors = [line for line in lines if line.startswith("(error)") and "Shutting" not in line]
    return tree, creates, errors


# ndppd prints addresses with inet_ntop, which may print the last 32 bits dotted (::0.1.0.0).
_CREATE = re.compile(r"rule::create\(\) if=(\S+), addr=([0-9a-f:./]+)(?:, auto=(yes|no))?$")


def _check_ndppd_agrees(netns: str, conf: NdppdConf) -> None:
    text = format_ndppd_conf(conf)
    tree, creates, errors = _ndppd_reading(netns, text)
    assert not errors, errors
    # ndppd's own parse tree, read back by us, is what we wrote.
    assert parse_ndppd_conf(tree) == parse_ndppd_conf(text) == meaning(conf)
    # It created exactly our rules, in our order, with our methods.
    got = []
    for line in creates:
        match = _CREATE.search(line)
        assert match, line
        proxy, addr, auto = match.groups()
        got.append((proxy, ipaddress.IPv6Network(addr, strict=False), auto))
    kinds = {"auto": "yes", "static": "no", "iface": None}
    want = [
        (p.interface, ipaddress.IPv6Network(r.prefix), kinds[r.method])
        for p in meaning(conf).proxies
        for r in p.rules
    ]
    assert got == want


def test_ndppd_reads_the_sample_as_we_meant(netns: str) -> None:
    _check_ndppd_agrees(netns, SAMPLE)


OPT_BOOL = st.none() | st.booleans()
OPT_INT = st.none() | st.integers(0, MAX_INT)


@st.composite
def _rules(draw: st.DrawFn) -> Rule:
    method = draw(st.sampled_from(["static", "auto", "iface"]))
    length = draw(st.integers(0, 128))
    return Rule(
        prefix=f"{ipaddress.IPv6Address(draw(st.integers(0, 2**128 - 1)))}/{length}",
        method=method,
        iface=draw(st.sampled_from(IFACES)) if method == "iface" else None,
        autovia=draw(OPT_BOOL),
    )


CONFS = st.builds(
    NdppdConf,
    proxies=st.lists(
        st.builds(
            Proxy,
            interface=st.sampled_from(IFACES),
            rules=st.lists(_rules(), max_size=3).map(tuple),
            router=OPT_BOOL,
            timeout=OPT_INT,
            ttl=OPT_INT,
            autowire=OPT_BOOL,
            keepalive=OPT_BOOL,
            promiscuous=OPT_BOOL,
            retries=OPT_INT,
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda p: p.interface,
    ).map(tuple),
    route_ttl=OPT_INT,
    address_ttl=OPT_INT,
)


@given(conf=CONFS)
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
def test_ndppd_reads_generated_configs_as_we_meant(netns: str, conf: NdppdConf) -> None:
    _check_ndppd_agrees(netns, conf)
