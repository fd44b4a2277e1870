"""Apply order: withdraw first, protect, forward, announce, tear down last."""

from __future__ import annotations

from ztplan.model import Action, Change
from ztplan.order import order_changes, steps

NW = 'controller.network["8056c2e21c000001"]'
DEFAULT = {"target": "0.0.0.0/0", "via": "10.6.6.2"}
SUBNET = {"target": "10.6.4.0/22", "via": None}


def change(address: str, action: Action = Action.UPDATE, before=None, after=None) -> Change:  # type: ignore[no-untyped-def]
    return Change(
        address=address,
        provider=address.split(".")[0].split("[")[0],
        action=action,
        before=before,
        after=after,
    )


def test_bringing_a_gateway_up_announces_last() -> None:
    plan = order_changes(
        [
            change(f"{NW}.routes", before=[SUBNET], after=[DEFAULT, SUBNET]),
            change('sysctl["net.ipv4.ip_forward"]', before="0", after="1"),
            change('firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j MASQUERADE"]', Action.CREATE),
            change('member.network["8056c2e21c000001"].allow_default', before=False, after=True),
        ]
    )
    assert [(c.provider, c.phase) for c in plan] == [
        ("firewall", "protect"),
        ("sysctl", "forward"),
        ("controller", "announce"),
        ("member", "members"),
    ]


def test_withdrawing_a_gateway_removes_its_route_first_and_forwarding_last() -> None:
    plan = order_changes(
        [
            change('firewall.ipv6.filter.FORWARD["-i zt+ -j ACCEPT"]', Action.DELETE),
            change('sysctl["net.ipv4.ip_forward"]', before="1", after="0"),
            change(f"{NW}.routes", before=[DEFAULT, SUBNET], after=[SUBNET]),
            change('firewall.ipv4.filter.INPUT["-p tcp --dport 22 -j ACCEPT"]', Action.CREATE),
        ]
    )
    assert [(c.provider, c.phase, c.action.value) for c in plan] == [
        ("controller", "withdraw", "update"),
        ("firewall", "protect", "create"),  # the new SSH rule exists before anything goes
        ("sysctl", "teardown", "update"),
        ("firewall", "teardown", "delete"),  # IPv6 only loses rules: after forwarding is off
    ]
    assert [name for name, _ in steps(plan)] == ["controller", "firewall", "sysctl", "firewall"]


def test_a_family_that_gains_and_loses_rules_swaps_them_in_one_step() -> None:
    # One atomic restore: the old NAT rule is never gone before the new one is there.
    plan = order_changes(
        [
            change('firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j MASQUERADE"]', Action.DELETE),
            change(
                'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]',
                Action.CREATE,
            ),
        ]
    )
    assert [(c.phase, c.action.value) for c in plan] == [
        ("protect", "delete"),
        ("protect", "create"),
    ]
    assert len(list(steps(plan))) == 1


def test_a_moved_default_route_is_announced_not_withdrawn() -> None:
    moved = {"target": "0.0.0.0/0", "via": "10.6.6.9"}
    (only,) = order_changes(
        [change(f"{NW}.routes", before=[DEFAULT, SUBNET], after=[moved, SUBNET])]
    )
    assert only.phase == "announce"


def test_target_keeps_what_the_targeted_change_depends_on() -> None:
    from ztplan.plan import restrict

    plan = order_changes(
        [
            change(f"{NW}.routes", before=[SUBNET], after=[DEFAULT, SUBNET]),
            change(f"{NW}.ip_pools", before=[], after=[{"start": "10.6.4.1", "end": "10.6.7.254"}]),
            change('sysctl["net.ipv4.ip_forward"]', before="0", after="1"),
            change('firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j MASQUERADE"]', Action.CREATE),
            change('member.network["8056c2e21c000001"].allow_default', before=False, after=True),
        ]
    )
    announced = restrict(plan, [f"{NW}.routes"])
    assert [c.address for c in announced] == [
        'firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j MASQUERADE"]',
        'sysctl["net.ipv4.ip_forward"]',
        f"{NW}.routes",
    ]
    assert [c.address for c in restrict(plan, ["sysctl"])] == ['sysctl["net.ipv4.ip_forward"]']
    assert [c.address for c in restrict(plan, ["firewall.ipv6"])] == []


def test_ordering_a_list_it_may_consume_empties_it_and_orders_the_same() -> None:
    """A plan's own list is consumed (each change let go as its copy in phase is made:
    100,000 of them in a first apply of 2 x 50,000 rules); the order is the same, and
    the changes themselves are untouched but for their phase."""
    found = [
        change('firewall.ipv6.filter.FORWARD["-i zt+ -j ACCEPT"]', Action.DELETE),
        change('sysctl["net.ipv4.ip_forward"]', before="1", after="0"),
        change(f"{NW}.routes", before=[DEFAULT, SUBNET], after=[SUBNET]),
        change('firewall.ipv4.filter.INPUT["-p tcp --dport 22 -j ACCEPT"]', Action.CREATE),
    ]
    kept = list(found)
    expected = order_changes(found)
    assert found == kept and all(c.phase == "" for c in found)
    assert order_changes(found, consume=True) == expected
    assert found == []
    assert [c.model_copy(update={"phase": ""}) for c in expected] == [
        kept[2],
        kept[3],
        kept[1],
        kept[0],
    ]
