"""N processes race K times each for one lock; prints what the losers were told, as JSON.

Run as `python -m tests.adversarial.lock_race LOCK N K` (a process of its own, so forking
50 children does not fork pytest). Every holder is alive while it holds the lock, so a
loser told "stale" is the bug of issue 12.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from ztplan.errors import LockError, LockHeld
from ztplan.lock import locked


def child(path: Path, rounds: int, start: float) -> dict[str, int]:
    counts = {"won": 0, "lost": 0, "stale": 0, "other": 0}
    time.sleep(max(start - time.time(), 0))
    for _ in range(rounds):
        try:
            with locked(path, "race"):
                counts["won"] += 1
        except LockHeld as error:
            counts["lost"] += 1
            counts["stale"] += error.stale
        except LockError:
            counts["other"] += 1
    return counts


def main() -> None:
    path, processes, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    start = time.time() + 0.5  # all forked before anyone starts
    pipes = []
    for _ in range(processes):
        read, write = os.pipe()
        if os.fork() == 0:
            os.close(read)
            try:
                os.write(write, json.dumps(child(path, rounds, start)).encode())
            finally:
                os._exit(0)
        os.close(write)
        pipes.append(read)
    total = {"won": 0, "lost": 0, "stale": 0, "other": 0}
    for read in pipes:
        with os.fdopen(read, "rb") as handle:
            for key, value in json.loads(handle.read() or b"{}").items():
                total[key] += value
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
    print(json.dumps(total))


if __name__ == "__main__":
    main()
