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
import unicodedata
from types import UnionType
from typing import Annotated, Any, Literal, NoReturn, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails

from ztplan.errors import SpecError
from ztplan.iptables import FAMILIES, TABLES, misspelt_target
from ztplan.secret import looks_like_token, redact_url

__all__ = [
    "FAMILIES",
    "MAX_SPEC_BYTES",
    "TABLES",
    "ChainSpec",
    "Spec",
    "check_spec_size",
    "format_field",
    "line_of",
    "load_spec",
    "parse_spec",
    "read_spec_text",
    "rule_problem",
    "rule_words",
]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNICODE_BREAK = re.compile("[\x80-\x9f\u2028\u2029]")
"""C1 controls (U+0085 NEXT LINE among them) and the Unicode line and paragraph separators:
str.splitlines breaks a line at each, so a rule holding one became two kernel rules."""


def _unicode_break(text: str) -> str | None:
    """`U+2028 (LINE SEPARATOR)` when `text` holds a Unicode line break or C1 control."""
    found = _UNICODE_BREAK.search(text)
    if found is None:
        return None
    char = found.group()
    name = "NEXT LINE" if char == "\x85" else unicodedata.name(char, "a C1 control character")
    return f"U+{ord(char):04X} ({name})"


_QUOTING = re.compile(r"['\"\\\\]")
_SHLEX_SPACE = re.compile(r"[ \t\r\n]+")


def rule_words(rule: str) -> list[str]:
    """The words of a rule as written, as `shlex.split` reads them: shlex itself only when
    something is quoted or escaped (it is ~20x slower than a split on its white space, and
    a plan looks at every rule of a spec that may hold 100,000)."""
    if _QUOTING.search(rule):
        return shlex.split(rule)
    return [word for word in _SHLEX_SPACE.split(rule) if word]


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
    if (char := _unicode_break(rule)) is not None:
        return f"a rule on one line: {char} is a line break or control character"
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


CHAIN_RE = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,27}$"
"""The kernel allows 28 characters; no dots, which would make addresses ambiguous."""
_IFACE_RE = r"^[A-Za-z0-9_.:@+-]{1,15}$"
_NWID_RE = r"^[0-9a-f]{16}$"

ChainName = Annotated[str, StringConstraints(pattern=CHAIN_RE)]
Rule = Annotated[str, StringConstraints(max_length=4096), AfterValidator(_check_rule)]
InterfaceName = Annotated[str, StringConstraints(pattern=_IFACE_RE)]
NetworkId = Annotated[str, StringConstraints(pattern=_NWID_RE)]


def _ip_network(value: str) -> str:
    if "/" not in value:  # ip_network reads it as /32 or /128; the controller stores /0
        example = f"{_clip(value, 40)}/{64 if ':' in value else 24}"
        raise ValueError(
            f"an IP network with its prefix length (e.g. {example}), got {_shown(value)}"
        )
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

MTU_RANGE = (1280, 10000)
"""ZeroTier's ZT_MIN_MTU and ZT_MAX_MTU: the self-hosted controller clamps into this range
without a word (CONTROLLER-API.md §1), so ztplan refuses anything outside it instead."""
DNS_MAX_SERVERS = 4
"""ZT_MAX_DNS_SERVERS: a member keeps only the first four servers of the pushed list."""
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _mtu(value: Any) -> int:
    low, high = MTU_RANGE
    # YAML reads `yes` as True and bool is an int: refuse both it and strings outright.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(
            f"an integer MTU from {low} to {high} (ZeroTier's limits), got {value!r}; "
            "1500 or less for a gateway whose WAN link is 1500 bytes"
        )
    return value


def _dns_domain(value: str) -> str:
    # 127: the member's NetworkConfig holds the domain in 128 bytes, NUL included.
    labels = value.split(".")
    if value and (len(value.encode()) > 127 or not all(_DNS_LABEL.match(x) for x in labels)):
        raise ValueError(
            f"a DNS search domain like zt.example.com (labels of letters, digits and `-`, up "
            f'to 63 characters each and 127 in all, no trailing dot), or "" for none; '
            f"got {value!r}"
        )
    return value


