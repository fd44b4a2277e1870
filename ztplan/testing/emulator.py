"""A ZeroTier controller emulator: a real HTTP server on 127.0.0.1 for tests and the sandbox.

One server speaks four APIs, as ``shared/CONTROLLER-API.md`` beside this repository ("the
doc") describes them:

* the self-hosted controller, ``/controller/...`` (doc §0-§1). The quirks come from ZeroTierOne
  1.14.1: ``networkUpdateFromPostData`` / ``configureHTTPControlPlane`` in
  ``controller/EmbeddedNetworkController.cpp`` (silent drops and rewrites, create-on-POST, 400
  for a foreign ``{node}______``), ``DB::initNetwork`` (defaults), ``FileDB::save`` (revision +1
  only on a real change), ``OSUtils::json{Bool,Int,String}`` (``"no"`` is false, ``5`` becomes
  ``"5"``), ``InetAddress::fromString`` (``10.6.4.0`` is ``/0``; ``10.6.4.zz`` is ``0.0.0.0``)
  and ``service/OneService.cpp`` (401 ``{}``, empty 404, a 500 whose parser message is pasted
  unescaped so the body may be invalid JSON, ``Keep-Alive: timeout=5, max=5``);
* ZeroTier Central, ``/api/v1/network...`` (doc §2, ``zerotier-openapi/central-v1.json``,
  go-ztcentral): settings nested under ``config``, no ``via`` on on-link routes,
  ``{"type":"internal","message":"JSON error"}`` for a non-object body (issue #1366), a
  requests-per-second budget with ``X-Ratelimit-*`` headers (spec ``info.description``);
* the member-side service, ``/network...`` and ``/status`` (doc §3, ``OneService.cpp``): POST
  joins a network the node has not joined; only JSON booleans change the ``allow*`` flags;
* New Central, ``/api/v2/...`` (``shared/CENTRAL-V2.md``), in ``central_v2.py`` beside this
  module, with what that doc leaves open listed there as ``ASSUMPTIONS``.

Shortcuts: both Centrals and the self-hosted controller share one store (the flat self-hosted
object) and Legacy Central writes go through the self-hosted normaliser, since Central's own
validation is not documented. Rule *match* entries, ``capabilities`` and ``tags`` are kept
as sent (action rules are re-rendered as 1.14.1 does); ``authTokens``/``remoteTrace*`` are
ignored; controller member endpoints are read-only (list, GET); members never see
``ACCESS_DENIED``.

``faults`` injects transport trouble. Tokens are compared, never logged nor kept in
``request_log``.
"""

from __future__ import annotations

import argparse
import copy
import hmac
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, parse_qs, urlsplit

__all__ = ["ControllerEmulator", "Faults", "main"]

Reply = tuple[int, bytes, dict[str, str]]

_U64 = (1 << 64) - 1
_MAX_ARRAY = 16384  # ZT_CONTROLLER_MAX_ARRAY_SIZE
_JSON = "application/json"
_FLAGS = ("allowManaged", "allowGlobal", "allowDefault", "allowDNS")
_OWNER = "00000000-0000-0000-0000-000000000000"
# The doc's observed 1.14.1 object, less id/nwid/creationTime/revision, which are per network.
_DEFAULTS = (
    '{"authTokens":[null],"authorizationEndpoint":"","capabilities":[],"clientId":"","dns":[],'
    '"enableBroadcast":true,"ipAssignmentPools":[],"mtu":2800,"multicastLimit":32,"name":"",'
    '"objtype":"network","private":true,"remoteTraceLevel":0,"remoteTraceTarget":null,'
    '"routes":[],"rules":[{"not":false,"or":false,"type":"ACTION_ACCEPT"}],"rulesSource":"",'
    '"ssoEnabled":false,"tags":[],"v4AssignMode":{"zt":false},'
    '"v6AssignMode":{"6plane":false,"rfc4193":false,"zt":false}}'
)
# Action rules -> the fields _renderRule writes back (it writes no "not"/"or" for actions).
_ACTIONS: dict[str, tuple[str, ...]] = {
    "ACTION_DROP": (),
    "ACTION_ACCEPT": (),
    "ACTION_BREAK": (),
    "ACTION_TEE": ("address", "flags", "length"),
    "ACTION_WATCH": ("address", "flags", "length"),
    "ACTION_REDIRECT": ("address", "flags"),
}


