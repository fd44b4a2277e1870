"""Run the CLI as an attacker would: a real process, bounded in time, one error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ZTPLAN = [sys.executable, "-m", "ztplan"]
BARE_SPEC = "version: 1\ntarget: {name: gw1}\n"
"""A spec that manages nothing: plan and apply touch no host, only the lock and the state."""


def ztplan(
    *args: str, cwd: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`ztplan ARGS`; a hang fails the test (TimeoutExpired) instead of blocking the suite."""
    full_env = {**os.environ, "ZTPLAN_STATE_DIR": str(cwd / "state"), "NO_COLOR": "1"}
    return subprocess.run(
        [*ZTPLAN, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**full_env, **(env or {})},
        check=False,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The run failed with exit 1 and one line that is not an internal error."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "internal error" not in lines[0], lines[0]
    return lines[0]
