"""List the targets of specs/*.yaml for a job matrix, validating every spec on the way.

    python3 scripts/targets.py [--specs DIR] [--live NAMES] [--github-output]

Each spec is checked with `ztplan validate SPEC --json`, which names its target
(`{"valid": true, ..., "target": "gw1"}`). Prints, or writes as step outputs:

    all         {"include": [{"target": "gw1", "spec": "specs/gw1.yaml"}, ...]}: every spec
    live        the same, only for the targets named in --live: those with a runner
    live-count  how many; a job with an empty matrix must be skipped (GitHub refuses it)

--live is the repository variable ZTPLAN_LIVE_TARGETS: target names separated by spaces or
commas, or `*` for all. Empty means none, on purpose: a job for a target that has no
runner labelled with its name waits a whole day for one. Exit 1 when a spec is invalid,
two specs share a target, or --live names a target no spec has.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ghlib import set_outputs  # beside this script: python3 puts its folder on sys.path


def validate(spec: Path) -> tuple[str | None, str]:
    """(target, "") for a valid spec, (None, the error) otherwise."""
    ztplan = shlex.split(os.environ.get("ZTPLAN", "ztplan"))
    try:
        done = subprocess.run(
            [*ztplan, "validate", str(spec), "--json"], capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        sys.exit(f"::error::{ztplan[0]} is not installed (run scripts/ci-install.sh first)")
    if done.returncode == 0:
        return json.loads(done.stdout)["target"], ""
    said = (done.stderr or done.stdout).strip()
    try:  # with --json, ztplan's error is {"error": "..."}
        said = json.loads(said)["error"]
    except (ValueError, KeyError, TypeError):
        pass
    return None, said or f"ztplan validate exited {done.returncode}"


def matrix(rows: list[dict[str, str]]) -> str:
    return json.dumps({"include": rows}, separators=(",", ":"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="specs", help="directory of the specs (*.yaml)")
    parser.add_argument("--live", default="", help="targets with a runner: names, or *")
    parser.add_argument("--github-output", action="store_true", help="write step outputs")
    args = parser.parse_args()

    specs = sorted(Path(args.specs).glob("*.yaml"))
    if not specs:
        print(f"::error::no spec under {args.specs}/ (*.yaml)", file=sys.stderr)
        return 1
    rows: list[dict[str, str]] = []
    failed = False
    for spec in specs:
        target, error = validate(spec)
        if target is None:
            # A workflow command: GitHub shows it on the file in the pull request.
            print(f"::error file={spec}::{error}", file=sys.stderr)
            failed = True
            continue
        if clash := [r["spec"] for r in rows if r["target"] == target]:
            # Two specs for one target would fight over its state, lock and runner.
            print(
                f"::error file={spec}::target {target} is also the target of {clash[0]}",
                file=sys.stderr,
            )
            failed = True
            continue
        rows.append({"target": target, "spec": str(spec)})
        print(f"{spec}: valid, target {target}", file=sys.stderr)

    wanted = set(args.live.replace(",", " ").split())
    known = {r["target"] for r in rows}
    if unknown := sorted(wanted - known - {"*"}):
        print(
            f"::error::ZTPLAN_LIVE_TARGETS names {', '.join(unknown)}, which no valid spec "
            f"under {args.specs}/ declares",
            file=sys.stderr,
        )
        failed = True
    if failed:
        return 1
    live = [r for r in rows if "*" in wanted or r["target"] in wanted]
    if skipped := sorted(known - {r["target"] for r in live}):
        print(
            f"::notice::not planned, applied or checked live (not in ZTPLAN_LIVE_TARGETS): "
            f"{', '.join(skipped)}",
            file=sys.stderr,
        )
    outputs = {"all": matrix(rows), "live": matrix(live), "live-count": str(len(live))}
    if args.github_output:
        set_outputs(**outputs)
    else:
        print(json.dumps(outputs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