@dataclass
class Faults:
    """Transport faults, checked on every request in this order: ``drop_connection``; then
    ``latency`` plus any ``timeout`` stall; then ``status_5xx``, else ``rate_limit_429``.
    ``malformed_json`` is consumed only by a 200 answer that has a JSON body."""

    latency: float = 0.0  #: seconds added before every answer
    status_5xx: int = 0  #: the next N requests are answered ``status_5xx_code``, body ``{}``
    status_5xx_code: int = 503
    rate_limit_429: int = 0  #: the next N requests are answered 429 + ``Retry-After``
    retry_after: str = "0"
    timeout: float = 0.0  #: stall the next ``timeout_count`` requests this long, then answer
    timeout_count: int = 1  #: once used up, ``timeout`` goes back to 0 and this to 1
    malformed_json: int = 0  #: the next N 200 JSON answers are cut in half (never parses)
    drop_connection: int = 0  #: the next N requests: socket closed without any answer


def _dump(value: Any) -> bytes:
    # nlohmann::json::dump(): sorted keys, no spaces, raw UTF-8.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- OSUtils.cpp coercions and InetAddress::fromString ---------------------------------------


def _strtoul(s: str, base: int = 10) -> int:
    """C strtoull(): leading digits only (else 0), a "-" wraps, overflow saturates."""
    digits = "([0-9]*)" if base == 10 else "(?:0[xX])?([0-9a-fA-F]*)"
    m = re.match(r"[ \t\n\v\f\r]*([+-]?)" + digits, s)
    assert m is not None  # the pattern matches every string
    n = min(int(m[2] or "0", base), _U64)
    return (-n) & _U64 if m[1] == "-" else n


def _jint(v: Any, dfl: int) -> int:
    if isinstance(v, int | float):
        return int(v) & _U64  # (uint64_t) cast; bool is an int here too
    return _strtoul(v) if isinstance(v, str) else dfl


def _jbool(v: Any, dfl: bool) -> bool:
    if isinstance(v, int | float):
        return int(v) != 0
    return v[:1] in ("t", "T", "1") if isinstance(v, str) else dfl


def _jstr(v: Any, dfl: str = "") -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int | float):
        return str(int(v) & _U64)  # "%llu"
    return v if isinstance(v, str) else dfl


def _inet(v: Any) -> tuple[int, bytes, int] | None:
    """(family, packed address, bits) or None: the family comes from a ':' or a '.', a failed
    inet_pton leaves the all-zero address, the text after '/' is strtoul'd and masked to 16 bits."""
    if not isinstance(v, str):
        return None
    s = v.split("\0", 1)[0]
    if not s or len(s) >= 64:  # empty: family 0; too long: Utils::scopy fails
        return None
    ip, slash, bits = s.partition("/")
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET if "." in ip else 0
    if not fam:
        return None
    try:
        packed = socket.inet_pton(fam, ip)
    except OSError:
        packed = bytes(16 if fam == socket.AF_INET6 else 4)
    return fam, packed, (_strtoul(bits) & 0xFFFF) if slash else 0


def _route(rt: Any) -> dict[str, Any] | None:
    t = _inet(rt.get("target")) if isinstance(rt, dict) else None
    if t is None or t[2] > (128 if t[0] == socket.AF_INET6 else 32):
        return None  # unparsable target or prefix too long: dropped, still 200
    v = _inet(rt.get("via"))
    via = socket.inet_ntop(v[0], v[1]) if v is not None and v[0] == t[0] else None
    return {"target": f"{socket.inet_ntop(t[0], t[1])}/{t[2]}", "via": via}


def _pool(p: Any) -> dict[str, Any] | None:
    if not (isinstance(p, dict) and "ipRangeStart" in p and "ipRangeEnd" in p):
        return None
    f, t = _inet(_jstr(p["ipRangeStart"])), _inet(_jstr(p["ipRangeEnd"]))
    if f is None or t is None or f[0] != t[0]:
        return None  # one bad pool in a one-pool list wipes the pools
    return {"ipRangeStart": socket.inet_ntop(*f[:2]), "ipRangeEnd": socket.inet_ntop(*t[:2])}


