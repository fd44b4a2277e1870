"""ztplan.importer without a kernel: recorded dumps and files in (a replaying host), the
imported spec out; the imported spec in, the exact adoption transaction out."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import httpx
import pytest

from tests.unit.fake_host import FIXTURES, ReplayHost
from ztplan.api import ApiClient
from ztplan.errors import LiveReadError, SpecError, ZtplanError
from ztplan.host import CommandResult
from ztplan.importer import adopt_rules, import_spec
from ztplan.normalise import SpecRule
from ztplan.providers.sysctl import key_path
from ztplan.spec import Controller, Spec, parse_spec

CASE = FIXTURES / "import" / "docker_gateway"
SAVES = ("iptables-save", "ip6tables-save")
SYSCTLS = {
    "net.ipv4.ip_forward": "1\n",
    "net.ipv6.conf.all.forwarding": "1\n",
    "net.ipv4.conf.all.rp_filter": "2\n",
}
NWID = "8056c2e21c000001"


def dumps(v4: str = "", v6: str = "") -> dict[tuple[str, ...], str | CommandResult]:
    """What the replaying host answers to `iptables-save` and `ip6tables-save`."""
    return {("iptables-save",): v4, ("ip6tables-save",): v6}


EMPTY_DUMPS = dumps()


def docker_gateway(netns: str | None = "gw") -> ReplayHost:
    """A gateway built by hand on a host that also runs Docker, fail2ban, libvirt, ..."""
    outputs = dumps(*((CASE / f"{tool}.txt").read_text() for tool in SAVES))
    files = {key_path(key): value for key, value in SYSCTLS.items()}
    host = ReplayHost(outputs, files | {"/etc/ndppd.conf": (CASE / "ndppd.conf").read_text()})
    host.netns = netns
    return host


def body(text: str) -> str:
    """The import without its first two lines (host name, then the time)."""
    return text.split("\n", 2)[2]


def as_written(
    family: str, rules: Sequence[SpecRule], chains: Mapping[str, set[str]]
) -> list[tuple[str, tuple[str, ...]]]:
    """A normaliser for rules already in the kernel's spelling (what import writes)."""
    return [(rule, ()) for _, _, _, rule, _ in rules]


def test_docker_gateway_imports_as_recorded() -> None:
    text = import_spec(docker_gateway(), target="gw1")
    assert text.startswith("# Imported by `ztplan import` from host ")
    assert ", network namespace gw\n# at 20" in text
    assert body(text) == (CASE / "expected.yaml").read_text()


def test_import_is_a_valid_spec_without_other_tools_rules() -> None:
    spec = parse_spec(import_spec(docker_gateway(), target="gw1"), "imported.yaml")
    assert spec.firewall is not None and spec.firewall.ipv4 and spec.firewall.ipv6
    v4, v6 = spec.firewall.ipv4, spec.firewall.ipv6
    assert v4.filter and v4.nat and v4.mangle and v6.filter
    assert v4.raw is None  # a table with nothing in it is not written
    assert v4.filter.policy == {"FORWARD": "DROP"} and v6.filter.policy == {"FORWARD": "DROP"}
    assert list(v4.filter.chains) == ["INPUT", "FORWARD", "ZT-IN"]  # no EMPTY-CHAIN either
    assert v4.filter.chains["FORWARD"].rules == [
        "-s 10.6.4.0/22 -i zt+ -j ACCEPT",  # was tagged: written untagged
        "-d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT",
    ]
    assert v4.nat.chains["POSTROUTING"].rules == [
        "-s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7",
    ]
    assert v6.filter.chains["FORWARD"].rules == [  # the tagged twin is there once
        "-s 2001:19f0:6001:1a6::/64 -i zt+ -j ACCEPT",
        "-d 2001:19f0:6001:1a6::/64 -i eth0 -j ACCEPT",
    ]
    assert spec.sysctl == {
        "net.ipv4.ip_forward": 1,
        "net.ipv6.conf.all.forwarding": 1,
        "net.ipv4.conf.all.rp_filter": 2,
    }
    assert spec.ndppd is not None
    assert spec.ndppd.model_dump(exclude_none=True) == {
        "config": "/etc/ndppd.conf",
        "proxies": [
            {
                "interface": "eth0",
                "router": False,
                "timeout": 500,
                "rules": [
                    {"prefix": "2001:19f0:6001:1a6::/80", "method": "static"},
                    {"prefix": "2001:19f0:6001:1a6:1::/80", "method": "iface:zt0"},
                ],
            }
        ],
    }


