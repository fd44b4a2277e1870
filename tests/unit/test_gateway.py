"""The gateway shorthand expands into exactly the guide's resources."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, SPECS
from ztplan.errors import SpecError
from ztplan.gateway import dump_data, dump_spec
from ztplan.spec import load_spec, parse_spec

SHORTHAND = ROOT / "tests" / "fixtures" / "gateway" / "guide-shorthand.yaml"


def test_the_shorthand_is_the_written_out_guide() -> None:
    assert dump_data(load_spec(str(SHORTHAND))) == dump_data(load_spec(str(SPECS / "gateway.yaml")))


def test_masquerade_and_stateful_variant() -> None:
    data = dump_data(load_spec(str(SPECS / "gateway-masquerade.yaml")))
    assert data["firewall"]["ipv4"]["nat"]["POSTROUTING"] == [
        "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-s 10.6.4.0/22 -o eth0 -j MASQUERADE",
    ]
    assert data["firewall"]["ipv6"]["filter"]["FORWARD"] == [
        "-i zt+ -s 2001:19f0:6001:1a6::/64 -j ACCEPT",
        "-i eth0 -d 2001:19f0:6001:1a6::/64 -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ]
    assert "gateway" not in data


def test_expanded_yaml_reads_back_as_the_same_spec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = dump_spec(load_spec(str(SHORTHAND)))
    assert '      - "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN"\n' in text
    assert dump_data(parse_spec(text, "expanded.yaml")) == dump_data(load_spec(str(SHORTHAND)))


HEAD = SHORTHAND.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "firewall:\n  ipv6:\n    filter:\n      FORWARD: ['-j ACCEPT']\n",
            "spec.yaml:23: firewall.ipv6.filter.FORWARD: also set by gateway.ipv6 (the gateway "
            "shorthand); write it in one place: drop it here, or write the gateway out "
            "(ztplan validate --expand)",
        ),
        (
            "networks:\n  - id: 8056c2e21c000001\n    routes: []\n",
            "spec.yaml:21: networks[0].id: also set by gateway.network",
        ),
        (
            "sysctl:\n  net.ipv4.ip_forward: 0\n",
            'spec.yaml:21: sysctl["net.ipv4.ip_forward"]: also set by gateway',
        ),
        (
            "ndppd:\n  proxies:\n    - {interface: eth0, rules: []}\n",
            "spec.yaml:22: ndppd.proxies[0].interface: also set by gateway.ipv6.ndp_proxy",
        ),
    ],
    ids=["chain", "network", "sysctl", "ndppd"],
)
def test_a_resource_in_both_places_is_an_error_naming_both(extra: str, message: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_spec(HEAD + extra, "spec.yaml")
    assert str(error.value).startswith(message)


def test_explicit_resources_beside_the_shorthand_are_kept() -> None:
    spec = parse_spec(
        HEAD + "firewall:\n  ipv4:\n    filter:\n      INPUT: ['-p udp --dport 9993 -j ACCEPT']\n"
        "sysctl:\n  net.ipv4.ip_forward: 1\n  net.ipv4.conf.all.rp_filter: 2\n",
        "spec.yaml",
    )
    data = dump_data(spec)
    assert data["firewall"]["ipv4"]["filter"] == {
        "policy": {"FORWARD": "DROP"},  # the shorthand's, beside the INPUT chain written out
        "INPUT": ["-p udp --dport 9993 -j ACCEPT"],
        "FORWARD": [
            "-i zt+ -s 10.6.4.0/22 -j ACCEPT",
            "-i eth0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT",
        ],
    }
    assert data["firewall"]["ipv4"]["nat"]["POSTROUTING"][1].endswith("--to-source 45.32.69.220")
    assert data["sysctl"] == {
        "net.ipv4.ip_forward": 1,
        "net.ipv4.conf.all.rp_filter": 2,
        "net.ipv6.conf.all.forwarding": 1,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("address: 10.6.6.2", "address: 10.9.0.1"),
            "address 10.9.0.1 is outside subnet 10.6.4.0/22",
        ),
        (("nat: 45.32.69.220", "nat: dynamic"), "`masquerade` or an IPv4 address to SNAT to"),
        (("subnet: 10.6.4.0/22", "subnet: 2001:db8::/64"), "an IPv4 network or address"),
        (
            (
                'ndp_proxy: {prefix: "2001:19f0:6001:1a6::/80"',
                'ndp_proxy: {prefix: "2001:db8::/80"',
            ),
            "ndp_proxy.prefix 2001:db8::/80 is outside prefix 2001:19f0:6001:1a6::/64",
        ),
    ],
    ids=["address", "nat", "family", "ndp"],
)
def test_the_shorthand_is_checked(change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError, match="gateway") as error:
        parse_spec(HEAD.replace(*change), "spec.yaml")
    assert message in str(error.value)
