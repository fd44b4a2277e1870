"""The spec's JSON Schema: valid, in the YAML's own shape, documented, and current.

After a change to ztplan/spec.py, regenerate the published files:

    .venv/bin/python -m ztplan.schema > docs/spec.md
    .venv/bin/python -m ztplan.schema --json > schema/ztplan-spec.json
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, SPECS
from ztplan.errors import SpecError
from ztplan.schema import main, render_spec_reference, spec_schema
from ztplan.spec import parse_spec

MODELINE = "# yaml-language-server: $schema=../schema/ztplan-spec.json\n"
REGENERATE = "regenerate it: .venv/bin/python -m ztplan.schema{} > {}"
EXAMPLES = sorted(SPECS.glob("*.yaml")) + sorted((ROOT / "tests/fixtures/gateway").glob("*.yaml"))


def _jsonschema() -> Any:
    """The jsonschema package (the test extra); only the tests that validate need it."""
    return pytest.importorskip("jsonschema")


def validator() -> Any:
    jsonschema = _jsonschema()
    schema = spec_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_is_draft_2020_12_with_an_id_and_a_title() -> None:
    schema = spec_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"] == "ztplan spec"
    _jsonschema().Draft202012Validator.check_schema(schema)


def test_the_examples_are_there() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"gateway.yaml", "two-networks.yaml", "guide-shorthand.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_every_example_spec_validates(path: Path) -> None:
    errors = [error.message for error in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == []
    parse_spec(path.read_text(), str(path))


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_spec_names_the_schema_on_its_first_line(path: Path) -> None:
    assert path.read_text().startswith(MODELINE)
    assert (path.parent / "../schema/ztplan-spec.json").resolve().is_file()


def test_two_networks_is_one_gateway_for_two_networks() -> None:
    spec = parse_spec((SPECS / "two-networks.yaml").read_text(), "two-networks.yaml")
    assert spec.gateway is None and len(spec.networks) == 2
    for network, via in zip(spec.networks, ("10.6.6.2", "10.147.20.1"), strict=True):
        default = [r for r in network.routes or [] if r.target == "0.0.0.0/0"]
        assert [r.via for r in default] == [via]
    assert spec.firewall is not None and spec.firewall.ipv4 is not None
    nat = spec.firewall.ipv4.tables()["nat"].chains["POSTROUTING"].rules
    assert [rule.split()[1] for rule in nat] == ["10.6.4.0/22", "10.147.20.0/24"]
    assert spec.ndppd is not None
    assert len(spec.ndppd.proxies[0].rules) == 2


HEAD = "version: 1\ntarget: {name: gw1}\n"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      FORWARD: ['-j ACCEPT']\n",
            id="chain-as-list",
        ),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {FORWARD: DROP}\n"
            "      ZT-IN: {exclusive: true, rules: ['-j ACCEPT']}\n      OUTPUT: {rules: []}\n",
            id="chain-as-mapping",
        ),
        pytest.param(HEAD + "firewall:\n  ipv6:\n    raw: {}\n", id="empty-table"),
        pytest.param(
            HEAD + "controller: {kind: local}\nnetworks:\n  - id: 8056c2e21c000001\n"
            "    v6_assign_mode: {6plane: true}\n    v4_assign_mode: {zt: true}\n",
            id="6plane-alias",
        ),
        pytest.param(HEAD + "sysctl: {net.ipv4.conf.eth0/100.rp_filter: 2}\n", id="vlan-sysctl"),
        pytest.param(
            HEAD + "ndppd:\n  pidfile: /run/x.pid\n  proxies:\n    - interface: eth0\n"
            "      router: false\n      timeout: 500\n      ttl: 30000\n"
            "      rules: [{prefix: '2001:db8::/80', method: 'iface:zt0'}]\n",
            id="ndppd-options",
        ),
    ],
)
def test_valid_specs_validate(text: str) -> None:
    parse_spec(text, "spec.yaml")
    assert [e.message for e in validator().iter_errors(yaml.safe_load(text))] == []


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("target: {name: gw1}\n", id="no-version"),
        pytest.param("version: 2\ntarget: {name: gw1}\n", id="version-2"),
        pytest.param(HEAD + "firewal: {}\n", id="unknown-section"),
        pytest.param(HEAD + "firewall:\n  ipv4:\n    filtre: {}\n", id="unknown-table"),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      FORWARD: '-j ACCEPT'\n",
            id="chain-as-string",
        ),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      FORWARD: ['-j ACCEPT', '-j ACCEPT']\n",
            id="rule-twice",
        ),
        pytest.param(HEAD + "firewall:\n  ipv4:\n    filter:\n      a.b: []\n", id="chain-dot"),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {FORWARD: REJECT}\n",
            id="policy-reject",
        ),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      policy: {ZT-IN: DROP}\n",
            id="policy-user-chain",
        ),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      X: {rules: [], exclusive: maybe}\n",
            id="exclusive-not-a-bool",
        ),
        pytest.param(
            HEAD + "firewall:\n  ipv4:\n    filter:\n      X: {rule: []}\n", id="chain-unknown-key"
        ),
        pytest.param(HEAD + "controller: {kind: cloud}\n", id="controller-kind"),
        pytest.param(
            HEAD + "controller: {kind: local}\nnetworks: [{id: 8056C2E21C000001}]\n",
            id="uppercase-network-id",
        ),
        pytest.param(
            HEAD + "controller: {kind: local}\nnetworks:\n  - id: 8056c2e21c000001\n"
            "    v6_assign_mode: {sixplane: true, sixPlane: true}\n",
            id="v6-unknown-flag",
        ),
        pytest.param(HEAD + "sysctl: {net.ipv4.ip_forward: true}\n", id="sysctl-bool"),
        pytest.param(HEAD + "sysctl: {../../etc/passwd: 1}\n", id="sysctl-path"),
        pytest.param(HEAD + "ndppd: {config: etc/ndppd.conf}\n", id="ndppd-relative-config"),
        pytest.param(
            HEAD + "ndppd:\n  proxies: [{interface: eth0, timeout: -1}]\n", id="ndppd-negative"
        ),
        pytest.param(
            HEAD + "ndppd:\n  proxies:\n    - interface: eth0\n"
            "      rules: [{prefix: '2001:db8::/80', method: proxy}]\n",
            id="ndppd-method",
        ),
        pytest.param(
            HEAD + "member:\n  networks: [{id: 8056c2e21c000001, allowDefault: true}]\n",
            id="member-camel-case",
        ),
        pytest.param(
            HEAD + "gateway: {network: 8056c2e21c000001, wan_interface: eth0, ipv4: {}}\n",
            id="gateway-ipv4-missing",
        ),
    ],
)
def test_invalid_specs_do_not_validate(text: str) -> None:
    """What the schema refuses here, `ztplan validate` refuses too. (Elsewhere the schema
    is stricter: pydantic's lax mode takes `exclusive: "yes"` or `timeout: "500"`, and the
    schema asks for the plain YAML boolean or integer.)"""
    with pytest.raises(SpecError):
        parse_spec(text, "spec.yaml")
    assert list(validator().iter_errors(yaml.safe_load(text)))


def _properties(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema at every level, with its place, including $defs."""
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            yield f"{where}.properties.{name}", prop
        for key, value in node.items():
            yield from _properties(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _properties(item, f"{where}[{i}]")


def test_every_property_and_model_has_a_description() -> None:
    schema = spec_schema()
    places = list(_properties(schema, "#"))
    assert len(places) > 60
    assert [where for where, prop in places if not str(prop.get("description", "")).strip()] == []
    models = {"#": schema, **{f"#/$defs/{k}": v for k, v in schema["$defs"].items()}}
    assert [where for where, model in models.items() if not model.get("description")] == []


def test_a_table_is_described_as_it_is_written() -> None:
    table = spec_schema()["$defs"]["Table"]
    assert list(table["properties"]) == ["policy"]
    assert "chains" not in table["properties"]
    chain = table["additionalProperties"]
    assert [branch.get("type") or branch.get("$ref") for branch in chain["oneOf"]] == [
        "array",
        "#/$defs/ChainSpec",
    ]
    assert table["propertyNames"]["pattern"].startswith("^[A-Za-z0-9_]")


def test_the_published_schema_is_current() -> None:
    path = ROOT / "schema" / "ztplan-spec.json"
    expected = json.dumps(spec_schema(), indent=2) + "\n"
    assert path.read_text() == expected, REGENERATE.format(" --json", "schema/ztplan-spec.json")


def test_the_reference_is_current() -> None:
    path = ROOT / "docs" / "spec.md"
    assert path.read_text() == render_spec_reference(), REGENERATE.format("", "docs/spec.md")


def test_the_reference_has_every_model_and_field() -> None:
    schema = spec_schema()
    text = render_spec_reference()
    for name, model in schema["$defs"].items():
        assert f"\n## {name}\n" in text
        for field in model.get("properties", {}):
            assert f"| `{field}` |" in text
    assert "| *chain name* |" in text and "| `6plane` |" in text
    assert "```yaml\n" + MODELINE + "# The exit gateway" in text


def test_main_prints_the_reference_or_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    assert capsys.readouterr().out == render_spec_reference()
    assert main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == spec_schema()
    assert main(["--yaml"]) == 2
    assert "usage" in capsys.readouterr().err
