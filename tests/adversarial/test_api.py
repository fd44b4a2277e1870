"""Attacks through the controller's HTTP answers and through what errors print (issue 12):
Retry-After that hammers or stalls, a request with no end, secrets in URLs and in token_env.
httpx.MockTransport plays the server; a fake clock advances with each pause."""

from __future__ import annotations

import json

import httpx
import pytest

from ztplan.api import ApiClient, read_token
from ztplan.errors import ControllerError, ZtplanError
from ztplan.providers.controller import Controller

NWID = "8056c2e21c000001"
TOKEN = "Zb4kq9Tx2Lm7Wc1Rv8Hn3Yp6Gd5Fs0Ej"


class Clock:
    """time.monotonic and time.sleep for a client: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def client_answering(
    *responses: httpx.Response, base: str = "http://ctl", **options: object
) -> tuple[ApiClient, Clock, list[str], list[httpx.Request]]:
    clock, said, seen = Clock(), [], []
    answers = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    api = ApiClient(
        base,
        {"X-ZT1-Auth": "t"},
        httpx.Client(transport=httpx.MockTransport(handler)),
        sleep=clock.sleep,
        clock=clock,
        on_wait=said.append,
        **options,  # type: ignore[arg-type]
    )
    return api, clock, said, seen


def test_retry_after_zero_still_backs_off() -> None:
    """`Retry-After: 0` meant four attempts with no pause at all."""
    api, clock, _, seen = client_answering(httpx.Response(429, headers={"Retry-After": "0"}))
    with pytest.raises(ControllerError):
        api.get("/controller")
    assert len(seen) == 4
    assert clock.slept == [0.5, 1.0, 2.0]


def test_a_long_retry_after_is_capped_and_said() -> None:
    """`Retry-After: 3600` was waited for (30 s at a time) in silence."""
    api, clock, said, _ = client_answering(httpx.Response(429, headers={"Retry-After": "3600"}))
    with pytest.raises(ControllerError) as caught:
        api.post(f"/controller/network/{NWID}", {"routes": []})
    assert clock.slept == [30.0, 30.0, 30.0]
    assert said == [
        f"controller: rate limited by POST http://ctl/controller/network/{NWID} (it asks for "
        f"3600 s), waiting 30 s (attempt {n} of 4)"
        for n in (2, 3, 4)
    ]
    assert str(caught.value) == (
        f"controller: POST http://ctl/controller/network/{NWID} answered 429 (rate limited), "
        "4 attempts"
    )


def test_the_whole_request_ends_by_its_deadline() -> None:
    api, clock, said, seen = client_answering(
        httpx.Response(503, headers={"Retry-After": "20"}), deadline=30
    )
    with pytest.raises(ControllerError) as caught:
        api.get("/controller")
    assert len(seen) == 2 and clock.slept == [20.0]
    assert said == [
        "controller: GET http://ctl/controller answered 503, waiting 20 s (attempt 2 of 4)"
    ]
    assert str(caught.value) == (
        "controller: GET http://ctl/controller answered 503; gave up after 2 of 4 attempts: "
        "another would pass the 30 s deadline"
    )


def test_each_attempt_s_timeout_is_cut_to_what_is_left() -> None:
    api, clock, _, seen = client_answering(
        httpx.Response(503), httpx.Response(200, json={}), deadline=3
    )
    api.get("/controller")
    first, second = (request.extensions["timeout"] for request in seen)
    assert first["read"] == 3 and second["read"] == 2.5  # the client's 5 s, cut


def test_pauses_are_said_on_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    answers = [httpx.Response(502), httpx.Response(200, json={"ok": True})]
    api = ApiClient(
        "http://ctl",
        {},
        httpx.Client(transport=httpx.MockTransport(lambda r: answers.pop(0))),
        sleep=clock.sleep,
        clock=clock,
    )
    assert api.get("/x") == {"ok": True}
    assert capsys.readouterr().err == (
        "controller: GET http://ctl/x answered 502, waiting 0.5 s (attempt 2 of 4)\n"
    )


def test_a_json_answer_nested_100000_deep_is_an_answer_error() -> None:
    api, _, _, _ = client_answering(httpx.Response(200, content=b"[" * 100_000 + b"]" * 100_000))
    with pytest.raises(ControllerError, match="answered 200 with a body that is not JSON"):
        api.get("/controller")


# --- secrets in what is printed --------------------------------------------------------------


def test_userinfo_and_query_of_a_url_are_never_printed() -> None:
    base = f"http://ops:{TOKEN}@ctl:9993?auth={TOKEN}"
    for status in (404, 401, 500):
        api, _, said, _ = client_answering(httpx.Response(status), base=base)
        with pytest.raises(ControllerError) as caught:
            api.get(f"/controller/network/{NWID}")
        for text in (str(caught.value), caught.value.url, *said):
            assert TOKEN not in text
        assert "http://***@ctl:9993/" in str(caught.value) or "http://***@ctl:9993" in str(
            caught.value
        )


def test_a_missing_network_names_the_controller_without_its_userinfo() -> None:
    api, _, _, _ = client_answering(httpx.Response(404), base=f"http://ops:{TOKEN}@ctl")
    with pytest.raises(ControllerError) as caught:
        Controller(api, "local", [NWID]).read_one(NWID)
    assert TOKEN not in str(caught.value)
    assert "controller at http://***@ctl (ztplan does not create networks" in str(caught.value)


def test_a_token_pasted_as_token_env_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN, raising=False)
    with pytest.raises(ZtplanError) as caught:
        read_token(TOKEN, None, "controller")
    assert TOKEN not in str(caught.value)
    assert str(caught.value) == (
        "controller: token_env names no set environment variable, and looks like a token "
        "itself (not shown) (put the token in an environment variable and that variable's "
        "name in token_env)"
    )
    monkeypatch.delenv("ZEROTIER_CENTRAL_TOKEN", raising=False)
    with pytest.raises(ZtplanError, match="the environment variable ZEROTIER_CENTRAL_TOKEN is"):
        read_token("ZEROTIER_CENTRAL_TOKEN", None, "controller")  # a name is still named


def test_the_request_body_is_sent_as_before() -> None:
    api, _, _, seen = client_answering(httpx.Response(200, json={}))
    api.post("/x", {"routes": []})
    assert json.loads(seen[0].content) == {"routes": []}
