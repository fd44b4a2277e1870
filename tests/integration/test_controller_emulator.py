"""The controller provider over real HTTP against the emulator: both APIs, every fault."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.controllers import HOST, apply_all, changes, posts
from ztplan.api import ApiClient
from ztplan.errors import ControllerError
from ztplan.providers.controller import Controller
from ztplan.spec import Spec, parse_spec
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
TOKEN = "s3cr3t-t0ken"
SPEC = f"""\
version: 1
target: {{name: gw}}
controller: {{kind: KIND, token_env: ZT_TOKEN}}
networks:
  - id: "{NWID}"
    routes:
      - {{target: 10.6.4.0/22}}
      - {{target: 0.0.0.0/0, via: 10.6.6.2}}
      - {{target: "2001:19f0:6001:1a6::/80"}}
    ip_pools: [{{start: 10.6.4.1, end: 10.6.7.254}}]
"""


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emu:
        emu.add_network(NWID)
        yield emu


def provider(
    emu: ControllerEmulator, http: httpx.Client, kind: str, token: str = TOKEN, nwid: str = NWID
) -> Controller:
    base = emu.url + ("/api/v1" if kind == "central" else "")
    headers = {"Authorization": f"token {token}"} if kind == "central" else {"X-ZT1-Auth": token}
    api = ApiClient(base_url=base, headers=headers, client=http, sleep=lambda s: None)
    return Controller(api, kind, [nwid])


def spec_for(kind: str) -> Spec:
    return parse_spec(SPEC.replace("KIND", kind), "spec.yaml")


@pytest.mark.parametrize("kind", ["central", "local"])
def test_plan_apply_converge(emulator: ControllerEmulator, http: httpx.Client, kind: str) -> None:
    p, spec = provider(emulator, http, kind), spec_for(kind)
    assert [(c.action.value, c.address) for c in changes(p, spec)] == [
        ("update", f'controller.network["{NWID}"].routes'),
        ("update", f'controller.network["{NWID}"].ip_pools'),
    ]
    apply_all(p, spec)
    assert changes(p, spec) == []
    stored = emulator.network(NWID)
    assert stored["ipAssignmentPools"] == [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}]
    assert {"target": "0.0.0.0/0", "via": "10.6.6.2"} in stored["routes"]
    sent = posts(emulator)
    assert len(sent) == 1  # one POST with both fields, and nothing else
    body = sent[0]["config"] if kind == "central" else sent[0]  # type: ignore[index]
    assert set(body) == {"routes", "ipAssignmentPools"}


def test_routes_reordered_on_the_controller_are_not_drift(
    emulator: ControllerEmulator, http: httpx.Client
) -> None:
    p, spec = provider(emulator, http, "local"), spec_for("local")
    apply_all(p, spec)
    reordered = list(reversed(emulator.network(NWID)["routes"]))
    http.post(
        f"{emulator.url}/controller/network/{NWID}",
        headers={"X-ZT1-Auth": TOKEN},
        json={"routes": reordered},
    )
    assert emulator.network(NWID)["routes"] == reordered
    assert changes(p, spec) == []


def test_a_route_changed_by_hand_is_drift(emulator: ControllerEmulator, http: httpx.Client) -> None:
    p, spec = provider(emulator, http, "central"), spec_for("central")
    apply_all(p, spec)
    http.post(
        f"{emulator.url}/api/v1/network/{NWID}",
        headers={"Authorization": f"token {TOKEN}"},
        json={
            "config": {
                "routes": [{"target": "10.6.4.0/22"}, {"target": "0.0.0.0/0", "via": "10.6.6.9"}]
            }
        },
    )
    (change,) = changes(p, spec)
    assert change.address == f'controller.network["{NWID}"].routes'
    assert {"target": "0.0.0.0/0", "via": "10.6.6.9"} in change.before  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["central", "local"])
def test_unknown_network_is_an_error_and_never_created(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    p = provider(emulator, http, kind, nwid="8056c2e21c00beef")
    with pytest.raises(ControllerError, match="network 8056c2e21c00beef does not exist"):
        p.read(HOST)
    assert posts(emulator) == []


@pytest.mark.parametrize("kind", ["central", "local"])
def test_a_bad_token_is_named_but_never_shown(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    p = provider(emulator, http, kind, token="wrong-token-value")
    with pytest.raises(ControllerError) as error:
        p.read(HOST)
    assert "answered 401: the token was refused" in str(error.value)
    assert "wrong-token-value" not in str(error.value)
    assert TOKEN not in str(error.value)


@pytest.mark.parametrize(
    "fault",
    [
        {"status_5xx": 2},
        {"rate_limit_429": 2},
        {"drop_connection": 1},
        {"malformed_json": 1},
        {"timeout": 3.0},
    ],
)
def test_transient_faults_are_retried(
    emulator: ControllerEmulator, http: httpx.Client, fault: dict[str, float]
) -> None:
    p, spec = provider(emulator, http, "central"), spec_for("central")
    for name, value in fault.items():
        setattr(emulator.faults, name, value)
    apply_all(p, spec)
    assert changes(p, spec) == []


def test_rate_limit_honours_retry_after(emulator: ControllerEmulator, http: httpx.Client) -> None:
    waits: list[float] = []
    p = provider(emulator, http, "central")
    p.api.sleep = waits.append
    emulator.faults.rate_limit_429 = 1
    emulator.faults.retry_after = "7"
    p.read(HOST)
    assert waits == [7.0]


def test_a_controller_that_stays_down_is_a_clear_error_and_nothing_half_applied(
    emulator: ControllerEmulator, http: httpx.Client
) -> None:
    p, spec = provider(emulator, http, "central"), spec_for("central")
    before = emulator.network(NWID)
    pending = changes(p, spec)
    emulator.faults.status_5xx = 1000
    with pytest.raises(ControllerError) as error:
        p.apply(HOST, pending, p.read(HOST))
    assert str(error.value) == (
        f"controller: GET {emulator.url}/api/v1/network/{NWID} answered 503, 4 attempts"
    )
    emulator.faults.status_5xx = 0
    assert emulator.network(NWID) == before


def test_rollback_puts_the_old_fields_back(
    emulator: ControllerEmulator, http: httpx.Client
) -> None:
    p, spec = provider(emulator, http, "local"), spec_for("local")
    emulator.add_network(NWID, routes=[{"target": "10.9.0.0/16"}])
    snapshot = p.read(HOST)
    planned = apply_all(p, spec)
    p.rollback(HOST, snapshot, planned)
    assert p.read(HOST).digest == snapshot.digest
    assert emulator.network(NWID)["routes"] == [{"target": "10.9.0.0/16", "via": None}]


@pytest.mark.parametrize("kind", ["central", "local"])
def test_assign_modes_are_sent_whole(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    text = SPEC.replace("KIND", kind) + (
        "    v4_assign_mode: {zt: true}\n    v6_assign_mode: {6plane: true}\n"
    )
    spec = parse_spec(text, "spec.yaml")
    p = provider(emulator, http, kind)
    addresses = [c.address for c in changes(p, spec)]
    assert addresses[-2:] == [
        f'controller.network["{NWID}"].v4_assign_mode',
        f'controller.network["{NWID}"].v6_assign_mode',
    ]
    apply_all(p, spec)
    assert changes(p, spec) == []
    stored = emulator.network(NWID)
    assert stored["v4AssignMode"] == {"zt": True}
    # All three keys sent: the controller keeps only the keys it is given (CONTROLLER-API §0).
    assert stored["v6AssignMode"] == {"6plane": True, "rfc4193": False, "zt": False}