def _rule(r: Any) -> dict[str, Any] | None:
    kind = _jstr(r.get("type")) if isinstance(r, dict) else ""
    if kind in _ACTIONS:
        out: dict[str, Any] = {"type": kind}
        if "address" in _ACTIONS[kind]:  # Utils::hexStrToU64, kept to a 40-bit node address
            out["address"] = f"{_strtoul(_jstr(r.get('address'), '0'), 16) & 0xFFFFFFFFFF:010x}"
            out["flags"] = _jint(r.get("flags"), 0) & 0xFFFFFFFF
        if "length" in _ACTIONS[kind]:
            out["length"] = _jint(r.get("length"), 0) & 0xFFFF
        return out
    if kind.startswith("MATCH_") or kind == "INTEGER_RANGE":  # approximation: kept as sent
        return {**r, "not": _jbool(r.get("not"), False), "or": _jbool(r.get("or"), False)}
    return None


def _kept(item: Any) -> dict[str, Any] | None:
    return item if isinstance(item, dict) else None


_LISTS = (
    ("routes", _route),
    ("ipAssignmentPools", _pool),
    ("rules", _rule),
    ("capabilities", _kept),
    ("tags", _kept),
)


def _apply_post(n: dict[str, Any], b: dict[str, Any]) -> None:
    """networkUpdateFromPostData: absent keys untouched, unknown keys ignored, nothing rejected."""
    if "name" in b:
        n["name"] = _jstr(b["name"])
    if "private" in b:
        n["private"] = _jbool(b["private"], True)
    if "enableBroadcast" in b:
        n["enableBroadcast"] = _jbool(b["enableBroadcast"], False)
    if "multicastLimit" in b:
        n["multicastLimit"] = _jint(b["multicastLimit"], 32)
    if "mtu" in b:  # (unsigned int) cast, then clamped to [ZT_MIN_MTU, ZT_MAX_MTU]
        n["mtu"] = max(min(_jint(b["mtu"], 2800) & 0xFFFFFFFF, 10000), 1280)
    if "v4AssignMode" in b:
        v4 = b["v4AssignMode"]
        if isinstance(v4, str):  # legacy form
            n["v4AssignMode"] = {"zt": v4 == "zt"}
        else:  # true, null, 1...: {"zt": false}
            n["v4AssignMode"] = {"zt": isinstance(v4, dict) and _jbool(v4.get("zt"), False)}
    if "v6AssignMode" in b:
        v6, keys = b["v6AssignMode"], ("6plane", "rfc4193", "zt")
        if isinstance(v6, str):  # legacy "rfc4193,zt,6plane": all three keys written
            n["v6AssignMode"] = {k: k in v6.split(",") for k in keys}
        elif isinstance(v6, dict):  # only the keys given survive
            n["v6AssignMode"] = {k: _jbool(v6[k], False) for k in keys if k in v6}
        else:
            n["v6AssignMode"] = dict.fromkeys(keys, False)
    for key, make in _LISTS:
        if isinstance(b.get(key), list):  # anything else (a string, null) is ignored
            made = (make(item) for item in b[key])
            n[key] = [item for item in made if item is not None][:_MAX_ARRAY]
    dns = b.get("dns")
    if isinstance(dns, dict):  # not validated; "domain" becomes null when missing
        n["dns"] = {"domain": dns.get("domain")}
        if isinstance(dns.get("servers"), list):
            n["dns"]["servers"] = list(dns["servers"])


# --- request bodies and error answers --------------------------------------------------------


class _BadJSON(ValueError):
    pass


def _reject(name: str) -> Any:
    raise ValueError(name)  # nlohmann refuses NaN/Infinity, Python's json takes them


