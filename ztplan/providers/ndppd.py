"""ndppd: the proxy rules in its config file, and a daemon running that file.

ztplan owns the whole file: it writes it canonically (atomic replace, mode 0644), so the
snapshot compares meaning, not text (comments and spacing are not drift; a hand-added
proxy is). The daemon is systemd's `ndppd.service` on a host with systemd and no
`pidfile` in the spec; otherwise (a namespace, a container, the sandbox) ztplan runs
`ndppd -d -c CONFIG -p PIDFILE` itself and finds it again by its pid file. ndppd 0.2 has
no reload, so a changed file means a restart.

Addresses:
    ndppd.proxy["eth0"]                                  router/timeout/ttl of the proxy
    ndppd.proxy["eth0"].rule["2001:19f0:6001:1a6::/80"]  the rule's method
    ndppd.proxy["eth0"].rules                            the rules' order (it has meaning)
    ndppd.daemon                                         running | stopped | stale
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import JsonValue

from ztplan.address import Address
from ztplan.errors import LiveReadError
from ztplan.host import Host
from ztplan.model import Action, Change, Finding, Resource, Snapshot, digest_of
from ztplan.ndppd_conf import NdppdConf, NdppdConfError, Proxy, Rule, format_ndppd_conf
from ztplan.ndppd_conf import parse_ndppd_conf as parse
from ztplan.spec import Spec

__all__ = ["Ndppd"]


DAEMON = Address("ndppd.daemon")
_PROXY = re.compile(r'ndppd\.proxy\["([^"]+)"\]')


def _proxy_address(interface: str) -> Address:
    return Address.of("ndppd", "proxy").item(interface)


def _rule_address(interface: str, prefix: str) -> Address:
    return _proxy_address(interface).dot("rule").item(prefix)


def rule_method(rule: Rule) -> str:
    return f"iface:{rule.iface}" if rule.method == "iface" else rule.method


def _options(proxy: Proxy) -> dict[str, JsonValue]:
    return {"router": proxy.router, "timeout": proxy.timeout, "ttl": proxy.ttl}


def _spec_conf(spec: Spec) -> NdppdConf:
    assert spec.ndppd is not None
    proxies = []
    for proxy in spec.ndppd.proxies:
        rules = []
        for rule in proxy.rules:
            method, _, iface = rule.method.partition(":")
            rules.append(
                Rule(
                    prefix=str(ipaddress.ip_network(rule.prefix)),
                    method=method,
                    iface=iface or None,
                )
            )
        proxies.append(
            Proxy(
                interface=proxy.interface,
                rules=tuple(rules),
                router=proxy.router,
                timeout=proxy.timeout,
                ttl=proxy.ttl,
            )
        )
    return NdppdConf(proxies=tuple(sorted(proxies, key=lambda p: p.interface)))


def _resources(conf: NdppdConf, owned: bool) -> dict[Address, Resource]:
    out: dict[Address, Resource] = {}
    for proxy in conf.proxies:
        address = _proxy_address(proxy.interface)
        out[address] = Resource(address, _options(proxy), owned=owned)
        order: list[JsonValue] = [
            str(ipaddress.ip_network(r.prefix, strict=False)) for r in proxy.rules
        ]
        out[address.dot("rules")] = Resource(
            address.dot("rules"),
            order,
            owned=False,
            relative_order=True,
            members=address.dot("rule"),
        )
        for rule, prefix in zip(proxy.rules, order, strict=True):
            rule_address = _rule_address(proxy.interface, str(prefix))
            out[rule_address] = Resource(rule_address, rule_method(rule), owned=owned)
    return out


def _changed(before: Snapshot, changes: Sequence[Change]) -> dict[Address, JsonValue]:
    """The live resource values with `changes` made: what the file holds after apply. A
    new rule goes right after the rule it `follows` in its proxy's order."""
    values: dict[Address, JsonValue] = {a: r.value for a, r in before.resources.items()}
    for change in changes:
        if change.action is Action.DELETE:
            values.pop(change.address, None)
        else:
            values[change.address] = change.after
    for change in changes:
        proxy = _PROXY.match(change.address)
        if change.action is not Action.CREATE or proxy is None or change.follows is None:
            continue
        key = change.address.key
        if key is None or change.address.names[-1:] != ("rule",):
            continue
        order_at = _proxy_address(proxy.group(1)).dot("rules")
        order = [str(p) for p in _as_list(values.get(order_at))]
        if key not in order:
            order.insert(order.index(change.follows) + 1 if change.follows in order else 0, key)
        values[order_at] = list[JsonValue](order)
    for address in [a for a in values if a.names[-1:] == ("rules",)]:
        proxy = _PROXY.match(address)
        interface = proxy.group(1) if proxy else ""
        kept = [p for p in _as_list(values[address]) if _rule_address(interface, str(p)) in values]
        values[address] = kept
    return values


