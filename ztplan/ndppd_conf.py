"""Parse and canonically format ndppd's configuration file (ndppd 0.2.x, `/etc/ndppd.conf`).

What ndppd 0.2.x's own reader (src/conf.cc) actually does: checked against the man page,
Debian's `ndppd.conf-dist`, and by feeding files to the real binary (Debian 0.2.5-6; its
banner says 0.2.4) in a throwaway network namespace with `-vvvv`, which prints the tree it
read and every rule it created.

* The file is a generic tree. A statement is `key [=] [value] [{ statements }]`. A key is
  `[A-Za-z0-9_-]+`. A value is the run of printable ASCII characters that follows, stopping
  at whitespace, `{` or `}`. Comments are `#` or `//` to the end of the line, and `/* ... */`.
  They are only comments where a key or a value could start, so `eth0#x` is one value.
* Newlines are *not* free. The value and the `{` must be on the same line as the key.
  `proxy eth0` followed by `{` on the next line gives ndppd a proxy with no rules plus a
  nameless block. It starts and proxies nothing. `router` followed by `yes` on the next
  line gives an empty router value and a key called `yes`. Statements may share a line,
  though: `router yes timeout 500` is two statements.
* `;` is not a separator. `router yes;` reads as the value `yes;`, and ndppd takes that
  as *false*. Quotes don't work either: the closing quote is never consumed.
* ndppd ignores unknown keys and duplicate keys without a word. When a key is repeated it
  uses one of the copies, and which one is not defined. A `}` at top level ends the file:
  whatever follows it is ignored. A control character sends the 0.2.5 reader into an
  endless, allocating loop. We saw it end in a glibc malloc assertion.
* ndppd reads booleans with `strcasecmp(v, "true") == 0 || strcasecmp(v, "yes") == 0`, so
  any other value is false. It reads integers with `strtol(v, NULL, 10)`, so `500ms` is
  500 and `abc` is 0.
* Prefixes go through ndppd's own parser. A missing `/len` means /128. Anything it can't
  read becomes `::`/128 without a word: `1.2.3.4`, `::ffff:1.2.3.4/120`, `fe80::1%eth0`,
  `2001:db8::/64/7`. `2001:db8::/` (empty length) becomes /0, and a `static` /0 rule
  answers for every address. Host bits are kept but masked away when matching, so
  `2001:db8::1/64` means `2001:db8::/64`.
* This parser reads the file exactly the way ndppd does. It then refuses, with a line
  number, everything that ndppd would silently read differently from how it looks: any of
  the above, unknown or repeated keys, values where none belong, blocks where none belong.

Meaning, and the decisions built on it:

* An empty rule block (`rule X { }`), or a rule with no block at all, has no default in
  the real binary. ndppd.conf(5) says it falls back to `static` with a warning, as 0.2.1
  did. The 0.2.5 binary instead fails with "You must specify either 'iface', 'auto' or
  'static'" and exits 255. So a rule needs exactly one method, and an empty rule is a parse
  error. (Two methods: "Only one of 'iface', 'auto' and 'static' may be specified.")
* Rule order is kept and counts for equality. This is a conservative choice: in 0.2.5 the
  order doesn't change which solicitations get answered. proxy::handle_solicit walks the
  rules in file order. The first matching `static` rule answers at once and ends the walk.
  Every matching `iface`/`auto` rule adds an interface to ask. A static rule therefore wins
  over an overlapping iface rule whether it comes before or after it. We checked this by
  sending Neighbor Solicitations through veths. Still, the order is the order ndppd asks
  interfaces in. Upstream's later code attaches per-rule state (`autovia`). And a writer
  that reordered someone's rules would be surprising. So rules are never reordered, and a
  reorder counts as drift. To compare rules as a set instead, sort them in `_check_proxy`
  and `_proxy`.
* One proxy per interface. The 0.2.5 binary accepts two `proxy eth0` blocks without
  complaint. Only the *last* one answers, and the earlier one's rules are dead. We checked
  this with real Neighbor Solicitations. So a duplicate interface is an error, both here and
  in `format_ndppd_conf`. With that settled, the order of proxies means nothing, and
  parsing and `meaning` sort proxies by interface.
* `None` means the option is absent, so ndppd's default applies. An explicit value is kept
  even when it equals the default (`router yes`): defaults differ between ndppd versions.
* `route-ttl`, `proxy`, `router`, `timeout`, `ttl`, `rule`, `static`, `auto` and `iface`
  are what ndppd 0.2.5 reads. `address-ttl`, `autowire`, `keepalive`, `retries`,
  `promiscuous` (proxy) and `autovia` (rule) are later upstream additions and not in the
  0.2.5 source. Debian's 0.2.5 binary accepts them and ignores them: see
  `IGNORED_BY_NDPPD_0_2_5`. Upstream documents `autovia` for `iface` rules only. It is
  kept wherever it is written.
* A `static` rule with a prefix of /120 or shorter makes ndppd log a warning ("Low prefix
  length"). It still works, so that is not an error here.
* ndppd.conf(5) says a file needs at least one proxy and a proxy at least one rule. The
  binary enforces neither, and both are allowed here.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "HEADER",
    "IGNORED_BY_NDPPD_0_2_5",
    "MAX_INT",
    "NdppdConf",
    "NdppdConfError",
    "Proxy",
    "Rule",
    "format_ndppd_conf",
    "meaning",
    "normalise_prefix",
    "parse_ndppd_conf",
]

HEADER: Final = "# Managed by ztplan; changes here are reported as drift."

#: Options this module knows that Debian's ndppd 0.2.5 parses and then ignores.
IGNORED_BY_NDPPD_0_2_5: Final = frozenset(
    {"address-ttl", "autowire", "keepalive", "retries", "promiscuous", "autovia"}
)

METHODS: Final = ("static", "auto", "iface")
MAX_INT: Final = 2**31 - 1  # ndppd stores strtol()'s result in an int
_IFNAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}")
_PREFIX_CHARS = re.compile(r"[0-9A-Fa-f:]+(/[0-9]{1,3})?")
_INT = re.compile(r"[0-9]+")
_BOOLS: Final = {"yes": True, "true": True, "no": False, "false": False}


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Rule:
    prefix: str
    method: str  # "static" | "auto" | "iface"
    iface: str | None = None  # only with method "iface"
    autovia: bool | None = None


@dataclass(frozen=True)
class Proxy:
    interface: str
    rules: tuple[Rule, ...]  # in file order, compared in order (see module docstring)
    router: bool | None = None
    timeout: int | None = None
    ttl: int | None = None
    autowire: bool | None = None
    keepalive: bool | None = None
    promiscuous: bool | None = None
    retries: int | None = None


@dataclass(frozen=True)
class NdppdConf:
    proxies: tuple[Proxy, ...]
    route_ttl: int | None = None
    address_ttl: int | None = None


class NdppdConfError(ValueError):
    """The text is not an ndppd.conf that ndppd would read the way it looks."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


