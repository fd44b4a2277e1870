"""ztplan.journal: the journal file is written piece by piece (issue 14: it holds the
previous state and the saves, tens of MB at 50,000 rules), as pydantic would write it."""

from __future__ import annotations

from pathlib import Path

from ztplan.journal import Journal, JournalStep, read_journal, write_journal
from ztplan.model import Action, Change


def test_the_journal_file_is_what_model_dump_json_writes(tmp_path: Path) -> None:
    change = Change(
        address='firewall.ipv4.filter.FORWARD["-m comment --comment \\"é\\" -j ACCEPT"]',
        provider="firewall",
        action=Action.CREATE,
        after='-m comment --comment "é" -j ACCEPT',
        follows="",
    )  # type: ignore[arg-type]
    journal = Journal(
        target="gw1",
        spec_file="gw.yaml",
        spec_text='firewall: {}\n# "é" \x01 \u2028\n',
        snapshots={"firewall": {"ipv4": '*filter\n-A X -m comment --comment "a\\\\b"\n'}},
        steps=[JournalStep(index=0, provider="firewall", phase="protect", changes=[change])],
        previous_state='{\n  "serial": 1\n}\n',
        confirm_by=1_800_000_000.123456,
    )
    path = tmp_path / "gw1.journal.json"
    write_journal(path, journal)
    assert path.read_text() == journal.model_dump_json() + "\n"
    assert read_journal(path) == journal
