"""Attacks through `--netns` (issue 12): a spec path that leaves the namespace's config
folder, a namespace name that is a path, and host-wide sysctls planned in a namespace and
written to the host. The kernel checks run in namespaces of their own (tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.adversarial.cli import one_error_line, ztplan
from tests.conftest import needs_netns
from tests.unit.fake_host import ReplayHost
from ztplan.errors import LiveReadError, SpecError
from ztplan.host import NETNS_CONFIG_DIR, LocalHost
from ztplan.providers.ndppd import Ndppd
from ztplan.providers.sysctl import Sysctl
from ztplan.spec import parse_spec

ESCAPE = "/etc/../../../../tmp/ztplan-escape-{}.conf"


def ndppd_spec(config: str = "/etc/ndppd.conf", pidfile: str | None = None) -> str:
    pid = f", pidfile: '{pidfile}'" if pidfile else ""
    return f"version: 1\ntarget: {{name: gw1}}\nndppd: {{config: '{config}'{pid}, proxies: []}}\n"


@pytest.mark.parametrize("field", ["config", "pidfile"])
def test_a_spec_path_with_parent_steps_is_refused_at_validate(field: str) -> None:
    bad = ESCAPE.format(os.getpid())
    text = ndppd_spec(config=bad) if field == "config" else ndppd_spec(pidfile=bad)
    with pytest.raises(SpecError) as caught:
        parse_spec(text, "gw.yaml")
    assert str(caught.value) == (
        f"gw.yaml:3: ndppd.{field}: an absolute path without `..` components, got '{bad}'"
    )


def test_validate_refuses_it_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "gw.yaml"
    spec.write_text(ndppd_spec(config=ESCAPE.format("cli")))
    line = one_error_line(ztplan("validate", str(spec), cwd=tmp_path))
    assert "ndppd.config: an absolute path without `..` components" in line


@pytest.mark.parametrize("name", ["../../etc", "..", "a/b", ""])
def test_a_namespace_name_that_is_a_path_is_refused(name: str) -> None:
    """`--netns ../../etc` found /run/netns/../../etc, and /etc/ztplan/netns/../../etc/X
    is the host's /etc/X."""
    with pytest.raises(LiveReadError) as caught:
        LocalHost(name)
    assert "is not a network namespace name" in str(caught.value)


@needs_netns
@pytest.mark.parametrize(
    "path", [ESCAPE.format("host"), "/etc/a/../../../tmp/x", "/etc/..", "/etc/"]
)
def test_config_path_refuses_anything_that_leaves_its_folder(netns: str, path: str) -> None:
    with pytest.raises(LiveReadError) as caught:
        LocalHost(netns).config_path(path)
    assert f"leaves the namespace's config folder {NETNS_CONFIG_DIR}/{netns}/" in str(caught.value)


@needs_netns
def test_config_path_refuses_a_symlink_out_of_its_folder(netns: str, tmp_path: Path) -> None:
    root = Path(NETNS_CONFIG_DIR) / netns
    root.mkdir(parents=True)
    try:
        (root / "ndppd").symlink_to(tmp_path)
        with pytest.raises(LiveReadError):
            LocalHost(netns).config_path("/etc/ndppd/ndppd.conf")
        assert LocalHost(netns).config_path("/etc/ndppd.conf") == f"{root}/ndppd.conf"
    finally:
        (root / "ndppd").unlink()
        root.rmdir()


@needs_netns
def test_the_ndppd_provider_never_writes_outside_even_unvalidated(netns: str) -> None:
    """Defence in depth: a provider built from an unchecked path still cannot escape."""
    target = Path(ESCAPE.format(f"write-{os.getpid()}").replace("/etc/../../../..", ""))
    provider = Ndppd(config=ESCAPE.format(f"write-{os.getpid()}"), use_systemd=False)
    with pytest.raises(LiveReadError):
        provider.read(LocalHost(netns))
    with pytest.raises(LiveReadError):
        provider.apply(LocalHost(netns), [], {})
    assert not target.exists()


# --- sysctls a namespace does not isolate ---------------------------------------------------