def _parse_json(raw: bytes) -> Any:
    """json.loads, failing with a message shaped like nlohmann's parse_error.101."""
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_reject)
    except ValueError as e:
        pos, msg = (e.pos, e.msg) if isinstance(e, json.JSONDecodeError) else (0, "")
        ctx, detail = "value", f"invalid literal; last read: '{text[pos : pos + 1]}'"
        if msg.startswith("Unterminated string"):  # nlohmann reads on to the end
            key = text[:pos].rstrip()[-1:] in ("{", ",")
            ctx = "object key" if key else "value"
            detail = f"invalid string: missing closing quote; last read: '{text[pos:]}'"
            detail += "; expected string literal" if key else ""
            pos = len(text)
        elif not text[pos:].strip():
            key = msg.startswith("Expecting property name")
            ctx = "object key" if key else "value"
            detail = "unexpected end of input; expected "
            detail += "string literal" if key else "'[', '{', or a literal"
        line, col = text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)
        raise _BadJSON(
            f"[json.exception.parse_error.101] parse error at line {line}, column {col}: "
            f"syntax error while parsing {ctx} - {detail}"
        ) from None


def _error500(message: str) -> Reply:
    # OneService's exception handler snprintf()s the message into 1024 bytes, unescaped.
    body = f'{{"error": 500, "description": "{message}"}}'[:1023]
    return 500, body.encode(), {"Content-Type": _JSON}


def _ok(value: Any) -> Reply:
    return 200, _dump(value), {"Content-Type": _JSON}


def _central_error(status: int, kind: str, message: str) -> Reply:
    # The one Central error body seen in the wild (issue #1366); for 401/403/404 it is a guess.
    return status, _dump({"type": kind, "message": message}), {"Content-Type": _JSON}


_NOT_FOUND: Reply = (404, b"", {})  # the controller's 404 and 400: no body, no Content-Type


