"""ztplan.apply.claims_of: what a target holds that another on its host may not hold
differently (policies, sysctl keys, ndppd's file), found without parsing each address."""

from __future__ import annotations

from ztplan.address import Address
from ztplan.apply import claims_of


def test_policies_sysctls_and_the_ndppd_file_are_claimed_and_rules_are_not() -> None:
    forward = Address("firewall.ipv4.filter.FORWARD")
    desired = {
        Address("firewall.ipv4.filter.policy.FORWARD"): "DROP",
        Address("firewall.ipv6.filter.policy.INPUT"): "ACCEPT",
        Address('sysctl["net.ipv4.ip_forward"]'): "1",
        forward.item("-m comment --comment keep.policy.x -j ACCEPT"): "-m comment ...",
        forward: ["-j ACCEPT"],
        forward.dot("chain"): "ZT-gw.FORWARD",
        Address('controller.networks["8056c2e21c000001"].routes'): [],
    }
    assert claims_of(desired, "/etc/ndppd.conf") == {
        "firewall.ipv4.filter.policy.FORWARD": "DROP",
        "firewall.ipv6.filter.policy.INPUT": "ACCEPT",
        'sysctl["net.ipv4.ip_forward"]': "1",
        "ndppd.config": "/etc/ndppd.conf",
    }
    assert claims_of({}, None) == {}