def test_other_tools_rules_are_named_in_the_header_and_absent_below() -> None:
    text = import_spec(docker_gateway(), target="gw1")
    header, spec_text = text.split("\nversion: 1\n")
    for line in (
        "#   ipv4 filter FORWARD: -j DOCKER-USER  (jumps to DOCKER-USER: Docker)",
        "#   ipv4 filter FORWARD: -i docker0 ! -o docker0 -j ACCEPT  (Docker's interface docker0)",
        "#   ipv4 filter FORWARD: -o br-0123456789ab -j DOCKER  (jumps to DOCKER: Docker)",
        "#   ipv4 filter DOCKER-ISOLATION-STAGE-1: whole chain, 2 rule(s) (Docker)",
        "#   ipv4 filter f2b-sshd: whole chain, 2 rule(s) (fail2ban)",
        "#   ipv4 filter LOG-BANNED: whole chain, 2 rule(s) (reached only from rules left out)",
        "#   ipv4 nat PREROUTING: -m addrtype --dst-type LOCAL -j DOCKER  "
        "(jumps to DOCKER: Docker)",
        "#   ipv4 nat POSTROUTING: -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 "
        "-j MASQUERADE  (Docker's NAT for a published port)",
    ):
        assert line in header.splitlines()
    for foreign in (
        "DOCKER",
        "docker0",
        "f2b-",
        "KUBE-",
        "LIBVIRT_",
        "ufw-",
        "LOG-BANNED",
        "--comment ztplan",
    ):
        assert foreign not in spec_text
    assert "# Not ztplan's yet: 9 rule(s) stand outside ztplan's own chains." in header
    assert "#   ndppd: keepalive, route-ttl in /etc/ndppd.conf: no spec field" in header


def test_import_twice_is_the_same_text_apart_from_the_time() -> None:
    first, second = (import_spec(docker_gateway(), target="gw1").splitlines() for _ in "12")
    assert first[1].startswith("# at ") and second[1].startswith("# at ")
    assert first[:1] + first[2:] == second[:1] + second[2:]


def test_sysctls_the_namespace_lacks_are_skipped_and_rp_filter_0_is_the_default() -> None:
    host = ReplayHost(
        EMPTY_DUMPS,
        {key_path("net.ipv4.ip_forward"): "0\n", key_path("net.ipv4.conf.all.rp_filter"): "0\n"},
    )
    spec = parse_spec(import_spec(host, target="gw1"), "s.yaml")
    assert spec.sysctl == {"net.ipv4.ip_forward": 0}
    assert spec.firewall is None and spec.ndppd is None  # no rules, no ndppd.conf


def test_an_ndppd_conf_ndppd_would_misread_is_an_error_with_its_line() -> None:
    host = ReplayHost(EMPTY_DUMPS, {"/etc/ndppd.conf": "proxy eth0 {\n    router yes;\n}\n"})
    with pytest.raises(LiveReadError, match=r"/etc/ndppd.conf: line 2: 'router' needs yes/no"):
        import_spec(host, target="gw1")


def test_ndppd_pidfile_is_written_when_given() -> None:
    spec = parse_spec(
        import_spec(docker_gateway(), target="gw1", ndppd_pidfile="/run/ndppd-gw.pid"), "s"
    )
    assert spec.ndppd is not None and spec.ndppd.pidfile == "/run/ndppd-gw.pid"


def test_a_failing_save_is_a_live_read_error() -> None:
    failed = CommandResult(("iptables-save",), 1, "", "iptables-save: Permission denied")
    host = ReplayHost({("iptables-save",): failed, ("ip6tables-save",): ""})
    with pytest.raises(LiveReadError, match="iptables-save failed: iptables-save: Permission"):
        import_spec(host, target="gw1")


def test_rules_and_chains_a_spec_cannot_hold_are_left_out() -> None:
    dump = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        ':policy - [0:0]\n-A INPUT -j policy\n-A INPUT -m comment --comment "-F" -j ACCEPT\n'
        "-A policy -j ACCEPT\nCOMMIT\n"
    )
    text = import_spec(ReplayHost(dumps(dump)), target="g")
    assert (
        "#   ipv4 filter policy: whole chain, 1 rule(s) (a chain name a spec cannot hold)" in text
    )
    assert "#   ipv4 filter INPUT: -j policy  (jumps to policy: a chain name" in text
    assert '#   ipv4 filter INPUT: -m comment --comment "-F" -j ACCEPT  (cannot be written' in text
    assert "firewall" not in body(text)


