"""One backend per controller kind: where a network lives, how the token travels, and how
the provider's values map onto that API's network object (CONTROLLER-API.md, CENTRAL-V2.md).

    kind        path                      auth                     settings
    local       /controller/network/{id}  X-ZT1-Auth: T            flat object
    central     /network/{id}             Authorization: token T   under `config`
    central-v2  /network/{id}             Authorization: Bearer T  under `config`, v2 names

Values are the same for every kind, so plans read alike and the diff never sees an API:

    routes          sorted [{target, via}], via None on-link (omitted, null and "" alike)
    ip_pools        sorted [{start, end}], both families in one list
    v4_assign_mode  {zt}                   v6_assign_mode  {6plane, rfc4193, zt}
    mtu             int, None when the answer has none
    dns             {domain, servers}; "no DNS" ([] on a self-hosted controller, Legacy
                    Central's {"domain": "", "servers": null}) is {"domain": "", "servers": []}
    v4_subnet, v6_subnet   canonical CIDR or None (central-v2 only)

A backend turns changed values into a request body (`body`) and an answer into values
(`values`); the provider does GET, POST, GET and the comparison, the same for all kinds.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import JsonValue

__all__ = [
    "BACKENDS",
    "Backend",
    "normalise_dns",
    "normalise_mode",
    "normalise_pools",
    "normalise_routes",
]

V4_KEYS = ("zt",)
V6_KEYS = ("6plane", "rfc4193", "zt")
NO_DNS: dict[str, JsonValue] = {"domain": "", "servers": []}


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


def normalise_mtu(mtu: Any) -> JsonValue:
    return mtu if isinstance(mtu, int) and not isinstance(mtu, bool) else None


def normalise_dns(dns: Any) -> dict[str, JsonValue]:
    """{domain, servers}, servers in their order (the first is tried first)."""
    if not isinstance(dns, dict):
        return dict(NO_DNS)
    servers = dns.get("servers") if isinstance(dns.get("servers"), list) else []
    domain = dns.get("domain")
    return {
        "domain": domain if isinstance(domain, str) else "",
        "servers": [_canonical_address(s) for s in servers or [] if s not in (None, "")],
    }


def normalise_subnet(subnet: Any) -> JsonValue:
    return _canonical_network(subnet) if isinstance(subnet, str) and subnet else None


def _routes_body(value: JsonValue) -> list[dict[str, Any]]:
    # `via` always sent, null for on-link: V2 lists it as required (CENTRAL-V2.md §4).
    return [{"target": r["target"], "via": r["via"]} for r in _items(value) if isinstance(r, dict)]


def _pools_body(value: JsonValue, version: int | None = None) -> list[dict[str, Any]]:
    return [
        {"ipRangeStart": p["start"], "ipRangeEnd": p["end"]}
        for p in _items(value)
        if isinstance(p, dict)
        and (version is None or ipaddress.ip_address(str(p["start"])).version == version)
    ]


def _dns_body(value: JsonValue) -> dict[str, Any]:
    dns = value if isinstance(value, dict) else NO_DNS
    servers = dns.get("servers")
    return {
        "domain": dns.get("domain") or "",
        "servers": servers if isinstance(servers, list) else [],
    }


def _clean(text: Any, limit: int = 200) -> str:
    """Server words on one line: control characters out, cut at `limit`."""
    one = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", str(text)).split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


class Backend:
    """The self-hosted controller's names; Legacy Central nests the same under `config`."""

    kind: ClassVar[str] = "local"
    title: ClassVar[str] = "self-hosted controller"
    default_url: ClassVar[str] = "http://127.0.0.1:9993"
    default_token: ClassVar[tuple[str | None, str | None]] = (
        None,
        "/var/lib/zerotier-one/authtoken.secret",
    )
    fields: ClassVar[tuple[str, ...]] = (
        "routes",
        "ip_pools",
        "v4_assign_mode",
        "v6_assign_mode",
        "mtu",
        "dns",
    )
    """The values `values` returns, hence what the provider reads and can write."""
    requests_per_second: ClassVar[int | None] = None
    """The API's request budget (None: none; the self-hosted controller has none)."""
    names: ClassVar[dict[str, str]] = {
        "routes": "routes",
        "ip_pools": "ipAssignmentPools",
        "v4_assign_mode": "v4AssignMode",
        "v6_assign_mode": "v6AssignMode",
        "mtu": "mtu",
        "dns": "dns",
    }

    def path(self, nwid: str) -> str:
        return f"/controller/network/{nwid}"

    def headers(self, token: str) -> dict[str, str]:
        return {"X-ZT1-Auth": token}

    def settings(self, answer: Any) -> dict[str, Any] | None:
        """The object that holds the network's settings in a GET answer, or None."""
        return answer if isinstance(answer, dict) else None

    def values(self, settings: Mapping[str, Any]) -> dict[str, JsonValue]:
        n = self.names
        return {
            "routes": normalise_routes(settings.get(n["routes"])),
            "ip_pools": normalise_pools(settings.get(n["ip_pools"])),
            "v4_assign_mode": normalise_mode(settings.get(n["v4_assign_mode"]), V4_KEYS),
            "v6_assign_mode": normalise_mode(settings.get(n["v6_assign_mode"]), V6_KEYS),
            "mtu": normalise_mtu(settings.get("mtu")),
            "dns": normalise_dns(settings.get("dns")),
        }

    def settings_body(self, fields: Mapping[str, JsonValue]) -> dict[str, Any]:
        """Changed values -> the API's settings, every list whole and every object with all
        its keys (controllers replace them whole and keep only the keys they are sent)."""
        body: dict[str, Any] = {}
        for field, value in fields.items():
            if field == "routes":
                body[self.names[field]] = _routes_body(value)
            elif field == "ip_pools":
                body[self.names[field]] = _pools_body(value)
            elif field == "dns":
                body["dns"] = _dns_body(value)
            else:  # assign modes (already whole) and mtu
                body[self.names[field]] = value
        return body

    def body(self, fields: Mapping[str, JsonValue]) -> dict[str, Any]:
        return self.settings_body(fields)

    def api_name(self, field: str) -> str:
        """Where `field` lives in the API's object, for error messages."""
        return self.names.get(field, field)

    def missing(self, nwid: str, base_url: str) -> str:
        return (
            f"controller: network {nwid} does not exist on the {self.kind} controller at "
            f"{base_url} (ztplan does not create networks; check the id)"
        )

    def describe_error(self, status: int, where: str, body: bytes) -> str | None:
        """What follows "answered N: " in an error, or None for ApiClient's default."""
        return None

    mismatch_hint: ClassVar[str] = ""


