"""The member provider through real HTTP against the emulated zerotier-one service API."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast

import httpx
import pytest

from ztplan.diff import diff_resources
from ztplan.errors import ControllerError
from ztplan.host import CommandResult, Host
from ztplan.model import Action, Change
from ztplan.providers.member import Member, flag_address, member_client
from ztplan.spec import Spec, parse_spec
from ztplan.testing.emulator import ControllerEmulator

TOKEN = "member-emulator-token-0123"
NWID = "8056c2e21c000001"
OTHER = "311cd7d88b01b737"
ENV = "ZTPLAN_TEST_MEMBER_TOKEN"


class FakeHost:
    """No root needed: `read_proc` answers canned rp_filter values; a command or a write
    fails the test."""

    netns: str | None = None

    def __init__(self, files: dict[str, str] | None = None) -> None:
        self.files = files or {"/proc/sys/net/ipv4/conf/all/rp_filter": "2\n"}

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        raise AssertionError(f"the member provider ran {argv}")

    def read_proc(self, path: str) -> str:
        if path not in self.files:
            raise FileNotFoundError(2, "No such file or directory", path)
        return self.files[path]

    def write_proc(self, path: str, value: str) -> None:
        raise AssertionError(f"the member provider wrote {path}")


def fake_host(files: dict[str, str] | None = None) -> Host:
    """Typed as a Host: the provider needs only `read_proc`, whatever else Host grows."""
    return cast("Host", FakeHost(files))


@pytest.fixture
def emu() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emulator:
        yield emulator


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0)) as client:
        yield client


def spec_for(emu: ControllerEmulator, networks: str, sysctl: str = "") -> Spec:
    text = (
        f"version: 1\ntarget: {{name: laptop}}\nmember:\n  service_url: {emu.url}\n"
        f"  token_env: {ENV}\n  networks: {networks}\n{sysctl}"
    )
    return parse_spec(text, "member.yaml")


def provider(
    spec: Spec, http: httpx.Client, monkeypatch: pytest.MonkeyPatch, token: str = TOKEN
) -> tuple[Member, list[float]]:
    """The provider as the CLI would build it, with the retry sleeps recorded, not slept."""
    assert spec.member is not None
    monkeypatch.setenv(ENV, token)
    api = member_client(spec.member, http)
    sleeps: list[float] = []
    api.sleep = sleeps.append
    return Member(api, [n.id for n in spec.member.networks], platform="linux"), sleeps


def plan(member: Member, spec: Spec) -> list[Change]:
    return diff_resources(member.name, member.desired(spec), member.read(fake_host()).resources)[0]


def posts(emu: ControllerEmulator) -> list[tuple[str, Any]]:
    return [(path, body) for method, path, body in emu.request_log if method == "POST"]


def test_plan_apply_then_a_second_plan_shows_no_change(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true, allow_dns: true}}]")
    member, _ = provider(spec, http, monkeypatch)
    changes = plan(member, spec)
    assert [(c.address, c.before, c.after) for c in changes] == [
        (flag_address(NWID, "allow_default"), False, True),
        (flag_address(NWID, "allow_dns"), False, True),
    ]
    member.apply(fake_host(), changes, member.read(fake_host()))
    assert posts(emu) == [(f"/network/{NWID}", {"allowDefault": True, "allowDNS": True})]
    assert plan(member, spec) == []


def test_rollback_puts_back_the_flags_read_before(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID, allowGlobal=True)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true, allow_global: false}}]")
    member, _ = provider(spec, http, monkeypatch)
    before = member.read(fake_host())
    planned = plan(member, spec)
    member.apply(fake_host(), planned, before)
    assert member.read(fake_host()).digest != before.digest
    member.rollback(fake_host(), before, planned)
    assert member.read(fake_host()).digest == before.digest
    assert posts(emu)[-1] == (f"/network/{NWID}", {"allowDefault": False, "allowGlobal": True})


def test_a_network_not_joined_is_an_error_and_nothing_is_posted(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(OTHER)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, _ = provider(spec, http, monkeypatch)
    with pytest.raises(ControllerError) as caught:
        member.read(fake_host())
    assert str(caught.value) == (
        f"member service: this node has not joined network {NWID}; join it first with "
        f"`zerotier-cli join {NWID}` — ztplan does not join networks"
    )
    change = Change(
        address=flag_address(NWID, "allow_default"),
        provider="member",
        action=Action.UPDATE,
        before=False,
        after=True,
    )
    with pytest.raises(ControllerError, match="has not joined"):
        member.apply(fake_host(), [change], member.read(fake_host()))
    assert posts(emu) == []
    assert [
        n["nwid"] for n in http.get(emu.url + "/network", headers={"X-ZT1-Auth": TOKEN}).json()
    ] == [OTHER]


def test_5xx_and_429_are_retried_to_success(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, sleeps = provider(spec, http, monkeypatch)
    emu.faults.status_5xx = 2
    emu.faults.rate_limit_429 = 1
    changes = plan(member, spec)
    assert len(sleeps) == 3
    emu.faults.status_5xx = 2
    emu.faults.rate_limit_429 = 1
    member.apply(fake_host(), changes, member.read(fake_host()))
    assert posts(emu) == [(f"/network/{NWID}", {"allowDefault": True})]
    assert plan(member, spec) == []


def test_a_dropped_connection_is_retried(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, sleeps = provider(spec, http, monkeypatch)
    emu.faults.drop_connection = 1
    changes = plan(member, spec)
    emu.faults.drop_connection = 1
    member.apply(fake_host(), changes, member.read(fake_host()))
    assert len(sleeps) == 2
    assert plan(member, spec) == []


def test_permanent_500s_are_a_clear_error_naming_the_attempts(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, sleeps = provider(spec, http, monkeypatch)
    emu.faults.status_5xx = 100
    emu.faults.status_5xx_code = 500
    with pytest.raises(ControllerError) as caught:
        member.read(fake_host())
    assert str(caught.value) == f"member service: GET {emu.url}/network answered 500, 4 attempts"
    assert len(sleeps) == 3
    assert posts(emu) == []


def test_a_bad_token_is_a_401_sentence_without_the_token(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, _ = provider(spec, http, monkeypatch, token="not-the-token-xyzzy")
    with pytest.raises(ControllerError) as caught:
        member.read(fake_host())
    assert caught.value.status == 401
    assert "answered 401: the token was refused" in str(caught.value)
    assert "not-the-token-xyzzy" not in str(caught.value)
    assert TOKEN not in str(caught.value)


def test_checks_see_the_live_service_and_the_hosts_rp_filter(
    emu: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu.join(NWID)
    emu.join(OTHER, allowDefault=True)
    spec = spec_for(emu, f"[{{id: {NWID}, allow_default: true}}]")
    member, _ = provider(spec, http, monkeypatch)
    strict = fake_host(
        {
            "/proc/sys/net/ipv4/conf/all/rp_filter": "0\n",
            f"/proc/sys/net/ipv4/conf/zt{NWID[-8:]}/rp_filter": "1\n",
        }
    )
    found = member.check(spec, member.read(strict))
    assert [(f.severity, f.message.split(":")[0]) for f in found] == [
        (
            "error",
            "allowDefault would be on for 2 networks (311cd7d88b01b737 (not in the spec), "
            "8056c2e21c000001)",
        ),
        ("warning", f"network {NWID}"),
    ]
    loose = spec_for(
        emu,
        f"[{{id: {NWID}, allow_default: true}}, {{id: {OTHER}, allow_default: false}}]",
        "sysctl: {net.ipv4.conf.all.rp_filter: 2}\n",
    )
    member, _ = provider(loose, http, monkeypatch)
    assert member.check(loose, member.read(strict)) == []
