"""Post each body file as a pull-request comment, or update the one posted before.

    python3 scripts/pr-comment.py --pr NUMBER [--repo OWNER/NAME] BODY.md...

A body file's first line is its hidden marker, e.g. `<!-- ztplan-plan:gw1 -->`
(scripts/plan-report.py writes it). The comment whose body starts with the same marker is
edited in place, so a pull request keeps one plan comment per target however often it is
planned; without one, a new comment is posted. Needs `gh` with GH_TOKEN allowed to write
pull requests.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ghlib import GhError, fit, gh_list, repository, send  # beside this script

MARKER = re.compile(r"<!-- [\w.:@/-]+ -->")


def upsert(repo: str, pr: int, body: str, comments: list[dict[str, object]]) -> str:
    marker = body.split("\n", 1)[0].strip()
    if not MARKER.fullmatch(marker):
        raise ValueError("the body does not start with a marker like <!-- ztplan-plan:gw1 -->")
    # Starts with, not contains: a reviewer quoting the bot's comment must not be edited.
    previous = next((c for c in comments if str(c.get("body", "")).startswith(marker)), None)
    if previous is not None:
        send("PATCH", f"repos/{repo}/issues/comments/{previous['id']}", {"body": fit(body)})
        return f"updated comment {previous['id']} ({marker})"
    send("POST", f"repos/{repo}/issues/{pr}/comments", {"body": fit(body)})
    return f"posted a new comment ({marker})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pr", type=int, required=True, help="pull request number")
    parser.add_argument("--repo", help="OWNER/NAME (default $GITHUB_REPOSITORY)")
    parser.add_argument("bodies", nargs="+", type=Path, help="markdown files, marker first")
    args = parser.parse_args()
    repo = repository(args.repo)
    try:
        # Pull-request comments are issue comments in GitHub's API.
        comments = gh_list(f"repos/{repo}/issues/{args.pr}/comments?per_page=100")
    except GhError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    failed = False
    for path in args.bodies:  # one bad file must not keep the other plans from the PR
        try:
            print(f"{path}: {upsert(repo, args.pr, path.read_text(), comments)}")
        except (GhError, OSError, ValueError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
