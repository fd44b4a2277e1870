"""Twin benchmark: `verify` of a handful of flows on a gateway with N rules per family.

Run as root (plain script, not collected by pytest):

    .venv/bin/python tests/bench/bench_verify.py [--sizes 1000,10000] [--reps 5] [--json]

It makes its own "real gateway" namespace `ztplan-bench-twin-<pid>` (deleted at the end,
also on an error or SIGINT/SIGTERM), loads N rules per family into it, reads its image and
times `verify` (which builds and removes its own twin namespaces). See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ztplan.host import LocalHost  # noqa: E402
from ztplan.twin import MEMBER, Flow, FlowKind, read_image, verify  # noqa: E402
from ztplan.twin.netns import inside  # noqa: E402

TARGETS = {1000: 1.0, 10000: 2.0}
"""Rules per family -> the issue's limit on one verify of the handful of flows (s)."""

FLOWS = [
    Flow("outbound v4", FlowKind.OUTBOUND, "ipv4", expected_source="198.51.100.7"),
    Flow("outbound v6", FlowKind.OUTBOUND, "ipv6", expected_source=MEMBER),
    Flow("inbound v4", FlowKind.INBOUND, "ipv4", port=22),
    Flow("inbound v6", FlowKind.INBOUND, "ipv6", port=22),
    Flow("ssh", FlowKind.MANAGEMENT, "ipv4", port=22),
    Flow("mss", FlowKind.MSS, "ipv4"),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sh(ns: str, *argv: str, input: str | None = None) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], input=input, text=True, check=True)


def rules(n: int, family: str) -> str:
    """N rules in FORWARD, the gateway's own last (every test packet passes all the
    others), SNAT, an SSH (and ICMPv6) allow under INPUT policy DROP, MSS clamping."""
    filler = n - 2
    if family == "ipv4":
        lines = [
            f"-A FORWARD -s 10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32 "
            "-m comment --comment ztplan -j ACCEPT"
            for i in range(filler)
        ]
        lines += ["-A FORWARD -i zt+ -s 10.6.4.0/22 -j ACCEPT"]
        lines += [
            "-A FORWARD -i eth0 -d 10.6.4.0/22 -m state --state RELATED,ESTABLISHED -j ACCEPT"
        ]
        nat = "*nat\n-A POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7\nCOMMIT\n"
    else:
        lines = [
            f"-A FORWARD -s 2001:db8:1:{i // 65536:x}::{i % 65536:x}/128 "
            "-m comment --comment ztplan -j ACCEPT"
            for i in range(filler)
        ]
        lines += ["-A FORWARD -i zt+ -s 2001:db8:6::/64 -j ACCEPT"]
        lines += [
            "-A FORWARD -i eth0 -d 2001:db8:6::/64 -m state --state RELATED,ESTABLISHED -j ACCEPT"
        ]
        nat = ""
    return (
        "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT\n"
        "-A INPUT -p tcp --dport 22 -j ACCEPT\n"
        + ("-A INPUT -p ipv6-icmp -j ACCEPT\n" if family == "ipv6" else "")
        + "\n".join(lines)
        + "\nCOMMIT\n"
        + nat
        + "*mangle\n-A FORWARD -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu\n"
        "COMMIT\n"
    )


