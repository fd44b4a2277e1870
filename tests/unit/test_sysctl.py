"""ztplan.providers.sysctl: keys to /proc/sys paths, and read/apply/rollback on a fake host."""

from __future__ import annotations

import pytest

from tests.unit.fake_host import ReplayHost
from ztplan.diff import diff_resources
from ztplan.errors import LiveReadError
from ztplan.model import Action, Change, Resource, Snapshot
from ztplan.providers.sysctl import Sysctl, key_path, normalise_value
from ztplan.spec import parse_spec

FORWARD = "/proc/sys/net/ipv4/ip_forward"
FORWARD6 = "/proc/sys/net/ipv6/conf/all/forwarding"
RMEM = "/proc/sys/net/ipv4/tcp_rmem"


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("net.ipv4.ip_forward", FORWARD),
        ("net.ipv6.conf.all.forwarding", FORWARD6),
        ("net.ipv4.conf.eth0/100.rp_filter", "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
        ("net.ipv4.conf.zt+abc.rp_filter", "/proc/sys/net/ipv4/conf/zt+abc/rp_filter"),
    ],
)
def test_key_path(key: str, path: str) -> None:
    assert key_path(key) == path


@pytest.mark.parametrize(
    "key",
    ["../../etc/x", "net/../../x", "net..ipv4", "net.ipv4.conf./..", ".net.ipv4", "net.ipv4.", ""],
)
def test_key_path_refuses_anything_that_could_leave_proc_sys(key: str) -> None:
    with pytest.raises(ValueError) as caught:
        key_path(key)
    assert str(caught.value) == f"{key!r} is not a sysctl key"


def test_normalise_value_compares_word_by_word() -> None:
    assert normalise_value(1) == "1"
    assert normalise_value("4096\t131072\t6291456\n") == "4096 131072 6291456"
    assert normalise_value("  4096   131072 6291456") == "4096 131072 6291456"


SPEC = parse_spec(
    "version: 1\ntarget: {name: gw1}\nsysctl:\n  net.ipv4.ip_forward: 1\n"
    "  net.ipv6.conf.all.forwarding: 1\n  net.ipv4.tcp_rmem: '4096 131072  6291456'\n",
    "gw.yaml",
)
KEYS = list(SPEC.sysctl)


def test_desired_values_are_normalised_strings() -> None:
    sysctl = Sysctl(keys=KEYS)
    assert sysctl.manages(SPEC) is True
    assert sysctl.desired(SPEC) == {
        'sysctl["net.ipv4.ip_forward"]': Resource('sysctl["net.ipv4.ip_forward"]', "1"),
        'sysctl["net.ipv6.conf.all.forwarding"]': Resource(
            'sysctl["net.ipv6.conf.all.forwarding"]', "1"
        ),
        'sysctl["net.ipv4.tcp_rmem"]': Resource(
            'sysctl["net.ipv4.tcp_rmem"]', "4096 131072 6291456"
        ),
    }


def test_a_spec_without_sysctl_is_not_managed() -> None:
    spec = parse_spec("version: 1\ntarget: {name: gw1}\n", "gw.yaml")
    assert Sysctl().manages(spec) is False


def live_host() -> ReplayHost:
    return ReplayHost(files={FORWARD: "0\n", FORWARD6: "1\n", RMEM: "4096\t131072\t6291456\n"})


def test_read_reads_only_the_spec_keys_as_foreign_resources() -> None:
    host = live_host()
    snapshot = Sysctl(keys=KEYS).read(host)
    assert snapshot.resources == {
        'sysctl["net.ipv4.ip_forward"]': Resource(
            'sysctl["net.ipv4.ip_forward"]', "0", owned=False
        ),
        'sysctl["net.ipv6.conf.all.forwarding"]': Resource(
            'sysctl["net.ipv6.conf.all.forwarding"]', "1", owned=False
        ),
        'sysctl["net.ipv4.tcp_rmem"]': Resource(
            'sysctl["net.ipv4.tcp_rmem"]', "4096 131072 6291456", owned=False
        ),
    }
    assert snapshot.raw == {
        "net.ipv4.ip_forward": "0",
        "net.ipv6.conf.all.forwarding": "1",
        "net.ipv4.tcp_rmem": "4096 131072 6291456",
    }
    assert host.writes == []
    assert host.calls == []


