"""Scenario tests (Felix's calc-graph expanders): a sequence of datastore states replayed
forward, in reverse, with empty states between, split key by key and squashed. After every
state, the dataplane model folded from the incremental messages must equal what a fresh
graph fed only that state produces; the model also checks the message order contract
(IP sets before rules, policies before endpoints, VTEPs before routes, removals reversed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tabby.calc import samples as s
from tabby.calc.fold import DataplaneModel, fresh_state
from tabby.calc.graph import CalcGraph

ME = "n1"
State = dict[str, Any]
MAC2 = "66:00:00:00:00:02"

HTTP = [{"name": "http", "protocol": "TCP", "port": 8080}]


def state(*items: tuple[str, Any]) -> State:
    return dict(items)


BASE = [
    s.namespace("prod", {"env": "prod"}),
    s.workload("prod", "web", ME, ["10.0.0.1"], {"app": "web"}, ports=HTTP),
    s.workload("prod", "api", ME, ["10.0.0.2", "fd00::2"], {"app": "api"}, sa="api-sa"),
    s.workload("prod", "db", "n2", ["10.0.1.1"], {"app": "db"}),
    s.workload("dev", "db", "n2", ["10.0.1.2"], {"app": "db"}, ports=HTTP),
    s.pool("pool", "10.0.0.0/16", vxlan="Always", nat=True),
    s.node("n1", "192.168.0.1/24", vxlan_ip="10.0.0.129", vxlan_mac="66:00:00:00:00:01"),
    s.node("n2", "192.168.0.2/24", vxlan_ip="10.0.1.129", vxlan_mac=MAC2),
    s.block("10.0.0.0/26", ME), s.block("10.0.1.0/26", "n2"),
]
ALLOW_DB = s.global_policy("allow-db", "app == 'web'", ingress=[
    {"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'db'"}}])
API_EGRESS = s.policy("prod", "api-egress", "app == 'api'", egress=[
    {"action": "Allow", "protocol": "TCP",
     "destination": {"namespaceSelector": "all()", "ports": ["http"]}}])

S1 = state(*BASE, ALLOW_DB, API_EGRESS)

S2 = state(
    *BASE,
    s.workload("prod", "db", "n2", ["10.0.1.1"], {"app": "cache"}),  # leaves the set
    s.workload("prod", "web", "n2", ["10.0.1.7"], {"app": "web"}, ports=HTTP),  # not local
    s.network_set(None, "corp", ["172.16.0.0/12", "10.9.9.9/32"], {"app": "db"}),
    s.global_policy("allow-db", "app in {'web', 'api'}", ingress=[
        {"action": "Allow", "source": {"selector": "app == 'db'",
                                       "namespaceSelector": "env == 'prod'"}},
        {"action": "Deny", "source": {"notSelector": "app == 'db'"}}]),
    API_EGRESS,
    s.tier("sec", 10, "Pass"),
    s.global_policy("sec.all", "all()", tier="sec", types=["Ingress", "Egress"],
                    ingress=[{"action": "Pass"}], egress=[{"action": "Pass"}]),
)

S3 = state(
    *[kv for kv in BASE if kv[0] != s.namespace("prod")[0]],  # the namespace goes
    s.profile("team", labels_to_apply={"team": "t1", "app": "shadowed"},
              ingress=[{"action": "Allow", "source": {"selector": "team == 't1'"}}]),
    s.workload("prod", "web", ME, ["10.0.0.1"], {"app": "web"}, ports=HTTP,
               profiles=["team"]),
    s.global_policy("team", "team == 't1'", ingress=[
        {"action": "Allow", "destination": {"ports": ["http"]}}]),
    s.pool("pool", "10.0.0.0/16", vxlan="CrossSubnet", nat=True),
    s.node("n2", "192.168.5.2/24", vxlan_ip="10.0.1.129", vxlan_mac=MAC2),
    s.block("10.0.2.0/26", "n2"),
    ALLOW_DB,
)

S4 = state(
    *BASE,
    s.host_endpoint("n1-eth0", ME, "eth0", ["192.168.0.1"], {"host": "yes"},
                    profiles=["host-prof"]),
    s.host_endpoint("n2-eth0", "n2", "eth0", ["192.168.0.2"], {"host": "yes"}),
    s.profile("host-prof", egress=[{"action": "Allow"}]),
    s.global_policy("hosts", "has(host)", ingress=[
        {"action": "Allow", "source": {"selector": "has(host)"}}]),
    s.global_policy("raw", "has(host)", doNotTrack=True, applyOnForward=True, ingress=[
        {"action": "Deny", "source": {"nets": ["10.66.0.0/16"]}}]),
    s.k8s_policy("prod", "web", podSelector={"matchLabels": {"app": "web"}},
                 ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]),
    s.namespace("dev", {"env": "dev"}),
    s.felix_config("default", defaultEndpointToHostAction="Accept"),
    s.pool("pool", "10.0.0.0/16", ipip="Always"),
    s.workload("prod", "api", ME, ["10.0.0.3"], {"app": "api"}, sa="api-sa"),
)

SCENARIO = [S1, S2, S3, S4]


# -- the driver -----------------------------------------------------------------------------


def replay(states: list[State], *, order: Callable[[list[str]], list[str]] = sorted,
           check_each: bool = True, in_sync_first: bool = True) -> None:
    """Feed the differences between consecutive states; compare with a fresh graph."""
    model = DataplaneModel()
    graph = CalcGraph(ME, model.apply)
    if in_sync_first:
        graph.on_in_sync()
    current: State = {}
    for st in states:
        keys = [k for k in current if k not in st] + [
            k for k, v in st.items() if current.get(k) != v]
        for key in order(keys):
            graph.on_update(key, st.get(key))
        current = dict(st)
        if check_each:
            graph.on_in_sync()
            assert model.state() == fresh_state(ME, st.items())
    graph.on_in_sync()
    assert model.state() == fresh_state(ME, current.items())
    assert model.in_sync


def rev(keys: list[str]) -> list[str]:
    return sorted(keys, reverse=True)


def split(states: list[State]) -> list[State]:
    """Each transition one key at a time: every intermediate state is checked too."""
    out: list[State] = []
    current: State = {}
    for st in states:
        for key in sorted(set(current) | set(st)):
            if current.get(key) != st.get(key):
                current = dict(current)
                if key in st:
                    current[key] = st[key]
                else:
                    del current[key]
                out.append(current)
    return out


def with_empties(states: list[State]) -> list[State]:
    out: list[State] = []
    for st in states:
        out += [st, {}]
    return out


EXPANDERS: dict[str, Callable[[list[State]], list[State]]] = {
    "forward": lambda sts: sts,
    "reverse": lambda sts: sts[::-1],
    "empties": with_empties,
    "reverse-empties": lambda sts: with_empties(sts[::-1]),
    "squashed": lambda sts: [sts[-1]],
    "first-last": lambda sts: [sts[0], sts[-1], sts[0]],
}


@pytest.mark.parametrize("order", [sorted, rev], ids=["keys-sorted", "keys-reversed"])
@pytest.mark.parametrize("expander", list(EXPANDERS))
def test_scenario(expander: str, order: Callable[[list[str]], list[str]]) -> None:
    replay(EXPANDERS[expander](SCENARIO), order=order)


@pytest.mark.parametrize("states", [SCENARIO, SCENARIO[::-1]], ids=["forward", "reverse"])
def test_scenario_split_key_by_key(states: list[State]) -> None:
    replay(split(states))


@pytest.mark.parametrize("order", [sorted, rev], ids=["keys-sorted", "keys-reversed"])
def test_scenario_before_in_sync_is_coalesced(order: Callable[[list[str]], list[str]]) -> None:
    """Start of day: every state applied before the first InSync, then one flush."""
    replay(SCENARIO + SCENARIO[::-1] + [S2], order=order, check_each=False,
           in_sync_first=False)


def test_pairs_of_states_both_ways() -> None:
    for a in SCENARIO:
        for b in SCENARIO:
            if a is not b:
                replay([a, b])


def test_order_contract_is_really_checked() -> None:
    # The harness would notice a dataplane told to jump to a policy it never got.
    from tabby.calc import messages as m
    from tabby.calc.fold import OrderError

    model = DataplaneModel()
    with pytest.raises(OrderError, match="policies not sent"):
        model.apply(m.WorkloadEndpointUpdate("x/y", "calix", tiers=(
            m.TierInfo("default", ingress_policies=("p",)),)))
    with pytest.raises(OrderError, match="IP sets not sent"):
        model.apply(m.PolicyUpdate(("default", "p"), (m.Rule("allow", src_ip_set_ids=("s:x",)),)))


@pytest.mark.parametrize("index", range(len(SCENARIO)))
def test_every_state_renders_as_an_nft_table_without_problems(index: int) -> None:
    """What the graph emits is accepted whole by the nft renderer (no rule, set or
    endpoint it must fail closed on)."""
    from tabby.dataplane.nft.render import DataplaneState, build

    model = DataplaneModel()
    graph = CalcGraph(ME, model.apply)
    for key, value in SCENARIO[index].items():
        graph.on_update(key, value)
    graph.on_in_sync()
    state = DataplaneState(
        config=model.config or DataplaneState().config,
        ipsets={k: _ipset(k, kind, members) for k, (kind, members) in model.ipsets.items()},
        policies=dict(model.policies), profiles=dict(model.profiles),
        workloads=dict(model.workloads), host_endpoints=dict(model.host_endpoints),
        pools=dict(model.pools))
    rendered = build(state)
    assert rendered.problems == {}
    from tabby.calc.fold import endpoint_policies
    from tabby.dataplane.nft import names

    used = set().union(*(endpoint_policies(ep) for ep in (
        *model.workloads.values(), *model.host_endpoints.values())))
    assert used
    for pid in used:  # every policy an endpoint jumps to became a chain
        assert {names.policy_chain(str(pid), True), names.policy_chain(str(pid), False)} & set(
            rendered.ruleset.chains), pid


def _ipset(set_id: str, kind: str, members: set[str]) -> Any:
    from tabby.calc.messages import IPSetUpdate

    return IPSetUpdate(set_id, kind, frozenset(members))
