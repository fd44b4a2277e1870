"""Benchmark of issue 14: ztplan plan/apply against the raw kernel calls, per ruleset size.

Run as root (plain script, not collected by pytest):

    .venv/bin/python tests/bench/bench_firewall.py [--sizes 100,1000,10000,50000] [--json]

For each size N it loads N owned rules per family (in the target's own chains, as ztplan
writes them) and 3 sysctls into a namespace of its own, `ztplan-bench-<pid>` (deleted at
the end, also on an error or SIGINT/SIGTERM), and times the `ztplan` CLI as a user runs it
against `iptables-save`/`-restore` of the same rules. Then the controller (an emulator with
100 ms of latency, 1 against 20 networks), the twin (tests/bench/bench_verify.py) and
`ztplan --help`. Specs, state and caches live in a temporary directory. It prints one table
of times, one of the issue's targets with their ratios, and the machine's load. See
tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ZTPLAN = str(ROOT / ".venv" / "bin" / "ztplan")
TARGET = "bench"
CHAIN = "ZT-bench.FORWARD"
"""The own chain ztplan keeps the spec's FORWARD rules in (ztplan.iptables.own_chain)."""
FAMILIES = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}
SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv6.conf.all.forwarding": "1",
    "net.ipv4.conf.all.rp_filter": "2",
}

# The targets.
STARTUP_S = 0.15  # warm plan of 100 rules with --netns <= raw saves + 0.15 s
PLAN_FACTOR, PLAN_SLACK = 1.5, 0.15  # plan <= 1.5 x raw saves + 0.15 s, every size
APPLY_FACTOR, APPLY_SLACK = 1.5, 0.05  # apply - plan <= 1.5 x raw restore + 0.05 s
MEMORY_MB = 150.0  # max RSS of plan and of apply
CONTROLLER_LATENCY = 0.1  # 20 networks behind 100 ms: <= 1 network + 2 round trips
VERIFY_S = {1000: 1.0, 10000: 2.0}
HELP_S = 0.15

MAIN_PID = os.getpid()
_children: list[int] = []
"""Pids of the ztplan processes started here (their scratch namespaces carry them)."""
_spawners: list[Path] = []
"""The result file of the command running now (its first line: the command's pid)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- processes --------------------------------------------------------------------------


@dataclass
class Done:
    rc: int
    wall: float
    maxrss_mb: float
    stdout: str
    stderr: str


SPAWNER = """
import os, sys, time
out = open(sys.argv[1], "w")
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    out.close()
    os.execv(sys.argv[2], sys.argv[2:])
print(pid, file=out, flush=True)
_, status, usage = os.wait4(pid, 0)
print(time.perf_counter() - start, os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=out)
"""
"""Runs one command and writes its pid, then its wall time, exit code and max RSS (KB).

A child's max RSS (`ru_maxrss`) starts at that of the process that spawned it: Python's
subprocess spawns by vfork, and at exec the kernel records the spawner's high-water mark
as the child's. This process grows to ~170 MB once it has planned 2 x 50,000 rules in
process, so the ztplan children are started by this small fork-and-wait (`python -S`,
~9 MB) instead, and it times them too (without its own start-up)."""


def run(argv: Sequence[str], input: str | None = None, check: bool = True, env: Any = None) -> Done:
    """Run argv: its wall time and max RSS (wait4 in SPAWNER: the child and its reaped
    children, not this process)."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as result,
    ):
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        command = shutil.which(argv[0]) or argv[0]
        spawner = [sys.executable, "-S", "-c", SPAWNER, result.name, command, *argv[1:]]
        proc = subprocess.Popen(spawner, stdin=stdin, stdout=out, stderr=err, env=env)
        _spawners.append(Path(result.name))
        try:
            if input is not None:
                assert proc.stdin is not None
                proc.stdin.write(input.encode())
                proc.stdin.close()
            proc.wait()
        finally:  # the command's pid, for its scratch namespaces, even when interrupted
            lines = Path(result.name).read_text().split("\n")
            if lines[0].isdigit():
                _children.append(int(lines[0]))
            _spawners.pop()
        if proc.returncode != 0 or len(lines) < 2 or not lines[1]:
            raise RuntimeError(f"{argv[0]} could not be run: {err.read().decode()[-2000:]}")
        wall, rc, maxrss = lines[1].split()
        out.seek(0)
        err.seek(0)
        done = Done(
            int(rc), float(wall), int(maxrss) / 1024, out.read().decode(), err.read().decode()
        )
    if check and done.rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.rc}: {done.stderr.strip()[-2000:]}")
    return done


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def median_of(reps: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(reps))


