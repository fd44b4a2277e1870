"""ztplan.journal: the journal file is written piece by piece (issue 14: it holds the
saves and the spec, tens of MB at 50,000 rules), as pydantic would write it; the state
before the apply is kept beside it."""

from __future__ import annotations

from pathlib import Path

from ztplan.address import Address
from ztplan.journal import (
    Journal,
    JournalStep,
    previous_path,
    read_journal,
    remove_journal,
    write_journal,
)
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


def test_the_state_before_the_apply_is_kept_beside_the_journal_not_in_it(tmp_path: Path) -> None:
    """The previous state file (13 MB at 2 x 50,000 rules) is hard-linked beside the
    journal, not read into it: the apply's rename of a new state leaves it as it was, and
    the journal goes with it."""
    state = tmp_path / "gw1.json"
    state.write_text('{"serial": 1}\n')
    path = tmp_path / "gw1.journal.json"
    journal = Journal(target="gw1", spec_file="gw.yaml", spec_text="", snapshots={}, steps=[])
    write_journal(path, journal, state)
    kept = previous_path(path)
    assert kept.name == "gw1.journal.state"
    assert kept.stat().st_ino == state.stat().st_ino
    assert read_journal(path) == journal and journal.previous_kept
    assert journal.previous_state is None
    new = tmp_path / "new"
    new.write_text('{"serial": 2}\n')
    new.replace(state)  # as the apply puts its new state in place
    assert kept.read_text() == '{"serial": 1}\n'
    write_journal(path, journal)  # a later apply of a first state: nothing kept
    assert not kept.exists() and not journal.previous_kept
    write_journal(path, journal, state)
    remove_journal(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw1.json"]


def test_steps_of_many_changes_are_written_in_chunks_as_pydantic_writes_them(
    tmp_path: Path,
) -> None:
    """A first apply of 2 x 50,000 rules journals 100,000 changes: they are encoded a few
    thousand at a time, and the file is still byte for byte model_dump_json's, across
    chunks, steps (one of them empty) and the fields either side of the steps."""
    forward = Address("firewall.ipv4.filter.FORWARD")
    many = [
        Change(
            address=forward.item(f'-m comment --comment "é{i}" -j ACCEPT'),
            provider="firewall",
            action=Action.CREATE,
            after=f'-m comment --comment "é{i}" -j ACCEPT',
            follows="" if i == 0 else None,
        )
        for i in range(4500)
    ]
    journal = Journal(
        target="gw1",
        spec_file="gw.yaml",
        spec_text="firewall: {}\n",
        snapshots={"firewall": {"ipv4": "*filter\nCOMMIT\n"}},
        steps=[
            JournalStep(index=0, provider="firewall", phase="protect", changes=many),
            JournalStep(index=1, provider="sysctl", phase="forward", changes=[]),
            JournalStep(index=2, provider="firewall", phase="teardown", changes=many[:3]),
        ],
        confirm_by=1_800_000_000.5,
    )
    path = tmp_path / "gw1.journal.json"
    write_journal(path, journal)
    assert path.read_text() == journal.model_dump_json() + "\n"
    assert read_journal(path) == journal
