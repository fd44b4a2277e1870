"""Property tests for every parser of untrusted text (issue 12): whatever the input, the
answer is a value or one clear ZtplanError (NdppdConfError for the self-contained ndppd.conf
parser, which the provider turns into a LiveReadError), never another exception.

    parse_spec               random YAML-ish text; random structures dumped to YAML
    parse_save               random iptables-save-ish text (through its public name only:
                             providers/firewall.py is being rewritten)
    parse_ndppd_conf         random ndppd.conf-ish text, and Ndppd.read over it
    controller normalisers   random JSON; Controller.read over a MockTransport answering it
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.unit.fake_host import ReplayHost
from ztplan.api import ApiClient
from ztplan.errors import ControllerError, LiveReadError, ZtplanError
from ztplan.iptables import Table, parse_save
from ztplan.ndppd_conf import NdppdConf, NdppdConfError, parse_ndppd_conf
from ztplan.providers.controller import (
    Controller,
    normalise_mode,
    normalise_pools,
    normalise_routes,
)
from ztplan.providers.ndppd import Ndppd
from ztplan.spec import Spec, parse_spec

FAST = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- the spec -------------------------------------------------------------------------------

FIELDS = [
    "version", "target", "name", "controller", "kind", "url", "token_env", "token_file",
    "networks", "id", "routes", "target", "via", "ip_pools", "start", "end", "v4_assign_mode",
    "v6_assign_mode", "zt", "6plane", "rfc4193", "firewall", "ipv4", "ipv6", "filter", "nat",
    "policy", "FORWARD", "POSTROUTING", "rules", "exclusive", "sysctl", "net.ipv4.ip_forward",
    "ndppd", "config", "pidfile", "proxies", "interface", "method", "prefix", "member",
    "allow_default", "service_url", "gateway", "network", "wan_interface", "subnet",
    "address", "persist", "gateway", "ndp_proxy", "inbound", "pool",
]  # fmt: skip
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(
        [
            "1",
            "gw1",
            "local",
            "central",
            "10.6.4.0/22",
            "10.6.4.0",
            "0.0.0.0/0",
            "fd00::/64",
            "10.6.6.2",
            "8056c2e21c000001",
            "-j ACCEPT",
            "-i zt+ -j ACCEPT",
            "DROP",
            "eth0",
            "static",
            "/etc/ndppd.conf",
            "http://127.0.0.1:9993",
            "masquerade",
            "",
            "..",
            "\u2028",
        ]
    ),  # fmt: skip
    st.text(max_size=20),
)
KEYS = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10), st.integers(-3, 3))
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=40,
)


def parses_or_says_why(text: str) -> None:
    try:
        assert isinstance(parse_spec(text, "gw.yaml"), Spec)
    except ZtplanError as error:
        assert str(error).startswith("gw.yaml")
        assert "\n" not in str(error)


YAMLISH = st.text(
    alphabet=st.sampled_from(list("abc: -[]{},'\"!&*#|>%@`?\n\t\\/.0129") + ["\u2028", "\x85"]),
    max_size=80,
)


@FAST
@given(YAMLISH)
@example("? [a]\n: b\n")
@example("a: !!int x\n")
@example("a: !!timestamp 2020-13-45\n")
@example("a: &a [*a]\n")
@example("[" * 2000 + "]" * 2000)
def test_parse_spec_on_yaml_ish_text(text: str) -> None:
    parses_or_says_why(text)


@FAST
@given(STRUCTURES)
def test_parse_spec_on_random_structures(data: Any) -> None:
    parses_or_says_why(yaml.safe_dump(data, allow_unicode=True))


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), STRUCTURES, max_size=6))
def test_parse_spec_on_random_sections_of_a_valid_head(sections: dict[str, Any]) -> None:
    """Past the first checks: a valid version and target, then anything."""
    data = {"version": 1, "target": {"name": "gw1"}, **sections}
    data["version"], data["target"] = 1, {"name": "gw1"}
    parses_or_says_why(yaml.safe_dump(data, allow_unicode=True))


NETWORK_PARTS = st.fixed_dictionaries(
    {"id": st.just("8056c2e21c000001")},
    optional={
        "routes": st.lists(
            st.fixed_dictionaries(
                {
                    "target": st.sampled_from(
                        ["10.6.4.0/22", "0.0.0.0/0", "fd00::/64", "10.6.4.0", "10.6.4.7/22", "::/0"]
                    )
                },  # fmt: skip
                optional={"via": st.sampled_from(["10.6.6.2", "fd00::2", None, "x"])},
            ),
            max_size=4,
        ),
        "ip_pools": st.lists(
            st.fixed_dictionaries(
                {
                    "start": st.sampled_from(["10.6.4.1", "10.6.7.254", "fd00::1", "10.9.0.1"]),
                    "end": st.sampled_from(["10.6.4.9", "10.6.4.1", "fd00::ff", "10.9.0.9"]),
                }
            ),
            max_size=3,
        ),
    },
)


@FAST
@given(st.lists(NETWORK_PARTS, max_size=3))
def test_parse_spec_on_random_networks(networks: list[dict[str, Any]]) -> None:
    data = {"version": 1, "target": {"name": "gw1"}, "controller": {"kind": "local"},
            "networks": networks}  # fmt: skip
    parses_or_says_why(yaml.safe_dump(data))


# --- iptables-save ----------------------------------------------------------------------------

SAVE_LINES = st.one_of(
    st.sampled_from(["*filter", "*nat", ":FORWARD DROP [0:0]", ":ZT-IN - [0:0]", "COMMIT",
                     "-A FORWARD -i zt+ -j ACCEPT", "-A ZT-IN", "# Generated", "", "*", ":X"]),
    st.text(alphabet=st.sampled_from(list("*:-A #[]0 XF\t")), max_size=20),
)  # fmt: skip


@FAST
@given(st.lists(SAVE_LINES, max_size=20))
def test_parse_save_on_save_ish_text(lines: list[str]) -> None:
    tables = parse_save("\n".join(lines))
    assert all(isinstance(name, str) for name in tables)


def test_parse_save_on_a_chain_line_without_a_name() -> None:
    assert parse_save("*filter\n:\nCOMMIT\n") == {"filter": Table()}


# --- ndppd.conf -------------------------------------------------------------------------------

NDPPD_WORDS = st.sampled_from(
    ["proxy", "eth0", "rule", "2001:db8::/64", "static", "auto", "iface", "zt0", "router",
     "yes", "no", "timeout", "ttl", "500", "9" * 5000, "route-ttl", "{", "}", "\n", " ", "#",
     "//", "/*", "*/", ";", "=", '"', "autovia", "\t", "é", "\x00", "\x01"]
)  # fmt: skip


@FAST
@given(st.lists(NDPPD_WORDS, max_size=30).map("".join))
@example("route-ttl " + "9" * 5000)
@example("proxy eth0 {\n timeout " + "1" * 5000 + "\n}\n")
def test_parse_ndppd_conf_on_conf_ish_text(text: str) -> None:
    try:
        assert isinstance(parse_ndppd_conf(text), NdppdConf)
    except NdppdConfError as error:
        assert error.line >= 1


@FAST
@given(st.lists(NDPPD_WORDS, max_size=30).map("".join))
@example("route-ttl " + "9" * 5000)
def test_the_ndppd_provider_reads_any_conf_as_a_snapshot_or_a_live_read_error(
    text: str,
) -> None:
    host = ReplayHost(files={"/etc/ndppd.conf": text})
    try:
        Ndppd(use_systemd=False).read(host)
    except LiveReadError as error:
        assert str(error).startswith("ndppd: /etc/ndppd.conf: line ")


# --- controller JSON --------------------------------------------------------------------------

JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
        st.sampled_from(["10.6.4.0/22", "10.6.6.2", "fd00::/64", "0.0.0.0/0", "banana", ""]),
        st.text(max_size=10),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["target", "via", "ipRangeStart", "ipRangeEnd", "start", "end",
                             "zt", "6plane", "routes", "ipAssignmentPools", "config"]),
            inner, max_size=4,
        ),
    ),
    max_leaves=20,
)  # fmt: skip


@FAST
@given(JSON)
@example(5)
@example(True)
@example({"target": "x"})
def test_the_controller_normalisers_take_any_json(value: Any) -> None:
    """`routes: 5` from the controller was `TypeError: 'int' object is not iterable`."""
    for normalise in (normalise_routes, normalise_pools):
        out = normalise(value)
        assert isinstance(out, list)
        json.dumps(out)
    assert set(normalise_mode(value, ("zt",))) == {"zt"}


NWID = "8056c2e21c000001"


@FAST
@given(
    st.one_of(
        JSON,
        st.dictionaries(
            st.sampled_from(["routes", "ipAssignmentPools", "v4AssignMode", "v6AssignMode",
                             "config", "id"]),
            JSON, max_size=5,
        ),
    ),
    st.sampled_from(["local", "central"]),
)  # fmt: skip
@example({"routes": 5, "ipAssignmentPools": True}, "local")
@example({"config": {"routes": {"target": "x"}}}, "central")
def test_controller_read_over_any_json_answer(answer: Any, kind: str) -> None:
    body = json.dumps(answer).encode()
    client = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, content=body))
    )
    api = ApiClient("http://ctl", {}, client, sleep=lambda s: None, on_wait=lambda line: None)
    try:
        snapshot = Controller(api, kind, [NWID]).read(ReplayHost())
    except ControllerError as error:
        assert str(error).startswith("controller: ")
    else:
        json.dumps(snapshot.raw)