CHILD_ENV: dict[str, str] | None = None
"""The environment of ztplan children (None: this process's own)."""


def ztplan(*args: str, expect: Sequence[int] = (0,)) -> Done:
    done = run([ZTPLAN, *args], check=False, env=CHILD_ENV)
    if done.rc not in expect:
        raise RuntimeError(
            f"ztplan {' '.join(args)} exited {done.rc} (expected {list(expect)}): "
            f"{done.stderr.strip()[-2000:]}"
        )
    return done


# --- the namespace, the rules, the specs -----------------------------------------------


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        if os.getpid() == MAIN_PID:
            subprocess.run(["ip", "netns", "del", name], check=False)
            _remove_scratch_namespaces()


def _remove_scratch_namespaces() -> None:
    """Scratch namespaces a killed ztplan child of this run may have left: only those
    named after our own pids (`ztplan-scratch-<pid>-...`)."""
    running = [Path(r).read_text().partition("\n")[0] for r in _spawners if Path(r).exists()]
    pids = {str(p) for p in [*_children, os.getpid(), *running]}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/run/netns"):
            parts = entry.split("-")
            if entry.startswith("ztplan-scratch-") and len(parts) >= 3 and parts[2] in pids:
                subprocess.run(["ip", "netns", "del", entry], check=False)


def rule(family: str, i: int) -> str:
    """The i-th rule, spelled as iptables-save prints it (so ztplan's is the same text)."""
    if family == "ipv4":
        i += 1
        return f"-s 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}/32 -j ACCEPT"
    return f"-s 2001:db8::{i + 1:x}/128 -j ACCEPT"


def spec_text(rules: dict[str, list[str]], sysctls: bool = True) -> str:
    lines = ["version: 1", "target:", f"  name: {TARGET}"]
    if sysctls:
        lines += ["sysctl:", *(f'  {k}: "{v}"' for k, v in SYSCTLS.items())]
    lines.append("firewall:")
    for family in FAMILIES:
        lines += [f"  {family}:", "    filter:", "      FORWARD:"]
        lines += [f'        - "{r}"' for r in rules[family]]
    return "\n".join(lines) + "\n"


def reset(ns: str) -> None:
    """Empty filter tables (a restore without --noflush flushes and deletes user chains)."""
    empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
    for _, restore in FAMILIES.values():
        run(in_ns(ns, restore), input=empty)


def restore_noflush(ns: str, lines: Sequence[str], family: str = "ipv4") -> float:
    text = "\n".join(["*filter", *lines, "COMMIT"]) + "\n"
    return run(in_ns(ns, FAMILIES[family][1], "--noflush"), input=text).wall


def saves(ns: str) -> float:
    return sum(run(in_ns(ns, save)).wall for save, _ in FAMILIES.values())


def own_rules(ns: str) -> list[str]:
    lines = []
    for save, _ in FAMILIES.values():
        lines += [x for x in run(in_ns(ns, save)).stdout.split("\n") if x.startswith("-A ZT-")]
    return lines


# --- in process: the same work without start-up, split -----------------------------------


class _Quiet:
    def step_started(self, step: Any) -> None: ...
    def step_done(self, step: Any) -> None: ...
    def rolled_back(self, step: Any, ok: bool) -> None: ...


