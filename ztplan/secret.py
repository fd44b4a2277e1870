"""What may not be printed: a URL's userinfo, and anything that looks like a token.

Errors, plans and state name URLs and environment variables; these two functions keep the
secrets they may carry out of them (a token pasted into `token_env`, `https://user:TOKEN@`).
"""

from __future__ import annotations

import re

__all__ = ["looks_like_token", "redact_url"]

_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def redact_url(url: str) -> str:
    """`https://user:TOKEN@host/x` -> `https://***@host/x`; other text is unchanged."""
    return _USERINFO.sub("***@", url)


def looks_like_token(name: str) -> bool:
    """Whether a would-be environment variable name is more likely a pasted token: long,
    letters and digits mixed, no underscore (Central's tokens are 32 such characters, a
    controller's authtoken.secret 24; variable names are words joined by `_`)."""
    return (
        len(name) >= 16
        and "_" not in name
        and any(c.isdigit() for c in name)
        and any(c.isalpha() for c in name)
    )
