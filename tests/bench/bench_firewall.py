"""Firewall benchmark: ztplan plan/apply against raw iptables-save/-restore, per ruleset size.

Run as root (plain script, not collected by pytest):

    .venv/bin/python tests/bench/bench_firewall.py [--sizes 100,1000,10000] [--quick] [--json]

It makes its own network namespace `ztplan-bench-<pid>` (deleted at the end, also on error
or SIGINT/SIGTERM), never runs iptables in the host's namespace, and keeps specs, state and
the normalisation cache in a temporary directory. See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
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
VENV_BIN = ROOT / ".venv" / "bin"
ZTPLAN = str(VENV_BIN / "ztplan")
TAG_ARGS = "-m comment --comment ztplan"
FAMILIES = {
    "ipv4": ("iptables-save", "iptables-restore"),
    "ipv6": ("ip6tables-save", "ip6tables-restore"),
}

# Targets (the issue), judged at N = 10,000 owned rules per family.
TARGET_N = 10_000
PLAN_FACTOR, PLAN_SLACK = 2.0, 0.2  # plan (no change) <= 2 x (both raw saves) + 0.2 s
APPLY_FACTOR = 1.5  # apply - plan <= 1.5 x one raw restore of the same changes
MEMORY_MB = 150.0  # max RSS of `ztplan plan`
HELP_S = 0.15  # `ztplan --help`

_children: list[int] = []  # pids of ztplan processes we started (their scratch netns names)
MAIN_PID = os.getpid()
"""pyroute2 (ztplan's in-process calls) forks this process; a fork must never run our
clean-up (signal handler, finally blocks), or it would delete the namespace under us."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------


@dataclass
class Run:
    rc: int
    wall: float
    maxrss_mb: float
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    input: str | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> Run:
    """Run argv, wall time and max RSS (os.wait4: the child and its reaped descendants)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdin=stdin, stdout=out, stderr=err, env=env)
        _children.append(proc.pid)
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input.encode())
            proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped
        out.seek(0)
        err.seek(0)
        result = Run(
            proc.returncode, wall, usage.ru_maxrss / 1024, out.read().decode(), err.read().decode()
        )
    if check and result.rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.rc}: {result.stderr.strip()[-2000:]}")
    return result


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def median_of(
    reps: int, fn: Callable[[], float], before: Callable[[], None] | None = None
) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        if before:
            before()
        times.append(fn())
    return statistics.median(times), times


# --- the namespace and the rules ------------------------------------------------------------


@contextlib.contextmanager
def bench_namespace() -> Iterator[str]:
    name = f"ztplan-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        if os.getpid() == MAIN_PID:
            subprocess.run(["ip", "netns", "del", name], check=False)
            _remove_scratch_namespaces()


def _remove_scratch_namespaces() -> None:
    """Scratch namespaces a killed ztplan child (or this process) may have left behind:
    only those named after our own pids (`ztplan-scratch-<pid>-...`)."""
    pids = {str(p) for p in [*_children, os.getpid()]}
    with contextlib.suppress(OSError):
        for entry in os.listdir("/run/netns"):
            parts = entry.split("-")
            if entry.startswith("ztplan-scratch-") and len(parts) >= 3 and parts[2] in pids:
                subprocess.run(["ip", "netns", "del", entry], check=False)


def v4(i: int) -> str:
    i += 1
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def v6(i: int) -> str:
    return f"2001:db8::{i + 1:x}"


def rule(family: str, i: int) -> str:
    return f"-s {v4(i)}/32 -j ACCEPT" if family == "ipv4" else f"-s {v6(i)}/128 -j ACCEPT"


def base_rules(n: int) -> dict[str, list[str]]:
    return {fam: [rule(fam, i) for i in range(n)] for fam in FAMILIES}


def extra_rules(n: int, count: int, offset: int) -> list[str]:
    """IPv4 rules not in the base set (indices from 2n + offset on)."""
    return [rule("ipv4", 2 * n + offset + k) for k in range(count)]


def spec_text(rules: dict[str, list[str]]) -> str:
    lines = ["version: 1", "target:", "  name: bench", "firewall:"]
    for fam in FAMILIES:
        lines += [f"  {fam}:", "    filter:", "      FORWARD:"]
        lines += [f'        - "{r}"' for r in rules[fam]]
    return "\n".join(lines) + "\n"


def restore_text(lines: Sequence[str], flush: bool) -> str:
    head = ["*filter"]
    if flush:
        head += [":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    return "\n".join([*head, *lines, "COMMIT"]) + "\n"


def reset(ns: str) -> None:
    """An empty filter table in both families (restore without --noflush flushes it)."""
    for _, restore in FAMILIES.values():
        run(in_ns(ns, restore), input=restore_text([], flush=True))


def ruleset_digest(ns: str) -> str:
    out = []
    for save, _ in FAMILIES.values():
        out += [ln for ln in run(in_ns(ns, save)).stdout.splitlines() if ln.startswith(("-A", ":"))]
    return "\n".join(out)


# --- ztplan -------------------------------------------------------------------------------


CHILD_ENV: dict[str, str] | None = None
"""Environment of ztplan children (None: this process's own)."""


def ztplan(*args: str, expect: Sequence[int] = (0,)) -> Run:
    done = run([ZTPLAN, *args], check=False, env=CHILD_ENV)
    if done.rc not in expect:
        raise RuntimeError(
            f"ztplan {' '.join(args)} exited {done.rc} (expected {list(expect)}):"
            f" {done.stderr.strip()[-2000:]}"
        )
    return done


def in_process_plan(spec: Path, ns: str, state_dir: Path) -> dict[str, Any]:
    """One plan in this process (modules already imported): the work without start-up."""
    from ztplan.host import LocalHost
    from ztplan.plan import build_providers, make_plan
    from ztplan.source import read_spec
    from ztplan.state import read_state

    t0 = time.perf_counter()
    loaded, source = read_spec(str(spec))
    t1 = time.perf_counter()
    host = LocalHost(ns)
    providers = build_providers(loaded, source.path, state_dir / "cache")
    previous = read_state(state_dir, loaded.target.name)
    plan, _ = make_plan(loaded, source, host, providers, previous)
    t2 = time.perf_counter()
    assert not plan.has_changes, f"in-process plan found {len(plan.changes)} changes"
    # Split make_plan's work: desired (spec -> resources, cache read) vs read (live saves).
    fw = next(p for p in providers if p.name == "firewall")
    t3 = time.perf_counter()
    fw.desired(loaded)
    t4 = time.perf_counter()
    fw.read(host)
    t5 = time.perf_counter()
    return {
        "read_spec_s": t1 - t0,
        "make_plan_s": t2 - t1,
        "total_s": t2 - t0,
        "desired_s": t4 - t3,
        "read_s": t5 - t4,
    }


def _print_profile(title: str, prof: cProfile.Profile, top: int = 25) -> None:
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(12)
    log(f"===== cProfile: {title} =====")
    log(text.getvalue())


class _Phases:
    """Wall time of phases, optionally each under its own profiler (printed at the end)."""

    def __init__(self, profile: bool) -> None:
        self.times: dict[str, float] = {}
        self.profiles: dict[str, cProfile.Profile] = {}
        self.profile = profile

    @contextlib.contextmanager
    def __call__(self, name: str, profile: bool = True) -> Iterator[None]:
        """Time a phase; profile it too unless `profile` is False (cProfile does not nest:
        phases inside a profiled phase are only timed)."""
        prof = (
            self.profiles.setdefault(name, cProfile.Profile()) if self.profile and profile else None
        )
        t = time.perf_counter()
        if prof:
            prof.enable()
        try:
            yield
        finally:
            if prof:
                prof.disable()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

    def report(self, title: str) -> None:
        for name, prof in self.profiles.items():
            _print_profile(f"{title}: {name}", prof)


class _TimedProvider:
    """A provider whose desired/read/apply calls are timed as phases (apply_plan's insides)."""

    def __init__(self, inner: Any, phases: _Phases, prefix: str) -> None:
        self.inner, self.phases, self.prefix = inner, phases, prefix
        self.name = inner.name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def desired(self, spec: Any) -> Any:
        with self.phases(f"{self.prefix}desired", profile=False):
            return self.inner.desired(spec)

    def read(self, host: Any) -> Any:
        with self.phases(f"{self.prefix}read", profile=False):
            return self.inner.read(host)

    def apply(self, host: Any, changes: Any, desired: Any, before: Any = None) -> Any:
        with self.phases(f"{self.prefix}apply (edit + restore)", profile=False):
            return self.inner.apply(host, changes, desired, before)


def profile_plan(spec: Path, ns: str, state_dir: Path) -> None:
    """cProfile, phase by phase, of what `ztplan plan` does after start-up."""
    from ztplan.host import LocalHost
    from ztplan.plan import build_providers, make_plan
    from ztplan.render.human import render_plan
    from ztplan.source import read_spec
    from ztplan.state import read_state

    phase = _Phases(profile=True)
    with phase("read_spec"):
        loaded, source = read_spec(str(spec))
    providers = build_providers(loaded, source.path, state_dir / "cache")
    with phase("make_plan"):
        plan, _ = make_plan(
            loaded, source, LocalHost(ns), providers, read_state(state_dir, loaded.target.name)
        )
    with phase("render"):
        render_plan(plan, color=False)
    log(f"plan in process under cProfile: {phase.times}")
    phase.report(f"plan, no change, {spec.name}")


class _QuietReporter:
    def step_started(self, provider: str, changes: Any) -> None: ...
    def step_done(self, provider: str, changes: Any) -> None: ...
    def rolled_back(self, provider: str, ok: bool) -> None: ...


def in_process_apply(spec: Path, ns: str, state_dir: Path, profile: bool) -> dict[str, float]:
    """What `ztplan apply --auto-approve` does after start-up, timed phase by phase
    (with `profile`, each phase under cProfile: the times are then the profiler's)."""
    from ztplan.apply import apply_plan
    from ztplan.host import LocalHost
    from ztplan.plan import build_providers, make_plan
    from ztplan.render.human import render_plan
    from ztplan.source import read_spec
    from ztplan.state import read_state

    phase = _Phases(profile)
    with phase("read_spec"):
        loaded, source = read_spec(str(spec))
    host = LocalHost(ns)
    providers = build_providers(loaded, source.path, state_dir / "cache")
    previous = read_state(state_dir, loaded.target.name)
    with phase("make_plan"):
        plan, snapshots = make_plan(loaded, source, host, providers, previous)
    with phase("render"):
        render_plan(plan, color=False)
    timed = [_TimedProvider(p, phase, "apply_plan: ") for p in providers]
    with phase("apply_plan"):
        apply_plan(
            plan, snapshots, host, timed, _QuietReporter(), state_dir, previous, plan.desired
        )
    again, _ = make_plan(loaded, source, host, providers, read_state(state_dir, loaded.target.name))
    assert not again.changes, "in-process apply did not converge"
    inner = sum(v for k, v in phase.times.items() if k.startswith("apply_plan: "))
    phase.times["apply_plan: rest (digests, state write)"] = phase.times["apply_plan"] - inner
    if profile:
        log(f"apply in process under cProfile: {phase.times}")
        phase.report(f"apply, {len(plan.changes)} change(s), {spec.name}")
    return phase.times


# --- one size -----------------------------------------------------------------------------


def bench_size(n: int, ns: str, work: Path, reps: int, profile: bool) -> dict[str, Any]:
    r: dict[str, Any] = {"n_per_family": n}
    raw_reps = 5
    rules = base_rules(n)
    full = {
        fam: restore_text([f"-A FORWARD {TAG_ARGS} {x}" for x in rules[fam]], flush=True)
        for fam in FAMILIES
    }

    # 1b. raw restore of all N rules per family into an empty table.
    def full_restore() -> float:
        t = time.perf_counter()
        for fam, (_, restore) in FAMILIES.items():
            run(in_ns(ns, restore), input=full[fam])
        return time.perf_counter() - t

    r["raw_restore_all_s"], r["raw_restore_all_runs"] = median_of(
        3 if n >= TARGET_N else raw_reps, full_restore, before=lambda: reset(ns)
    )

    # 4. first apply from empty, cold cache (fresh state dir).
    reset(ns)
    state = work / f"state-{n}"
    spec = work / f"spec-{n}.yaml"
    spec.write_text(spec_text(rules))
    log(f"  N={n}: cold apply")
    cold = ztplan("apply", str(spec), "--netns", ns, "--state-dir", str(state), "--auto-approve")
    r["cold_apply_s"], r["cold_apply_maxrss_mb"] = cold.wall, cold.maxrss_mb
    loaded = ruleset_digest(ns)
    assert loaded.count(TAG_ARGS) == 2 * n, "cold apply did not load the ruleset"

    # 1a. raw saves of the loaded ruleset (both families).
    def saves() -> float:
        t = time.perf_counter()
        for save, _ in FAMILIES.values():
            run(in_ns(ns, save))
        return time.perf_counter() - t

    r["raw_saves_s"], r["raw_saves_runs"] = median_of(raw_reps, saves)

    # 2. plan, nothing changed, warm cache: CLI subprocess and in process.
    log(f"  N={n}: plan (no change)")
    plan_args = ("plan", str(spec), "--netns", ns, "--state-dir", str(state), "--detailed-exitcode")
    runs = [ztplan(*plan_args, expect=(0,)) for _ in range(reps)]
    r["plan_s"] = statistics.median(x.wall for x in runs)
    r["plan_runs"] = [x.wall for x in runs]
    r["plan_maxrss_mb"] = max(x.maxrss_mb for x in runs)
    in_process_plan(spec, ns, state)  # warm-up: lazy imports, first-call costs
    r["plan_inprocess"] = in_process_plan(spec, ns, state)
    r["startup_s"] = r["plan_s"] - r["plan_inprocess"]["total_s"]
    if profile:
        profile_plan(spec, ns, state)

    # 3. apply of 1 and of 10 added rules (IPv4, in the middle of FORWARD).
    middle = n // 2
    current = {fam: list(v) for fam, v in rules.items()}
    for count, offset in ((1, 0), (10, 100)):
        log(f"  N={n}: +{count} rule(s)")
        added = extra_rules(n, count, offset)
        position = middle + 1  # 1-based: before base rule `middle` in the kernel chain
        inserts = [f"-I FORWARD {position + k} {TAG_ARGS} {x}" for k, x in enumerate(added)]
        deletes = [f"-D FORWARD {TAG_ARGS} {x}" for x in added]

        def undo(deletes: list[str] = deletes) -> None:
            run(in_ns(ns, "iptables-restore", "--noflush"), input=restore_text(deletes, False))

        def raw_change(inserts: list[str] = inserts, undo: Callable[[], None] = undo) -> float:
            t = time.perf_counter()
            run(in_ns(ns, "iptables-restore", "--noflush"), input=restore_text(inserts, False))
            wall = time.perf_counter() - t
            undo()
            return wall

        key = f"add{count}"
        r[f"raw_{key}_s"], r[f"raw_{key}_runs"] = median_of(raw_reps, raw_change)
        assert ruleset_digest(ns) == loaded, "raw change not undone"

        current["ipv4"][middle:middle] = added
        changed = work / f"spec-{n}-{key}.yaml"
        changed.write_text(spec_text(current))
        plan_changed = (
            "plan",
            str(changed),
            "--netns",
            ns,
            "--state-dir",
            str(state),
            "--detailed-exitcode",
        )
        # The first plan after the edit re-normalises the whole family (cache miss).
        r[f"plan_{key}_cold_s"] = ztplan(*plan_changed, expect=(2,)).wall
        # Plan and apply interleaved (plan, apply, undo, ...) so that load from elsewhere
        # on the machine hits both alike; apply - plan compares medians.
        plan_runs, apply_runs = [], []
        for rep in range(reps):
            if rep:
                undo()  # back to the state before the change, then apply it again
            plan_runs.append(ztplan(*plan_changed, expect=(2,)).wall)
            done = ztplan(
                "apply", str(changed), "--netns", ns, "--state-dir", str(state), "--auto-approve"
            )
            assert "Warning" not in done.stderr, f"apply did not converge: {done.stderr}"
            apply_runs.append(done.wall)
        undo()
        r[f"apply_{key}_inprocess"] = in_process_apply(changed, ns, state, False)
        if profile:
            undo()
            in_process_apply(changed, ns, state, True)
        r[f"plan_{key}_s"] = statistics.median(plan_runs)
        r[f"plan_{key}_runs"] = plan_runs
        r[f"apply_{key}_s"] = statistics.median(apply_runs)
        r[f"apply_{key}_runs"] = apply_runs
        r[f"apply_{key}_over_plan_s"] = r[f"apply_{key}_s"] - r[f"plan_{key}_s"]
        ztplan(*plan_changed, expect=(0,))  # converged
        loaded = ruleset_digest(ns)  # the next (10) go in at the same place, before these
    reset(ns)
    return r


# --- report -------------------------------------------------------------------------------


def targets(results: list[dict[str, Any]], help_s: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in results:
        judged = r["n_per_family"] == TARGET_N
        limit = PLAN_FACTOR * r["raw_saves_s"] + PLAN_SLACK
        out.append(
            {
                "n": r["n_per_family"],
                "target": "plan, no change <= 2x saves + 0.2 s",
                "value": r["plan_s"],
                "limit": limit,
                "ratio": r["plan_s"] / limit,
                "judged": judged,
            }
        )
        for key in ("add1", "add10"):
            limit = APPLY_FACTOR * r[f"raw_{key}_s"]
            over = r[f"apply_{key}_over_plan_s"]
            out.append(
                {
                    "n": r["n_per_family"],
                    "target": f"apply {key[3:]} change(s) - plan <= 1.5x raw restore",
                    "value": over,
                    "limit": limit,
                    "ratio": over / limit,
                    "judged": judged,
                }
            )
        out.append(
            {
                "n": r["n_per_family"],
                "target": "plan max RSS <= 150 MB",
                "value": r["plan_maxrss_mb"],
                "limit": MEMORY_MB,
                "ratio": r["plan_maxrss_mb"] / MEMORY_MB,
                "judged": judged,
                "unit": "MB",
            }
        )
    out.append(
        {
            "n": None,
            "target": "ztplan --help <= 0.15 s",
            "value": help_s,
            "limit": HELP_S,
            "ratio": help_s / HELP_S,
            "judged": True,
        }
    )
    for t in out:
        t["verdict"] = ("PASS" if t["ratio"] <= 1.0 else "FAIL") if t["judged"] else "info"
    return out


def render(results: list[dict[str, Any]], help_s: float, checks: list[dict[str, Any]]) -> str:
    def ms(x: float) -> str:
        return f"{x * 1000:9.0f}"

    rows = [
        ("raw saves, v4+v6 (median)", "raw_saves_s"),
        ("raw restore all N, v4+v6", "raw_restore_all_s"),
        ("raw restore --noflush +1", "raw_add1_s"),
        ("raw restore --noflush +10", "raw_add10_s"),
        ("ztplan plan, no change (CLI)", "plan_s"),
        ("  in process: read spec", ("plan_inprocess", "read_spec_s")),
        ("  in process: make_plan", ("plan_inprocess", "make_plan_s")),
        ("    of which desired()", ("plan_inprocess", "desired_s")),
        ("    of which read()", ("plan_inprocess", "read_s")),
        ("  start-up (CLI - in process)", "startup_s"),
        ("ztplan plan +1, cold cache", "plan_add1_cold_s"),
        ("ztplan plan +1, warm cache", "plan_add1_s"),
        ("ztplan apply +1", "apply_add1_s"),
        ("  apply +1 - plan", "apply_add1_over_plan_s"),
        ("  in process: apply_plan()", ("apply_add1_inprocess", "apply_plan")),
        (
            "    firewall apply (edit+restore)",
            ("apply_add1_inprocess", "apply_plan: apply (edit + restore)"),
        ),
        (
            "    rest: digests, state",
            ("apply_add1_inprocess", "apply_plan: rest (digests, state write)"),
        ),
        ("ztplan plan +10, cold cache", "plan_add10_cold_s"),
        ("ztplan plan +10, warm cache", "plan_add10_s"),
        ("ztplan apply +10", "apply_add10_s"),
        ("  apply +10 - plan", "apply_add10_over_plan_s"),
        ("  in process: apply_plan()", ("apply_add10_inprocess", "apply_plan")),
        (
            "    firewall apply (edit+restore)",
            ("apply_add10_inprocess", "apply_plan: apply (edit + restore)"),
        ),
        (
            "    rest: digests, state",
            ("apply_add10_inprocess", "apply_plan: rest (digests, state write)"),
        ),
        ("ztplan apply from empty, cold", "cold_apply_s"),
    ]
    width = 32
    head = f"{'time (ms), N rules per family':{width}}" + "".join(
        f"{r['n_per_family']:>10}" for r in results
    )
    lines = [head, "-" * len(head)]
    for label, key in rows:
        vals = [r[key[0]].get(key[1]) if isinstance(key, tuple) else r[key] for r in results]
        lines.append(
            f"{label:{width}}" + "".join(f"{ms(v) if v is not None else '-':>10}" for v in vals)
        )
    lines.append(
        f"{'ztplan plan max RSS (MB)':{width}}"
        + "".join(f"{r['plan_maxrss_mb']:>10.1f}" for r in results)
    )
    lines.append(
        f"{'cold apply max RSS (MB)':{width}}"
        + "".join(f"{r['cold_apply_maxrss_mb']:>10.1f}" for r in results)
    )
    lines.append(f"{'ztplan --help (ms, median of 5)':{width}}{ms(help_s):>10}")
    lines += ["", f"{'target':44}{'N':>7}{'value':>11}{'limit':>11}{'ratio':>8}  verdict", "-" * 90]
    for t in checks:
        unit = t.get("unit")
        value = f"{t['value']:.1f}MB" if unit else f"{t['value'] * 1000:.0f}ms"
        limit = f"{t['limit']:.1f}MB" if unit else f"{t['limit'] * 1000:.0f}ms"
        lines.append(
            f"{t['target']:44}{t['n'] or '-':>7}{value:>11}{limit:>11}"
            f"{t['ratio']:>8.2f}  {t['verdict']}"
        )
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: Any) -> None:
    if os.getpid() != MAIN_PID:  # a fork made by pyroute2, being stopped: just go
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="100,1000,10000",
        help="owned rules per family, comma-separated (default 100,1000,10000)",
    )
    parser.add_argument("--quick", action="store_true", help="only 100 and 1000")
    parser.add_argument("--reps", type=int, default=5, help="runs of each ztplan timing (>= 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--fail-on-target",
        action="store_true",
        help="exit 3 when a target FAILs (default: exit 0 once measured)",
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run ztplan with this environment as is (no PYTHONPYCACHEPREFIX)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile plan and apply in process at the largest size (stderr)",
    )
    args = parser.parse_args(argv)
    sizes = [100, 1000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    if os.geteuid() != 0:
        log("bench_firewall: needs root (network namespaces, iptables)")
        return 1
    for tool in ("ip", "iptables-save", "ip6tables-save", "iptables-restore"):
        if shutil.which(tool) is None:
            log(f"bench_firewall: {tool} is not installed")
            return 1
    if not os.access(ZTPLAN, os.X_OK):
        log(f"bench_firewall: {ZTPLAN} missing (make install)")
        return 1
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    sys.path.insert(0, str(ROOT))

    work = Path(tempfile.mkdtemp(prefix="ztplan-bench-"))
    global CHILD_ENV
    if not args.no_bytecode_cache:
        # Like an installed package: byte-compiled modules, here kept in the work dir (the
        # environment may set PYTHONDONTWRITEBYTECODE, and the repo is not ours to write).
        CHILD_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    results = []
    started = time.perf_counter()
    try:
        with bench_namespace() as ns:
            log(f"namespace {ns}, work dir {work}")
            # Warm-up (untimed): byte-compile and page in everything plan/apply import.
            warm = work / "warm.yaml"
            warm.write_text(spec_text(base_rules(1)))
            ztplan(
                "apply",
                str(warm),
                "--netns",
                ns,
                "--state-dir",
                str(work / "warm"),
                "--auto-approve",
            )
            reset(ns)
            ztplan("--help")
            help_s, help_runs = median_of(5, lambda: ztplan("--help").wall)
            for n in sizes:
                t = time.perf_counter()
                log(f"N={n} rules per family")
                results.append(
                    bench_size(n, ns, work, max(3, args.reps), args.profile and n == max(sizes))
                )
                log(f"  N={n} done in {time.perf_counter() - t:.1f} s")
    finally:
        if os.getpid() == MAIN_PID:
            shutil.rmtree(work, ignore_errors=True)
    checks = targets(results, help_s)
    if args.json:
        print(
            json.dumps(
                {
                    "sizes": results,
                    "help_s": help_s,
                    "help_runs": help_runs,
                    "targets": checks,
                    "machine": {"cpus": os.cpu_count()},
                    "total_s": time.perf_counter() - started,
                },
                indent=2,
            )
        )
    else:
        print(render(results, help_s, checks))
        if TARGET_N not in sizes:
            print(f"\n(targets are judged at N={TARGET_N}; other sizes are for information)")
    failed = [t for t in checks if t["verdict"] == "FAIL"]
    return 3 if failed and args.fail_on_target else 0


if __name__ == "__main__":
    sys.exit(main())
