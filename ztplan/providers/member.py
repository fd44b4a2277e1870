"""This host as a ZeroTier member: the `allow*` flags of the networks it has joined.

Talks to the local service API (`/network/{nwid}`, CONTROLLER-API.md §3), as
`zerotier-cli set <nwid> allowDefault=1` does. A POST there *joins* the network when the
node has not joined it, so every POST follows a GET that found the network: a 404 is an
error ("join it first"), never something ztplan fixes. The service ignores flags that are
not JSON booleans and still answers 200, so apply re-reads and checks what it kept.

Addresses:  member.network["<nwid>"].allow_default | allow_managed | allow_global | allow_dns
Values are booleans. Live flags are foreign (owned=False): ztplan sets them, never deletes.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ztplan.address import Address
from ztplan.api import ApiClient, NotFound, read_token
from ztplan.errors import ControllerError, ZtplanError
from ztplan.host import Host
from ztplan.model import Change, Finding, Resource, Snapshot
from ztplan.providers.sysctl import key_path
from ztplan.spec import Member as MemberSpec
from ztplan.spec import Spec

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_TOKEN_FILE", "FLAGS", "Member", "flag_address", "member_client"]

DEFAULT_TOKEN_FILE = "/var/lib/zerotier-one/authtoken.secret"
FLAGS = {
    "allow_default": "allowDefault",
    "allow_managed": "allowManaged",
    "allow_global": "allowGlobal",
    "allow_dns": "allowDNS",
}
"""Spec field -> the service API's key."""
_ADDRESS = re.compile(r'member\.network\["([0-9a-f]{16})"\]\.(allow_[a-z]+)')
_LOOSE = "set sysctl net.ipv4.conf.all.rp_filter: 2 (loose)"


def flag_address(nwid: str, flag: str) -> Address:
    return Address.of("member", "network").item(nwid).dot(flag)


def member_client(member: MemberSpec, http_client: httpx.Client) -> ApiClient:
    """The service API's client; the token (zerotier-one's authtoken.secret by default)
    travels in `X-ZT1-Auth`, as zerotier-cli sends it."""
    token = read_token(member.token_env, member.token_file or DEFAULT_TOKEN_FILE, "member service")
    return ApiClient(
        base_url=member.service_url,
        headers={"X-ZT1-Auth": token},
        client=http_client,
        what="member service",
    )


def _rp_key(dev: str) -> str:
    """The sysctl key of an interface's rp_filter (a dot in the name is written `/`)."""
    return f"net.ipv4.conf.{dev.replace('.', '/')}.rp_filter"


def _int(value: object) -> int | None:
    try:
        return int(str(value).strip())
    except ValueError:
        return None