def test_controller_networks_are_read_and_no_token_is_written() -> None:
    network = {
        "id": NWID,
        "routes": [
            {"target": "10.6.4.0/22", "via": None},
            {"target": "0.0.0.0/0", "via": "10.6.6.2"},
        ],
        "ipAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.7.254"}],
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json=network)

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        api = ApiClient("http://ctl", {"X-ZT1-Auth": "s3cret"}, client, sleep=lambda s: None)
        controller = Controller(kind="local", url="http://ctl", token_env="ZT_TOKEN")
        text = import_spec(
            ReplayHost(EMPTY_DUMPS), target="gw1", networks=[NWID], controller=controller, api=api
        )
    assert seen == [f"GET /controller/network/{NWID}"]  # read only
    assert "s3cret" not in text
    spec = parse_spec(text, "s.yaml")
    assert spec.controller == controller
    assert json.loads(spec.model_dump_json(include={"networks"}, exclude_none=True)) == {
        "networks": [
            {
                "id": NWID,
                "routes": [{"target": "0.0.0.0/0", "via": "10.6.6.2"}, {"target": "10.6.4.0/22"}],
                "ip_pools": [{"start": "10.6.4.1", "end": "10.6.7.254"}],
            }
        ]
    }


def test_a_live_network_that_validate_refuses_is_imported_with_its_problems_named() -> None:
    """A controller holds what ztplan refuses (it never refuses them itself): a pool outside
    every route, a route twice. The import is still written, as the network is, with each
    problem in the header; `validate` then names the same lines, for the user to fix."""
    network = {
        "id": NWID,
        "routes": [
            {"target": "10.6.4.0/22", "via": None},
            {"target": "10.6.4.0/22", "via": None},
        ],
        "ipAssignmentPools": [{"ipRangeStart": "10.9.0.1", "ipRangeEnd": "10.9.0.9"}],
    }
    with httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=network))
    ) as c:
        api = ApiClient("http://ctl", {"X-ZT1-Auth": "s3cret"}, c, sleep=lambda s: None)
        controller = Controller(kind="local", url="http://ctl", token_env="ZT_TOKEN")
        text = import_spec(
            ReplayHost(EMPTY_DUMPS), target="gw1", networks=[NWID], controller=controller, api=api
        )
    with pytest.raises(SpecError) as refused:
        parse_spec(text, "imported.yaml")
    problems = refused.value.lines()
    assert len(problems) == 2
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert "# Fix before applying (the controller holds what ztplan refuses):" in header
    for problem in problems:  # the same problems, at the same lines of the same text
        assert f"#   line {problem.removeprefix('imported.yaml:')}" in header
    assert "routes:" in text and "10.9.0.1" in text  # the network as it is


def test_networks_need_a_controller_and_an_api() -> None:
    with pytest.raises(ZtplanError, match="need their controller"):
        import_spec(ReplayHost(EMPTY_DUMPS), target="gw1", networks=[NWID])


def imported(host: ReplayHost) -> Spec:
    return parse_spec(import_spec(host, target="gw1"), "imported.yaml")


