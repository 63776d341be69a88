"""Lab workloads: which apps go where, wiring through the real `tabby-cni`, probe servers.

A workload is a bare namespace `<lab>-<app>-<n>`. The CNI plugin is exec'd inside its
node's namespace exactly as a runtime would (stdin configuration, CNI_* environment, with
K8S_POD_NAMESPACE/K8S_POD_NAME so the endpoint is a Kubernetes-style pod with the
`kns.<namespace>` profile). Each workload then runs a probe server on TCP and UDP 80 and
8080, detached, so it outlives `tabby lab up`.
"""

from __future__ import annotations

import json
import select
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tabby.lab import netns as nsops
from tabby.lab.probe import AGENT_ARGV
from tabby.lab.state import LabError, LabState, NodeState, WorkloadState

# (Kubernetes namespace, app label), assigned in turn; workloads go round-robin over nodes.
APPS: tuple[tuple[str, str], ...] = (
    ("shop", "frontend"),
    ("shop", "backend"),
    ("shop", "db"),
    ("tools", "client"),
)
PROBE_PORTS = (80, 8080)
NETWORK_NAME = "tabby"  # CNI network name: IPAM handles are "tabby.<containerID>"
CNI_VERSION = "1.0.0"


def plan(lab: str, nodes: Sequence[NodeState], per_node: int) -> list[WorkloadState]:
    """Workload k runs app APPS[k % 4] on node k % len(nodes): every node gets `per_node`
    workloads and each app is spread over the nodes."""
    out: list[WorkloadState] = []
    counts: dict[str, int] = {}
    for k in range(len(nodes) * per_node):
        namespace, app = APPS[k % len(APPS)]
        counts[app] = counts.get(app, 0) + 1
        name = f"{app}-{counts[app]}"
        node = nodes[k % len(nodes)]
        out.append(
            WorkloadState(
                name=name,
                netns=f"{lab}-{name}",
                node=node.name,
                namespace=namespace,
                labels={"app": app},
                container_id=f"{lab}-{name}",
            )
        )
    return out


def cni_conf(state: LabState, node: NodeState, wl: WorkloadState) -> dict[str, Any]:
    return {
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "tabby-cni",
        "datastore": state.datastore_url,
        "nodename": node.name,
        "mtu": state.mtu,
        "log_file": str(Path(state.dir) / "logs" / "cni.log"),
        "log_level": "info",
        "ipam": {"type": "tabby-ipam", "assign_ipv4": True, "assign_ipv6": 6 in state.families},
        "args": {"tabby": {"labels": dict(wl.labels)}},
    }


def cni_env(state: LabState, wl: WorkloadState, command: str) -> dict[str, str]:
    bin_dir = str(Path(state.dir) / "bin")
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": wl.container_id,
        "CNI_NETNS": f"/run/netns/{wl.netns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": f"{bin_dir}:/usr/lib/cni",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={wl.namespace};K8S_POD_NAME={wl.name}",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def cni_add(state: LabState, wl: WorkloadState) -> tuple[str, str | None]:
    """Run `tabby-cni` ADD for `wl` inside its node's namespace; returns its IPv4 address
    and, in a dual-stack lab, its IPv6 address."""
    node = state.node(wl.node)
    exe = str(Path(state.dir) / "bin" / "tabby-cni")
    proc = nsops.run(
        node.netns,
        [exe],
        input=json.dumps(cni_conf(state, node, wl)),
        env=cni_env(state, wl, "ADD"),
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        msg = proc.stdout.strip() or proc.stderr.strip()
        try:
            err = json.loads(msg)
            msg = f"{err.get('msg')} (code {err.get('code')}) {err.get('details', '')}".strip()
        except ValueError:
            pass
        raise LabError(f"tabby-cni ADD for workload {wl.name} on {node.name} failed: {msg}")
    result = json.loads(proc.stdout)
    addrs = [str(ip["address"]).split("/")[0] for ip in result.get("ips") or []]
    v4 = next((a for a in addrs if ":" not in a), None)
    v6 = next((a for a in addrs if ":" in a), None)
    if v4 is None or (v6 is None and 6 in state.families):
        raise LabError(f"tabby-cni ADD for workload {wl.name}: result lacks an address of "
                       f"IPv{'4' if v4 is None else '6'}: {proc.stdout}")
    return v4, v6


def find_endpoints(client: Any, workloads: Sequence[WorkloadState]) -> None:
    """Fill in each workload's WorkloadEndpoint name (as the CNI plugin named it)."""
    by_cid = {w.container_id: w for w in workloads}
    for wep in client.list("WorkloadEndpoint"):
        w = by_cid.get(wep.spec.containerID or "")
        if w is not None and wep.metadata.namespace == w.namespace:
            w.endpoint = wep.metadata.name
    missing = [w.name for w in workloads if not w.endpoint]
    if missing:
        raise LabError(f"no WorkloadEndpoint in the datastore for workloads {missing}")


def start_probe_server(topo: Any, wl: WorkloadState, timeout: float = 10.0) -> tuple[int, int | None]:
    """A detached probe server (TCP+UDP on PROBE_PORTS) in the workload; returns its PID
    and start time (recorded by the topology, so teardown stops it)."""
    ports = ",".join(map(str, PROBE_PORTS))
    argv = AGENT_ARGV + ["serve", "--name", wl.name, "--tcp", ports, "--udp", ports]
    proc = topo.spawn(wl.netns, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = proc.stdout.read1(256)
        if not chunk:
            break
        line += chunk
    # The server never writes again: closing our end costs it nothing.
    proc.stdout.close()
    if not line.startswith(b"READY"):
        raise LabError(f"probe server in workload {wl.name} did not start")
    return proc.pid, proc.starttime