Mtu = Annotated[
    int,
    BeforeValidator(_mtu),
    WithJsonSchema({"type": "integer", "minimum": MTU_RANGE[0], "maximum": MTU_RANGE[1]}),
]
DnsDomain = Annotated[str, AfterValidator(_dns_domain)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class Target(_Model):
    """The host this spec configures. One target is one host plus the ZeroTier networks it
    serves."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="Name of this target, e.g. the gateway's hostname: letters, digits, "
        "`_ . -`, up to 63 characters. It names the state and lock files "
        "(`state/<name>.json`, `state/<name>.lock`) and the target's own firewall chains "
        "(`ZT-<name>.FORWARD`; past 12 characters, its head and a digest), so each target "
        "needs its own name; renaming a target starts a new state. Several targets may share "
        "a host (two gateways, a gateway and a member): give them one state dir, so each "
        "plan sees what the others claim. A name may not end in `.journal` or `.reverted`: "
        "`state/gw.journal.json` is target gw's journal.",
    )

    @field_validator("name")
    @classmethod
    def _not_another_targets_file(cls, name: str) -> str:
        # The state dir holds <t>.json, <t>.journal.json and <t>.reverted.json: a target
        # named gw.journal would have gw's journal for its state file.
        for suffix, what in ((".journal", "journal"), (".reverted", "revert outcome")):
            if name.endswith(suffix):
                raise ValueError(
                    f"a name that does not end in `{suffix}`: state/{name}.json is the "
                    f"{what} file of target {name.removesuffix(suffix)}"
                )
        return name


class ChainSpec(_Model):
    """A chain written as a mapping instead of a plain rule list, for options beyond the
    rules: `{rules: [...], exclusive: true}`."""

    rules: list[Rule] = Field(
        default_factory=list,
        description="The chain's rules in order, each written as iptables arguments without "
        "`-A CHAIN` (e.g. `-i zt+ -s 10.6.4.0/22 -j ACCEPT`); each rule once. They go, in "
        "this order, into the target's own chain for this one, `ZT-<target>.<chain>` (e.g. "
        "`ZT-gw1.FORWARD`), which only ztplan writes; a jump to a user chain of the spec goes "
        "to the target's own copy of it (`-j ZT-IN` is `-j ZT-gw1.ZT-IN`). A rule may not "
        "carry a comment `ztplan` or `ztplan:...`: ztplan marks its jumps with one.",
        json_schema_extra={"uniqueItems": True},
    )
    exclusive: bool = Field(
        default=False,
        description="For a built-in chain, `true`: ztplan owns the built-in chain itself too, "
        "and rules it did not write there (Docker's, fail2ban's, a human's; not other "
        "targets' jumps) are deleted from it, like Puppet's purge; a new one makes a plan "
        "made before it stale. `false`: such rules are listed in the plan as unmanaged and "
        "left alone. (A user chain of the spec is the target's own whole either way.)",
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


_BUILTIN_CHAINS = list(dict.fromkeys(chain for chains in TABLES.values() for chain in chains))


class Table(_Model):
    """One iptables table: `policy` for its built-in chains, then one key per chain
    (built-in, like `FORWARD`, or a user chain, like `ZT-IN`), each a list of rules or a
    `{rules, exclusive}` mapping. Each chain's rules live in the target's own chain
    `ZT-<target>.<chain>`, made when missing; a built-in chain gets one jump into it (see
    `Firewall`). A chain not written here has none of this target's rules: its own chain
    for it, from an earlier spec, is deleted with the jump; what others wrote is left."""

    policy: dict[ChainName, Literal["ACCEPT", "DROP"]] = Field(
        default_factory=dict,
        description="Default policy of built-in chains: chain -> `ACCEPT` or `DROP` (e.g. "
        "`{FORWARD: DROP}`, what a packet meets when no rule decides). Only the built-in chains "
        "of the table have one ("
        + "; ".join(f"{table}: {' '.join(chains)}" for table, chains in TABLES.items())
        + "). A policy listed is this target's claim: another target on the host (same state "
        "dir) that wants another value gets a plan error naming both specs. A chain not "
        "listed keeps its live policy, one listed before included: ztplan does not put back "
        "an earlier value.",
    )
    chains: dict[ChainName, ChainSpec] = Field(
        default_factory=dict,
        description="The table's chains, chain name -> rules. Written as keys of the table "
        "beside `policy` (not under a `chains:` key): a list of rules, or `{rules, exclusive}`.",
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

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The table as it is written (what `_split_chains` reads), not as it is stored:
        chains are keys beside `policy`, each a rule list or a ChainSpec mapping; policy
        keys are built-in chain names. Schema only: validation is unchanged."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        chains = schema["properties"].pop("chains")
        chain_spec = chains["patternProperties"][CHAIN_RE]
        rules = handler.resolve_ref_schema(chain_spec)["properties"]["rules"]
        policy = schema["properties"]["policy"]
        policy["additionalProperties"] = policy.pop("patternProperties")[CHAIN_RE]
        policy["propertyNames"] = {"enum": _BUILTIN_CHAINS}
        schema["propertyNames"] = {"pattern": CHAIN_RE, "not": {"const": "chains"}}
        schema["additionalProperties"] = {
            "description": "A chain of the table, named by its key (built-in like `FORWARD`, "
            "or a user chain like `ZT-IN`: up to 28 letters, digits, `_` or `-`): its rules as "
            "a list, or `{rules: [...], exclusive: true}`.",
            "oneOf": [
                {k: v for k, v in rules.items() if k not in ("default", "title")},
                chain_spec,
            ],
        }
        return schema


class Family(_Model):
    """The tables of one address family. A table not written here holds none of this
    target's rules: its own chains there, from an earlier spec, are deleted with their
    jumps; its policies and others' rules are left as they are."""

    filter: Table | None = Field(
        default=None,
        description="The `filter` table: what is forwarded, accepted or dropped (INPUT, "
        "FORWARD, OUTPUT). The exit gateway's IPv6 firewall lives in its FORWARD chain.",
    )
    nat: Table | None = Field(
        default=None,
        description="The `nat` table: address translation. The exit gateway's SNAT or "
        "MASQUERADE of the ZeroTier subnet to its public address lives in POSTROUTING.",
    )
    mangle: Table | None = Field(
        default=None,
        description="The `mangle` table: changes to packets (marks, TOS, TTL, TCP MSS "
        "clamping for the ZeroTier MTU).",
    )
    raw: Table | None = Field(
        default=None,
        description="The `raw` table: runs before connection tracking (e.g. `-j CT --notrack`).",
    )
    security: Table | None = Field(
        default=None,
        description="The `security` table: SELinux security marks (rarely used).",
    )

    def tables(self) -> dict[str, Table]:
        return {name: t for name in TABLES if (t := getattr(self, name)) is not None}


class Firewall(_Model):
    """iptables and ip6tables: policies and rules, by family and table, owned the way Docker,
    fail2ban and Tailscale share a host. The rules of each chain live in a chain of the
    target's own, `ZT-<target>.<chain>`, entered from the built-in chain by one jump,
    `-m comment --comment "ztplan:<target>" -j ZT-<target>.<chain>`, put first: only the
    jumps of tools that put theirs first on every start (Docker's `DOCKER-USER`,
    `DOCKER-FORWARD`, `DOCKER-ISOLATION-STAGE-1`, `DOCKER-INGRESS`, fail2ban's `f2b-*`,
    Tailscale's `ts-*`, other targets') may stand ahead of it, so a Docker restart is no
    drift and any other rule ahead of it is. Only ztplan writes inside its own chains; in
    the others it touches its jump (inserted at the head, deleted by its text), the
    policies it sets and, in an `exclusive` chain, the rules it purges (by their text).
    Each family is one `iptables-restore --noflush` transaction; a failed apply undoes
    exactly its changes, against a fresh read, so what others did meanwhile stays.
    Rules that ztplan 0.1 tagged `-m comment --comment ztplan` in the built-in chains,
    and its user chains that held only such rules, are ztplan's too: the next apply
    deletes them in the transaction that writes the spec's rules into the target's own
    chains (a move, for the rules the spec still has)."""

    ipv4: Family | None = Field(
        default=None,
        description="IPv4 tables (iptables). Not set: this target has no IPv4 rules (its own "
        "chains from an earlier spec are deleted); policies and others' rules are left alone.",
    )
    ipv6: Family | None = Field(
        default=None,
        description="IPv6 tables (ip6tables). Not set: this target has no IPv6 rules (its own "
        "chains from an earlier spec are deleted); policies and others' rules are left alone.",
    )


class Controller(_Model):
    """The network controller that holds the networks under `networks:`, and how to reach its
    API. ZeroTier runs two hosted control planes side by side, Legacy Central
    (my.zerotier.com, `kind: central`) and New Central (central.zerotier.com, `kind:
    central-v2`); a self-hosted controller is `kind: local`. Use the one the network was
    created in. New Central takes a service-account API key (Essential plan or above): create
    a service account in the organisation and an API token for it, with an expiry date
    (https://docs.zerotier.com/tokens/); the key is shown once. After that date New Central
    refuses it, and plan and apply stop with `answered 401` (or 403) and a note that
    service-account keys expire: create a new key and put it where `token_env` or
    `token_file` points. The token is never written in the spec: it is read from an
    environment variable or a file, and never appears in output, plans or state."""

    kind: Literal["central", "central-v2", "local"] = Field(
        description="Which control plane holds the networks. `central`: Legacy Central "
        "(my.zerotier.com, API v1), with a personal API token. `central-v2`: New Central "
        "(central.zerotier.com, API v2), with a service-account API key, which expires. `local`: "
        "a self-hosted controller (zerotier-one's own controller API), with its "
        "authtoken.secret. A network lives in one of them: pick the one whose web UI or API "
        "shows it. Decides the API paths, how the token is sent, and the defaults of `url`, "
        "`token_env` and `token_file`."
    )
    url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the controller's API, http:// or https://. Not set: "
        "`https://api.zerotier.com/api/v1` for central, `https://central.zerotier.com/api/v2` "
        "for central-v2, `http://127.0.0.1:9993` for local. "
        "The environment variable ZTPLAN_CONTROLLER_URL overrides it (staging, the sandbox).",
    )
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the API token. Not set (and "
        "no `token_file`): ZEROTIER_CENTRAL_TOKEN for central, ZEROTIER_CENTRAL_V2_TOKEN for "
        "central-v2. Wins over `token_file`.",
    )
    token_file: str | None = Field(
        default=None,
        description="Path of a file holding the API token, used when `token_env` is not set. "
        "Not set (and no `token_env`): /var/lib/zerotier-one/authtoken.secret for local "
        "(readable by root only).",
    )


