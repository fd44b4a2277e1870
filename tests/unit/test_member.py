"""The member provider against a fake service API (httpx.MockTransport) and a replaying host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from ztplan.api import ApiClient
from ztplan.diff import diff_resources
from ztplan.errors import ControllerError, ZtplanError
from ztplan.model import Action, Change, Snapshot
from ztplan.providers.base import Provider
from ztplan.providers.member import Member, flag_address, member_client
from ztplan.spec import Spec

from .fake_host import ReplayHost

TOKEN = "unit-token-do-not-print"
A = "8056c2e21c000001"
B = "8056c2e21c000002"
C = "311cd7d88b01b737"
ALL_RP = "/proc/sys/net/ipv4/conf/all/rp_filter"


def dev_rp(nwid: str) -> str:
    return f"/proc/sys/net/ipv4/conf/zt{nwid[-8:]}/rp_filter"


class FakeService:
    """zerotier-one's `/network` API as CONTROLLER-API.md §3 describes it: POST joins."""

    def __init__(self, **joined: dict[str, bool]) -> None:
        self.joined = {
            nwid: {"allowManaged": True, "allowGlobal": False, "allowDefault": False}
            | {"allowDNS": False}
            | flags
            for nwid, flags in joined.items()
        }
        self.requests: list[tuple[str, str, Any]] = []
        self.ignored: set[str] = set()
        """Flags a POST answers 200 to but does not keep (the re-read must notice)."""

    def view(self, nwid: str) -> dict[str, Any]:
        return {"nwid": nwid, "id": nwid, "portDeviceName": f"zt{nwid[-8:]}", "status": "OK"} | (
            self.joined[nwid]
        )

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, request.url.path, body))
        if request.headers.get("X-ZT1-Auth") != TOKEN:
            return httpx.Response(401, json={})
        path = request.url.path
        if path == "/network" and request.method == "GET":
            return httpx.Response(200, json=[self.view(n) for n in sorted(self.joined)])
        nwid = path.removeprefix("/network/")
        if request.method == "GET":
            if nwid not in self.joined:
                return httpx.Response(404, json={})
            return httpx.Response(200, json=self.view(nwid))
        state = self.joined.setdefault(nwid, {"allowManaged": True})  # POST joins!
        for key, value in (body or {}).items():
            if isinstance(value, bool) and key not in self.ignored:
                state[key] = value
        return httpx.Response(200, json=self.view(nwid))

    def posts(self) -> list[tuple[str, Any]]:
        return [(path, body) for method, path, body in self.requests if method == "POST"]


def api_for(service: FakeService, token: str = TOKEN) -> ApiClient:
    client = httpx.Client(transport=httpx.MockTransport(service.handler))
    return ApiClient(
        base_url="http://127.0.0.1:9993",
        headers={"X-ZT1-Auth": token},
        client=client,
        what="member service",
        sleep=lambda s: None,
    )


def spec_of(*networks: dict[str, Any], sysctl: dict[str, int | str] | None = None) -> Spec:
    return Spec.model_validate(
        {
            "version": 1,
            "target": {"name": "laptop"},
            "member": {"networks": list(networks)},
            "sysctl": sysctl or {},
        }
    )


def member_of(
    service: FakeService, spec: Spec, platform: str = "linux", token: str = TOKEN
) -> Member:
    assert spec.member is not None
    return Member(api_for(service, token), [n.id for n in spec.member.networks], platform)


def host(all_rp: str = "2\n", dev: str | None = None, nwid: str = A) -> ReplayHost:
    files = {ALL_RP: all_rp} | ({dev_rp(nwid): dev} if dev is not None else {})
    return ReplayHost(files=files)


def plan(member: Member, spec: Spec, on: ReplayHost) -> tuple[list[Change], Snapshot]:
    snapshot = member.read(on)
    changes, unmanaged = diff_resources(member.name, member.desired(spec), snapshot.resources)
    assert unmanaged == []
    return changes, snapshot


# --- desired, read, diff --------------------------------------------------------------------


def test_the_class_keeps_the_provider_contract() -> None:
    service = FakeService(**{A: {}})
    assert isinstance(member_of(service, spec_of({"id": A})), Provider)
    assert Member.name == "member"


def test_desired_holds_only_the_flags_the_spec_sets() -> None:
    spec = spec_of({"id": A, "allow_default": True, "allow_dns": False}, {"id": B})
    desired = member_of(FakeService(), spec).desired(spec)
    assert {a: (r.value, r.owned) for a, r in desired.items()} == {
        'member.network["8056c2e21c000001"].allow_default': (True, True),
        'member.network["8056c2e21c000001"].allow_dns': (False, True),
    }


