"""Each controller kind's mapping, without a network: values in, bodies out, errors worded."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ztplan.api import ApiClient
from ztplan.errors import ControllerError
from ztplan.providers.controller_backend import BACKENDS, NO_DNS

V2 = BACKENDS["central-v2"]
KEY = "v2-key-SECRET-0123456789"
ROUTES = [
    {"target": "0.0.0.0/0", "via": "10.6.6.2"},
    {"target": "10.6.4.0/22", "via": None},
    {"target": "2001:19f0:6001:1a6::/80", "via": None},
]
POOLS = [
    {"start": "10.6.4.1", "end": "10.6.7.254"},
    {"start": "2001:19f0:6001:1a6::1", "end": "2001:19f0:6001:1a6::ffff"},
]


def test_each_kind_sends_its_own_auth_header() -> None:
    assert BACKENDS["local"].headers("t") == {"X-ZT1-Auth": "t"}
    assert BACKENDS["central"].headers("t") == {"Authorization": "token t"}
    assert V2.headers("t") == {"Authorization": "Bearer t"}
    assert V2.default_url == "https://central.zerotier.com/api/v2"
    assert V2.path("8056c2e21c000001") == "/network/8056c2e21c000001"


@pytest.mark.parametrize(
    ("kind", "dns"),
    [
        ("local", []),  # the self-hosted controller's dns until it is set
        ("central", {"domain": "", "servers": None}),  # Legacy Central's no-op
        ("central", None),
        ("central-v2", {"domain": "", "servers": []}),
    ],
)
def test_no_dns_reads_alike_on_every_kind(kind: str, dns: Any) -> None:
    assert BACKENDS[kind].values({"dns": dns})["dns"] == NO_DNS


def test_v2_values_join_both_pool_lists_and_read_v2_names() -> None:
    config = {
        "routes": [
            {"target": "10.6.4.0/22", "via": None},
            {"target": "0.0.0.0/0", "via": "10.6.6.2"},
            {"target": "2001:19F0:6001:01a6::/80", "via": None},
        ],
        "v4IpAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
        "v6IpAssignmentPools": [
            {"ipRangeStart": "2001:19f0:6001:1a6::1", "ipRangeEnd": "2001:19f0:6001:1a6::ffff"}
        ],
        "v4AssignmentMode": {"zt": True},
        "v6AssignmentMode": {"6plane": False, "rfc4193": True, "zt": False},
        "v4Subnet": "10.6.4.0/22",
        "v6Subnet": "",
        "mtu": 1500,
        "dns": {"domain": "zt.example.com", "servers": ["10.6.6.2"]},
    }
    assert V2.values(config) == {
        "routes": ROUTES,
        "ip_pools": POOLS,
        "v4_assign_mode": {"zt": True},
        "v6_assign_mode": {"6plane": False, "rfc4193": True, "zt": False},
        "mtu": 1500,
        "dns": {"domain": "zt.example.com", "servers": ["10.6.6.2"]},
        "v4_subnet": "10.6.4.0/22",
        "v6_subnet": None,
    }


def test_v2_body_sends_via_always_splits_pools_and_sends_every_key() -> None:
    body = V2.body(
        {
            "routes": ROUTES,
            "ip_pools": POOLS[:1],  # no IPv6 pool left: the v6 list is still sent, empty
            "v6_assign_mode": {"6plane": True, "rfc4193": False, "zt": False},
            "dns": NO_DNS,
            "v4_subnet": None,
        }
    )
    assert body == {
        "config": {
            "routes": [
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "10.6.4.0/22", "via": None},
                {"target": "2001:19f0:6001:1a6::/80", "via": None},
            ],
            "v4IpAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
            "v6IpAssignmentPools": [],
            "v6AssignmentMode": {"6plane": True, "rfc4193": False, "zt": False},
            "dns": {"domain": "", "servers": []},
            "v4Subnet": "",
        }
    }


def test_v1_and_local_bodies_keep_their_names() -> None:
    fields = {"ip_pools": POOLS, "mtu": 1500, "dns": NO_DNS}
    flat = {
        "ipAssignmentPools": [
            {"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"},
            {"ipRangeStart": "2001:19f0:6001:1a6::1", "ipRangeEnd": "2001:19f0:6001:1a6::ffff"},
        ],
        "mtu": 1500,
        "dns": {"domain": "", "servers": []},
    }
    assert BACKENDS["local"].body(fields) == flat
    assert BACKENDS["central"].body(fields) == {"config": flat}


def api_answering(status: int, body: bytes, headers: dict[str, str] | None = None) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers or {})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    return ApiClient(
        "https://central.example/api/v2",
        V2.headers(KEY),
        client,
        sleep=lambda s: None,
        describe_error=V2.describe_error,
    )


def error_of(api: ApiClient) -> str:
    with pytest.raises(ControllerError) as error:
        api.post("/network/8056c2e21c000001", {"config": {}})
    return str(error.value)


def test_a_400_shows_each_field_on_one_line() -> None:
    body = {
        "code": 400,
        "message": "request validation failed",
        "details": [
            {"field": "config.routes[1].target", "message": "must be a CIDR\n(address/prefix)"},
            {"field": "config.mtu", "message": "must be an integer 1280-10000"},
        ],
    }
    api = api_answering(400, json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert error_of(api) == (
        "controller: POST https://central.example/api/v2/network/8056c2e21c000001 answered 400: "
        "request validation failed (config.routes[1].target: must be a CIDR (address/prefix); "
        "config.mtu: must be an integer 1280-10000)"
    )


def test_a_400_that_echoes_the_key_does_not_show_it() -> None:
    body = {"code": 400, "message": f"bad header Bearer {KEY}", "details": []}
    message = error_of(api_answering(400, json.dumps(body).encode()))
    assert KEY not in message and "<redacted>" in message


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"", "the request was refused"),
        (b"not json", "the request was refused"),
        (b"[1]", "the request was refused"),
        (b'{"message": "two\\nlines", "details": "not a list"}', "two lines"),
    ],
)
def test_odd_error_bodies_still_give_one_line(body: bytes, said: str) -> None:
    assert error_of(api_answering(400, body)).endswith(f"answered 400: {said}")


def test_a_401_says_the_key_may_have_expired_and_never_shows_it() -> None:
    message = error_of(api_answering(401, b'{"message": "invalid or expired API key"}'))
    assert message.startswith(
        "controller: POST https://central.example/api/v2/network/8056c2e21c000001 answered 401: "
        "New Central refused the API key (invalid or expired API key); service-account keys "
        "expire"
    )
    assert KEY not in message


def test_a_403_names_the_url_and_the_expiry() -> None:
    message = error_of(api_answering(403, b'{"message": "forbidden"}'))
    assert "https://central.example/api/v2/network/8056c2e21c000001 answered 403" in message
    assert "service-account keys expire" in message


def test_a_404_is_left_to_the_provider() -> None:
    assert V2.describe_error(404, "GET https://x/network/1", b"") is None