class Route(_Model):
    """A managed route: the controller pushes it to every member of the network."""

    target: IpNetwork = Field(
        description="Destination network with its prefix length, host bits zero: the "
        "network's own subnet (`10.6.4.0/22`, on-link), the default route (`0.0.0.0/0`, via "
        "the gateway) or the members' IPv6 prefix."
    )
    via: IpAddress | None = Field(
        default=None,
        description="Next hop: the ZeroTier address of the member that routes the "
        "destination. For an exit gateway's default route, the gateway's own address on this "
        "network. It must lie inside another route of the network. Not set: on-link, reached "
        "directly over the ZeroTier network.",
    )


class Pool(_Model):
    """A range of addresses the controller assigns to members, both ends included."""

    start: IpAddress = Field(description="First address of the range, e.g. `10.6.4.1`.")
    end: IpAddress = Field(
        description="Last address of the range, included, e.g. `10.6.7.254`; the same "
        "family as `start`."
    )


class V4AssignMode(_Model):
    """How members get IPv4 addresses (the controller's `v4AssignMode`)."""

    zt: bool = Field(
        description="`true`: give each new member an IPv4 address from the network's "
        "`ip_pools`. `false`: members get IPv4 addresses only where they are set by hand."
    )


class V6AssignMode(_Model):
    """How members get IPv6 addresses (the controller's `v6AssignMode`). All three flags are
    always sent, because the controller replaces the object whole: a flag not written is
    `false`."""

    zt: bool = Field(
        default=False,
        description="Give each new member an IPv6 address from the network's IPv6 `ip_pools`.",
    )
    rfc4193: bool = Field(
        default=False,
        description="Give each member an RFC 4193 (unique local, fd00::/8) /128 address "
        "computed from the network id and its node id.",
    )
    sixplane: bool = Field(
        default=False,
        alias="6plane",
        description="Give each member a 6PLANE /80 computed from the network id and its node "
        "id (room for containers or VMs behind it). Written `6plane`.",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, defer_build=True)


class Dns(_Model):
    """DNS settings the controller pushes to members (ZeroTier's `dns` object). Members use
    them only with `allowDNS`, and only when the domain is set."""

    domain: DnsDomain = Field(
        description='Search domain, e.g. `zt.example.com`; `""` for none. Members ignore the '
        "servers while it is empty."
    )
    servers: list[IpAddress] = Field(
        description="IPv4 or IPv6 addresses of the DNS servers, in order, each once; at most 4 "
        "(members keep only the first four). `[]`: none.",
        json_schema_extra={"maxItems": DNS_MAX_SERVERS, "uniqueItems": True},
    )

    @field_validator("servers")
    @classmethod
    def _servers(cls, servers: list[str]) -> list[str]:
        if len(servers) > DNS_MAX_SERVERS:
            raise ValueError(
                f"at most {DNS_MAX_SERVERS} servers (members keep only the first "
                f"{DNS_MAX_SERVERS}), got {len(servers)}"
            )
        if len(set(servers)) != len(servers):
            raise ValueError("each server once")
        return servers

    @model_validator(mode="after")
    def _domain_with_servers(self) -> Dns:
        if self.servers and not self.domain:
            raise ValueError(
                "a `domain` with the servers: members apply pushed DNS only when the search "
                "domain is set"
            )
        return self


class Network(_Model):
    """One ZeroTier network whose settings ztplan manages on the controller. A field not
    written is not managed: the controller keeps what it has. ztplan never creates
    networks."""

    id: NetworkId = Field(
        description="ZeroTier network id: 16 lowercase hex digits (the first 10 are the "
        "controller's node id). The network must exist on the controller."
    )
    routes: list[Route] | None = Field(
        default=None,
        description="The network's managed routes, as a whole list (compared sorted: the "
        "order does not matter). An exit gateway needs the subnet (on-link), `0.0.0.0/0` via "
        "its ZeroTier address and, for routed IPv6, the members' prefix. Not set: routes are "
        "not managed; `[]`: no routes.",
    )
    ip_pools: list[Pool] | None = Field(
        default=None,
        description="Address ranges the controller assigns from, as a whole list (compared "
        "sorted). Not set: pools are not managed; `[]`: no pools.",
    )
    v4_assign_mode: V4AssignMode | None = Field(
        default=None, description="IPv4 auto-assignment. Not set: not managed."
    )
    v6_assign_mode: V6AssignMode | None = Field(
        default=None, description="IPv6 auto-assignment. Not set: not managed."
    )
    mtu: Mtu | None = Field(
        default=None,
        description="MTU of the members' ZeroTier interface, 1280 to 10000. ZeroTier's "
        "default, 2800, is more than a 1500-byte WAN link carries: TCP through the gateway "
        "can stall where path MTU discovery fails, and the plan warns unless the gateway "
        "clamps TCP MSS (a `TCPMSS` rule in mangle). 1500 avoids that. Not set: not managed.",
    )
    dns: Dns | None = Field(
        default=None,
        description="The search domain and DNS servers pushed to members (used by members "
        "with `allow_dns`), e.g. the gateway serving DNS on its ZeroTier address. "
        '`{domain: "", servers: []}`: none. Not set: not managed.',
    )
    v4_subnet: IpNetwork | None = Field(
        default=None,
        description="New Central only (`kind: central-v2`): the network's IPv4 boundary "
        "(`config.v4Subnet`), e.g. `10.6.4.0/22`. New Central does not document how it relates "
        "to routes and pools; ztplan writes it as given. Not set: not managed.",
    )
    v6_subnet: IpNetwork | None = Field(
        default=None,
        description="New Central only (`kind: central-v2`): the network's IPv6 boundary "
        "(`config.v6Subnet`). Not set: not managed.",
    )

    _v4_subnet = field_validator("v4_subnet")(lambda v: v and _version(v, 4, "subnet"))
    _v6_subnet = field_validator("v6_subnet")(lambda v: v and _version(v, 6, "subnet"))


class NdppdRule(_Model):
    """One `rule` of an ndppd proxy: the addresses it answers neighbour solicitations for,
    and how it decides to answer."""

    prefix: IpNetwork = Field(
        description="IPv6 prefix ndppd answers for, with its length: the part of the routed "
        "prefix handed to members (the guide's /80, e.g. `2001:19f0:6001:1a6::/80`). It should "
        "lie inside one of the network's IPv6 routes."
    )

    @field_validator("prefix")
    @classmethod
    def _ipv6(cls, value: str) -> str:
        if ipaddress.ip_network(value).version != 6:
            raise ValueError("an IPv6 prefix (ndppd answers IPv6 neighbour discovery)")
        return value

    method: str = Field(
        pattern=r"^(static|auto|iface:[A-Za-z0-9_.:@+-]{1,15})$",
        description="How ndppd decides to answer: `static` (always, for every address in the "
        "prefix: the guide's choice), `iface:<name>` (when the address answers on that "
        "interface, e.g. `iface:zt0`) or `auto` (when the routing table has a route for it: "
        "flaky, and the plan warns).",
    )