@needs_netns
def test_a_host_wide_sysctl_is_refused_in_a_real_namespace(netns: str) -> None:
    """kernel.hostname in a network namespace is the host's: it was planned, and apply would
    have renamed the host."""
    with pytest.raises(LiveReadError) as caught:
        Sysctl(keys=["net.ipv4.ip_forward", "kernel.hostname"]).read(LocalHost(netns))
    assert str(caught.value) == (
        f"sysctl: kernel.hostname: not isolated by the network namespace {netns}: setting it "
        "there would change it for the whole host (with --netns only per-namespace net.* "
        "keys; set host-wide keys on the host)"
    )


@needs_netns
def test_per_namespace_sysctls_are_accepted_in_a_real_namespace(netns: str) -> None:
    keys = ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv4.conf.zt0.rp_filter"]
    snapshot = Sysctl(keys=keys).read(LocalHost(netns))
    assert set(snapshot.resources) == {f'sysctl["{key}"]' for key in keys}


@needs_netns
def test_the_kernel_tells_shared_files_from_per_namespace_ones(netns: str) -> None:
    host = LocalHost(netns)
    assert host.shares_with_host("/proc/sys/kernel/hostname") is True
    assert host.shares_with_host("/proc/sys/net/ipv4/ip_forward") is False
    assert host.shares_with_host("/proc/sys/net/ipv4/conf/zt0/rp_filter") is False  # ns only
    assert LocalHost(None).shares_with_host("/proc/sys/kernel/hostname") is True


def test_a_net_key_the_kernel_shares_is_refused_too() -> None:
    """A net.* table registered once for all namespaces shares one file: the prefix is not
    enough, the kernel's answer decides."""
    path = "/proc/sys/net/netfilter/nf_conntrack_max"
    host = ReplayHost(files={path: "262144\n"}, host_wide=[path])
    host.netns = "gw"
    with pytest.raises(LiveReadError) as caught:
        Sysctl(keys=["net.netfilter.nf_conntrack_max"]).read(host)
    assert "net.netfilter.nf_conntrack_max: not isolated by the network namespace gw" in str(
        caught.value
    )
    host.host_wide.clear()
    assert Sysctl(keys=["net.netfilter.nf_conntrack_max"]).read(host).resources


@needs_netns
def test_plan_in_a_namespace_refuses_a_host_wide_key_in_one_line(
    netns: str, tmp_path: Path
) -> None:
    spec = tmp_path / "gw.yaml"
    spec.write_text("version: 1\ntarget: {name: gw1}\nsysctl: {kernel.hostname: pwned}\n")
    line = one_error_line(ztplan("plan", str(spec), "--netns", netns, cwd=tmp_path))
    assert line.startswith(
        f"Error: sysctl: kernel.hostname: not isolated by the network namespace {netns}"
    )
    assert Path("/proc/sys/kernel/hostname").read_text().strip() != "pwned"


@needs_netns
def test_a_scratch_namespace_left_by_a_killed_run_is_removed_by_the_next(
    tmp_path: Path,
) -> None:
    """A ztplan killed while it normalised left `ztplan-scratch-<pid>-...` behind (one was
    found after the crash runs). The next run that normalises removes those whose process
    is gone, and only those: a live run's scratch namespace stays."""
    import subprocess

    from ztplan.normalise import SCRATCH

    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    names = [f"{SCRATCH}{gone.pid}-dead00", f"{SCRATCH}{alive.pid}-live00"]
    try:
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)
        (tmp_path / "gw.yaml").write_text(
            "version: 1\ntarget: {name: gw1}\n"
            "firewall:\n  ipv4:\n    filter:\n      FORWARD: ['-i zt+ -s 10.6.4.0/22 -j ACCEPT']\n"
        )
        done = ztplan("validate", "gw.yaml", cwd=tmp_path)  # the kernel checks the rule
        assert done.returncode == 0, done.stderr
        left = os.listdir("/run/netns")
        assert names[0] not in left
        assert names[1] in left
    finally:
        alive.kill()
        alive.wait()
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
