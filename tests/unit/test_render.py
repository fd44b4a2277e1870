"""ztplan.render: fixed Plan values -> golden files (Terraform's views tests).

To update a golden file after an intended change of output, run with ZTPLAN_UPDATE_GOLDEN=1
and read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ztplan.model import FORMAT_VERSION, Action, Change, Finding, Plan, SpecSource
from ztplan.render.human import render_plan, render_source, summary_line
from ztplan.render.jsonplan import render_json
from ztplan.render.markdown import render_markdown

GOLDEN = Path(__file__).resolve().parent.parent / "fixtures" / "render"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

SNAT = "-s 10.6.4.0/22 -j SNAT --to-source 45.32.69.220"
ZT6 = "-s 2001:19f0:6001:1a6::/64 -i zt+ -j ACCEPT"
WAN6 = "-i eth0 -d 2001:19f0:6001:1a6::/64 -j ACCEPT"

SOURCE = SpecSource(
    path="specs/gateway.yaml",
    repo="/srv/gateway-config",
    commit="0123456789abcdef0123456789abcdef01234567",
    ref="origin/main",
)

PLAN = Plan(
    ztplan_version="0.1.0",
    target="gw1",
    host="gw1.example.net",
    netns="ztplan-sandbox",
    controller_url="https://api.zerotier.com/api/v1",
    spec=SOURCE,
    changes=[
        Change(
            address=f"firewall.ipv4.nat.POSTROUTING[{json.dumps(SNAT)}]",
            provider="firewall",
            action=Action.CREATE,
            after=SNAT,
        ),
        Change(
            address="firewall.ipv6.filter.policy.FORWARD",
            provider="firewall",
            action=Action.UPDATE,
            before="ACCEPT",
            after="DROP",
        ),
        Change(
            address="firewall.ipv6.filter.FORWARD",
            provider="firewall",
            action=Action.UPDATE,
            before=[WAN6, ZT6],
            after=[ZT6, WAN6],
            reason="rule order",
        ),
        Change(
            address='firewall.ipv4.filter.FORWARD["-i zt+ -j DROP"]',
            provider="firewall",
            action=Action.DELETE,
            before="-i zt+ -j DROP",
            reason="no longer in the spec",
        ),
        Change(
            address='sysctl["net.ipv4.ip_forward"]',
            provider="sysctl",
            action=Action.UPDATE,
            before="0",
            after="1",
        ),
        Change(
            address='ndppd.proxy["eth0"].rule["2001:19f0:6001:1a6::/80"]',
            provider="ndppd",
            action=Action.CREATE,
            after="static",
            follows="",
        ),
        Change(
            address='controller.network["8056c2e21c000001"].routes',
            provider="controller",
            action=Action.UPDATE,
            before=[{"target": "10.6.4.0/22", "via": None}],
            after=[
                {"target": "0.0.0.0/0", "via": "10.6.6.2"},
                {"target": "10.6.4.0/22", "via": None},
            ],
        ),
        Change(
            address='persist["etc/iptables/rules.v4"]',
            provider="persist",
            action=Action.UPDATE,
            before="3 rules (filter, nat) [0123456789ab]",
            after="4 rules (filter, nat) [ba9876543210]",
            reason="live rules would be lost at reboot",
            detail=["+ nat: -A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -j MASQUERADE"],
        ),
    ],
    findings=[
        Finding(
            severity="warning",
            address="ndppd",
            message="`ndppd` is not managed by ztplan 0.1.0 yet; ignored",
        ),
        Finding(
            severity="error",
            message="the SNAT address 45.32.69.220 is not on the WAN interface eth0; "
            "use MASQUERADE for a dynamic address",
        ),
    ],
    unmanaged=[
        'firewall.ipv4.filter.FORWARD.foreign["-j DOCKER-USER"]',
        'firewall.ipv4.nat.POSTROUTING.foreign["-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"]',
    ],
    snapshots={"firewall": "sha256:" + "ab" * 32, "sysctl": "sha256:" + "cd" * 32},
    state_lineage="5b0c3c1e-4c2a-4d6e-9a57-3f1f6a0b9c11",
    state_serial=3,
)

NO_CHANGES = Plan(
    ztplan_version="0.1.0",
    target="gw1",
    spec=SpecSource(path="specs/gateway.yaml"),
    changes=[],
)


def golden(name: str, text: str) -> str:
    path = GOLDEN / name
    if os.environ.get("ZTPLAN_UPDATE_GOLDEN"):
        path.write_text(text)
    return path.read_text()


# --- golden files -------------------------------------------------------------------------


def test_human_plan_matches_the_golden_file() -> None:
    assert render_plan(PLAN) == golden("plan.txt", render_plan(PLAN))


def test_markdown_plan_matches_the_golden_file() -> None:
    assert render_markdown(PLAN) == golden("plan.md", render_markdown(PLAN))


def test_json_plan_matches_the_golden_file() -> None:
    assert render_json(PLAN) == golden("plan.json", render_json(PLAN))


def test_the_json_plan_reads_back_as_the_same_plan() -> None:
    text = render_json(PLAN)
    assert Plan.model_validate_json(text) == PLAN
    data = json.loads(text)
    assert data["format_version"] == FORMAT_VERSION == "2"
    assert data["counts"] == {"add": 2, "change": 5, "destroy": 1}
    assert list(data) == [
        "format_version",
        "ztplan_version",
        "target",
        "host",
        "netns",
        "controller_url",
        "spec",
        "changes",
        "findings",
        "unmanaged",
        "snapshots",
        "desired",
        "partial",
        "verification",
        "state_lineage",
        "state_serial",
        "spec_text",
        "counts",
    ]


# --- colour ---------------------------------------------------------------------------------


def test_the_plain_plan_has_no_escape_codes() -> None:
    assert "\x1b" not in render_plan(PLAN)
    assert "\x1b" not in render_plan(NO_CHANGES)
    assert "\x1b" not in render_markdown(PLAN)


def test_the_coloured_plan_is_the_plain_one_painted() -> None:
    coloured = render_plan(PLAN, color=True)
    assert "\x1b[32m  + firewall.ipv4.nat.POSTROUTING" in coloured
    assert "\x1b[31m  - firewall.ipv4.filter.FORWARD" in coloured
    assert "\x1b[33m  ~ sysctl" in coloured
    assert "\x1b[31;1mError: \x1b[0m" in coloured
    assert "\x1b[33;1mWarning: \x1b[0m" in coloured
    assert ANSI.sub("", coloured) == render_plan(PLAN)


# --- no changes, summary, source ------------------------------------------------------------


def test_no_changes() -> None:
    assert render_plan(NO_CHANGES) == (
        "Spec: specs/gateway.yaml\nTarget: gw1\n\nNo changes. The live state matches the spec.\n"
    )
    assert "No changes. The live state matches the spec.\n" in render_markdown(NO_CHANGES)
    assert "Plan:" not in render_plan(NO_CHANGES)


def test_no_changes_still_lists_the_unmanaged() -> None:
    plan = NO_CHANGES.model_copy(
        update={"unmanaged": ['firewall.ipv4.filter.FORWARD.foreign["-j X"]']}
    )
    assert render_plan(plan).endswith(
        "No changes. The live state matches the spec.\n"
        "\n"
        "Unmanaged (foreign, left alone): 1\n"
        '    firewall.ipv4.filter.FORWARD.foreign["-j X"]\n'
    )


def change(action: Action) -> Change:
    return Change(
        address=f"x.{action.value}",
        provider="x",
        action=action,
        before=None if action is Action.CREATE else 1,
        after=None if action is Action.DELETE else 2,
    )


@pytest.mark.parametrize(
    ("actions", "line"),
    [
        ([], "Plan: 0 to add, 0 to change, 0 to destroy."),
        ([Action.CREATE] * 3 + [Action.UPDATE], "Plan: 3 to add, 1 to change, 0 to destroy."),
        ([Action.DELETE, Action.DELETE], "Plan: 0 to add, 0 to change, 2 to destroy."),
        ([Action.REPLACE, Action.UPDATE], "Plan: 1 to add, 1 to change, 1 to destroy."),
    ],
)
def test_summary_line(actions: list[Action], line: str) -> None:
    plan = NO_CHANGES.model_copy(update={"changes": [change(a) for a in actions]})
    assert summary_line(plan) == line
    if actions:
        assert f"\n{line}\n" in render_plan(plan)


def test_markdown_counts_a_replace_like_the_human_summary() -> None:
    plan = NO_CHANGES.model_copy(update={"changes": [change(Action.REPLACE)]})
    assert "| `gw1` | 1 | 0 | 1 |" in render_markdown(plan)


def test_a_nested_update_shows_its_detail_lines() -> None:
    update = Change(
        address='controller.network["8056c2e21c000001"].routes',
        provider="controller",
        action=Action.UPDATE,
        before={"target": "10.6.4.0/22"},
        after={"target": "10.6.4.0/23"},
        detail=["values changed: ['target'] 10.6.4.0/22 -> 10.6.4.0/23"],
    )
    text = render_plan(NO_CHANGES.model_copy(update={"changes": [update]}))
    assert (
        '  ~ controller.network["8056c2e21c000001"].routes: {"target": "10.6.4.0/22"} -> '
        '{"target": "10.6.4.0/23"}\n'
        "        values changed: ['target'] 10.6.4.0/22 -> 10.6.4.0/23\n"
    ) in text


def test_a_created_value_not_in_the_address_is_shown() -> None:
    create = Change(
        address="firewall.ipv4.filter.policy.FORWARD",
        provider="firewall",
        action=Action.CREATE,
        after="DROP",
    )
    text = render_plan(NO_CHANGES.model_copy(update={"changes": [create]}))
    assert '  + firewall.ipv4.filter.policy.FORWARD = "DROP"\n' in text


@pytest.mark.parametrize(
    ("source", "text"),
    [
        (SpecSource(path="gw.yaml"), "gw.yaml"),
        (SpecSource(path="gw.yaml", commit="f" * 40), "gw.yaml @ ffffffffffff"),
        (SpecSource(path="gw.yaml", commit="f" * 40, ref="f" * 40), "gw.yaml @ ffffffffffff"),
        (SpecSource(path="gw.yaml", commit="a" * 40, ref="main"), "gw.yaml @ aaaaaaaaaaaa (main)"),
        (
            SpecSource(path="gw.yaml", commit="a" * 40, dirty=True),
            "gw.yaml @ aaaaaaaaaaaa (work tree has uncommitted changes)",
        ),
    ],
)
def test_render_source(source: SpecSource, text: str) -> None:
    assert render_source(source) == text


def test_markdown_truncates_a_long_plan_with_a_pointer() -> None:
    from ztplan.model import Action, Change

    many = PLAN.model_copy(
        update={
            "changes": [
                Change(
                    address=f'sysctl["k{i}"]',
                    provider="sysctl",
                    action=Action.UPDATE,
                    before="0",
                    after="1",
                    phase="forward",
                )
                for i in range(7)
            ]
        }
    )
    text = render_markdown(many, max_rows=5)
    assert text.count('| forward | update | `sysctl["k') == 5
    assert "... and 2 more change(s), not shown: see the full plan (plan.json, or " in text
    assert text.index("**Warning**") < text.index("<details>")  # findings come first
