"""Helpers for BGP tests and benchmarks on a namespace topology (no pytest in here).

    lab = BgpLab(topo, tmp_path)                 # sqlite datastore in tmp_path
    lab.add_pool("10.65.0.0/16")
    lab.add_node(topo.add_node("n1"))            # Node resource with spec.bgp.ipv4Address
    ip = lab.assign_ip("n1")                     # real IPAM: claims a /26 block for n1
    lab.start("n1")                              # python -m tabby.bgp.run inside n1's netns
    lab.wait_established("n1", 2)
    lab.routes("n2")                             # {"10.65.3.0/26": "172.31.0.10", ...}

The topology object is duck-typed (tabby.lab.topology.Topology): bgp sits above lab in the
package order, so it is not imported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tabby.bgp.status import BgpStatus, collect_status
from tabby.datastore import open_datastore
from tabby.datastore.client import ResourceClient
from tabby.resources import from_dict

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll until check() returns something truthy; TimeoutError names `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def kernel_routes(netns: str, proto: str | None = "bird", version: int = 4) -> dict[str, str]:
    """dst -> next hop (or route type, e.g. 'blackhole') of a namespace's main table."""
    argv = ["ip", f"-{version}", "-n", netns, "-j", "route", "show"]
    if proto:
        argv += ["proto", proto]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    routes = {}
    for r in json.loads(out or "[]"):
        dst = r.get("dst", "")
        if dst and "/" not in dst and dst != "default":
            dst += "/32" if version == 4 else "/128"
        routes[dst] = r.get("gateway") or (r.get("type") if r.get("type") != "unicast" else r.get("dev", ""))
    return routes


