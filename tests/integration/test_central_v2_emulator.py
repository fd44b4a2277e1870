"""`controller.kind: central-v2` over real HTTP against the emulator's New Central API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.controllers import HOST, apply_all, changes, posts
from ztplan.errors import ControllerError
from ztplan.model import Action, Change
from ztplan.providers.controller import Controller, controller_client
from ztplan.spec import Spec, parse_spec
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
UNKNOWN = "8056c2e21c00beef"
KEY = "ztsa-key-0123456789abcdef"
SPEC = f"""\
version: 1
target: {{name: gw}}
controller: {{kind: central-v2, token_env: ZT_V2_KEY}}
networks:
  - id: "{NWID}"
    routes:
      - {{target: 10.6.4.0/22}}
      - {{target: 0.0.0.0/0, via: 10.6.6.2}}
      - {{target: "2001:19f0:6001:1a6::/80"}}
    ip_pools: [{{start: 10.6.4.1, end: 10.6.7.254}}]
"""
ROUTES = [
    {"target": "0.0.0.0/0", "via": "10.6.6.2"},
    {"target": "10.6.4.0/22", "via": None},
    {"target": "2001:19f0:6001:1a6::/80", "via": None},
]


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=KEY) as emu:
        emu.add_network(NWID)
        yield emu


def spec_of(text: str = SPEC) -> Spec:
    return parse_spec(text, "spec.yaml")


def provider(
    emu: ControllerEmulator,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    key: str = KEY,
    nwid: str = NWID,
    text: str = SPEC,
) -> Controller:
    """Wired the way a run wires it: the key from token_env, the backend's header."""
    monkeypatch.setenv("ZT_V2_KEY", key)
    monkeypatch.delenv("ZTPLAN_CONTROLLER_TOKEN", raising=False)
    api = controller_client(spec_of(text), http, emu.url + "/api/v2")
    api.sleep = lambda s: None
    return Controller(api, "central-v2", [nwid])


def v2(emu: ControllerEmulator, http: httpx.Client, nwid: str = NWID) -> dict[str, Any]:
    answer = http.get(
        f"{emu.url}/api/v2/network/{nwid}", headers={"Authorization": f"Bearer {KEY}"}
    )
    assert answer.status_code == 200
    config: dict[str, Any] = answer.json()["config"]
    return config


