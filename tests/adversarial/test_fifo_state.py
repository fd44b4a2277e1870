"""The normaliser's cache and the reverter's log, FIFOs in the state dir: neither hangs a
run (the first hung every plan; the second hung an apply after its changes were made,
before the reverter that would undo them was started)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ztplan.journal import Journal


def run(code: str, timeout: float = 8.0) -> str:
    """What `code` prints, run in a child that a hang fails (TimeoutExpired)."""
    done = subprocess.run(
        [sys.executable, "-c", code], timeout=timeout, check=True, capture_output=True,
        text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    return done.stdout


def test_a_fifo_as_the_normaliser_cache_costs_only_time(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    os.mkfifo(tmp_path / "cache" / "normalise-ipv4.json")
    code = (
        "from pathlib import Path; from ztplan.normalise import KernelNormaliser;"
        f"print(KernelNormaliser(cache_dir=Path({str(tmp_path / 'cache')!r}))._load('ipv4'))"
    )
    assert run(code) == "({}, {})\n"  # a cache it cannot read: an empty one (spellings, externals)


def test_a_fifo_as_the_revert_log_still_starts_the_reverter(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "gw.revert.log")
    journal = Journal(target="gw", spec_file="x", spec_text="", snapshots={}, steps=[])
    (tmp_path / "j.json").write_text(journal.model_dump_json())
    code = (
        "from pathlib import Path; from ztplan.journal import Journal; "
        "from ztplan.revert import arm_reverter; "
        f"j = Journal.model_validate_json(Path({str(tmp_path / 'j.json')!r}).read_text()); "
        f"print(arm_reverter(Path({str(tmp_path)!r}), 'gw', j, {{}}))"
    )
    assert int(run(code)) > 0  # the reverter's pid: it runs, without a log
