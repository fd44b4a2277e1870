"""The network controller: managed routes and IP pools of each network in the spec.

Two backends behind one interface, chosen by `controller.kind` (CONTROLLER-API.md):
  local    self-hosted controller, `/controller/network/{nwid}`, flat object, `X-ZT1-Auth`
  central  ZeroTier Central, `/network/{id}`, settings under `config`, `Authorization: token`

The self-hosted controller never rejects bad data (it drops or rewrites it and answers
200), and POST creates a network that does not exist. So ztplan validates everything in
the spec, GETs before it POSTs (a 404 is an error, never "create"), POSTs whole lists of
only the changed fields, and re-reads to check the controller kept exactly what was sent.

Addresses:  controller.network["<nwid>"].routes   sorted list of {target, via}
            controller.network["<nwid>"].ip_pools sorted list of {start, end}
Lists are sorted on both sides: a controller that reorders routes shows no drift.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import JsonValue

from ztplan.api import ApiClient, NotFound, shown_url
from ztplan.errors import ControllerError
from ztplan.host import Host
from ztplan.model import Address, Change, Finding, Resource, Snapshot
from ztplan.spec import Spec

__all__ = ["DEFAULT_URLS", "Controller", "controller_client", "network_address"]

DEFAULT_URLS = {"central": "https://api.zerotier.com/api/v1", "local": "http://127.0.0.1:9993"}
DEFAULT_TOKEN = {
    "central": ("ZEROTIER_CENTRAL_TOKEN", None),
    "local": (None, "/var/lib/zerotier-one/authtoken.secret"),
}
FIELDS = {
    "routes": "routes",
    "ip_pools": "ipAssignmentPools",
    "v4_assign_mode": "v4AssignMode",
    "v6_assign_mode": "v6AssignMode",
}


def network_address(nwid: str, field: str) -> Address:
    return f'controller.network["{nwid}"].{field}'


def _canonical_network(text: str) -> str:
    """Same spelling on both sides: IPv6 compressed, lowercase; host bits kept (the
    controller keeps them, so they are drift worth seeing)."""
    try:
        return str(ipaddress.ip_interface(text))
    except ValueError:
        return text


def _canonical_address(text: Any) -> str | None:
    if text in (None, ""):
        return None
    try:
        return str(ipaddress.ip_address(str(text).split("/")[0]))
    except ValueError:
        return str(text)


def _items(value: Any) -> list[Any]:
    """A list from the controller's JSON, or none: `"routes": 5` is not iterable."""
    return value if isinstance(value, list) else []


def normalise_routes(routes: Any) -> list[JsonValue]:
    """Controller or spec routes -> sorted [{target, via}] (a missing via is on-link: None)."""
    out: list[dict[str, JsonValue]] = [
        {
            "target": _canonical_network(str(r.get("target"))),
            "via": _canonical_address(r.get("via")),
        }
        for r in _items(routes)
        if isinstance(r, dict)
    ]
    out.sort(key=lambda r: (str(r["target"]), str(r["via"] or "")))
    result: list[JsonValue] = [*out]
    return result


def normalise_pools(pools: Any) -> list[JsonValue]:
    out: list[dict[str, JsonValue]] = [
        {
            "start": _canonical_address(p.get("ipRangeStart", p.get("start"))),
            "end": _canonical_address(p.get("ipRangeEnd", p.get("end"))),
        }
        for p in _items(pools)
        if isinstance(p, dict)
    ]
    out.sort(key=lambda p: (str(p["start"]), str(p["end"])))
    result: list[JsonValue] = [*out]
    return result


def normalise_mode(mode: Any, keys: tuple[str, ...]) -> dict[str, JsonValue]:
    """An assign mode with every key present (a missing key is false to the controller)."""
    given = mode if isinstance(mode, dict) else {}
    return {key: bool(given.get(key, False)) for key in keys}


V4_KEYS = ("zt",)
V6_KEYS = ("6plane", "rfc4193", "zt")


def _live_values(config: dict[str, Any]) -> dict[str, JsonValue]:
    return {
        "routes": normalise_routes(config.get("routes")),
        "ip_pools": normalise_pools(config.get("ipAssignmentPools")),
        "v4_assign_mode": normalise_mode(config.get("v4AssignMode"), V4_KEYS),
        "v6_assign_mode": normalise_mode(config.get("v6AssignMode"), V6_KEYS),
    }


def _to_api(field: str, value: JsonValue) -> Any:
    if field.endswith("_assign_mode"):
        return value  # whole objects: the controller keeps only the keys it is sent
    items = value if isinstance(value, list) else []
    if field == "routes":
        return [{"target": r["target"], "via": r["via"]} for r in items if isinstance(r, dict)]
    return [
        {"ipRangeStart": p["start"], "ipRangeEnd": p["end"]} for p in items if isinstance(p, dict)
    ]


