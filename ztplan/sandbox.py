"""A throwaway gateway to try ztplan on: two network namespaces joined by veth pairs,
and a controller emulator (ZeroTier Central, the self-hosted controller and the member
service, on 127.0.0.1) that already has the example network.

    ztplan-sandbox (the gateway)          ztplan-sandbox-peer (the world)
      eth0 198.51.100.7/24  <--- veth --->  wan0 198.51.100.1/24   (the Internet side:
                                                                    the default route)
      zt0  10.6.6.2/22      <--- veth --->  ztm0 10.6.6.3/22       (a ZeroTier member)
           2001:19f0:6001:1a6::2/80          2001:19f0:6001:1a6::3/80

Built with pyroute2 (veth pairs: this kernel has no `dummy` links). The host's own
namespace is never touched. `ztplan sandbox env` prints the variables that point ztplan at
the emulator (`eval "$(ztplan sandbox env)"`).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from ztplan.errors import ZtplanError
from ztplan.host import NETNS_DIR

__all__ = ["GATEWAY", "PEER", "sandbox_down", "sandbox_env", "sandbox_status", "sandbox_up"]

GATEWAY = "ztplan-sandbox"
PEER = "ztplan-sandbox-peer"
LINKS = (
    # (gateway side, address), (peer side, address)
    (
        ("eth0", ["198.51.100.7/24", "2001:db8:100::7/64"]),
        ("wan0", ["198.51.100.1/24", "2001:db8:100::1/64"]),
    ),
    (
        ("zt0", ["10.6.6.2/22", "2001:19f0:6001:1a6::2/80"]),
        ("ztm0", ["10.6.6.3/22", "2001:19f0:6001:1a6::3/80"]),
    ),
)
UPSTREAM = ("198.51.100.1", "2001:db8:100::1")
"""The gateway's default routes, as a VPS has them: verification copies them."""


RUN_DIR = Path("/run/ztplan-sandbox")
NETWORK = "8056c2e21c000001"
"""The example network of specs/*.yaml, created on the emulator."""


