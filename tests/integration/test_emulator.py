"""The controller emulator reproduces what CONTROLLER-API.md documents, quirks included."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ztplan.testing.emulator import ControllerEmulator

TOKEN = "s3cret-token-24-chars-xx"
NWID = "8056c2e21c000001"
FOREIGN = "311cd7d88b999999"
TLS = ssl.create_default_context()  # once: httpx would load the CA bundle for every client


def client(
    base_url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> httpx.Client:
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout, verify=TLS)


@pytest.fixture
def emu() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emulator:
        yield emulator


@pytest.fixture
def api(emu: ControllerEmulator) -> Iterator[httpx.Client]:
    """Self-hosted controller and member service, authenticated like zerotier-cli."""
    with client(emu.url, {"X-ZT1-Auth": TOKEN}) as api:
        yield api


@pytest.fixture
def central(emu: ControllerEmulator) -> Iterator[httpx.Client]:
    with client(emu.url + "/api/v1", {"Authorization": f"token {TOKEN}"}) as central:
        yield central


def post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(path, content=json.dumps(body))


def set_net(api: httpx.Client, body: Any, nwid: str = NWID) -> dict[str, Any]:
    response = post(api, f"/controller/network/{nwid}", body)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def assert_empty(response: httpx.Response, status: int) -> None:
    assert response.status_code == status
    assert response.content == b""
    assert "content-type" not in response.headers


# --- self-hosted controller: shapes ---------------------------------------------------------


def test_controller_status_is_pretty_printed_with_tabs(api: httpx.Client) -> None:
    response = api.get("/controller")
    assert response.status_code == 200
    assert response.text.startswith('{\n\t"controller": true,\n\t"apiVersion": 4,\n\t"clock": ')
    assert response.json()["databaseReady"] is True
    assert response.headers["keep-alive"] == "timeout=5, max=5"


def test_create_with_node_form_gives_the_observed_default_object(api: httpx.Client) -> None:
    response = post(api, "/controller/network/8056c2e21c______", {"name": "ztplan-test"})
    assert response.status_code == 200
    net = response.json()
    nwid = net["id"]
    assert len(nwid) == 16 and nwid.startswith("8056c2e21c") and nwid[10:] != "000000"
    assert isinstance(net.pop("creationTime"), int)
    assert net == {
        "authTokens": [None], "authorizationEndpoint": "", "capabilities": [], "clientId": "",
        "dns": [], "enableBroadcast": True, "id": nwid, "ipAssignmentPools": [], "mtu": 2800,
        "multicastLimit": 32, "name": "ztplan-test", "nwid": nwid, "objtype": "network",
        "private": True, "remoteTraceLevel": 0, "remoteTraceTarget": None, "revision": 1,
        "routes": [], "rules": [{"not": False, "or": False, "type": "ACTION_ACCEPT"}],
        "rulesSource": "", "ssoEnabled": False, "tags": [], "v4AssignMode": {"zt": False},
        "v6AssignMode": {"6plane": False, "rfc4193": False, "zt": False},
    }  # fmt: skip
    assert api.get("/controller/network").json() == [nwid]


def test_create_under_the_plain_list_path(api: httpx.Client) -> None:
    response = api.put("/controller/network", content="{}")
    assert response.status_code == 200 and response.json()["id"].startswith("8056c2e21c")


def test_create_with_a_foreign_node_id_is_400_empty(api: httpx.Client) -> None:
    assert_empty(post(api, "/controller/network/0123456789______", {}), 400)
    assert api.get("/controller/network").json() == []


def test_keys_are_sorted_and_compact(api: httpx.Client) -> None:
    text = post(api, f"/controller/network/{NWID}", {"name": "x"}).text
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def test_uppercase_id_accepted_answer_lowercase(api: httpx.Client) -> None:
    assert set_net(api, {}, NWID.upper())["id"] == NWID
    assert api.get(f"/controller/network/{NWID.upper()}").json()["nwid"] == NWID


def test_delete_returns_the_object_then_404(api: httpx.Client) -> None:
    set_net(api, {"name": "gone"})
    response = api.delete(f"/controller/network/{NWID}")
    assert response.status_code == 200 and response.json()["name"] == "gone"
    assert_empty(api.get(f"/controller/network/{NWID}"), 404)


# --- self-hosted controller: silent rewrites (doc §0, §1 transcript) -------------------------

ON_LINK = {"target": "10.6.4.0/22", "via": None}


@pytest.mark.parametrize(
    ("routes", "stored"),
    [
        ([{"target": "10.6.4.0/22"}], [ON_LINK]),
        ([{"target": "10.6.4.0/33"}, {"target": "10.6.4.0/22"}], [ON_LINK]),
        ([{"target": "10.6.4.0"}, {"target": "10.6.4.0/22"}], [
            {"target": "10.6.4.0/0", "via": None}, ON_LINK]),
        ([{"target": "banana"}, {"target": 123}, {"target": "10.6.4.0/22"}], [ON_LINK]),
        ([{"target": "0.0.0.0/0", "via": "banana"}], [{"target": "0.0.0.0/0", "via": None}]),
        ([{"target": "0.0.0.0/0", "via": "fd00::1"}], [{"target": "0.0.0.0/0", "via": None}]),
        ([{"target": "0.0.0.0/0", "via": ""}], [{"target": "0.0.0.0/0", "via": None}]),
        ([{"target": "0.0.0.0/0", "via": "192.168.1.1"}],
            [{"target": "0.0.0.0/0", "via": "192.168.1.1"}]),
        ([{"target": "10.6.4.7/22", "via": "10.6.6.2/24"}],
            [{"target": "10.6.4.7/22", "via": "10.6.6.2"}]),
        ([{"target": "2001:db8:6::/64"}, {"target": "::/0", "via": "2001:db8:6::2"}],
            [{"target": "2001:db8:6::/64", "via": None},
             {"target": "::/0", "via": "2001:db8:6::2"}]),
        ([{"target": "2001:db8::/129"}, "not-an-object"], []),
        ([ON_LINK, ON_LINK], [ON_LINK, ON_LINK]),  # duplicates kept
    ],
)  # fmt: skip
def test_routes_are_rewritten_silently(
    api: httpx.Client, routes: list[Any], stored: list[dict[str, Any]]
) -> None:
    assert set_net(api, {"routes": routes})["routes"] == stored


def test_dotted_garbage_parses_as_zero_address_like_inet_pton(api: httpx.Client) -> None:
    routes = [{"target": "10.6.4.zz/24", "via": "10.6.6.x"}]
    assert set_net(api, {"routes": routes})["routes"] == [
        {"target": "0.0.0.0/24", "via": "0.0.0.0"}
    ]


def test_non_array_routes_are_ignored_without_revision(api: httpx.Client) -> None:
    before = set_net(api, {"routes": [ON_LINK]})
    for body in ({"routes": "10.6.4.0/22"}, {"routes": None}):
        after = set_net(api, body)
        assert after["routes"] == [ON_LINK] and after["revision"] == before["revision"]
    assert set_net(api, {"routes": []})["routes"] == []


def test_route_list_is_capped_at_16384(api: httpx.Client) -> None:
    routes = [{"target": f"10.{i // 256 % 256}.{i % 256}.0/24"} for i in range(16390)]
    assert len(set_net(api, {"routes": routes})["routes"]) == 16384


@pytest.mark.parametrize(
    ("pools", "stored"),
    [
        ([{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
            [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}]),
        ([{"ipRangeStart": 1, "ipRangeEnd": "10.0.0.9"}], []),
        ([{"ipRangeStart": "10.0.0.1", "ipRangeEnd": "fd00::9"}], []),
        ([{"ipRangeStart": "10.0.0.1"}], []),
        ([{"ipRangeStart": "10.0.0.9/24", "ipRangeEnd": "10.0.0.1"}],  # start > end accepted
            [{"ipRangeStart": "10.0.0.9", "ipRangeEnd": "10.0.0.1"}]),
    ],
)  # fmt: skip
def test_pools_drop_bad_entries(api: httpx.Client, pools: list[Any], stored: list[Any]) -> None:
    assert set_net(api, {"ipAssignmentPools": pools})["ipAssignmentPools"] == stored


@pytest.mark.parametrize(
    ("body", "key", "stored"),
    [
        ({"name": 5}, "name", "5"),
        ({"name": True}, "name", "1"),
        ({"private": "no"}, "private", False),
        ({"private": "t"}, "private", True),
        ({"private": "1"}, "private", True),
        ({"private": None}, "private", True),
        ({"enableBroadcast": 0}, "enableBroadcast", False),
        ({"enableBroadcast": "True"}, "enableBroadcast", True),
        ({"mtu": 99999}, "mtu", 10000),
        ({"mtu": 5}, "mtu", 1280),
        ({"mtu": "1500"}, "mtu", 1500),
        ({"multicastLimit": 7}, "multicastLimit", 7),
        ({"v4AssignMode": True}, "v4AssignMode", {"zt": False}),
        ({"v4AssignMode": "zt"}, "v4AssignMode", {"zt": True}),
        ({"v4AssignMode": {"zt": 1}}, "v4AssignMode", {"zt": True}),
        ({"v6AssignMode": {"6plane": True}}, "v6AssignMode", {"6plane": True}),
        ({"v6AssignMode": "rfc4193,zt"}, "v6AssignMode",
            {"6plane": False, "rfc4193": True, "zt": True}),
        ({"v6AssignMode": 7}, "v6AssignMode", {"6plane": False, "rfc4193": False, "zt": False}),
        ({"dns": {"domain": "zt.example", "servers": ["10.6.6.2"]}}, "dns",
            {"domain": "zt.example", "servers": ["10.6.6.2"]}),
        ({"dns": "10.6.6.2"}, "dns", []),
        ({"rules": [{"type": "ACTION_DROP", "not": True}, {"type": "NOPE"}]}, "rules",
            [{"type": "ACTION_DROP"}]),
    ],
)  # fmt: skip
def test_fields_are_coerced_like_networkUpdateFromPostData(
    api: httpx.Client, body: dict[str, Any], key: str, stored: Any
) -> None:
    assert set_net(api, body)[key] == stored


def test_unknown_and_read_only_fields_are_ignored(api: httpx.Client) -> None:
    net = set_net(api, {"banana": 1, "revision": 99, "id": FOREIGN, "creationTime": 1})
    assert "banana" not in net and net["revision"] == 1 and net["id"] == NWID
    assert net["creationTime"] != 1


def test_objects_and_arrays_are_replaced_whole(api: httpx.Client) -> None:
    set_net(api, {"v6AssignMode": {"6plane": True, "rfc4193": True, "zt": True}, "name": "keep"})
    net = set_net(api, {"v6AssignMode": {"6plane": False}})
    assert net["v6AssignMode"] == {"6plane": False} and net["name"] == "keep"


# --- revision ----------------------------------------------------------------------------------


def test_revision_counts_only_real_changes(api: httpx.Client) -> None:
    assert set_net(api, {"name": "ztplan-test", "private": True})["revision"] == 1
    body = {
        "routes": [ON_LINK, {"target": "0.0.0.0/0", "via": "10.6.6.2"}],
        "ipAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
        "v4AssignMode": {"zt": True},
    }
    assert set_net(api, body)["revision"] == 2
    assert set_net(api, body)["revision"] == 2  # identical POST
    assert set_net(api, {"routes": [ON_LINK]})["revision"] == 3
    assert set_net(api, {})["revision"] == 3
    assert set_net(api, [1, 2])["revision"] == 3  # an array body is a no-op
    assert api.get(f"/controller/network/{NWID}").json()["revision"] == 3


def test_reordering_routes_is_a_change(api: httpx.Client) -> None:
    a, b = {"target": "10.1.0.0/16", "via": None}, {"target": "10.2.0.0/16", "via": None}
    set_net(api, {"routes": [a, b]})
    net = set_net(api, {"routes": [b, a]})
    assert net["routes"] == [b, a] and net["revision"] == 2


def test_add_network_sets_fields_and_revision(emu: ControllerEmulator, api: httpx.Client) -> None:
    stored = emu.add_network(NWID, name="pre", routes=[{"target": "10.6.4.0"}], revision=27)
    assert stored["routes"] == [{"target": "10.6.4.0/0", "via": None}]
    assert api.get(f"/controller/network/{NWID}").json() == stored == emu.network(NWID)
    assert set_net(api, {"name": "post"})["revision"] == 28


# --- create-on-POST, errors, 404 shapes ------------------------------------------------------


@pytest.mark.parametrize("nwid", ["311cd7d88b999999", "8056c2e21c000001"])
def test_post_to_an_unknown_network_creates_it(api: httpx.Client, nwid: str) -> None:
    assert_empty(api.get(f"/controller/network/{nwid}"), 404)
    net = set_net(api, {"routes": [{"target": "10.9.0.0/24"}]}, nwid)
    assert net["revision"] == 1 and net["id"] == nwid
    assert api.get(f"/controller/network/{nwid}").status_code == 200


def test_unparsable_body_is_500_with_the_parser_message(api: httpx.Client) -> None:
    response = api.post(f"/controller/network/{NWID}", content='{"routes":[')
    assert response.status_code == 500
    assert response.json() == {
        "error": 500,
        "description": "[json.exception.parse_error.101] parse error at line 1, column 12: "
        "syntax error while parsing value - unexpected end of input; "
        "expected '[', '{', or a literal",
    }
    assert_empty(api.get(f"/controller/network/{NWID}"), 404)  # nothing was created


def test_500_body_can_be_invalid_json(api: httpx.Client) -> None:
    response = api.post(f"/controller/network/{NWID}", content='{"x')
    assert response.status_code == 500
    assert "last read: '\"x'" in response.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_empty_body_is_500_at_column_1(api: httpx.Client) -> None:
    response = api.post(f"/controller/network/{NWID}")
    assert response.status_code == 500 and "line 1, column 1:" in response.json()["description"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/controller/network/{NWID}"),
        ("DELETE", f"/controller/network/{NWID}"),
        ("GET", "/controller/network/8056c2e21c00000"),  # 15 hex
        ("GET", "/controller/network/8056c2e21c0000zz"),
        ("GET", f"/controller/network/{NWID}/"),
        ("POST", f"/controller/network/{NWID}/"),
        ("PATCH", f"/controller/network/{NWID}"),
        ("GET", "/controller/network/8056c2e21c______"),
        ("GET", "/nothing-here"),
    ],
)
def test_unmatched_paths_and_unknown_networks_are_404_empty(
    api: httpx.Client, method: str, path: str
) -> None:
    assert_empty(api.request(method, path, content="{}"), 404)


def test_patch_on_an_existing_network_is_404(api: httpx.Client) -> None:
    set_net(api, {})
    assert_empty(api.patch(f"/controller/network/{NWID}", content="{}"), 404)


def test_member_endpoints_minimal(emu: ControllerEmulator, api: httpx.Client) -> None:
    assert_empty(api.get(f"/controller/network/{NWID}/member"), 404)
    emu.add_network(NWID)
    assert api.get(f"/controller/network/{NWID}/member").json() == {}
    emu.join(NWID)
    assert api.get(f"/controller/network/{NWID}/member").json() == {"8056c2e21c": 1}
    member = api.get(f"/controller/network/{NWID}/member/8056c2e21c").json()
    assert member["authorized"] is False and member["nwid"] == NWID


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"X-ZT1-Auth": "wrong"}, {"Authorization": f"token {TOKEN}"}]
)
def test_bad_or_missing_token_is_401_json(emu: ControllerEmulator, headers: dict[str, str]) -> None:
    for path in ("/controller", f"/controller/network/{NWID}", "/network", "/nothing-here"):
        with client(emu.url, headers) as http:
            response = http.get(path)
        assert response.status_code == 401 and response.content == b"{}"
        assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"X-ZT1-Auth": TOKEN}, ""),
        ({}, f"?auth={TOKEN}"),
        ({"Authorization": f"Bearer {TOKEN}"}, ""),
    ],
)
def test_three_ways_to_send_the_token(
    emu: ControllerEmulator, headers: dict[str, str], query: str
) -> None:
    with client(emu.url, headers) as http:
        assert http.get(f"/controller{query}").status_code == 200


# --- ZeroTier Central -------------------------------------------------------------------------


def test_central_nests_config_and_omits_via_on_link(
    emu: ControllerEmulator, central: httpx.Client
) -> None:
    emu.add_network(NWID, name="gw", routes=[ON_LINK, {"target": "0.0.0.0/0", "via": "10.6.6.2"}])
    net = central.get(f"/network/{NWID}").json()
    assert net["id"] == NWID and net["description"] == "" and net["rulesSource"] == ""
    assert {"clock", "ownerId", "totalMemberCount", "authorizedMemberCount"} <= net.keys()
    config = net["config"]
    assert config["routes"] == [
        {"target": "10.6.4.0/22"},
        {"target": "0.0.0.0/0", "via": "10.6.6.2"},
    ]
    assert config["dns"] == {"domain": "", "servers": None}
    assert config["name"] == "gw" and config["id"] == NWID and config["mtu"] == 2800
    assert {"creationTime", "lastModified", "v4AssignMode", "v6AssignMode", "rules"} <= set(config)
    assert "revision" not in config and "routes" not in net
    [listed] = central.get("/network").json()
    assert listed | {"clock": 0} == net | {"clock": 0}


def test_central_post_merges_config_replaces_lists(
    emu: ControllerEmulator, central: httpx.Client, api: httpx.Client
) -> None:
    emu.add_network(NWID, name="gw", routes=[ON_LINK, ON_LINK])
    before = central.get(f"/network/{NWID}").json()["config"]
    body = {
        "config": {
            "routes": [{"target": "10.6.4.0/22"}, {"target": "0.0.0.0/0", "via": "10.6.6.2"}]
        }
    }
    response = post(central, f"/network/{NWID}", body)
    assert response.status_code == 200
    config = response.json()["config"]
    assert config["routes"] == body["config"]["routes"] and config["name"] == "gw"
    assert config["lastModified"] > before["lastModified"]
    # One store: the self-hosted view sees it, with the on-link via as null.
    assert api.get(f"/controller/network/{NWID}").json()["routes"][1]["via"] == "10.6.6.2"
    again = post(central, f"/network/{NWID}", body).json()["config"]
    assert again["lastModified"] == config["lastModified"]  # no change, no new timestamp


def test_central_post_top_level_fields(emu: ControllerEmulator, central: httpx.Client) -> None:
    emu.add_network(NWID)
    net = post(central, f"/network/{NWID}", {"description": "d", "rulesSource": "accept;"}).json()
    assert net["description"] == "d" and net["rulesSource"] == "accept;"


@pytest.mark.parametrize("content", ["[]", "not json", '"x"', ""])
def test_central_non_object_body_is_json_error(
    emu: ControllerEmulator, central: httpx.Client, content: str
) -> None:
    emu.add_network(NWID)
    for path in ("/network", f"/network/{NWID}"):
        response = central.post(path, content=content)
        assert response.status_code == 400
        assert response.json() == {"type": "internal", "message": "JSON error"}


def test_central_create_and_delete(central: httpx.Client) -> None:
    created = post(central, "/network", {"config": {"name": "new"}}).json()
    nwid = created["id"]
    assert created["config"]["name"] == "new" and nwid.startswith("8056c2e21c")
    assert central.delete(f"/network/{nwid}").status_code == 200
    assert central.get(f"/network/{nwid}").status_code == 404


def test_central_unknown_network_is_404_even_for_post(central: httpx.Client) -> None:
    assert central.get(f"/network/{NWID}").status_code == 404
    assert post(central, f"/network/{NWID}", {"config": {}}).status_code == 404
    assert central.get("/network/nope").status_code == 404


@pytest.mark.parametrize("scheme", ["token", "bearer", "Bearer", "TOKEN"])
def test_central_auth_schemes(emu: ControllerEmulator, scheme: str) -> None:
    with client(emu.url, {"Authorization": f"{scheme} {TOKEN}"}) as http:
        assert http.get("/api/v1/network").status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "token wrong"}, {"X-ZT1-Auth": TOKEN}, {"Authorization": TOKEN}],
)
def test_central_401(emu: ControllerEmulator, headers: dict[str, str]) -> None:
    with client(emu.url, headers) as http:
        response = http.get("/api/v1/network")
    assert response.status_code == 401 and response.json()["type"] == "unauthorized"


def test_central_403_for_a_denied_network(emu: ControllerEmulator, central: httpx.Client) -> None:
    emu.add_network(NWID)
    emu.central_denied.add(NWID)
    assert central.get(f"/network/{NWID}").status_code == 403


def test_central_rate_limit_headers_and_429(emu: ControllerEmulator, central: httpx.Client) -> None:
    emu.central_rate_limit = 3
    answers = [central.get("/network") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["2", "1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in answers)
    assert answers[0].headers["x-ratelimit-reset"].endswith(" UTC")


def test_central_default_budget_is_20_per_second(central: httpx.Client) -> None:
    assert central.get("/network").headers["x-ratelimit-limit"] == "20"


# --- member-side service ----------------------------------------------------------------------


def test_member_get_not_joined_is_404_json(api: httpx.Client) -> None:
    response = api.get(f"/network/{NWID}")
    assert response.status_code == 404 and response.json() == {}
    assert api.get("/network").json() == []


def test_member_post_joins_then_applies_only_booleans(
    emu: ControllerEmulator, api: httpx.Client
) -> None:
    emu.add_network(NWID, name="gw", routes=[{"target": "0.0.0.0/0", "via": "10.6.6.2"}])
    body = {"allowDefault": True, "allowGlobal": "true", "allowDNS": 1, "allowManaged": 0}
    net = post(api, f"/network/{NWID}", body).json()
    assert (net["allowDefault"], net["allowGlobal"], net["allowDNS"], net["allowManaged"]) == (
        True, False, False, True)  # fmt: skip
    assert net["status"] == "OK" and net["name"] == "gw" and net["netconfRevision"] == 1
    assert net["routes"] == [{"flags": 0, "metric": 0, "target": "0.0.0.0/0", "via": "10.6.6.2"}]
    assert api.get(f"/network/{NWID}").json() == net
    assert api.get("/network").json() == [net]


def test_member_post_with_invalid_json_still_joins(api: httpx.Client) -> None:
    response = api.post(f"/network/{FOREIGN}", content="{nope")
    assert response.status_code == 200
    net = response.json()
    assert net["allowManaged"] is True and net["allowDefault"] is False
    assert net["status"] == "REQUESTING_CONFIGURATION" and net["routes"] == []
    assert api.get(f"/network/{FOREIGN}").status_code == 200


def test_member_leave(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.join(NWID, allowDefault=True, addresses=["10.6.6.2/22"])
    assert api.get(f"/network/{NWID}").json()["assignedAddresses"] == ["10.6.6.2/22"]
    assert api.delete(f"/network/{NWID}").json() == {"result": True}
    response = api.delete(f"/network/{NWID}")
    assert response.status_code == 200 and response.json() == {}
    assert api.get(f"/network/{NWID}").status_code == 404


def test_member_sees_the_controller_revision(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.join(NWID)
    assert api.get(f"/network/{NWID}").json()["netconfRevision"] == 0
    emu.add_network(NWID, revision=27)
    assert api.get(f"/network/{NWID}").json()["netconfRevision"] == 27


def test_join_rejects_unknown_flags(emu: ControllerEmulator) -> None:
    with pytest.raises(TypeError):
        emu.join(NWID, allowEverything=True)


def test_status(api: httpx.Client) -> None:
    assert api.get("/status").json()["address"] == "8056c2e21c"


# --- faults -----------------------------------------------------------------------------------


def test_latency_is_added(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.faults.latency = 0.15
    started = time.monotonic()
    assert api.get("/controller").status_code == 200
    assert time.monotonic() - started >= 0.15


def test_status_5xx_then_recovery(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.faults.status_5xx = 2
    assert [api.get("/controller").status_code for _ in range(3)] == [503, 503, 200]
    emu.faults.status_5xx, emu.faults.status_5xx_code = 1, 502
    assert api.get("/controller").status_code == 502


def test_rate_limit_429_with_retry_after(emu: ControllerEmulator, central: httpx.Client) -> None:
    emu.faults.rate_limit_429 = 1
    response = central.get("/network")
    assert response.status_code == 429 and response.headers["retry-after"] == "0"
    emu.faults.rate_limit_429, emu.faults.retry_after = 1, "7"
    assert central.get("/network").headers["retry-after"] == "7"
    assert central.get("/network").status_code == 200


def test_timeout_stalls_the_next_request_only(emu: ControllerEmulator) -> None:
    emu.faults.timeout = 2.0
    with client(emu.url, {"X-ZT1-Auth": TOKEN}, timeout=0.2) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.get("/controller")
        assert http.get("/controller").status_code == 200
    assert emu.faults.timeout == 0.0


def test_malformed_json_on_success_only(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.faults.malformed_json = 1
    assert api.get(f"/controller/network/{NWID}").status_code == 404  # not consumed
    response = api.get("/controller/network")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert api.get("/controller/network").json() == []


def test_drop_connection(emu: ControllerEmulator, api: httpx.Client) -> None:
    emu.faults.drop_connection = 1
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        api.get("/controller")
    assert api.get("/controller").status_code == 200


def test_request_log_never_holds_the_token(emu: ControllerEmulator) -> None:
    with client(emu.url) as http:
        http.post(f"/controller/network/{NWID}?auth={TOKEN}", content='{"name":"n"}')
        http.post(f"/controller/network/{NWID}?auth={TOKEN}", content="{bad")
    assert emu.request_log == [
        ("POST", f"/controller/network/{NWID}", {"name": "n"}),
        ("POST", f"/controller/network/{NWID}", None),
    ]
    assert TOKEN not in repr(emu.request_log)


def test_keep_alive_max_5_closes_the_connection(api: httpx.Client) -> None:
    answers = [api.get("/controller") for _ in range(6)]
    assert [r.headers.get("connection") for r in answers][4] == "close"
    assert all(r.status_code == 200 for r in answers)


# --- the command line -------------------------------------------------------------------------


def test_main_serves_until_sigterm(tmp_path: Path) -> None:
    token_file = tmp_path / "authtoken.secret"
    token_file.write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "ztplan.testing.emulator", "--port", "0"]
    argv += ["--token-file", str(token_file), "--network", NWID]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            with client(url, {"X-ZT1-Auth": TOKEN}) as http:
                assert http.get("/controller/network").json() == [NWID]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=5) == 0
        finally:
            proc.kill()
    assert list(tmp_path.iterdir()) == [token_file]  # writes nothing
