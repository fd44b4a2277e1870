"""Plan specs as markdown, for the job summary and a pull-request comment.

    python3 scripts/plan-report.py --marker KEY --title TEXT --out DIR [--save-plan]
        [--keep-going] SPEC... [-- ZTPLAN_PLAN_OPTIONS]

Runs `ztplan plan SPEC --format markdown OPTIONS` for each SPEC and writes DIR/comment.md:
the hidden marker `<!-- KEY -->` (scripts/pr-comment.py finds the comment by it), the title,
then each plan, or the error that stopped it: a failed plan must replace the last good one
in the comment, or reviewers would approve changes that no longer hold. The same text goes
to $GITHUB_STEP_SUMMARY. With --save-plan (one SPEC) the plan is also saved as
DIR/plan.json, the one apply.yml applies after the merge if it is still fresh.

Exit 1 if a plan failed, unless --keep-going (the sandbox, which cannot plan every spec).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from ghlib import append_summary, run_url  # beside this script


def plan(spec: str, options: list[str], save: Path | None) -> tuple[bool, str]:
    """(planned, markdown) for one spec."""
    ztplan = shlex.split(os.environ.get("ZTPLAN", "ztplan"))
    argv = [*ztplan, "plan", spec, "--format", "markdown", *options]
    if save is not None:
        argv += ["-o", str(save)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode == 0:
        return True, done.stdout
    # ztplan's errors are one line naming file, field and fix, and never hold a token.
    error = done.stderr.strip() or f"ztplan plan exited {done.returncode}"
    return False, f"### ztplan plan: `{spec}`\n\n**The plan failed:**\n\n```\n{error}\n```\n"


def main() -> int:
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marker", required=True, help="e.g. ztplan-plan:gw1")
    parser.add_argument("--title", required=True, help="first line of the comment")
    parser.add_argument("--out", required=True, type=Path, help="directory for comment.md")
    parser.add_argument("--save-plan", action="store_true", help="also write DIR/plan.json")
    parser.add_argument("--keep-going", action="store_true", help="exit 0 when a plan fails")
    parser.add_argument("specs", nargs="+")
    args = parser.parse_args(argv[:cut])
    options = argv[cut + 1 :]
    if args.save_plan and len(args.specs) != 1:
        parser.error("--save-plan takes one spec")

    args.out.mkdir(parents=True, exist_ok=True)
    where = run_url()
    parts = [f"<!-- {args.marker} -->\n## {args.title}"]  # the marker must come first
    if where:
        parts.append(f"From [this workflow run]({where}) (its summary and artifacts).")
    failed = []
    for spec in args.specs:
        ok, markdown = plan(spec, options, args.out / "plan.json" if args.save_plan else None)
        parts.append(markdown.rstrip("\n"))
        if not ok:
            failed.append(spec)
            kind = "warning" if args.keep_going else "error"
            print(f"::{kind} file={spec}::ztplan plan failed (see the job summary)")
    text = "\n\n".join(parts) + "\n"
    (args.out / "comment.md").write_text(text)
    append_summary(text)
    sys.stdout.write(text)
    return 1 if failed and not args.keep_going else 0


if __name__ == "__main__":
    sys.exit(main())
