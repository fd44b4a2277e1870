"""Resource addresses (DESIGN §4): one grammar, one parser, one formatter.

    firewall.ipv4.nat.POSTROUTING["-s 10.6.4.0/22 -j MASQUERADE"]
    firewall.ipv4.filter.policy.FORWARD
    sysctl["net.ipv4.ip_forward"]
    ndppd.proxy["eth0"].rule["2001:db8::/80"]
    controller.network["8056c2e21c000001"].routes

An address is a provider name followed by steps: `.name` or `["key"]` (the key
JSON-quoted). A live resource that appears twice (the same rule twice in a chain) gets an
occurrence suffix ` #2`.

`Address` is a `str` subclass whose text is the canonical spelling: a plan of a large
firewall holds 40,000 of them as dict keys, and a string costs nothing more to hash,
compare or serialise, while the parsed steps are computed only when asked for.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, NamedTuple

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

__all__ = ["PATTERN", "Address", "Step"]

_NAME = r"[A-Za-z0-9_~+-]+"
_STEP = re.compile(rf'\.({_NAME})|\[("(?:[^"\\]|\\.)*")\]')
_HEAD = re.compile(rf"({_NAME})")
_OCCURRENCE = re.compile(r" #([2-9]|[1-9]\d+)$")
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_WHOLE = re.compile(rf"{_NAME}(?:\.{_NAME}|\[{_JSON_STRING}\])*(?: #(?:[2-9]|[1-9]\d+)\n?)?")
"""The grammar in one expression, keys as strict JSON strings: what `_parse` accepts,
checked ~20x faster (a state file of 2 x 50,000 rules holds 100,000 addresses to check,
and `_parse`'s cache holds 4,096)."""
PATTERN = f"^{_WHOLE.pattern}$"
"""The same for pydantic-core's regex engine (in Rust)."""


class Step(NamedTuple):
    """One step: `name` for `.name` (or the provider), `key` for `["key"]`."""

    name: str | None
    key: str | None


def _quote(key: str) -> str:
    # The f-string is json.dumps' answer when nothing needs escaping, ~10x faster.
    if '"' not in key and "\\" not in key and key.isprintable():
        return f'"{key}"'
    return json.dumps(key, ensure_ascii=False)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple[tuple[Step, ...], int]:
    occurrence = 1
    found = _OCCURRENCE.search(text)
    if found:
        occurrence = int(found.group(1))
        text = text[: found.start()]
    head = _HEAD.match(text)
    if head is None:
        raise ValueError(f"not a resource address: {text!r}")
    steps = [Step(head.group(1), None)]
    position = head.end()
    while position < len(text):
        step = _STEP.match(text, position)
        if step is None:
            raise ValueError(f"not a resource address: {text!r} (at {position})")
        if step.group(1) is not None:
            steps.append(Step(step.group(1), None))
        else:
            steps.append(Step(None, json.loads(step.group(2))))
        position = step.end()
    return tuple(steps), occurrence


class Address(str):
    """A resource address; see the module docstring for the grammar."""

    __slots__ = ()

    @classmethod
    def of(cls, provider: str, *steps: str | Step) -> Address:
        """Build one: plain strings are `.name` steps, `Step(None, key)` a `["key"]` step."""
        text = provider
        for step in steps:
            if isinstance(step, str):
                text += "." + step
            elif step.key is not None:
                text += f"[{_quote(step.key)}]"
            else:
                text += f".{step.name}"
        return cls(text)

    @classmethod
    def parse(cls, text: str) -> Address:
        """Check the grammar (raises ValueError) and return the address."""
        if _WHOLE.fullmatch(text) is None:
            _parse(text)  # raises, saying where
            raise ValueError(f"not a resource address: {text!r}")
        return cls(text)

    @property
    def steps(self) -> tuple[Step, ...]:
        return _parse(str(self))[0]

    @property
    def occurrence(self) -> int:
        """1, or N for the Nth copy of an identical live resource (` #N`)."""
        return _parse(str(self))[1]

    @property
    def provider(self) -> str:
        """The first word: the provider that owns the resource."""
        return self.partition(".")[0].partition("[")[0]

    @property
    def key(self) -> str | None:
        """The last bracketed key (`sysctl["net.ipv4.ip_forward"]` -> the sysctl key)."""
        for step in reversed(self.steps):
            if step.key is not None:
                return step.key
        return None

    @property
    def names(self) -> tuple[str, ...]:
        """The plain names after the provider, in order (keys left out)."""
        return tuple(s.name for s in self.steps[1:] if s.name is not None)

    def dot(self, name: str) -> Address:
        return Address(f"{self}.{name}")

    def item(self, key: str) -> Address:
        """`self["key"]`: the address of one element under this one."""
        return Address(f"{self}[{_quote(key)}]")

    def nth(self, occurrence: int) -> Address:
        return self if occurrence == 1 else Address(f"{self} #{occurrence}")

    def base(self) -> Address:
        """Without an occurrence suffix."""
        return Address(_OCCURRENCE.sub("", str(self)))

    def within(self, prefix: str) -> bool:
        """Whether this is `prefix` or under it (`firewall.ipv4` holds every IPv4 rule)."""
        return self == prefix or self.startswith((prefix + ".", prefix + "["))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # The grammar checked by pydantic-core's own regex engine, in Rust: a state file
        # or a saved plan holds 100,000 addresses (`Address.parse` in Python: 0.15 s).
        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(pattern=PATTERN),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )
