"""One HTTP client for the ZeroTier APIs: timeouts, bounded retries, errors as sentences.

Retried (with exponential backoff, honouring `Retry-After`): 429, 5xx, timeouts, refused or
dropped connections, and a 200 whose body is not JSON (a proxy cutting the answer). Every
request ztplan sends is idempotent (a GET, or a POST of whole fields), so a retry cannot
apply anything twice. The token travels in a header and never appears in a message: errors
name the method, the URL without its query, and the status.
"""

from __future__ import annotations

import atexit
import email.utils
import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ztplan.errors import ControllerError, ZtplanError

if TYPE_CHECKING:
    import httpx

__all__ = ["ApiClient", "NotFound", "shared_client", "read_token"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

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
class ApiClient:
    """A base URL, the auth header, and one shared httpx.Client (passed in for tests)."""

    base_url: str
    headers: dict[str, str]
    client: httpx.Client
    what: str = "controller"
    """Names the API in errors ("controller", "member service")."""
    attempts: int = 4
    backoff: float = 0.5
    max_wait: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep)
    describe_error: ErrorWording | None = None
    """This API's own wording of error answers; what it returns is scrubbed of the token."""

    def get(self, path: str) -> Any:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        import httpx

        url = self.base_url.rstrip("/") + path
        where = f"{method} {url}"
        problem = ""
        for attempt in range(1, self.attempts + 1):
            wait = self.backoff * 2 ** (attempt - 1)
            try:
                response = self.client.request(method, url, headers=self.headers, json=body)
            except httpx.TimeoutException:
                problem = "timed out"
            except httpx.TransportError as error:
                problem = f"connection failed ({error.__class__.__name__})"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return response.json()
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        problem = "answered 200 with a body that is not JSON"
                elif status in RETRY_STATUSES:
                    problem = f"answered {status}" + (" (rate limited)" if status == 429 else "")
                    after = _retry_after(response.headers.get("Retry-After"))
                    wait = wait if after is None else after
                else:
                    raise self._error(status, where, response.content)
            if attempt < self.attempts:
                self.sleep(min(wait, self.max_wait))
        raise ControllerError(f"{self.what}: {where} {problem}, {self.attempts} attempts", url=url)

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
