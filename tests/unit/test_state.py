"""ztplan.state: serial and lineage, atomic writes, and an unreadable file said plainly."""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from ztplan import __version__
from ztplan.address import Address
from ztplan.errors import ZtplanError
from ztplan.model import SpecSource
from ztplan.state import (
    StateFile,
    read_state,
    read_states,
    resources_of,
    state_path,
    write_atomic,
    write_state,
)

SOURCE = SpecSource(
    path="specs/gateway.yaml", repo="/srv/gw", commit="0123456789abcdef0123456789abcdef01234567"
)
DIGESTS = {
    'sysctl["net.ipv4.ip_forward"]': "sha256:" + "1" * 64,
    "firewall.ipv4.filter.policy.FORWARD": "sha256:" + "2" * 64,
}


def test_state_path_is_named_after_the_target(tmp_path: Path) -> None:
    assert state_path(tmp_path, "gw1") == tmp_path / "gw1.json"


def test_no_state_yet_is_none(tmp_path: Path) -> None:
    assert read_state(tmp_path, "gw1") is None


def test_the_first_write_has_serial_1_and_a_new_lineage(tmp_path: Path) -> None:
    state = write_state(tmp_path, None, "gw1", "gw-ns", SOURCE, DIGESTS)
    assert state.serial == 1
    assert uuid.UUID(state.lineage).version == 4
    assert (state.target, state.netns, state.spec, state.ztplan_version) == (
        "gw1",
        "gw-ns",
        SOURCE,
        __version__,
    )
    # The state written is read again from its file (the resources were streamed into it).
    assert read_state(tmp_path, "gw1", resources=False) == state
    assert resources_of(state) == DIGESTS == read_state(tmp_path, "gw1").resources  # type: ignore[union-attr]


def test_the_second_write_keeps_the_lineage_and_bumps_the_serial(tmp_path: Path) -> None:
    first = write_state(tmp_path, None, "gw1", None, SOURCE, DIGESTS)
    previous = read_state(tmp_path, "gw1")
    assert previous is not None
    second = write_state(tmp_path, previous, "gw1", None, SOURCE, {})
    assert (second.serial, second.lineage) == (2, first.lineage)
    assert read_state(tmp_path, "gw1", resources=False) == second
    assert resources_of(second) == {}


def test_resources_are_streamed_into_the_file_as_pydantic_would_write_them(
    tmp_path: Path,
) -> None:
    """The resources are written a few thousand at a time between pydantic's halves of the
    file: the text is byte for byte `model_dump_json(indent=2)`'s, across chunks, with
    quotes, backslashes, newlines and non-ASCII in addresses."""
    chain = Address("firewall.ipv4.filter.FORWARD")
    many = {
        chain.item(f'-m comment --comment "é\\{i}" -j ACCEPT'): f"sha256:{i:064x}"
        for i in range(9000)
    }
    state = write_state(tmp_path, None, "gw1", None, SOURCE, many)
    whole = StateFile.model_construct(
        **{name: getattr(state, name) for name in StateFile.model_fields}
        | {"resources": dict(sorted(many.items()))}
    )
    assert (tmp_path / "gw1.json").read_text() == whole.model_dump_json(indent=2) + "\n"
    assert resources_of(state) == many


def test_two_new_states_have_different_lineages(tmp_path: Path) -> None:
    a = write_state(tmp_path / "a", None, "gw1", None, SOURCE, DIGESTS)
    b = write_state(tmp_path / "b", None, "gw1", None, SOURCE, DIGESTS)
    assert a.lineage != b.lineage


def test_the_file_is_json_with_sorted_resources(tmp_path: Path) -> None:
    state = write_state(tmp_path, None, "gw1", None, SOURCE, DIGESTS)
    text = (tmp_path / "gw1.json").read_text()
    assert text.endswith("}\n")
    data = json.loads(text)
    assert data == state.model_dump(mode="json") | {"resources": DIGESTS}
    assert data["serial"] == 1 and data["version"] == 1
    assert list(data["resources"]) == sorted(DIGESTS)
    assert data["spec"] == {
        "path": "specs/gateway.yaml",
        "repo": "/srv/gw",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "ref": None,
        "dirty": None,
    }


