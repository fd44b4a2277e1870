"""Controller provider without a network: httpx.MockTransport plays the controller."""

from __future__ import annotations

import json

import httpx
import pytest

from ztplan.api import ApiClient
from ztplan.errors import ControllerError
from ztplan.host import LocalHost
from ztplan.model import Action, Change
from ztplan.providers.controller import Controller, normalise_pools, normalise_routes

NWID = "8056c2e21c000001"


def test_routes_normalise_to_one_spelling_and_order() -> None:
    assert normalise_routes(
        [
            {"target": "2001:19F0:6001:01a6::/80"},
            {"target": "0.0.0.0/0", "via": "10.6.6.2"},
            {"target": "10.6.4.7/22", "via": None},
            "junk",
        ]
    ) == [
        {"target": "0.0.0.0/0", "via": "10.6.6.2"},
        {"target": "10.6.4.7/22", "via": None},  # host bits kept: the controller keeps them
        {"target": "2001:19f0:6001:1a6::/80", "via": None},
    ]


@pytest.mark.parametrize("routes", [5, True, "10.6.4.0/22", {"target": "10.6.4.0/22"}, None])
def test_routes_that_are_not_a_list_normalise_to_none(routes: object) -> None:
    """`"routes": 5` in an answer was a TypeError (found by tests/adversarial/test_properties)."""
    assert normalise_routes(routes) == []
    assert normalise_pools(routes) == []


def test_a_controller_that_silently_rewrites_is_caught_by_the_re_read() -> None:
    """The self-hosted controller answers 200 and stores a bad `via` as null (CONTROLLER-API §0)."""
    stored: dict[str, object] = {"routes": [], "ipAssignmentPools": []}
    requests: list[tuple[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        requests.append((request.method, body))
        if request.method == "POST":
            assert isinstance(body, dict)
            stored["routes"] = [{"target": r["target"], "via": None} for r in body["routes"]]
        return httpx.Response(200, json=stored)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    api = ApiClient("http://ctl", {"X-ZT1-Auth": "t"}, client, sleep=lambda s: None)
    provider = Controller(api, "local", [NWID])
    wanted = [{"target": "0.0.0.0/0", "via": "10.6.6.2"}]
    change = Change(
        address=f'controller.network["{NWID}"].routes',
        provider="controller",
        action=Action.UPDATE,
        before=[],
        after=wanted,
    )  # type: ignore[arg-type]
    with pytest.raises(ControllerError) as error:
        provider.apply(LocalHost(None), [change], {})
    assert str(error.value) == (
        f"controller: network {NWID} did not keep its routes: "
        'sent [{"target": "0.0.0.0/0", "via": "10.6.6.2"}], '
        'stored [{"target": "0.0.0.0/0", "via": null}]'
    )
    assert [m for m, _ in requests] == ["GET", "POST", "GET"]  # GET first: POST would create
    assert requests[1][1] == {"routes": [{"target": "0.0.0.0/0", "via": "10.6.6.2"}]}


def test_twenty_networks_are_read_at_once() -> None:
    """Issue 14: 20 networks behind 100 ms take one round trip, not three of eight. The
    answers wait until all 20 requests are in flight (a barrier of 20 that breaks, failing
    the read, if fewer ever are)."""
    import threading

    nwids = [f"8056c2e21c{i:06x}" for i in range(20)]
    barrier = threading.Barrier(20, timeout=10)

    def handler(request: httpx.Request) -> httpx.Response:
        barrier.wait()
        return httpx.Response(200, json={"config": {"routes": [], "mtu": 2800}})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    api = ApiClient("http://ctl", {}, client, sleep=lambda s: None, attempts=1)
    live = Controller(api, "central", nwids).read(LocalHost(None))
    assert sorted(live.raw) == nwids


def test_central_reads_keep_to_its_request_budget() -> None:
    """The Legacy Central client is paced to 20 requests a second (its free budget)."""
    from ztplan.providers.controller import controller_client
    from ztplan.spec import parse_spec

    spec = parse_spec(
        "version: 1\ntarget: {name: gw1}\ncontroller: {kind: central, token_env: ZT_T}\n",
        "gw.yaml",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZT_T", "0123456789abcdef0123456789abcdef")
        api = controller_client(spec, httpx.Client())
    assert api.rate is not None and api.rate.per_second == 20