# --- HTTP plumbing ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, emulator: ControllerEmulator) -> None:
        self.emulator = emulator
        super().__init__(("127.0.0.1", port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out, or get dropped on purpose, hang up: not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5.0  # idle keep-alive connections close, as cpp-httplib's do
    wbufsize = -1  # headers and body leave in one write: no Nagle/delayed-ACK stall per answer
    disable_nagle_algorithm = True
    server: _Server
    served: int  # answers given on this connection (Keep-Alive max=5)

    def setup(self) -> None:
        super().setup()
        self.served = 0
        self.server.emulator._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # never log: a request line can carry ?auth=<token>

    def do_GET(self) -> None:
        self.server.emulator._serve(self)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET


class ControllerEmulator:
    """Emulated zerotier-one (controller + member service) and ZeroTier Central on 127.0.0.1.

    Self-hosted controller and member service at ``url``; Legacy Central at
    ``url + "/api/v1"``; New Central at ``url + "/api/v2"``.
    """

    def __init__(
        self, *, token: str = "test-token", node_id: str = "8056c2e21c", port: int = 0
    ) -> None:
        if not re.fullmatch(r"[0-9a-f]{10}", node_id):
            raise ValueError(f"node_id must be 10 lowercase hex digits, got {node_id!r}")
        self._token = token.encode()
        self.node_id = node_id
        self.port = port
        self.faults = Faults()
        self.request_log: list[tuple[str, str, Any]] = []  #: (method, path, JSON body or None)
        self.central_rate_limit = 20  #: Central requests per second (a free account's budget)
        self.central_denied: set[str] = set()  #: network ids Central answers 403 for
        self.online = True  #: ``/status`` "online" (allowDefault needs it, doc §3)
        self.v2_lists = "replace"  #: New Central list updates, ASSUMED (lists): "replace" | "merge"
        self.v2_key_expired = False  #: New Central answers 401 as for an expired API key
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._nets: dict[str, dict[str, Any]] = {}  # the flat, self-hosted objects
        self._meta: dict[str, dict[str, Any]] = {}  # Central-only: description, lastModified
        self._joined: dict[str, dict[str, Any]] = {}  # member side: nwid -> flags, addresses
        self._conns: set[socket.socket] = set()
        self._window = (0.0, 0)  # Central rate limit: window start, requests in it
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle

    def start(self) -> ControllerEmulator:
        self._stopping.clear()
        self._server = _Server(self.port, self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="zt-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping on latency/timeout faults
        if self._server is not None:
            try:  # wakes serve_forever's select() now rather than at its next poll
                self._server.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                conns = list(self._conns)
            for conn in conns:  # unblock handlers waiting on idle keep-alive connections
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> ControllerEmulator:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return f"http://127.0.0.1:{self.port}"

    # --- state, for tests

    def add_network(self, nwid: str, **fields: Any) -> dict[str, Any]:
        """Create or update a network as a self-hosted POST of ``fields`` would (same rewrites);
        ``revision=N`` is then stored as is. Returns the stored object."""
        nwid = _nwid(nwid)
        revision = fields.pop("revision", None)
        with self._lock:
            self._update(nwid, fields)
            if revision is not None:
                self._nets[nwid]["revision"] = int(revision)
            return copy.deepcopy(self._nets[nwid])

    def network(self, nwid: str) -> dict[str, Any]:
        """The stored (flat, self-hosted) network object; KeyError if there is none."""
        with self._lock:
            return copy.deepcopy(self._nets[_nwid(nwid)])

    def join(self, nwid: str, *, addresses: list[str] | None = None, **flags: bool) -> None:
        """Make the emulated node a member of ``nwid``, with ``allow*`` flags and the
        ``assignedAddresses`` the member API should report."""
        if unknown := set(flags) - set(_FLAGS):
            raise TypeError(f"unknown flags: {sorted(unknown)}")
        with self._lock:
            state = self._join(_nwid(nwid))
            state.update(flags)
            if addresses is not None:
                state["addresses"] = list(addresses)

    # --- request handling

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _serve(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        raw = h.rfile.read(max(0, int(h.headers.get("Content-Length") or 0)))
        try:
            logged = json.loads(raw) if raw else None
        except ValueError:
            logged = None
        f = self.faults
        with self._lock:
            self.request_log.append((h.command, url.path, logged))  # no query: it may hold auth
            if f.drop_connection > 0:
                f.drop_connection -= 1
                h.close_connection = True
                return  # the socket is closed without a byte written
            stall = f.timeout if f.timeout > 0 and f.timeout_count > 0 else 0.0
            if stall:
                f.timeout_count -= 1
                if f.timeout_count <= 0:
                    f.timeout, f.timeout_count = 0.0, 1
        self._stopping.wait(f.latency + stall)
        central = url.path == "/api/v1" or url.path.startswith("/api/v1/")
        v2 = url.path.startswith("/api/v2/")
        with self._lock:
            reply: Reply | None = None
            if f.status_5xx > 0:
                f.status_5xx -= 1
                reply = f.status_5xx_code, b"{}", {"Content-Type": _JSON}
            elif f.rate_limit_429 > 0:
                f.rate_limit_429 -= 1
                reply = 429, b"{}", {"Content-Type": _JSON, "Retry-After": f.retry_after}
        if reply is None and central:
            reply = self._central(h, url.path[len("/api/v1") :], raw)
        elif reply is None and v2:
            from ztplan.testing import central_v2  # it builds on this module

            reply = central_v2.serve(self, h, url.path[len("/api/v2") :], raw)
        elif reply is None:
            reply = self._local(h, url, raw)
        status, body, headers = reply
        if status == 200 and body and headers.get("Content-Type") == _JSON:
            with self._lock:
                if f.malformed_json > 0:
                    f.malformed_json -= 1
                    body = body[: len(body) // 2]  # half an object or array never parses
        h.served += 1
        if not (central or v2):  # cpp-httplib closes a connection after 5 requests
            headers["Keep-Alive"] = "timeout=5, max=5"
            if h.served >= 5:
                headers["Connection"] = "close"
                h.close_connection = True
        h.send_response(status)
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _authorized(self, h: _Handler, query: str) -> bool:
        tokens = [h.headers.get("X-ZT1-Auth"), *parse_qs(query).get("auth", [])]
        scheme, _, value = (h.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() == "bearer":
            tokens.append(value.strip())
        return any(t is not None and hmac.compare_digest(t.encode(), self._token) for t in tokens)

    def _update(self, nwid: str, body: Any, central: bool = False) -> None:
        """Create or update ``nwid`` (caller holds the lock); FileDB::save compares the records
        without ``revision`` and bumps it only when they differ."""
        old = self._nets.get(nwid)
        new = copy.deepcopy(old) if old else json.loads(_DEFAULTS)
        if old is None:
            new.update(id=nwid, nwid=nwid, creationTime=_now_ms())
        if isinstance(body, dict):  # any other JSON value sets nothing (b.count() is 0)
            _apply_post(new, body)
            if central and isinstance(body.get("rulesSource"), str):
                new["rulesSource"] = body["rulesSource"]
        if old is not None and _dump({**old, "revision": 0}) == _dump({**new, "revision": 0}):
            return
        new["revision"] = _jint(new.get("revision"), 0) + 1
        self._nets[nwid] = new
        meta = self._meta.setdefault(nwid, {"description": "", "lastModified": 0})
        meta["lastModified"] = max(_now_ms(), meta["lastModified"] + 1)

    def _delete(self, nwid: str) -> dict[str, Any] | None:
        self._meta.pop(nwid, None)
        return self._nets.pop(nwid, None)

    def _new_id(self) -> str:
        while True:  # nwidPrefix | random 24 bits, never 000000
            nwid = f"{self.node_id}{secrets.randbelow(0xFFFFFF) + 1:06x}"
            if nwid not in self._nets:
                return nwid

    def _join(self, nwid: str) -> dict[str, Any]:
        default = dict.fromkeys(_FLAGS, False) | {"allowManaged": True, "addresses": []}
        return self._joined.setdefault(nwid, default)

    # --- self-hosted controller and member service

    def _local(self, h: _Handler, url: SplitResult, raw: bytes) -> Reply:
        if not self._authorized(h, url.query):  # checked before routing, as OneService does
            return 401, b"{}", {"Content-Type": _JSON}
        method, path = h.command, url.path
        post = method in ("POST", "PUT")  # PUT is a synonym of POST
        if method == "GET" and path == "/controller":
            text = '{\n\t"controller": true,\n\t"apiVersion": 4,\n\t"clock": %d,\n\t'
            text += '"databaseReady": true\n}\n'  # the one pretty-printed answer, with tabs
            return 200, (text % _now_ms()).encode(), {"Content-Type": _JSON}
        if method == "GET" and path == "/status":
            return _ok({"address": self.node_id, "online": self.online, "version": "1.14.1"})
        if method == "GET" and path in ("/controller/network", "/network"):
            with self._lock:
                if path == "/network":
                    return _ok([self._member_view(n) for n in sorted(self._joined)])
                return _ok(sorted(self._nets))
        if post and (m := re.fullmatch(r"/controller/network(?:/([0-9a-fA-F]{10})______)?", path)):
            if m[1] is not None and m[1] != self.node_id:
                return 400, b"", {}
            return self._post_network(None, raw)
        if m := re.fullmatch(r"/controller/network/([0-9a-fA-F]{16})", path):
            nwid = m[1].lower()
            if post:
                return self._post_network(nwid, raw)
            with self._lock:
                net = self._nets.get(nwid) if method == "GET" else None
                net = self._delete(nwid) if method == "DELETE" else net
            return _ok(net) if net is not None else _NOT_FOUND
        if m := re.fullmatch(
            r"/controller/network/([0-9a-fA-F]{16})/member(?:/([0-9a-fA-F]{10}))?", path
        ):
            return self._controller_member(method, m[1].lower(), m[2])
        if m := re.fullmatch(r"/network/([0-9a-fA-F]{16})", path):
            return self._service_network(method, m[1].lower(), raw)
        return _NOT_FOUND  # incl. trailing slashes, 15 hex digits, PATCH

    def _post_network(self, nwid: str | None, raw: bytes) -> Reply:
        try:
            body = _parse_json(raw)
        except _BadJSON as e:
            return _error500(str(e))
        with self._lock:
            nwid = nwid or self._new_id()
            self._update(nwid, body)  # creates an unknown network: no 404 on POST
            return _ok(self._nets[nwid])

    def _controller_member(self, method: str, nwid: str, mid: str | None) -> Reply:
        """Read-only: the emulated node is the one member, once it joined (our own) network."""
        with self._lock:
            net = self._nets.get(nwid)
            if net is None or method != "GET":
                return _NOT_FOUND
            ours = nwid in self._joined and nwid.startswith(self.node_id)
            if mid is None:
                return _ok({self.node_id: 1} if ours else {})
            if not ours or mid.lower() != self.node_id:
                return _NOT_FOUND
        member = {
            "activeBridge": False,
            "address": self.node_id,
            "authorized": False,
            "capabilities": [],
        }
        member |= {"id": self.node_id, "ipAssignments": self._joined[nwid]["addresses"]}
        member |= {"noAutoAssignIps": False, "nwid": nwid, "objtype": "member", "revision": 1}
        return _ok(member | {"tags": []})

    def _service_network(self, method: str, nwid: str, raw: bytes) -> Reply:
        with self._lock:
            if method == "GET" and nwid not in self._joined:
                return 404, b"{}", {"Content-Type": _JSON}
            if method == "DELETE":
                return _ok({"result": True} if self._joined.pop(nwid, None) else {})
            if method in ("POST", "PUT"):
                state = self._join(nwid)  # OneService calls _node->join() first
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None  # invalid JSON: ignored, the join stays
                if isinstance(body, dict):
                    state.update({k: body[k] for k in _FLAGS if isinstance(body.get(k), bool)})
            elif method != "GET":
                return _NOT_FOUND
            return _ok(self._member_view(nwid))

    def _member_view(self, nwid: str) -> dict[str, Any]:
        st, n = self._joined[nwid], self._nets.get(nwid)
        dns = n["dns"] if n is not None and isinstance(n["dns"], dict) else {}
        view = {k: st[k] for k in _FLAGS} | {"assignedAddresses": list(st["addresses"])}
        view |= {"bridge": False, "broadcastEnabled": bool(n and n["enableBroadcast"])}
        view |= {"dhcp": False, "id": nwid, "nwid": nwid, "portError": 0}
        view["dns"] = {"domain": dns.get("domain") or "", "servers": dns.get("servers") or []}
        view["mac"] = "32:" + ":".join(self.node_id[i : i + 2] for i in range(0, 10, 2))
        view["mtu"] = n["mtu"] if n else 2800
        view["multicastSubscriptions"] = []
        view["name"] = n["name"] if n else ""
        view["netconfRevision"] = n["revision"] if n else 0
        view["portDeviceName"] = "zt" + nwid[-8:]
        view["routes"] = [{"flags": 0, "metric": 0, **r} for r in n["routes"]] if n else []
        view["status"] = "OK" if n else "REQUESTING_CONFIGURATION"
        view["type"] = "PUBLIC" if n and not n["private"] else "PRIVATE"
        return view

    # --- ZeroTier Central

    def _central(self, h: _Handler, path: str, raw: bytes) -> Reply:
        now = time.time()
        with self._lock:
            start, count = self._window
            if now - start >= 1.0:  # a one-second window, opened by its first request
                start, count = now, 0
            self._window = start, count + 1
            limit = self.central_rate_limit
        rate = {
            "X-Ratelimit-Limit": str(limit),
            "X-Ratelimit-Remaining": str(max(0, limit - count - 1)),
            "X-Ratelimit-Reset": formatdate(start + 1.0, usegmt=True).replace("GMT", "UTC"),
        }
        if count >= limit:
            status, body, headers = _central_error(429, "rate_limited", "too many requests")
        else:
            status, body, headers = self._central_route(h, path, raw)
        return status, body, headers | rate

    def _central_route(self, h: _Handler, path: str, raw: bytes) -> Reply:
        scheme, _, token = (h.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            return _central_error(401, "unauthorized", "authorization required")
        if not hmac.compare_digest(token.strip().encode(), self._token):
            return _central_error(401, "unauthorized", "invalid token")
        method = h.command
        if path == "/network" and method == "GET":
            with self._lock:
                return _ok([self._central_view(n) for n in sorted(self._nets)])
        if path == "/network" and method == "POST":
            return self._central_post(None, raw)
        m = re.fullmatch(r"/network/([0-9a-fA-F]{16})", path)
        if not m or method not in ("GET", "POST", "DELETE"):
            return _central_error(404, "not_found", "not found")
        nwid = m[1].lower()
        if nwid in self.central_denied:
            return _central_error(403, "forbidden", "access denied")
        with self._lock:
            if nwid not in self._nets:
                return _central_error(404, "not_found", "network not found")
            if method == "GET":
                return _ok(self._central_view(nwid))
            if method == "DELETE":
                self._delete(nwid)
                return 200, b"", {}
        return self._central_post(nwid, raw)

    def _central_post(self, nwid: str | None, raw: bytes) -> Reply:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):  # even a creation needs at least {}
            return _central_error(400, "internal", "JSON error")
        config = body.get("config")
        update = dict(config) if isinstance(config, dict) else {}
        update.pop("rulesSource", None)  # a top-level field in Central
        if "rulesSource" in body:
            update["rulesSource"] = body["rulesSource"]
        with self._lock:
            nwid = nwid or self._new_id()
            self._update(nwid, update, central=True)  # config merged, lists replaced whole
            meta, description = self._meta[nwid], body.get("description")
            if isinstance(description, str) and description != meta["description"]:
                meta["description"] = description
                meta["lastModified"] = max(_now_ms(), meta["lastModified"] + 1)
            return _ok(self._central_view(nwid))

    def _central_view(self, nwid: str) -> dict[str, Any]:
        n, meta = copy.deepcopy(self._nets[nwid]), self._meta[nwid]
        config = {k: n[k] for k in ("creationTime", "name", "private", "enableBroadcast", "mtu")}
        for key in ("multicastLimit", "ipAssignmentPools", "v4AssignMode", "v6AssignMode"):
            config[key] = n[key]
        config |= {"rules": n["rules"], "tags": n["tags"], "capabilities": n["capabilities"]}
        config |= {"id": nwid, "lastModified": meta["lastModified"]}
        # Real Central leaves "via" out of on-link routes (doc §2).
        config["routes"] = [{k: v for k, v in r.items() if v is not None} for r in n["routes"]]
        no_dns = {"domain": "", "servers": None}
        config["dns"] = n["dns"] if isinstance(n["dns"], dict) else no_dns
        config["ssoConfig"] = {"enabled": n["ssoEnabled"], "mode": ""}
        counts = {"onlineMemberCount": 0, "authorizedMemberCount": 0, "totalMemberCount": 0}
        return counts | {
            "id": nwid,
            "clock": _now_ms(),
            "description": meta["description"],
            "rulesSource": n["rulesSource"],
            "ownerId": _OWNER,
            "permissions": {_OWNER: {"a": True, "d": True, "m": True, "r": True}},
            "capabilitiesByName": {},
            "tagsByName": {},
            "config": config,
        }


def _nwid(nwid: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{16}", nwid):
        raise ValueError(f"a network id is 16 hex digits, got {nwid!r}")
    return nwid.lower()


def main(argv: list[str] | None = None) -> None:
    """``python -m ztplan.testing.emulator``: serve until SIGTERM or ^C; prints only its URL."""
    parser = argparse.ArgumentParser(
        prog="python -m ztplan.testing.emulator", description="ZeroTier API emulator"
    )
    parser.add_argument("--port", type=int, default=9993, help="0 picks a free port")
    parser.add_argument("--token-file", type=Path, help="file holding the token (only read)")
    parser.add_argument("--node-id", default="8056c2e21c", help="10 hex digits")
    parser.add_argument(
        "--network", action="append", default=[], metavar="NWID", help="create it (repeatable)"
    )
    parser.add_argument(
        "--join",
        action="append",
        default=[],
        metavar="NWID",
        help="make the emulated node a member of it (member-side service API; repeatable)",
    )
    args = parser.parse_args(argv)
    token = args.token_file.read_text().strip() if args.token_file else "test-token"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    with ControllerEmulator(token=token, node_id=args.node_id, port=args.port) as emulator:
        for nwid in args.network:
            emulator.add_network(nwid)
        for nwid in args.join:
            emulator.join(nwid)
        print(emulator.url, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
