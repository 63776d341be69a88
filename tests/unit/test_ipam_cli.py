"""`tabby ipam ...` end to end, in-process, on both backends."""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest
from test_ipam_helpers import ds_fixture, put_pool  # noqa: F401

from tabby.cli.main import main
from tabby.datastore import Datastore
from tabby.ipam.allocator import IPAM
from tabby.ipam.check import check, endpoint_refs, gc

MANIFESTS = """
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 10.80.0.0/24}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: node-a}
spec: {}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node--a-k8s-p1-eth0, namespace: default}
spec:
  node: node-a
  orchestrator: k8s
  pod: p1
  endpoint: eth0
  interfaceName: cali0001
  ipNetworks: ["10.80.0.0/32", "10.80.0.1/32", "10.80.0.9/32"]
"""


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    rc = main(["--datastore", url, *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def setup(ds: Datastore, datastore_url: str, tmp_path: Path,
          capsys: pytest.CaptureFixture[str]) -> IPAM:
    path = tmp_path / "m.yaml"
    path.write_text(MANIFESTS)
    rc, _, err = run(capsys, datastore_url, "apply", "-f", str(path))
    assert rc == 0, err
    ipam = IPAM(ds)
    # p1's two addresses (its endpoint also claims 10.80.0.9, which IPAM never gave out),
    # a leak on node-a and a block of node-b, which has no Node resource.
    assert [str(i.ip) for i in ipam.auto_assign("k8s-pod-network.c1", "node-a", 2).v4] == [
        "10.80.0.0", "10.80.0.1"]
    ipam.auto_assign("k8s-pod-network.leak", "node-a", attrs={"node": "node-a"})
    ipam.auto_assign("k8s-pod-network.c2", "node-b")
    ipam.auto_assign("vxlan-tunnel-addr-node-a", "node-a", use="Tunnel")
    return ipam


def test_show(setup: IPAM, datastore_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, datastore_url, "ipam", "show")
    assert rc == 0 and "pool-a" in out and "10.80.0.0/24" in out and "5 (2%)" in out
    rc, out, _ = run(capsys, datastore_url, "ipam", "show", "--show-blocks")
    assert "node-b" in out and "4/64" in out
    rc, out, _ = run(capsys, datastore_url, "ipam", "show", "--show-blocks", "-o", "json")
    data = json.loads(out)
    assert data["pools"][0]["inUse"] == 5
    assert {b["node"]: b["inUse"] for b in data["pools"][0]["blocks"]} == {"node-a": 4,
                                                                           "node-b": 1}
    rc, out, _ = run(capsys, datastore_url, "ipam", "show", "--ip", "10.80.0.1")
    assert rc == 0 and "handle: k8s-pod-network.c1" in out
    rc, out, _ = run(capsys, datastore_url, "ipam", "show", "--ip", "10.80.0.200")
    assert "not assigned" in out
    rc, _, err = run(capsys, datastore_url, "ipam", "show", "--ip", "10.80.0.300")
    assert rc == 1 and "invalid IP address '10.80.0.300'" in err


def test_check_reports_and_gc_collects(setup: IPAM, datastore_url: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, datastore_url, "ipam", "check", "-o", "json")
    report = json.loads(out)
    assert rc == 1
    assert sorted(r["handle"] for r in report["leakedAddresses"]) == [
        "k8s-pod-network.c2", "k8s-pod-network.leak"]  # the tunnel address is exempt
    assert report["unallocatedEndpointAddresses"] == [
        {"workloadEndpoint": "default/node--a-k8s-p1-eth0", "ip": "10.80.0.9", "node": "node-a"}]
    assert [(r["node"], r["inUse"]) for r in report["orphanedAffinities"]] == [("node-b", 1)]
    assert report["summary"]["problems"] == 4
    rc, out, _ = run(capsys, datastore_url, "ipam", "check")
    assert rc == 1 and "Found 4 problem(s)" in out and "10.80.0.9" in out

    # Young leaks are left alone by default (an ADD may be in progress).
    rc, out, _ = run(capsys, datastore_url, "ipam", "gc", "--dry-run", "--grace-period", "0")
    assert rc == 0 and out.count("would release") == 3
    assert setup.lookup("10.80.0.2") is not None  # dry run changed nothing
    rc, out, _ = run(capsys, datastore_url, "ipam", "gc")
    assert "release block affinities of deleted node node-b" in out
    assert "10.80.0.2" not in out
    rc, out, _ = run(capsys, datastore_url, "ipam", "gc", "--grace-period", "0")
    assert "release 10.80.0.2 (handle k8s-pod-network.leak" in out
    assert setup.lookup("10.80.0.2") is None
    assert setup.store.list_affinities("node-b") == []
    # node-b's block lost its affinity and, once empty, was deleted.
    assert [b.host for b, _ in setup.store.list_blocks()] == ["node-a"]
    rc, out, _ = run(capsys, datastore_url, "ipam", "check", "-o", "yaml")
    assert rc == 1 and "10.80.0.9" in out  # the endpoint's unallocated address remains


def test_check_clean(ds: Datastore, datastore_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    put_pool(ds, "p", "10.1.0.0/24")
    rc, out, _ = run(capsys, datastore_url, "ipam", "check")
    assert rc == 0 and "No problems found." in out and "no Node resources exist" in out


def test_gc_skips_reassigned_addresses(setup: IPAM, datastore_url: str) -> None:
    from tabby.datastore import open_datastore
    from tabby.datastore.client import ResourceClient

    with open_datastore(datastore_url) as store:
        client = ResourceClient(store)
        report = check(setup, endpoint_refs(client.list("WorkloadEndpoint")), {"node-a"},
                       now=time.time() + 3600)
    # Between check and gc the leaked address is released and handed to someone else.
    setup.release_by_handle("k8s-pod-network.leak")
    setup.assign_ip("10.80.0.2", "k8s-pod-network.new", node="node-a")
    actions = gc(setup, report, grace_seconds=0)
    assert any("10.80.0.2" in a and "left alone" in a for a in actions)
    assert setup.lookup("10.80.0.2")["handle"] == "k8s-pod-network.new"


def test_release(setup: IPAM, datastore_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, datastore_url, "ipam", "release", "--ip", "10.80.0.1",
                       "--ip", "10.80.0.77")
    assert rc == 1
    assert "released 10.80.0.1 (handle k8s-pod-network.c1)" in out
    assert "still used by WorkloadEndpoint default/node--a-k8s-p1-eth0" in err
    assert "10.80.0.77: not assigned" in err
    assert setup.ips_by_handle("k8s-pod-network.c1") == [ipaddress.ip_address("10.80.0.0")]
    rc, _, err = run(capsys, datastore_url, "ipam", "release", "--ip", "nope")
    assert rc == 1 and "--ip: invalid IP address 'nope'" in err


def test_configure(ds: Datastore, datastore_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, datastore_url, "ipam", "configure", "-o", "json")
    assert json.loads(out) == {"strictAffinity": False, "autoAllocateBlocks": True,
                               "maxBlocksPerHost": 0}
    rc, out, _ = run(capsys, datastore_url, "ipam", "configure", "--strictaffinity=true",
                     "--max-blocks-per-host", "4")
    assert rc == 0 and "strictAffinity: true" in out and "maxBlocksPerHost: 4" in out
    assert IPAM(ds).get_config().maxBlocksPerHost == 4
    rc, _, err = run(capsys, datastore_url, "ipam", "configure", "--strictaffinity=false")
    assert rc == 1 and "maxBlocksPerHost=4 requires strictAffinity=true" in err
    rc, out, _ = run(capsys, datastore_url, "ipam", "show", "--show-configuration", "-o", "yaml")
    assert "strictAffinity: true" in out
    with pytest.raises(SystemExit):
        main(["--datastore", datastore_url, "ipam", "configure", "--strictaffinity=maybe"])
    assert "invalid value 'maybe'" in capsys.readouterr().err