class CentralBackend(Backend):
    """Legacy Central (API v1): the self-hosted names under `config`."""

    kind = "central"
    title = "Legacy Central"
    default_url = "https://api.zerotier.com/api/v1"
    default_token = ("ZEROTIER_CENTRAL_TOKEN", None)
    requests_per_second: ClassVar[int | None] = 20  # a free account's; a paid one has 100

    def path(self, nwid: str) -> str:
        return f"/network/{nwid}"

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"token {token}"}

    def settings(self, answer: Any) -> dict[str, Any] | None:
        config = answer.get("config") if isinstance(answer, dict) else None
        return config if isinstance(config, dict) else None

    def body(self, fields: Mapping[str, JsonValue]) -> dict[str, Any]:
        return {"config": self.settings_body(fields)}

    def api_name(self, field: str) -> str:
        return "config." + self.names.get(field, field)


class CentralV2Backend(CentralBackend):
    """New Central (API v2), as CENTRAL-V2.md documents it; nothing here was checked against
    the live service. Where the documentation is silent, the safe choice is made:

    - lists (routes, both pool lists, dns.servers): whether an update replaces or merges
      them is not documented. Every managed list is sent whole and the provider re-reads
      and compares, so a merge (or any rewrite) is an error naming the field, never drift
      that is silently "fixed" again on the next run. Both pool lists are sent whenever
      pools change, so a pool of the other family is removed, not left behind.
    - `via` is sent on every route, `null` on-link (the schema lists it as required; whether
      it may be omitted is unknown). All three v6 assign-mode keys and both dns keys are
      sent (required inside those objects).
    - a subnet is cleared by sending "" (its response type is a required string; how the
      service clears it is not documented).
    - no 429 or rate limit is documented: ApiClient's v1 retry policy (429/5xx, Retry-After)
      applies unchanged.
    - 404 (no body) on one network means it is not in the key's organisation, whether it
      does not exist or lives in another one (which of 403/404 the latter gets is unknown).
    """

    kind = "central-v2"
    title = "New Central"
    default_url = "https://central.zerotier.com/api/v2"
    default_token = ("ZEROTIER_CENTRAL_V2_TOKEN", None)
    requests_per_second: ClassVar[int | None] = None  # none documented (see above)
    fields = (*Backend.fields, "v4_subnet", "v6_subnet")
    names = {
        "routes": "routes",
        "ip_pools": "v4IpAssignmentPools",
        "v4_assign_mode": "v4AssignmentMode",
        "v6_assign_mode": "v6AssignmentMode",
        "mtu": "mtu",
        "dns": "dns",
        "v4_subnet": "v4Subnet",
        "v6_subnet": "v6Subnet",
    }
    mismatch_hint = (
        "; New Central does not document whether an update replaces or merges lists, and "
        "ztplan sent them whole"
    )

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def api_name(self, field: str) -> str:
        if field == "ip_pools":
            return "config.v4IpAssignmentPools and config.v6IpAssignmentPools"
        return super().api_name(field)

    def values(self, settings: Mapping[str, Any]) -> dict[str, JsonValue]:
        pools = [
            *_items(settings.get("v4IpAssignmentPools")),
            *_items(settings.get("v6IpAssignmentPools")),
        ]
        return {
            "routes": normalise_routes(settings.get("routes")),
            "ip_pools": normalise_pools(pools),
            "v4_assign_mode": normalise_mode(settings.get("v4AssignmentMode"), V4_KEYS),
            "v6_assign_mode": normalise_mode(settings.get("v6AssignmentMode"), V6_KEYS),
            "mtu": normalise_mtu(settings.get("mtu")),
            "dns": normalise_dns(settings.get("dns")),
            "v4_subnet": normalise_subnet(settings.get("v4Subnet")),
            "v6_subnet": normalise_subnet(settings.get("v6Subnet")),
        }

    def settings_body(self, fields: Mapping[str, JsonValue]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for field, value in fields.items():
            if field == "routes":
                body["routes"] = _routes_body(value)
            elif field == "ip_pools":  # v1 mixes the families in one list; v2 splits them
                body["v4IpAssignmentPools"] = _pools_body(value, 4)
                body["v6IpAssignmentPools"] = _pools_body(value, 6)
            elif field == "dns":
                body["dns"] = _dns_body(value)
            elif field in ("v4_subnet", "v6_subnet"):
                body[self.names[field]] = value or ""
            else:
                body[self.names[field]] = value
        return body

    def missing(self, nwid: str, base_url: str) -> str:
        return (
            f"controller: network {nwid} does not exist in this New Central organisation "
            f"({base_url} answered 404; ztplan does not create networks): check the id, and "
            "that the API key's service account belongs to the network's organisation"
        )

    def describe_error(self, status: int, where: str, body: bytes) -> str | None:
        """New Central's error bodies (CENTRAL-V2.md §7): 400 `{code, message, details:
        [{field, message}]}` shown field by field; 401/403 `{message}` with the reminder
        that service-account keys expire. 404 has no body: the provider words it."""
        if status == 404:
            return None
        try:
            data = json.loads(body) if body else {}
        except (ValueError, UnicodeDecodeError):
            data = {}
        data = data if isinstance(data, dict) else {}
        said = _clean(data["message"]) if data.get("message") else ""
        if status == 400:
            details = [
                f"{_clean(d.get('field', '?'), 80)}: {_clean(d.get('message', ''))}"
                for d in data.get("details") or []
                if isinstance(d, dict)
            ]
            head = said or "the request was refused"
            return head + (f" ({'; '.join(details)})" if details else "")
        server = f" ({said})" if said else ""
        if status == 401:
            return (
                f"New Central refused the API key{server}; service-account keys expire, so it "
                "may have expired or been revoked: create a new key for the service account "
                "and put it where token_env / token_file points"
            )
        if status == 403:
            return (
                f"the API key may not do this{server}; service-account keys expire and belong "
                "to one organisation: check that the key is current and that the network is in "
                "its organisation"
            )
        return said or None


BACKENDS: dict[str, Backend] = {
    b.kind: b for b in (Backend(), CentralBackend(), CentralV2Backend())
}
"""controller.kind -> its backend."""
