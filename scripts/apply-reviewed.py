"""Apply one target after a merge: exactly the plan reviewed in the pull request while it
still holds, else (by default) a fresh plan of the merged spec.

    python3 scripts/apply-reviewed.py --spec SPEC --ref SHA [--reviewed PLAN.json]
        [--on-stale replan|fail] [--out DIR] [--lock-timeout SECONDS] [--netns NS]
        [-- APPLY_OPTIONS]

1. `ztplan plan SPEC --repo . --ref SHA -o DIR/fresh.json`: the merged spec against the
   gateway as it is now, recorded against the merged commit. (The reviewed plan names the
   pull request's test-merge commit, which main never contains: the state would record it,
   and the next apply would be refused as not descending from it.)
2. The reviewed plan still holds when the fresh one is the same plan: same target, spec
   text, state lineage and serial, live snapshots, changes and ztplan version. Applying the
   fresh plan then makes exactly the reviewed changes.
3. Otherwise, or with no reviewed plan, the fresh plan is shown and applied; with
   --on-stale fail, nothing unreviewed is applied: the run fails, for a human to look.
4. `ztplan apply DIR/fresh.json $ZTPLAN_APPLY_FLAGS APPLY_OPTIONS` (e.g. --require-signed).
   Should the gateway change between 1 and 4, ztplan refuses the saved plan itself (exit 1,
   nothing changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ghlib import append_summary  # beside this script

# What makes two plans the same plan (the rest, like findings, follows from these).
SAME = {
    "target": "the target",
    "ztplan_version": "the ztplan version",
    "spec_text": "the spec",
    "state_lineage": "the state lineage",
    "state_serial": "the state serial (an apply ran since)",
    "snapshots": "the live state",
    "changes": "the changes",
    "desired": "the desired resources",
}


def differences(reviewed: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """What changed since the reviewed plan was made; empty when it still holds."""
    why = []
    for key, text in SAME.items():
        if reviewed.get(key) == fresh.get(key):
            continue
        if key == "snapshots":  # name the providers whose live state moved
            old, new = reviewed.get(key) or {}, fresh.get(key) or {}
            moved = sorted(n for n in old.keys() | new.keys() if old.get(n) != new.get(n))
            text = f"the live state ({', '.join(moved)})"
        why.append(text)
    return why


def ztplan(*args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [*shlex.split(os.environ.get("ZTPLAN", "ztplan")), *args]
    print("+ " + shlex.join(argv), flush=True)
    return subprocess.run(argv, capture_output=capture, text=True, check=False)


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="spec path inside the repository")
    parser.add_argument("--ref", required=True, help="the merged commit")
    parser.add_argument("--reviewed", type=Path, help="plan.json from the pull request")
    parser.add_argument("--on-stale", choices=("replan", "fail"), default="replan")
    parser.add_argument("--out", type=Path, default=Path("apply-out"))
    parser.add_argument("--lock-timeout", default="300", help="seconds to wait for the lock")
    parser.add_argument("--netns", help="the target's network namespace, if it has one")
    args = parser.parse_args(argv[:cut])
    # The repository variable ZTPLAN_APPLY_FLAGS (e.g. --require-signed) reaches us as env.
    apply_options = shlex.split(os.environ.get("ZTPLAN_APPLY_FLAGS", "")) + argv[cut + 1 :]

    args.out.mkdir(parents=True, exist_ok=True)
    fresh_file = args.out / "fresh.json"
    where = ["--repo", ".", "--ref", args.ref, "--lock-timeout", args.lock_timeout]
    where += ["--netns", args.netns] if args.netns else []
    planned = ztplan(
        "plan", args.spec, *where, "--format", "markdown", "-o", str(fresh_file), capture=True
    )
    sys.stderr.write(planned.stderr)
    if planned.returncode != 0:
        append_summary(
            f"### Apply of `{args.spec}`: the plan failed\n\n```\n{planned.stderr.strip()}\n```"
        )
        return 1
    fresh = json.loads(fresh_file.read_text())

    if args.reviewed is None or not args.reviewed.is_file():
        why = [
            "no plan was reviewed for this commit (a push without a pull request, or a "
            "merge before its plan finished)"
        ]
    else:
        why = differences(json.loads(args.reviewed.read_text()), fresh)
    # Nothing to change is nothing unreviewed: fine whatever the reviewed plan said.
    refuse = bool(why) and args.on_stale == "fail" and bool(fresh["changes"])
    if not why:
        verdict = "The plan reviewed in the pull request still holds: applying exactly it."
    elif not refuse:
        verdict = "Applying a fresh plan (below): " + "; ".join(why) + "."
    else:
        verdict = (
            "Nothing applied (ZTPLAN_ON_STALE_PLAN=fail): " + "; ".join(why) + ". The fresh "
            "plan is below: have it reviewed in a new pull request, or apply it by hand."
        )
    print(verdict)
    append_summary(f"### Apply on `{fresh['target']}`\n\n{verdict}\n\n{planned.stdout}")
    sys.stdout.write(planned.stdout)
    if refuse:
        return 1
    return ztplan(
        "apply", str(fresh_file), "--lock-timeout", args.lock_timeout, *apply_options
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
