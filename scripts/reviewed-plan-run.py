"""Find the plan workflow run that was reviewed in the pull request a pushed commit came from.

    python3 scripts/reviewed-plan-run.py --sha SHA [--workflow plan.yml] [--repo OWNER/NAME]

Writes the step outputs `pr` and `run-id`: the newest finished run of the plan workflow on
the pull request's last head commit, whose artifacts `ztplan-plan-TARGET` hold the plans the
reviewers saw. Both are empty when there is none (a push without a pull request, or a merge
before its plan had finished): apply.yml then plans again. Works for merge, squash and
rebase merges alike, since GitHub links the resulting commit to its pull request.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ghlib import GhError, gh, gh_list, repository, set_outputs  # beside this script


def pull_request(repo: str, sha: str) -> dict[str, Any] | None:
    pulls = gh_list(f"repos/{repo}/commits/{sha}/pulls")
    # The one this commit merged; a commit can also sit in other (open) pull requests.
    for pr in pulls:
        if pr.get("merge_commit_sha") == sha:
            return pr
    return next((pr for pr in pulls if pr.get("merged_at")), None)


def reviewed_run(repo: str, workflow: str, head: str) -> dict[str, Any] | None:
    path = f"repos/{repo}/actions/workflows/{workflow}/runs"
    query = f"?event=pull_request&head_sha={head}&status=completed&per_page=100"
    runs = json.loads(gh("api", path + query)).get("workflow_runs", [])
    return max(runs, key=lambda r: int(r["id"]), default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sha", required=True, help="the pushed commit")
    parser.add_argument("--workflow", default="plan.yml", help="file name of the plan workflow")
    parser.add_argument("--repo", help="OWNER/NAME (default $GITHUB_REPOSITORY)")
    args = parser.parse_args()
    repo = repository(args.repo)
    try:
        pr = pull_request(repo, args.sha)
        run = reviewed_run(repo, args.workflow, pr["head"]["sha"]) if pr else None
    except (GhError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if pr is None:
        print(f"{args.sha[:12]} came from no pull request: every target is planned again")
    elif run is None:
        print(
            f"pull request #{pr['number']} has no finished plan run for its head "
            f"{pr['head']['sha'][:12]}: every target is planned again"
        )
    else:
        print(
            f"pull request #{pr['number']} was reviewed with plan run {run['id']} "
            f"({run.get('html_url', '')})"
        )
    set_outputs(pr=str(pr["number"]) if pr else "", **{"run-id": str(run["id"]) if run else ""})
    return 0


if __name__ == "__main__":
    sys.exit(main())
