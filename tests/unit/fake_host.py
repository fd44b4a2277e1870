"""A fake `Host` that replays recorded command output and files (NAPALM's fake device):
providers run against it with no root, no namespace and no kernel.

Every call is recorded, so a test asserts exactly what a provider ran and wrote. A command
without a recorded answer fails the test instead of returning something made up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ztplan.host import CommandResult

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