@contextlib.contextmanager
def gateway(n: int) -> Iterator[str]:
    name = f"ztplan-bench-twin-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for link, peer, addresses, mtu in (
            ("eth0", "o0", ["198.51.100.7/24", "2001:db8:100::7/64"], 1500),
            ("zt0", "o1", ["10.6.6.2/22", "2001:db8:6::1/64"], 2800),
        ):
            sh(
                name,
                "ip",
                "link",
                "add",
                link,
                "mtu",
                str(mtu),
                "type",
                "veth",
                "peer",
                "name",
                peer,
            )
            for cidr in addresses:
                sh(
                    name,
                    "ip",
                    "addr",
                    "add",
                    cidr,
                    "dev",
                    link,
                    *(["nodad"] if ":" in cidr else []),
                )
            sh(name, "ip", "link", "set", link, "up")
            sh(name, "ip", "link", "set", peer, "up")
        sh(name, "ip", "route", "add", "default", "via", "198.51.100.1")
        sh(name, "ip", "-6", "route", "add", "default", "via", "2001:db8:100::1")
        sh(name, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        sh(name, "iptables-restore", input=rules(n, "ipv4"))
        sh(name, "ip6tables-restore", input=rules(n, "ipv6"))
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def median_of(reps: int, fn: Callable[[], Any]) -> tuple[float, list[float], Any]:
    runs, value = [], None
    for _ in range(reps):
        wall, value = timed(fn)
        runs.append(wall)
    return statistics.median(runs), runs, value


def bench_size(n: int, reps: int) -> dict[str, Any]:
    r: dict[str, Any] = {"n_per_family": n}
    with gateway(n) as ns:
        with inside(ns):
            sshd = socket.socket()
        sshd.bind(("0.0.0.0", 22))
        sshd.listen()
        r["read_image_s"], image = timed(lambda: read_image(LocalHost(ns)))
        sshd.close()
        r["first_verify_s"], results = timed(lambda: verify(image, FLOWS))
        bad = [f"{x.flow.name}: {x.observed} ({x.culprit})" for x in results if not x.ok]
        assert not bad, f"the benchmark gateway does not work: {bad}"
        # The split of each run: `prepare` is called once the twin is built and loaded.
        builds: list[float] = []
        rests: list[float] = []

        def timed_verify() -> None:
            marks: list[float] = []
            start = time.perf_counter()
            verify(image, FLOWS, prepare=lambda host: marks.append(time.perf_counter()))
            builds.append(marks[0] - start)
            rests.append(time.perf_counter() - marks[0])

        r["verify_s"], r["verify_runs"], _ = median_of(reps, timed_verify)
        r["build_s"] = statistics.median(builds)
        r["probe_and_judge_s"] = statistics.median(rests)
        flows = {x.flow.name: round(x.seconds, 3) for x in results}
        r["flow_seconds"] = flows

        # One flow dropped by a rule after all N (its culprit is looked up in a long chain).
        prepare_runs: list[float] = []

        def prepare(host: Any) -> None:
            start = time.perf_counter()
            host.run(["iptables", "-I", "FORWARD", str(n - 1), "-s", "10.6.4.0/22", "-j", "DROP"])
            prepare_runs.append(time.perf_counter() - start)

        failing = [*FLOWS[1:]] + [FLOWS[0]]
        r["verify_with_culprit_s"], _, results = median_of(
            reps, lambda: verify(image, failing, prepare=prepare)
        )
        r["prepare_s"] = statistics.median(prepare_runs)
        culprit = results[-1].culprit
        r["culprit"] = str(culprit)
        assert culprit is not None and culprit.rule == "-A FORWARD -s 10.6.4.0/22 -j DROP", culprit
    r["limit_s"] = TARGETS.get(n)
    return r


def render(results: list[dict[str, Any]], load: tuple[str, str]) -> str:
    width = 40
    head = f"{'time (ms), N rules per family':{width}}" + "".join(
        f"{r['n_per_family']:>10}" for r in results
    )
    rows = [
        ("read_image (live gateway)", "read_image_s"),
        ("verify, first call in the process", "first_verify_s"),
        ("verify, 6 flows (median)", "verify_s"),
        ("  build + load the twin (median)", "build_s"),
        ("  probes, judging, removal (median)", "probe_and_judge_s"),
        ("verify, one flow dropped (culprit)", "verify_with_culprit_s"),
        ("  of which prepare's own iptables -I", "prepare_s"),
    ]
    lines = [head, "-" * len(head)]
    for label, key in rows:
        lines.append(f"{label:{width}}" + "".join(f"{r[key] * 1000:>10.0f}" for r in results))
    lines.append("")
    for r in results:
        limit = r["limit_s"]
        if limit is not None:
            verdict = "PASS" if r["verify_s"] <= limit else "FAIL"
            lines.append(
                f"target N={r['n_per_family']}: verify {r['verify_s'] * 1000:.0f} ms <= "
                f"{limit * 1000:.0f} ms  {verdict}"
            )
    lines.append(f"machine: {os.cpu_count()} cpus, load average before {load[0]}, after {load[1]}")
    return "\n".join(lines)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000", help="rules per family (comma-separated)")
    parser.add_argument("--reps", type=int, default=5, help="runs of each timing (median)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("bench_verify: needs root (network namespaces, iptables, nft)")
        return 1
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)

    def loadavg() -> str:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())

    before = loadavg()
    results = []
    for n in (int(s) for s in args.sizes.split(",") if s.strip()):
        log(f"N={n} rules per family")
        results.append(bench_size(n, max(1, args.reps)))
    after = loadavg()
    if args.json:
        print(
            json.dumps(
                {"sizes": results, "load": [before, after], "cpus": os.cpu_count()}, indent=2
            )
        )
    else:
        print(render(results, (before, after)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