def test_manages_only_a_member_section_with_networks() -> None:
    service = FakeService()
    assert member_of(service, spec_of({"id": A})).manages(spec_of({"id": A}))
    assert not member_of(service, spec_of()).manages(spec_of())


def test_read_gives_all_four_flags_as_foreign_booleans_and_keeps_the_objects() -> None:
    service = FakeService(**{A: {"allowDefault": True}, C: {}})
    snapshot = member_of(service, spec_of({"id": A})).read(host())
    assert {a: (r.value, r.owned) for a, r in snapshot.resources.items()} == {
        flag_address(A, "allow_default"): (True, False),
        flag_address(A, "allow_managed"): (True, False),
        flag_address(A, "allow_global"): (False, False),
        flag_address(A, "allow_dns"): (False, False),
    }
    assert snapshot.raw["networks"][A]["portDeviceName"] == "zt1c000001"
    assert set(snapshot.raw["joined"]) == {A, C}
    assert snapshot.raw["rp_filter"] == {"all": 2, "zt1c000001": None}
    assert [(m, p) for m, p, _ in service.requests] == [
        ("GET", "/network"),
        ("GET", f"/network/{A}"),
    ]


def test_read_twice_gives_the_same_digest() -> None:
    service = FakeService(**{A: {}})
    member = member_of(service, spec_of({"id": A}))
    assert member.read(host()).digest == member.read(host()).digest


def test_diff_updates_only_the_flags_that_differ() -> None:
    service = FakeService(**{A: {"allowDNS": True}})
    spec = spec_of({"id": A, "allow_default": True, "allow_dns": True})
    changes, _ = plan(member_of(service, spec), spec, host())
    assert [(c.address, c.action, c.before, c.after) for c in changes] == [
        (flag_address(A, "allow_default"), Action.UPDATE, False, True)
    ]


def test_rp_filter_is_not_read_off_linux() -> None:
    service = FakeService(**{A: {}})
    on = ReplayHost()
    snapshot = member_of(service, spec_of({"id": A}), platform="darwin").read(on)
    assert snapshot.raw["rp_filter"] == {}


# --- apply and rollback ---------------------------------------------------------------------


def test_apply_posts_only_the_changed_flags_as_booleans_one_post_per_network() -> None:
    service = FakeService(**{A: {}, B: {"allowGlobal": True}})
    spec = spec_of(
        {"id": A, "allow_default": True, "allow_managed": True, "allow_dns": True},
        {"id": B, "allow_global": False},
    )
    member = member_of(service, spec)
    changes, _ = plan(member, spec, host())
    member.apply(host(), changes, Snapshot.of({}))
    assert service.posts() == [
        (f"/network/{A}", {"allowDefault": True, "allowDNS": True}),
        (f"/network/{B}", {"allowGlobal": False}),
    ]
    raw = [r for r in service.requests if r[0] == "POST"]
    assert all(type(v) is bool for _, _, body in raw for v in body.values())
    assert plan(member, spec, host())[0] == []


def test_apply_gets_before_it_posts_and_re_reads_after() -> None:
    service = FakeService(**{A: {}})
    spec = spec_of({"id": A, "allow_default": True})
    member = member_of(service, spec)
    changes, _ = plan(member, spec, host())
    service.requests.clear()
    member.apply(host(), changes, Snapshot.of({}))
    assert [(m, p) for m, p, _ in service.requests] == [
        ("GET", f"/network/{A}"),
        ("POST", f"/network/{A}"),
        ("GET", f"/network/{A}"),
    ]


def test_a_network_not_joined_is_a_clear_error_at_read_and_nothing_is_posted() -> None:
    service = FakeService(**{C: {}})
    spec = spec_of({"id": A, "allow_default": True})
    with pytest.raises(ControllerError) as caught:
        member_of(service, spec).read(host())
    assert str(caught.value) == (
        f"member service: this node has not joined network {A}; join it first with "
        f"`zerotier-cli join {A}` — ztplan does not join networks"
    )
    assert caught.value.status == 404
    assert service.posts() == []
    assert A not in service.joined


def test_apply_to_a_network_left_since_the_plan_posts_nothing() -> None:
    service = FakeService(**{A: {}})
    spec = spec_of({"id": A, "allow_default": True})
    member = member_of(service, spec)
    changes, _ = plan(member, spec, host())
    del service.joined[A]  # `zerotier-cli leave` between plan and apply
    with pytest.raises(ControllerError, match="has not joined network 8056c2e21c000001"):
        member.apply(host(), changes, Snapshot.of({}))
    assert service.posts() == []
    assert A not in service.joined


