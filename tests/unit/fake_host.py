"""A fake `Host` that replays recorded command output and files (NAPALM's fake device):
providers run against it with no root, no namespace and no kernel.

Every call is recorded, so a test asserts exactly what a provider ran and wrote. A command
without a recorded answer fails the test instead of returning something made up.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ztplan.host import CommandResult
from ztplan.iptables import TABLES, Table, jump_target, parse_save

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Outputs = Mapping[tuple[str, ...], str | CommandResult]


class ReplayHost:
    """`run` answers from `outputs` (argv tuple -> stdout, or a whole CommandResult);
    `read_proc`/`write_proc` and the file methods use `files` (path -> text, or an
    OSError to raise); `addresses` returns `addresses`; `shares_with_host` is true for the
    paths in `host_wide` (and everything when `netns` is None)."""

    netns: str | None = None

    def __init__(
        self,
        outputs: Outputs | None = None,
        files: Mapping[str, str | OSError] | None = None,
        addresses: Mapping[str, list[str]] | None = None,
        host_wide: Iterable[str] = (),
    ) -> None:
        self.outputs: dict[tuple[str, ...], str | CommandResult] = dict(outputs or {})
        self.files: dict[str, str | OSError] = dict(files or {})
        self.interface_addresses = {k: list(v) for k, v in (addresses or {}).items()}
        self.host_wide = set(host_wide)
        """/proc/sys paths the (pretend) namespace shares with the host."""
        self.calls: list[tuple[tuple[str, ...], str | None]] = []
        self.writes: list[tuple[str, str]] = []

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, input))
        if key not in self.outputs:
            raise AssertionError(f"unexpected command {key} (nothing recorded for it)")
        answer = self.outputs[key]
        if isinstance(answer, CommandResult):
            return answer
        return CommandResult(key, 0, answer, "")

    def read_proc(self, path: str) -> str:
        value = self.files.get(path)
        if value is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        if isinstance(value, OSError):
            raise value
        return value

    def write_proc(self, path: str, value: str) -> None:
        current = self.files.get(path)
        if isinstance(current, OSError):
            raise current
        self.writes.append((path, value))
        self.files[path] = value

    def shares_with_host(self, path: str) -> bool:
        return self.netns is None or path in self.host_wide

    def addresses(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.interface_addresses.items()}

    def config_path(self, path: str) -> str:
        return path

    def read_file(self, path: str) -> str | None:
        try:
            return self.read_proc(path)
        except FileNotFoundError:
            return None

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        self.write_proc(path, text)

    def remove_file(self, path: str) -> None:
        self.files.pop(path, None)

    def commands(self) -> list[tuple[str, ...]]:
        return [argv for argv, _ in self.calls]


def saved_dumps(case: str) -> dict[tuple[str, ...], str | CommandResult]:
    """Recorded `iptables-save` / `ip6tables-save` output of a fixture case ("" when absent)."""
    directory = FIXTURES / "firewall" / case
    out: dict[tuple[str, ...], str | CommandResult] = {}
    for tool in ("iptables-save", "ip6tables-save"):
        path = directory / f"{tool}.txt"
        out[(tool,)] = path.read_text() if path.exists() else ""
    return out


class FakeKernel(ReplayHost):
    """A tiny iptables for convergence checks: `*-save` prints the state; `*-restore` edits
    it as the kernel does (-A, -I N, -D N, -D by spec removes the first identical rule, -P,
    -F, -X; `:CHAIN` creates a user chain or flushes an existing one, --noflush or not;
    without --noflush each table in the input is emptied first). A failing line leaves the
    family unchanged (one transaction), as the kernel's commit does."""

    def __init__(self, dumps: Mapping[str, str] | None = None) -> None:
        super().__init__()
        dumps = dumps or {}
        self.tables = {f: parse_save(dumps.get(f, "")) for f in ("ipv4", "ipv6")}

    def run(self, argv: Sequence[str], input: str | None = None) -> CommandResult:
        key = tuple(argv)
        self.calls.append((key, input))
        family = "ipv6" if argv[0].startswith("ip6") else "ipv4"
        if argv[0].endswith("-save"):
            return CommandResult(key, 0, self.save(family), "")
        tables = copy.deepcopy(self.tables[family])
        try:
            self._restore(tables, input or "", noflush="--noflush" in argv)
        except ValueError as error:
            return CommandResult(key, 1, "", f"{argv[0]} v1.8.9 (nf_tables): {error}\n")
        self.tables[family] = tables
        return CommandResult(key, 0, "", "")

    def restores(self) -> list[str]:
        """The input of each restore run, in order."""
        return [text or "" for argv, text in self.calls if argv[0].endswith("-restore")]

    def save(self, family: str) -> str:
        out: list[str] = []  # a kernel without tables prints nothing at all
        for name, table in self.tables[family].items():
            out.append(f"*{name}")
            out += [f":{chain} {policy} [0:0]" for chain, policy in table.policies.items()]
            out += [f"-A {chain} {rule}" for chain, rules in table.rules.items() for rule in rules]
            out.append("COMMIT")
        return "".join(f"{line}\n" for line in out)

    @staticmethod
    def _restore(tables: dict[str, Table], text: str, noflush: bool) -> None:
        table: Table | None = None
        for line in text.split("\n"):
            words = line.split()
            if not words or line.startswith("#") or line == "COMMIT":
                continue
            if line.startswith("*"):
                name = line[1:]
                if not noflush or name not in tables:
                    builtins = TABLES[name]
                    tables[name] = Table(
                        policies=dict.fromkeys(builtins, "ACCEPT"), rules={c: [] for c in builtins}
                    )
                table = tables[name]
                continue
            assert table is not None, f"a line before any table: {line}"
            if line.startswith(":"):
                chain, policy = words[0][1:], words[1]
                if policy != "-":
                    table.policies[chain] = policy
                else:
                    table.policies.setdefault(chain, "-")
                    table.rules[chain] = []
                continue
            command, chain, rest = words[0], words[1], line.split(" ", 2)[2:]
            if chain not in table.policies:
                raise ValueError(f"Chain '{chain}' does not exist")
            rules = table.rules.setdefault(chain, [])
            arg = rest[0] if rest else ""
            if command == "-A":
                rules.append(arg)
            elif command == "-I":
                number, _, rule = arg.partition(" ")
                if not 1 <= int(number) <= len(rules) + 1:
                    raise ValueError(f"index of insertion too big: {number}")
                rules.insert(int(number) - 1, rule)
            elif command == "-D" and arg.isdigit():
                if not 1 <= int(arg) <= len(rules):
                    raise ValueError("Index of deletion too big")
                del rules[int(arg) - 1]
            elif command == "-D":
                if arg not in rules:
                    raise ValueError("Bad rule (does a matching rule exist in that chain?)")
                rules.remove(arg)
            elif command == "-P":
                table.policies[chain] = arg
            elif command == "-F":
                rules.clear()
            elif command == "-X":
                if rules or any(jump_target(r) == chain for rs in table.rules.values() for r in rs):
                    raise ValueError(f"Directory not empty / chain {chain} is in use")
                del table.rules[chain]
                del table.policies[chain]
            else:
                raise ValueError(f"unknown command {command}")
