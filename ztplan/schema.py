"""The spec's JSON Schema, in the shape the YAML is written in, and the reference built from it.

`spec_schema()` is what editors use (`# yaml-language-server: $schema=...` on a spec's first
line) and what `schema/ztplan-spec.json` holds; `render_spec_reference()` is `docs/spec.md`.
Both come from the pydantic models in `ztplan/spec.py`, so they cannot drift from what
`ztplan validate` accepts; the tests check that the committed files are current.

The schema checks the shape of a spec (names, types, patterns, unknown keys). `ztplan
validate` checks more: rules through the kernel, duplicate networks, which built-in chains a
table has, whether the addresses belong together.

    python -m ztplan.schema > docs/spec.md                 regenerate the reference
    python -m ztplan.schema --json > schema/ztplan-spec.json   regenerate the schema
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from ztplan.spec import Spec

__all__ = ["SCHEMA_ID", "main", "render_spec_reference", "spec_schema"]

SCHEMA_ID = "urn:ztplan:spec:1"
"""The schema's `$id`: it names the spec format (`version: 1`), not a place to fetch it."""
SCHEMA_PATH = "schema/ztplan-spec.json"
"""Where the repository publishes `spec_schema()`, relative to its root."""
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ROOT = "Spec"
_CHAIN = "<chain>"
"""The row of a table's chains, which are keys of the table, not one field."""
_EXAMPLE = Path(__file__).resolve().parent.parent / "specs" / "gateway.yaml"
"""The reference's example; present in a checkout, not in an installed wheel."""


class _SpecSchema(GenerateJsonSchema):
    """pydantic's generator, with the defaults of `default_factory` fields written out (an
    empty list or mapping tells a reader as much as a scalar default) and without the
    titles pydantic derives from field names (`Token Env`), which say less than the names."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _tidy(node: Any) -> Any:
    """Descriptions on one line each (docstrings wrap at 100 columns; editors reflow)."""
    if isinstance(node, dict):
        return {
            key: " ".join(value.split())
            if key == "description" and isinstance(value, str)
            else _tidy(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    return node


def spec_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file as it is written: chains as keys of
    their table beside `policy`, aliases (`6plane`) as field names."""
    generated = Spec.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SpecSchema
    )
    head = {
        "$schema": _DIALECT,
        "$id": SCHEMA_ID,
        "title": "ztplan spec",
    }
    generated.pop("title", None)
    defs = generated.pop("$defs")
    schema: dict[str, Any] = _tidy({**head, **generated, "$defs": defs})
    return schema