class BgpLab:
    """A datastore plus one `tabby.bgp.run` per node namespace, on a Topology."""

    def __init__(self, topo: Any, workdir: str | Path, as_number: int | None = None) -> None:
        self.topo = topo
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite://{self.workdir / 'tabby.db'}"
        self.ds = open_datastore(self.url)
        self.client = ResourceClient(self.ds)
        self.procs: dict[str, Any] = {}
        self.secret_dir = self.workdir / "secrets"  # <secret>/<key> files, as a mounted Secret
        self.nodes: dict[str, Any] = {}
        if as_number is not None:
            self.apply({"kind": "BGPConfiguration", "metadata": {"name": "default"},
                        "spec": {"asNumber": as_number}})

    # -- datastore --------------------------------------------------------------------------
    def apply(self, doc: dict[str, Any]) -> None:
        doc = {"apiVersion": "projectcalico.org/v3", **doc}
        self.client.apply(from_dict(doc))

    def delete(self, kind: str, name: str) -> None:
        self.client.delete(kind, name)

    def put_raw(self, key: str, value: dict[str, Any]) -> None:
        """Write a value without validation (to store something invalid on purpose)."""
        raw = json.dumps(value).encode()
        kv = self.ds.get(key)
        if kv is None:
            self.ds.create(key, raw)
        else:
            self.ds.update(key, raw, kv.mod_revision)

    def add_secret(self, name: str, key: str, value: str) -> None:
        (self.secret_dir / name).mkdir(parents=True, exist_ok=True)
        (self.secret_dir / name / key).write_text(value)

    def add_pool(self, cidr: str, name: str = "pool1", **spec: Any) -> None:
        self.apply({"kind": "IPPool", "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})

    def add_node(self, node: Any, labels: dict[str, str] | None = None, **bgp: Any) -> None:
        """A Node resource for a topology node, spec.bgp.ipv4Address = its underlay address."""
        self.nodes[node.name] = node
        meta: dict[str, Any] = {"name": node.name}
        if labels:
            meta["labels"] = labels
        self.apply({"kind": "Node", "metadata": meta,
                    "spec": {"bgp": {"ipv4Address": node.ip_cidr, **bgp}}})

    def assign_ip(self, node: str, version: int = 4) -> str:
        """One address from IPAM for a workload on `node` (claims a block when needed)."""
        from tabby.ipam.allocator import IPAM

        result = IPAM(self.ds).auto_assign(f"test.{uuid.uuid4().hex[:12]}", node,
                                           num_v4=int(version == 4), num_v6=int(version == 6))
        return str((result.v4 or result.v6)[0].ip)

    def blocks_of(self, node: str) -> list[str]:
        """The node's block affinities in the datastore."""
        from tabby.ipam.store import Store

        return sorted(str(a.cidr) for a in Store(self.ds).list_affinities(node))

    # -- processes ----------------------------------------------------------------------------
    def run_dir(self, node: str) -> Path:
        return self.workdir / "run" / node

    def socket(self, node: str) -> str:
        return str(self.run_dir(node) / "bird.ctl")

    def start(self, node: str) -> None:
        log = open(self.workdir / f"bgp-{node}.log", "ab")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        self.procs[node] = self.topo.spawn(
            node,
            [sys.executable, "-m", "tabby.bgp.run", "--node", node, "--datastore", self.url,
             "--run-dir", str(self.run_dir(node)), "--secret-dir", str(self.secret_dir)],
            stdout=log, stderr=log, env=env,
        )
        log.close()

    def stop(self, node: str) -> None:
        proc = self.procs.pop(node, None)
        if proc is not None:
            proc.terminate(timeout=10.0)

    def close(self) -> None:
        for node in list(self.procs):
            self.stop(node)
        self.ds.close()

    # -- observation --------------------------------------------------------------------------
    def status(self, node: str) -> BgpStatus:
        return collect_status(self.socket(node))

    def established(self, node: str) -> list[str]:
        return sorted(p.name for p in self.status(node).peers if p.established)

    def wait_established(self, node: str, count: int, timeout: float = 30.0) -> BgpStatus:
        def check() -> BgpStatus | None:
            st = self.status(node)
            return st if sum(p.established for p in st.peers) >= count else None

        return self._wait(node, check, timeout, 0.1, f"{count} established sessions on {node}")

    def _wait(self, node: str, check: Callable[[], T | None], timeout: float, interval: float,
              what: str) -> T:
        """wait_for, with the node's controller and BIRD logs in the error."""
        try:
            return wait_for(check, timeout, interval, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_tail(node)}") from None

    def routes(self, node: str, version: int = 4) -> dict[str, str]:
        return kernel_routes(self.topo.netns_of(node), "bird", version)

    def wait_route(self, node: str, dst: str, via: str | None = None,
                   timeout: float = 20.0) -> dict[str, str]:
        def check() -> dict[str, str] | None:
            routes = self.routes(node)
            if dst in routes and (via is None or routes[dst] == via):
                return routes
            return None

        return self._wait(node, check, timeout, 0.05, f"route {dst} via {via} on {node}")

    def wait_no_route(self, node: str, dst: str, timeout: float = 20.0) -> None:
        self._wait(node, lambda: dst not in self.routes(node), timeout, 0.05,
                   f"route {dst} to disappear from {node}")

    def log_tail(self, node: str, lines: int = 30) -> str:
        text = ""
        for path in (self.workdir / f"bgp-{node}.log", self.run_dir(node) / "bird.log"):
            try:
                text += f"--- {path}\n" + "\n".join(path.read_text().splitlines()[-lines:]) + "\n"
            except FileNotFoundError:
                pass
        return text


# -- GoBGP as an external router ----------------------------------------------------------------


class GoBGP:
    """gobgpd in a namespace (it never touches the kernel FIB: a clean external peer)."""

    def __init__(self, topo: Any, node: Any, workdir: str | Path, as_number: int,
                 neighbors: list[tuple[str, int]], password: str | None = None) -> None:
        self.topo, self.node, self.as_number = topo, node, as_number
        self.netns = topo.netns_of(node)
        conf = Path(workdir) / f"gobgpd-{node.name}.toml"
        lines = ["[global.config]", f"  as = {as_number}", f'  router-id = "{node.ip}"', ""]
        for ip, asn in neighbors:
            lines += ["[[neighbors]]", "  [neighbors.config]", f'    neighbor-address = "{ip}"',
                      f"    peer-as = {asn}"]
            if password:
                lines.append(f'    auth-password = "{password}"')
            lines += ["  [neighbors.ebgp-multihop.config]", "    enabled = true",
                      "    multihop-ttl = 8", ""]
        conf.write_text("\n".join(lines) + "\n")
        log = open(Path(workdir) / f"gobgpd-{node.name}.log", "ab")
        self.proc = topo.spawn(node, ["gobgpd", "-f", str(conf), "-p", "--api-hosts",
                                      "127.0.0.1:50051", "--pprof-disable"],
                               stdout=log, stderr=log)
        log.close()
        wait_for(lambda: self._cli("neighbor", check=False).returncode == 0, 10, 0.1,
                 "gobgpd API")

    def _cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns, "gobgp", *args],
                              capture_output=True, text=True, check=check, timeout=30)

    _STATES = ("unknown", "idle", "connect", "active", "opensent", "openconfirm", "established")

    def neighbors(self) -> dict[str, str]:
        """neighbor address -> session state ("established", "active", ...)."""
        data = json.loads(self._cli("neighbor", "-j").stdout or "[]")
        out = {}
        for n in data:
            state = n.get("state", {}).get("session_state", 0)
            if isinstance(state, int):
                state = self._STATES[state] if 0 <= state < len(self._STATES) else str(state)
            out[n["conf"]["neighbor_address"]] = str(state).lower()
        return out

    def rib(self) -> dict[str, list[str]]:
        """prefix -> next hops of the paths GoBGP holds."""
        data = json.loads(self._cli("global", "rib", "-a", "ipv4", "-j").stdout or "{}")
        out: dict[str, list[str]] = {}
        for prefix, paths in data.items():
            hops = []
            for path in paths:
                for attr in path.get("attrs", []):
                    if "nexthop" in attr:
                        hops.append(attr["nexthop"])
            out[prefix] = sorted(hops)
        return out

    def announce(self, prefix: str) -> None:
        self._cli("global", "rib", "add", prefix, "-a", "ipv4")

    def stop(self) -> None:
        self.proc.terminate()


def borrow_ip(lab: BgpLab, node: str, near: str, offset: int = 5) -> str:
    """Assign `near + offset` (in another node's block) to a workload on `node`: a borrowed
    address, announced by `node` as a /32."""
    import ipaddress

    from tabby.ipam.allocator import IPAM

    ip = str(ipaddress.ip_address(near) + offset)
    IPAM(lab.ds).assign_ip(ip, f"test.{uuid.uuid4().hex[:12]}", node=node)
    return ip