class _Timed:
    """A provider whose calls are timed (by name: `firewall.read`, `firewall.apply`, ...)."""

    def __init__(self, inner: Any, times: dict[str, float]) -> None:
        self.inner, self.times, self.name = inner, times, inner.name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.inner, attr)
        if attr not in ("desired", "read", "fetch", "interpret", "apply", "rollback", "check"):
            return value

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                key = f"{self.name}.{attr}"
                self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start

        return timed


def in_process(spec: Path, ns: str, state: Path, apply: bool) -> dict[str, float]:
    """What `ztplan plan` (or `apply --auto-approve`) does after start-up, through the
    engine (`ztplan.run`), timed in parts. Modules must already be imported."""
    from ztplan.run import Options, open_run

    times: dict[str, float] = {}
    start = time.perf_counter()
    run_ = open_run(Options(spec=str(spec), netns=ns, state_dir=state, verify=False))
    times["open_run"] = time.perf_counter() - start
    run_.providers = [_Timed(p, times) for p in run_.providers]  # type: ignore[misc]
    start = time.perf_counter()
    if apply:
        run_.apply(approve=None, reporter=_Quiet())  # as --auto-approve
    else:
        run_.plan()
    times["plan" if not apply else "apply"] = time.perf_counter() - start
    return times


def profile_plan(spec: Path, ns: str, state: Path, top: int) -> str:
    """cProfile of an in-process plan (no change): the top functions by own time and by
    cumulative time."""
    from ztplan.run import Options, open_run

    prof = cProfile.Profile()
    prof.enable()
    open_run(Options(spec=str(spec), netns=ns, state_dir=state, verify=False)).plan()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top * 3)
    return out.getvalue()


# --- one size ---------------------------------------------------------------------------


CASES = {
    "add1": "+1 rule",
    "add10": "+10 rules",
    "change1": "~1 rule (a delete and a create)",
}


