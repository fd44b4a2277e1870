"""Never strand members, under every controller fault a review found (issue 12): a route
through this gateway live on the controller while the gateway does not forward or NAT.
Each test asserts the safe outcome over a real namespace and the emulator: whenever the
default route is on the controller, the gateway forwards."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.stranded import (
    NWID,
    NWID2,
    SPEC,
    default_route,
    interrupted_after_controller,
    reply,
    tune,
)
from tests.conftest import apply_spec, needs_netns, open_spec, rules_of, sh
from ztplan.errors import ApplyFailed
from ztplan.journal import journal_path, read_journal
from ztplan.testing.emulator import ControllerEmulator

pytestmark = needs_netns


def body_of(h: Any) -> bytes:
    """Read the request body and put it back for the emulator's own handler."""
    raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
    h.rfile = io.BytesIO(raw)
    return raw


def announces(raw: bytes) -> bool:
    return b"0.0.0.0/0" in raw


def forwarding(netns: str) -> bool:
    return sh(netns, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "1" and any(
        "SNAT" in r for r in rules_of(netns, "ipv4", "nat")
    )


def assert_not_stranded(emu: ControllerEmulator, netns: str, watch: float = 6.0) -> None:
    """For `watch` seconds: whenever the default route is on the controller, the gateway
    forwards and NATs."""
    end = time.monotonic() + watch
    while time.monotonic() < end:
        if default_route(emu):
            assert forwarding(netns), "STRANDED: default route live, gateway not forwarding"
        time.sleep(0.2)


# --- R1: retried POSTs: settle sees the first copy land, a later copy lands after rollback


def test_r1_a_retried_post_still_in_flight_lands_after_the_rollback(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=8.0, attempts=4)  # the default attempts is 4
    original = emulator._serve

    def slow_announces(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(body_of(h)):
            time.sleep(3.0)  # each copy is processed (stored) 3 s after it arrives
        return original(h)

    emulator._serve = slow_announces  # type: ignore[method-assign]

    # The operator presses Ctrl-C while the controller step runs (it takes seconds).
    failed = interrupted_after_controller(run)
    assert "(kept: a route through this gateway may be live)" in str(failed)
    assert_not_stranded(emulator, netns)


# --- R2: the controller answers 200 and stores a moment later


def test_r2_a_200_whose_write_is_stored_later(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=2.0)
    original = emulator._serve

    def deferred(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(raw := body_of(h)):
            body = json.loads(raw)
            threading.Timer(1.5, lambda: emulator.add_network(NWID, **body)).start()
            out = json.dumps(emulator.network(NWID)).encode()
            reply(h, 200, out, close=True, Content_Type="application/json")
            return None
        return original(h)

    emulator._serve = deferred  # type: ignore[method-assign]
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    assert "(kept: a route through this gateway may be live)" in str(failed.value)
    assert_not_stranded(emulator, netns)


# --- R3: a 504 from a proxy in front of the controller, which still stores the write


def test_r3_a_504_gateway_timeout_whose_write_is_stored_later(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=2.0, attempts=4)
    original = emulator._serve

    def proxy_504(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(raw := body_of(h)):
            body = json.loads(raw)
            threading.Timer(2.0, lambda: emulator.add_network(NWID, **body)).start()
            reply(h, 504, close=True)
            return None
        return original(h)

    emulator._serve = proxy_504  # type: ignore[method-assign]
    apply_spec(run)  # a proxy's 504 is no answer: watched, and found stored
    assert default_route(emulator)
    assert_not_stranded(emulator, netns)


# --- R4: an exception other than ControllerError during settle loses the "unsettled" mark


def test_r4_a_garbled_encoding_during_settle_forgets_the_write_may_land(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=1.0)
    original = emulator._serve
    state = {"posted": False, "garbled": False}

    def serve(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(body_of(h)):
            state["posted"] = True
            time.sleep(2.0)  # past the 0.5 s timeout; stored at 2 s
            return original(h)
        if h.command == "GET" and state["posted"] and not state["garbled"]:
            state["garbled"] = True  # the first GET of the settle: a proxy's broken gzip
            reply(h, 200, b"{}", Content_Type="application/json", Content_Encoding="gzip")
            return None
        return original(h)

    emulator._serve = serve  # type: ignore[method-assign]
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    assert "(kept: a route through this gateway may be live)" in str(failed.value)
    assert_not_stranded(emulator, netns)


# --- held up: two networks, one unsettled


def test_h1_two_networks_one_unsettled_keeps_forwarding(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    spec = SPEC.replace(
        "firewall:",
        f'  - id: "{NWID2}"\n'
        "    routes: [{target: 10.6.4.0/22}, {target: 0.0.0.0/0, via: 10.6.6.2}]\nfirewall:",
    )
    run = open_spec(spec, netns, state_dir)
    tune(run, settle=0.6)
    original = emulator._serve

    def stall_second(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and NWID2 in h.path and announces(body_of(h)):
            time.sleep(2.0)
        return original(h)

    emulator._serve = stall_second  # type: ignore[method-assign]
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    assert "(kept: a route through this gateway may be live)" in str(failed.value)
    for _ in range(40):
        if default_route(emulator, NWID2):
            break
        time.sleep(0.1)
    assert default_route(emulator, NWID2) and not default_route(emulator, NWID)
    assert forwarding(netns)


def stall_announces(emulator: ControllerEmulator, seconds: float) -> None:
    original = emulator._serve

    def serve(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(body_of(h)):
            time.sleep(seconds)
        return original(h)

    emulator._serve = serve  # type: ignore[method-assign]


# --- R5: --confirm-within and an apply that fails with forwarding kept


def _failed_confirm_apply(netns: str, state_dir: Path, emulator: ControllerEmulator) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=0.6)
    stall_announces(emulator, 2.0)
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run, confirm_within=120)
    assert "kept: a route through this gateway may be live" in str(failed.value)


def test_r5a_the_next_plan_says_a_revert_is_coming_that_was_never_armed(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    _failed_confirm_apply(netns, state_dir, emulator)
    notes = [f.message for f in open_spec(SPEC, netns, state_dir).plan().findings]
    assert not any("it is reverted in" in n for n in notes), notes


def test_r5b_confirm_accepts_a_failed_apply_and_erases_what_was_kept(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    from ztplan.errors import ZtplanError
    from ztplan.revert import confirm

    _failed_confirm_apply(netns, state_dir, emulator)
    assert read_journal(journal_path(state_dir, "gw")).kept  # type: ignore[union-attr]
    with pytest.raises(ZtplanError):  # there is nothing to confirm: the apply failed
        confirm(state_dir, "gw")


# --- R7: the next plan/apply after a "kept" journal (CLI, as an operator would run it)


def cli(state_dir: Path, emu: ControllerEmulator, *args: str):  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    env = {**os.environ, "ZTPLAN_CONTROLLER_URL": emu.url, "ZT_TOKEN": "tk", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ztplan", *args, "--state-dir", str(state_dir)],
        cwd=state_dir.parent, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def dead_pid(state_dir: Path) -> None:
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    path = journal_path(state_dir, "gw")
    data = json.loads(path.read_text())
    data["pid"] = child.pid
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("lands", [True, False])
def test_r7_the_next_plan_explains_and_the_next_apply_converges(
    netns: str, state_dir: Path, emulator: ControllerEmulator, lands: bool
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=0.6)
    original = emulator._serve

    def serve(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(body_of(h)):
            time.sleep(2.0)
            if not lands:  # the controller drops it: connection closed, nothing stored
                h.close_connection = True
                return None
        return original(h)

    emulator._serve = serve  # type: ignore[method-assign]
    with pytest.raises(ApplyFailed):
        apply_spec(run)
    time.sleep(2.5)
    emulator._serve = original  # type: ignore[method-assign]
    dead_pid(state_dir)  # as if the apply was its own process, which has exited
    plan = cli(state_dir, emulator, "plan", "spec.yaml", "--netns", netns, "--no-verify",
               "--detailed-exitcode")  # fmt: skip
    assert "kept on purpose" in plan.stdout + plan.stderr
    assert plan.returncode == (0 if lands else 2)
    done = cli(state_dir, emulator, "apply", "spec.yaml", "--netns", netns, "--no-verify",
               "--auto-approve")  # fmt: skip
    assert done.returncode == 0
    again = cli(state_dir, emulator, "plan", "spec.yaml", "--netns", netns, "--no-verify",
                "--detailed-exitcode")  # fmt: skip
    assert again.returncode == 0, again.stdout
    assert "did not finish" not in again.stdout + again.stderr
    assert default_route(emulator) and forwarding(netns)


# --- R8: forwarding is kept live, but not for boot


def test_r8_kept_forwarding_is_not_saved_for_boot(
    netns: str, state_dir: Path, emulator: ControllerEmulator, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    run = open_spec(SPEC + "persist: debian\n", netns, state_dir, root=root)
    tune(run, settle=0.6)
    stall_announces(emulator, 2.0)
    with pytest.raises(ApplyFailed) as failed:
        apply_spec(run)
    assert "kept: a route through this gateway may be live" in str(failed.value)
    time.sleep(2.5)
    assert default_route(emulator) and forwarding(netns)  # live: fine
    # ... but a reboot now brings the gateway up without forwarding or NAT, under the route:
    conf = root / "etc/sysctl.d/90-ztplan.conf"
    assert conf.exists() and "net.ipv4.ip_forward = 1" in conf.read_text()


def test_r1b_a_timed_out_first_try_then_a_200_leaves_the_first_copy_in_flight(
    netns: str, state_dir: Path, emulator: ControllerEmulator
) -> None:
    run = open_spec(SPEC, netns, state_dir)
    tune(run, settle=8.0, attempts=4)
    original = emulator._serve
    seen = {"n": 0}

    def first_slow(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and announces(body_of(h)):
            seen["n"] += 1
            if seen["n"] == 1:
                time.sleep(3.0)  # the first copy is stored at 3 s; the retry at once
        return original(h)

    emulator._serve = first_slow  # type: ignore[method-assign]

    failed = interrupted_after_controller(run)
    assert "(kept: a route through this gateway may be live)" in str(failed)
    assert_not_stranded(emulator, netns)


def test_h2_the_reverter_keeps_forwarding_when_its_own_post_has_no_answer(
    netns: str, state_dir: Path, emulator: ControllerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ztplan.revert as revert_mod
    from ztplan.run import local_host

    monkeypatch.setattr(revert_mod, "arm_reverter", lambda *a, **k: 0)
    run = open_spec(SPEC, netns, state_dir)
    apply_spec(run, confirm_within=600)
    assert default_route(emulator) and forwarding(netns)
    journal = read_journal(journal_path(state_dir, "gw"))
    assert journal is not None
    tune(run, settle=0.6)
    original = emulator._serve

    def stall_withdraw(h):  # type: ignore[no-untyped-def]
        if h.command == "POST" and not announces(body_of(h)):
            time.sleep(2.0)
        return original(h)

    emulator._serve = stall_withdraw  # type: ignore[method-assign]
    providers = {p.name: p for p in run.providers}
    reverted, failed = revert_mod.revert(state_dir, journal, local_host(netns), providers)
    assert forwarding(netns)
    again = read_journal(journal_path(state_dir, "gw"))
    assert again is not None and again.kept and again.stuck
    time.sleep(2.0)
    assert not default_route(emulator)  # the withdrawal landed; forwarding is harmless
