"""tabby-cni through the node agent's CNI server: the exec'd C client forwards each
invocation to the server of its network namespace, and execs the Python plugin when none
serves. Same observable behaviour either way; these tests check the served path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cni_support import CNILab

from tabby.cni.client.build import built
from tabby.cni.wiring import host_ifname

pytestmark = pytest.mark.skipif(built() is None, reason="the C client is not built (make setup)")


class Served:
    """A CNILab whose node namespace runs `python -m tabby.cni.server`."""

    def __init__(self, lab: CNILab) -> None:
        self.lab = lab
        self.proc = lab.topo.spawn(lab.node_ns, [sys.executable, "-m", "tabby.cni.server"],
                                   stdout=subprocess.PIPE, text=True)
        assert self.proc.popen.stdout is not None
        assert self.proc.popen.stdout.readline().strip() == "serving @tabby-cni"

    def log_lines(self, n: int) -> list[str]:
        out = self.proc.popen.stdout
        assert out is not None
        # "<plugin> <command> <container> -> exit <code>" (the time it took is cut off)
        return [out.readline().split(" in ")[0].strip() for _ in range(n)]


@pytest.fixture
def served(topology: Callable[..., Any], tmp_path: Path) -> Served:
    return Served(CNILab.make(topology(), tmp_path))


def test_add_check_del_are_served(served: Served) -> None:
    lab = served.lab
    assert Path(lab.bin_dir, "tabby-cni").read_bytes()[:4] == b"\x7fELF"  # the client
    c = lab.container("c1")
    res = lab.add("cid-s1", c, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")
    assert served.log_lines(1) == ["tabby-cni ADD cid-s1 -> exit 0"]
    out = res.out
    assert out is not None and out["cniVersion"] == "1.1.0"
    addr = out["ips"][0]["address"]
    (eth0,) = lab.ip(c, "addr", "show", "dev", "eth0")
    assert [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"]
            if a["family"] == "inet"] == [addr]
    ((_, wep),) = lab.endpoints().items()
    assert wep["spec"]["pod"] == "web-1" and wep["metadata"]["namespace"] == "shop"
    lab.echo_server(lab.node_ip, 7101)
    assert lab.tcp(c, lab.node_ip, 7101) == f"ok {addr.split('/')[0]}"

    check = lab.cni("CHECK", "cid-s1", c, conf={**lab.conf, "prevResult": out})
    assert check.rc == 0 and check.stdout == ""
    bad = lab.cni("ADD", "cid-s2", lab.container("c2"), args="IP=10.66.0.999")
    assert bad.rc == 1 and bad.code == 7 and "CNI_ARGS IP" in bad.msg
    assert lab.cni("DEL", "cid-s1", c).rc == 0
    assert served.log_lines(3) == ["tabby-cni CHECK cid-s1 -> exit 0",
                                   "tabby-cni ADD cid-s2 -> exit 1",
                                   "tabby-cni DEL cid-s1 -> exit 0"]
    assert lab.node_links() == [] and lab.allocations() == [] and lab.endpoints() == {}
    version = lab.exec({"CNI_COMMAND": "VERSION"}, "{}", plugin="tabby-ipam")
    assert version.rc == 0 and version.out and "1.1.0" in version.out["supportedVersions"]


def test_parallel_adds_served_get_distinct_addresses(served: Served) -> None:
    lab = served.lab
    n = 12
    conts = [lab.container(f"c{i}") for i in range(n)]
    procs = [subprocess.Popen(
        ["ip", "netns", "exec", lab.node_ns, f"{lab.bin_dir}/tabby-cni"],
        env=lab.env("ADD", f"cid-{i:03d}", c), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True) for i, c in enumerate(conts)]
    outs = []
    for p in procs:
        out, _ = p.communicate(json.dumps(lab.conf), timeout=60)
        assert p.returncode == 0, out
        outs.append(json.loads(out))
    addrs = {o["ips"][0]["address"] for o in outs}
    assert len(addrs) == n and len(lab.allocations()) == n and len(lab.node_links()) == n
    assert sorted(served.log_lines(n)) == sorted(
        f"tabby-cni ADD cid-{i:03d} -> exit 0" for i in range(n))


def test_without_the_server_the_client_runs_the_plugin(served: Served) -> None:
    lab = served.lab
    c1, c2 = lab.container("c1"), lab.container("c2")
    lab.add("cid-a", c1)
    served.proc.popen.send_signal(signal.SIGKILL)  # an agent crash: the socket goes with it
    served.proc.popen.wait(10)
    res = lab.add("cid-b", c2)  # the Python plugin beside the client, same result shape
    assert res.out is not None and res.out["interfaces"][0]["name"] == host_ifname("cid-b", "eth0")
    assert len(lab.allocations()) == 2 and len(lab.node_links()) == 2


def test_only_root_is_served(served: Served) -> None:
    lab = served.lab
    env = lab.env("ADD", "cid-n", lab.container("c1"))
    # 2 MB of stdin: the server hangs up before reading it, and the client must still
    # answer with a spec error (not die of SIGPIPE).
    stdin = json.dumps(lab.conf) + " " * 2_000_000
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.node_ns, "setpriv", "--reuid=65534", "--regid=65534",
         "--clear-groups", f"{lab.bin_dir}/tabby-cni"],
        input=stdin, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11, proc.stdout
    assert served.log_lines(1)[0].startswith("refused a client of uid 65534")
    assert lab.allocations() == [] and lab.node_links() == []


SQUATTER = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\0tabby-cni"); s.listen(8); print("up", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        got = c.recv(65536)
    except OSError:
        got = b""
    print(f"got {len(got)} bytes", flush=True)
    c.close()
"""


