"""`mtu` and `dns` on all three controller kinds, over real HTTP against the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.controllers import HOST, apply_all, changes, posts
from ztplan.api import ApiClient
from ztplan.errors import ControllerError
from ztplan.model import Action, Change
from ztplan.providers.controller import Controller
from ztplan.providers.controller_backend import BACKENDS
from ztplan.spec import Spec, parse_spec
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
TOKEN = "s3cr3t-t0ken-for-mtu"
KINDS = ["central", "central-v2", "local"]
SUFFIX = {"central": "/api/v1", "central-v2": "/api/v2", "local": ""}
DNS = {"domain": "zt.example.com", "servers": ["10.6.6.2", "2001:19f0:6001:1a6::2"]}


def spec_of(kind: str, settings: str) -> Spec:
    return parse_spec(
        f"version: 1\ntarget: {{name: gw}}\ncontroller: {{kind: {kind}}}\n"
        f'networks:\n  - id: "{NWID}"\n{settings}',
        "spec.yaml",
    )


MANAGED = (
    "    mtu: 1500\n"
    "    dns: {domain: zt.example.com, servers: [10.6.6.2, '2001:19f0:6001:1a6::2']}\n"
)
NO_DNS = "    dns: {domain: '', servers: []}\n"


@pytest.fixture
def emulator() -> Iterator[ControllerEmulator]:
    with ControllerEmulator(token=TOKEN) as emu:
        emu.add_network(NWID)
        yield emu


def provider(emu: ControllerEmulator, http: httpx.Client, kind: str) -> Controller:
    backend = BACKENDS[kind]
    api = ApiClient(
        emu.url + SUFFIX[kind],
        backend.headers(TOKEN),
        http,
        sleep=lambda s: None,
        describe_error=backend.describe_error,
    )
    return Controller(api, kind, [NWID])


@pytest.mark.parametrize("kind", KINDS)
def test_mtu_and_dns_plan_apply_and_converge(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    p, spec = provider(emulator, http, kind), spec_of(kind, MANAGED)
    assert [(c.address, c.before, c.after) for c in changes(p, spec)] == [
        (f'controller.network["{NWID}"].mtu', 2800, 1500),
        (f'controller.network["{NWID}"].dns', {"domain": "", "servers": []}, DNS),
    ]
    apply_all(p, spec)
    assert changes(p, spec) == []
    stored = emulator.network(NWID)  # the one store behind the three APIs
    assert (stored["mtu"], stored["dns"]) == (1500, DNS)
    (body,) = posts(emulator)
    settings = body if kind == "local" else body["config"]
    assert settings == {"mtu": 1500, "dns": DNS}  # both dns keys, the servers in order


@pytest.mark.parametrize("kind", KINDS)
def test_no_dns_on_a_fresh_network_is_not_drift(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    """`[]` on the self-hosted controller, `{"domain": "", "servers": null}` on Legacy Central."""
    assert changes(provider(emulator, http, kind), spec_of(kind, NO_DNS)) == []


@pytest.mark.parametrize("kind", KINDS)
def test_dns_is_cleared_and_the_server_order_is_drift(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    p = provider(emulator, http, kind)
    apply_all(p, spec_of(kind, MANAGED))
    swapped = MANAGED.replace(
        "[10.6.6.2, '2001:19f0:6001:1a6::2']", "['2001:19f0:6001:1a6::2', 10.6.6.2]"
    )
    (change,) = changes(p, spec_of(kind, swapped))  # the first server is the one tried first
    assert change.address.endswith(".dns")
    apply_all(p, spec_of(kind, NO_DNS))
    assert changes(p, spec_of(kind, NO_DNS)) == []
    assert emulator.network(NWID)["dns"] == {"domain": "", "servers": []}


@pytest.mark.parametrize("kind", KINDS)
def test_unmanaged_mtu_and_dns_are_left_alone(
    emulator: ControllerEmulator, http: httpx.Client, kind: str
) -> None:
    emulator.add_network(NWID, mtu=9000, dns={"domain": "lan", "servers": ["10.0.0.53"]})
    p = provider(emulator, http, kind)
    spec = spec_of(kind, "    routes: [{target: 10.6.4.0/22}]\n")
    apply_all(p, spec)
    assert changes(p, spec) == []
    assert "mtu" not in str(posts(emulator)) and "dns" not in str(posts(emulator))
    assert emulator.network(NWID)["mtu"] == 9000


def test_a_clamped_mtu_is_caught_by_the_re_read(
    emulator: ControllerEmulator, http: httpx.Client
) -> None:
    """The self-hosted controller clamps to [1280, 10000] without a word; the spec refuses
    such values, and the re-read catches one that got through anyway."""
    p = provider(emulator, http, "local")
    clamped = Change(
        address=f'controller.network["{NWID}"].mtu',
        provider="controller",
        action=Action.UPDATE,
        before=2800,
        after=99999,
    )
    with pytest.raises(ControllerError) as error:
        p.apply(HOST, [clamped], {})
    assert str(error.value) == (
        f"controller: network {NWID} did not keep its mtu: sent 99999, stored 10000"
    )