# ----------------------------------------------------------------- validation (shared)

_PROXY_BOOLS: Final = ("router", "autowire", "keepalive", "promiscuous")
_PROXY_INTS: Final = ("timeout", "ttl", "retries")
# Canonical order of proxy options in the output.
_PROXY_ORDER: Final = (
    "router",
    "timeout",
    "ttl",
    "autowire",
    "keepalive",
    "promiscuous",
    "retries",
)


def _check_ifname(name: object, what: str) -> str:
    if not isinstance(name, str) or not _IFNAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} is not a Linux interface name (1-15 of A-Z a-z 0-9 _ . : @ + -)"
        )
    return name


def _format_address(value: int) -> str:
    """RFC 5952 text, hex groups only.

    This matches `str(IPv6Address)` except for IPv4-mapped addresses. Python 3.13 prints
    those dotted, and ndppd's parser can't read dotted quads.
    """
    groups = [(value >> (16 * (7 - i))) & 0xFFFF for i in range(8)]
    best_start, best_len, i = -1, 0, 0
    while i < 8:
        if groups[i] == 0:
            j = i
            while j < 8 and groups[j] == 0:
                j += 1
            if j - i > best_len:
                best_start, best_len = i, j - i
            i = j
        else:
            i += 1
    text = [f"{g:x}" for g in groups]
    if best_len < 2:
        return ":".join(text)
    head = ":".join(text[:best_start])
    tail = ":".join(text[best_start + best_len :])
    return f"{head}::{tail}"