def _as_list(value: JsonValue | None) -> list[JsonValue]:
    return value if isinstance(value, list) else []


def _to_conf(desired: Mapping[Address, JsonValue]) -> NdppdConf:
    """Resource values back into a config (apply writes the whole file)."""
    proxies = []
    for address, options in desired.items():
        match = _PROXY.fullmatch(address)
        if match is None:
            continue
        interface = match.group(1)
        order = desired.get(address.dot("rules"))
        rules = []
        for prefix in order if isinstance(order, list) else []:
            method, _, iface = str(desired[_rule_address(interface, str(prefix))]).partition(":")
            rules.append(Rule(prefix=str(prefix), method=method, iface=iface or None))
        opts: dict[str, Any] = options if isinstance(options, dict) else {}
        proxies.append(
            Proxy(
                interface=interface,
                rules=tuple(rules),
                router=opts.get("router"),
                timeout=opts.get("timeout"),
                ttl=opts.get("ttl"),
            )
        )
    return NdppdConf(proxies=tuple(sorted(proxies, key=lambda p: p.interface)))


class Ndppd:
    name: ClassVar[str] = "ndppd"

    def __init__(
        self,
        config: str = "/etc/ndppd.conf",
        pidfile: str | None = None,
        use_systemd: bool | None = None,
    ) -> None:
        self.config = config
        self.pidfile = pidfile
        self.use_systemd = use_systemd
        """None: decide per host (systemd present, no netns, no pidfile in the spec)."""

    def manages(self, spec: Spec) -> bool:
        return spec.ndppd is not None

    # --- where things are -------------------------------------------------------------

    def _config(self, host: Host) -> str:
        return host.config_path(self.config)

    def _pidfile(self, host: Host) -> str:
        if self.pidfile:
            return self.pidfile
        return f"/run/ztplan-ndppd-{host.netns}.pid" if host.netns else "/run/ztplan-ndppd.pid"

    def _systemd(self, host: Host) -> bool:
        if self.use_systemd is not None:
            return self.use_systemd
        return host.netns is None and self.pidfile is None and os.path.isdir("/run/systemd/system")

    # --- the contract -----------------------------------------------------------------

    def desired(self, spec: Spec) -> dict[Address, Resource]:
        out = _resources(_spec_conf(spec), owned=True)
        out[DAEMON] = Resource(DAEMON, "running")
        return out

    def read(self, host: Host) -> Snapshot:
        path = self._config(host)
        text = host.read_file(path)
        try:
            conf = parse(text) if text is not None else NdppdConf(proxies=())
        except NdppdConfError as error:
            raise LiveReadError(
                self.name, f"{path}: {error}", "fix or remove the file; ztplan rewrites it on apply"
            ) from None
        resources = _resources(conf, owned=True)
        daemon = self._daemon_state(host, path, conf)
        resources[DAEMON] = Resource(DAEMON, daemon, owned=False)
        raw = {"path": path, "text": text, "daemon": daemon, "interfaces": sorted(host.addresses())}
        return Snapshot.of(resources, raw=raw)

    def check(self, spec: Spec, snapshot: Snapshot) -> list[Finding]:
        if spec.ndppd is None:
            return []
        findings = []
        raw = snapshot.raw if isinstance(snapshot.raw, dict) else {}
        interfaces = set(raw.get("interfaces", []))
        v6_routes = [
            ipaddress.IPv6Network(r.target)
            for n in spec.networks
            for r in n.routes or []
            if ipaddress.ip_network(r.target).version == 6
        ]
        for proxy in spec.ndppd.proxies:
            if interfaces and proxy.interface not in interfaces:
                findings.append(
                    Finding(
                        severity="error",
                        address=_proxy_address(proxy.interface),
                        message=f"no interface {proxy.interface} in the target namespace",
                    )
                )
            for rule in proxy.rules:
                address = _rule_address(proxy.interface, rule.prefix)
                prefix = ipaddress.IPv6Network(rule.prefix)
                if rule.method == "auto":
                    findings.append(
                        Finding(
                            severity="warning",
                            address=address,
                            message="method auto depends on the kernel's routes and was seen to be "
                            "flaky in the guide; use static or iface:<zerotier interface>",
                        )
                    )
                iface = rule.method.partition(":")[2]
                if iface and interfaces and iface not in interfaces:
                    findings.append(
                        Finding(
                            severity="error",
                            address=address,
                            message=f"no interface {iface} in the target namespace",
                        )
                    )
                if v6_routes and not any(prefix.subnet_of(r) for r in v6_routes if r.prefixlen):
                    findings.append(
                        Finding(
                            severity="error",
                            address=address,
                            message=f"{prefix} is outside the network's IPv6 routes "
                            f"({', '.join(map(str, v6_routes))}): ndppd would answer for addresses "
                            "the members do not have",
                        )
                    )
        return findings

    def apply(self, host: Host, changes: Sequence[Change], before: Snapshot) -> None:
        path = self._config(host)
        if any(c.address != DAEMON for c in changes):
            text = format_ndppd_conf(_to_conf(_changed(before, changes)))
            try:
                host.write_file(path, text, 0o644)
            except OSError as error:
                raise LiveReadError(self.name, f"cannot write {path} ({error.strerror})") from None
        self.restart(host, path)

    def rollback(self, host: Host, before: Snapshot, changes: Sequence[Change]) -> None:
        """ztplan owns the whole file: put it back as it was, and the daemon as it was."""
        raw = before.raw if isinstance(before.raw, dict) else {}
        path = str(raw.get("path", self._config(host)))
        text = raw.get("text")
        if text is None:
            host.remove_file(path)
        else:
            host.write_file(path, str(text), 0o644)
        if raw.get("daemon") == "stopped":
            self.stop(host)
        else:
            self.restart(host, path)

    # --- the daemon ---------------------------------------------------------------------

    def pid(self, host: Host) -> int | None:
        """The pid of the daemon ztplan runs, if it runs."""
        text = host.read_file(self._pidfile(host))
        try:
            pid = int((text or "").strip())
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"ndppd" not in handle.read():
                    return None  # a recycled pid
        except (ValueError, OSError):
            return None
        return pid

    def _loaded_path(self, host: Host) -> str:
        """Beside the pid file: the digest of the config's meaning the daemon was started
        with, so a file rewritten with the same meaning (comments, spacing) is not stale."""
        return self._pidfile(host) + ".ztplan"

    def _daemon_state(self, host: Host, path: str, conf: NdppdConf) -> str:
        if self._systemd(host):
            done = host.run(["systemctl", "is-active", "--quiet", "ndppd"])
            return "running" if done.returncode == 0 else "stopped"
        if self.pid(host) is None:
            return "stopped"
        loaded = host.read_file(self._loaded_path(host))
        if loaded is not None:
            return "running" if loaded.strip() == digest_of(repr(conf)) else "stale"
        try:  # started by someone else: the pid file is written when ndppd starts
            if os.stat(path).st_mtime > os.stat(self._pidfile(host)).st_mtime:
                return "stale"
        except OSError:
            pass
        return "running"

    def stop(self, host: Host) -> None:
        """Stop the daemon ztplan runs (or systemd's)."""
        if self._systemd(host):
            host.run(["systemctl", "stop", "ndppd"])
            return
        pid = self.pid(host)
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.02)
        host.remove_file(self._pidfile(host))
        host.remove_file(self._loaded_path(host))

    def restart(self, host: Host, path: str) -> None:
        """(Re)start the daemon on `path`; ndppd 0.2 has no reload."""
        if self._systemd(host):
            done = host.run(["systemctl", "restart", "ndppd"])
            if done.returncode != 0:
                raise LiveReadError(
                    self.name, f"systemctl restart ndppd failed: {done.stderr.strip()}"
                )
            return
        self.stop(host)
        pidfile = self._pidfile(host)
        done = host.run(["ndppd", "-d", "-c", path, "-p", pidfile])
        for _ in range(100):  # ndppd forks; the pid file appears once it runs
            if self.pid(host) is not None:
                text = host.read_file(path)
                try:
                    loaded = digest_of(repr(parse(text or "")))
                except NdppdConfError:
                    loaded = "unparsable"
                host.write_file(self._loaded_path(host), loaded + "\n", 0o644)
                return
            time.sleep(0.02)
        raise LiveReadError(
            self.name,
            f"ndppd did not start with {path}: "
            f"{(done.stderr or done.stdout).strip()[-300:] or 'no pid file'}",
        )