def test_plan_of_a_fresh_network_shows_the_gateway_routes_and_pools(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(emulator, http, monkeypatch)
    assert [(c.action, c.address, c.before, c.after) for c in changes(p, spec_of())] == [
        (Action.UPDATE, f'controller.network["{NWID}"].routes', [], ROUTES),
        (
            Action.UPDATE,
            f'controller.network["{NWID}"].ip_pools',
            [],
            [{"start": "10.6.4.1", "end": "10.6.7.254"}],
        ),
    ]
    assert [m for m, _, _ in emulator.request_log] == ["GET"]  # a plan only reads
    assert emulator.request_log[0][1] == f"/api/v2/network/{NWID}"


def test_apply_converges_in_one_post_of_whole_lists(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, spec = provider(emulator, http, monkeypatch), spec_of()
    apply_all(p, spec)
    assert changes(p, spec) == []
    (body,) = posts(emulator)
    assert body == {
        "config": {
            "routes": ROUTES,  # `via` on every route, null on-link
            "v4IpAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
            "v6IpAssignmentPools": [],
        }
    }
    assert [m for m, _, _ in emulator.request_log] == ["GET", "GET", "POST", "GET", "GET"]
    config = v2(emulator, http)
    assert config["routes"] == ROUTES


def test_a_route_removed_by_hand_is_drift(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, spec = provider(emulator, http, monkeypatch), spec_of()
    apply_all(p, spec)
    by_hand = [r for r in ROUTES if r["target"] != "0.0.0.0/0"]
    answer = http.post(
        f"{emulator.url}/api/v2/network/{NWID}",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"config": {"routes": by_hand}},
    )
    assert answer.status_code == 200
    (change,) = changes(p, spec)
    assert (change.address, change.before, change.after) == (
        f'controller.network["{NWID}"].routes',
        by_hand,
        ROUTES,
    )
    apply_all(p, spec)
    assert changes(p, spec) == []


def test_a_pool_of_each_family_lands_in_its_own_list(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = SPEC.replace(
        "ip_pools: [{start: 10.6.4.1, end: 10.6.7.254}]",
        'ip_pools: [{start: "2001:19f0:6001:1a6::1", end: "2001:19f0:6001:1a6::ffff"}, '
        "{start: 10.6.4.1, end: 10.6.7.254}]",
    )
    p = provider(emulator, http, monkeypatch, text=both)
    apply_all(p, spec_of(both))
    config = v2(emulator, http)
    assert config["v4IpAssignmentPools"] == [
        {"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}
    ]
    assert config["v6IpAssignmentPools"] == [
        {"ipRangeStart": "2001:19f0:6001:1a6::1", "ipRangeEnd": "2001:19f0:6001:1a6::ffff"}
    ]
    assert changes(p, spec_of(both)) == []
    apply_all(p, spec_of())  # back to the IPv4 pool alone: the v6 list is emptied, not left
    assert v2(emulator, http)["v6IpAssignmentPools"] == []
    assert changes(p, spec_of()) == []


def test_a_400_with_details_is_one_line_naming_the_field(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Something the spec let through and New Central refuses (here: a change built by hand)."""
    p = provider(emulator, http, monkeypatch)
    before = v2(emulator, http)
    bad = Change(
        address=f'controller.network["{NWID}"].routes',
        provider="controller",
        action=Action.UPDATE,
        before=[],
        after=[{"target": "10.6.4.0/33", "via": None}],
    )
    with pytest.raises(ControllerError) as error:
        p.apply(HOST, [bad], {})
    assert str(error.value) == (
        f"controller: POST {emulator.url}/api/v2/network/{NWID} answered 400: request "
        "validation failed (config.routes[0].target: must be a CIDR (address/prefix))"
    )
    assert v2(emulator, http) == before


def test_a_401_says_the_key_may_have_expired_and_never_prints_it(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.v2_key_expired = True
    p = provider(emulator, http, monkeypatch)
    with pytest.raises(ControllerError) as error:
        p.read(HOST)
    message = str(error.value)
    assert message == (
        f"controller: GET {emulator.url}/api/v2/network/{NWID} answered 401: New Central "
        "refused the API key (invalid or expired API key); service-account keys expire, so it "
        "may have expired or been revoked: create a new key for the service account and put it "
        "where token_env / token_file points"
    )
    assert KEY not in message and KEY not in repr(error.value)


def test_a_wrong_key_is_never_printed(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(emulator, http, monkeypatch, key="wrong-key-value-42")
    with pytest.raises(ControllerError, match="answered 401: New Central refused") as error:
        p.read(HOST)
    assert "wrong-key-value-42" not in str(error.value) and KEY not in str(error.value)


def test_an_unknown_network_id_is_refused_with_nothing_created(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = provider(emulator, http, monkeypatch, nwid=UNKNOWN)
    expected = (
        f"controller: network {UNKNOWN} does not exist in this New Central organisation "
        f"({emulator.url}/api/v2 answered 404; ztplan does not create networks): check the id, "
        "and that the API key's service account belongs to the network's organisation"
    )
    with pytest.raises(ControllerError) as error:
        p.read(HOST)
    assert str(error.value) == expected
    typo = Change(
        address=f'controller.network["{UNKNOWN}"].routes',
        provider="controller",
        action=Action.UPDATE,
        before=[],
        after=ROUTES,
    )
    with pytest.raises(ControllerError) as error:
        p.apply(HOST, [typo], {})
    assert str(error.value) == expected
    assert posts(emulator) == []
    listed = http.get(f"{emulator.url}/api/v2/network", headers={"Authorization": f"Bearer {KEY}"})
    assert [n["id"] for n in listed.json()["items"]] == [NWID]


def test_a_network_the_key_may_not_touch_is_403_with_the_url(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.central_denied.add(NWID)
    with pytest.raises(ControllerError) as error:
        provider(emulator, http, monkeypatch).read(HOST)
    assert str(error.value).startswith(
        f"controller: GET {emulator.url}/api/v2/network/{NWID} answered 403: the API key may "
        "not do this (forbidden); service-account keys expire"
    )


def test_a_service_that_merges_lists_is_caught_by_the_re_read(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other reading of the undocumented update semantics: the guard names the field."""
    emulator.add_network(NWID, routes=[{"target": "10.9.0.0/16"}])
    emulator.v2_lists = "merge"
    p, spec = provider(emulator, http, monkeypatch), spec_of()
    with pytest.raises(ControllerError) as error:
        apply_all(p, spec)
    assert str(error.value).startswith(
        f"controller: network {NWID} did not keep its routes (config.routes): sent "
        '[{"target": "0.0.0.0/0", "via": "10.6.6.2"}, '
    )
    assert '{"target": "10.9.0.0/16", "via": null}' in str(error.value).split("stored")[1]
    assert str(error.value).endswith(
        "; New Central does not document whether an update replaces or merges lists, and "
        "ztplan sent them whole"
    )


def test_rollback_puts_the_old_lists_back(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator.add_network(NWID, routes=[{"target": "10.9.0.0/16"}])
    p, spec = provider(emulator, http, monkeypatch), spec_of()
    snapshot = p.read(HOST)
    planned = apply_all(p, spec)
    p.rollback(HOST, snapshot, planned)
    assert p.read(HOST).digest == snapshot.digest
    assert v2(emulator, http)["routes"] == [{"target": "10.9.0.0/16", "via": None}]


def test_subnets_and_assign_modes_plan_apply_and_converge(
    emulator: ControllerEmulator, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SPEC + (
        "    v4_subnet: 10.6.4.0/22\n    v6_subnet: '2001:19f0:6001:1a6::/64'\n"
        "    v4_assign_mode: {zt: true}\n    v6_assign_mode: {rfc4193: true}\n"
    )
    p = provider(emulator, http, monkeypatch, text=text)
    assert [c.address.rsplit(".", 1)[1] for c in changes(p, spec_of(text))] == [
        "routes",
        "ip_pools",
        "v4_assign_mode",
        "v6_assign_mode",
        "v4_subnet",
        "v6_subnet",
    ]
    apply_all(p, spec_of(text))
    assert changes(p, spec_of(text)) == []
    config = v2(emulator, http)
    assert (config["v4Subnet"], config["v6Subnet"]) == ("10.6.4.0/22", "2001:19f0:6001:1a6::/64")
    assert config["v4AssignmentMode"] == {"zt": True}
    # All three keys sent: required inside the object (CENTRAL-V2.md §4).
    assert posts(emulator)[0]["config"]["v6AssignmentMode"] == {
        "6plane": False,
        "rfc4193": True,
        "zt": False,
    }


@pytest.mark.parametrize("fault", [{"status_5xx": 2}, {"rate_limit_429": 2}])
def test_the_v1_retry_policy_applies(
    emulator: ControllerEmulator,
    http: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    fault: dict[str, int],
) -> None:
    waits: list[float] = []
    p, spec = provider(emulator, http, monkeypatch), spec_of()
    p.api.sleep = waits.append
    emulator.faults.retry_after = "3"
    for name, value in fault.items():
        setattr(emulator.faults, name, value)
    apply_all(p, spec)
    assert changes(p, spec) == []
    assert waits == ([3.0, 3.0] if "rate_limit_429" in fault else [0.5, 1.0])
