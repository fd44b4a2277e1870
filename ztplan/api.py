"""One HTTP client for the ZeroTier APIs: timeouts, bounded retries, errors as sentences.

Retried (with exponential backoff, honouring `Retry-After`): 429, 5xx, timeouts, refused or
dropped connections, and a 200 whose body is not JSON (a proxy cutting the answer). Every
request ztplan sends is idempotent (a GET, or a POST of whole fields), so a retry cannot
apply anything twice. The token travels in a header and never appears in a message: errors
name the method, the URL without its query or userinfo, and the status.

Waiting is bounded and said: each pause is at least the backoff (`Retry-After: 0` is no
reason to hammer a server that is failing), at most `max_wait` (`Retry-After: 3600` is
not waited for in silence), announced through `on_wait`, and the whole request, attempts
and pauses included, ends by `deadline` seconds.
"""

from __future__ import annotations

import atexit
import email.utils
import functools
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ztplan.errors import ControllerError, ZtplanError
from ztplan.secret import looks_like_token, redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["ApiClient", "NotFound", "RateLimit", "read_token", "shared_client", "shown_url"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 524})
PROXY_TIMEOUTS = frozenset({502, 504, 524})
"""A proxy's answers (bad gateway, gateway timeout, Cloudflare's timeout): the controller
behind it may have the write, and store it after this answer."""

ErrorWording = Callable[[int, str, bytes], "str | None"]
"""(status, "METHOD URL", body) -> what follows "answered N: " in the one-line error, worded
by the API's backend, or None for the default sentence (New Central's 400 details and key
expiry: providers/controller_backend.py)."""


class NotFound(ControllerError):
    """404: the caller knows what is missing (a network, a membership) and says so."""


