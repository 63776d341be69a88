"""The agent without a kernel: the apply loop (coalescing, no apply before InSync, backoff,
readiness), registration against a real sqlite datastore, metrics and logs formats, the
health server on loopback, and the refusal to run outside a node namespace."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.agent import agent as agent_mod
from tabby.agent.agent import Agent, AgentConfig, AgentError, DataplaneState
from tabby.agent.health import health_server, metrics_server
from tabby.agent.logs import KVFormatter, ctx, setup_logging
from tabby.agent.metrics import AgentMetrics, Registry
from tabby.agent.node import NodeRegistrar, NodeState, Underlay, tunnel_from_node, vtep_mac
from tabby.datastore import Datastore, open_datastore
from tabby.datastore.client import ResourceClient
from tabby.datastore.syncer import InSync, OutOfSync, SyncStatus, Update
from tabby.ipam.allocator import IPAM
from tabby.resources import from_dict

WAIT = 10.0  # a bound that turns a hang into a failure
UL = Underlay("eth0", 2, "172.31.0.10", 24, 1500)


# --- the loop, with fakes --------------------------------------------------------------


class FakeCalc:
    """Emits one message per update once in sync (as the real graph does)."""

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.in_sync = False
        self.seen: list[str] = []

    def on_update(self, key: str, value: dict | None) -> None:
        self.seen.append(key)
        if self.in_sync:
            self.emit(("msg", key))

    def on_in_sync(self) -> None:
        if not self.in_sync:
            for key in self.seen:
                self.emit(("msg", key))
            self.in_sync = True

    def stats(self) -> dict[str, int]:
        return {}


class FakeDataplane:
    def __init__(self, fail: int = 0) -> None:
        self.pending_msgs: list[Any] = []
        self.applies: list[list[Any]] = []
        self.fail = fail  # fail this many applies first
        self.applied = threading.Event()

    @property
    def pending(self) -> bool:
        return bool(self.pending_msgs)

    def on_update(self, msg: Any) -> None:
        self.pending_msgs.append(msg)

    def apply(self) -> Any:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("kernel said no")
        self.applies.append(self.pending_msgs)
        self.pending_msgs = []
        self.applied.set()
        return None

    def problems(self) -> dict[str, str]:
        return {}


class FakeSyncer:
    def __init__(self) -> None:
        self.status = SyncStatus(state="in-sync", in_sync=True, synced_once=True)
        self.running = True


@pytest.fixture
def looping() -> Iterator[Any]:
    made: list[tuple[Agent, threading.Thread]] = []

    def start(*dps: FakeDataplane, **cfg: Any) -> Agent:
        agent = Agent(AgentConfig(node_name="n1", **cfg))
        agent.dataplanes = [DataplaneState(f"dp{i}", dp) for i, dp in enumerate(dps)]
        agent.calc = FakeCalc(agent._emit)
        agent.syncer = FakeSyncer()
        agent.node = NodeState("n1", UL, None, None, 1)  # registered
        t = threading.Thread(target=agent.run_loop, daemon=True)
        t.start()
        made.append((agent, t))
        return agent

    yield start
    for agent, t in made:
        agent.stop()
        t.join(WAIT)
        assert not t.is_alive()


def put(agent: Agent, item: Any) -> None:
    agent._q.put((time.monotonic(), item))


def wait_until(fn: Any) -> None:
    end = time.monotonic() + WAIT
    while not fn():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_no_apply_before_in_sync_then_one_apply_for_a_burst(looping: Any) -> None:
    dp = FakeDataplane()
    agent = looping(dp)
    for i in range(50):
        put(agent, Update(f"/tabby/v3/x/{i}", b"{}", i + 1))
    wait_until(lambda: len(agent.calc.seen) == 50)
    assert dp.applies == [] and not agent.readiness()[0]
    # The burst and InSync arrive together: one apply carries everything.
    put(agent, InSync(50))
    assert dp.applied.wait(WAIT)
    wait_until(lambda: agent.programmed_once)
    assert len(dp.applies) == 1 and len(dp.applies[0]) == 50
    ready, body = agent.readiness()
    assert ready and body["applied_revision"] == 50
    assert agent.metrics.sync_latency.count() == 1
    # Later updates: applied too, and revision tracked.
    put(agent, Update("/tabby/v3/x/new", b"{}", 51))
    wait_until(lambda: agent.applied_revision == 51)
    assert dp.applies[-1] == [("msg", "/tabby/v3/x/new")]


def test_failed_apply_keeps_state_backs_off_and_recovers(looping: Any) -> None:
    bad, good = FakeDataplane(fail=10**6), FakeDataplane()
    agent = looping(bad, good, apply_backoff_max=0.05)
    put(agent, Update("/tabby/v3/x/a", b"{}", 1))
    put(agent, InSync(1))
    assert good.applied.wait(WAIT)  # one failing driver does not hold the others back
    wait_until(lambda: agent.dataplanes[0].failures >= 3)
    ready, body = agent.readiness()
    assert not ready and any("dp0 apply failing: RuntimeError: kernel said no" in r
                             for r in body["reasons"])
    assert agent.status()["dataplanes"]["dp0"]["failing"] >= 3
    bad.fail = 0  # the kernel accepts again
    assert bad.applied.wait(WAIT)
    wait_until(lambda: agent.programmed_once and agent.readiness()[0])
    assert bad.applies == [[("msg", "/tabby/v3/x/a")]]  # the pending state survived
    assert agent.metrics.apply_errors.value(dataplane="dp0") >= 3


def test_out_of_sync_is_not_ready_but_keeps_the_dataplane(looping: Any) -> None:
    dp = FakeDataplane()
    agent = looping(dp)
    put(agent, InSync(1))
    wait_until(lambda: agent.readiness()[0])
    agent.syncer.status = SyncStatus(state="out-of-sync", in_sync=False, synced_once=True,
                                     last_error="Unavailable: gone (test)")
    put(agent, OutOfSync("Unavailable: gone (test)"))
    ready, body = agent.readiness()
    assert not ready and any("gone (test)" in r for r in body["reasons"])
    assert agent.liveness()[0]  # alive: keep enforcing, do not restart the agent


def test_bad_json_is_a_delete_not_a_crash(looping: Any, caplog: Any) -> None:
    dp = FakeDataplane()
    agent = looping(dp)
    with caplog.at_level(logging.ERROR):
        put(agent, Update("/tabby/v3/x/bad", b"{not json", 1))
        put(agent, InSync(1))
        wait_until(lambda: agent.programmed_once)
    assert "undecodable" in caplog.text


def test_refuses_to_run_outside_a_named_namespace(monkeypatch: Any) -> None:
    # Everything that could touch anything fails loudly if reached.
    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("went past the namespace check")

    monkeypatch.setattr(agent_mod, "detect_underlay", boom)
    monkeypatch.setattr(agent_mod, "named_netns", lambda: None)
    agent = Agent(AgentConfig(node_name="n1"), datastore_factory=boom)
    with pytest.raises(AgentError, match="named network namespace"):
        agent.run()


# --- registration ------------------------------------------------------------------------


@pytest.fixture
def ds(tmp_path: Path) -> Iterator[Datastore]:
    store = open_datastore(f"sqlite://{tmp_path / 'tabby.db'}")
    yield store
    store.close()


def pool(ds: Datastore, name: str, cidr: str, **spec: Any) -> None:
    ResourceClient(ds).apply(from_dict({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
                                        "metadata": {"name": name},
                                        "spec": {"cidr": cidr, **spec}}))


def test_registration_addresses_tunnel_and_idempotence(ds: Datastore) -> None:
    reg = NodeRegistrar(ds, "n1", UL, as_number=64512)
    first = reg.reconcile()
    assert first.changed and first.tunnel_ip is None and first.mac is None
    node = ResourceClient(ds).get("Node", "n1")
    assert node.spec.bgp.ipv4Address == "172.31.0.10/24" and node.spec.bgp.asNumber == 64512
    assert [(a.address, a.type) for a in node.spec.addresses] == [
        ("172.31.0.10/24", "CalicoNodeIP"), ("172.31.0.10", "InternalIP")]
    pool(ds, "no-tunnels", "10.70.0.0/16", vxlanMode="Always", allowedUses=["Workload"])
    pool(ds, "other-nodes", "10.71.0.0/16", vxlanMode="Always", nodeSelector="zone == 'x'")
    assert reg.reconcile().tunnel_ip is None  # neither pool may give us a tunnel address
    pool(ds, "vx", "10.65.0.0/16", vxlanMode="CrossSubnet")
    second = reg.reconcile()
    assert second.changed and second.tunnel_ip is not None
    assert second.tunnel_ip.startswith("10.65.") and second.mac == vtep_mac("n1")
    (alloc,) = IPAM(ds).allocations()
    assert alloc["handle"] == "vxlan-tunnel-addr-n1"
    assert alloc["attrs"] == {"node": "n1", "type": "vxlanTunnelAddress"}
    rev = ds.revision()
    third = reg.reconcile()
    assert not third.changed and third.tunnel_ip == second.tunnel_ip and ds.revision() == rev
    # A restarted agent (new registrar) keeps address and MAC.
    assert NodeRegistrar(ds, "n1", UL).reconcile().tunnel_ip == second.tunnel_ip
    # The VXLAN pool goes: address released, fields cleared.
    ResourceClient(ds).delete("IPPool", "vx")
    gone = reg.reconcile()
    assert gone.tunnel_ip is None and gone.mac is None and IPAM(ds).allocations() == []
    assert tunnel_from_node({"spec": {}}) == (None, None)


def test_registration_keeps_foreign_fields_and_an_operator_mac(ds: Datastore) -> None:
    pool(ds, "vx", "10.65.0.0/16", vxlanMode="Always")
    ResourceClient(ds).create(from_dict({
        "apiVersion": "projectcalico.org/v3", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"zone": "x"}},
        "spec": {"vxlanTunnelMACAddr": "66:55:44:33:22:11",
                 "addresses": [{"address": "203.0.113.7", "type": "ExternalIP"}]}}))
    state = NodeRegistrar(ds, "n1", UL).reconcile()
    node = ResourceClient(ds).get("Node", "n1")
    assert state.mac == "66:55:44:33:22:11" and node.metadata.labels == {"zone": "x"}
    assert ("203.0.113.7", "ExternalIP") in [(a.address, a.type) for a in node.spec.addresses]


def test_registration_retries_cas_conflicts(ds: Datastore, monkeypatch: Any) -> None:
    reg = NodeRegistrar(ds, "n1", UL)
    reg.reconcile()
    real_update = reg.client.update
    calls = {"n": 0}

    def racing_update(res: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # someone else writes the Node between our read and our CAS
            other = reg.client.get("Node", "n1")
            meta = other.metadata.model_copy(update={"labels": {"touched": "yes"}})
            real_update(other.model_copy(update={"metadata": meta}))
        return real_update(res)

    monkeypatch.setattr(reg.client, "update", racing_update)
    reg.underlay = Underlay("eth0", 2, "172.31.0.11", 24, 1500)
    state = reg.reconcile()
    node = ResourceClient(ds).get("Node", "n1")
    assert calls["n"] == 2 and state.changed
    assert node.spec.bgp.ipv4Address == "172.31.0.11/24" and node.metadata.labels == {
        "touched": "yes"}


def test_vtep_mac_is_stable_unicast_and_local() -> None:
    mac = vtep_mac("node-1")
    assert mac == vtep_mac("node-1") != vtep_mac("node-2")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01 and len(mac) == 17


# --- metrics, logs, health ------------------------------------------------------------------


def test_metrics_text_format() -> None:
    r = Registry()
    c = r.counter("t_total", "A counter", ["kind"])
    g = r.gauge("t_gauge", "A gauge")
    h = r.histogram("t_seconds", "A histogram", buckets=(0.1, 1.0))
    c.inc(kind='a"b')
    g.set(2.5)
    h.observe(0.05)
    h.observe(0.5)
    text = r.render()
    assert '# TYPE t_total counter\nt_total{kind="a\\"b"} 1\n' in text
    assert "t_gauge 2.5" in text
    assert 't_seconds_bucket{le="0.1"} 1\nt_seconds_bucket{le="1"} 2\n' \
           't_seconds_bucket{le="+Inf"} 2\nt_seconds_sum 0.55\nt_seconds_count 2' in text
    with pytest.raises(ValueError, match="labels"):
        c.inc()
    with pytest.raises(ValueError, match="registered twice"):
        r.gauge("t_gauge", "again")
    names = [line.split()[2] for line in AgentMetrics().render().splitlines()
             if line.startswith("# TYPE")]
    for want in ("tabby_sync_latency_seconds", "tabby_apply_seconds", "tabby_apply_errors_total",
                 "tabby_nft_rules", "tabby_nft_set_elements", "tabby_datastore_in_sync",
                 "tabby_datastore_revision"):
        assert want in names


def test_structured_log_lines() -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, node="n1")
    try:
        logging.getLogger("tabby.test").info("applied it", extra=ctx(mode="full", seconds=0.5,
                                                                    why='a "b" c'))
    finally:
        setup_logging("info")
    line = out.getvalue().strip()
    assert 'level=info logger=tabby.test msg="applied it" node=n1 mode=full seconds=0.5 ' \
           'why="a \\"b\\" c"' in line
    assert KVFormatter().formatTime(logging.makeLogRecord({"created": 0, "msecs": 5})) == \
        "1970-01-01T00:00:00.005Z"
    with pytest.raises(ValueError, match="--log-level"):
        setup_logging("loud")


def test_health_and_metrics_servers_on_loopback() -> None:
    state = {"ready": False}
    health = health_server("127.0.0.1", 0, lambda: (True, {}),
                           lambda: (state["ready"], {"reasons": [] if state["ready"] else ["x"]}),
                           lambda: {"node": "n1"}).start()
    metrics = metrics_server("127.0.0.1", 0, lambda: "m 1\n").start()
    try:
        base = f"http://127.0.0.1:{health.port}"

        def get(url: str) -> tuple[int, str]:
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        assert get(base + "/liveness")[0] == 200
        code, body = get(base + "/readiness")
        assert code == 503 and json.loads(body) == {"ready": False, "reasons": ["x"]}
        state["ready"] = True
        assert get(base + "/readiness")[0] == 200
        assert json.loads(get(base + "/status")[1]) == {"node": "n1"}
        assert get(base + "/nope")[0] == 404
        assert get(f"http://127.0.0.1:{metrics.port}/metrics") == (200, "m 1\n")
    finally:
        health.stop()
        metrics.stop()
