"""ztplan.revert.revert puts the state before the apply back: from the file kept beside
the journal (a hard link), from a version-2 journal's text, or by removing a first apply's
state; it can be run again, and a `confirm` racing it cannot take the kept file away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ztplan import revert as revert_module
from ztplan.journal import Journal, journal_path, previous_path, write_journal
from ztplan.revert import revert


def _applied(tmp_path: Path, before: str | None) -> tuple[Path, Journal]:
    """A state dir as an apply leaves it: the journal (keeping `before`, the state file
    it replaced, if any), and the applied state."""
    state = tmp_path / "gw.json"
    if before is not None:
        state.write_text(before)
    journal = Journal(target="gw", spec_file="gw.yaml", spec_text="", snapshots={}, steps=[])
    write_journal(journal_path(tmp_path, "gw"), journal, state if before is not None else None)
    fresh = tmp_path / "fresh"
    fresh.write_text('{"serial": 2}\n')
    fresh.replace(state)  # as the apply commits its new state
    return state, journal


def test_the_kept_state_is_put_back_and_can_be_put_back_again(tmp_path: Path) -> None:
    state, journal = _applied(tmp_path, '{"serial": 1}\n')
    assert revert(tmp_path, journal, None, {}) == ([], [])  # type: ignore[arg-type]
    assert state.read_text() == '{"serial": 1}\n'
    assert previous_path(journal_path(tmp_path, "gw")).exists()  # goes with the journal
    assert revert(tmp_path, journal, None, {}) == ([], [])  # type: ignore[arg-type]
    assert state.read_text() == '{"serial": 1}\n'


def test_a_confirm_removing_the_kept_file_during_the_revert_does_not_lose_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, journal = _applied(tmp_path, '{"serial": 1}\n')
    undo = revert_module.undo_steps

    def undo_while_confirmed(*args: Any, **kwargs: Any) -> tuple[list[str], list[str]]:
        previous_path(journal_path(tmp_path, "gw")).unlink()  # confirm's remove_journal
        return undo(*args, **kwargs)

    monkeypatch.setattr(revert_module, "undo_steps", undo_while_confirmed)
    assert revert(tmp_path, journal, None, {}) == ([], [])  # type: ignore[arg-type]
    assert state.read_text() == '{"serial": 1}\n'


def test_a_kept_file_gone_is_named_and_the_state_is_left_as_it_is(tmp_path: Path) -> None:
    state, journal = _applied(tmp_path, '{"serial": 1}\n')
    kept = previous_path(journal_path(tmp_path, "gw"))
    kept.unlink()
    assert revert(tmp_path, journal, None, {}) == (  # type: ignore[arg-type]
        [],
        [f"the state file ({kept}: No such file or directory; {state} still records the apply)"],
    )
    assert state.read_text() == '{"serial": 2}\n'


def test_a_version_2_journal_puts_its_text_back(tmp_path: Path) -> None:
    state, journal = _applied(tmp_path, None)
    old = journal.model_copy(update={"previous_state": '{"serial": 1}\n', "version": 2})
    assert revert(tmp_path, old, None, {}) == ([], [])  # type: ignore[arg-type]
    assert state.read_text() == '{"serial": 1}\n'


def test_a_first_apply_reverted_leaves_no_state(tmp_path: Path) -> None:
    state, journal = _applied(tmp_path, None)
    assert revert(tmp_path, journal, None, {}) == ([], [])  # type: ignore[arg-type]
    assert not state.exists()
