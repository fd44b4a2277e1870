"""The spec: pydantic models of the YAML file (`version: 1`) and the one way to load it.

Everything here is untrusted input: a string that can reach `iptables-restore`, a config
file or a path is checked for what it may contain, not only for its type. Loading never
raises anything but `SpecError`, which names the file, the field path and, where the YAML
parser knows it, the line.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from ztplan.errors import SpecError

__all__ = [
    "FAMILIES",
    "TABLES",
    "ChainSpec",
    "Spec",
    "format_field",
    "line_of",
    "load_spec",
    "parse_spec",
    "rule_problem",
]

FAMILIES = ("ipv4", "ipv6")
TABLES: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
"""Tables ztplan manages and their built-in chains (the only ones with a policy)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_QUOTING = re.compile(r"['\"\\\\]")
# Options that would turn a rule into another command inside iptables-restore's input.
_COMMAND_FLAGS = frozenset(
    "-A --append -C --check -D --delete -I --insert -R --replace -L --list -S --list-rules "
    "-F --flush -Z --zero -N --new-chain -X --delete-chain -P --policy -E --rename-chain "
    "-t --table".split()
)


def rule_problem(rule: str) -> str | None:
    """Why `rule` may not be sent to iptables-restore, or None when it may.

    The kernel round trip catches bad syntax; this catches what could escape the one line
    the rule is given (control characters, a second command, an unbalanced quote).
    """
    if not rule.strip():
        return "an iptables rule, not an empty string"
    if _CONTROL.search(rule):
        return "a rule on one line without control characters (newline, NUL, tab...)"
    try:  # str.split when there is no quoting: shlex is ~20x slower, and specs are long
        words = shlex.split(rule) if _QUOTING.search(rule) else rule.split()
    except ValueError:
        return "a rule with balanced quotes"
    flags = sorted(_COMMAND_FLAGS.intersection(words))
    if flags:
        return (
            f"rule arguments without the command {flags[0]} "
            "(write only what follows `-A CHAIN`; the chain is the key above)"
        )
    return None


def _check_rule(rule: str) -> str:
    problem = rule_problem(rule)
    if problem:
        raise ValueError(problem)
    return rule


_CHAIN_RE = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,27}$"
"""The kernel allows 28 characters; no dots, which would make addresses ambiguous."""
_IFACE_RE = r"^[A-Za-z0-9_.:@+-]{1,15}$"
_NWID_RE = r"^[0-9a-f]{16}$"

ChainName = Annotated[str, StringConstraints(pattern=_CHAIN_RE)]
Rule = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_check_rule)]
InterfaceName = Annotated[str, StringConstraints(pattern=_IFACE_RE)]
NetworkId = Annotated[str, StringConstraints(pattern=_NWID_RE)]


def _ip_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as error:
        raise ValueError(f"an IP network with a prefix length ({error})") from None


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError("an IPv4 or IPv6 address") from None


IpNetwork = Annotated[str, AfterValidator(_ip_network)]
IpAddress = Annotated[str, AfterValidator(_ip_address)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Model):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Name of this target (host); names its state and lock files.",
    )


class ChainSpec(_Model):
    """A chain written as a mapping, for options beyond the rule list."""

    rules: list[Rule] = Field(default_factory=list, description="Rules in order, as iptables args.")
    exclusive: bool = Field(
        default=False,
        description="ztplan owns the whole chain: foreign rules in it are deleted.",
    )

    @field_validator("rules")
    @classmethod
    def _no_duplicates(cls, rules: list[str]) -> list[str]:
        seen: set[str] = set()
        for rule in rules:
            if rule in seen:
                raise ValueError(f"each rule once; {rule!r} is written twice")
            seen.add(rule)
        return rules


class Table(_Model):
    """One iptables table: `policy` for built-in chains, then one key per chain."""

    policy: dict[ChainName, Literal["ACCEPT", "DROP"]] = Field(
        default_factory=dict, description="Policy of built-in chains (ACCEPT or DROP)."
    )
    chains: dict[ChainName, ChainSpec] = Field(
        default_factory=dict,
        description="Chain name -> its rules (a list, or {rules, exclusive}); written as keys "
        "of the table beside `policy`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_chains(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "chains" in data:
            return data
        chains = {
            k: ({"rules": v} if isinstance(v, list) else v)
            for k, v in data.items()
            if k != "policy"
        }
        out: dict[str, Any] = {"chains": chains}
        if "policy" in data:
            out["policy"] = data["policy"]
        return out


class Family(_Model):
    filter: Table | None = None
    nat: Table | None = None
    mangle: Table | None = None
    raw: Table | None = None
    security: Table | None = None

    def tables(self) -> dict[str, Table]:
        return {name: t for name in TABLES if (t := getattr(self, name)) is not None}


class Firewall(_Model):
    ipv4: Family | None = Field(default=None, description="iptables (IPv4) tables.")
    ipv6: Family | None = Field(default=None, description="ip6tables (IPv6) tables.")


class Controller(_Model):
    kind: Literal["central", "local"] = Field(
        description="ZeroTier Central or a self-hosted controller."
    )
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", description="API base URL.")
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the API token.",
    )
    token_file: str | None = Field(default=None, description="File holding the API token.")