def normalise_prefix(prefix: object) -> str:
    """`2001:19F0:6001:01a6::/80` -> `2001:19f0:6001:1a6::/80`; a bare address gets /128.

    Host bits are cleared: ndppd masks them away when matching. Raises ValueError for
    anything but plain hex-and-colon IPv6 text, such as dotted quads, zone ids or
    whitespace. ndppd would read those as `::`.
    """
    if not isinstance(prefix, str) or not _PREFIX_CHARS.fullmatch(prefix):
        raise ValueError(f"{prefix!r} is not an IPv6 prefix (hex and ':' with an optional /len)")
    try:
        net = ipaddress.IPv6Network(prefix, strict=False)
    except ValueError as exc:
        raise ValueError(f"{prefix!r} is not an IPv6 prefix: {exc}") from None
    return f"{_format_address(int(net.network_address))}/{net.prefixlen}"


def _check_bool(value: object, what: str) -> bool | None:
    if value is None or type(value) is bool:
        return value
    raise ValueError(f"{what} must be a bool or None, not {value!r}")


def _check_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise ValueError(f"{what} must be an int in 0..{MAX_INT} or None, not {value!r}")
    return value


def _check_rule(rule: object, where: str) -> Rule:
    if not isinstance(rule, Rule):
        raise ValueError(f"{where}: {rule!r} is not a Rule")
    prefix = normalise_prefix(rule.prefix)
    what = f"{where} rule {prefix}"
    if rule.method not in METHODS:
        raise ValueError(f"{what}: method must be one of {', '.join(METHODS)}, not {rule.method!r}")
    if rule.method == "iface":
        _check_ifname(rule.iface, f"{what}: iface")
    elif rule.iface is not None:
        raise ValueError(f"{what}: iface is only allowed with method 'iface'")
    _check_bool(rule.autovia, f"{what}: autovia")
    return Rule(prefix=prefix, method=rule.method, iface=rule.iface, autovia=rule.autovia)


def _check_proxy(proxy: object) -> Proxy:
    if not isinstance(proxy, Proxy):
        raise ValueError(f"{proxy!r} is not a Proxy")
    name = _check_ifname(proxy.interface, "proxy interface")
    where = f"proxy {name}"
    for opt in _PROXY_BOOLS:
        _check_bool(getattr(proxy, opt), f"{where}: {opt}")
    for opt in _PROXY_INTS:
        _check_int(getattr(proxy, opt), f"{where}: {opt}")
    if not isinstance(proxy.rules, tuple):
        raise ValueError(f"{where}: rules must be a tuple, not {type(proxy.rules).__name__}")
    rules = tuple(_check_rule(rule, where) for rule in proxy.rules)
    return Proxy(
        interface=name,
        rules=rules,
        router=proxy.router,
        timeout=proxy.timeout,
        ttl=proxy.ttl,
        autowire=proxy.autowire,
        keepalive=proxy.keepalive,
        promiscuous=proxy.promiscuous,
        retries=proxy.retries,
    )


