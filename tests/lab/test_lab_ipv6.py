"""A dual-stack lab (`tabby lab up --ipv6`): IPv6 BGP sessions beside the IPv4 ones, TCP
over IPv6 between workloads on different nodes routed by BIRD, IPv4 unchanged, policy
enforced - and compared with `tabby policy matrix` - in each family, nothing left after
`down`, and nothing IPv6 of the lab in the root namespace at any time."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from labtools import wait_until

from tabby.cli.main import main
from tabby.lab import cluster, matrix
from tabby.lab import netns as nsops
from tabby.lab.state import LabError, LabState
from tabby.lab.topology import ula_subnet

# frontend -> db denied in both families; db -> backend denied over IPv6 only (ipVersion).
POLICY = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-not-from-frontend, namespace: shop}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - {action: Deny, source: {selector: app == 'frontend'}}
    - {action: Allow}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: backend-v6-not-from-db, namespace: shop}
spec:
  selector: app == 'backend'
  types: [Ingress]
  ingress:
    - {action: Deny, ipVersion: 6, protocol: TCP, source: {selector: app == 'db'}}
    - {action: Allow}
"""


def tabby(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def root_ipv6() -> list[str]:
    """IPv6 addresses and routes of the root namespace (we only read it)."""
    out = subprocess.run(["ip", "-6", "-o", "addr"], capture_output=True, text=True)
    routes = subprocess.run(["ip", "-6", "route"], capture_output=True, text=True)
    return out.stdout.splitlines() + routes.stdout.splitlines()


def test_ipv6_needs_encap_none(labs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = tabby(capsys, "lab", "up", "--name", "v6bad", "--ipv6", "--encap", "vxlan")
    assert rc == 1 and "--ipv6: needs --encap none, not 'vxlan'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert nsops.list_netns("v6bad-") == [] and not (labs_dir / "v6bad").exists()


def test_ip_version_of_a_single_stack_lab_is_refused(labs_dir: Path) -> None:
    state = LabState(name="v4only", dir=str(labs_dir / "v4only"), encap="none",
                     datastore="sqlite", datastore_url="", pool_cidr=cluster.POOL_CIDR,
                     mtu=1500)  # fmt: skip
    with pytest.raises(LabError, match=r"--ip-version: lab 'v4only' has IPv4 workloads only"):
        matrix.probe(state, "tcp", 80, ip_version=6)


@pytest.mark.slow
def test_dual_stack_up_probe_policy_down(
    lab_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = root_ipv6()
    n = ["--name", lab_name]
    rc, _, err = tabby(capsys, "lab", "up", *n, "--nodes", "3", "--ipv6")
    assert rc == 0, err
    state = LabState.load(lab_name)
    assert state.families == (4, 6) and state.pool6_cidr == cluster.POOL6_CIDR
    underlay6 = ipaddress.ip_network(ula_subnet(lab_name, 0))
    pool6 = ipaddress.ip_network(cluster.POOL6_CIDR)

    # Every node: an IPv6 underlay address, a Node with bgp.ipv6Address (registered by its
    # agent, which runs with --ip6 autodetect), and a full mesh in both families.
    rc, out, _ = tabby(capsys, "lab", "status", *n, "-o", "json")
    assert rc == 0
    status = json.loads(out)
    for nd in status["nodes"]:
        assert ipaddress.ip_address(nd["ip6"]) in underlay6
        peers = sorted(s["peer"] for s in nd["bgp"]["sessions"])
        others = [o for o in status["nodes"] if o["name"] != nd["name"]]
        assert peers == sorted([o["ip"] for o in others] + [o["ip6"] for o in others])
        assert {s["info"] for s in nd["bgp"]["sessions"]} == {"Established"}, nd
    rc, out, _ = tabby(capsys, "--datastore", state.datastore_url, "get", "nodes", "-o", "json")
    nodes = json.loads(out)
    nodes = nodes.get("items", nodes) if isinstance(nodes, dict) else nodes
    assert sorted(x["spec"]["bgp"]["ipv6Address"] for x in nodes) == sorted(
        f"{nd['ip6']}/64" for nd in status["nodes"])
    assert all(w.ip and w.ip6 and ipaddress.ip_address(w.ip6) in pool6 for w in state.workloads)

    # node1 reaches another node's IPv6 workloads by BIRD's route to that node's block.
    node1, node2 = state.nodes[0], state.nodes[1]
    far = next(w for w in state.workloads if w.node == node2.name)
    routes = json.loads(nsops.run(node1.netns, ["ip", "-j", "-6", "route", "get",
                                                str(far.ip6)]).stdout)
    assert routes[0]["gateway"] == node2.ip6, routes
    shown = json.loads(nsops.run(node1.netns, ["ip", "-j", "-6", "route", "show", "proto",
                                               "bird"]).stdout)
    assert any(r.get("gateway") == node2.ip6 and ipaddress.ip_network(r["dst"]).prefixlen == 122
               for r in shown), shown

    # TCP over IPv6 (and still IPv4) between workloads on different nodes, answered by the
    # destination's own probe server.
    near = next(w for w in state.workloads if w.node == node1.name)
    for version in (6, 4):
        _, details = matrix.probe(state, "tcp", 80, timeout=1.0, ip_version=version)
        res = details[(near.key, far.key)]
        assert res.outcome == "ok" and res.peer == far.name, res
        assert res.dst == far.address(version)

    # No policy: everything connects, and the probe equals the policy matrix per family.
    for version in (4, 6):
        probe_json, policy_json = _both(capsys, lab_name, state.datastore_url, version)
        assert probe_json == policy_json
        assert {v for row in probe_json.values() for v in row.values()} == {"Allow"}
    rc, out, _ = tabby(capsys, "lab", "probe", *n)
    assert rc == 0 and "over IPv6" in out and out.count("probe == policy matrix") == 2

    path = Path(state.dir) / "policy.yaml"
    path.write_text(POLICY)
    rc, _, err = tabby(capsys, "--datastore", state.datastore_url, "apply", "-f", str(path))
    assert rc == 0, err
    key = {w.name: w.key for w in state.workloads}
    got = wait_until(lambda: _enforced(state, key), timeout=45)
    assert got, [matrix.compare(state, ip_version=v).mismatches for v in (4, 6)]
    v4, v6 = got
    for real in (v4, v6):  # denied in both families, across nodes
        assert real[key["frontend-1"]][key["db-1"]] == "Deny"
        assert real[key["frontend-2"]][key["db-1"]] == "Deny"
        assert real[key["client-1"]][key["db-1"]] == "Allow"
    assert v4[key["db-1"]][key["backend-1"]] == "Allow"  # the IPv6-only rule
    assert v6[key["db-1"]][key["backend-1"]] == "Deny"
    for version in (4, 6):
        probe_json, policy_json = _both(capsys, lab_name, state.datastore_url, version)
        assert probe_json == policy_json

    # The lab's IPv6 lives in its namespaces only.
    assert not [line for line in root_ipv6() if line not in before and _ours(line, state)]
    rc, out, err = tabby(capsys, "lab", "down", *n)
    assert rc == 0 and "verified nothing is left" in out, err
    assert nsops.list_netns(lab_name + "-") == []


def _ours(line: str, state: LabState) -> bool:
    nets = [ipaddress.ip_network(ula_subnet(state.name, 0)),
            ipaddress.ip_network(cluster.POOL6_CIDR)]
    for word in line.replace("/", " ").split():
        try:
            addr = ipaddress.ip_address(word)
        except ValueError:
            continue
        if any(addr in net for net in nets):
            return True
    return False


def _both(capsys: pytest.CaptureFixture[str], name: str, url: str, version: int) -> tuple[Any, Any]:
    v = ["--ip-version", str(version)]
    rc, out, err = tabby(capsys, "lab", "probe", "--name", name, *v, "-o", "json")
    assert rc == 0, err
    probe_json = json.loads(out)
    rc, out, err = tabby(capsys, "--datastore", url, "policy", "matrix", *v, "-o", "json")
    assert rc == 0, err
    return probe_json, json.loads(out)


def _enforced(state: LabState, key: dict[str, str]) -> tuple[Any, Any] | None:
    """Both families' probes, once each agrees with the policy and the policy is in force."""
    cmps = [matrix.compare(state, "tcp", 80, timeout=0.5, ip_version=v) for v in (4, 6)]
    if not all(c.agree for c in cmps):
        return None
    if cmps[1].probe[key["db-1"]][key["backend-1"]] != "Deny":
        return None
    if cmps[0].probe[key["frontend-1"]][key["db-1"]] != "Deny":
        return None
    return cmps[0].probe, cmps[1].probe