class Route(_Model):
    target: IpNetwork = Field(description="Destination network, with prefix length.")
    via: IpAddress | None = Field(default=None, description="Gateway address; none = on-link.")


class Pool(_Model):
    start: IpAddress = Field(description="First address handed out.")
    end: IpAddress = Field(description="Last address handed out.")


class V4AssignMode(_Model):
    zt: bool = Field(description="Assign IPv4 addresses from the pools.")


class V6AssignMode(_Model):
    """All three are always sent: the controller replaces the object whole."""

    zt: bool = Field(default=False, description="Assign IPv6 addresses from the pools.")
    rfc4193: bool = Field(default=False, description="An RFC 4193 address per member.")
    sixplane: bool = Field(default=False, alias="6plane", description="A 6PLANE /80 per member.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Network(_Model):
    id: NetworkId = Field(description="ZeroTier network id (16 lowercase hex digits).")
    routes: list[Route] | None = Field(default=None, description="Managed routes.")
    ip_pools: list[Pool] | None = Field(default=None, description="IP assignment pools.")
    v4_assign_mode: V4AssignMode | None = Field(default=None, description="IPv4 auto-assign.")
    v6_assign_mode: V6AssignMode | None = Field(default=None, description="IPv6 auto-assign.")


class NdppdRule(_Model):
    prefix: IpNetwork = Field(description="IPv6 prefix ndppd answers for.")

    @field_validator("prefix")
    @classmethod
    def _ipv6(cls, value: str) -> str:
        if ipaddress.ip_network(value).version != 6:
            raise ValueError("an IPv6 prefix (ndppd answers IPv6 neighbour discovery)")
        return value

    method: str = Field(
        pattern=r"^(static|auto|iface:[A-Za-z0-9_.:@+-]{1,15})$",
        description="static | auto | iface:<name>",
    )


class NdppdProxy(_Model):
    interface: InterfaceName = Field(description="Interface ndppd listens on (the WAN side).")
    router: bool | None = None
    timeout: int | None = Field(default=None, ge=0)
    ttl: int | None = Field(default=None, ge=0)
    rules: list[NdppdRule] = Field(default_factory=list)


class Ndppd(_Model):
    config: str = Field(default="/etc/ndppd.conf", pattern=r"^/[^\x00-\x1f]*$")
    pidfile: str | None = Field(default=None, pattern=r"^/[^\x00-\x1f]*$")
    proxies: list[NdppdProxy] = Field(default_factory=list)


class MemberNetwork(_Model):
    id: NetworkId
    allow_default: bool | None = None
    allow_managed: bool | None = None
    allow_global: bool | None = None
    allow_dns: bool | None = None


class Member(_Model):
    service_url: str = Field(default="http://127.0.0.1:9993", pattern=r"^https?://[^\s]+$")
    token_file: str | None = None
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    networks: list[MemberNetwork] = Field(default_factory=list)


def _version(value: str, version: int, what: str) -> str:
    if ipaddress.ip_network(value, strict=False).version != version:
        raise ValueError(f"an IPv{version} {what}")
    return value


NdpMethod = Annotated[
    str, StringConstraints(pattern=r"^(static|auto|iface:[A-Za-z0-9_.:@+-]{1,15})$")
]


class GatewayNdpProxy(_Model):
    prefix: IpNetwork = Field(
        description="The part of the IPv6 prefix handed to members (the guide uses a /80), "
        "answered for on the WAN side by ndppd and routed to members by the controller."
    )
    method: NdpMethod = Field(
        default="static", description="ndppd rule method: static | auto | iface:<name>."
    )

    _v6 = field_validator("prefix")(lambda v: _version(v, 6, "prefix"))


class GatewayIPv4(_Model):
    subnet: IpNetwork = Field(description="The network's IPv4 subnet (its managed route).")
    address: IpAddress = Field(
        description="This gateway's ZeroTier IPv4 address: the default route's via."
    )
    nat: str = Field(
        description="`masquerade` for a dynamic public address, or the static public IPv4 "
        "address to SNAT to."
    )
    pool: bool = Field(
        default=True,
        description="Hand out the whole subnet (less network and broadcast) as the IP pool.",
    )

    _v4 = field_validator("subnet", "address")(lambda v: _version(v, 4, "network or address"))

    @field_validator("nat")
    @classmethod
    def _nat(cls, value: str) -> str:
        if value == "masquerade":
            return value
        try:
            return str(ipaddress.IPv4Address(value))
        except ValueError:
            raise ValueError("`masquerade` or an IPv4 address to SNAT to") from None

    @model_validator(mode="after")
    def _address_in_subnet(self) -> GatewayIPv4:
        if ipaddress.ip_address(self.address) not in ipaddress.ip_network(self.subnet):
            raise ValueError(f"address {self.address} is outside subnet {self.subnet}")
        return self


class GatewayIPv6(_Model):
    prefix: IpNetwork = Field(description="The IPv6 prefix routed to this gateway (e.g. a /64).")
    ndp_proxy: GatewayNdpProxy | None = Field(
        default=None,
        description="Answer neighbour discovery on the WAN side for members' addresses.",
    )
    inbound: Literal["open", "stateful"] = Field(
        default="stateful",
        description="`stateful`: from the Internet only replies reach members (the guide's "
        "appendix); `open`: all inbound IPv6 to the prefix is forwarded.",
    )

    _v6 = field_validator("prefix")(lambda v: _version(v, 6, "prefix"))

    @model_validator(mode="after")
    def _proxy_in_prefix(self) -> GatewayIPv6:
        if self.ndp_proxy is not None:
            inner = ipaddress.IPv6Network(self.ndp_proxy.prefix)
            if not inner.subnet_of(ipaddress.IPv6Network(self.prefix)):
                raise ValueError(f"ndp_proxy.prefix {inner} is outside prefix {self.prefix}")
        return self


class Gateway(_Model):
    """The `gateway:` shorthand (DESIGN §3): the guide's recipe as one declaration, expanded
    into ordinary resources (`ztplan validate --expand` shows them)."""

    network: NetworkId = Field(description="The ZeroTier network this gateway serves.")
    zerotier_interface: InterfaceName = Field(
        default="zt+", description="The ZeroTier interface (iptables pattern: zt+ for any)."
    )
    wan_interface: InterfaceName = Field(description="The interface to the Internet.")
    ipv4: GatewayIPv4 | None = Field(default=None, description="NAT to the Internet for IPv4.")
    ipv6: GatewayIPv6 | None = Field(default=None, description="Routed IPv6 for members.")


_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_@:+/-]+)+$")


