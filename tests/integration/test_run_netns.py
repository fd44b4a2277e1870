"""ztplan.run against the real kernel: what a run reads, and how often (issue 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Silent, apply_spec, needs_netns, open_spec, rules_of

pytestmark = [pytest.mark.netns, needs_netns]

SPEC = """\
version: 1
target: {name: gw1}
sysctl: {net.ipv4.ip_forward: 1}
firewall:
  ipv4:
    filter:
      FORWARD: ["-s 10.6.4.0/22 -i zt+ -j ACCEPT"]
"""


class Counting:
    """A provider whose reads of the host are counted (a plan has the firewall fetch its
    saves, and interprets them apart)."""

    def __init__(self, inner: Any, reads: dict[str, int]) -> None:
        self.inner, self.reads, self.name = inner, reads, inner.name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.inner, attr)
        if attr not in ("read", "fetch"):
            return value

        def counted(host: Any) -> Any:
            self.reads[self.name] = self.reads.get(self.name, 0) + 1
            return value(host)

        return counted


def _counted(netns: str, state_dir: Path) -> tuple[Any, dict[str, int]]:
    run = open_spec(SPEC, netns, state_dir, verify=False)
    reads: dict[str, int] = {}
    run.providers = [Counting(p, reads) for p in run.providers]
    return run, reads


def test_an_apply_approved_beforehand_applies_from_the_plans_own_read(
    netns: str, state_dir: Path
) -> None:
    """--auto-approve: nothing waits between the read (under the lock) and the apply."""
    run, reads = _counted(netns, state_dir)
    run.apply(approve=None, reporter=Silent())
    assert reads == {"firewall": 1, "sysctl": 1}
    assert "-A ZT-gw1.FORWARD -s 10.6.4.0/22 -i zt+ -j ACCEPT" in rules_of(netns)


def test_an_apply_after_a_question_reads_the_host_again(netns: str, state_dir: Path) -> None:
    run, reads = _counted(netns, state_dir)
    run.apply(approve=lambda plan: True, reporter=Silent())
    assert reads == {"firewall": 2, "sysctl": 2}


def test_a_partial_apply_keeps_the_digests_it_did_not_touch(netns: str, state_dir: Path) -> None:
    """A run reads the state without its resources; the one apply that needs them (a
    partial one, which carries over what it did not change) reads them from its text."""
    from ztplan.state import read_state

    apply_spec(open_spec(SPEC, netns, state_dir, verify=False))
    before = read_state(state_dir, "gw1")
    assert before is not None
    more = SPEC.replace('"]', '", "-s 10.6.8.0/22 -i zt+ -j ACCEPT"]')
    new = 'firewall.ipv4.filter.FORWARD["-s 10.6.8.0/22 -i zt+ -j ACCEPT"]'
    apply_spec(open_spec(more, netns, state_dir, verify=False, targets=(new,)))
    after = read_state(state_dir, "gw1")
    assert after is not None and after.serial == 2
    assert set(after.resources) - set(before.resources) == {new}
    assert {a: d for a, d in after.resources.items() if a != new} == before.resources