class Member:
    name: ClassVar[str] = "member"

    def __init__(self, api: ApiClient, networks: Sequence[str], platform: str = sys.platform):
        self.api = api
        self.networks = list(networks)
        """The spec's network ids: the only ones read one by one (and ever POSTed to)."""
        self.platform = platform
        """`sys.platform` of the member: rp_filter exists on linux, allowDefault not on freebsd."""

    def manages(self, spec: Spec) -> bool:
        return spec.member is not None and bool(spec.member.networks)

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out: dict[Address, Resource] = {}
        for network in spec.member.networks if spec.member else []:
            for flag in FLAGS:
                value = getattr(network, flag)
                if value is not None:  # None: the spec leaves this flag alone
                    out[flag_address(network.id, flag)] = Resource(
                        flag_address(network.id, flag), value
                    )
        return out

    def _get(self, nwid: str) -> dict[str, Any]:
        """GET one joined network; a 404 means "not joined", which only a human fixes."""
        try:
            answer = self.api.get(f"/network/{nwid}")
        except NotFound as error:
            raise ControllerError(
                f"member service: this node has not joined network {nwid}; join it first "
                f"with `zerotier-cli join {nwid}` — ztplan does not join networks",
                404,
                error.url,
            ) from None
        if not isinstance(answer, dict):
            raise ControllerError(f"member service: network {nwid}: the answer is not an object")
        return answer

    def read(self, host: Host) -> Snapshot:
        """Each spec network, every joined network (for the one-default-route check) and,
        on Linux, the rp_filter values `check` needs (it gets no host)."""
        joined = self.api.get("/network")
        if not isinstance(joined, list):
            raise ControllerError("member service: GET /network: the answer is not a list")
        objects = {nwid: self._get(nwid) for nwid in self.networks}
        resources: dict[Address, Resource] = {}
        for nwid, obj in objects.items():
            for flag, key in FLAGS.items():
                if isinstance(obj.get(key), bool):
                    address = flag_address(nwid, flag)
                    resources[address] = Resource(address, obj[key], owned=False)
        rp_filter: dict[str, int | None] = {}
        if self.platform.startswith("linux"):
            devices = [str(o.get("portDeviceName") or "") for o in objects.values()]
            for name in ["all", *filter(None, devices)]:
                try:
                    rp_filter[name] = _int(host.read_proc(key_path(_rp_key(name))))
                except (OSError, ValueError):  # no such interface (yet), or a strange name
                    rp_filter[name] = None
        others = {str(o.get("nwid")): o for o in joined if isinstance(o, dict) and o.get("nwid")}
        raw = {"networks": objects, "joined": others, "rp_filter": rp_filter}
        return Snapshot.of(resources, raw=raw)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        raw = snapshot.raw if isinstance(snapshot.raw, dict) else {}
        objects: dict[str, dict[str, Any]] = raw.get("networks", {})
        wanted = {n.id: n for n in (spec.member.networks if spec.member else [])}

        def ends_up(nwid: str, flag: str) -> bool:
            value = getattr(wanted[nwid], flag) if nwid in wanted else None
            live = objects.get(nwid) or raw.get("joined", {}).get(nwid) or {}
            return bool(live.get(FLAGS[flag]) if value is None else value)

        findings: list[Finding] = []

        def add(severity: Literal["warning", "error"], nwid: str, message: str) -> None:
            address = flag_address(nwid, "allow_default")
            findings.append(Finding(severity=severity, address=address, message=message))

        everywhere = sorted({*wanted, *raw.get("joined", {})})
        defaults = [nwid for nwid in everywhere if ends_up(nwid, "allow_default")]
        if len(defaults) > 1:
            named = [n if n in wanted else f"{n} (not in the spec)" for n in defaults]
            # An error when the spec asks for one of them (apply would make it so); a warning
            # when it is only live state, so an apply of other flags is not blocked.
            asked = any(wanted[n].allow_default for n in defaults if n in wanted)
            add(
                "error" if asked else "warning",
                next((n for n in defaults if n in wanted), defaults[0]),
                f"allowDefault would be on for {len(defaults)} networks ({', '.join(named)}): "
                "a member can send its default route through one gateway only; keep "
                "allow_default: true on one and set allow_default: false on the others",
            )
        for nwid in (n for n in wanted if n in defaults):
            if not ends_up(nwid, "allow_managed"):
                add(
                    "warning",
                    nwid,
                    f"network {nwid}: allowDefault without allowManaged "
                    "installs no route at all; set allow_managed: true",
                )
            if self.platform.startswith("freebsd") and wanted[nwid].allow_default:
                add(
                    "error",
                    nwid,
                    f"network {nwid}: ZeroTier cannot override the default "
                    "route on FreeBSD (allowDefault is unsupported there); set "
                    "allow_default: false and route through the gateway another way",
                )
            dev = str((objects.get(nwid) or {}).get("portDeviceName") or "")
            if self.platform.startswith("linux") and self._strict(spec, raw, dev):
                add(
                    "warning",
                    nwid,
                    f"network {nwid}: strict reverse-path filtering "
                    "(rp_filter 1) on this Linux member drops packets that arrive on the "
                    f"physical interface from addresses now routed through ZeroTier; {_LOOSE}",
                )
        return findings

    @staticmethod
    def _strict(spec: Spec, raw: Mapping[str, Any], dev: str) -> bool:
        """The kernel uses max(all, <dev>); the spec's sysctl value wins over the live one."""
        live: Mapping[str, int | None] = raw.get("rp_filter", {})
        values = [
            _int(spec.sysctl[_rp_key(name)]) if _rp_key(name) in spec.sysctl else live.get(name)
            for name in ("all", dev)
            if name
        ]
        return max((v for v in values if v is not None), default=None) == 1

    def _post(self, nwid: str, flags: Mapping[str, bool]) -> None:
        """POST the flags of a network a GET just found, then re-read: the service answers
        200 even to flags it ignored."""
        self.api.post(f"/network/{nwid}", {FLAGS[f]: v for f, v in flags.items()})
        kept = self._get(nwid)
        wrong = [f"{f}={str(v).lower()}" for f, v in flags.items() if kept.get(FLAGS[f]) is not v]
        if wrong:
            raise ControllerError(
                f"member service: network {nwid} did not keep {', '.join(wrong)} "
                "(the service answered 200 but ignored them)"
            )

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        by_network: dict[str, dict[str, bool]] = {}
        for change in changes:
            match = _ADDRESS.fullmatch(change.address)
            if match is None or match[2] not in FLAGS or not isinstance(change.after, bool):
                raise ZtplanError(f"member: cannot apply {change.address} = {change.after!r}")
            by_network.setdefault(match[1], {})[match[2]] = change.after
        for nwid, flags in by_network.items():
            self._get(nwid)  # GET first: a POST to a network not joined would join it
            self._post(nwid, flags)

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        raw = before.raw if isinstance(before.raw, dict) else {}
        touched: dict[str, set[str]] = {}
        for change in changes:
            match = _ADDRESS.fullmatch(change.address)
            if match is not None:
                touched.setdefault(match[1], set()).add(match[2])
        for nwid, old in raw.get("networks", {}).items():
            if nwid not in touched:
                continue
            try:
                now = self._get(nwid)
            except ControllerError as error:
                if error.status == 404:
                    continue  # left since: nothing to restore, and a POST would re-join
                raise
            flags = {
                f: old[k]
                for f, k in FLAGS.items()
                if f in touched[nwid] and isinstance(old.get(k), bool) and now.get(k) is not old[k]
            }
            if flags:
                self._post(nwid, flags)
