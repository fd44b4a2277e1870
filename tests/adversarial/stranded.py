"""What the never-strand tests share (test_stranded_members*.py): the gateway's spec, a
run's controller made quick to give up, and the checks of what the controller holds."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Silent
from ztplan.errors import ApplyFailed
from ztplan.providers.controller import Controller
from ztplan.testing.emulator import ControllerEmulator

NWID = "8056c2e21c000001"
NWID2 = "8056c2e21c000002"
SPEC = f"""\
version: 1
target: {{name: gw}}
controller: {{kind: local, token_env: ZT_TOKEN}}
networks:
  - id: "{NWID}"
    routes: [{{target: 10.6.4.0/22}}, {{target: 0.0.0.0/0, via: 10.6.6.2}}]
firewall:
  ipv4:
    nat:
      POSTROUTING: ["-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7"]
sysctl:
  net.ipv4.ip_forward: 1
"""

clients: list[httpx.Client] = []
"""The clients `tune` made, closed by the `emulator` fixture (conftest.py)."""


def tune(run: Any, settle: float, attempts: int = 1, timeout: float = 0.5) -> Controller:
    """Makes a run's controller quick to give up: a `timeout` per request, `attempts`
    tries, `settle` seconds of watching (the test's clock, not a user's)."""
    controller = next(p for p in run.providers if p.name == "controller")
    assert isinstance(controller, Controller)
    clients.append(httpx.Client(timeout=httpx.Timeout(timeout)))
    controller.api.client = clients[-1]
    controller.api.attempts = attempts
    controller.api.backoff = 0.1
    controller.settle = settle
    return controller


def reply(h: Any, status: int, body: bytes = b"", *, close: bool = False, **headers: str) -> None:
    """Answer the emulator's request `h` by hand, as a proxy or a broken controller would:
    `status`, `headers` (`Content_Type=...` is `Content-Type`), `body` with its length;
    `close` ends the connection after it."""
    if close:
        h.close_connection = True
    h.send_response(status)
    for name, value in headers.items():
        h.send_header(name.replace("_", "-"), value)
    if close:
        h.send_header("Connection", "close")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if body:
        h.wfile.write(body)


def default_route(emu: ControllerEmulator, nwid: str = NWID) -> bool:
    return any(r["target"] == "0.0.0.0/0" for r in emu.network(nwid)["routes"])


class _Recording(Silent):
    def __init__(self) -> None:
        self.done: set[str] = set()

    def step_done(self, step: Any) -> None:
        self.done.add(step.provider)


def interrupted_after_controller(run: Any) -> ApplyFailed:
    """The failure of an apply whose operator presses Ctrl-C while the controller step
    runs (it takes seconds): the run stops once that step is over."""
    reporter = _Recording()
    with pytest.raises(ApplyFailed) as failed:
        run.apply(
            approve=lambda p: True,
            reporter=reporter,
            stop=lambda: "controller" in reporter.done,
        )
    return failed.value
