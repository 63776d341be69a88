"""tabby-cni in real namespaces: ADD/CHECK/DEL, repair, rollback, errors, GC, STATUS.

Every plugin run is an exec of the installed wrapper inside a node namespace with only the
CNI_* variables set, as a runtime would run it."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cni_support import CNILab

from tabby.cni.constants import GATEWAY_V4, GATEWAY_V6
from tabby.cni.wiring import host_ifname
from tabby.resources import from_dict


@pytest.fixture
def lab(topology: Callable[..., Any], tmp_path: Path) -> CNILab:
    return CNILab.make(topology(), tmp_path)


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_add_check_del(topology: Callable[..., Any], tmp_path: Path, version: str) -> None:
    lab = CNILab.make(topology(), tmp_path, cni_version=version)
    c = lab.container("c1")
    conf = {**lab.conf, "args": {"tabby": {"labels": {"app": "web"}}}}
    res = lab.add("cid-0001", c, conf=conf, args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;"
                  "K8S_POD_NAME=web-1;K8S_POD_UID=x")
    out = res.out
    assert out is not None and out["cniVersion"] == version
    host_if = host_ifname("cid-0001", "eth0")
    assert [i["name"] for i in out["interfaces"]] == [host_if, "eth0"]
    assert out["interfaces"][1]["sandbox"] == f"/run/netns/{c}"
    assert ("mtu" in out["interfaces"][1]) == (version == "1.1.0")
    (ipc,) = out["ips"]
    addr = ipc["address"]
    assert addr.startswith("10.66.0.") and addr.endswith("/32") and ipc["interface"] == 1
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY_V4}]

    # Workload side: /32, link route to 169.254.1.1, default via it.
    (eth0,) = lab.ip(c, "addr", "show", "dev", "eth0")
    assert [f"{a['local']}/{a['prefixlen']}" for a in eth0["addr_info"] if a["family"] == "inet"] == [addr]
    assert eth0["address"] == out["interfaces"][1]["mac"]
    routes = lab.ip(c, "route", "show", "dev", "eth0")
    assert any(r["dst"] == GATEWAY_V4 and r.get("scope") == "link" for r in routes)
    assert any(r["dst"] == "default" and r.get("gateway") == GATEWAY_V4 for r in routes)
    # Host side: no address, MAC ee:.., proxy ARP, the /32 route with Tabby's protocol.
    (host,) = lab.ip(lab.node_ns, "addr", "show", "dev", host_if)
    assert host["address"] == "ee:ee:ee:ee:ee:ee"
    assert not [a for a in host["addr_info"] if a["family"] == "inet"]
    assert lab.sysctl(lab.node_ns, f"net.ipv4.conf.{host_if}.proxy_arp") == "1"
    assert lab.sysctl(lab.node_ns, f"net.ipv4.neigh.{host_if}.proxy_delay") == "0"
    assert lab.sysctl(lab.node_ns, "net.ipv4.ip_forward") == "1"
    (route,) = lab.node_routes()
    assert route["dst"] == addr.split("/")[0] and route["dev"] == host_if
    assert route["scope"] == "link"  # and proto ROUTE_PROTO: node_routes() filters on it

    # The endpoint validates against the resource model, with the identity from CNI_ARGS.
    ((key, data),) = lab.endpoints().items()
    wep = from_dict(data)
    assert key == f"/tabby/v3/workloadendpoints/shop/{wep.metadata.name}"
    assert wep.metadata.name == "n1-k8s-web--1-eth0" and wep.metadata.namespace == "shop"
    assert wep.spec.orchestrator == "k8s" and wep.spec.workload == "web-1"
    assert wep.spec.pod == "web-1" and wep.spec.node == "n1" and wep.spec.endpoint == "eth0"
    assert wep.spec.containerID == "cid-0001" and wep.spec.interfaceName == host_if
    assert wep.spec.ipNetworks == [addr] and wep.spec.profiles == ["kns.shop"]
    assert wep.metadata.labels == {"app": "web", "projectcalico.org/namespace": "shop",
                                   "projectcalico.org/orchestrator": "k8s"}
    ((alloc),) = lab.allocations()
    assert alloc["handle"] == "tabby.cid-0001" and alloc["attrs"]["pod"] == "web-1"

    # TCP to the node's underlay address, from the workload.
    lab.echo_server(lab.node_ip, 7001)
    assert lab.tcp(c, lab.node_ip, 7001) == f"ok {addr.split('/')[0]}"

    check = lab.cni("CHECK", "cid-0001", c, conf={**conf, "prevResult": out},
                    args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")
    assert check.rc == 0 and check.stdout == "", check.stdout

    for _ in range(2):  # DEL is idempotent
        gone = lab.cni("DEL", "cid-0001", c, conf={**conf, "prevResult": out},
                       args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1")
        assert gone.rc == 0 and gone.stdout == "", gone.stdout
        assert lab.node_links() == [] and lab.node_routes() == []
        assert lab.endpoints() == {} and lab.allocations() == []
    assert [li["ifname"] for li in lab.ip(c, "link", "show")] == ["lo"]


def test_del_without_netns_or_anything(lab: CNILab) -> None:
    # Nothing was ever added: no netns, no link, no endpoint, no allocation.
    res = lab.exec(lab.env("DEL", "never-added"))
    assert res.rc == 0 and res.stdout == ""


def test_add_twice_repairs(lab: CNILab) -> None:
    c = lab.container("c1")
    first = lab.add("cid-r", c).out
    host_if = host_ifname("cid-r", "eth0")
    lab.topo.run(c, ["ip", "link", "set", "eth0", "down"])  # break it
    second = lab.add("cid-r", c).out
    assert first is not None and second is not None
    assert second["ips"] == first["ips"]
    assert lab.node_links() == [host_if] and len(lab.node_routes()) == 1
    assert len(lab.allocations()) == 1 and len(lab.endpoints()) == 1
    lab.echo_server(lab.node_ip, 7002)
    assert lab.tcp(c, lab.node_ip, 7002).startswith("ok 10.66.0.")


def test_concurrent_adds_get_distinct_addresses(lab: CNILab) -> None:
    import subprocess

    n = 20
    conts = [lab.container(f"c{i}") for i in range(n)]
    procs = []
    for i, c in enumerate(conts):
        env = lab.env("ADD", f"cid-{i:03d}", c)
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", lab.node_ns, f"{lab.bin_dir}/tabby-cni"], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(json.dumps(lab.conf))
        p.stdin.close()
    results = []
    for p in procs:
        out = p.stdout.read() if p.stdout else ""
        assert p.wait(60) == 0, f"{out} {p.stderr.read() if p.stderr else ''}"
        results.append(json.loads(out))
    addrs = [r["ips"][0]["address"].split("/")[0] for r in results]
    assert len(set(addrs)) == n
    assert len(lab.node_links()) == n and len(lab.node_routes()) == n
    assert len(lab.endpoints()) == n and len(lab.allocations()) == n
    lab.echo_server(lab.node_ip, 7003)
    for c, addr in zip(conts, addrs, strict=True):
        assert lab.tcp(c, lab.node_ip, 7003) == f"ok {addr}"
    dels = [subprocess.Popen(
        ["ip", "netns", "exec", lab.node_ns, f"{lab.bin_dir}/tabby-cni"],
        env=lab.env("DEL", f"cid-{i:03d}", c), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True) for i, c in enumerate(conts)]
    for p in dels:
        out, _ = p.communicate(json.dumps(lab.conf), timeout=60)
        assert p.returncode == 0, out
    assert lab.node_links() == [] and lab.node_routes() == []
    assert lab.endpoints() == {} and lab.allocations() == []


def test_check_reports_deleted_routes(lab: CNILab) -> None:
    c = lab.container("c1")
    out = lab.add("cid-k", c).out
    assert out is not None
    addr = out["ips"][0]["address"].split("/")[0]
    conf = {**lab.conf, "prevResult": out}
    lab.topo.run(lab.node_ns, ["ip", "route", "del", addr])
    res = lab.cni("CHECK", "cid-k", c, conf=conf)
    assert res.rc != 0 and res.code == 112
    assert f"host route {addr} dev {host_ifname('cid-k', 'eth0')} is missing" in res.msg
    lab.add("cid-k", c)  # repair
    assert lab.cni("CHECK", "cid-k", c, conf=conf).rc == 0
    lab.topo.run(c, ["ip", "route", "del", "default"])
    res = lab.cni("CHECK", "cid-k", c, conf=conf)
    assert res.code == 112 and f"default route via {GATEWAY_V4}" in res.msg
    lab.topo.run(c, ["ip", "addr", "flush", "dev", "eth0"])
    assert lab.cni("CHECK", "cid-k", c, conf=conf).code == 111
    lab.topo.run(lab.node_ns, ["ip", "link", "del", host_ifname("cid-k", "eth0")])
    assert lab.cni("CHECK", "cid-k", c, conf=conf).code == 110


def _assert_nothing_left(lab: CNILab, c: str) -> None:
    assert lab.allocations() == []
    assert lab.node_links() == [] and lab.node_routes() == []
    assert lab.endpoints() == {}
    assert [li["ifname"] for li in lab.ip(c, "link", "show")] == ["lo"]


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"env": {"CNI_NETNS": None}}, 4, "CNI_NETNS"),
        ({"env": {"CNI_IFNAME": None}}, 4, "CNI_IFNAME"),
        ({"env": {"CNI_CONTAINERID": "bad id!"}}, 4, "CNI_CONTAINERID"),
        ({"env": {"CNI_COMMAND": "FROB"}}, 4, "FROB"),
        ({"env": {"CNI_ARGS": "FOO=1"}}, 4, "FOO"),
        ({"env": {"CNI_NETNS": "/run/netns/does-not-exist-tcni"}}, 3, "does-not-exist-tcni"),
        ({"stdin": "{not json"}, 6, "invalid JSON"),
        ({"conf": {"cniVersion": "0.9.9"}}, 1, "0.9.9"),
        ({"conf": {"name": None}}, 7, "name"),
        ({"conf": {"mtu": 10}}, 7, "mtu"),
        ({"conf": {"ipam": None}}, 7, "ipam"),
        ({"conf": {"datastore": "mysql://x"}}, 7, "mysql"),
        ({"conf": {"args": {"tabby": {"colour": "red"}}}}, 2, "args.tabby.colour"),
        ({"conf": {"args": {"tabby": {"labels": {"bad key!": "x"}}}}}, 7, "bad key!"),
        ({"conf": {"ipam": {"type": "no-such-ipam"}}}, 7, "no-such-ipam"),
    ],
)
def test_bad_input_is_a_spec_error(
    lab: CNILab, change: dict[str, Any], code: int, words: str
) -> None:
    c = lab.container("c1")
    env = lab.env("ADD", "cid-bad", c)
    for k, v in change.get("env", {}).items():
        if v is None:
            env.pop(k)
        else:
            env[k] = v
    conf: dict[str, Any] | str = {**lab.conf}
    for k, v in change.get("conf", {}).items():
        if v is None:
            conf.pop(k)  # type: ignore[union-attr]
        else:
            conf[k] = v  # type: ignore[index]
    if "stdin" in change:
        conf = change["stdin"]
    res = lab.exec(env, conf)
    assert res.rc != 0
    assert res.out is not None and res.code == code, res.stdout
    assert words in res.msg and res.out["cniVersion"]
    _assert_nothing_left(lab, c)


def test_datastore_write_failure_rolls_back(lab: CNILab) -> None:
    c = lab.container("c1")
    # A real failure of the endpoint write: the store itself refuses the insert.
    db = sqlite3.connect(lab.db[len("sqlite://"):])
    db.execute("CREATE TRIGGER tcni_fail BEFORE INSERT ON kv "
               "WHEN NEW.key LIKE '/tabby/v3/workloadendpoints/%' "
               "BEGIN SELECT RAISE(ABORT, 'injected endpoint write failure'); END")
    db.commit()
    res = lab.cni("ADD", "cid-f", c)
    assert res.rc != 0 and res.code is not None and "injected endpoint write failure" in res.msg
    _assert_nothing_left(lab, c)
    db.execute("DROP TRIGGER tcni_fail")
    db.commit()
    db.close()
    lab.add("cid-f", c)
    assert len(lab.allocations()) == 1 and len(lab.endpoints()) == 1


def test_pool_exhausted_names_the_pool(topology: Callable[..., Any], tmp_path: Path) -> None:
    lab = CNILab.make(topology(), tmp_path,
                      pools={"tiny-pool": {"cidr": "10.67.0.0/30", "blockSize": 30}})
    conts = [lab.container(f"c{i}") for i in range(5)]
    for i, c in enumerate(conts[:4]):
        lab.add(f"cid-{i}", c)
    res = lab.cni("ADD", "cid-4", conts[4])
    assert res.rc != 0 and res.code == 100
    assert "tiny-pool" in res.msg and "exhausted" in res.msg
    assert len(lab.allocations()) == 4 and len(lab.node_links()) == 4
    assert [li["ifname"] for li in lab.ip(conts[4], "link", "show")] == ["lo"]


def test_ipv6_dual_stack(topology: Callable[..., Any], tmp_path: Path) -> None:
    lab = CNILab.make(topology(), tmp_path, ipv6=True, pools={
        "v4": {"cidr": "10.66.0.0/24"}, "v6": {"cidr": "fd66::/120"}})
    c = lab.container("c1")
    out = lab.add("cid-6", c).out
    assert out is not None
    addrs = [ip["address"] for ip in out["ips"]]
    assert addrs[0].endswith("/32") and addrs[1].startswith("fd66::") and addrs[1].endswith("/128")
    assert {"dst": "::/0", "gw": GATEWAY_V6} in out["routes"]
    v6routes = lab.ip(c, "-6", "route", "show", "default")
    assert v6routes[0]["gateway"] == GATEWAY_V6
    # A node address to talk to (inside the node namespace only).
    lab.topo.run(lab.node_ns, ["ip", "addr", "add", "fd99::1/128", "dev", "lo"])
    lab.echo_server("fd99::1", 7004)
    assert lab.tcp(c, "fd99::1", 7004) == f"ok {addrs[1].split('/')[0]}"
    assert lab.cni("CHECK", "cid-6", c, conf={**lab.conf, "prevResult": out}).rc == 0
    assert lab.cni("DEL", "cid-6", c).rc == 0
    assert lab.allocations() == [] and lab.node_links() == []


def test_gc_releases_what_is_not_listed(lab: CNILab) -> None:
    conts = [lab.container(f"c{i}") for i in range(3)]
    for i, c in enumerate(conts):
        lab.add(f"cid-{i}", c)
    # Another node's allocation in the same network is not this node's to collect.
    other = {**lab.conf, "nodename": "n2"}
    lab.exec(lab.env("ADD", "cid-other", lab.container("c-other")), other)
    valid = [{"containerID": "cid-1", "ifname": "eth0"}]
    res = lab.exec(lab.env("GC"), {**lab.conf, "cni.dev/valid-attachments": valid})
    assert res.rc == 0 and res.stdout == "", res.stdout
    assert sorted(a["handle"] for a in lab.allocations()) == ["tabby.cid-1", "tabby.cid-other"]
    assert lab.node_links() == sorted([host_ifname("cid-1", "eth0"),
                                       host_ifname("cid-other", "eth0")])
    assert sorted(d["spec"]["containerID"] for d in lab.endpoints().values()) == [
        "cid-1", "cid-other"]


def test_gc_and_status_need_1_1_0(topology: Callable[..., Any], tmp_path: Path) -> None:
    lab = CNILab.make(topology(), tmp_path, cni_version="1.0.0")
    for cmd in ("GC", "STATUS"):
        res = lab.exec(lab.env(cmd))
        assert res.rc != 0 and res.code == 1 and cmd in res.msg


def test_status(lab: CNILab) -> None:
    ok = lab.exec(lab.env("STATUS"))
    assert ok.rc == 0 and ok.stdout == ""
    down = lab.exec(lab.env("STATUS"), {**lab.conf, "datastore": "sqlite:///proc/tcni/none.db"})
    assert down.rc != 0 and down.code == 50 and "datastore" in down.msg


def test_version(lab: CNILab) -> None:
    res = lab.exec(lab.env("VERSION"), {"cniVersion": "1.0.0"})
    assert res.rc == 0 and res.out == {
        "cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}


def test_spec_0_4_0_result_has_ip_versions(topology: Callable[..., Any], tmp_path: Path) -> None:
    lab = CNILab.make(topology(), tmp_path, cni_version="0.4.0")
    c = lab.container("c1")
    out = lab.add("cid-04", c).out
    assert out is not None and out["cniVersion"] == "0.4.0" and out["ips"][0]["version"] == "4"
    assert lab.cni("DEL", "cid-04", c).rc == 0


def test_delegates_to_another_ipam_plugin(topology: Callable[..., Any], tmp_path: Path) -> None:
    # Debian's host-local speaks spec <= 1.0.0; its errors would come back as ours.
    lab = CNILab.make(topology(), tmp_path, cni_version="1.0.0")
    c = lab.container("c1")
    conf = {**lab.conf, "ipam": {"type": "host-local", "dataDir": str(tmp_path / "hl"),
                                 "ranges": [[{"subnet": "10.68.0.0/24"}]]}}
    out = lab.add("cid-hl", c, conf=conf).out
    assert out is not None and out["ips"][0]["address"].startswith("10.68.0.")
    assert out["ips"][0]["address"].endswith("/32")
    assert lab.allocations() == []  # host-local's, not Tabby's
    assert len(list((tmp_path / "hl" / "tabby").glob("10.68.0.*"))) == 1
    assert lab.cni("DEL", "cid-hl", c, conf=conf).rc == 0
    assert list((tmp_path / "hl" / "tabby").glob("10.68.0.*")) == []
    assert lab.node_links() == [] and lab.endpoints() == {}


def test_mtu_on_both_ends_and_log_file(lab: CNILab, tmp_path: Path) -> None:
    c = lab.container("c1")
    log = tmp_path / "cni.log"
    conf = {**lab.conf, "mtu": 1450, "log_file": str(log), "log_level": "debug"}
    lab.add("cid-m", c, conf=conf)
    (host,) = lab.ip(lab.node_ns, "link", "show", "dev", host_ifname("cid-m", "eth0"))
    (eth0,) = lab.ip(c, "link", "show", "dev", "eth0")
    assert host["mtu"] == eth0["mtu"] == 1450
    text = log.read_text()
    assert "ADD cid-m: assigned" in text and "ADD cid-m: done" in text


def test_foreign_interface_in_the_way(lab: CNILab) -> None:
    c = lab.container("c1")
    lab.topo.run(c, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    res = lab.cni("ADD", "cid-x", c)
    assert res.rc != 0 and res.code == 101 and "eth0 already exists" in res.msg
    assert lab.allocations() == [] and lab.node_links() == [] and lab.endpoints() == {}
    assert sorted(li["ifname"] for li in lab.ip(c, "link", "show")) == ["eth0", "lo", "other0"]


def test_requested_address_and_mac(lab: CNILab) -> None:
    # podman run --ip/--mac arrive as runtimeConfig (the conflist declares the capabilities).
    c1, c2, c3 = (lab.container(n) for n in ("c1", "c2", "c3"))
    conf = {**lab.conf, "runtimeConfig": {"ips": ["10.66.0.77/24"], "mac": "02:aa:bb:cc:dd:01"}}
    out = lab.add("cid-ip1", c1, conf=conf).out
    assert out is not None and [i["address"] for i in out["ips"]] == ["10.66.0.77/32"]
    assert out["interfaces"][1]["mac"] == "02:aa:bb:cc:dd:01"
    (eth0,) = lab.ip(c1, "addr", "show", "dev", "eth0")
    assert eth0["address"] == "02:aa:bb:cc:dd:01"
    assert [a["local"] for a in eth0["addr_info"] if a["family"] == "inet"] == ["10.66.0.77"]
    assert lab.add("cid-ip1", c1, conf=conf).out["ips"] == out["ips"]  # type: ignore[index]
    (alloc,) = lab.allocations()
    assert (alloc["ip"], alloc["handle"]) == ("10.66.0.77", "tabby.cid-ip1")
    lab.echo_server(lab.node_ip, 7003)
    assert lab.tcp(c1, lab.node_ip, 7003) == "ok 10.66.0.77"

    # The same address for another container (CNI_ARGS, as calico-ipam reads it): refused,
    # nothing of the second attempt is left and the first keeps its address.
    taken = lab.cni("ADD", "cid-ip2", c2, args="IgnoreUnknown=1;IP=10.66.0.77")
    assert taken.rc != 0 and taken.code == 100 and "10.66.0.77" in taken.msg, taken.stdout
    outside = lab.cni("ADD", "cid-ip3", c3, args="IP=10.99.0.1")
    assert outside.rc != 0 and "10.99.0.1" in outside.msg and "pool" in outside.msg
    bad = lab.cni("ADD", "cid-ip3", c3, args="IP=10.66.0.999")
    assert bad.rc != 0 and bad.code == 7 and "CNI_ARGS IP" in bad.msg
    for c in (c2, c3):
        assert [li["ifname"] for li in lab.ip(c, "link", "show")] == ["lo"]
    assert [a["ip"] for a in lab.allocations()] == ["10.66.0.77"]
    assert lab.node_links() == [host_ifname("cid-ip1", "eth0")]

    assert lab.cni("DEL", "cid-ip1", c1, conf=conf).rc == 0
    assert lab.allocations() == [] and lab.node_links() == []
    assert lab.add("cid-ip2", c2, args="IP=10.66.0.77").out["ips"][0]["address"] == (  # type: ignore[index]
        "10.66.0.77/32")
