"""ztplan.spec's YAML loader: lists of strings are kept as strings while composing (issue
14: libyaml's nodes for 2 x 50,000 rules were 40 MB), and what it loads, or the error it
raises, is the very same as PyYAML's safe loading with ztplan's checks (`_Loader`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ztplan.spec import _Loader, _StreamLoader

REPO = Path(__file__).resolve().parents[2]

CASES = [
    "a: [x, 'y', \"z\", !!str 1, ! w]",
    "a: [1, 0x1f, 1.5, .inf, null, ~, true, no, 2001-12-14, '1', \"null\", '']",
    "a: [x, [y, [z, 1]], {b: c}, -d, '- e', \"f\\tg\\u00e9\"]",
    "a:\n  - x\n  -\n  - y\n",
    "a: &l [x, y]\nb: *l\nc: [*l, x]\n",
    "a: &s x\nb: [*s, &t y, *t]\n",
    "base: &b {p: 1}\nm: {<<: [*b], q: 2}\n",
    "base: &b {p: 1}\nother: &o {r: 3}\nm:\n  <<: [*b, *o]\n  q: 2\n",
    "s: &l [x]\nm: {<<: *l}\n",  # a merge of a list of strings: an error, worded alike
    "m: {<<: [x, y]}\n",  # the same, written in place
    "m: {<<: [{a: 1}, x]}\n",
    "a: !!set {x, y}\nb: !!omap [{x: 1}, {y: 2}]\nc: !!pairs [{x: 1}]\n",
    "a: !!seq [x, y]\nb: !!binary aGVsbG8=\n",
    "a: [x, x]\n",
    "a: {x: 1, x: 2}\n",  # a duplicate key, refused
    "a: [{x: 1, x: 2}]\n",
    "a: [!!int abc]\n",  # a constructor's failure, at its node
    "a: [*nothing]\n",  # an undefined alias
    "- x\n- y\n",
    "[]",
    "",
    "--- a\n--- b\n",  # two documents
    "a: [x, y\n",  # a syntax error
    "a: [[[[[[[[[[x]]]]]]]]]]\n",
    "{[x]: 1}",  # an unhashable key
    "a: ['\u2028', \"\\x85\", 'é', '\U0001f600']\n",
]


def _load(text: str, loader: type) -> tuple[str, Any]:
    try:
        return "ok", yaml.load(text, Loader=loader)  # noqa: S506 - SafeLoader subclasses
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = (mark.line, mark.column) if mark is not None else None
        return type(error).__name__, (getattr(error, "problem", None), where)
    except Exception as error:  # noqa: BLE001 - what matters is that both raise alike
        return type(error).__name__, str(error)


def _same(text: str) -> bool:
    """Both give the same data, or the same error at the same place (PyYAML's composer
    words one error more fully: "found undefined alias 'x'", where libyaml's stops at
    "found undefined alias")."""
    (kind, got), (expected_kind, expected) = _load(text, _StreamLoader), _load(text, _Loader)
    if kind != expected_kind or kind in ("ok", "RecursionError"):
        return (kind, got) == (expected_kind, expected)
    if isinstance(got, tuple):
        return got[1] == expected[1] and str(got[0]).startswith(str(expected[0]))
    return bool(got == expected)


@pytest.mark.parametrize("text", CASES)
def test_the_streaming_loader_loads_what_the_safe_loader_loads(text: str) -> None:
    assert _load(text, _StreamLoader)[0] == _load(text, _Loader)[0]
    assert _same(text)


def test_every_spec_of_the_repository_loads_the_same() -> None:
    specs = sorted(REPO.glob("specs/*.yaml")) + sorted(REPO.glob("tests/**/*.yaml"))
    assert len(specs) >= 3
    for path in specs:
        text = path.read_text()
        assert _same(text), path


def test_rules_are_kept_as_strings_not_nodes() -> None:
    """The point of it: a list of rule strings composes to a node whose items are the
    strings themselves; an item that is not a plain string stays a node."""
    loader = _StreamLoader("FORWARD: [-j ACCEPT, '-j DROP', 5, *a]\n".replace(", *a", ""))
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    items = root.value[0][1].value
    assert items[:2] == ["-j ACCEPT", "-j DROP"]
    assert isinstance(items[2], yaml.ScalarNode) and items[2].tag == "tag:yaml.org,2002:int"