def test_the_client_trusts_only_a_root_server(topology: Callable[..., Any], tmp_path: Path) -> None:
    # No agent; an unprivileged process holds the name. The client must neither hand it
    # the request (datastore URL and all) nor print its answer: it runs the plugin itself.
    lab = CNILab.make(topology(), tmp_path)
    # The system python (the venv's lives under /root, which uid 65534 cannot enter).
    squat = lab.topo.spawn(lab.node_ns, ["setpriv", "--reuid=65534", "--regid=65534",
                                         "--clear-groups", "/usr/bin/python3", "-c", SQUATTER],
                           stdout=subprocess.PIPE, text=True, cwd="/")
    assert squat.popen.stdout is not None and squat.popen.stdout.readline().strip() == "up"
    res = lab.add("cid-q", lab.container("c1"))
    assert res.out is not None and res.out["ips"][0]["address"].startswith("10.66.0.")
    assert squat.popen.stdout.readline().strip() == "got 0 bytes"  # connected, sent nothing
    assert len(lab.allocations()) == 1


WEDGED = r"""
import socket, sys, time
conns = []
for _ in range(int(sys.argv[1])):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect("\0tabby-cni")
    conns.append(c)
print("connected", flush=True)
time.sleep(600)
"""


def test_idle_connections_do_not_wedge_the_server(served: Served) -> None:
    from tabby.cni.server import MAX_CONCURRENT

    lab = served.lab
    idle = lab.topo.spawn(lab.node_ns, [sys.executable, "-c", WEDGED, str(MAX_CONCURRENT + 4)],
                          stdout=subprocess.PIPE, text=True)
    assert idle.popen.stdout is not None and idle.popen.stdout.readline().strip() == "connected"
    res = lab.add("cid-w", lab.container("c1"))  # served while they hold their connections
    assert res.out is not None and served.log_lines(1) == ["tabby-cni ADD cid-w -> exit 0"]


def test_the_node_agent_serves_its_namespace(topology: Callable[..., Any], tmp_path: Path) -> None:
    from test_agent_support import AgentLab

    from tabby.cni.install import install
    from tabby.lab import netns as nsops

    lab = AgentLab.make(topology(), tmp_path, nodes=1)
    lab.start_agent("n1")
    lab.wait_ready()
    install(bin_dir=str(tmp_path / "bin"), conf_dir=str(tmp_path / "net.d"), datastore=lab.url,
            nodename="n1")
    lab.ensure_namespace("default")
    pod_ns = lab.topo.add_namespace("pod1")
    conf = {"cniVersion": "1.0.0", "name": "tabby", "type": "tabby-cni", "datastore": lab.url,
            "nodename": "n1", "ipam": {"type": "tabby-ipam"}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid-pod1", "CNI_NETNS": f"/run/netns/{pod_ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(tmp_path / "bin")}
    proc = nsops.run(lab.nodes["n1"].netns, [str(tmp_path / "bin" / "tabby-cni")],
                     input=json.dumps(conf), env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["ips"][0]["address"].startswith("10.65.")
    met = lab.metrics("n1")
    assert met['tabby_cni_requests_total{plugin="tabby-cni",command="ADD",result="ok"}'] == 1
    assert met['tabby_cni_seconds_count{command="ADD"}'] == 1
