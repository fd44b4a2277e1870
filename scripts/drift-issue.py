"""Keep one GitHub issue per drifted target: open it, update it, close it when clean.

    python3 scripts/drift-issue.py [--repo OWNER/NAME] RESULT_DIR...

Each RESULT_DIR holds what scripts/drift-check.sh wrote for one target: `target`, `status`
and `drift.md`. The issue is found by the label `drift` and the title `Drift on TARGET`:

- drift, no issue: open one, labelled `drift` (the label is made if missing);
- drift, an issue: replace its body with the latest report (not a comment per check,
  which would bury it);
- clean, an issue: say so in a comment, and close it;
- error: leave any issue as it is. The failed job is the alert; a check that could not
  read the gateway says nothing about drift either way.

Needs `gh` with GH_TOKEN allowed to write issues.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ghlib import GhError, fit, gh, gh_list, repository, run_url, send  # beside this script

LABEL = "drift"


def title(target: str) -> str:
    return f"Drift on {target}"


def checked() -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = run_url()
    return f"Checked at {now}" + (f" by [this workflow run]({where})." if where else ".")


def body(target: str, report: str) -> str:
    return fit(
        f"ztplan found drift on **{target}**: the gateway no longer matches its spec on the "
        f"default branch.\n\n{report.strip()}\n\n{checked()}\n\n"
        "This issue is updated at each check while the drift lasts, and closed when the "
        "target is clean again. To fix it, apply the spec again (re-run the apply workflow) "
        "or change the spec to match the gateway, in a pull request.\n"
    )


def ensure_label(repo: str) -> None:
    try:
        gh("api", f"repos/{repo}/labels/{LABEL}")
    except GhError:  # most likely 404; if not, creating it fails with the real reason
        about = "A gateway differs from its spec (ztplan drift)"
        send(
            "POST", f"repos/{repo}/labels", {"name": LABEL, "color": "d93f0b", "description": about}
        )


def settle(
    repo: str, target: str, status: str, report: str, open_issues: list[dict[str, Any]]
) -> str:
    """Make the issue of `target` match its check; say what was done."""
    # The issues API lists pull requests too; they carry a `pull_request` key.
    found = sorted(
        (i for i in open_issues if i["title"] == title(target) and "pull_request" not in i),
        key=lambda i: int(i["number"]),
    )
    issue = found[0] if found else None  # the oldest, should a human have opened another
    if status == "drift" and issue is None:
        ensure_label(repo)
        new = {"title": title(target), "body": body(target, report), "labels": [LABEL]}
        return f"opened issue #{send('POST', f'repos/{repo}/issues', new)['number']}"
    if status == "drift" and issue is not None:
        send("PATCH", f"repos/{repo}/issues/{issue['number']}", {"body": body(target, report)})
        return f"updated issue #{issue['number']}"
    if status == "clean" and issue is not None:
        issue_path = f"repos/{repo}/issues/{issue['number']}"
        note = f"No drift any more: **{target}** matches its spec. {checked()}"
        send("POST", f"{issue_path}/comments", {"body": note})
        send("PATCH", issue_path, {"state": "closed", "state_reason": "completed"})
        return f"closed issue #{issue['number']}"
    if status == "error":
        return "the check failed; issues left as they are"
    return "clean; no issue open"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="OWNER/NAME (default $GITHUB_REPOSITORY)")
    parser.add_argument("results", nargs="+", type=Path, help="drift-check.sh output dirs")
    args = parser.parse_args()
    repo = repository(args.repo)
    try:
        open_issues = gh_list(f"repos/{repo}/issues?state=open&labels={LABEL}&per_page=100")
    except GhError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = False
    for result in args.results:  # one target's trouble must not stop the others' issues
        try:
            target = (result / "target").read_text().strip()
            status = (result / "status").read_text().strip()
            if status not in ("clean", "drift", "error"):
                raise ValueError(f"unknown status {status!r}")
            report = (result / "drift.md").read_text() if status == "drift" else ""
            print(f"{target}: {status}: {settle(repo, target, status, report, open_issues)}")
        except (GhError, OSError, ValueError) as error:
            print(f"error: {result}: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