def test_a_flag_the_service_did_not_keep_is_an_error() -> None:
    service = FakeService(**{A: {}})
    service.ignored = {"allowDefault"}
    spec = spec_of({"id": A, "allow_default": True, "allow_dns": True})
    member = member_of(service, spec)
    changes, _ = plan(member, spec, host())
    with pytest.raises(ControllerError) as caught:
        member.apply(host(), changes, Snapshot.of({}))
    assert str(caught.value) == (
        f"member service: network {A} did not keep allow_default=true "
        "(the service answered 200 but ignored them)"
    )


def test_apply_refuses_a_value_that_is_not_a_boolean() -> None:
    service = FakeService(**{A: {}})
    member = member_of(service, spec_of({"id": A}))
    change = Change(
        address=flag_address(A, "allow_default"),
        provider="member",
        action=Action.UPDATE,
        before=False,
        after="true",
    )
    with pytest.raises(ZtplanError, match="cannot apply"):
        member.apply(host(), [change], Snapshot.of({}))
    assert service.requests == []


def test_rollback_posts_the_old_values_of_what_changed() -> None:
    service = FakeService(**{A: {}, B: {}})
    spec = spec_of({"id": A, "allow_default": True, "allow_dns": True}, {"id": B})
    member = member_of(service, spec)
    changes, before = plan(member, spec, host())
    member.apply(host(), changes, before)
    service.requests.clear()
    member.rollback(host(), before, changes)
    assert service.posts() == [(f"/network/{A}", {"allowDefault": False, "allowDNS": False})]
    assert member.read(host()).digest == before.digest


def test_rollback_never_posts_to_a_network_left_since() -> None:
    service = FakeService(**{A: {}})
    spec = spec_of({"id": A, "allow_default": True})
    member = member_of(service, spec)
    changes, before = plan(member, spec, host())
    member.apply(host(), changes, before)
    del service.joined[A]
    service.requests.clear()
    member.rollback(host(), before, changes)
    assert service.posts() == []
    assert A not in service.joined


# --- checks ---------------------------------------------------------------------------------


def findings_of(
    service: FakeService, spec: Spec, on: ReplayHost, platform: str = "linux"
) -> list[tuple[str, str | None, str]]:
    member = member_of(service, spec, platform)
    return [(f.severity, f.address, f.message) for f in member.check(spec, member.read(on))]


def test_no_findings_for_one_default_route_and_loose_rp_filter() -> None:
    service = FakeService(**{A: {}, C: {"allowDefault": False}})
    assert findings_of(service, spec_of({"id": A, "allow_default": True}), host("2\n")) == []


def test_default_route_on_two_networks_is_an_error_counting_live_networks_not_in_the_spec() -> None:
    service = FakeService(**{A: {}, C: {"allowDefault": True}})
    found = findings_of(service, spec_of({"id": A, "allow_default": True}), host())
    assert found == [
        (
            "error",
            flag_address(A, "allow_default"),
            f"allowDefault would be on for 2 networks ({C} (not in the spec), {A}): a member "
            "can send its default route through one gateway only; keep allow_default: true on "
            "one and set allow_default: false on the others",
        )
    ]


def test_default_route_on_two_spec_networks_is_an_error() -> None:
    service = FakeService(**{A: {}, B: {"allowDefault": True}})
    spec = spec_of({"id": A, "allow_default": True}, {"id": B})
    assert [f[0] for f in findings_of(service, spec, host())] == ["error"]
    spec = spec_of({"id": A, "allow_default": True}, {"id": B, "allow_default": False})
    assert findings_of(service, spec, host()) == []


def test_turning_default_off_on_a_spec_network_clears_the_error() -> None:
    service = FakeService(**{A: {"allowDefault": True}, B: {"allowDefault": True}})
    spec = spec_of({"id": B, "allow_default": False})
    assert findings_of(service, spec, host()) == []


RP_WARNING = (
    f"network {A}: strict reverse-path filtering (rp_filter 1) on this Linux member drops "
    "packets that arrive on the physical interface from addresses now routed through "
    "ZeroTier; set sysctl net.ipv4.conf.all.rp_filter: 2 (loose)"
)


@pytest.mark.parametrize(
    ("all_rp", "dev", "warned"),
    [
        ("1\n", None, True),  # strict everywhere
        ("0\n", "1\n", True),  # the ZeroTier interface's own value is strict: max(0, 1) = 1
        ("1\n", "2\n", False),  # max(1, 2) = 2: loose
        ("2\n", "1\n", False),
        ("0\n", "0\n", False),
    ],
)
def test_strict_rp_filter_on_a_linux_member_with_a_default_route_warns(
    all_rp: str, dev: str | None, warned: bool
) -> None:
    service = FakeService(**{A: {}})
    found = findings_of(service, spec_of({"id": A, "allow_default": True}), host(all_rp, dev))
    assert found == ([("warning", flag_address(A, "allow_default"), RP_WARNING)] if warned else [])


