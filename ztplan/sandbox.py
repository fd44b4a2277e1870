"""A throwaway gateway to try ztplan on: two network namespaces joined by veth pairs.

    ztplan-sandbox (the gateway)          ztplan-sandbox-peer (the world)
      eth0 198.51.100.7/24  <--- veth --->  wan0 198.51.100.1/24   (the Internet side)
      zt0  10.6.6.2/22      <--- veth --->  ztm0 10.6.6.3/22       (a ZeroTier member)

Built with pyroute2 (veth pairs: this kernel has no `dummy` links). The host's own
namespace is never touched.
"""

from __future__ import annotations

import os

from ztplan.errors import ZtplanError
from ztplan.host import NETNS_DIR

__all__ = ["GATEWAY", "PEER", "sandbox_down", "sandbox_status", "sandbox_up"]

GATEWAY = "ztplan-sandbox"
PEER = "ztplan-sandbox-peer"
LINKS = (
    # (gateway side, address), (peer side, address)
    (
        ("eth0", ["198.51.100.7/24", "2001:db8:100::7/64"]),
        ("wan0", ["198.51.100.1/24", "2001:db8:100::1/64"]),
    ),
    (("zt0", ["10.6.6.2/22"]), ("ztm0", ["10.6.6.3/22"])),
)


def _exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def sandbox_up() -> str:
    from pyroute2 import NetNS
    from pyroute2 import netns as pyroute2_netns

    if _exists(GATEWAY):
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
    except Exception as error:
        sandbox_down()
        raise ZtplanError(
            f"could not build the sandbox: {error}", "ztplan sandbox needs root"
        ) from None
    return f"{GATEWAY} is up.\n" + sandbox_status()[0]


def sandbox_down() -> str:
    from pyroute2 import netns as pyroute2_netns

    removed = []
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
    lines.append(f"Try: ztplan plan specs/gateway.yaml --netns {GATEWAY}")
    return "\n".join(lines), True