def _emulator_pid() -> int | None:
    try:
        pid = int((RUN_DIR / "emulator.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _start_emulator() -> str:
    """Start the emulator detached (it outlives this command) and return its URL."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    token_file = RUN_DIR / "authtoken.secret"
    if not token_file.exists():
        token_file.touch(mode=0o600)
        token_file.write_text(secrets.token_hex(12))
    log = open(RUN_DIR / "emulator.log", "w")  # noqa: SIM115 - handed to the child
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ztplan.testing.emulator",
            "--port",
            "0",
            "--token-file",
            str(token_file),
            "--network",
            NETWORK,
            "--join",
            NETWORK,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    url = child.stdout.readline().strip()
    if not url.startswith("http://127.0.0.1:"):
        child.kill()
        raise ZtplanError(f"the controller emulator did not start (see {RUN_DIR}/emulator.log)")
    (RUN_DIR / "emulator.pid").write_text(str(child.pid))
    (RUN_DIR / "emulator.url").write_text(url)
    return url


def _stop_emulator() -> None:
    pid = _emulator_pid()
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    for name in ("emulator.pid", "emulator.url", "authtoken.secret", "emulator.log"):
        (RUN_DIR / name).unlink(missing_ok=True)


def _start_ndppd() -> None:
    """ndppd running in the gateway with an empty config, as on a host where it is installed
    but not configured yet: the demo's plan then shows the proxy it adds."""
    from ztplan.host import LocalHost
    from ztplan.ndppd_conf import HEADER
    from ztplan.providers.ndppd import Ndppd

    host = LocalHost(GATEWAY)
    path = host.config_path("/etc/ndppd.conf")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    host.write_file(path, HEADER + "\n")
    Ndppd().restart(host, path)


def _stop_ndppd() -> None:
    """The ndppd that apply started in the sandbox, and the sandbox's config files."""
    import shutil

    from ztplan.host import LocalHost
    from ztplan.providers.ndppd import Ndppd

    if _exists(GATEWAY):
        Ndppd().stop(LocalHost(GATEWAY))
    shutil.rmtree(f"/etc/ztplan/netns/{GATEWAY}", ignore_errors=True)


def sandbox_env() -> str:
    """Shell lines that point ztplan at the sandbox's emulator (Central API, member service)."""
    if _emulator_pid() is None:
        raise ZtplanError(
            "the sandbox's controller emulator is not running", "run `ztplan sandbox up` first"
        )
    url = (RUN_DIR / "emulator.url").read_text().strip()
    token = (RUN_DIR / "authtoken.secret").read_text().strip()
    return "\n".join(
        [
            f"export ZTPLAN_CONTROLLER_URL={url}/api/v1",
            f"export ZEROTIER_CENTRAL_TOKEN={token}",
            f"export ZTPLAN_MEMBER_URL={url}",
            f"export ZTPLAN_MEMBER_TOKEN_FILE={RUN_DIR}/authtoken.secret",
        ]
    )


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def sandbox_up() -> str:
    from pyroute2 import NetNS
    from pyroute2 import netns as pyroute2_netns

    if _exists(GATEWAY):
        if _emulator_pid() is None:
            _start_emulator()
        return f"{GATEWAY} is already up.\n" + sandbox_status()[0]
    try:
        for name in (GATEWAY, PEER):
            if not _exists(name):
                pyroute2_netns.create(name)
        with NetNS(GATEWAY) as gw, NetNS(PEER) as peer:
            for (inside, inside_addrs), (outside, outside_addrs) in LINKS:
                gw.link("add", ifname=inside, kind="veth", peer={"ifname": outside})
                (outside_index,) = gw.link_lookup(ifname=outside)
                gw.link("set", index=outside_index, net_ns_fd=os.path.join(NETNS_DIR, PEER))
                for ns, ifname, addrs in (
                    (gw, inside, inside_addrs),
                    (peer, outside, outside_addrs),
                ):
                    (index,) = ns.link_lookup(ifname=ifname)
                    for cidr in addrs:
                        address, length = cidr.split("/")
                        ns.addr("add", index=index, address=address, prefixlen=int(length))
                    ns.link("set", index=index, state="up")
            for ns in (gw, peer):
                (lo,) = ns.link_lookup(ifname="lo")
                ns.link("set", index=lo, state="up")
            for via in UPSTREAM:
                gw.route("add", dst="default", gateway=via, family=10 if ":" in via else 2)
        if _emulator_pid() is None:
            _start_emulator()
        _start_ndppd()
    except Exception as error:
        sandbox_down()
        raise ZtplanError(
            f"could not build the sandbox: {error}", "ztplan sandbox needs root"
        ) from None
    return f"{GATEWAY} is up.\n" + sandbox_status()[0]


def sandbox_down() -> str:
    from pyroute2 import netns as pyroute2_netns

    removed = []
    if _emulator_pid() is not None:
        removed.append("the controller emulator")
    _stop_emulator()
    _stop_ndppd()
    for name in (GATEWAY, PEER):
        if _exists(name):
            pyroute2_netns.remove(name)  # its veth ends go with it
            removed.append(name)
    return f"removed {', '.join(removed)}" if removed else "the sandbox was not up"


def sandbox_status() -> tuple[str, bool]:
    if not _exists(GATEWAY):
        return f"{GATEWAY}: down (make it with `ztplan sandbox up`)", False
    from pyroute2 import NetNS

    lines = [f"{GATEWAY}: up"]
    with NetNS(GATEWAY) as gw:
        for link in gw.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name == "lo":
                continue
            addrs = [
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in gw.get_addr(index=link["index"])
                if not str(a.get_attr("IFA_ADDRESS")).startswith("fe80")
            ]
            lines.append(f"  {name}: {link.get_attr('IFLA_OPERSTATE')} {' '.join(addrs)}")
    if _emulator_pid() is not None:
        url = (RUN_DIR / "emulator.url").read_text().strip()
        lines.append(f"  controller emulator: {url} (network {NETWORK})")
    else:
        lines.append("  controller emulator: not running")
    from ztplan.host import LocalHost
    from ztplan.providers.ndppd import Ndppd

    pid = Ndppd().pid(LocalHost(GATEWAY))
    lines.append(f"  ndppd: {'running, pid ' + str(pid) if pid else 'not running'}")
    lines.append(
        f'Try: eval "$(ztplan sandbox env)"; ztplan plan specs/gateway.yaml --netns {GATEWAY}'
    )
    return "\n".join(lines), True