def _case(name: str, n: int, base: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(the changed IPv4 rules, the raw restore lines that make the change, the lines that
    undo it), in the middle of the chain."""
    middle = n // 2
    fresh = [rule("ipv4", 2 * n + 1000 + k) for k in range(10)]
    if name.startswith("add"):
        count = int(name[3:])
        added = fresh[:count]
        rules = base[:middle] + added + base[middle:]
        make = [f"-I {CHAIN} {middle + 1 + k} {r}" for k, r in enumerate(added)]
        undo = [f"-D {CHAIN} {r}" for r in added]
        return rules, make, undo
    rules = base[:middle] + [fresh[0]] + base[middle + 1 :]
    make = [f"-D {CHAIN} {middle + 1}", f"-I {CHAIN} {middle + 1} {fresh[0]}"]
    undo = [f"-D {CHAIN} {middle + 1}", f"-I {CHAIN} {middle + 1} {base[middle]}"]
    return rules, make, undo


def bench_size(n: int, ns: str, work: Path, reps: int, profile: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"n": n}
    raw_reps = 5
    base = {family: [rule(family, i) for i in range(n)] for family in FAMILIES}
    spec = work / f"spec-{n}.yaml"
    spec.write_text(spec_text(base))
    state = work / f"state-{n}"
    reset(ns)

    log(f"  N={n}: first apply (cold normalisation cache)")
    cold = ztplan("apply", str(spec), "--netns", ns, "--state-dir", str(state), "--auto-approve")
    r["cold_apply_s"], r["cold_apply_mb"] = cold.wall, cold.maxrss_mb
    loaded = own_rules(ns)
    assert len(loaded) == 2 * n, f"the first apply loaded {len(loaded)} rules, not {2 * n}"

    r["raw_saves_s"] = median_of(raw_reps, lambda: saves(ns))

    log(f"  N={n}: plan, no change")
    common = ("--netns", ns, "--state-dir", str(state), "--no-verify")
    plans = [ztplan("plan", str(spec), *common, "--detailed-exitcode") for _ in range(reps)]
    r["plan_s"] = statistics.median(x.wall for x in plans)
    r["plan_mb"] = max(x.maxrss_mb for x in plans)
    in_process(spec, ns, state, apply=False)  # warm-up: imports, first calls
    r["inproc_plan"] = in_process(spec, ns, state, apply=False)
    r["startup_s"] = r["plan_s"] - r["inproc_plan"]["open_run"] - r["inproc_plan"]["plan"]
    if profile:
        r["profile"] = profile_plan(spec, ns, state, top=5)

    for name in CASES:
        log(f"  N={n}: {CASES[name]}")
        rules, make, undo = _case(name, n, base["ipv4"])
        changed = work / f"spec-{n}-{name}.yaml"
        changed.write_text(spec_text({"ipv4": rules, "ipv6": base["ipv6"]}))

        def raw(make: list[str] = make, undo: list[str] = undo) -> float:
            wall = restore_noflush(ns, make)
            restore_noflush(ns, undo)
            return wall

        r[f"raw_{name}_s"] = median_of(raw_reps, raw)
        assert own_rules(ns) == loaded, "the raw change was not undone"
        # Plan and apply interleaved, so that load from elsewhere hits both alike.
        plan_runs, apply_runs = [], []
        for rep in range(reps):
            if rep:
                restore_noflush(ns, undo)
            plan_runs.append(
                ztplan("plan", str(changed), *common, "--detailed-exitcode", expect=(2,))
            )
            apply_runs.append(ztplan("apply", str(changed), *common, "--auto-approve"))
        ztplan("plan", str(changed), *common, "--detailed-exitcode")  # converged: exit 0
        r[f"trace_{name}"] = [
            line for line in apply_runs[-1].stderr.split("\n") if line.endswith("change(s)...")
        ]
        restore_noflush(ns, undo)
        r[f"inproc_{name}"] = in_process(changed, ns, state, apply=True)
        restore_noflush(ns, undo)
        assert own_rules(ns) == loaded, "the change was not undone"
        r[f"plan_{name}_s"] = statistics.median(x.wall for x in plan_runs)
        r[f"apply_{name}_s"] = statistics.median(x.wall for x in apply_runs)
        r[f"apply_{name}_mb"] = max(x.maxrss_mb for x in apply_runs)
        # Each apply less the plan run just before it, then the median: two medians of
        # noisy runs, subtracted, moved by +-50 ms at 10,000 rules.
        r[f"over_{name}_s"] = statistics.median(
            a.wall - p.wall for p, a in zip(plan_runs, apply_runs, strict=True)
        )
    reset(ns)
    return r


# --- the controller: concurrent reads ----------------------------------------------------


def bench_controller(reps: int) -> dict[str, Any]:
    """`Controller.read` of 1 and of 20 networks on the emulator's Legacy Central, each
    request answered after CONTROLLER_LATENCY."""
    import httpx

    from ztplan.api import ApiClient
    from ztplan.providers.controller import Controller
    from ztplan.providers.controller_backend import BACKENDS
    from ztplan.testing.emulator import ControllerEmulator

    out: dict[str, Any] = {"latency_s": CONTROLLER_LATENCY}
    nwids = [f"8056c2e21c{i:06x}" for i in range(20)]
    with ControllerEmulator(token="bench-token") as emulator, httpx.Client() as client:
        for nwid in nwids:
            emulator.add_network(nwid, routes=[{"target": "10.6.4.0/22", "via": None}])
        api = ApiClient(
            base_url=emulator.url + "/api/v1",
            headers=BACKENDS["central"].headers("bench-token"),
            client=client,
        )
        for count in (1, 20):
            controller = Controller(api, "central", nwids[:count])
            controller.read(None)  # type: ignore[arg-type]  # connections made, then timed
            time.sleep(1.0)  # a fresh rate-limit window
            emulator.faults.latency = CONTROLLER_LATENCY
            runs = []
            for _ in range(reps):
                start = time.perf_counter()
                controller.read(None)  # type: ignore[arg-type]
                runs.append(time.perf_counter() - start)
                time.sleep(1.0)  # each read in a rate-limit window of its own
            emulator.faults.latency = 0.0
            out[f"read_{count}_s"] = statistics.median(runs)
    out["round_trips_more"] = (out["read_20_s"] - out["read_1_s"]) / CONTROLLER_LATENCY
    return out


# --- report -----------------------------------------------------------------------------


def judge(
    results: list[dict[str, Any]],
    controller: dict[str, Any] | None,
    verify: list[dict[str, Any]],
    help_s: float | None,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(target: str, n: Any, value: float, limit: float, unit: str = "s") -> None:
        ratio = value / limit if limit > 0 else float("inf")
        verdict = "PASS" if value <= limit else "FAIL"
        rows.append(
            dict(
                target=target,
                n=n,
                value=value,
                limit=limit,
                unit=unit,
                ratio=ratio,
                verdict=verdict,
            )
        )

    for r in results:
        n = r["n"]
        if n == 100:
            add(
                "fixed cost: plan - raw saves <= 0.15 s",
                n,
                r["plan_s"] - r["raw_saves_s"],
                STARTUP_S,
            )
        add(
            "plan <= 1.5 x raw saves + 0.15 s",
            n,
            r["plan_s"],
            PLAN_FACTOR * r["raw_saves_s"] + PLAN_SLACK,
        )
        for name in CASES:
            add(
                f"apply {CASES[name].split(' (')[0]} - plan <= 1.5 x raw + 50 ms",
                n,
                r[f"over_{name}_s"],
                APPLY_FACTOR * r[f"raw_{name}_s"] + APPLY_SLACK,
            )
        add("plan max RSS <= 150 MB", n, r["plan_mb"], MEMORY_MB, "MB")
        add("apply max RSS <= 150 MB", n, max(r[f"apply_{c}_mb"] for c in CASES), MEMORY_MB, "MB")
    if controller is not None:
        add(
            "controller: 20 networks - 1 <= 2 round trips",
            20,
            controller["read_20_s"] - controller["read_1_s"],
            2 * CONTROLLER_LATENCY,
        )
    for v in verify:
        limit = VERIFY_S.get(v["n_per_family"])
        if limit is not None:
            add("verify, 6 flows", v["n_per_family"], v["verify_s"], limit)
    if help_s is not None:
        add("ztplan --help", None, help_s, HELP_S)
    return rows


def _read_of(times: dict[str, float]) -> float | None:
    """The firewall's read: a plan fetches its saves (while it makes the desired states)
    and then interprets them; `read` where it is called whole."""
    if "firewall.fetch" in times:
        return times["firewall.fetch"] + times.get("firewall.interpret", 0.0)
    return times.get("firewall.read")


def render(
    results: list[dict[str, Any]],
    controller: dict[str, Any] | None,
    verify: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    load: tuple[str, str],
    help_s: float | None,
) -> str:
    def cell(value: Any) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    rows: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("raw saves, v4+v6", lambda r: r["raw_saves_s"]),
        ("ztplan plan, no change", lambda r: r["plan_s"]),
        ("  in process: open_run", lambda r: r["inproc_plan"]["open_run"]),
        ("  in process: plan()", lambda r: r["inproc_plan"]["plan"]),
        ("    firewall.desired", lambda r: r["inproc_plan"].get("firewall.desired")),
        ("    firewall.interpret", lambda r: r["inproc_plan"].get("firewall.interpret")),
        ("    firewall.read", lambda r: _read_of(r["inproc_plan"])),
        ("    sysctl.read", lambda r: r["inproc_plan"].get("sysctl.read")),
        ("  start-up (CLI - in process)", lambda r: r["startup_s"]),
    ]
    for name, label in CASES.items():
        label = label.split(" (")[0]
        rows += [
            (f"raw restore --noflush {label}", lambda r, c=name: r[f"raw_{c}_s"]),
            (f"ztplan plan {label}", lambda r, c=name: r[f"plan_{c}_s"]),
            (f"ztplan apply {label}", lambda r, c=name: r[f"apply_{c}_s"]),
            ("  apply - plan", lambda r, c=name: r[f"over_{c}_s"]),
            ("  in process: apply()", lambda r, c=name: r[f"inproc_{c}"]["apply"]),
            ("    firewall.apply", lambda r, c=name: r[f"inproc_{c}"].get("firewall.apply")),
        ]
    rows.append(("ztplan apply from empty, cold", lambda r: r["cold_apply_s"]))
    width = 34
    head = f"{'ms, N rules per family':{width}}" + "".join(f"{r['n']:>10}" for r in results)
    lines = [head, "-" * len(head)]
    for label, get in rows:
        lines.append(f"{label:{width}}" + "".join(f"{cell(get(r)):>10}" for r in results))
    for label, key in (
        ("plan max RSS (MB)", "plan_mb"),
        ("apply +1 max RSS (MB)", "apply_add1_mb"),
        ("apply +10 max RSS (MB)", "apply_add10_mb"),
        ("cold apply max RSS (MB)", "cold_apply_mb"),
    ):
        lines.append(f"{label:{width}}" + "".join(f"{r[key]:>10.0f}" for r in results))
    if results:
        lines.append(
            f"{'plan / raw saves':{width}}"
            + "".join(f"{r['plan_s'] / r['raw_saves_s']:>10.2f}" for r in results)
        )
        lines.append(
            f"{'plan, us per rule':{width}}"
            + "".join(f"{r['plan_s'] / (2 * r['n']) * 1e6:>10.1f}" for r in results)
        )
        for name in CASES:
            steps = {tuple(r[f"trace_{name}"]) for r in results}
            lines.append(
                f"steps of apply {CASES[name]}: {' | '.join(' / '.join(s) for s in steps)}"
            )
    if controller is not None:
        lines += [
            "",
            f"controller read, {controller['latency_s'] * 1000:.0f} ms per request: "
            f"1 network {cell(controller['read_1_s'])} ms, 20 networks "
            f"{cell(controller['read_20_s'])} ms ({controller['round_trips_more']:.1f} round "
            "trips more)",
        ]
    for v in verify:
        lines.append(
            f"verify at {v['n_per_family']} per family: {cell(v['verify_s'])} ms "
            f"(build+load {cell(v['build_s'])}, probes {cell(v['probe_and_judge_s'])}, "
            f"read_image {cell(v['read_image_s'])}, first call {cell(v['first_verify_s'])})"
        )
    if help_s is not None:
        lines.append(f"ztplan --help: {cell(help_s)} ms (median of 10)")
    lines += ["", f"{'target':50}{'N':>7}{'value':>10}{'limit':>10}{'ratio':>7}  verdict", "-" * 92]
    for t in checks:

        def fmt(x: float, unit: str = t["unit"]) -> str:
            return f"{x:.0f}MB" if unit == "MB" else f"{x * 1000:.0f}ms"

        lines.append(
            f"{t['target']:50}{t['n'] if t['n'] is not None else '-':>7}{fmt(t['value']):>10}"
            f"{fmt(t['limit']):>10}{t['ratio']:>7.2f}  {t['verdict']}"
        )
    lines.append(
        f"\nmachine: {os.cpu_count()} cpus; load average before {load[0]}, after {load[1]}"
    )
    for r in results:
        if "profile" in r:
            lines += ["", f"cProfile of an in-process plan, N={r['n']} (no change):", r["profile"]]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: Any) -> None:
    if os.getpid() != MAIN_PID:  # a fork (pyroute2's), being stopped: just go
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="100,1000,10000,50000",
        help="rules per family, comma-separated (default 100,1000,10000,50000)",
    )
    parser.add_argument("--quick", action="store_true", help="100 and 1000 only, no verify")
    parser.add_argument("--reps", type=int, default=5, help="runs of each ztplan timing (>= 3)")
    parser.add_argument("--skip", default="", help="comma-separated: controller,verify,help")
    parser.add_argument(
        "--profile",
        type=int,
        default=10000,
        metavar="N",
        help="cProfile the in-process plan at this size (0: none)",
    )
    parser.add_argument("--json", action="store_true", help="the results as JSON on stdout")
    parser.add_argument("--fail-on-target", action="store_true", help="exit 3 when one FAILs")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run ztplan with this environment as is (no PYTHONPYCACHEPREFIX)",
    )
    args = parser.parse_args(argv)
    sizes = [100, 1000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    skip = set(filter(None, args.skip.split(","))) | ({"verify"} if args.quick else set())
    if os.geteuid() != 0:
        log("bench_firewall: needs root (network namespaces, iptables)")
        return 1
    for tool in ("ip", "iptables-save", "ip6tables-save", "iptables-restore"):
        if shutil.which(tool) is None:
            log(f"bench_firewall: {tool} is not installed")
            return 1
    if not os.access(ZTPLAN, os.X_OK):
        log(f"bench_firewall: {ZTPLAN} is missing (make install)")
        return 1
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    sys.path.insert(0, str(ROOT))
    gc.set_threshold(100_000, 50, 50)  # as ztplan.cli.main: the in-process rows alike
    before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="ztplan-bench-"))
    global CHILD_ENV
    if not args.no_bytecode_cache:
        # Like an installed package: modules byte-compiled once (the environment may set
        # PYTHONDONTWRITEBYTECODE, and the repository is not ours to write in).
        CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    CHILD_ENV = {**(CHILD_ENV or os.environ), "NO_COLOR": "1"}
    CHILD_ENV = {k: v for k, v in CHILD_ENV.items() if not k.startswith("ZTPLAN_")}
    results: list[dict[str, Any]] = []
    controller = None
    verify: list[dict[str, Any]] = []
    help_s = None
    reps = max(3, args.reps)
    started = time.perf_counter()
    try:
        with namespace(f"ztplan-bench-{os.getpid()}") as ns:
            log(f"namespace {ns}, work dir {work}, load {before}")
            warm = work / "warm.yaml"  # untimed: byte-compiles what plan and apply import
            warm.write_text(spec_text({f: [rule(f, 0)] for f in FAMILIES}))
            ztplan(
                "apply",
                str(warm),
                "--netns",
                ns,
                "--state-dir",
                str(work / "warm"),
                "--auto-approve",
                "--no-verify",
            )
            for n in sizes:
                start = time.perf_counter()
                log(f"N={n} rules per family")
                results.append(bench_size(n, ns, work, reps, n == args.profile))
                log(f"  N={n} done in {time.perf_counter() - start:.0f} s")
        if "controller" not in skip:
            log("controller: 1 and 20 networks")
            controller = bench_controller(reps)
        if "verify" not in skip:
            sys.path.insert(0, str(Path(__file__).parent))
            import bench_verify

            for n in (1000, 10000):
                log(f"verify: N={n}")
                verify.append(bench_verify.bench_size(n, reps))
        if "help" not in skip:
            ztplan("--help")
            help_s = statistics.median(ztplan("--help").wall for _ in range(10))
    finally:
        if os.getpid() == MAIN_PID:
            shutil.rmtree(work, ignore_errors=True)
    load = (before, loadavg())
    checks = judge(results, controller, verify, help_s)
    if args.json:
        document = {
            "sizes": results,
            "controller": controller,
            "verify": verify,
            "help_s": help_s,
            "targets": checks,
            "machine": {"cpus": os.cpu_count(), "load": load},
            "total_s": time.perf_counter() - started,
        }
        print(json.dumps(document, indent=2))
    else:
        print(render(results, controller, verify, checks, load, help_s))
    failed = [t for t in checks if t["verdict"] == "FAIL"]
    return 3 if failed and args.fail_on_target else 0


if __name__ == "__main__":
    sys.exit(main())
