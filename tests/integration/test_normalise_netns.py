"""ztplan.normalise.KernelNormaliser against the real kernel: spellings from a scratch
namespace, then from the cache file alone (issue 14: the cache of 100,000 rules is read on
every plan, so it holds as little as it can)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ztplan.normalise
from tests.conftest import needs_netns
from ztplan.normalise import CACHE_VERSION, KernelNormaliser, SpecRule

pytestmark = [pytest.mark.netns, needs_netns]

RULES: list[SpecRule] = [
    ("ipv4", "filter", "FORWARD", "-i zt+ -s 10.6.4.0/22 -j ACCEPT", ("r", 0)),
    ("ipv4", "filter", "FORWARD", "-s 10.6.4.0/22 -j ACCEPT", ("r", 1)),
    ("ipv4", "filter", "FORWARD", "-j DOCKER-USER", ("r", 2)),
]
SPELLED = [
    ("-s 10.6.4.0/22 -i zt+ -j ACCEPT", ()),
    ("-s 10.6.4.0/22 -j ACCEPT", ()),
    ("-j DOCKER-USER", ("DOCKER-USER",)),
]


def _no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("the kernel was asked: the cache should have answered")

    monkeypatch.setattr(ztplan.normalise, "scratch_namespace", refuse)


def test_a_spelling_comes_from_the_kernel_then_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert KernelNormaliser(tmp_path)("ipv4", RULES, {}) == SPELLED
    cache = json.loads((tmp_path / "normalise-ipv4.json").read_text())
    assert cache == {
        "version": CACHE_VERSION,
        "rules": {  # null: the rule as written
            "filter\t-i zt+ -s 10.6.4.0/22 -j ACCEPT": "-s 10.6.4.0/22 -i zt+ -j ACCEPT",
            "filter\t-s 10.6.4.0/22 -j ACCEPT": None,
            "filter\t-j DOCKER-USER": None,
        },
        "externals": {"filter\t-j DOCKER-USER": ["DOCKER-USER"]},
    }
    _no_kernel(monkeypatch)
    assert KernelNormaliser(tmp_path)("ipv4", RULES, {}) == SPELLED


@pytest.mark.parametrize(
    "broken",
    [
        {"rules": {"filter\t-s 10.6.4.0/22 -j ACCEPT": 7}},
        {"rules": {"filter\t-s 10.6.4.0/22 -j ACCEPT": ""}},
        {
            "rules": {"filter\t-s 10.6.4.0/22 -j ACCEPT": None},
            "externals": {"filter\t-s 10.6.4.0/22 -j ACCEPT": [1]},
        },
        {"rules": ["not", "a", "mapping"]},
    ],
)
def test_a_broken_cache_only_costs_a_round_trip(tmp_path: Path, broken: dict[str, object]) -> None:
    (tmp_path / "normalise-ipv4.json").write_text(json.dumps({"version": CACHE_VERSION, **broken}))
    assert KernelNormaliser(tmp_path)("ipv4", RULES[1:2], {}) == SPELLED[1:2]
