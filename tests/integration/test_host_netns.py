"""ztplan.host.LocalHost in a network namespace, against the real kernel: /proc/sys read
and written through one thread's setns(2) (`inside_netns`), interface addresses from
`ip -json address` (the same answer pyroute2 gave)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.conftest import needs_netns, sh
from ztplan.host import LocalHost, inside_netns

pytestmark = [pytest.mark.netns, needs_netns]

RP_FILTER = "/proc/sys/net/ipv4/conf/all/rp_filter"


def _own_netns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _other(value: str) -> str:
    """An rp_filter value that is not `value` (0, 1 and 2 are valid)."""
    return "2" if value.strip() != "2" else "1"


def test_read_proc_sees_the_namespace_and_the_thread_comes_back(netns: str) -> None:
    host_value = Path(RP_FILTER).read_text()
    sh(netns, "sysctl", "-qw", f"net.ipv4.conf.all.rp_filter={_other(host_value)}")
    before = _own_netns()
    assert LocalHost(netns).read_proc(RP_FILTER).strip() == _other(host_value)
    assert _own_netns() == before
    assert Path(RP_FILTER).read_text() == host_value


def test_write_proc_writes_the_namespace_only(netns: str) -> None:
    host_value = Path(RP_FILTER).read_text()
    LocalHost(netns).write_proc(RP_FILTER, _other(host_value) + "\n")
    assert sh(netns, "cat", RP_FILTER).strip() == _other(host_value)
    assert Path(RP_FILTER).read_text() == host_value


def test_a_failing_read_leaves_the_thread_at_home(netns: str) -> None:
    before = _own_netns()
    with pytest.raises(FileNotFoundError):
        LocalHost(netns).read_proc("/proc/sys/net/ipv4/conf/no-such-link/rp_filter")
    assert _own_netns() == before


def test_only_the_calling_thread_enters(netns: str) -> None:
    home = _own_netns()
    seen: list[int] = []
    entered, looked = threading.Event(), threading.Event()

    def other() -> None:
        entered.wait(10)
        seen.append(_own_netns())
        looked.set()

    thread = threading.Thread(target=other)
    thread.start()
    with inside_netns(netns):
        inside = _own_netns()
        entered.set()
        looked.wait(10)
    thread.join(10)
    assert inside != home
    assert seen == [home]
    assert _own_netns() == home


def test_addresses_are_what_pyroute2_reads(netns: str) -> None:
    """IFA_ADDRESS of each address per link, links without one included; on a
    point-to-point address that is the peer, as pyroute2's `get_addr` gave it."""
    from pyroute2 import NetNS

    sh(netns, "ip", "link", "add", "wg9", "type", "veth", "peer", "name", "o9")
    sh(netns, "ip", "addr", "add", "10.9.9.1", "peer", "10.9.9.2/32", "dev", "zt0")
    sh(netns, "ip", "-6", "addr", "add", "2001:db8:6::1/64", "dev", "zt0", "nodad")
    expected: dict[str, list[str]] = {}
    with NetNS(netns) as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for name in names.values():
            expected.setdefault(str(name), [])
        for addr in ipr.get_addr():
            expected[str(names[addr["index"]])].append(str(addr.get_attr("IFA_ADDRESS")))
    found = LocalHost(netns).addresses()
    assert found == expected
    assert "10.9.9.2" in found["zt0"] and found["wg9"] == []