def test_rp_filter_is_no_concern_without_a_default_route() -> None:
    service = FakeService(**{A: {}})
    assert findings_of(service, spec_of({"id": A, "allow_dns": True}), host("1\n")) == []


def test_the_specs_own_loose_rp_filter_silences_the_warning() -> None:
    service = FakeService(**{A: {}})
    spec = spec_of({"id": A, "allow_default": True}, sysctl={"net.ipv4.conf.all.rp_filter": 2})
    assert findings_of(service, spec, host("1\n", "1\n")) == []
    # ... and the spec setting it strict makes the warning fire on a loose host.
    spec = spec_of({"id": A, "allow_default": True}, sysctl={"net.ipv4.conf.all.rp_filter": "1"})
    assert [f[2] for f in findings_of(service, spec, host("2\n"))] == [RP_WARNING]


def test_the_example_member_spec_passes_the_rp_filter_check() -> None:
    from ztplan.spec import load_spec

    example = Path(__file__).resolve().parents[2] / "specs" / "member.yaml"
    if not example.exists():
        pytest.skip("specs/member.yaml is not in this checkout")
    spec = load_spec(str(example))
    assert spec.member is not None
    nwid = spec.member.networks[0].id
    service = FakeService(**{nwid: {}})
    assert findings_of(service, spec, host("1\n", "1\n", nwid)) == []


def test_default_route_on_freebsd_is_an_error() -> None:
    service = FakeService(**{A: {}})
    found = findings_of(
        service, spec_of({"id": A, "allow_default": True}), ReplayHost(), "freebsd14"
    )
    assert found == [
        (
            "error",
            flag_address(A, "allow_default"),
            f"network {A}: ZeroTier cannot override the default route on FreeBSD (allowDefault "
            "is unsupported there); set allow_default: false and route through the gateway "
            "another way",
        )
    ]
    assert findings_of(service, spec_of({"id": A, "allow_dns": True}), host(), "freebsd14") == []


def test_default_route_without_managed_routes_warns() -> None:
    service = FakeService(**{A: {"allowManaged": False}})
    found = findings_of(service, spec_of({"id": A, "allow_default": True}), host())
    assert found == [
        (
            "warning",
            flag_address(A, "allow_default"),
            f"network {A}: allowDefault without allowManaged installs no route at all; "
            "set allow_managed: true",
        )
    ]
    spec = spec_of({"id": A, "allow_default": True, "allow_managed": True})
    assert findings_of(service, spec, host()) == []


# --- the client -----------------------------------------------------------------------------


def test_member_client_sends_the_token_file_in_x_zt1_auth(tmp_path: Path) -> None:
    token_file = tmp_path / "authtoken.secret"
    token_file.write_text(TOKEN + "\n")
    spec = Spec.model_validate(
        {
            "version": 1,
            "target": {"name": "laptop"},
            "member": {"service_url": "http://10.0.0.1:9993", "token_file": str(token_file)},
        }
    )
    assert spec.member is not None
    service = FakeService(**{A: {}})
    api = member_client(spec.member, httpx.Client(transport=httpx.MockTransport(service.handler)))
    assert (api.base_url, api.headers, api.what) == (
        "http://10.0.0.1:9993",
        {"X-ZT1-Auth": TOKEN},
        "member service",
    )
    assert api.get(f"/network/{A}")["nwid"] == A


def test_member_client_prefers_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZT_MEMBER_TOKEN", "from-env")
    spec = Spec.model_validate(
        {"version": 1, "target": {"name": "x"}, "member": {"token_env": "ZT_MEMBER_TOKEN"}}
    )
    assert spec.member is not None
    api = member_client(spec.member, httpx.Client())
    assert api.headers == {"X-ZT1-Auth": "from-env"}
    assert api.base_url == "http://127.0.0.1:9993"


def test_member_client_reads_zerotier_ones_token_file_by_default() -> None:
    if Path("/var/lib/zerotier-one/authtoken.secret").exists():
        pytest.skip("this machine runs zerotier-one")
    spec = Spec.model_validate({"version": 1, "target": {"name": "x"}, "member": {}})
    assert spec.member is not None
    with pytest.raises(ZtplanError, match="/var/lib/zerotier-one/authtoken.secret"):
        member_client(spec.member, httpx.Client())


def test_a_refused_token_is_a_401_sentence_without_the_token() -> None:
    service = FakeService(**{A: {}})
    member = member_of(service, spec_of({"id": A}), token="wrong-secret-value")
    with pytest.raises(ControllerError) as caught:
        member.read(host())
    assert caught.value.status == 401
    assert "401" in str(caught.value) and "token was refused" in str(caught.value)
    assert "wrong-secret-value" not in str(caught.value)
    assert TOKEN not in str(caught.value)