def _check_sysctl_key(key: str) -> str:
    if not _SYSCTL_KEY.match(key) or len(key) > 255:
        raise ValueError(
            "a sysctl key like net.ipv4.ip_forward (dot-separated names, no path components)"
        )
    return key


def _check_sysctl_value(value: Any) -> Any:
    # YAML reads `yes` as True; sysctl wants 1, and a silent True -> "True" is a trap.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"an integer or a string, got {value!r}")
    if isinstance(value, str) and _CONTROL.search(value.replace("\t", " ")):
        raise ValueError("a value without control characters")
    return value


SysctlKey = Annotated[str, AfterValidator(_check_sysctl_key)]
SysctlValue = Annotated[int | str, BeforeValidator(_check_sysctl_value)]


class Spec(_Model):
    """A whole spec file."""

    _text: str = PrivateAttr(default="")
    """The YAML it was parsed from, to give the line of a field in later errors."""

    version: Literal[1] = Field(description="Spec format version; only 1 exists.")
    target: Target
    controller: Controller | None = None
    networks: list[Network] = Field(default_factory=list)
    gateway: Gateway | None = None
    firewall: Firewall | None = None
    sysctl: dict[SysctlKey, SysctlValue] = Field(
        default_factory=dict, description="sysctl key -> value, in the target's namespace."
    )
    ndppd: Ndppd | None = None
    member: Member | None = None


# --- loading -------------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that refuses duplicate keys (YAML would silently keep the last one).

    libyaml's parser when PyYAML has it: ~5x faster on a spec of 20,000 rules."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


class _PyLoader(yaml.SafeLoader):
    """The pure-Python twin, used only to word a syntax error (libyaml's are terser)."""


