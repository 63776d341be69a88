"""Shared set-up for the CNI namespace tests: a node namespace on an underlay, a sqlite
datastore with pools, the plugins installed by `tabby cni install` into a temp dir, and a
runner that execs them inside the node namespace with only the CNI_* environment (as a
runtime may). Imported by the other test_cni*.py files; it holds no tests itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabby.cni.constants import ROUTE_PROTO
from tabby.cni.install import install
from tabby.datastore import open_datastore
from tabby.datastore.client import ResourceClient
from tabby.ipam.allocator import IPAM
from tabby.lab.topology import Topology
from tabby.resources import from_dict

IP = shutil.which("ip") or "/usr/sbin/ip"
REFERENCE_PLUGINS = "/usr/lib/cni"

# A tiny TCP echo server: accepts until killed, answers each connection with "ok <peer>".
ECHO_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"ok {peer[0]}\n".encode())
    c.close()
"""

TCP_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(c.recv(100).decode().strip())
"""


@dataclass
class Result:
    rc: int
    out: dict[str, Any] | None
    stdout: str
    stderr: str

    @property
    def code(self) -> int | None:
        return (self.out or {}).get("code")

    @property
    def msg(self) -> str:
        return str((self.out or {}).get("msg", ""))


@dataclass
class CNILab:
    """One node namespace with Tabby's CNI installed; containers are bare namespaces."""

    topo: Topology
    tmp: Path
    node_ns: str = ""
    node_ip: str = ""
    db: str = ""
    bin_dir: str = ""
    conf: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        topo: Topology,
        tmp: Path,
        pools: dict[str, dict[str, Any]] | None = None,
        cni_version: str = "1.1.0",
        ipv6: bool = False,
    ) -> CNILab:
        lab = cls(topo, tmp)
        node = topo.add_node("n1")
        lab.node_ns, lab.node_ip = node.netns, node.ip
        lab.db = f"sqlite://{tmp / 'tabby.db'}"
        with open_datastore(lab.db) as ds:
            rc = ResourceClient(ds)
            for name, spec in (pools or {"pool-a": {"cidr": "10.66.0.0/24"}}).items():
                rc.create(from_dict({
                    "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                    "metadata": {"name": name}, "spec": spec,
                }))
        lab.bin_dir = str(tmp / "bin")
        install(bin_dir=lab.bin_dir, conf_dir=str(tmp / "net.d"), datastore=lab.db,
                nodename="n1", ipv6=ipv6)
        conflist = json.loads((tmp / "net.d" / "10-tabby.conflist").read_text())
        lab.conf = {"cniVersion": cni_version, "name": conflist["name"], **conflist["plugins"][0]}
        return lab

    def container(self, name: str) -> str:
        return self.topo.add_namespace(name)

    def netns_path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def env(self, command: str, cid: str = "", ns: str = "", ifname: str = "eth0",
            args: str = "", path: str | None = None) -> dict[str, str]:
        env = {"CNI_COMMAND": command, "CNI_PATH": path or f"{self.bin_dir}:{REFERENCE_PLUGINS}"}
        if cid:
            env["CNI_CONTAINERID"] = cid
        if ns:
            env["CNI_NETNS"] = self.netns_path(ns)
        if ifname and command in ("ADD", "DEL", "CHECK"):
            env["CNI_IFNAME"] = ifname
        if args:
            env["CNI_ARGS"] = args
        return env

    def exec(self, env: dict[str, str], conf: dict[str, Any] | str | None = None,
             plugin: str = "tabby-cni") -> Result:
        """Exec a plugin inside the node namespace with exactly `env` (no PATH)."""
        exe = plugin if plugin.startswith("/") else f"{self.bin_dir}/{plugin}"
        data = conf if isinstance(conf, str) else json.dumps(self.conf if conf is None else conf)
        proc = subprocess.run([IP, "netns", "exec", self.node_ns, exe], input=data, env=env,
                              capture_output=True, text=True, timeout=60)
        out = None
        if proc.stdout.strip():
            out = json.loads(proc.stdout)
        return Result(proc.returncode, out, proc.stdout, proc.stderr)

    def cni(self, command: str, cid: str = "", ns: str = "", conf: dict[str, Any] | None = None,
            **kw: Any) -> Result:
        return self.exec(self.env(command, cid, ns, **kw), conf)

    def add(self, cid: str, ns: str, **kw: Any) -> Result:
        res = self.cni("ADD", cid, ns, **kw)
        assert res.rc == 0, f"ADD {cid} failed: {res.stdout} {res.stderr}"
        return res

    # --- state ------------------------------------------------------------------------
    def allocations(self) -> list[dict[str, Any]]:
        with open_datastore(self.db) as ds:
            return IPAM(ds).allocations()

    def endpoints(self) -> dict[str, dict[str, Any]]:
        with open_datastore(self.db) as ds:
            kvs, _ = ds.list("/tabby/v3/workloadendpoints/")
        return {kv.key: json.loads(kv.value) for kv in kvs}

    def ip(self, ns: str, *args: str) -> Any:
        proc = subprocess.run([IP, "-n", ns, "-j", *args], capture_output=True, text=True,
                              check=True, timeout=10)
        return json.loads(proc.stdout or "[]")

    def node_links(self) -> list[str]:
        return sorted(link["ifname"] for link in self.ip(self.node_ns, "link", "show")
                      if link["ifname"].startswith("cali"))

    def node_routes(self) -> list[dict[str, Any]]:
        return self.ip(self.node_ns, "route", "show", "proto", str(ROUTE_PROTO))

    def sysctl(self, ns: str, key: str) -> str:
        return self.topo.run(ns, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()

    def echo_server(self, addr: str, port: int, ns: str | None = None) -> Any:
        """A TCP server in the node namespace (or `ns`), stopped at topology teardown."""
        proc = self.topo.spawn(ns or self.node_ns, [sys.executable, "-c", ECHO_SERVER, addr, str(port)],
                               stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        return proc

    def tcp(self, ns: str, addr: str, port: int) -> str:
        res = self.topo.run(ns, [sys.executable, "-c", TCP_CLIENT, addr, str(port)],
                            check=False, timeout=20)
        assert res.returncode == 0, f"TCP from {ns} to {addr}:{port} failed: {res.stderr}"
        return res.stdout.strip()