def controller_client(spec: Spec, http_client: Any, base_url: str | None = None) -> ApiClient:
    """The controller's ApiClient, with the token from the environment or a file."""
    from ztplan.api import read_token

    assert spec.controller is not None
    kind = spec.controller.kind
    env, file = DEFAULT_TOKEN[kind]
    if spec.controller.token_env or spec.controller.token_file:
        env, file = spec.controller.token_env, spec.controller.token_file
    if os.environ.get("ZTPLAN_CONTROLLER_TOKEN"):  # for a staging controller or the sandbox
        env, file = "ZTPLAN_CONTROLLER_TOKEN", None
    token = read_token(env, file, "controller")
    headers = {"Authorization": f"token {token}"} if kind == "central" else {"X-ZT1-Auth": token}
    url = base_url or spec.controller.url or DEFAULT_URLS[kind]
    return ApiClient(base_url=url, headers=headers, client=http_client, what="controller")


class Controller:
    name: ClassVar[str] = "controller"

    def __init__(self, api: ApiClient, kind: str, networks: Sequence[str]) -> None:
        self.api = api
        self.kind = kind
        self.networks = list(networks)

    def manages(self, spec: Spec) -> bool:
        return spec.controller is not None and bool(spec.networks)

    def _path(self, nwid: str) -> str:
        return f"/network/{nwid}" if self.kind == "central" else f"/controller/network/{nwid}"

    def _get(self, nwid: str) -> dict[str, Any]:
        try:
            answer = self.api.get(self._path(nwid))
        except NotFound:
            raise ControllerError(
                f"controller: network {nwid} does not exist on the {self.kind} controller at "
                f"{shown_url(self.api.base_url)} (ztplan does not create networks; check the id)",
                404,
            ) from None
        if not isinstance(answer, dict):
            raise ControllerError(f"controller: network {nwid}: the answer is not an object")
        config = answer.get("config") if self.kind == "central" else answer
        if not isinstance(config, dict):
            raise ControllerError(f"controller: network {nwid}: the answer has no settings")
        return config

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out: dict[Address, Resource] = {}
        for network in spec.networks:
            if network.routes is not None:
                routes = normalise_routes([r.model_dump() for r in network.routes])
                out[network_address(network.id, "routes")] = Resource(
                    network_address(network.id, "routes"), routes
                )
            if network.ip_pools is not None:
                pools = normalise_pools([p.model_dump() for p in network.ip_pools])
                out[network_address(network.id, "ip_pools")] = Resource(
                    network_address(network.id, "ip_pools"), pools
                )
            for field, mode, keys in (
                ("v4_assign_mode", network.v4_assign_mode, V4_KEYS),
                ("v6_assign_mode", network.v6_assign_mode, V6_KEYS),
            ):
                if mode is not None:
                    value = normalise_mode(mode.model_dump(by_alias=True), keys)
                    out[network_address(network.id, field)] = Resource(
                        network_address(network.id, field), value
                    )
        return out

    def read(self, host: Host) -> Snapshot:
        """Each network once; several at a time (the shared client is thread-safe)."""
        with ThreadPoolExecutor(max_workers=min(8, max(len(self.networks), 1))) as pool:
            configs = dict(zip(self.networks, pool.map(self._get, self.networks), strict=True))
        resources: dict[Address, Resource] = {}
        raw: dict[str, dict[str, JsonValue]] = {}
        for nwid, config in configs.items():
            values = _live_values(config)
            raw[nwid] = dict(values)
            for field, value in values.items():
                address = network_address(nwid, field)
                resources[address] = Resource(address, value, owned=False)
        return Snapshot.of(resources, raw=raw)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        return []

    def _post(self, nwid: str, fields: Mapping[str, JsonValue]) -> None:
        body = {FIELDS[f]: _to_api(f, v) for f, v in fields.items()}
        self.api.post(self._path(nwid), {"config": body} if self.kind == "central" else body)
        # Re-read: the controller answers 200 to data it silently dropped or rewrote.
        stored = self._get(nwid)
        kept = _live_values(stored)
        for field, value in fields.items():
            if kept[field] != value:
                raise ControllerError(
                    f"controller: network {nwid} did not keep its {field}: "
                    f"sent {json.dumps(value)}, stored {json.dumps(kept[field])}"
                )

    def apply(
        self,
        host: Host,
        changes: Sequence[Change],
        desired: Mapping[Address, JsonValue],
        before: Snapshot | None = None,
    ) -> None:
        by_network: dict[str, dict[str, JsonValue]] = {}
        for change in changes:
            nwid = change.address.split('"')[1]
            field = change.address.rsplit(".", 1)[1]
            by_network.setdefault(nwid, {})[field] = change.after
        for nwid, fields in by_network.items():
            self._get(nwid)  # GET first: a POST to a missing network would create it
            self._post(nwid, fields)

    def rollback(self, host: Host, before: Snapshot) -> None:
        raw = before.raw if isinstance(before.raw, dict) else {}
        for nwid, values in raw.items():
            current = self.read_one(nwid)
            changed = {f: v for f, v in values.items() if current.get(f) != v}
            if changed:
                self._post(nwid, changed)

    def read_one(self, nwid: str) -> dict[str, JsonValue]:
        return _live_values(self._get(nwid))