for _loader in (_Loader, _PyLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_PATTERN_WORDS = {
    _CHAIN_RE: "a chain name: up to 28 letters, digits, _ or -",
    _IFACE_RE: "an interface name: up to 15 letters, digits or . : @ + - _",
    _NWID_RE: "a network id: 16 lowercase hex digits",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$": "a name of letters, digits, _ . - (up to 63)",
    r"^https?://[^\s]+$": "an http:// or https:// URL",
    r"^[A-Za-z_][A-Za-z0-9_]*$": "an environment variable name",
    r"^(static|auto|iface:[A-Za-z0-9_.:@+-]{1,15})$": "static, auto or iface:<interface>",
    r"^/[^\x00-\x1f]*$": "an absolute path",
}
"""What each pattern means, for errors (a regex is no answer to a user)."""


def format_field(loc: tuple[Any, ...]) -> str:
    """('firewall', 'ipv4', 'filter', 'FORWARD', 1) -> 'firewall.ipv4.filter.FORWARD[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+-]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f'["{part}"]'
    return out


def _resolve(root: yaml.Node | None, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], int | None]:
    """Map pydantic's error location onto the YAML as written: the field path and its line.

    Steps that are not in the document are pydantic's own (`Table.chains`, the `rules` of a
    chain written as a list, union branch names) and are dropped, except a last step that
    names a missing field.
    """
    node, line, path = root, None, []
    loc = tuple(part for part in loc if part != "[key]")
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, yaml.MappingNode):
            found = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if found is not None:
                node, line = found[1], found[0].start_mark.line + 1
                path.append(part)
            elif last:
                path.append(part)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            path.append(part)
        elif last and not isinstance(node, yaml.SequenceNode):
            path.append(part)
    return tuple(path), line


def _python_yaml_error(text: str) -> yaml.YAMLError | None:
    """The pure-Python parser's wording of a syntax error (libyaml's is terser)."""
    try:
        yaml.load(text, Loader=_PyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        return error
    return None


def _raise_yaml_error(file: str, error: yaml.YAMLError) -> NoReturn:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    raise SpecError(
        file, "", f"not valid YAML: {problem}", mark.line + 1 if mark else None
    ) from None


def parse_spec(text: str, file: str) -> Spec:
    """Parse and validate spec text; `file` names it in errors."""
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        _raise_yaml_error(file, _python_yaml_error(text) or error)
    if not isinstance(data, dict):
        raise SpecError(file, "", "a YAML mapping with `version: 1` and `target: {name: ...}`")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        loc, line = _resolve(yaml.compose(text, Loader=yaml.SafeLoader), tuple(first["loc"]))
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "not a known field (check the spelling; see `ztplan schema`)"
        elif first["type"] == "missing":
            message = "required field is missing"
        elif first["type"] == "string_pattern_mismatch":
            pattern = str((first.get("ctx") or {}).get("pattern", ""))
            message = _PATTERN_WORDS.get(pattern, f"a value matching {pattern}")
            message += f", got {first.get('input')!r}"
        elif first["type"] == "literal_error":
            message = f"{message}, got {first.get('input')!r}"
        raise SpecError(file, format_field(loc), message, line) from None
    for loc, message in _semantic_problems(spec):
        _, line = _resolve(yaml.compose(text, Loader=yaml.SafeLoader), loc)
        raise SpecError(file, format_field(loc), message, line)
    spec._text = text
    if spec.gateway is not None:
        from ztplan.gateway import expand_gateway  # it builds on this module

        spec = expand_gateway(spec, file)
    return spec


def line_of(spec: Spec, loc: tuple[Any, ...]) -> int | None:
    """The line of field `loc` in the text `spec` was parsed from (None when unknown)."""
    if not spec._text:
        return None
    return _resolve(yaml.compose(spec._text, Loader=yaml.SafeLoader), loc)[1]


def _semantic_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """Checks that need more than one field, with the path of the field at fault."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if spec.networks and spec.controller is None:
        problems.append((("networks",), "a `controller:` section saying where the networks live"))
    ids = {
        "networks": [n.id for n in spec.networks],
        "member": [n.id for n in spec.member.networks] if spec.member else [],
    }
    for section, networks in ids.items():
        seen: set[str] = set()
        for i, network in enumerate(networks):
            loc = (section, i, "id") if section == "networks" else (section, "networks", i, "id")
            if network in seen:
                problems.append((loc, f"each network once; {network} is written twice"))
            seen.add(network)
    for family in FAMILIES:
        fam: Family | None = getattr(spec.firewall, family, None)
        for table_name, table in (fam.tables() if fam else {}).items():
            for chain in table.policy:
                if chain not in TABLES[table_name]:
                    problems.append(
                        (
                            ("firewall", family, table_name, "policy", chain),
                            f"a built-in chain of {table_name} ({', '.join(TABLES[table_name])}); "
                            "user chains have no policy",
                        )
                    )
    return problems


def load_spec(path: str) -> Spec:
    """Read a spec from a file in the working tree."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(
            path,
            "",
            f"cannot read the spec: {error.__class__.__name__}: "
            f"{getattr(error, 'strerror', None) or error}",
        ) from None
    return parse_spec(text, path)