def test_write_atomic_leaves_only_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "gw1.json"
    write_atomic(path, "one\n")
    write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert sorted(os.listdir(path.parent)) == ["gw1.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_atomic_sets_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_atomic(path, "x", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gw1.json"
    write_atomic(path, "old\n")

    def refuse(src: str, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["gw1.json"]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("{not json", "ValidationError"),
        ('{"serial": 1}', "ValidationError"),
        ("[]", "ValidationError"),
    ],
)
def test_an_unreadable_state_file_is_a_ztplan_error(tmp_path: Path, text: str, kind: str) -> None:
    (tmp_path / "gw1.json").write_text(text)
    with pytest.raises(ZtplanError) as caught:
        read_state(tmp_path, "gw1")
    assert str(caught.value) == (
        f"{tmp_path / 'gw1.json'}: unreadable state file ({kind}) "
        "(move it aside; the next apply writes a new one)"
    )


def test_a_state_file_with_unknown_fields_is_refused(tmp_path: Path) -> None:
    state = write_state(tmp_path, None, "gw1", None, SOURCE, DIGESTS)
    data = state.model_dump(mode="json") | {"token": "secret"}
    (tmp_path / "gw1.json").write_text(json.dumps(data))
    with pytest.raises(ZtplanError):
        read_state(tmp_path, "gw1")


def test_a_state_directory_in_place_of_the_file_is_a_ztplan_error(tmp_path: Path) -> None:
    (tmp_path / "gw1.json").mkdir()
    with pytest.raises(ZtplanError) as caught:
        read_state(tmp_path, "gw1")
    assert "unreadable state file (a directory)" in str(caught.value)


def test_state_file_model_round_trips() -> None:
    state = StateFile(
        serial=3,
        lineage="l",
        ztplan_version="0.1.0",
        target="gw1",
        spec=SOURCE,
        applied_at="2026-01-02T03:04:05+00:00",
        resources=DIGESTS,
    )
    assert StateFile.model_validate_json(state.model_dump_json()) == state


def test_read_states_takes_a_file_already_read_as_it_is(tmp_path: Path) -> None:
    """A plan has read its own target's state: the conflict check does not parse it again
    (nor a missing one), and still reads every other target's."""
    mine = write_state(tmp_path, None, "gw1", "ns", SOURCE, DIGESTS)
    write_state(tmp_path, None, "gw2", "ns", SOURCE, DIGESTS)
    theirs = read_state(tmp_path, "gw2")
    state_path(tmp_path, "gw1").write_text("not json")  # would be skipped if it were parsed
    assert read_states(tmp_path, {state_path(tmp_path, "gw1"): mine}) == [mine, theirs]
    assert read_states(tmp_path, {state_path(tmp_path, "gw2"): None}) == []


def test_a_state_read_without_its_resources_is_checked_whole_and_keeps_its_text(
    tmp_path: Path,
) -> None:
    """A plan reads the state without keeping its resources (33 MB at 2 x 50,000 rules);
    the file is still checked whole, and its text (what a revert puts back) and its
    resources are read again when asked for."""
    from ztplan.state import resources_of

    written = write_state(tmp_path, None, "gw1", "ns", SOURCE, DIGESTS)
    head = read_state(tmp_path, "gw1", resources=False)
    assert head is not None
    assert (head.serial, head.lineage, head.spec, head.resources) == (
        1,
        written.lineage,
        SOURCE,
        {},
    )
    assert head.text == state_path(tmp_path, "gw1").read_text()
    assert resources_of(head) == DIGESTS == resources_of(written)
    data = json.loads(head.text)
    data["resources"]["firewall.ipv4[unclosed"] = "sha256:" + "3" * 64
    state_path(tmp_path, "gw1").write_text(json.dumps(data))
    with pytest.raises(ZtplanError, match="unreadable state file"):
        read_state(tmp_path, "gw1", resources=False)


def test_a_prepared_state_is_in_place_only_once_committed(tmp_path: Path) -> None:
    """An apply writes its next state while its steps run: until it commits, readers see
    the old file; a discarded one leaves nothing; one a killed apply left goes next time."""
    from ztplan.state import prepare_state

    first = write_state(tmp_path, None, "gw1", "ns", SOURCE, DIGESTS)
    (tmp_path / ".gw1.json.k1lled_x.tmp").write_text("{}")  # as tempfile.mkstemp names it
    (tmp_path / ".gw1.json.json.abcdefgh.tmp").write_text("{}")  # target gw1.json's
    prepared = prepare_state(tmp_path, first, "gw1", "ns", SOURCE, {})
    assert read_state(tmp_path, "gw1", resources=False) == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        [Path(prepared.written.tmp).name, ".gw1.json.json.abcdefgh.tmp"]
    )
    assert prepared.commit() == read_state(tmp_path, "gw1", resources=False)
    (tmp_path / ".gw1.json.json.abcdefgh.tmp").unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw1.json"]
    prepare_state(tmp_path, first, "gw1", "ns", SOURCE, {}).discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw1.json"]