def test_only_the_differing_key_is_a_change() -> None:
    sysctl = Sysctl(keys=KEYS)
    changes, unmanaged = diff_resources(
        "sysctl", sysctl.desired(SPEC), sysctl.read(live_host()).resources
    )
    assert changes == [
        Change(
            address='sysctl["net.ipv4.ip_forward"]',
            provider="sysctl",
            action=Action.UPDATE,
            before="0",
            after="1",
        )
    ]
    assert unmanaged == []


def test_a_missing_key_is_a_live_read_error() -> None:
    with pytest.raises(LiveReadError) as caught:
        Sysctl(keys=["net.ipv4.conf.zt0.rp_filter"]).read(ReplayHost())
    assert str(caught.value) == (
        "sysctl: net.ipv4.conf.zt0.rp_filter: no such key in this kernel or namespace "
        "(check the spelling, and that the interface in the key exists)"
    )


def test_an_unreadable_key_is_a_live_read_error() -> None:
    host = ReplayHost(files={FORWARD: PermissionError(13, "Permission denied")})
    with pytest.raises(LiveReadError) as caught:
        Sysctl(keys=["net.ipv4.ip_forward"]).read(host)
    assert str(caught.value) == "sysctl: net.ipv4.ip_forward: cannot read (Permission denied)"


def test_apply_writes_exactly_the_changed_keys() -> None:
    host = live_host()
    sysctl = Sysctl(keys=KEYS)
    changes = [
        Change(
            address='sysctl["net.ipv4.ip_forward"]',
            provider="sysctl",
            action=Action.UPDATE,
            before="0",
            after="1",
        ),
        Change(
            address='sysctl["net.ipv4.tcp_rmem"]',
            provider="sysctl",
            action=Action.UPDATE,
            before="4096 87380 6291456",
            after="4096 131072 6291456",
        ),
    ]
    sysctl.apply(host, changes, {})
    assert host.writes == [(FORWARD, "1\n"), (RMEM, "4096\t131072\t6291456\n")]


def test_a_failed_write_is_a_live_read_error_naming_key_and_value() -> None:
    host = ReplayHost(files={FORWARD: PermissionError(13, "Read-only file system")})
    change = Change(
        address='sysctl["net.ipv4.ip_forward"]',
        provider="sysctl",
        action=Action.UPDATE,
        before="0",
        after="1",
    )
    with pytest.raises(LiveReadError) as caught:
        Sysctl(keys=["net.ipv4.ip_forward"]).apply(host, [change], Snapshot.of({}))
    assert str(caught.value) == (
        "sysctl: net.ipv4.ip_forward: cannot write '1' (Read-only file system)"
    )


def test_rollback_writes_back_only_what_changed_since_read() -> None:
    host = live_host()
    sysctl = Sysctl(keys=KEYS)
    before = sysctl.read(host)
    host.files[FORWARD] = "1\n"  # what apply did
    host.files[RMEM] = "1 2 3\n"  # someone else, and no change of this apply
    sysctl.rollback(host, before, [change_of("net.ipv4.ip_forward", "0", "1")])
    assert host.writes == [(FORWARD, "0\n")]
    host.files[RMEM] = "4096\t131072\t6291456\n"
    assert sysctl.read(host).resources == before.resources


def test_rollback_with_nothing_changed_writes_nothing() -> None:
    host = live_host()
    sysctl = Sysctl(keys=KEYS)
    sysctl.rollback(host, sysctl.read(host), [change_of(k, "0", "1") for k in KEYS])
    assert host.writes == []


def test_rollback_reports_every_key_it_could_not_restore() -> None:
    host = live_host()
    sysctl = Sysctl(keys=KEYS)
    before = sysctl.read(host)
    host.files[FORWARD] = PermissionError(13, "Permission denied")
    host.files[RMEM] = "1 2 3\n"
    host.files[FORWARD6] = FileNotFoundError(2, "No such file or directory")
    with pytest.raises(LiveReadError) as caught:
        sysctl.rollback(host, before, [change_of(k, "0", "1") for k in KEYS])
    assert str(caught.value) == (
        "sysctl: could not restore net.ipv4.ip_forward (Permission denied), "
        "net.ipv6.conf.all.forwarding (No such file or directory)"
    )
    assert host.writes == [(RMEM, "4096\t131072\t6291456\n")]


def change_of(key: str, before: str, after: str) -> Change:
    return Change(
        address=f'sysctl["{key}"]',
        provider="sysctl",
        action=Action.UPDATE,
        before=before,
        after=after,
    )