def test_adoption_moves_each_rule_into_the_own_chain_in_one_restore_per_family() -> None:
    host = docker_gateway()
    spec = imported(host)
    host.outputs |= {("iptables-restore", "--noflush"): "", ("ip6tables-restore", "--noflush"): ""}
    adopted = adopt_rules(host, spec, as_written)
    assert len(adopted) == 9
    restores = {argv[0]: text or "" for argv, text in host.calls if argv[1:] == ("--noflush",)}
    ssh = '-s 198.51.100.0/24 -p tcp -m tcp --dport 22 -m comment --comment "ssh from admin net"'
    state = "-d 10.6.4.0/22 -i eth0 -m state --state RELATED,ESTABLISHED -j ACCEPT"
    mss = "-o eth0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    jump = '-m comment --comment "ztplan:gw1" -j ZT-gw1.'
    assert restores["iptables-restore"].splitlines() == [
        "*filter",
        ":ZT-gw1.INPUT - [0:0]",
        ":ZT-gw1.FORWARD - [0:0]",
        ":ZT-gw1.ZT-IN - [0:0]",
        # ztplan 0.1's tagged rule moves too, as its plan would move it:
        "-D FORWARD -s 10.6.4.0/22 -i zt+ -m comment --comment ztplan -j ACCEPT",
        "-A ZT-gw1.INPUT -i zt+ -j ZT-gw1.ZT-IN",  # the user chain is the target's own now
        f"-A ZT-gw1.INPUT {ssh} -j ACCEPT",
        "-A ZT-gw1.FORWARD -s 10.6.4.0/22 -i zt+ -j ACCEPT",
        f"-A ZT-gw1.FORWARD {state}",
        "-A ZT-gw1.ZT-IN -p udp -m udp --dport 53 -j ACCEPT",
        "-A ZT-gw1.ZT-IN -p icmp -j ACCEPT",
        f"-I INPUT 1 {jump}INPUT",
        f"-I FORWARD 1 {jump}FORWARD",
        "-D INPUT -i zt+ -j ZT-IN",
        f"-D INPUT {ssh} -j ACCEPT",
        f"-D FORWARD {state}",
        "-D ZT-IN -p udp -m udp --dport 53 -j ACCEPT",
        "-D ZT-IN -p icmp -j ACCEPT",
        "-F ZT-IN",  # every rule and every jump of it moved: the hand-made chain goes
        "-X ZT-IN",
        "COMMIT",
        "*nat",
        ":ZT-gw1.POSTROUTING - [0:0]",
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7",
        f"-I POSTROUTING 1 {jump}POSTROUTING",
        "-D POSTROUTING -s 10.6.4.0/22 -d 10.6.4.0/22 -j RETURN",
        "-D POSTROUTING -s 10.6.4.0/22 -j SNAT --to-source 198.51.100.7",
        "COMMIT",
        "*mangle",
        ":ZT-gw1.FORWARD - [0:0]",
        f"-A ZT-gw1.FORWARD {mss}",
        f"-I FORWARD 1 {jump}FORWARD",
        f"-D FORWARD {mss}",
        "COMMIT",
    ]
    tagged = "-s 2001:19f0:6001:1a6::/64 -i zt+ -m comment --comment ztplan -j ACCEPT"
    assert restores["ip6tables-restore"].splitlines() == [
        "*filter",
        ":ZT-gw1.FORWARD - [0:0]",
        f"-D FORWARD {tagged}",  # there twice: both copies go
        f"-D FORWARD {tagged}",
        "-A ZT-gw1.FORWARD -s 2001:19f0:6001:1a6::/64 -i zt+ -j ACCEPT",
        "-A ZT-gw1.FORWARD -d 2001:19f0:6001:1a6::/64 -i eth0 -j ACCEPT",
        f"-I FORWARD 1 {jump}FORWARD",
        "-D FORWARD -d 2001:19f0:6001:1a6::/64 -i eth0 -j ACCEPT",
        "COMMIT",
    ]
    assert adopted[0] == 'firewall.ipv4.filter.INPUT["-i zt+ -j ZT-IN"]'


def test_adoption_deletes_a_first_release_chain_that_the_move_empties() -> None:
    """A hand-made rule beside ztplan 0.1's ZT-IN (tagged rules, a tagged jump): adopting
    it moves 0.1's rules too and, in the same transaction, deletes the chain they leave
    empty, as a plan would; nothing of 0.1's is left behind."""
    tag = "-m comment --comment ztplan"
    dump = (
        "*filter\n:INPUT ACCEPT [0:0]\n:ZT-IN - [0:0]\n-A INPUT -p tcp -j ACCEPT\n"
        f"-A INPUT -i zt+ {tag} -j ZT-IN\n-A ZT-IN -p icmp {tag} -j ACCEPT\nCOMMIT\n"
    )
    host = ReplayHost(dumps(dump))
    spec = parse_spec(
        "version: 1\ntarget: {name: gw1}\nfirewall:\n  ipv4:\n    filter:\n"
        "      INPUT: ['-p tcp -j ACCEPT', '-i zt+ -j ZT-IN']\n"
        "      ZT-IN: ['-p icmp -j ACCEPT']\n",
        "gw1.yaml",
    )
    host.outputs[("iptables-restore", "--noflush")] = ""
    adopt_rules(host, spec, as_written)
    restore = next(text for argv, text in host.calls if argv[0] == "iptables-restore") or ""
    lines = restore.splitlines()
    assert lines.count("-X ZT-IN") == 1
    assert lines.index(f"-D ZT-IN -p icmp {tag} -j ACCEPT") < lines.index("-X ZT-IN")
    assert lines.index(f"-D INPUT -i zt+ {tag} -j ZT-IN") < lines.index("-X ZT-IN")