# --- the reference ----------------------------------------------------------------------


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _fields(model: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """A model's rows: its properties, then (a table's chains) any other key."""
    yield from model.get("properties", {}).items()
    extra = model.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in model:
        yield _CHAIN, extra


def _refs(schema: Any) -> Iterator[str]:
    """Model names a field's schema refers to, in the order they are written."""
    if isinstance(schema, dict):
        name = _ref_name(schema)
        if name is not None:
            yield name
        for value in schema.values():
            yield from _refs(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _refs(item)


def _order(schema: dict[str, Any]) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """Models depth first from the top level (a model beside the one that holds it), and
    for each, where it is used: (holding model, field)."""
    defs = schema["$defs"]
    order: list[str] = []
    used_in: dict[str, list[tuple[str, str]]] = {}

    def visit(name: str) -> None:
        order.append(name)
        model = schema if name == _ROOT else defs[name]
        for field, prop in _fields(model):
            for ref in _refs(prop):
                if (name, field) not in used_in.setdefault(ref, []):
                    used_in[ref].append((name, field))
                if ref not in order:
                    visit(ref)

    visit(_ROOT)
    return order, used_in


def _link(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def _type(schema: dict[str, Any]) -> str:
    """A field's type in words: `list of [Route](#route)`, `` `ACCEPT` or `DROP` ``."""
    name = _ref_name(schema)
    if name is not None:
        return _link(name)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            kinds = [_type(s) for s in schema[key] if s.get("type") != "null"]
            return " or ".join(kinds)
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"list of {_type(schema.get('items', {}))}"
    if kind == "object":
        values = schema.get("additionalProperties")
        value_type = _type(values) if isinstance(values, dict) else "any"
        return f"mapping of name to {value_type}"
    if kind == "integer" and "minimum" in schema and "maximum" in schema:
        return f"integer {schema['minimum']} to {schema['maximum']}"
    if kind == "integer" and "minimum" in schema:
        return f"integer >= {schema['minimum']}"
    return str(kind or "any")


def _default(field: str, prop: dict[str, Any], required: Sequence[str]) -> str:
    if field in required:
        return "required"
    if "default" not in prop or prop["default"] is None:
        return "not set"
    return f"`{json.dumps(prop['default'])}`"


def _name(field: str) -> str:
    return "*chain name*" if field == _CHAIN else f"`{field}`"


def _used_in(places: list[tuple[str, str]]) -> str:
    """`[Family](#family) `filter`, `nat`` from [(Family, filter), (Family, nat)]."""
    holders: dict[str, list[str]] = {}
    for holder, field in places:
        holders.setdefault(holder, []).append(_name(field))
    return ", ".join(f"{_link(holder)} {', '.join(names)}" for holder, names in holders.items())


def _cell(text: str) -> str:
    """Text for a Markdown table cell (GFM: a pipe needs a backslash, even in code)."""
    return " ".join(text.split()).replace("|", "\\|")


def _example() -> list[str]:
    if not _EXAMPLE.is_file():
        return ["See `specs/gateway.yaml` in the repository.", ""]
    text = _EXAMPLE.read_text(encoding="utf-8")
    return [
        "The guide's exit gateway, `specs/gateway.yaml`:",
        "",
        "```yaml",
        *text.rstrip("\n").splitlines(),
        "```",
        "",
    ]


_INTRO = """\
A spec is a YAML file describing one **target**: a host, and the ZeroTier networks it
serves. It is kept in git; `ztplan plan` compares it with the live host and the
controller, `ztplan apply` makes the changes. A section that is not written is not
managed: ztplan leaves that part of the host alone.

`ztplan validate SPEC` checks a spec without touching anything. The JSON Schema (draft
2020-12) of a spec is `schema/ztplan-spec.json` (`ztplan schema` prints it). Editors
with the YAML language server (VS Code's YAML extension, among others) complete and check
a spec that starts with

```yaml
# yaml-language-server: $schema=../schema/ztplan-spec.json
```

(the path relative to the spec). The schema checks the shape; `ztplan validate` checks more:
each rule through the kernel, networks and rules written twice, which built-in chains a
table has, addresses that do not belong together.

Each section below is one mapping of the spec: its fields, their types, what applies when
a field is not written, and what it means. "not set" means nothing is managed or ndppd's
or ZeroTier's own default applies, as the description says."""


def render_spec_reference() -> str:
    """`docs/spec.md`: every field of the spec, from the schema (sections in the order the
    spec nests them), with the guide's gateway as the example."""
    schema = spec_schema()
    order, used_in = _order(schema)
    lines = [
        "# The spec reference",
        "",
        "<!-- Generated from ztplan/spec.py by `python -m ztplan.schema > docs/spec.md`; "
        "do not edit. -->",
        "",
        _INTRO,
        "",
        "## Example",
        "",
        *_example(),
    ]
    for name in order:
        model = schema if name == _ROOT else schema["$defs"][name]
        lines += [f"## {name}", ""]
        if name == _ROOT:
            lines += ["The top level of the file.", ""]
        else:
            lines += [f"Used in: {_used_in(used_in[name])}.", ""]
        lines += [" ".join(model["description"].split()), ""]
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        required = model.get("required", [])
        for field, prop in _fields(model):
            default = "" if field == _CHAIN else _default(field, prop, required)
            row = (_name(field), _type(prop), default, prop.get("description", ""))
            lines.append("| " + " | ".join(_cell(text) for text in row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ztplan.schema [--json]`: the reference (Markdown), or the schema (JSON)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--json"]:
        sys.stdout.write(json.dumps(spec_schema(), indent=2) + "\n")
    elif not args:
        sys.stdout.write(render_spec_reference())
    else:
        sys.stderr.write("usage: python -m ztplan.schema [--json]\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
