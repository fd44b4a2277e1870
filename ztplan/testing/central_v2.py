"""New Central (API v2) for the controller emulator, served at ``url + "/api/v2"``.

Documented behaviour (``shared/CENTRAL-V2.md``, "the doc"), reproduced as documented:
``Authorization: Bearer <key>``; networks under one organisation and network group;
``GET``/``POST``/``DELETE /network/{id}`` with the settings nested under ``config`` and v2's
names (``v4IpAssignmentPools``, ``v6AssignmentMode``, ``v4Subnet``...), ``name`` at the top
level, ``creationTime``/``lastModified`` as RFC 3339 strings; updates partial at the top level
and inside ``config``, and the full network in the answer; every key required inside a
provided sub-object (route, range, assign mode, dns); ``400 {code, message, details:
[{field, message}]}``, ``401``/``403`` ``{message}``, ``404`` with no body and no
Content-Type; lists as ``{items: [...]}`` with no pagination; no rate limit.

What the doc leaves open is ASSUMED here: each assumption is an entry of ``ASSUMPTIONS``
and its name is marked ``ASSUMED (name)`` where it is done, so that the day the live
behaviour is known only this module changes.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ztplan.testing.emulator import ControllerEmulator, Reply, _Handler

__all__ = ["ASSUMPTIONS", "GROUP_ID", "ORG_ID", "serve"]

ASSUMPTIONS = {
    "lists": "an update replaces a provided list (routes, each pool list, dns.servers) whole; "
    "`ControllerEmulator.v2_lists = 'merge'` emulates the other reading (new items appended)",
    "validation": "the service checks what its schema types (CIDR, addresses, families, mtu "
    "1280-10000, start <= end) and refuses bad input with 400 + details, where the self-hosted "
    "controller silently drops it",
    "field": "a detail's `field` is the dotted path of the request key, `config.routes[0].via`",
    "via": "a route without a `via` key is refused (the schema lists it as required)",
    "unknown": "unknown request keys are refused with 400 (additionalProperties is unknown)",
    "unset": 'an unset subnet reads as "" and "" clears it; no DNS reads as '
    '{"domain": "", "servers": []}',
    "expiry": "an expired key is answered 401 {message}, like a wrong one",
    "other org": "a network of another organisation is answered 404, like a missing one",
    "summary": "list items carry id, name, description, networkGroupId, kind and the two "
    "timestamps",
    "size": "a body over 1 MiB is answered 413 {message}",
    "visibility": "every network of the emulator is in the key's one organisation",
}
"""What the emulator does where CENTRAL-V2.md says the behaviour is not known."""

ORG_ID = "00000000-0000-4000-8000-00000000a001"
GROUP_ID = "00000000-0000-4000-8000-00000000b001"
_MAX_BODY = 1 << 20  # ASSUMED (size)
_JSON = "application/json"
_NOT_FOUND: Reply = (404, b"", {})  # documented: no content type
_V6_KEYS = ("6plane", "rfc4193", "zt")


def _json(status: int, value: Any) -> Reply:
    return status, json.dumps(value, separators=(",", ":")).encode(), {"Content-Type": _JSON}


def _message(status: int, message: str) -> Reply:
    return _json(status, {"message": message})


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --- request validation: ASSUMED (validation, field, via, unknown) --------------------------


def _address(value: Any, version: int | None = None) -> str | None:
    """Why `value` is not an IP address (of `version`), or None."""
    try:
        address = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        address = None
    if address is None:
        return "must be an IP address"
    if version is not None and address.version != version:
        return f"must be an IPv{version} address"
    return None


def _cidr(value: Any, version: int | None = None) -> str | None:
    if not isinstance(value, str) or "/" not in value:
        return "must be a CIDR (address/prefix)"
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be a CIDR (address/prefix)"
    if version is not None and network.version != version:
        return f"must be an IPv{version} CIDR"
    return None


def _exact_keys(where: str, value: Any, keys: tuple[str, ...], out: list[dict[str, str]]) -> bool:
    if not isinstance(value, dict):
        out.append({"field": where, "message": "must be an object"})
        return False
    for key in keys:
        if key not in value:
            out.append({"field": f"{where}.{key}", "message": "is required"})
    for key in sorted(set(value) - set(keys)):
        out.append({"field": f"{where}.{key}", "message": "is not a known field"})
    return all(key in value for key in keys)


def _check_config(config: Any, out: list[dict[str, str]]) -> None:
    if not isinstance(config, dict):
        out.append({"field": "config", "message": "must be an object"})
        return
    for key, value in config.items():
        where = f"config.{key}"
        if key in ("private", "enableBroadcast"):
            if not isinstance(value, bool):
                out.append({"field": where, "message": "must be a boolean"})
        elif key in ("mtu", "multicastLimit"):
            low, high = (1280, 10000) if key == "mtu" else (0, 1 << 31)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                out.append({"field": where, "message": f"must be an integer {low}-{high}"})
        elif key == "routes":
            _check_list(where, value, out, _check_route)
        elif key in ("v4IpAssignmentPools", "v6IpAssignmentPools"):
            version = 4 if key.startswith("v4") else 6
            _check_list(where, value, out, functools.partial(_check_range, version=version))
        elif key in ("v4Subnet", "v6Subnet"):
            problem = _cidr(value, 4 if key == "v4Subnet" else 6) if value != "" else None
            if problem:
                out.append({"field": where, "message": problem})
        elif key in ("v4AssignmentMode", "v6AssignmentMode"):
            keys = ("zt",) if key == "v4AssignmentMode" else _V6_KEYS
            if _exact_keys(where, value, keys, out):
                for k in keys:
                    if not isinstance(value[k], bool):
                        out.append({"field": f"{where}.{k}", "message": "must be a boolean"})
        elif key == "dns":
            if _exact_keys(where, value, ("domain", "servers"), out):
                if not isinstance(value["domain"], str):
                    out.append({"field": f"{where}.domain", "message": "must be a string"})
                _check_list(f"{where}.servers", value["servers"], out, _check_server)
        else:
            out.append({"field": where, "message": "is not a known field"})


def _check_list(
    where: str, value: Any, out: list[dict[str, str]], check: Callable[..., None]
) -> None:
    if not isinstance(value, list):
        out.append({"field": where, "message": "must be an array"})
        return
    for i, item in enumerate(value):
        check(f"{where}[{i}]", item, out)


def _check_route(where: str, route: Any, out: list[dict[str, str]]) -> None:
    if not _exact_keys(where, route, ("target", "via"), out):
        return
    problem = _cidr(route["target"])
    if problem:
        out.append({"field": f"{where}.target", "message": problem})
    elif route["via"] is not None:
        version = ipaddress.ip_network(route["target"], strict=False).version
        problem = _address(route["via"], version)
        if problem:
            out.append({"field": f"{where}.via", "message": problem + " or null"})


def _check_range(where: str, pool: Any, out: list[dict[str, str]], *, version: int) -> None:
    if not _exact_keys(where, pool, ("ipRangeStart", "ipRangeEnd"), out):
        return
    problems = [(k, _address(pool[k], version)) for k in ("ipRangeStart", "ipRangeEnd")]
    for key, problem in problems:
        if problem:
            out.append({"field": f"{where}.{key}", "message": problem})
    start, end = pool["ipRangeStart"], pool["ipRangeEnd"]
    if not any(p for _, p in problems) and int(ipaddress.ip_address(start)) > int(
        ipaddress.ip_address(end)
    ):
        out.append({"field": f"{where}.ipRangeEnd", "message": "must not be below ipRangeStart"})


def _check_server(where: str, server: Any, out: list[dict[str, str]]) -> None:
    problem = _address(server)
    if problem:
        out.append({"field": where, "message": problem})


def _check_body(body: Any, create: bool) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if not isinstance(body, dict):
        return [{"field": "", "message": "the body must be a JSON object"}]
    if create and "name" not in body:
        out.append({"field": "name", "message": "is required"})
    for key, value in body.items():
        if key in ("name", "description"):
            if not isinstance(value, str):
                out.append({"field": key, "message": "must be a string"})
        elif key == "config":
            _check_config(value, out)
        else:
            out.append({"field": key, "message": "is not a known field"})
    return out


def _bad_request(details: list[dict[str, str]]) -> Reply:
    return _json(400, {"code": 400, "message": "request validation failed", "details": details})


# --- the store: the emulator's flat (self-hosted) objects, plus v2's own fields in _meta -----


def _merged(old: list[Any], new: list[Any], merge: bool) -> list[Any]:
    # ASSUMED (lists): replaced whole; "merge" appends what is not there yet.
    return old + [x for x in new if x not in old] if merge else list(new)


def _apply_update(emu: ControllerEmulator, nwid: str, body: dict[str, Any]) -> None:
    """Apply a validated update (caller holds the lock)."""
    config: dict[str, Any] = body.get("config") or {}
    old = emu._nets[nwid]
    merge = emu.v2_lists == "merge"
    flat: dict[str, Any] = {}
    for key in ("private", "enableBroadcast", "mtu", "multicastLimit"):
        if key in config:
            flat[key] = config[key]
    if "name" in body:
        flat["name"] = body["name"]
    if "routes" in config:
        have = [{"target": r["target"], "via": r["via"]} for r in old["routes"]]
        flat["routes"] = _merged(have, config["routes"], merge)
    pools = _pools_by_family(old["ipAssignmentPools"])
    for version in (4, 6):
        key = f"v{version}IpAssignmentPools"
        if key in config:
            pools[version] = _merged(pools[version], config[key], merge)
    if any(f"v{v}IpAssignmentPools" in config for v in (4, 6)):
        flat["ipAssignmentPools"] = pools[4] + pools[6]
    if "v4AssignmentMode" in config:
        flat["v4AssignMode"] = config["v4AssignmentMode"]
    if "v6AssignmentMode" in config:
        flat["v6AssignMode"] = config["v6AssignmentMode"]
    if "dns" in config:
        servers = _dns(old)["servers"]
        flat["dns"] = {
            "domain": config["dns"]["domain"],
            "servers": _merged(servers, config["dns"]["servers"], merge),
        }
    emu._update(nwid, flat, central=True)
    meta = emu._meta[nwid]
    extra: dict[str, Any] = {k: config[k] for k in ("v4Subnet", "v6Subnet") if k in config}
    if "description" in body:
        extra["description"] = body["description"]
    if any(meta.get(k, "") != v for k, v in extra.items()):
        meta.update(extra)
        now = int(datetime.now(UTC).timestamp() * 1000)
        meta["lastModified"] = max(now, meta["lastModified"] + 1)


def _pools_by_family(pools: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {4: [], 6: []}
    for pool in pools:
        out[6 if ":" in pool["ipRangeStart"] else 4].append(dict(pool))
    return out


def _dns(n: dict[str, Any]) -> dict[str, Any]:
    # ASSUMED (unset): no DNS reads as {"domain": "", "servers": []}.
    dns = n["dns"] if isinstance(n["dns"], dict) else {}
    return {"domain": dns.get("domain") or "", "servers": list(dns.get("servers") or [])}


def view(emu: ControllerEmulator, nwid: str) -> dict[str, Any]:
    """The NetworkResponse of ``nwid`` (caller holds the lock)."""
    n, meta = emu._nets[nwid], emu._meta[nwid]
    pools = _pools_by_family(n["ipAssignmentPools"])
    v6 = n["v6AssignMode"]  # the self-hosted store may lack keys: v2's schema has all three
    return {
        **summary(emu, nwid),
        "config": {
            "private": n["private"],
            "enableBroadcast": n["enableBroadcast"],
            "mtu": n["mtu"],
            "multicastLimit": n["multicastLimit"],
            "routes": [{"target": r["target"], "via": r["via"]} for r in n["routes"]],
            "v4Subnet": meta.get("v4Subnet", ""),  # ASSUMED (unset)
            "v4IpAssignmentPools": pools[4],
            "v4AssignmentMode": {"zt": bool(n["v4AssignMode"].get("zt"))},
            "v6Subnet": meta.get("v6Subnet", ""),
            "v6IpAssignmentPools": pools[6],
            "v6AssignmentMode": {k: bool(v6.get(k)) for k in _V6_KEYS},
            "dns": _dns(n),
        },
    }


def summary(emu: ControllerEmulator, nwid: str) -> dict[str, Any]:
    """A list item: ASSUMED (summary)."""
    n, meta = emu._nets[nwid], emu._meta[nwid]
    return {
        "id": nwid,
        "name": n["name"],
        "description": meta["description"],
        "networkGroupId": GROUP_ID,
        "kind": "v1",
        "creationTime": _iso(n["creationTime"]),
        "lastModified": _iso(meta["lastModified"] or n["creationTime"]),
    }


# --- routing ---------------------------------------------------------------------------------


def serve(emu: ControllerEmulator, h: _Handler, path: str, raw: bytes) -> Reply:
    """Answer one request to ``/api/v2`` + ``path``."""
    scheme, _, key = (h.headers.get("Authorization") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return _message(401, "missing or malformed Authorization header")
    if emu.v2_key_expired or not hmac.compare_digest(key.strip().encode(), emu._token):
        return _message(401, "invalid or expired API key")  # ASSUMED (expiry)
    if len(raw) > _MAX_BODY:
        return _message(413, "request body too large")
    method = h.command
    with emu._lock:
        if method == "GET" and path == "/org":
            return _json(200, {"items": [{"id": ORG_ID, "name": "ztplan emulator"}]})
        if method == "GET" and path in ("/network-group", f"/org/{ORG_ID}/network-group"):
            return _json(200, {"items": [{"id": GROUP_ID, "name": "Default", "orgId": ORG_ID}]})
        if method == "GET" and path in ("/network", f"/network-group/{GROUP_ID}/network"):
            # ASSUMED (visibility); no pagination parameter exists (documented)
            return _json(200, {"items": [summary(emu, n) for n in sorted(emu._nets)]})
    if method == "POST" and path == f"/network-group/{GROUP_ID}/network":
        return _create(emu, raw)
    m = re.fullmatch(r"/network/([^/]+)", path)
    if m is None or method not in ("GET", "POST", "DELETE"):
        return _NOT_FOUND
    nwid = m[1]
    if nwid in emu.central_denied:
        return _message(403, "forbidden")
    with emu._lock:
        if nwid not in emu._nets:  # ASSUMED (other org): the same 404
            return _NOT_FOUND
        if method == "GET":
            return _json(200, view(emu, nwid))
        if method == "DELETE":
            emu._delete(nwid)
            return _json(200, {"message": "network deleted"})
    body = _parse(raw)
    details = _check_body(body, create=False)
    if details:
        return _bad_request(details)
    with emu._lock:
        if nwid not in emu._nets:
            return _NOT_FOUND
        _apply_update(emu, nwid, body)
        return _json(200, view(emu, nwid))


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _create(emu: ControllerEmulator, raw: bytes) -> Reply:
    body = _parse(raw)
    details = _check_body(body, create=True)
    if details:
        return _bad_request(details)
    with emu._lock:
        nwid = emu._new_id()
        emu._update(nwid, {"name": body["name"]}, central=True)
        _apply_update(emu, nwid, body)
        return _json(200, view(emu, nwid))