def test_adoption_when_everything_is_in_own_chains_runs_no_restore() -> None:
    dump = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.6.4.0/22 -j MASQUERADE\nCOMMIT\n"
    host = ReplayHost(dumps(dump))
    spec = imported(host)
    moved = (
        "*nat\n:POSTROUTING ACCEPT [0:0]\n:ZT-gw1.POSTROUTING - [0:0]\n"
        '-A POSTROUTING -m comment --comment "ztplan:gw1" -j ZT-gw1.POSTROUTING\n'
        "-A ZT-gw1.POSTROUTING -s 10.6.4.0/22 -j MASQUERADE\nCOMMIT\n"
    )
    host.outputs[("iptables-save",)] = moved  # as after a first adoption
    assert adopt_rules(host, spec, as_written) == []  # a restore would fail: none is recorded


def test_a_failing_adoption_says_nothing_was_adopted() -> None:
    dump = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -s 10.6.4.0/22 -j MASQUERADE\nCOMMIT\n"
    host = ReplayHost(dumps(dump))
    spec = imported(host)
    host.outputs[("iptables-restore", "--noflush")] = CommandResult(
        ("iptables-restore", "--noflush"), 1, "", "iptables-restore: line 2 failed"
    )
    with pytest.raises(LiveReadError, match="line 2 failed; none adopted"):
        adopt_rules(host, spec, as_written)


REFUSED = {
    "id": NWID,
    "routes": [{"target": "10.6.4.0/22", "via": None}, {"target": "10.6.4.0/22", "via": None}],
    "ipAssignmentPools": [{"ipRangeStart": "10.9.0.1", "ipRangeEnd": "10.9.0.9"}],
}


def imported_with(comment: str, network: Mapping[str, object] = REFUSED) -> str:
    """The import of a host with one left-out rule commented `comment`, and `network`."""
    v4 = (
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        f'-A INPUT -m comment --comment "{comment}" -j ACCEPT\nCOMMIT\n'
    )
    host = ReplayHost(dumps(v4))
    answer = httpx.MockTransport(lambda r: httpx.Response(200, json=dict(network)))
    with httpx.Client(transport=answer) as client:
        api = ApiClient("http://ctl", {"X-ZT1-Auth": "s3cret"}, client, sleep=lambda s: None)
        controller = Controller(kind="local", url="http://ctl", token_env="ZT_TOKEN")
        return import_spec(host, target="gw1", networks=[NWID], controller=controller, api=api)


@pytest.mark.parametrize("comment", ["plain", "x" * 200, "a\u2028b", "a\x85b", "a\u2029b"])
def test_each_line_the_header_names_is_the_line_validate_names(comment: str) -> None:
    """Whatever a left-out rule's comment holds (YAML also ends lines at U+0085, U+2028,
    U+2029), `line N` in the header is the line validate and an editor show."""
    text = imported_with(comment)
    said = sorted(
        int(m.group(1)) for line in text.split("\n") if (m := re.match(r"#   line (\d+):", line))
    )
    with pytest.raises(SpecError) as refused:
        parse_spec(text, "imported.yaml")
    assert said == sorted(int(line.split(":")[1]) for line in refused.value.lines())
    assert len(said) == 2
    for n in said:
        assert "10." in text.split("\n")[n - 1], (n, text.split("\n")[n - 1])


def test_a_live_rule_comment_cannot_put_spec_content_in_the_header() -> None:
    """Text after a U+2028 in a left-out rule's comment was read as spec, though an editor
    and grep show it on a `#` line."""
    clean = {
        "id": NWID,
        "routes": [{"target": "10.6.4.0/22", "via": None}],
        "ipAssignmentPools": [{"ipRangeStart": "10.6.4.1", "ipRangeEnd": "10.6.4.9"}],
    }
    text = imported_with("x\u2028persist: redhat\u2028#", clean)
    assert all(line.startswith("#") for line in text.split("\n") if "persist" in line)
    assert parse_spec(text, "imported.yaml").persist == "none"
