"""What the workflow scripts share: calling `gh api`, GitHub Actions outputs, long bodies.

Only the standard library: the scripts run with whatever python3 a runner has, hosted or
on a gateway, ztplan installed or not. `gh` (hosted runners only) reads GH_TOKEN.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# GitHub refuses comment and issue bodies over 65,536 characters; keep room for the note.
BODY_LIMIT = 60_000


class GhError(Exception):
    """`gh` failed; the message is its stderr (which never holds the token)."""


def gh(*args: str, payload: dict[str, Any] | None = None) -> str:
    """Run `gh ARGS`, the JSON `payload` (if any) as the request body on stdin."""
    argv = ["gh", *args]
    if payload is not None:
        argv += ["--input", "-"]
    done = subprocess.run(
        argv,
        input=json.dumps(payload) if payload is not None else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise GhError(f"gh {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return done.stdout


def send(method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A write to the REST API (POST, PATCH), the JSON `payload` as its body; the answer."""
    answer = gh("api", "--method", method, path, payload=payload)
    return json.loads(answer) if answer.strip() else {}


def gh_list(path: str) -> list[dict[str, Any]]:
    """Every item of a paginated list endpoint.

    `gh api --paginate` prints one JSON array per page, back to back (`[...][...]`), not
    one array; decode them in turn rather than rely on --slurp, which older gh lacks.
    """
    text = gh("api", "--paginate", path)
    decoder = json.JSONDecoder()
    items: list[dict[str, Any]] = []
    at = 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return items
        page, at = decoder.raw_decode(text, at)
        items.extend(page)


def repository(given: str | None) -> str:
    repo = given or os.environ.get("GITHUB_REPOSITORY")
    if not repo:
        sys.exit("error: no repository: pass --repo OWNER/NAME or set GITHUB_REPOSITORY")
    return repo


def run_url() -> str | None:
    """This workflow run's page, where the full plans and logs are."""
    parts = [os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, repo, run = parts
    return f"{server}/{repo}/actions/runs/{run}"


def fit(body: str, limit: int = BODY_LIMIT) -> str:
    """Cut a body GitHub would refuse, saying where the rest is."""
    if len(body) <= limit:
        return body
    where = run_url()
    pointer = f"the [workflow run]({where})" if where else "the workflow run"
    # An open <details> or table is harmless: GitHub closes what the cut left open.
    return (
        body[:limit] + f"\n\n… truncated: the full text is in {pointer} (summary and artifacts).\n"
    )


def set_outputs(**values: str) -> None:
    """Write `name=value` lines to $GITHUB_OUTPUT (step outputs), or print them."""
    lines = "".join(f"{name}={value}\n" for name, value in values.items())
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(lines)
    else:
        sys.stdout.write(lines)


def append_summary(markdown: str) -> None:
    """Add to the job's summary page ($GITHUB_STEP_SUMMARY), when there is one."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(markdown.rstrip("\n") + "\n\n")