def meaning(conf: NdppdConf) -> NdppdConf:
    """Check `conf` and return its canonical form, the one `parse_ndppd_conf` returns.

    Prefixes are normalised and proxies are sorted by interface. Rule order is kept (see the
    module docstring). Raises ValueError if a field is invalid or can't be written safely,
    or if two proxies share an interface. Two configs count as the same exactly when
    `meaning(a) == meaning(b)`. For parsed text, `parse_ndppd_conf(a) == parse_ndppd_conf(b)`
    is the same test.
    """
    if not isinstance(conf, NdppdConf):
        raise ValueError(f"{conf!r} is not an NdppdConf")
    if not isinstance(conf.proxies, tuple):
        raise ValueError(f"proxies must be a tuple, not {type(conf.proxies).__name__}")
    proxies = [_check_proxy(proxy) for proxy in conf.proxies]
    seen: set[str] = set()
    for proxy in proxies:
        if proxy.interface in seen:
            raise ValueError(f"two proxies on interface {proxy.interface!r}")
        seen.add(proxy.interface)
    return NdppdConf(
        proxies=tuple(sorted(proxies, key=lambda p: p.interface)),
        route_ttl=_check_int(conf.route_ttl, "route-ttl"),
        address_ttl=_check_int(conf.address_ttl, "address-ttl"),
    )


