"""How the agent wires its parts together, without a kernel: the IP-in-IP allowed senders
from the Node list (handed over once per batch), the order of the dataplanes, the IPIP
annotation on the Node (set, kept, removed), and the Typha client's options."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.agent import agent as agent_mod
from tabby.agent.agent import Agent, AgentConfig, DataplaneState
from tabby.agent.node import NodeRegistrar, NodeState, Underlay, node_ipv4
from tabby.datastore import Datastore, open_datastore
from tabby.datastore.client import ResourceClient
from tabby.datastore.syncer import InSync, SyncStatus, Update
from tabby.resources import from_dict

WAIT = 10.0  # a bound that turns a hang into a failure
UL = Underlay("eth0", 2, "172.31.0.10", 24, 1500)
ANNOTATION = "tabby.dev/ipip-implementation"


class FakeIpip:
    """Records what the agent tells an IP-in-IP driver."""

    route_protocol = 81

    def __init__(self) -> None:
        self.peer_calls: list[list[str]] = []
        self.pending = False

    def on_update(self, msg: Any) -> None:
        pass

    def set_peers(self, ips: Any) -> None:
        self.peer_calls.append(list(ips))

    def apply(self) -> None:
        return None

    def annotations(self) -> dict[str, str]:
        return {ANNOTATION: "bpf"}


class FakeSyncer:
    def __init__(self) -> None:
        self.status = SyncStatus(state="in-sync", in_sync=True, synced_once=True)
        self.running = True


def node_doc(name: str, ip: str | None) -> bytes:
    spec = {"bgp": {"ipv4Address": ip}} if ip else {}
    return json.dumps({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                       "metadata": {"name": name}, "spec": spec}).encode()


@pytest.fixture
def agent() -> Iterator[tuple[Agent, FakeIpip]]:
    ag = Agent(AgentConfig(node_name="n1"))
    ipip = FakeIpip()
    ag.dataplanes = [DataplaneState("ipip", ipip)]

    class Calc:
        def on_update(self, key: str, value: Any) -> None:
            pass

        def on_in_sync(self) -> None:
            pass

        def stats(self) -> dict[str, int]:
            return {}

    ag.calc = Calc()
    ag.syncer = FakeSyncer()
    ag.node = NodeState("n1", UL, None, None, 1)
    t = threading.Thread(target=ag.run_loop, daemon=True)
    t.start()
    yield ag, ipip
    ag.stop()
    t.join(WAIT)
    assert not t.is_alive()


def wait_until(fn: Any) -> None:
    end = time.monotonic() + WAIT
    while not fn():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_every_node_address_may_send_ipip_handed_over_once_per_batch(
        agent: tuple[Agent, FakeIpip]) -> None:
    ag, ipip = agent
    now = time.monotonic()
    # A burst of Node updates before InSync: no call yet, then exactly one with all of them.
    for i in range(2, 40):
        ag._q.put((now, Update(f"/tabby/v3/nodes/n{i}", node_doc(f"n{i}", f"172.31.0.{i}/24"),
                               i)))
    ag._q.put((now, Update("/tabby/v3/nodes/no-address", node_doc("no-address", None), 40)))
    ag._q.put((now, Update("/tabby/v3/nodes/bad", node_doc("bad", "not-an-ip/24"), 41)))
    ag._q.put((now, InSync(41)))
    wait_until(lambda: ag.programmed_once)
    assert len(ipip.peer_calls) == 1
    assert ipip.peer_calls[0] == sorted(f"172.31.0.{i}" for i in range(2, 40))
    # A node without blocks or workloads changes address, another goes: one new call each.
    ag._q.put((time.monotonic(), Update("/tabby/v3/nodes/n2", node_doc("n2", "172.31.1.2/24"),
                                        42)))
    wait_until(lambda: len(ipip.peer_calls) == 2)
    assert "172.31.1.2" in ipip.peer_calls[1] and "172.31.0.2" not in ipip.peer_calls[1]
    ag._q.put((time.monotonic(), Update("/tabby/v3/nodes/n3", None, 43)))
    wait_until(lambda: len(ipip.peer_calls) == 3)
    assert "172.31.0.3" not in ipip.peer_calls[2]
    # An update that does not change an address does not call again.
    ag._q.put((time.monotonic(), Update("/tabby/v3/nodes/n4", node_doc("n4", "172.31.0.4/24"),
                                        44)))
    wait_until(lambda: ag.applied_revision == 44)
    assert len(ipip.peer_calls) == 3


def test_node_ipv4() -> None:
    assert node_ipv4({"spec": {"bgp": {"ipv4Address": "172.31.0.10/24"}}}) == "172.31.0.10"
    assert node_ipv4({"spec": {"bgp": {"ipv4Address": "fd00::1/64"}}}) is None
    assert node_ipv4({"spec": {}}) is None and node_ipv4(None) is None


def test_dataplane_order_ipip_before_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    ag = Agent(AgentConfig(node_name="n1", bgp=False))
    ag.underlay, ag.node = UL, NodeState("n1", UL, None, None, 1)
    ag._ipip = FakeIpip()
    ag._build_dataplanes()
    assert [dp.name for dp in ag.dataplanes] == ["nft", "ipip", "routes"]
    routes = ag.dataplanes[2].driver
    assert routes.ipip_handled and routes.yield_protos == {81}
    ag._ipip = None
    ag._build_dataplanes()
    assert [dp.name for dp in ag.dataplanes] == ["nft", "routes"]
    assert ag.dataplanes[1].driver.yield_protos == frozenset()


def test_agent_annotation_follows_the_ipip_dataplane(monkeypatch: pytest.MonkeyPatch) -> None:
    import tabby.dataplane.ipip as ipip_pkg

    ag = Agent(AgentConfig(node_name="n1", ipip="bpf"))
    ag.underlay = UL
    monkeypatch.setattr(ipip_pkg, "IpipDataplane", lambda *a, **kw: FakeIpip())
    assert isinstance(ag._make_ipip(), FakeIpip)
    assert ag._annotations == {ANNOTATION: "bpf"}

    def no_ipip(*a: Any, **kw: Any) -> Any:
        raise ipip_pkg.IpipError("implementation 'bpf': no BPF object")

    monkeypatch.setattr(ipip_pkg, "IpipDataplane", no_ipip)
    assert ag._make_ipip() is None and "no BPF object" in (ag.ipip_error or "")
    assert ag._annotations == {ANNOTATION: None}  # managed: removed if a previous run set it
    off = Agent(AgentConfig(node_name="n1", ipip="off"))
    assert off._make_ipip() is None and off._annotations == {ANNOTATION: None}
    # Someone removes the annotation: registration runs again.
    ag._annotations = {ANNOTATION: "bpf"}
    doc = {"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4Address": UL.cidr}}}
    assert ag._registration_drifted(doc)
    doc["metadata"]["annotations"] = {ANNOTATION: "bpf"}
    assert not ag._registration_drifted(doc)


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Datastore]:
    store = open_datastore(f"sqlite://{tmp_path / 'tabby.db'}")
    yield store
    store.close()


def test_registration_sets_keeps_and_removes_managed_annotations(ds: Datastore) -> None:
    rc = ResourceClient(ds)
    rc.create(from_dict({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                         "metadata": {"name": "n1", "annotations": {"team": "net"}},
                         "spec": {}}))
    first = NodeRegistrar(ds, "n1", UL, annotations={ANNOTATION: "bpf"}).reconcile()
    assert first.changed
    assert rc.get("Node", "n1").metadata.annotations == {"team": "net", ANNOTATION: "bpf"}
    rev = ds.revision()
    assert not NodeRegistrar(ds, "n1", UL, annotations={ANNOTATION: "bpf"}).reconcile().changed
    assert ds.revision() == rev  # idempotent: no write
    # Not managed: left alone. Managed and None: removed, foreign annotations kept.
    NodeRegistrar(ds, "n1", UL).reconcile()
    assert rc.get("Node", "n1").metadata.annotations[ANNOTATION] == "bpf"
    NodeRegistrar(ds, "n1", UL, annotations={ANNOTATION: None}).reconcile()
    assert rc.get("Node", "n1").metadata.annotations == {"team": "net"}
    NodeRegistrar(ds, "n2", UL, annotations={ANNOTATION: None}).reconcile()
    assert rc.get("Node", "n2").metadata.annotations is None


def test_registration_of_the_ipv6_address_follows_ip6(ds: Datastore) -> None:
    rc = ResourceClient(ds)
    ul6 = Underlay("eth0", 2, "172.31.0.10", 24, 1500, "fd00:1::a", 64)
    rc.create(from_dict({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                         "metadata": {"name": "n1"},
                         "spec": {"bgp": {"ipv6Address": "fd00:9::9/64"}}}))
    NodeRegistrar(ds, "n1", ul6).reconcile()  # IP6=none (Calico's default): left alone
    assert rc.get("Node", "n1").spec.bgp.ipv6Address == "fd00:9::9/64"
    NodeRegistrar(ds, "n1", ul6, ip6_autodetect=True).reconcile()
    bgp = rc.get("Node", "n1").spec.bgp
    assert (bgp.ipv4Address, bgp.ipv6Address) == ("172.31.0.10/24", "fd00:1::a/64")
    NodeRegistrar(ds, "n1", UL, ip6_autodetect=True).reconcile()  # no IPv6 found: kept
    assert rc.get("Node", "n1").spec.bgp.ipv6Address == "fd00:1::a/64"


def test_typha_options_reach_the_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import tabby.typha.client as client_mod

    got: dict[str, Any] = {}

    class Client:
        def __init__(self, addresses: str, sink: Any, **kw: Any) -> None:
            got.update(kw, addresses=addresses)

        def start(self) -> None:
            got["started"] = True

    monkeypatch.setattr(client_mod, "TyphaClient", Client)
    ctx, ident = object(), object()
    ag = Agent(AgentConfig(node_name="n1", typha="10.0.0.5:5473", typha_fallback=7.5,
                           typha_ssl_context=ctx, typha_identity=ident))
    ag._start_syncer()
    assert got["addresses"] == "10.0.0.5:5473" and got["started"]
    assert got["ssl_context"] is ctx and got["server_identity"] is ident
    assert got["fallback"] is ag._factory and got["fallback_after"] == 7.5
    got.clear()
    Agent(AgentConfig(node_name="n1", typha="10.0.0.5:5473"))._start_syncer()
    assert "fallback" not in got and got["ssl_context"] is None


def test_module_keeps_named_netns_for_the_guard() -> None:
    assert callable(agent_mod.named_netns)
