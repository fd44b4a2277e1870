"""The guide's cross-provider mistakes, each a finding with an address and a remedy."""

from __future__ import annotations

from ztplan.checks import check_spec
from ztplan.model import Finding
from ztplan.spec import parse_spec

HEAD = "version: 1\ntarget: {name: gw}\ncontroller: {kind: local}\n"
NETWORK = (
    "networks:\n  - id: 8056c2e21c000001\n    routes:\n"
    "      - {target: 10.6.4.0/22}\n      - {target: 0.0.0.0/0, via: 10.6.6.2}\n"
)
FIREWALL = (
    "firewall:\n  ipv4:\n    nat:\n      POSTROUTING:\n"
    "        - '-o eth0 -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7'\n"
    "    filter:\n      policy: {FORWARD: DROP}\n"
    "      FORWARD: ['-i zt+ -s 10.6.4.0/22 -j ACCEPT']\n"
)
GOOD_HOST = {"lo": ["127.0.0.1"], "eth0": ["198.51.100.7"], "zt0": ["10.6.6.2"]}


def findings(text: str, addresses: dict[str, list[str]] | None = None) -> list[Finding]:
    return check_spec(parse_spec(text, "s.yaml"), GOOD_HOST if addresses is None else addresses)


def test_the_guides_gateway_has_no_findings() -> None:
    assert findings(HEAD + NETWORK + FIREWALL) == []


def test_via_outside_every_managed_route() -> None:
    text = HEAD + NETWORK.replace("via: 10.6.6.2", "via: 192.168.1.1") + FIREWALL
    errors = [f for f in findings(text) if f.severity == "error"]
    assert [(f.address, f.message) for f in errors] == [
        (
            'controller.network["8056c2e21c000001"].routes[1]',
            "via 192.168.1.1 is outside every managed route of the network, so members cannot "
            "reach it; add the subnet that holds 192.168.1.1 as a route",
        )
    ]


def test_default_via_not_on_this_gateways_zerotier_interface() -> None:
    text = HEAD + NETWORK.replace("via: 10.6.6.2", "via: 10.6.6.9") + FIREWALL
    (finding,) = findings(text)
    assert finding.severity == "warning"
    assert finding.message.startswith(
        "the default route goes via 10.6.6.9, which is not an "
        "address of this host's ZeroTier interface (zt*)"
    )


def test_a_member_spec_is_not_checked_as_a_gateway() -> None:
    text = HEAD + NETWORK.replace("via: 10.6.6.2", "via: 10.6.6.9")
    assert findings(text) == []


def test_snat_address_not_on_the_wan_interface_suggests_masquerade() -> None:
    (finding,) = findings(HEAD + NETWORK + FIREWALL, {**GOOD_HOST, "eth0": ["203.0.113.5"]})
    assert (finding.severity, finding.address, finding.message) == (
        "warning",
        "firewall.ipv4.nat.POSTROUTING[0]",
        "SNAT --to-source 198.51.100.7 is not an address of interface eth0 here; if the "
        "public address is dynamic, use `-j MASQUERADE` instead",
    )
    masquerade = FIREWALL.replace("-j SNAT --to-source 198.51.100.7", "-j MASQUERADE")
    assert findings(HEAD + NETWORK + masquerade, {**GOOD_HOST, "eth0": ["203.0.113.5"]}) == []


def test_forward_drop_with_nothing_letting_zerotier_out() -> None:
    text = (
        HEAD
        + NETWORK
        + FIREWALL.replace("'-i zt+ -s 10.6.4.0/22 -j ACCEPT'", "'-i eth0 -j ACCEPT'")
    )
    (finding,) = findings(text)
    assert (finding.severity, finding.address) == ("warning", "firewall.ipv4.filter.policy.FORWARD")
    assert "members lose the Internet" in finding.message
    by_subnet = FIREWALL.replace("'-i zt+ -s 10.6.4.0/22 -j ACCEPT'", "'-s 10.6.5.0/24 -j ACCEPT'")
    assert findings(HEAD + NETWORK + by_subnet) == []


def test_host_checks_are_skipped_when_the_host_was_not_read() -> None:
    text = HEAD + NETWORK.replace("via: 10.6.6.2", "via: 10.6.6.9") + FIREWALL
    assert check_spec(parse_spec(text, "s.yaml"), None) == []
