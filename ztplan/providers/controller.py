"""The network controller: managed settings of each network in the spec.

Three kinds behind one interface, chosen by `controller.kind`; what differs between them
(path, auth header, names and shapes of the network object) is a backend in
`controller_backend.py`, so read and apply here are the same for all.

Controllers may accept and silently rewrite data (the self-hosted one drops or rewrites bad
entries and answers 200; New Central does not document whether lists are replaced or
merged), and a POST to the self-hosted controller creates a network that does not exist.
So ztplan validates everything in the spec, GETs before it POSTs (a 404 is an error, never
"create"), POSTs whole lists of only the changed fields, and re-reads to check the
controller kept exactly what was sent.

Addresses:  controller.network["<nwid>"].<field>, the values in controller_backend.py:
              routes    sorted list of {target, via}
              ip_pools  sorted list of {start, end}
              v4_assign_mode, v6_assign_mode, mtu, dns; v4_subnet, v6_subnet (central-v2)
Lists are sorted on both sides: a controller that reorders routes shows no drift.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import JsonValue

from ztplan.address import Address
from ztplan.api import ApiClient, NotFound, RateLimit, shown_url
from ztplan.errors import ControllerError
from ztplan.host import FORWARDING, Host
from ztplan.model import Change, Finding, Resource, Snapshot
from ztplan.providers.controller_backend import (
    BACKENDS,
    V4_KEYS,
    V6_KEYS,
    normalise_dns,
    normalise_mode,
    normalise_pools,
    normalise_routes,
)
from ztplan.spec import Spec

__all__ = ["DEFAULT_URLS", "Controller", "controller_client", "network_address", "normalise_routes"]

DEFAULT_URLS = {kind: backend.default_url for kind, backend in BACKENDS.items()}
WAN_MTU = 1500
READERS = 20
"""Networks read at once: a plan of 20 networks takes one round trip, as one does (more
wait for the API's request budget, RateLimit, not for a free thread)."""
"""The WAN link an exit gateway usually has: a larger ZeroTier MTU needs TCP MSS clamping."""


def network_address(nwid: str, field: str) -> Address:
    return Address.of("controller", "network").item(nwid).dot(field)


def _network_field(address: Address) -> tuple[str, str]:
    """(network id, field) of a controller address."""
    steps = address.steps
    if len(steps) != 4 or steps[2].key is None or steps[3].name is None:
        raise ControllerError(f"controller: not a network field address: {address}")
    return steps[2].key, steps[3].name


def controller_client(spec: Spec, http_client: Any, base_url: str | None = None) -> ApiClient:
    """The controller's ApiClient, with the token from the environment or a file."""
    from ztplan.api import read_token

    assert spec.controller is not None
    backend = BACKENDS[spec.controller.kind]
    env, file = backend.default_token
    if spec.controller.token_env or spec.controller.token_file:
        env, file = spec.controller.token_env, spec.controller.token_file
    if os.environ.get("ZTPLAN_CONTROLLER_TOKEN"):  # for a staging controller or the sandbox
        env, file = "ZTPLAN_CONTROLLER_TOKEN", None
    token = read_token(env, file, "controller")
    return ApiClient(
        base_url=base_url or spec.controller.url or backend.default_url,
        headers=backend.headers(token),
        client=http_client,
        what="controller",
        describe_error=backend.describe_error,
        rate=RateLimit(backend.requests_per_second) if backend.requests_per_second else None,
    )


def _clamps_mss(spec: Spec, family: str) -> bool:
    """Whether the spec has a TCPMSS rule in the family's mangle table."""
    fam = getattr(spec.firewall, family, None) if spec.firewall else None
    table = fam.mangle if fam else None
    rules = [r for chain in (table.chains.values() if table else []) for r in chain.rules]
    return any("TCPMSS" in shlex.split(rule) for rule in rules)


class Controller:
    name: ClassVar[str] = "controller"

    def __init__(
        self,
        api: ApiClient,
        kind: str,
        networks: Sequence[str],
        settle: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.kind = kind
        self.backend = BACKENDS[kind]
        self.networks = list(networks)
        self.settle = settle
        """Seconds to watch a network whose write had no answer, for its outcome."""
        self.sleep = sleep
        self.unsettled: set[str] = set()
        """Networks with a write whose outcome stayed unknown: it may still land."""

    def manages(self, spec: Spec) -> bool:
        return spec.controller is not None and bool(spec.networks)

    def _get(self, nwid: str, deadline: float | None = None) -> dict[str, JsonValue]:
        """The network's values; a network the controller does not have is an error.
        `deadline` bounds the read (retries included) below the client's own."""
        try:
            answer = self.api.get(self.backend.path(nwid), deadline)
        except NotFound:
            raise ControllerError(
                self.backend.missing(nwid, shown_url(self.api.base_url)), 404
            ) from None
        if not isinstance(answer, dict):
            raise ControllerError(f"controller: network {nwid}: the answer is not an object")
        settings = self.backend.settings(answer)
        if settings is None:
            raise ControllerError(f"controller: network {nwid}: the answer has no settings")
        return self.backend.values(settings)

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out: dict[Address, Resource] = {}
        for network in spec.networks:
            values: dict[str, JsonValue] = {}
            if network.routes is not None:
                values["routes"] = normalise_routes([r.model_dump() for r in network.routes])
            if network.ip_pools is not None:
                values["ip_pools"] = normalise_pools([p.model_dump() for p in network.ip_pools])
            for field, mode, keys in (
                ("v4_assign_mode", network.v4_assign_mode, V4_KEYS),
                ("v6_assign_mode", network.v6_assign_mode, V6_KEYS),
            ):
                if mode is not None:
                    values[field] = normalise_mode(mode.model_dump(by_alias=True), keys)
            if network.mtu is not None:
                values["mtu"] = network.mtu
            if network.dns is not None:
                values["dns"] = normalise_dns(network.dns.model_dump())
            for field in ("v4_subnet", "v6_subnet"):
                subnet = getattr(network, field)
                if subnet is not None:
                    values[field] = str(ipaddress.ip_network(subnet))
            for field, value in values.items():
                address = network_address(network.id, field)
                out[address] = Resource(address, value)
        return out

    def read(self, host: Host) -> Snapshot:
        """Each network once; several at a time (the shared client is thread-safe)."""
        with ThreadPoolExecutor(max_workers=min(READERS, max(len(self.networks), 1))) as pool:
            live = dict(zip(self.networks, pool.map(self._get, self.networks), strict=True))
        resources: dict[Address, Resource] = {}
        for nwid, values in live.items():
            for field, value in values.items():
                address = network_address(nwid, field)
                resources[address] = Resource(address, value, owned=False)
        return Snapshot.of(resources, raw=live)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        """The MSS warning: on a gateway (a spec with a firewall), a network whose MTU is
        more than a 1500-byte WAN link carries, and no TCPMSS rule in the mangle table of a
        family the gateway forwards. Here rather than in checks.py because an MTU the spec
        leaves unmanaged (ZeroTier's default 2800, the usual case) is only known live."""
        if spec.firewall is None:
            return []
        raw = snapshot.raw if isinstance(snapshot.raw, dict) else {}
        families = [  # forwarded: a firewall for it, or its forwarding turned on
            f
            for f, key in FORWARDING.items()
            if (getattr(spec.firewall, f) or str(spec.sysctl.get(key)) == "1")
            and not _clamps_mss(spec, f)
        ]
        findings = []
        for network in spec.networks:
            mtu = network.mtu if network.mtu is not None else raw.get(network.id, {}).get("mtu")
            if not families or not isinstance(mtu, int) or mtu <= WAN_MTU:
                continue
            default = " (ZeroTier's default)" if network.mtu is None and mtu == 2800 else ""
            findings.append(
                Finding(
                    severity="warning",
                    address=network_address(network.id, "mtu"),
                    message=f"MTU {mtu}{default} is more than a {WAN_MTU}-byte WAN link "
                    f"carries, and no TCPMSS rule in mangle clamps {' and '.join(families)} "
                    "TCP: connections through this gateway can stall where path "
                    f"MTU discovery fails; set the network's `mtu: {WAN_MTU}`, or add "
                    "`-p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu` to mangle "
                    "FORWARD",
                )
            )
        return findings

    def _post(self, nwid: str, fields: Mapping[str, JsonValue]) -> None:
        """Write `fields` and check they were kept. A network is marked unsettled as soon
        as any copy of a write to it went unanswered (a retry's 200 does not stop an earlier
        copy from landing later), or what it holds is not what was written: from then on,
        nothing this run reads of it proves that no route through this gateway is live."""
        path = self.backend.path(nwid)
        try:
            self.api.post(path, self.backend.body(fields))
        except ControllerError as error:
            if path in self.api.doubtful:
                self.unsettled.add(nwid)
            if not error.unanswered:
                raise  # the controller answered no (4xx, or 5xx to the last try): not stored
            self._settle(nwid, fields, error)  # no answer: find out what it stored
        if path in self.api.doubtful:
            self.unsettled.add(nwid)
        # Re-read: a controller may answer 200 to data it dropped, rewrote or merged.
        try:
            kept = self._get(nwid)
        except ControllerError:
            self.unsettled.add(nwid)  # written, and not known what it holds
            raise
        for field, value in fields.items():
            if kept.get(field) != value:
                self.unsettled.add(nwid)  # dropped, rewritten, or not visible yet
                name = self.backend.api_name(field)
                where = f" ({name})" if name != field else ""
                raise ControllerError(
                    f"controller: network {nwid} did not keep its {field}{where}: "
                    f"sent {json.dumps(value)}, stored {json.dumps(kept.get(field))}"
                    + (self.backend.mismatch_hint if isinstance(value, list | dict) else "")
                )

    def _settle(self, nwid: str, fields: Mapping[str, JsonValue], error: ControllerError) -> None:
        """A write with no answer (timed out, connection dropped, a garbled 200, a proxy's
        504) may have been stored, or be stored a moment later. Watch the network for
        `settle` seconds, each read bounded by what is left: if it holds what was sent, the
        write took. Either way the network stays unsettled for the rest of the run (a rollback
        then keeps the gateway forwarding), and an outcome still unknown is an error."""
        self.unsettled.add(nwid)  # until the end of the run: another copy may still land
        self.api.on_wait(
            f"controller: network {nwid}: a write had no answer ({error}); watching the "
            f"network up to {self.settle:g} s for what it stored"
        )
        deadline = time.monotonic() + self.settle
        while True:
            try:
                kept = self._get(nwid, max(deadline - time.monotonic(), 0.1))
            except ControllerError:
                kept = None
            if kept is not None and all(kept.get(f) == v for f, v in fields.items()):
                return
            if time.monotonic() >= deadline:
                break
            self.sleep(min(1.0, max(deadline - time.monotonic(), 0.0)))
        raise ControllerError(
            f"controller: network {nwid}: {error}; for {self.settle:g} s the network did not "
            "show it stored, but the write may still land: its outcome is unknown"
        )

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        by_network: dict[str, dict[str, JsonValue]] = {}
        for change in changes:
            nwid, field = _network_field(change.address)
            by_network.setdefault(nwid, {})[field] = change.after
        for nwid, fields in by_network.items():
            self._get(nwid)  # GET first: a POST to a missing network would create it
            self._post(nwid, fields)

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        raw = before.raw if isinstance(before.raw, dict) else {}
        touched: dict[str, set[str]] = {}
        for change in changes:
            nwid, field = _network_field(change.address)
            touched.setdefault(nwid, set()).add(field)
        for nwid, fields in touched.items():
            values = raw.get(nwid, {})
            current = self.read_one(nwid)
            changed = {f: values[f] for f in fields if f in values and current.get(f) != values[f]}
            if changed:
                self._post(nwid, changed)
        late = sorted(set(touched) & self.unsettled)
        if late:  # put back now, but a write that had no answer may still land after this
            raise ControllerError(
                f"controller: network {', '.join(late)} is put back as it was, but an earlier "
                "write had no answer and may still land, routing members through this gateway"
            )

    def read_one(self, nwid: str) -> dict[str, JsonValue]:
        return self._get(nwid)