class NdppdProxy(_Model):
    """One `proxy <interface>` block of ndppd.conf: ndppd listens on the interface for
    neighbour solicitations and answers for the prefixes of its rules. One proxy per
    interface."""

    interface: InterfaceName = Field(
        description="Interface ndppd listens on: the WAN side, where the upstream router asks "
        "for the members' addresses (e.g. `eth0`). Up to 15 characters."
    )
    router: bool | None = Field(
        default=None,
        description="`router yes|no`: set the router flag in ndppd's neighbour "
        "advertisements. Not set: nothing is written, so ndppd's own default applies (yes in "
        "0.2; defaults differ between versions).",
    )
    timeout: int | None = Field(
        default=None,
        ge=0,
        description="`timeout`, in milliseconds: how long ndppd waits for an answer on the "
        "rule's interface before it gives up on a solicitation. Not set: ndppd's default (500).",
    )
    ttl: int | None = Field(
        default=None,
        ge=0,
        description="`ttl`, in milliseconds: how long ndppd remembers an answer (or its "
        "absence). Not set: ndppd's default (30000).",
    )
    rules: list[NdppdRule] = Field(
        default_factory=list,
        description="The proxy's rules, in order: the order is kept, and a reorder is drift. "
        "Empty: the proxy answers for nothing.",
    )


class Ndppd(_Model):
    """ndppd, the NDP proxy daemon that makes the members' IPv6 addresses reachable from the
    WAN side. ztplan owns its whole config file, compares it by meaning (comments and spacing
    are not drift) and restarts the daemon when the meaning changes. One target per file:
    a second target on the host (same state dir) that writes it is a plan error."""

    config: str = Field(
        default="/etc/ndppd.conf",
        pattern=r"^/[^\x00-\x1f]*$",
        description="Absolute path of the ndppd config file ztplan writes (whole file, "
        "atomically, mode 0644). With `--netns NAME`, a path under /etc/ is taken under "
        "/etc/ztplan/netns/NAME/.",
    )
    pidfile: str | None = Field(
        default=None,
        pattern=r"^/[^\x00-\x1f]*$",
        description="Absolute path of ndppd's pid file. Set it where no systemd unit runs "
        "ndppd (containers, the sandbox): ztplan then runs `ndppd -d -c CONFIG -p PIDFILE` "
        "itself. Not set: systemd's ndppd.service on a host with systemd; otherwise ztplan "
        "runs ndppd with /run/ztplan-ndppd.pid (in a namespace /run/ztplan-ndppd-NAME.pid).",
    )
    proxies: list[NdppdProxy] = Field(
        default_factory=list,
        description="One proxy per interface, usually a single one on the WAN interface. "
        "Empty: ndppd proxies nothing.",
    )

    @field_validator("config", "pidfile")
    @classmethod
    def _no_parent_steps(cls, value: str | None) -> str | None:
        # With --netns, /etc/X is taken under the namespace's folder: `..` would leave it.
        if value is not None and ".." in value.split("/"):
            raise ValueError(f"an absolute path without `..` components, got {_shown(value)}")
        return value


class MemberNetwork(_Model):
    """The settings of one joined network on this host as a member, what `zerotier-cli set
    <nwid> allowDefault=1` sets. A flag not written is not managed."""

    id: NetworkId = Field(
        description="ZeroTier network id (16 lowercase hex digits). The node must have "
        "joined it: ztplan never joins networks."
    )
    allow_default: bool | None = Field(
        default=None,
        description="allowDefault: accept a default route pushed by the controller, so all "
        "traffic goes through the exit gateway. Enable it on one network only; a Linux member "
        "then also needs `net.ipv4.conf.all.rp_filter: 2` (loose).",
    )
    allow_managed: bool | None = Field(
        default=None,
        description="allowManaged: accept the addresses and routes the controller assigns "
        "(ZeroTier's default: true).",
    )
    allow_global: bool | None = Field(
        default=None,
        description="allowGlobal: accept managed addresses and routes in public (non-private) "
        "IP space, such as a routed global IPv6 prefix (ZeroTier's default: false).",
    )
    allow_dns: bool | None = Field(
        default=None,
        description="allowDNS: use the DNS servers and search domain the controller pushes "
        "(ZeroTier's default: false).",
    )


class Member(_Model):
    """This host as a ZeroTier member (a client of the gateway): flags of the networks it has
    joined, set through the local ZeroTier service API."""

    service_url: str = Field(
        default="http://127.0.0.1:9993",
        pattern=r"^https?://[^\s]+$",
        description="Base URL of the local zerotier-one service API, http:// or https://. The "
        "environment variable ZTPLAN_MEMBER_URL overrides it.",
    )
    token_file: str | None = Field(
        default=None,
        description="Path of a file holding the service's auth token, used when `token_env` "
        "is not set. Not set: /var/lib/zerotier-one/authtoken.secret (readable by root only). "
        "ZTPLAN_MEMBER_TOKEN_FILE overrides both.",
    )
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the service's auth token. Wins "
        "over `token_file`.",
    )
    networks: list[MemberNetwork] = Field(
        default_factory=list,
        description="The joined networks whose flags ztplan sets; each id once.",
    )


def _version(value: str, version: int, what: str) -> str:
    if ipaddress.ip_network(value, strict=False).version != version:
        raise ValueError(f"an IPv{version} {what}")
    return value


NdpMethod = Annotated[
    str, StringConstraints(pattern=r"^(static|auto|iface:[A-Za-z0-9_.:@+-]{1,15})$")
]


class GatewayNdpProxy(_Model):
    """The members' IPv6 addresses made reachable from the WAN side: an ndppd proxy on the
    WAN interface and a controller route for the prefix."""

    prefix: IpNetwork = Field(
        description="The part of the IPv6 prefix handed to members (the guide uses a /80), "
        "answered for on the WAN side by ndppd and routed to members by the controller."
    )
    method: NdpMethod = Field(
        default="static",
        description="The ndppd rule's method: `static`, `iface:<name>` or `auto` (see "
        "NdppdRule's `method`).",
    )

    _v6 = field_validator("prefix")(lambda v: _version(v, 6, "prefix"))


