"""The errors ztplan raises; cli.py turns each into one line on stderr and exit 1.

    ZtplanError(message, hint=None)       base: one line the user can act on
    ├── SpecError(file, field, expected)  "specs/gw.yaml: firewall.ipv4.nat.POSTROUTING[0]: ..."
    ├── Problems(messages)                several at once (every error of a spec), a line each
    ├── SourceError                       bad ref, unreadable repository or file
    ├── LiveReadError(provider)           iptables-save failed, /proc unreadable, no such netns
    ├── ControllerError(status, url)      HTTP failures as sentences; never the token
    ├── LockError(path)                   the lock file cannot be used: a symlink, a directory,
    │   │                                 a read-only or full state dir, a wrong id
    │   └── LockHeld(info, stale, path)   names the holder; hints force-unlock when stale
    ├── StalePlan(provider)               a saved plan's snapshot no longer matches the host
    ├── ApplyFailed(step, rolled_back)    what failed and what was put back
    ├── TwinUnavailable(reason)           no twin can be built here (no root, no netns, no nft):
    │                                     callers say "verification skipped: REASON" once
    └── TwinLoadFailed(what, detail)      the image cannot be reproduced in a twin: names the
                                          table and quotes the tool's own error

Anything else that escapes the engine is a bug: cli.py reports it as an internal error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ztplan.lock import LockInfo

__all__ = [
    "ApplyFailed",
    "ControllerError",
    "LiveReadError",
    "LockError",
    "LockHeld",
    "Problems",
    "SourceError",
    "SpecError",
    "StalePlan",
    "TwinLoadFailed",
    "TwinUnavailable",
    "ZtplanError",
]


class ZtplanError(Exception):
    """An error the user can act on: `message` is one line, `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"

    def lines(self) -> list[str]:
        """What the user is told, one line each (a spec with three typos: three lines)."""
        return [str(self)]


class SpecError(ZtplanError):
    """The spec is invalid: names the file, the dotted field path and what was expected."""

    def __init__(self, file: str, field: str, expected: str, line: int | None = None) -> None:
        self.file = file
        self.field = field
        self.expected = expected
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {field}: {expected}" if field else f"{where}: {expected}")
        self.also: list[SpecError] = []
        """The spec's other problems, when it has several (all are reported at once)."""

    def lines(self) -> list[str]:
        return [str(self), *(str(other) for other in self.also)]


class Problems(ZtplanError):
    """Several problems at once (every error of a spec): one line each."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        super().__init__(self.messages[0] if self.messages else "invalid")

    def lines(self) -> list[str]:
        return list(self.messages)


class SourceError(ZtplanError):
    """The spec could not be read: missing file, bad git repository or ref."""


class LiveReadError(ZtplanError):
    """Live state could not be read (or written) by a provider."""

    def __init__(self, provider: str, message: str, hint: str | None = None) -> None:
        self.provider = provider
        super().__init__(f"{provider}: {message}", hint)


class ControllerError(ZtplanError):
    """A controller or member-service request failed; the URL never carries the token.
    `unanswered`: its last attempt got no answer (timed out, dropped, a garbled 200), so a
    write may have been stored; an HTTP error status means it was not."""

    def __init__(
        self, message: str, status: int | None = None, url: str = "", unanswered: bool = False
    ) -> None:
        self.status = status
        self.url = url
        self.unanswered = unanswered
        super().__init__(message)


class LockError(ZtplanError):
    """The target's lock file cannot be taken, read or removed; `path` names it."""

    def __init__(self, path: str, message: str, hint: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}", hint)


class LockHeld(LockError):
    """Another run holds the target's lock (or left it behind: `stale`).

    `why` says how the holder was judged: empty for a live process here, "remote" for a
    holder on another host (never called stale: its processes cannot be seen), "being
    written" for a lock that does not parse yet, or, when stale, the reason."""

    def __init__(self, info: LockInfo, stale: bool, path: str, why: str = "") -> None:
        self.info = info
        self.stale = stale
        self.why = why
        holder = (
            f"pid {info.pid} on {info.host} (user {info.user}, operation {info.operation}, "
            f"since {info.created}, lock id {info.id})"
        )
        if stale:
            super().__init__(
                path,
                f"stale lock left by {holder}; {why or 'that process is gone'}",
                f"if no apply is running, remove it with: ztplan force-unlock {info.id}",
            )
        elif why == "remote":
            super().__init__(
                path,
                f"the target is locked by {holder}, on another host: ztplan cannot tell "
                "whether it still runs",
                "wait for it, or if that run is over, remove it with: "
                f"ztplan force-unlock {info.id}",
            )
        elif why == "being written":
            super().__init__(
                path,
                "the target is locked by a run whose lock is still being written (holder "
                "not known yet)",
                "pass --lock-timeout SECONDS to wait",
            )
        else:
            super().__init__(
                path,
                f"the target is locked by {holder}",
                "wait for it to finish, or pass --lock-timeout SECONDS to wait",
            )


class StalePlan(ZtplanError):
    """A saved plan was made from live state that has since changed."""


class ApplyFailed(ZtplanError):
    """A step failed; `rolled_back` lists what was put back, `not_rolled_back` what was not."""

    def __init__(
        self,
        step: str,
        cause: str,
        rolled_back: Sequence[str],
        not_rolled_back: Sequence[str] = (),
    ) -> None:
        self.step = step
        self.rolled_back = list(rolled_back)
        self.not_rolled_back = list(not_rolled_back)
        self.steps: list[Any] = []
        """Each step's outcome (ztplan.model.StepOutcome), for `apply --json`."""
        parts = [f"apply failed at step {step}: {cause}"]
        if self.rolled_back:
            parts.append(f"rolled back: {', '.join(self.rolled_back)}")
        if self.not_rolled_back:
            parts.append(f"COULD NOT roll back: {', '.join(self.not_rolled_back)}")
        if not self.rolled_back and not self.not_rolled_back:
            parts.append("nothing had been changed")
        super().__init__("; ".join(parts))

    def outcome(self, target: str) -> Any:
        """The failed apply as `apply --json` prints it (a ztplan.model.ApplyOutcome)."""
        from ztplan.model import ApplyOutcome

        return ApplyOutcome(target=target, applied=False, steps=self.steps, error=str(self))


class TwinUnavailable(ZtplanError):
    """A twin of the gateway cannot be built on this machine; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot build a twin of the gateway: {reason}")


class TwinLoadFailed(ZtplanError):
    """Part of the gateway's image could not be loaded into the twin, so a verdict on it
    would be about another gateway: `what` names the table (or sysctl), `detail` quotes
    the tool."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"cannot reproduce {what} in the twin: {detail}")
