"""A write with no answer (issue 12), without a kernel: the watch for its outcome says what
it waits for and keeps to its bound; a proxy's broken encoding is a controller error; a
connection that was refused sent nothing, so nothing can land later."""

from __future__ import annotations

import time

import httpx
import pytest

from ztplan.api import ApiClient
from ztplan.errors import ControllerError
from ztplan.providers.controller import Controller

NWID = "8056c2e21c000001"
BEFORE = {"id": NWID, "routes": [], "ipAssignmentPools": []}
ROUTES = [{"target": "0.0.0.0/0", "via": "10.6.6.2"}]


def make(handler, settle: float, attempts: int = 4, timeout: float = 0.3):  # type: ignore[no-untyped-def]
    said: list[str] = []
    client = httpx.Client(transport=httpx.MockTransport(handler), timeout=httpx.Timeout(timeout))
    api = ApiClient("http://ctl", {"X-ZT1-Auth": "tk"}, client, attempts=attempts, backoff=0.1,
                    on_wait=said.append)  # fmt: skip
    return Controller(api, "local", [NWID], settle=settle), said


def test_the_watch_for_a_write_with_no_answer_says_what_it_waits_for() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ReadTimeout("stalled", request=request)
        return httpx.Response(200, json=BEFORE)

    controller, said = make(handler, settle=2.0, attempts=1)
    started = time.monotonic()
    with pytest.raises(ControllerError, match="outcome is unknown"):
        controller._post(NWID, {"routes": ROUTES})
    took = time.monotonic() - started
    assert took >= 2.0
    assert said[0].startswith(f"controller: network {NWID}: a write had no answer (")
    assert said[0].endswith("; watching the network up to 2 s for what it stored")
    assert NWID in controller.unsettled


def test_the_watch_keeps_to_its_bound_even_when_each_read_stalls() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        time.sleep(0.3)
        raise httpx.ReadTimeout("stalled", request=request)

    controller, said = make(handler, settle=0.5)
    started = time.monotonic()
    with pytest.raises(ControllerError):
        controller._settle(NWID, {"routes": ROUTES}, ControllerError("x", unanswered=True))
    took = time.monotonic() - started
    assert took <= 0.5 + 0.5, f"a {controller.settle} s settle took {took:.1f} s"


def test_a_broken_content_encoding_is_not_a_controller_error() -> None:
    """httpx.DecodingError is no TransportError: it escaped ApiClient raw (plan: 'internal
    error'; the watch: the network not marked unsettled)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"{}", headers={"Content-Encoding": "gzip"})

    controller, _ = make(handler, settle=0.5, attempts=1)
    with pytest.raises(ControllerError):
        controller.api.get("/controller/network/" + NWID)


def test_a_refused_connection_sent_nothing_so_nothing_may_land() -> None:
    """Nothing was sent (ConnectError): the write cannot land later, and a rollback may
    turn forwarding off."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json=BEFORE)

    controller, _ = make(handler, settle=0.3, attempts=1)
    with pytest.raises(ControllerError) as caught:
        controller._post(NWID, {"routes": ROUTES})
    assert not caught.value.unanswered
    assert NWID not in controller.unsettled