# ------------------------------------------------------------------------- formatter


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def format_ndppd_conf(conf: NdppdConf) -> str:
    """Canonical text for `conf`.

    The output has a header line and 4-space indents, one statement per line, in a fixed
    order: route-ttl, address-ttl, then the proxies sorted by interface. Inside a proxy come
    its options in a fixed order, then its rules in their own order. Raises ValueError
    (through `meaning`) if any field is invalid. No accepted value can contain whitespace,
    braces, `;`, `#`, `/` other than the prefix length, quotes or control characters, so
    nothing can break out of its statement.
    """
    canon = meaning(conf)
    lines = [HEADER]
    if canon.route_ttl is not None:
        lines.append(f"route-ttl {canon.route_ttl}")
    if canon.address_ttl is not None:
        lines.append(f"address-ttl {canon.address_ttl}")
    for proxy in canon.proxies:
        lines.append("")
        lines.append(f"proxy {proxy.interface} {{")
        for opt in _PROXY_ORDER:
            value = getattr(proxy, opt)
            if value is None:
                continue
            text = _yes_no(value) if type(value) is bool else str(value)
            lines.append(f"    {opt} {text}")
        for rule in proxy.rules:
            lines.append(f"    rule {rule.prefix} {{")
            method = f"iface {rule.iface}" if rule.method == "iface" else rule.method
            lines.append(f"        {method}")
            if rule.autovia is not None:
                lines.append(f"        autovia {_yes_no(rule.autovia)}")
            lines.append("    }")
        lines.append("}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- parser

_SPACE: Final = " \t\n\r\v\f"  # C isspace()
_KEY_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_DEPTH: Final = 2  # proxy { rule { } }


@dataclass
class _Node:
    key: str
    value: str
    line: int
    block: list[_Node] | None  # None: no braces at all


class _Reader:
    """A copy of ndppd 0.2.x's conf::parse_block / conf::parse / conf::skip.

    It refuses input where ndppd would read something other than what the text appears
    to say.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self._newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_left(self._newlines, self.pos if pos is None else pos) + 1

    def error(self, message: str, pos: int | None = None) -> NdppdConfError:
        return NdppdConfError(self.line(pos), message)

    def skip(self, newlines: bool) -> None:
        text, n = self.text, len(self.text)
        while self.pos < n:
            while (
                self.pos < n and text[self.pos] in _SPACE and (newlines or text[self.pos] != "\n")
            ):
                self.pos += 1
            if text.startswith("#", self.pos) or text.startswith("//", self.pos):
                end = text.find("\n", self.pos)
                self.pos = n if end < 0 else end
            elif text.startswith("/*", self.pos):
                # ndppd looks for "*/" starting at the '*' of "/*", so "/*/" is a whole comment.
                end = text.find("*/", self.pos + 1)
                if end < 0:
                    raise self.error("'/*' comment is never closed")
                self.pos = end + 2
            else:
                return

    def block(self, depth: int) -> list[_Node]:
        """Read statements up to a '}' (left unread) or, at top level, the end of text."""
        text, n = self.text, len(self.text)
        nodes: list[_Node] = []
        while True:
            self.skip(newlines=True)
            if self.pos >= n:
                return nodes
            char = text[self.pos]
            if char == "}":
                if depth == 0:
                    raise self.error("unbalanced braces: '}' without a matching '{'")
                return nodes
            start = self.pos
            while self.pos < n and text[self.pos] in _KEY_CHARS:
                self.pos += 1
            key = text[start : self.pos]
            if not key:
                raise self.error(self._not_a_key(char))
            line = self.line(start)
            self.skip(newlines=False)
            if text.startswith("=", self.pos):
                self.pos += 1
                self.skip(newlines=False)
            if self.pos < n and text[self.pos] in "'\"":
                raise self.error(
                    "quoted values don't work in ndppd 0.2.x (it never skips the closing quote)"
                )
            start = self.pos
            while self.pos < n and "!" <= text[self.pos] <= "~" and text[self.pos] not in "{}":
                self.pos += 1
            value = text[start : self.pos]
            self.skip(newlines=False)
            block: list[_Node] | None = None
            if text.startswith("{", self.pos):
                if depth >= _MAX_DEPTH:
                    raise self.error(
                        "blocks nest only two deep: proxy IFACE { rule PREFIX { ... } }"
                    )
                opened = self.pos
                self.pos += 1
                block = self.block(depth + 1)
                if self.pos >= n:
                    raise self.error("unbalanced braces: this '{' is never closed", opened)
                self.pos += 1  # the '}'
            nodes.append(_Node(key, value, line, block))

    @staticmethod
    def _not_a_key(char: str) -> str:
        if char == "{":
            return "'{' must be on the same line as its keyword (ndppd ignores the block otherwise)"
        if char == ";":
            return "';' is not a separator in ndppd.conf: write one statement per line"
        if char in "'\"":
            return "quoted values don't work in ndppd 0.2.x"
        if "!" <= char <= "~":
            return f"expected a keyword, found {char!r}"
        return f"unexpected character {char!r} (ndppd 0.2.5 hangs on control characters)"


def _no_block(node: _Node) -> None:
    if node.block is not None:
        raise NdppdConfError(node.line, f"'{node.key}' takes no {{ }} block")


def _once(seen: dict[str, int], node: _Node) -> None:
    if node.key in seen:
        raise NdppdConfError(
            node.line,
            f"'{node.key}' repeated (first on line {seen[node.key]}); ndppd would use either copy",
        )
    seen[node.key] = node.line


def _int_value(node: _Node) -> int:
    _no_block(node)
    # Digits after the zeros, counted before int(): int() of 5,000 digits is Python's own
    # ValueError, not an NdppdConfError (found by tests/adversarial/test_properties.py).
    digits = node.value.lstrip("0") or "0"
    if not _INT.fullmatch(node.value) or len(digits) > 10 or int(digits) > MAX_INT:
        hint = " (';' is not a separator)" if ";" in node.value else ""
        raise NdppdConfError(
            node.line,
            f"'{node.key}' needs a whole number 0..{MAX_INT} on the same line, "
            f"got {node.value[:40]!r}{hint}",
        )
    return int(digits)


def _bool_value(node: _Node) -> bool:
    _no_block(node)
    found = _BOOLS.get(node.value.lower())
    if found is None:
        hint = " (';' is not a separator: ndppd reads 'yes;' as false)" if ";" in node.value else ""
        raise NdppdConfError(
            node.line,
            f"'{node.key}' needs yes/no/true/false on the same line, got {node.value!r}{hint}",
        )
    return found


def _ifname_value(node: _Node) -> str:
    if not node.value:
        raise NdppdConfError(node.line, f"'{node.key}' needs an interface name on the same line")
    try:
        return _check_ifname(node.value, f"'{node.key}'")
    except ValueError as exc:
        raise NdppdConfError(node.line, str(exc)) from None


def _rule(node: _Node) -> Rule:
    if not node.value:
        raise NdppdConfError(node.line, "'rule' needs an IPv6 prefix on the same line")
    try:
        prefix = normalise_prefix(node.value)
    except ValueError as exc:
        raise NdppdConfError(node.line, f"{exc} (ndppd would silently use ::/128)") from None
    methods: list[_Node] = []
    seen: dict[str, int] = {}
    iface: str | None = None
    autovia: bool | None = None
    for child in node.block or []:
        _once(seen, child)
        if child.key in ("static", "auto"):
            _no_block(child)
            if child.value:
                raise NdppdConfError(
                    child.line, f"'{child.key}' takes no value, got {child.value!r}"
                )
            methods.append(child)
        elif child.key == "iface":
            _no_block(child)
            iface = _ifname_value(child)
            methods.append(child)
        elif child.key == "autovia":
            autovia = _bool_value(child)
        else:
            raise NdppdConfError(child.line, f"unknown rule option '{child.key}'")
    if not methods:
        raise NdppdConfError(
            node.line,
            f"rule {node.value} has no method: write one of static, auto or iface IFACE "
            "(ndppd 0.2.5 refuses to start without one, whatever its man page says)",
        )
    if len(methods) > 1:
        raise NdppdConfError(methods[1].line, "only one of 'iface', 'auto' and 'static' per rule")
    return Rule(prefix=prefix, method=methods[0].key, iface=iface, autovia=autovia)


def _proxy(node: _Node) -> Proxy:
    interface = _ifname_value(node)
    seen: dict[str, int] = {}
    bools: dict[str, bool] = {}
    ints: dict[str, int] = {}
    rules: list[Rule] = []
    for child in node.block or []:
        if child.key == "rule":
            rules.append(_rule(child))
            continue
        _once(seen, child)
        if child.key in _PROXY_BOOLS:
            bools[child.key] = _bool_value(child)
        elif child.key in _PROXY_INTS:
            ints[child.key] = _int_value(child)
        else:
            raise NdppdConfError(child.line, f"unknown proxy option '{child.key}'")
    return Proxy(
        interface=interface,
        rules=tuple(rules),
        router=bools.get("router"),
        timeout=ints.get("timeout"),
        ttl=ints.get("ttl"),
        autowire=bools.get("autowire"),
        keepalive=bools.get("keepalive"),
        promiscuous=bools.get("promiscuous"),
        retries=ints.get("retries"),
    )


def parse_ndppd_conf(text: str) -> NdppdConf:
    """Parse ndppd.conf text into its canonical `NdppdConf` (see `meaning`).

    Raises NdppdConfError, carrying a 1-based line number, for anything ndppd would reject
    or would silently read differently from how it looks (see the module docstring).
    """
    if "\0" in text:
        # ndppd reads the file as a C string: everything after a NUL is invisible to it.
        raise NdppdConfError(text.count("\n", 0, text.index("\0")) + 1, "NUL character")
    reader = _Reader(text)
    tree = reader.block(depth=0)
    seen: dict[str, int] = {}
    proxies: dict[str, Proxy] = {}
    proxy_lines: dict[str, int] = {}
    ttls: dict[str, int] = {}
    for node in tree:
        if node.key == "proxy":
            proxy = _proxy(node)
            if proxy.interface in proxies:
                raise NdppdConfError(
                    node.line,
                    f"second proxy on {proxy.interface} (first on line "
                    f"{proxy_lines[proxy.interface]}); use one proxy per interface",
                )
            proxies[proxy.interface] = proxy
            proxy_lines[proxy.interface] = node.line
        elif node.key in ("route-ttl", "address-ttl"):
            _once(seen, node)
            ttls[node.key] = _int_value(node)
        else:
            raise NdppdConfError(node.line, f"unknown top-level option '{node.key}'")
    return NdppdConf(
        proxies=tuple(proxies[name] for name in sorted(proxies)),
        route_ttl=ttls.get("route-ttl"),
        address_ttl=ttls.get("address-ttl"),
    )