def read_token(env: str | None, file: str | None, what: str) -> str:
    """The API token from the environment or a file; the spec never holds it."""
    if env:
        token = os.environ.get(env, "").strip()
        if not token and (looks_like_token(env) or not _ENV_NAME.fullmatch(env)):
            raise ZtplanError(  # never echo it: it is likely the token itself
                f"{what}: token_env names no set environment variable, and looks like a "
                "token itself (not shown)",
                "put the token in an environment variable and that variable's name in token_env",
            )
        if not token:
            raise ZtplanError(
                f"{what}: the environment variable {env} is not set or empty",
                f"export {env}=<token>, or set token_file in the spec",
            )
        return token
    if file:
        try:
            with open(file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as error:
            raise ZtplanError(
                f"{what}: cannot read the token file {file} ({error.strerror})",
                "run as a user that can read it (root for zerotier-one's)",
            ) from None
        if not token:
            raise ZtplanError(f"{what}: the token file {file} is empty")
        return token
    raise ZtplanError(f"{what}: no token_env or token_file in the spec")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def shown_url(url: str) -> str:
    """A URL as a message may show it: no query (`?auth=TOKEN`), no userinfo."""
    return redact_url(url.split("?", 1)[0])


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


@dataclass
class RateLimit:
    """At most `per_second` requests started in any one second, across the threads that
    share it: Legacy Central answers 429 beyond its budget (20 a second on a free account,
    100 on a paid one), so concurrent reads wait here rather than for a Retry-After."""

    per_second: int
    clock: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)
    _started: deque[float] = field(default_factory=deque, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def wait(self) -> None:
        """Return when one more request may start (and count it as started)."""
        with self._lock:  # the others wait their turn behind the one sleeping
            while True:
                now = self.clock()
                while self._started and self._started[0] <= now - 1.0:
                    self._started.popleft()
                if len(self._started) < self.per_second:
                    self._started.append(now)
                    return
                self.sleep(self._started[0] + 1.0 - now)


@dataclass
class ApiClient:
    """A base URL, the auth header, and one shared httpx.Client (passed in for tests)."""

    base_url: str
    headers: dict[str, str]
    client: httpx.Client
    what: str = "controller"
    """Names the API in errors ("controller", "member service")."""
    attempts: int = 4
    backoff: float = 0.5
    """The first pause, doubled at each attempt; also the least pause, whatever
    `Retry-After` says."""
    max_wait: float = 30.0
    """The longest single pause, whatever `Retry-After` asks."""
    deadline: float = 120.0
    """Seconds the whole request may take, attempts and pauses included."""
    sleep: Callable[[float], None] = field(default=time.sleep)
    describe_error: ErrorWording | None = None
    """This API's own wording of error answers; what it returns is scrubbed of the token."""
    clock: Callable[[], float] = field(default=time.monotonic)
    on_wait: Callable[[str], None] = field(default=_say_on_stderr)
    """Told of each pause, as one line: what it waits for, how long, which attempt."""
    doubtful: set[str] = field(default_factory=set)
    """Paths a write went to that, on some attempt, got no answer: a copy of it may still
    be stored later, whatever a later attempt was told."""
    rate: RateLimit | None = None
    """The API's request budget, shared by the threads using this client (None: none)."""

    def get(self, path: str, deadline: float | None = None) -> Any:
        """GET `path`; `deadline` (seconds) bounds it below the client's own."""
        return self._request("GET", path, None, deadline)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, body)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, deadline: float | None = None
    ) -> Any:
        import httpx

        url = self.base_url.rstrip("/") + path
        where = f"{method} {shown_url(url)}"
        problem = ""
        end = self.clock() + min(self.deadline, deadline if deadline is not None else math.inf)
        unanswered = False  # sticky: a try with no answer may be stored even if a later one fails
        for attempt in range(1, self.attempts + 1):
            try:
                after: float | None = None
                if self.rate is not None:
                    self.rate.wait()
                try:
                    response = self.client.request(
                        method,
                        url,
                        headers=self.headers,
                        json=body,
                        timeout=self._timeout(end - self.clock()),
                    )
                except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                    problem = f"connection failed ({error.__class__.__name__})"  # nothing was sent
                except httpx.TimeoutException:
                    problem, unanswered = "timed out", True
                except (httpx.TransportError, httpx.DecodingError) as error:  # cut, bad encoding
                    problem, unanswered = f"connection failed ({error.__class__.__name__})", True
                else:
                    status = response.status_code
                    if status == 200:
                        try:
                            answer = response.json()
                        except (ValueError, RecursionError):  # cut, not UTF-8, nested 100,000 deep
                            problem, unanswered = "answered 200 with a body that is not JSON", True
                        else:
                            return answer
                    elif status in RETRY_STATUSES:
                        unanswered |= status in PROXY_TIMEOUTS
                        problem = f"answered {status}" + (
                            " (rate limited)" if status == 429 else ""
                        )
                        after = _retry_after(response.headers.get("Retry-After"))
                    else:
                        refused = self._error(status, where, response.content)
                        refused.unanswered = unanswered
                        raise refused
            finally:  # a write that any try got no answer to may still be stored
                if unanswered and method != "GET":
                    self.doubtful.add(path)
            if attempt == self.attempts:
                break
            self._pause(where, problem, attempt, after, end, unanswered)
        raise ControllerError(
            f"{self.what}: {where} {problem}, {self.attempts} attempts",
            url=shown_url(url),
            unanswered=unanswered,
        )

    def _timeout(self, left: float) -> httpx.Timeout:
        """The client's timeouts, none longer than what is left of the deadline."""
        import httpx

        left = max(left, 0.001)
        mine = self.client.timeout
        return httpx.Timeout(
            connect=min(mine.connect or left, left),
            read=min(mine.read or left, left),
            write=min(mine.write or left, left),
            pool=min(mine.pool or left, left),
        )

    def _pause(
        self,
        where: str,
        problem: str,
        attempt: int,
        after: float | None,
        end: float,
        unanswered: bool,
    ) -> None:
        """Wait before attempt `attempt + 1`: at least the backoff, at most max_wait, said
        through on_wait; refused when it would pass the deadline."""
        backoff = self.backoff * 2 ** (attempt - 1)
        wait = min(backoff if after is None else max(after, backoff), self.max_wait)
        asked = f" (it asks for {after:.0f} s)" if after is not None and after > wait else ""
        if self.clock() + wait > end:
            raise ControllerError(
                f"{self.what}: {where} {problem}{asked}; gave up after {attempt} of "
                f"{self.attempts} attempts: another would pass the {self.deadline:g} s deadline",
                url=where.split(" ", 1)[1],
                unanswered=unanswered,
            )
        what = f"rate limited by {where}" if "429" in problem else f"{where} {problem}"
        self.on_wait(
            f"{self.what}: {what}{asked}, waiting {wait:.3g} s "
            f"(attempt {attempt + 1} of {self.attempts})"
        )
        self.sleep(wait)

    def _error(self, status: int, where: str, body: bytes = b"") -> ControllerError:
        url = where.split(" ", 1)[1]
        worded = self.describe_error(status, where, body) if self.describe_error else None
        if worded is not None:
            return ControllerError(
                self._scrub(f"{self.what}: {where} answered {status}: {worded}"), status, url
            )
        if status == 401:
            return ControllerError(
                f"{self.what}: {where} answered 401: the token was refused "
                "(check token_env / token_file)",
                401,
                url,
            )
        if status == 403:
            return ControllerError(
                f"{self.what}: {where} answered 403: this token may not access it", 403, url
            )
        if status == 404:
            return NotFound(f"{self.what}: {where} answered 404", 404, url)
        return ControllerError(f"{self.what}: {where} answered {status}", status, url)

    def _scrub(self, text: str) -> str:
        """`text` without the credentials in our headers: an error body is the server's words,
        and a server may echo what it was sent."""
        for value in self.headers.values():
            for secret in {value, value.rsplit(" ", 1)[-1]}:
                if len(secret) >= 6:
                    text = text.replace(secret, "<redacted>")
        return text


@functools.cache
def shared_client() -> httpx.Client:
    """The one client of the process: pooled connections, bounded timeouts; closed at exit."""
    import httpx

    client = httpx.Client(timeout=httpx.Timeout(10.0, connect=5.0), follow_redirects=False)
    atexit.register(client.close)
    return client