class GatewayIPv4(_Model):
    """IPv4 for members: the subnet, a default route through this gateway, and NAT of the
    subnet to the gateway's public address."""

    subnet: IpNetwork = Field(
        description="The network's IPv4 subnet, e.g. `10.6.4.0/22`: its on-link managed "
        "route, and the source that is NATed."
    )
    address: IpAddress = Field(
        description="This gateway's ZeroTier IPv4 address, inside `subnet`: the `via` of the "
        "default route `0.0.0.0/0` pushed to members."
    )
    nat: str = Field(
        description="`masquerade` for a dynamic public address (`-o WAN -j MASQUERADE`), or "
        "the static public IPv4 address to SNAT to (`-j SNAT --to-source ADDRESS`)."
    )
    pool: bool = Field(
        default=True,
        description="Hand out the whole subnet (less network and broadcast) as the IP pool. "
        "`false`: the pools are not written.",
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
    """Routed IPv6 for members: forwarding, the IPv6 firewall (FORWARD policy DROP, out from
    the ZeroTier side, in from the WAN side) and, optionally, ndppd."""

    prefix: IpNetwork = Field(
        description="The IPv6 prefix routed to this gateway by the provider, e.g. a /64."
    )
    ndp_proxy: GatewayNdpProxy | None = Field(
        default=None,
        description="Answer neighbour discovery on the WAN side for the members' addresses "
        "(needed when the provider does not route the prefix but expects it on-link). Not set: "
        "no ndppd, and members are routed the whole `prefix`.",
    )
    inbound: Literal["open", "stateful"] = Field(
        default="stateful",
        description="What the WAN side may send to members' IPv6 addresses. `stateful`: only "
        "replies to connections members opened (the guide's appendix). `open`: all inbound "
        "IPv6 to the prefix is forwarded, and members' own firewalls decide.",
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
    """The `gateway:` shorthand: the guide's exit gateway for one network as one declaration,
    expanded into ordinary resources (networks, firewall, sysctl, ndppd; `ztplan validate
    --expand` prints them). A resource also written out elsewhere in the spec with another
    value is an error, never a silent merge; a sysctl written out with the value the
    shorthand gives it is the one exception."""

    network: NetworkId = Field(
        description="The ZeroTier network this gateway serves (16 lowercase hex digits). Its "
        "routes and pool are generated, so it must not also be under `networks:`."
    )
    zerotier_interface: InterfaceName = Field(
        default="zt+",
        description="The ZeroTier interface, as iptables matches it: `zt+` is any interface "
        "whose name starts with zt.",
    )
    wan_interface: InterfaceName = Field(
        description="The interface to the Internet, e.g. `eth0`: where NAT and ndppd act."
    )
    ipv4: GatewayIPv4 | None = Field(
        default=None, description="IPv4 for members, NATed to the Internet. Not set: no IPv4."
    )
    ipv6: GatewayIPv6 | None = Field(
        default=None, description="Routed IPv6 for members. Not set: no IPv6."
    )
    mtu: Mtu | None = Field(
        default=None,
        description="The network's `mtu` (see Network): 1500 suits a 1500-byte WAN link. Not "
        "set: not managed.",
    )
    dns: Dns | None = Field(
        default=None,
        description="The network's `dns` (see Network), e.g. the gateway's ZeroTier address "
        "as the server. Not set: not managed.",
    )
    mss_clamp: bool = Field(
        default=True,
        description="Clamp the TCP MSS of forwarded SYNs to the path MTU (mangle FORWARD "
        "`-j TCPMSS --clamp-mss-to-pmtu`): ZeroTier's MTU (2800) is larger than a WAN's "
        "(1500), and without it TCP through the gateway stalls where path MTU discovery "
        "fails. `false`: no clamp.",
    )
    forward_policy: Literal["DROP", "ACCEPT"] = Field(
        default="DROP",
        description="The IPv4 FORWARD policy. `DROP` (the default): only what the gateway's "
        "rules accept is forwarded (ZeroTier -> WAN from the subnet, and replies back), so "
        "the gateway is no open router and a host with Docker (FORWARD policy DROP) still "
        "forwards. `ACCEPT`: the guide's literal setup, warned about in every plan.",
    )


FlowKindName = Literal["outbound", "inbound", "management", "mss"]


class VerifyFlow(_Model):
    """One flow `ztplan verify` (and plan, apply, drift) sends real packets for, through a
    twin of the gateway."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_. -]{0,39}$",
        description="What the flow is called in the output, e.g. `web out`.",
    )
    kind: FlowKindName = Field(
        description="`outbound`: a member -> a host on the Internet, the answer must come "
        "back. `inbound`: a host on the Internet -> a member, unsolicited. `management`: a "
        "host on the Internet -> the gateway's WAN address (TCP). `mss`: a member's TCP SYN "
        "through the gateway, its MSS clamped."
    )
    family: Literal["ipv4", "ipv6"] = Field(description="The address family of the flow.")
    protocol: Literal["tcp", "udp"] = Field(
        default="tcp", description="`tcp` or `udp` (management and mss flows are TCP)."
    )
    port: int = Field(
        default=443,
        ge=1,
        le=65535,
        description="The server's port: on the Internet side (outbound, mss), on the member "
        "(inbound), on the gateway (management).",
    )
    expect: Literal["pass", "blocked"] | None = Field(
        default=None,
        description="What must happen. Not set: `pass`, but `blocked` for inbound flows.",
    )
    source: str | None = Field(
        default=None,
        description="Outbound: the source address the Internet side must see: an address "
        "(the SNAT address), `wan` (the gateway's WAN address: MASQUERADE) or `member` "
        "(the member's own: routed IPv6). Not set: any source, as long as the answer comes "
        "back.",
    )
    max_mss: int | None = Field(
        default=None,
        ge=88,
        le=65495,
        description="MSS flows: the largest MSS the Internet side may see. Not set: the WAN "
        "MTU less 40 (IPv4) or 60 (IPv6).",
    )

    @model_validator(mode="after")
    def _fits(self) -> VerifyFlow:
        if self.kind in ("management", "mss") and self.protocol != "tcp":
            raise ValueError(f"a {self.kind} flow is TCP")
        if self.source not in (None, "wan", "member"):
            _ip_address(self.source)
        if self.source is not None and self.kind != "outbound":
            raise ValueError("`source` is checked on outbound flows only")
        return self


class Verify(_Model):
    """What `ztplan verify` proves with real packets through a twin of the gateway (network
    namespaces with the gateway's interfaces, addresses and whole packet filter: iptables,
    native nftables, iptables-legacy), beside the flows the `gateway:` shorthand implies
    and the management ports found listening."""

    zerotier_interface: InterfaceName | None = Field(
        default=None,
        description="The ZeroTier interface the twin's member hangs off, as iptables matches "
        "it (`zt+`). Not set: the gateway shorthand's, else `zt+`.",
    )
    wan_interface: InterfaceName | None = Field(
        default=None,
        description="The WAN interface. Not set: the gateway shorthand's, else the interface "
        "of the default route.",
    )
    flows: list[VerifyFlow] = Field(
        default_factory=list, description="Flows to check, each with its expectation."
    )
    management_ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list,
        description="TCP ports on the gateway that must stay reachable from the WAN side if "
        "they are now, beside the ones found listening (sshd's): apply refuses a change that "
        "cuts one, unless --allow-lockout.",
    )


_SYSCTL_KEY = re.compile(r"^[a-z0-9_]+(\.[A-Za-z0-9_@:+/-]+)+$")


def _check_sysctl_key(key: str) -> str:
    parts = [part.replace("/", ".") for part in key.split(".")]  # as sysctl.key_path reads it
    if not _SYSCTL_KEY.match(key) or len(key) > 255 or {"", ".", ".."} & set(parts):
        raise ValueError(
            "a sysctl key like net.ipv4.ip_forward (dot-separated names, no path components)"
        )
    return key


def _check_sysctl_value(value: Any) -> Any:
    # YAML reads `yes` as True; sysctl wants 1, and a silent True -> "True" is a trap.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"an integer or a string, got {_shown(value)}")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        # The kernel's widest sysctl is an unsigned long: a bigger number failed at apply.
        raise ValueError(f"an integer of at most 64 bits, got {_shown(value)}")
    if isinstance(value, str) and (
        _CONTROL.search(value.replace("\t", " ")) or _unicode_break(value)
    ):
        raise ValueError("a value without control characters or line breaks")
    if isinstance(value, str) and len(value) > 4096:
        raise ValueError("a value of at most 4096 characters (the kernel reads one page)")
    return value


_NUMERIC_LEAVES = frozenset(
    "ip_forward forwarding rp_filter proxy_arp proxy_ndp accept_ra accept_redirects "
    "secure_redirects send_redirects accept_source_route log_martians disable_ipv6 autoconf "
    "accept_dad arp_ignore arp_announce arp_filter bc_forwarding src_valid_mark "
    "route_localnet ip_nonlocal_bind tcp_syncookies tcp_mtu_probing ip_no_pmtu_disc "
    "accept_local hop_limit mtu ip_default_ttl".split()
)
"""sysctl keys (by their last name) whose value the kernel reads as a number: a word there
(`"yes"`, quoted, so not YAML's true) is refused now, not by the kernel at apply."""


def _sysctl_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    return [
        (("sysctl", key), f"a number ({key.rsplit('.', 1)[-1]} takes one), got {_shown(value)}")
        for key, value in spec.sysctl.items()
        if isinstance(value, str)
        and key.replace("/", ".").rsplit(".", 1)[-1] in _NUMERIC_LEAVES
        and not re.fullmatch(r"\s*-?\d+\s*", value)
    ]


SysctlKey = Annotated[str, AfterValidator(_check_sysctl_key)]
SysctlValue = Annotated[int | str, BeforeValidator(_check_sysctl_value)]


class Spec(_Model):
    """A ztplan spec file (`version: 1`): the desired state of one target, an exit gateway
    (firewall, sysctl, ndppd, controller routes) or a member. A section that is not written
    is not managed, but for the target's own firewall chains: those are its own whatever
    the spec says, and go when it no longer writes them."""

    _text: str = PrivateAttr(default="")
    """The YAML it was parsed from, to give the line of a field in later errors."""
    _shorthand: Gateway | None = PrivateAttr(default=None)
    """The `gateway:` block the spec was expanded from (its flows are verified)."""

    version: Literal[1] = Field(
        description="Spec format version. Only `1` exists; a new format gets a new number."
    )
    target: Target = Field(description="The host this spec describes; names its state and lock.")
    controller: Controller | None = Field(
        default=None,
        description="The network controller of the networks under `networks:` (required "
        "with them).",
    )
    networks: list[Network] = Field(
        default_factory=list,
        description="ZeroTier networks whose routes, pools and assign modes ztplan manages on "
        "the controller; each id once.",
    )
    gateway: Gateway | None = Field(
        default=None,
        description="The exit gateway for one network as one declaration, expanded into "
        "`networks`, `firewall`, `sysctl` and `ndppd`.",
    )
    firewall: Firewall | None = Field(
        default=None,
        description="iptables and ip6tables policies and rules, in chains of the target's own. "
        "Not set: the target's own chains and jumps are deleted; policies and others' rules "
        "are left as they are.",
    )
    sysctl: dict[SysctlKey, SysctlValue] = Field(
        default_factory=dict,
        description="Kernel parameters, key -> value, written under /proc/sys of the target's "
        "network namespace, e.g. `net.ipv4.ip_forward: 1` (forwarding makes a gateway). Values "
        "are integers or strings: YAML's `yes`/`true` is refused (write 1). A dot inside a name "
        "(a VLAN interface) is written `/`. Each key listed is this target's claim: another "
        "target on the host (same state dir) that wants another value gets a plan error "
        "naming both specs; the same value is no conflict. Keys not listed are not touched, "
        "one listed before included (it keeps its value).",
        json_schema_extra={
            "propertyNames": {"pattern": _SYSCTL_KEY.pattern, "maxLength": 255},
        },
    )
    ndppd: Ndppd | None = Field(
        default=None,
        description="The NDP proxy that answers for the members' IPv6 addresses on the WAN side.",
    )
    member: Member | None = Field(
        default=None,
        description="This host as a member of ZeroTier networks (a client of a gateway).",
    )
    verify: Verify | None = Field(
        default=None,
        description="Flows proven with real packets through a twin of the gateway, beside "
        "those of the `gateway:` shorthand. Not set: the shorthand's flows and the "
        "management ports found listening.",
    )
    persist: Literal["auto", "debian", "redhat", "none"] = Field(
        default="none",
        description="After apply, save the live firewall where the distribution restores it "
        "at boot (debian: /etc/iptables/rules.v4 and rules.v6 for netfilter-persistent; "
        "redhat: /etc/sysconfig/iptables and ip6tables for iptables-services), the sysctls to "
        "/etc/sysctl.d/90-ztplan.conf, and enable ndppd; the plan shows what a reboot would "
        "lose. The whole live ruleset is saved, foreign rules included. `auto` reads "
        "/etc/os-release. Off by default: an existing host's boot files are only replaced "
        "when asked.",
    )


# --- loading -------------------------------------------------------------------------


class _Constructing:
    """What both loaders construct with: a constructor's own failure (`!!int abc`, an
    integer of 5,000 digits, month 13) is a YAML error at that node, not a bare ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)  # type: ignore[misc]
        except (ValueError, TypeError, OverflowError) as error:
            said = str(error)
            if "Exceeds the limit" in said:  # Python's guard against quadratic int parsing
                said = "a number too long to read (more than 4300 digits)"
            raise yaml.constructor.ConstructorError(
                None, None, _clip(said, 120), node.start_mark
            ) from None


class _Loader(_Constructing, getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe loader that refuses duplicate keys (YAML would silently keep the last one).

    libyaml's parser when PyYAML has it: ~5x faster on a spec of 20,000 rules."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "a mapping key must be a plain value, not a list or mapping",
                key_node.start_mark,
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_shown(key)}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


class _PyLoader(_Constructing, yaml.SafeLoader):
    """The pure-Python twin, used only to word a syntax error (libyaml's are terser)."""


for _loader in (_Loader, _PyLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_STR, _SEQ = "tag:yaml.org,2002:str", yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG
_MERGE = "tag:yaml.org,2002:merge"


class _Streaming(yaml.composer.Composer):
    """Lists of strings kept as strings while composing, not as nodes to construct later.

    libyaml's own composer builds a node and two marks for every scalar before the first
    is constructed: for 2 x 50,000 rules, 40 MB at the peak (most of it never given back
    to the system) and 0.4 s. This is PyYAML's composer, run on libyaml's events, with
    one shortcut: a list item that is a plain string (no anchor; a scalar that would be
    constructed as `str`) is kept as that string, which is what constructing it would
    give. Anything else (an alias, an anchor, a number, a mapping) is composed as usual,
    and the list of a merge key (`<<: [...]`) or with an anchor of its own is composed
    whole (the constructor reads those as nodes). The same data, in 0.17 s and 45 MB."""

    _key: yaml.Node | None = None
    """The key whose value is being composed (None: a list item or the root)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self._key = index if isinstance(index, yaml.Node) else None
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor: Any) -> yaml.SequenceNode:
        key, start = self._key, self.get_event()  # type: ignore[attr-defined]
        tag = start.tag
        if tag is None or tag == "!":
            tag = self.resolve(yaml.SequenceNode, None, start.implicit)  # type: ignore[attr-defined]
        node = yaml.SequenceNode(tag, [], start.start_mark, None, flow_style=start.flow_style)
        if anchor is not None:
            self.anchors[anchor] = node
        fast = tag == _SEQ and anchor is None and not (key is not None and key.tag == _MERGE)
        items: list[Any] = node.value
        while not self.check_event(yaml.SequenceEndEvent):  # type: ignore[attr-defined]
            if fast:
                event = self.peek_event()  # type: ignore[attr-defined]
                if type(event) is yaml.ScalarEvent and event.anchor is None:
                    scalar = event.tag
                    if scalar is None or scalar == "!":
                        scalar = self.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[attr-defined]
                    if scalar == _STR:
                        self.get_event()  # type: ignore[attr-defined]
                        items.append(event.value)
                        continue
            items.append(self.compose_node(node, len(items)))
        node.end_mark = self.get_event().end_mark  # type: ignore[attr-defined]
        return node

    def construct_sequence(self, node: yaml.Node, deep: bool = False) -> list[Any]:
        if not isinstance(node, yaml.SequenceNode):
            return super().construct_sequence(node, deep)  # type: ignore[misc,no-any-return]
        return [
            item if type(item) is str else self.construct_object(item, deep=deep)  # type: ignore[attr-defined]
            for item in node.value
        ]


class _StreamLoader(_Streaming, _Loader):
    """What a spec is loaded with: `_Loader`'s parser and checks, `_Streaming`'s lists.
    (`_Loader` alone composes the nodes that errors are placed with.)"""

    def __init__(self, stream: str) -> None:
        _Loader.__init__(self, stream)  # type: ignore[call-arg]
        yaml.composer.Composer.__init__(self)


MAX_SPEC_BYTES = 16 * 1024 * 1024
"""The largest spec read: 16 MiB. A spec of 2 x 50,000 rules is about 4 MiB written
tersely and 8-10 MiB with long rules (~100 characters); 16 MiB parses in ~1 s and ~150 MB.
A bigger file is refused before it is read (`/dev/zero`, a runaway generator)."""
MAX_DEPTH = 32
"""The deepest spec is about 8 levels (firewall.ipv4.filter.CHAIN.rules[i]); deeper YAML
is refused before validation (100,000 nested lists overflowed the stack)."""
MAX_VALUES = 2_000_000
"""Values in the spec once YAML aliases are expanded (20 times a spec of 2 x 50,000
rules): an alias bomb of a few kilobytes expands to billions."""


def _clip(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: an error is one line, whatever the input held."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any) -> str:
    """An input as errors echo it: its repr, clipped, without a URL's userinfo."""
    return _clip(redact_url(repr(value)))


def _check_shape(file: str, data: Any) -> None:
    """Refuse YAML too deep, too big once aliases are expanded, or an alias that contains
    itself, before pydantic walks it. Iterative and linear in the distinct objects (an
    alias is one object however often it is used)."""
    done: dict[int, tuple[int, int]] = {}  # id -> (values once expanded, depth)
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, finished = stack.pop()
        if not isinstance(node, dict | list):
            continue
        children = list(node.values()) if isinstance(node, dict) else node
        if finished:
            size, depth = 1, 1
            for child in children:
                if isinstance(child, dict | list):
                    child_size, child_depth = done[id(child)]
                    size, depth = size + child_size, max(depth, child_depth + 1)
                else:
                    size += 1
            if depth > MAX_DEPTH:
                raise SpecError(file, "", f"nested deeper than {MAX_DEPTH} levels")
            if size > MAX_VALUES:
                raise SpecError(
                    file, "", f"more than {MAX_VALUES:,} values once YAML aliases are expanded"
                )
            done[id(node)] = (size, depth)
            active.discard(id(node))
            continue
        if id(node) in done:
            continue
        if id(node) in active:
            raise SpecError(file, "", "a YAML alias that contains itself")
        active.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, dict | list))


def read_spec_text(path: str) -> str:
    """A spec file's text: only a regular file (not a FIFO that hangs, not /dev/zero), of at
    most MAX_SPEC_BYTES, in UTF-8. Raises SpecError naming the file."""
    from ztplan.files import NotRegular, TooLarge, read_regular

    try:
        data = read_regular(path, MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise SpecError(path, "", "no such spec file") from None
    except NotRegular as error:
        raise SpecError(
            path, "", f"{error.kind}, not a spec file (a spec is a regular YAML file)"
        ) from None
    except TooLarge as error:
        check_spec_size(path, error.size)
        raise
    except OSError as error:
        raise SpecError(path, "", f"cannot read the spec ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(path, "", "not UTF-8 text") from None


def check_spec_size(file: str, size: int) -> None:
    """Refuse a spec of more than MAX_SPEC_BYTES (a file, or a blob at a git commit)."""
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            file,
            "",
            f"{size:,} bytes, more than the {MAX_SPEC_BYTES // (1024 * 1024)} MiB a spec may "
            "have (2 x 50,000 rules take 4-10 MiB)",
        )


_PATTERN_WORDS = {
    CHAIN_RE: "a chain name: up to 28 letters, digits, _ or -",
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
        elif str(part).isprintable():
            out += f'["{part}"]'
        else:  # a key with a newline or U+2028 would break the one-line error
            out += f"[{_clip(repr(str(part)))}]"
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
    """The pure-Python parser's wording of a syntax error (libyaml's is terser); only for
    specs of up to 256 KiB, since it parses ~1 MiB a second."""
    if len(text) > 256 * 1024:
        return None
    try:
        yaml.load(text, Loader=_PyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        return error
    except RecursionError:  # libyaml stopped at its nesting limit; this one recurses
        return None
    return None


def _raise_yaml_error(file: str, error: yaml.YAMLError) -> NoReturn:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or (str(error).splitlines() or ["?"])[0]
    raise SpecError(
        file, "", f"not valid YAML: {_clip(problem, 160)}", mark.line + 1 if mark else None
    ) from None


def parse_spec(text: str, file: str) -> Spec:
    """Parse and validate spec text; `file` names it in errors. Raises SpecError only."""
    check_spec_size(file, len(text))
    try:
        data = yaml.load(text, Loader=_StreamLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        _raise_yaml_error(file, _python_yaml_error(text) or error)
    except RecursionError:
        raise SpecError(file, "", f"nested deeper than {MAX_DEPTH} levels") from None
    _check_shape(file, data)
    if not isinstance(data, dict):
        raise SpecError(file, "", "a YAML mapping with `version: 1` and `target: {name: ...}`")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        root = _compose(text)
        raise _all_at_once([_problem(file, root, detail) for detail in error.errors()]) from None
    problems = _semantic_problems(spec)
    if problems:
        root = _compose(text)
        raise _all_at_once(
            [
                SpecError(file, format_field(loc), message, _resolve(root, loc)[1])
                for loc, message in problems
            ]
        )
    spec._text = text
    if spec.gateway is not None:
        from ztplan.gateway import expand_gateway  # it builds on this module

        spec = expand_gateway(spec, file)
    return spec


def _compose(text: str) -> yaml.Node | None:
    """The node tree, to find a field's line: libyaml's composer (~20x the pure-Python one,
    which took 6 s on a spec of 100,000 rules with one bad rule)."""
    return yaml.compose(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def _problem(file: str, root: yaml.Node | None, detail: ErrorDetails) -> SpecError:
    """One pydantic error as the user reads it: file:line, the field as written, and what
    was expected in words (with the nearest field name for a misspelt one)."""
    loc, line = _resolve(root, tuple(detail["loc"]))
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        near = _nearest_field(tuple(detail["loc"]))
        if near is not None:
            loc, line = _resolve(root, near[0])
            message = f"not a known field; did you mean `{near[1]}`? (see `ztplan schema`)"
        else:
            message = "not a known field (check the spelling; see `ztplan schema`)"
    elif detail["type"] == "missing":
        message = "required field is missing"
    elif detail["type"] == "string_pattern_mismatch":
        pattern = str((detail.get("ctx") or {}).get("pattern", ""))
        message = _PATTERN_WORDS.get(pattern, f"a value matching {pattern}")
        given = detail.get("input")
        if detail["loc"][-1:] == ("token_env",) and looks_like_token(str(given)):
            message += " (this looks like a token itself, so it is not shown)"
        else:
            message += f", got {_shown(given)}"
    elif detail["type"] == "literal_error":
        message = f"{message}, got {_shown(detail.get('input'))}"
    return SpecError(file, format_field(loc), message, line)


def _all_at_once(problems: list[SpecError]) -> SpecError:
    """Every problem of a spec, in the file's order, each once: the first is the error's
    message (what one-line callers show), `lines()` lists them all, so a user fixes a
    spec in one round instead of one typo per run."""
    unique = list({str(p): p for p in problems}.values())
    unique.sort(key=lambda p: (p.line is None, p.line or 0))
    first, *rest = unique
    first.also = rest
    return first


def _flat(tp: Any) -> list[Any]:
    """`Annotated[X | None, ...]` -> [X, NoneType]: the types a value may have."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _flat(get_args(tp)[0])
    if origin in (Union, UnionType):
        return [t for arg in get_args(tp) for t in _flat(arg)]
    return [tp]


def _field_types(tp: Any, part: Any) -> list[Any]:
    """The types one step `part` of a pydantic error location leads to from type `tp`."""
    origin = get_origin(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return _flat(field.annotation) if field is not None else []
    if origin is list and isinstance(part, int):
        return _flat(get_args(tp)[0])
    if origin is dict and isinstance(part, str):
        return _flat(get_args(tp)[1])
    return []


def _fields_of(types: list[Any]) -> list[str]:
    """The field names a user may write in a mapping of one of `types`."""
    names: list[str] = []
    for tp in types:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            hidden = {"chains"} if tp is Table else set()  # a table's chains are its own keys
            names += [n for n in tp.model_fields if n not in hidden]
    return names


def _nearest_field(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], str] | None:
    """For an unknown field at `loc`: (the location of the misspelt key, the known field
    it is nearest to), or None when nothing is near. Looked up in the model the key was
    written in; and, since a table's chains are keys beside `policy`, a "chain" named
    like a table field (`polcy: {FORWARD: DROP}`) is taken for that field."""
    from difflib import get_close_matches

    types: list[Any] = [Spec]
    for i, part in enumerate(loc):
        names = _fields_of(types)
        if i == len(loc) - 1 or (Table in types and part == "chains"):
            key = loc[i + 1] if part == "chains" and i + 1 < len(loc) else part
            known = [n for n in names if n != key]
            match = get_close_matches(str(key), known, n=1, cutoff=0.75)
            if match:
                return loc[: i + 2] if part == "chains" else loc, match[0]
            if i == len(loc) - 1:
                return None
        types = [t for tp in types for t in _field_types(tp, part)] or types
    return None


def line_of(spec: Spec, loc: tuple[Any, ...]) -> int | None:
    """The line of field `loc` in the text `spec` was parsed from (None when unknown)."""
    if not spec._text:
        return None
    return _resolve(_compose(spec._text), loc)[1]


_KIND_NAMES = {"central": "Legacy Central", "local": "a self-hosted controller"}


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
    kind = spec.controller.kind if spec.controller else None
    for i, net in enumerate(spec.networks):
        for field in ("v4_subnet", "v6_subnet"):
            if getattr(net, field) is not None and kind != "central-v2":
                problems.append(
                    (
                        ("networks", i, field),
                        "a setting of New Central only (`controller.kind: central-v2`); "
                        f"{_KIND_NAMES.get(kind or '', 'this controller')} has none",
                    )
                )
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
            for chain, chain_spec in table.chains.items():
                for i, rule in enumerate(chain_spec.rules):
                    target = _jump_of(rule)
                    if target is None or target in table.chains:
                        continue
                    if (meant := misspelt_target(target)) is not None:
                        problems.append(
                            (
                                ("firewall", family, table_name, chain, i),
                                f"jumps to {target}, which is no target: {meant} misspelt? "
                                "(a name one letter from a target's is taken for a typo, "
                                "not a chain)",
                            )
                        )
    problems += _network_problems(spec) + _secret_problems(spec) + _member_problems(spec)
    return problems + _sysctl_problems(spec)


def _member_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """allow_default on two networks: a member sends its default route through one gateway
    only (the plan says so too, with the live flags; this needs none)."""
    networks = spec.member.networks if spec.member else []
    on = [i for i, n in enumerate(networks) if n.allow_default]
    return [
        (
            ("member", "networks", i, "allow_default"),
            f"true on one network only: networks[{on[0]}] ({networks[on[0]].id}) has it too, "
            "and a member sends its default route through one gateway",
        )
        for i in on[1:]
    ]


def _network_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """Routes and pools the controller would silently rewrite, drop or never use
    (CONTROLLER-API.md §0): it never refuses them, so ztplan does."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    for i, network in enumerate(spec.networks):
        on_link: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        targets: dict[str, int] = {}
        for j, route in enumerate(network.routes or []):
            target = ipaddress.ip_network(route.target)
            if route.via is not None and ipaddress.ip_address(route.via).version != target.version:
                problems.append(
                    (
                        ("networks", i, "routes", j, "via"),
                        f"an IPv{target.version} address, like the target {target} (the "
                        "controller stores a via of the other family as null: on-link)",
                    )
                )
            if str(target) in targets:
                problems.append(
                    (
                        ("networks", i, "routes", j, "target"),
                        f"each target once; {target} is also routes[{targets[str(target)]}] "
                        "(members install only one route per target)",
                    )
                )
            targets.setdefault(str(target), j)
            if route.via is None and target.prefixlen > 0:
                on_link.append(target)
        for k, pool in enumerate(network.ip_pools or []):
            start, end = ipaddress.ip_address(pool.start), ipaddress.ip_address(pool.end)
            where = ("networks", i, "ip_pools", k)
            if start.version != end.version:
                problems.append(
                    ((*where, "end"), f"an IPv{start.version} address, like start {start}")
                )
            elif int(start) > int(end):
                problems.append(((*where, "end"), f"an address at or after start {start}"))
            elif network.routes is not None and not any(
                start in route and end in route for route in on_link
            ):
                inside = ", ".join(map(str, on_link)) or "none"
                problems.append(
                    (
                        where,
                        f"a range inside one of the network's on-link routes (without via: "
                        f"{inside}); the controller assigns no address from {start}-{end}",
                    )
                )
    return problems


def _secret_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """A token in the spec, where it would be printed and committed: in a URL's userinfo,
    or pasted as the name of the variable that should hold it."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    urls = {
        ("controller", "url"): spec.controller.url if spec.controller else None,
        ("member", "service_url"): spec.member.service_url if spec.member else None,
    }
    for loc, url in urls.items():
        if url is not None and "@" in urlsplit(url).netloc:
            problems.append(
                (
                    loc,
                    "a URL without user or password (put the token in token_env or "
                    "token_file: the spec is committed and printed)",
                )
            )
    names = {
        ("controller", "token_env"): spec.controller.token_env if spec.controller else None,
        ("member", "token_env"): spec.member.token_env if spec.member else None,
    }
    for loc, name in names.items():
        if name is not None and looks_like_token(name):
            problems.append(
                (
                    loc,
                    "the name of an environment variable, and this looks like a token itself "
                    "(not shown): put the token in the environment, its variable's name here",
                )
            )
    return problems


def _jump_of(rule: str) -> str | None:
    """The `-j`/`-g` target of a rule as written (None without one)."""
    words = shlex.split(rule) if _QUOTING.search(rule) else rule.split()
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "--jump", "-g", "--goto"):
            return words[i + 1]
    return None


def load_spec(path: str) -> Spec:
    """Read a spec from a file in the working tree (see `read_spec_text`)."""
    return parse_spec(read_spec_text(path), path)
