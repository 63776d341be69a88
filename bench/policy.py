"""Policy benchmarks: the selector label index and the policy matrix.

    .venv/bin/python bench/policy.py [--only label-index] [--endpoints 10000]
        [--selectors 1000] [--changes 200] [--seed 1] [--json]
        [--matrix-endpoints 1000] [--matrix-policies 100] [--matrix-sample 3000]

Each benchmark is one function taking the parsed arguments and returning a list of rows
(metric, value, unit, baseline, baseline value); main() runs the selected ones and prints
every figure next to a baseline measured in the same run, with the ratio.

label-index: a LabelIndex with N endpoints (app, tier, version, namespace, a unique pod
name, some optional labels, plus labels inherited from a namespace parent) and M
selectors (==, in, has, !has, !=, &&, || mixes). It measures the initial build, the
average cost of one endpoint-label change and of one selector change, and a namespace
label change, against the naive way: evaluate every selector against every endpoint.

policy-matrix: `tabby policy matrix` over a synthetic cluster (--matrix-endpoints pods in
namespaces of 50, --matrix-policies policies: 60% Kubernetes NetworkPolicies, 30% Calico
policies in the default tier, 10% in a higher tier with Deny/Pass), against per-pair
evaluation with the reference evaluator (sampled, scaled to the full matrix).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.selector import LabelIndex, Selector, parse  # noqa: E402

Row = dict[str, Any]

NAMESPACE = "projectcalico.org/namespace"
TIERS = ["frontend", "backend", "db", "cache"]
VERSIONS = ["v1", "v2", "v3", "v4", "v5"]


# -- label-index workload --------------------------------------------------------------


class Workload:
    """Deterministic endpoints, namespaces and selectors for the label-index benchmark."""

    def __init__(self, seed: int, n_endpoints: int, n_selectors: int):
        self.rng = random.Random(seed)
        self.n_apps = max(10, n_endpoints // 100)
        self.n_namespaces = max(5, n_endpoints // 200)
        self.namespaces = {
            f"kns.ns{i}": {
                "pcns.projectcalico.org/name": f"ns{i}",
                "pcns.env": self.rng.choice(["prod", "staging", "dev"]),
            }
            for i in range(self.n_namespaces)
        }
        self.endpoints = {f"pod-{i}": self.endpoint(i) for i in range(n_endpoints)}
        self.selectors = {f"sel-{i}": self.selector() for i in range(n_selectors)}

    def endpoint(self, i: int) -> tuple[dict[str, str], list[str]]:
        rng = self.rng
        ns = rng.randrange(self.n_namespaces)
        labels = {
            "app": f"app{rng.randrange(self.n_apps)}",
            "tier": rng.choice(TIERS),
            "version": rng.choice(VERSIONS),
            NAMESPACE: f"ns{ns}",
            "pod-template-hash": f"{rng.getrandbits(40):010x}",
            "name": f"pod-{i}",  # unique
        }
        if rng.random() < 0.5:
            labels["team"] = f"team{rng.randrange(20)}"
        if rng.random() < 0.05:
            labels["canary"] = "true"
        return labels, [f"kns.ns{ns}"]

    def selector(self) -> Selector:
        rng = self.rng
        app = lambda: f"app{rng.randrange(self.n_apps)}"  # noqa: E731
        ns = lambda: f"ns{rng.randrange(self.n_namespaces)}"  # noqa: E731
        tier = lambda: rng.choice(TIERS)  # noqa: E731
        # Mostly narrow, as real policies are (one app, one namespace); a few broad ones
        # (!has, !=, has(namespace)) that match most endpoints.
        kind = rng.random()
        if kind < 0.30:  # a NetworkPolicy selector scoped to its namespace
            text = f"(app == '{app()}') && {NAMESPACE} == '{ns()}'"
        elif kind < 0.45:
            text = f"app == '{app()}'"
        elif kind < 0.55:
            text = f"app in {{'{app()}', '{app()}', '{app()}'}} && tier == '{tier()}'"
        elif kind < 0.63:
            text = f"has(team) && app == '{app()}'"
        elif kind < 0.69:
            text = f"app == '{app()}' || app == '{app()}' && tier == '{tier()}'"
        elif kind < 0.77:
            text = f"app == '{app()}' && version != 'v1'"
        elif kind < 0.85:
            text = f"pcns.env == 'prod' && app in {{'{app()}', '{app()}'}}"
        elif kind < 0.91:
            text = f"app == '{app()}' && !has(canary)"
        elif kind < 0.94:
            text = f"team == 'team{rng.randrange(20)}' || has(canary)"
        elif kind < 0.96:
            text = f"version starts with 'v{rng.randrange(1, 6)}' && {NAMESPACE} == '{ns()}'"
        elif kind < 0.98:
            text = "!has(canary)" if rng.random() < 0.5 else f"tier != '{tier()}'"
        else:
            text = f"has({NAMESPACE}) && !(tier == 'db' || canary == 'true')"
        return parse(text)

    def endpoint_change(self, ep_id: str) -> dict[str, str]:
        labels = dict(self.endpoints[ep_id][0])
        rng = self.rng
        which = rng.random()
        if which < 0.4:
            labels["app"] = f"app{rng.randrange(self.n_apps)}"
        elif which < 0.6:
            labels["version"] = rng.choice(VERSIONS)
        elif which < 0.8:
            labels["tier"] = rng.choice(TIERS)
        elif "canary" in labels:
            del labels["canary"]
        else:
            labels["canary"] = "true"
        return labels


def _effective(workload: Workload, ep_id: str) -> dict[str, str]:
    own, parents = workload.endpoints[ep_id]
    merged: dict[str, str] = {}
    for parent in reversed(parents):
        merged.update(workload.namespaces[parent])
    merged.update(own)
    return merged


def _naive_pass(selectors: list[Selector], labels: list[dict[str, str]]) -> int:
    """Every selector against every endpoint: what a non-incremental design redoes."""
    n = 0
    for sel in selectors:
        fn = sel.matches
        for lab in labels:
            if fn(lab):
                n += 1
    return n


def bench_label_index(args: argparse.Namespace) -> list[Row]:
    wl = Workload(args.seed, args.endpoints, args.selectors)
    events = [0]

    def on_event(sel_id: Any, ep_id: Any) -> None:
        events[0] += 1

    # Compile every matcher up front so neither side pays for it in its timings.
    for sel in wl.selectors.values():
        sel.matches({})

    t0 = time.perf_counter()
    idx = LabelIndex(on_event, on_event)
    for parent_id, plabels in wl.namespaces.items():
        idx.update_parent(parent_id, plabels)
    for ep_id, (labels, parents) in wl.endpoints.items():
        idx.update_endpoint(ep_id, labels, parents)
    t_eps = time.perf_counter() - t0
    t0 = time.perf_counter()
    for sel_id, sel in wl.selectors.items():
        idx.update_selector(sel_id, sel)
    t_sels = time.perf_counter() - t0
    build = t_eps + t_sels
    n_matches = events[0]

    # Baseline: a full evaluation of every selector against every endpoint (best of N).
    effective = [_effective(wl, ep_id) for ep_id in wl.endpoints]
    sel_list = list(wl.selectors.values())
    naive = float("inf")
    for _ in range(args.naive_repeat):
        t0 = time.perf_counter()
        naive_matches = _naive_pass(sel_list, effective)
        naive = min(naive, time.perf_counter() - t0)
        assert naive_matches == n_matches, (naive_matches, n_matches)

    # Endpoint label changes, timed one by one.
    ep_ids = list(wl.endpoints)
    changes = []
    for _ in range(args.changes):
        ep_id = wl.rng.choice(ep_ids)
        labels = wl.endpoint_change(ep_id)
        changes.append((ep_id, labels, wl.endpoints[ep_id][1]))
        wl.endpoints[ep_id] = (labels, wl.endpoints[ep_id][1])
    events[0] = 0
    ep_times = []
    for ep_id, labels, parents in changes:
        t0 = time.perf_counter()
        idx.update_endpoint(ep_id, labels, parents)
        ep_times.append(time.perf_counter() - t0)
    ep_events = events[0] / len(changes)

    # Per-endpoint scan baseline (every selector against the changed endpoint).
    t0 = time.perf_counter()
    for ep_id, _labels, _parents in changes:
        lab = _effective(wl, ep_id)
        for sel in sel_list:
            sel.matches(lab)
    ep_scan = (time.perf_counter() - t0) / len(changes)

    # Selector changes: replace a random selector with a new random one.
    sel_ids = list(wl.selectors)
    new_sels = [(wl.rng.choice(sel_ids), wl.selector()) for _ in range(args.changes)]
    for _, sel in new_sels:
        sel.matches({})
    events[0] = 0
    sel_times = []
    for sel_id, sel in new_sels:
        t0 = time.perf_counter()
        idx.update_selector(sel_id, sel)
        sel_times.append(time.perf_counter() - t0)
    sel_events = events[0] / len(new_sels)
    t0 = time.perf_counter()
    for _, sel in new_sels:
        fn = sel.matches
        for lab in effective:
            fn(lab)
    sel_scan = (time.perf_counter() - t0) / len(new_sels)

    # A namespace label change, inherited by every pod of the namespace.
    parent_ids = list(wl.namespaces)
    n_parent = min(20, len(parent_ids))
    events[0] = 0
    t0 = time.perf_counter()
    for parent_id in parent_ids[:n_parent]:
        plabels = dict(wl.namespaces[parent_id])
        plabels["pcns.env"] = "prod" if plabels["pcns.env"] != "prod" else "dev"
        idx.update_parent(parent_id, plabels)
    parent_change = (time.perf_counter() - t0) / n_parent
    parent_events = events[0] / n_parent
    pods_per_ns = len(wl.endpoints) / len(wl.namespaces)

    mean = statistics.fmean
    median = statistics.median
    sizes = f"{args.endpoints} endpoints x {args.selectors} selectors"
    full = f"naive full pass ({sizes})"
    return [
        _row(f"initial build: {args.endpoints} endpoints", t_eps, "s"),
        _row(f"initial build: + {args.selectors} selectors", t_sels, "s"),
        _row(f"initial build total ({n_matches} matches)", build, "s", full, naive),
        _row(f"endpoint-label change, mean of {len(ep_times)} ({ep_events:.1f} events each)",
             mean(ep_times), "ms", full, naive),
        _row("endpoint-label change, median", median(ep_times), "ms", full, naive),
        _row("endpoint-label change, mean", mean(ep_times), "ms",
             "all selectors x that endpoint", ep_scan),
        _row(f"selector change, mean of {len(sel_times)} ({sel_events:.1f} events each)",
             mean(sel_times), "ms", full, naive),
        _row("selector change, median", median(sel_times), "ms", full, naive),
        _row("selector change, mean", mean(sel_times), "ms",
             "that selector x all endpoints", sel_scan),
        _row(f"namespace label change (~{pods_per_ns:.0f} pods, {parent_events:.0f} events)",
             parent_change, "ms", full, naive),
    ]


def _row(metric: str, seconds: float, unit: str, baseline: str = "", base_s: float = 0.0) -> Row:
    return {"metric": metric, "seconds": seconds, "unit": unit, "baseline": baseline,
            "baseline_seconds": base_s}


# -- policy matrix -------------------------------------------------------------------------


def _matrix_cluster(n_endpoints: int, n_policies: int, seed: int = 1) -> list[dict[str, Any]]:
    """A synthetic cluster: namespaces, labelled pods, k8s and Calico policies in two tiers."""
    rng = random.Random(seed)
    n_ns = max(1, n_endpoints // 50)
    docs: list[dict[str, Any]] = []
    for i in range(n_ns):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": f"ns{i}", "labels": {"team": f"team{i % 5}", "env": rng.choice(["prod", "dev"])}}})
    for i in range(n_endpoints):
        ns = f"ns{i % n_ns}"
        docs.append({"apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                     "metadata": {"name": f"pod{i}", "namespace": ns, "labels": {
                         "app": f"app{rng.randrange(20)}", "tier": rng.choice(["fe", "be", "db"])}},
                     "spec": {"orchestrator": "k8s", "node": f"node{i % 10}",
                              "ipNetworks": [f"10.{i // 250}.{i % 250}.1/32"],
                              "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}})
    docs.append({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
                 "metadata": {"name": "security"}, "spec": {"order": 100}})
    for p in range(n_policies):
        kind = p % 10
        ns = f"ns{rng.randrange(n_ns)}"
        app = f"app{rng.randrange(20)}"
        if kind < 6:  # Kubernetes policies
            peer = rng.choice([
                {"podSelector": {"matchLabels": {"tier": "fe"}}},
                {"namespaceSelector": {"matchLabels": {"team": f"team{rng.randrange(5)}"}}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}},
                {"ipBlock": {"cidr": "10.0.0.0/10", "except": ["10.1.0.0/16"]}}])
            docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": f"knp{p}", "namespace": ns},
                         "spec": {"podSelector": {"matchLabels": {"app": app}},
                                  "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [peer],
                                               "ports": [{"port": rng.choice([80, "http"])}]}]}})
        elif kind < 9:  # Calico policies in the default tier
            docs.append({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                         "metadata": {"name": f"gnp{p}"},
                         "spec": {"order": rng.choice([None, 10, 500]),
                                  "selector": f"tier == '{rng.choice(['be', 'db'])}'",
                                  "types": ["Ingress", "Egress"],
                                  "ingress": [{"action": "Allow", "protocol": "TCP",
                                               "source": {"selector": f"app == '{app}'"},
                                               "destination": {"ports": [80, 443]}}],
                                  "egress": [{"action": "Deny", "destination": {
                                      "namespaceSelector": "env == 'dev'"}},
                                             {"action": "Allow"}]}})
        else:  # security tier
            docs.append({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
                         "metadata": {"name": f"security.g{p}"},
                         "spec": {"tier": "security", "selector": "all()", "order": p,
                                  "ingress": [{"action": "Deny", "source": {
                                      "selector": f"app == '{app}' && tier == 'db'"}},
                                      {"action": "Pass"}]}})
    return docs


def bench_policy_matrix(args: argparse.Namespace) -> list[Row]:
    """`tabby policy matrix`: per-endpoint chains resolved once, rule masks over endpoints.

    Baselines, measured in this run on a random sample of pairs and scaled to the full
    matrix: the reference evaluator per pair, re-resolving both endpoints' policy lists each
    time (naive), and the same with the per-endpoint lists cached.
    """
    from tabby.policy.evaluate import evaluate
    from tabby.policy.match import Flow, Matcher, Peer
    from tabby.policy.matrix import reachability
    from tabby.policy.model import PolicySet

    docs = _matrix_cluster(args.matrix_endpoints, args.matrix_policies, args.seed)
    t0 = time.perf_counter()
    ps = PolicySet.from_resources(docs)
    build = time.perf_counter() - t0
    assert not ps.warnings, ps.warnings[:3]
    eps = ps.workload_endpoints()
    n_pairs = len(eps) * (len(eps) - 1)

    t0 = time.perf_counter()
    result = reachability(ps, eps, protocol=6, port=80)
    matrix = time.perf_counter() - t0
    allowed = sum(ok for row in result.values() for ok in row.values())

    rng = random.Random(args.seed + 1)
    sample = [tuple(rng.sample(eps, 2)) for _ in range(args.matrix_sample)]

    def per_pair(cached: bool) -> float:
        fresh = PolicySet.from_resources(docs)  # empty caches
        m = Matcher(fresh)
        t = time.perf_counter()
        for s, d in sample:
            s2, d2 = fresh.endpoints[s.key], fresh.endpoints[d.key]
            flow = Flow(Peer(s2, s2.ip(4)), Peer(d2, d2.ip(4)), 6, dst_port=80)
            assert evaluate(fresh, flow, matcher=m, cached=cached).allowed == \
                result[s.key][d.key], (s.key, d.key)
        return (time.perf_counter() - t) * n_pairs / len(sample)

    naive = per_pair(False)
    cached = per_pair(True)
    sizes = f"{len(eps)} endpoints x {len(ps.policies)} policies"
    return [
        _row(f"policy set build ({sizes})", build, "s"),
        _row(f"full matrix TCP/80, {n_pairs:,} pairs ({n_pairs / matrix:,.0f} pairs/s, "
             f"{allowed:,} allowed)", matrix, "s",
             f"naive per-pair evaluation ({n_pairs / naive:,.0f} pairs/s, "
             f"from {len(sample)} sampled pairs)", naive),
        _row("   same, vs per-pair evaluation with cached per-endpoint lists", matrix, "s",
             f"per pair, cached lists ({n_pairs / cached:,.0f} pairs/s)", cached),
    ]


BENCHMARKS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "label-index": bench_label_index,
    "policy-matrix": bench_policy_matrix,
}


def _fmt(seconds: float, unit: str) -> str:
    return f"{seconds:.3f} s" if unit == "s" else f"{seconds * 1e3:.3f} ms"


def print_table(name: str, rows: list[Row]) -> None:
    print(f"\n### {name}\n")
    print("| metric | tabby | baseline | baseline time | ratio |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        base = r["baseline_seconds"]
        ratio = ""
        if base and r["seconds"]:
            x = base / r["seconds"]
            ratio = f"{x:,.0f}x" if x >= 10 else f"{x:.1f}x"
        base_txt = _fmt(base, "s" if base >= 0.1 else "ms") if base else ""
        print(f"| {r['metric']} | {_fmt(r['seconds'], r['unit'])} | {r['baseline']} "
              f"| {base_txt} | {ratio} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--selectors", type=int, default=1_000)
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--matrix-endpoints", type=int, default=1_000,
                        help="policy-matrix: workload endpoints")
    parser.add_argument("--matrix-policies", type=int, default=100,
                        help="policy-matrix: policies")
    parser.add_argument("--matrix-sample", type=int, default=3_000,
                        help="policy-matrix: pairs sampled for the per-pair baselines")
    parser.add_argument("--naive-repeat", type=int, default=2,
                        help="run the naive full pass this many times, keep the best")
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    print(f"{date.today()} | Python {platform.python_version()} | {cpu}, "
          f"{os.cpu_count()} cores | {platform.system()} {platform.release()}")
    results = {}
    for name in args.only or list(BENCHMARKS):
        rows = BENCHMARKS[name](args)
        print_table(name, rows)
        results[name] = rows
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
