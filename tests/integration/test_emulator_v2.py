"""The emulator's New Central API reproduces what CENTRAL-V2.md documents, and marks what it
assumes where the doc is silent."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from ztplan.testing import central_v2
from ztplan.testing.central_v2 import ASSUMPTIONS, GROUP_ID, ORG_ID
from ztplan.testing.emulator import ControllerEmulator

KEY = "ztsa-test-key-0123456789"
NWID = "8056c2e21c000001"
ON_LINK = {"target": "10.6.4.0/22", "via": None}
DEFAULT = {"target": "0.0.0.0/0", "via": "10.6.6.2"}


@pytest.fixture
def emu() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=KEY) as emulator:
        emulator.add_network(NWID, name="gw")
        yield emulator


@pytest.fixture
def v2(emu: ControllerEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=emu.url + "/api/v2", headers=headers, timeout=5.0) as client:
        yield client


def update(v2: httpx.Client, config: dict[str, Any], **top: Any) -> httpx.Response:
    return v2.post(f"/network/{NWID}", content=json.dumps({"config": config, **top}))


def test_a_network_nests_its_settings_under_config_with_v2_names(v2: httpx.Client) -> None:
    net = v2.get(f"/network/{NWID}").json()
    for stamp in (net.pop("creationTime"), net.pop("lastModified")):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp)
        datetime.fromisoformat(stamp)
    assert net == {
        "id": NWID, "name": "gw", "description": "", "networkGroupId": GROUP_ID, "kind": "v1",
        "config": {
            "private": True, "enableBroadcast": True, "mtu": 2800, "multicastLimit": 32,
            "routes": [], "v4Subnet": "", "v4IpAssignmentPools": [],
            "v4AssignmentMode": {"zt": False}, "v6Subnet": "", "v6IpAssignmentPools": [],
            "v6AssignmentMode": {"6plane": False, "rfc4193": False, "zt": False},
            "dns": {"domain": "", "servers": []},
        },
    }  # fmt: skip


def test_an_update_is_partial_and_answers_the_whole_network(v2: httpx.Client) -> None:
    before = v2.get(f"/network/{NWID}").json()
    answer = update(v2, {"mtu": 1500}, description="exit")
    assert answer.status_code == 200
    after = answer.json()
    assert after["config"]["mtu"] == 1500 and after["description"] == "exit"
    assert {k: v for k, v in after["config"].items() if k != "mtu"} == {
        k: v for k, v in before["config"].items() if k != "mtu"
    }
    assert after["lastModified"] > before["lastModified"]
    again = update(v2, {"mtu": 1500}).json()
    assert again["lastModified"] == after["lastModified"]  # no change, no new timestamp


def test_pools_are_split_by_family_and_each_list_is_replaced_alone(v2: httpx.Client) -> None:
    v6 = {"ipRangeStart": "fd00::1", "ipRangeEnd": "fd00::ff"}
    update(v2, {"v6IpAssignmentPools": [v6]})
    first = {"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.5.254"}
    update(v2, {"v4IpAssignmentPools": [first]})
    second = {"ipRangeStart": "10.6.6.1", "ipRangeEnd": "10.6.7.254"}
    config = update(v2, {"v4IpAssignmentPools": [second]}).json()["config"]
    assert config["v4IpAssignmentPools"] == [second]  # ASSUMED (lists): replaced
    assert config["v6IpAssignmentPools"] == [v6]  # the other list untouched


def test_merge_mode_appends_instead(emu: ControllerEmulator, v2: httpx.Client) -> None:
    update(v2, {"routes": [ON_LINK]})
    emu.v2_lists = "merge"
    config = update(v2, {"routes": [DEFAULT]}).json()["config"]
    assert config["routes"] == [ON_LINK, DEFAULT]


def test_on_link_routes_read_via_null(v2: httpx.Client) -> None:
    config = update(v2, {"routes": [ON_LINK, DEFAULT]}).json()["config"]
    assert config["routes"] == [ON_LINK, DEFAULT]


BAD = {
    "route_without_via": (
        {"routes": [{"target": "10.6.4.0/22"}]},
        [{"field": "config.routes[0].via", "message": "is required"}],
    ),
    "via_of_the_other_family": (
        {"routes": [{"target": "10.6.4.0/22", "via": "fd00::1"}]},
        [{"field": "config.routes[0].via", "message": "must be an IPv4 address or null"}],
    ),
    "v6_pool_in_the_v4_list": (
        {"v4IpAssignmentPools": [{"ipRangeStart": "fd00::1", "ipRangeEnd": "fd00::2"}]},
        [
            {
                "field": "config.v4IpAssignmentPools[0].ipRangeStart",
                "message": "must be an IPv4 address",
            },
            {
                "field": "config.v4IpAssignmentPools[0].ipRangeEnd",
                "message": "must be an IPv4 address",
            },
        ],
    ),
    "range_backwards": (
        {"v4IpAssignmentPools": [{"ipRangeStart": "10.0.0.9", "ipRangeEnd": "10.0.0.1"}]},
        [
            {
                "field": "config.v4IpAssignmentPools[0].ipRangeEnd",
                "message": "must not be below ipRangeStart",
            }
        ],
    ),
    "two_v6_keys": (
        {"v6AssignmentMode": {"6plane": True, "zt": False}},
        [{"field": "config.v6AssignmentMode.rfc4193", "message": "is required"}],
    ),
    "dns_without_servers": (
        {"dns": {"domain": "lan"}},
        [{"field": "config.dns.servers", "message": "is required"}],
    ),
    "mtu_too_big": (
        {"mtu": 99999},
        [{"field": "config.mtu", "message": "must be an integer 1280-10000"}],
    ),
    "v1_name": (
        {"ipAssignmentPools": []},
        [{"field": "config.ipAssignmentPools", "message": "is not a known field"}],
    ),
    "subnet_of_the_other_family": (
        {"v6Subnet": "10.6.4.0/22"},
        [{"field": "config.v6Subnet", "message": "must be an IPv6 CIDR"}],
    ),
}


@pytest.mark.parametrize(("config", "details"), BAD.values(), ids=BAD.keys())
def test_bad_input_is_400_with_details_and_changes_nothing(
    v2: httpx.Client, config: dict[str, Any], details: list[dict[str, str]]
) -> None:
    before = v2.get(f"/network/{NWID}").json()
    answer = update(v2, config)
    assert answer.status_code == 400
    assert answer.json() == {
        "code": 400,
        "message": "request validation failed",
        "details": details,
    }
    assert v2.get(f"/network/{NWID}").json() == before


def test_a_body_that_is_not_an_object_is_400(v2: httpx.Client) -> None:
    answer = v2.post(f"/network/{NWID}", content="[]")
    assert answer.status_code == 400 and answer.json()["details"][0]["field"] == ""


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_an_unknown_network_is_404_without_a_body(v2: httpx.Client, method: str) -> None:
    answer = v2.request(method, "/network/8056c2e21c00beef", content="{}")
    assert (answer.status_code, answer.content) == (404, b"")
    assert "content-type" not in answer.headers


def test_post_to_an_unknown_network_creates_nothing(
    emu: ControllerEmulator, v2: httpx.Client
) -> None:
    update_unknown = v2.post("/network/8056c2e21c00beef", content='{"config": {"mtu": 1500}}')
    assert update_unknown.status_code == 404
    assert [n["id"] for n in v2.get("/network").json()["items"]] == [NWID]


def test_lists_have_items_and_no_pagination(emu: ControllerEmulator, v2: httpx.Client) -> None:
    for i in range(2, 6):
        emu.add_network(f"8056c2e21c00000{i}")
    listed = v2.get("/network", params={"page": 2, "limit": 1}).json()  # unknown: ignored
    assert list(listed) == ["items"] and len(listed["items"]) == 5
    assert "config" not in listed["items"][0]
    assert v2.get(f"/network-group/{GROUP_ID}/network").json() == listed
    assert v2.get("/org").json()["items"][0]["id"] == ORG_ID
    assert v2.get(f"/org/{ORG_ID}/network-group").json()["items"][0]["id"] == GROUP_ID


def test_create_in_a_group_needs_a_name_then_delete(v2: httpx.Client) -> None:
    path = f"/network-group/{GROUP_ID}/network"
    nameless = v2.post(path, content='{"config": {}}')
    assert nameless.status_code == 400
    assert nameless.json()["details"] == [{"field": "name", "message": "is required"}]
    created = v2.post(path, content=json.dumps({"name": "new", "config": {"mtu": 1400}})).json()
    assert created["name"] == "new" and created["config"]["mtu"] == 1400
    assert v2.delete(f"/network/{created['id']}").json() == {"message": "network deleted"}
    assert v2.get(f"/network/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    "authorization", [None, f"token {KEY}", "Bearer wrong-key", KEY, f"Bearer {KEY}x"]
)
def test_only_the_bearer_key_is_accepted(
    emu: ControllerEmulator, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    answer = httpx.get(f"{emu.url}/api/v2/network/{NWID}", headers=headers)
    assert answer.status_code == 401 and set(answer.json()) == {"message"}
    assert KEY not in answer.text


def test_an_expired_key_is_401(emu: ControllerEmulator, v2: httpx.Client) -> None:
    emu.v2_key_expired = True
    answer = v2.get(f"/network/{NWID}")
    assert answer.status_code == 401 and answer.json() == {"message": "invalid or expired API key"}


def test_no_rate_limit_headers_and_no_keep_alive_cap(v2: httpx.Client) -> None:
    answers = [v2.get(f"/network/{NWID}") for _ in range(30)]
    assert {a.status_code for a in answers} == {200}
    assert not any(k.startswith("x-ratelimit") for k in answers[0].headers)
    assert "keep-alive" not in answers[0].headers


def test_a_body_over_1_mib_is_413(v2: httpx.Client) -> None:
    answer = v2.post(f"/network/{NWID}", content=b" " * ((1 << 20) + 1))
    assert answer.status_code == 413 and set(answer.json()) == {"message"}


def test_one_store_behind_v1_v2_and_the_self_hosted_api(
    emu: ControllerEmulator, v2: httpx.Client
) -> None:
    update(v2, {"routes": [ON_LINK, DEFAULT]})
    assert emu.network(NWID)["routes"] == [ON_LINK, DEFAULT]
    v1 = httpx.get(f"{emu.url}/api/v1/network/{NWID}", headers={"Authorization": f"token {KEY}"})
    assert v1.json()["config"]["routes"] == [{"target": "10.6.4.0/22"}, DEFAULT]


def test_every_assumption_is_marked_where_it_is_made() -> None:
    source = inspect.getsource(central_v2)
    marked = {
        name.strip()
        for group in re.findall(r"ASSUMED \(([^)]*)\)", source)
        for name in group.split(",")
    }
    assert marked - {"name"} == set(ASSUMPTIONS)
