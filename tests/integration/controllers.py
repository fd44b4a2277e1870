"""What the controller provider's tests over the emulator share: plan and apply one
provider the way a run does, and the bodies it posted."""

from __future__ import annotations

from typing import Any

from ztplan.diff import diff_resources
from ztplan.host import LocalHost
from ztplan.model import Change
from ztplan.providers.controller import Controller
from ztplan.spec import Spec
from ztplan.testing.emulator import ControllerEmulator

HOST = LocalHost(None)  # the controller provider never touches the host


def changes(p: Controller, spec: Spec) -> list[Change]:
    return diff_resources(p.name, p.desired(spec), p.read(HOST).resources)[0]


def apply_all(p: Controller, spec: Spec) -> list[Change]:
    before = p.read(HOST)
    planned = diff_resources(p.name, p.desired(spec), before.resources)[0]
    p.apply(HOST, planned, before)
    return planned


def posts(emu: ControllerEmulator) -> list[Any]:
    return [body for method, _, body in emu.request_log if method == "POST"]
