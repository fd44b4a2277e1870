"""Never strand members: a controller write whose outcome is unknown (no answer, a garbled
answer) is watched until it is known, and while a route through this gateway may be live,
rollback keeps the gateway forwarding (issue 12). Real kernel, the emulator's faults."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.adversarial.stranded import SPEC, default_route, reply, tune
from tests.conftest import apply_spec, needs_netns, open_spec, rules_of, sh
from ztplan.errors import ApplyFailed
from ztplan.journal import journal_path, read_journal
from ztplan.testing.emulator import ControllerEmulator

pytestmark = needs_netns


def test_a_post_that_lands_after_its_timeout_leaves_the_gateway_forwarding(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=0.6)
    original = emulator._serve

    def stall_posts(h):  # type: ignore[no-untyped-def]
        if h.command == "POST":  # answered after 2 s, stored then: past the client's 0.5 s
            emulator.faults.timeout, emulator.faults.timeout_count = 2.0, 1
        return original(h)

    emulator._serve = stall_posts  # type: ignore[method-assign]
    stalled = len(emulator.request_log)
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    message = str(failed.value)
    assert "the write may still land: its outcome is unknown" in message
    assert "COULD NOT roll back: controller (announce)" in message
    assert "sysctl (forward) (kept: a route through this gateway may be live)" in message
    assert "firewall (protect) (kept: a route through this gateway may be live)" in message
    assert emulator.request_log[stalled][0] == "GET"  # GET first, as always
    for _ in range(40):  # the stalled POST lands once its stall ends
        if default_route(emulator):
            break
        time.sleep(0.1)
    assert default_route(emulator)
    # ... and members still have a gateway that forwards and NATs.
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1"
    assert any("SNAT" in r for r in rules_of(netns, "ipv4", "nat"))
    journal = read_journal(journal_path(state_dir, "gw"))
    assert journal is not None and journal.stuck  # kept for the next run to explain
    assert sorted(s.name for s in journal.steps if s.index in journal.kept) == [
        "firewall (protect)",
        "sysctl (forward)",
    ]
    summary = journal.summary()  # the write may have landed: not called in place
    assert "in place: firewall (protect), sysctl (forward); not in place: " in summary
    assert "its rollback FAILED for controller (announce), which may be in place" in summary
    assert [s.name for s in journal.in_place()] == [
        "firewall (protect)",
        "sysctl (forward)",
        "controller (announce)",
    ]
    assert open_spec(SPEC, netns, state_dir).plan().changes == []  # it all landed


def test_a_garbled_answer_to_a_post_that_was_stored_is_a_success(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=2.0)
    # The GET before the POST answers well; the POST's answer is cut in half.
    emulator.faults.malformed_json = 0

    original = emulator._serve

    def garble_posts(h):  # type: ignore[no-untyped-def]
        if h.command == "POST":
            emulator.faults.malformed_json = 1
        return original(h)

    emulator._serve = garble_posts  # type: ignore[method-assign]
    outcome = apply_spec(run)
    assert outcome.applied and default_route(emulator)
    assert open_spec(SPEC, netns, state_dir).plan().changes == []


def test_a_post_refused_outright_rolls_everything_back(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    """The controller answered (an error): nothing was stored, no route can be live, so the
    forwarding steps are undone as usual."""
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=0.6)
    original = emulator._serve

    def refuse_posts(h):  # type: ignore[no-untyped-def]
        if h.command == "POST":
            h.rfile.read(int(h.headers.get("Content-Length") or 0))
            reply(h, 403, b"{}")
            return None
        return original(h)

    emulator._serve = refuse_posts  # type: ignore[method-assign]
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    assert str(failed.value).endswith(
        "rolled back: controller (announce), sysctl (forward), firewall (protect)"
    )
    assert sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    assert not default_route(emulator)
