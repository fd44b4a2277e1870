"""Start-up benchmark: how long `ztplan --help` (and each command's --help) takes.

A plain script, not collected by pytest (machines are noisy: a timed assertion in the
suite would fail at random). No root needed:

    .venv/bin/python tests/bench/bench_help.py [--reps 10] [--json] [--all]

Each line is run as `.venv/bin/ztplan ARGS` with bytecode compiled once (a warm-up run,
`PYTHONDONTWRITEBYTECODE` unset, the bytecode kept in a temporary `PYTHONPYCACHEPREFIX`
so the repository is not written to), then timed `--reps` times; the median is judged
against the issue's target for `ztplan --help` (0.15 s). See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ZTPLAN = ROOT / ".venv" / "bin" / "ztplan"
TARGET = 0.15
"""Seconds: the issue's limit on the median of `ztplan --help`."""
LINES = [["--help"], ["plan", "--help"], ["apply", "--help"], ["--version"]]
ALL = ["validate", "drift", "show", "import", "schema", "confirm", "force-unlock", "sandbox"]


def median_seconds(args: list[str], reps: int, env: dict[str, str]) -> float:
    subprocess.run([str(ZTPLAN), *args], env=env, stdout=subprocess.DEVNULL, check=True)  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([str(ZTPLAN), *args], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--all", action="store_true", help="every command's --help too")
    options = parser.parse_args()
    lines = LINES + ([[c, "--help"] for c in ALL] if options.all else [])
    with tempfile.TemporaryDirectory(prefix="ztplan-bench-help-") as cache:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = cache
        results = {" ".join(args): median_seconds(args, options.reps, env) for args in lines}
    load = os.getloadavg()[0]
    if options.json:
        print(json.dumps({"median_s": results, "target_s": TARGET, "load_1m": load}, indent=2))
    else:
        for line, seconds in results.items():
            verdict = ("ok" if seconds <= TARGET else "FAIL") if line == "--help" else "info"
            print(f"ztplan {line:<22} {seconds * 1000:6.0f} ms  {verdict}")
        print(f"(median of {options.reps}; target for --help {TARGET * 1000:.0f} ms; load {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
