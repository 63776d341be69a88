"""Calc graph benchmark: Felix's design target on one agent.

    .venv/bin/python bench/calc.py [--endpoints 250000] [--policies 10000] [--local 200]
        [--rate 1000] [--seconds 10] [--seed 1] [--json]

(a) start of day: a synthetic cluster (--endpoints workloads, --local of them on this
    node, --policies policies: mostly namespaced Calico and Kubernetes policies selecting
    on app/role labels, 10% global ones in three tiers on role / namespace labels) plus
    namespaces, nodes, a VXLAN pool and IPAM blocks, fed key by key into a `CalcGraph`,
    then `on_in_sync()`. Measured: wall time to InSync, peak RSS growth. Baselines, same
    run, same documents: (1) `json.loads` of every value (the agent decodes the snapshot
    anyway: the floor any design pays), measured on a sample and scaled; (2) the policy
    engine's batch build `PolicySet.from_resources` over the same documents, which only
    compiles policies and endpoint labels (no IP sets, no messages) - what a
    non-incremental design would redo on every change.
(b) sustained churn: --rate endpoint updates per second for --seconds, paced in real time
    (label changes moving pods between apps/roles, pod restarts with a new IP, and a few
    changes to local pods). Measured: per-update cost p50/p99/max (on_update + flush, until
    the messages are emitted), CPU share, and the backlog (updates arrived but not yet
    processed) - bounded if it stays near zero. Baseline: what one update would cost
    without the incremental index: re-evaluating every active IP set selector over every
    endpoint (sampled and scaled).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import resource
import statistics
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabby.calc import samples as s  # noqa: E402
from tabby.calc.graph import CalcGraph  # noqa: E402
from tabby.resources import from_dict, to_dict  # noqa: E402

KV = tuple[str, dict[str, Any]]
LOCAL = "node-0"
ROLES = ["frontend", "backend", "db", "cache", "worker"]
ENVS = ["prod", "staging", "dev"]
APPS_PER_NS = 10
NS_SIZE = 500  # pods per namespace
TEAMS = 50


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Cluster:
    """Deterministic synthetic cluster; documents are built on demand (not kept)."""

    def __init__(self, seed: int, endpoints: int, policies: int, local: int) -> None:
        self.seed = seed
        self.n_eps = endpoints
        self.n_pols = policies
        self.n_ns = max(2, endpoints // NS_SIZE)
        self.n_nodes = max(2, endpoints // max(1, local))
        self.ns_env = [ENVS[i % 3] for i in range(self.n_ns)]
        self.ns_team = [f"team{i % TEAMS}" for i in range(self.n_ns)]

    # -- endpoints: endpoint i lives on node i % n_nodes, slot i // n_nodes ------------------

    def node_of(self, i: int) -> int:
        return i % self.n_nodes

    def ip(self, i: int, gen: int = 0) -> str:
        node, slot = i % self.n_nodes, (i // self.n_nodes + gen * 37) % 250
        return f"10.{node >> 8 & 0xF}.{node & 0xFF}.{slot + 1}"  # node j owns 10.x.y.0/24

    def workload(self, i: int, app: int | None = None, role: str | None = None,
                 gen: int = 0, validate: bool = False) -> KV:
        rng = random.Random(self.seed * 1_000_003 + i)
        ns = rng.randrange(self.n_ns)
        labels = {
            "app": f"app{rng.randrange(APPS_PER_NS) if app is None else app}",
            "role": role or rng.choice(ROLES),
            "version": f"v{rng.randrange(3)}",
            "pod-template-hash": f"{rng.getrandbits(36):09x}",
        }
        return s.workload(
            f"ns{ns}", f"pod-{i}", f"node-{self.node_of(i)}", [self.ip(i, gen)], labels,
            ports=[{"name": "http", "protocol": "TCP", "port": 8080},
                   {"name": "metrics", "protocol": "TCP", "port": 9090}],
            sa="default", iface=f"cali{i:011x}"[:15], validate=validate)

    def namespaces(self) -> Iterator[KV]:
        for n in range(self.n_ns):
            yield s.namespace(f"ns{n}", {"env": self.ns_env[n], "team": self.ns_team[n]})

    def infrastructure(self) -> Iterator[KV]:
        yield s.pool("default-ipv4", "10.0.0.0/12", vxlan="Always", nat=True)
        yield s.tier("security", 100)
        yield s.tier("platform", 200, "Pass")
        yield s.felix_config("default", defaultEndpointToHostAction="Accept")
        for j in range(self.n_nodes):
            yield s.node(f"node-{j}", f"192.168.{j >> 8 & 0xFF}.{j & 0xFF}/16",
                         vxlan_ip=f"10.{j >> 8 & 0xF}.{j & 0xFF}.254",
                         vxlan_mac=f"66:00:00:00:{j >> 8 & 0xFF:02x}:{j & 0xFF:02x}")
            for b in range(4):
                yield s.block(f"10.{j >> 8 & 0xF}.{j & 0xFF}.{b * 64}/26", f"node-{j}")

    # -- policies -------------------------------------------------------------------------

    def policy(self, i: int, validate: bool = True) -> KV:
        rng = random.Random(self.seed * 7_000_003 + i)
        app = f"app{rng.randrange(APPS_PER_NS)}"
        peer = f"app{rng.randrange(APPS_PER_NS)}"
        if rng.random() < 0.9:  # namespaced
            ns = f"ns{rng.randrange(self.n_ns)}"
            if rng.random() < 0.35:
                return s.k8s_policy(ns, f"knp-{i}",
                                    podSelector={"matchLabels": {"app": app}},
                                    ingress=[{"from": [{"podSelector": {
                                        "matchLabels": {"app": peer}}}],
                                        "ports": [{"protocol": "TCP", "port": 8080}]}])
            sel = f"app == '{app}'" if rng.random() < 0.7 else (
                f"app == '{app}' && role == '{rng.choice(ROLES)}'")
            ingress = [{"action": "Allow", "protocol": "TCP",
                        "source": {"selector": f"app == '{peer}'"},
                        "destination": {"ports": ["http", 8443]}}]
            if rng.random() < 0.3:
                ingress.append({"action": "Allow", "protocol": "TCP",
                                "source": {"namespaceSelector": f"team == '{self.ns_team[0]}'",
                                           "selector": f"role == '{rng.choice(ROLES)}'"}})
            egress = [{"action": "Allow", "protocol": "TCP",
                       "destination": {"selector": "role == 'db'", "ports": [5432]}}]
            order = rng.choice([None, 100, 500])
            extra = {"order": order} if order is not None else {}
            return s.policy(ns, f"pol-{i}", sel, types=["Ingress", "Egress"], ingress=ingress,
                            egress=egress, validate=validate, **extra)
        role = rng.choice(ROLES)
        tier = rng.choice(["security", "platform", "default"])
        name = f"gpol-{i}" if tier == "default" else f"{tier}.gpol-{i}"
        team = f"team{rng.randrange(TEAMS)}"
        sel = rng.choice([f"role == '{role}' && pcns.team == '{team}'",
                          f"role == '{role}' && pcns.env == '{rng.choice(ENVS)}'",
                          f"app == '{app}' && pcns.team == '{team}'"])
        ingress = [
            {"action": "Deny", "source": {"nets": [f"172.{16 + i % 16}.0.0/16"]}},
            {"action": "Allow", "protocol": "TCP",
             "source": {"selector": f"role == '{rng.choice(ROLES)}'",
                        "namespaceSelector": f"team == '{team}'"},
             "destination": {"ports": ["metrics"]}},
            {"action": "Pass" if tier != "default" else "Allow",
             "source": {"selector": f"pcns.env == '{rng.choice(ENVS)}'"}},
        ]
        return s.global_policy(name, sel, tier=tier, order=float(rng.randrange(1000)),
                               ingress=ingress, validate=validate)

    def snapshot(self) -> Iterator[KV]:
        """Every key once, interleaved as a datastore listing would (by kind)."""
        yield from self.infrastructure()
        yield from self.namespaces()
        for i in range(self.n_pols):
            yield self.policy(i)
        for i in range(self.n_eps):
            yield self.workload(i)


def check_fidelity(cl: Cluster) -> None:
    """The fast workload builder must produce exactly what the validated datastore would
    hold (policies, 4% of the documents, are built through the resource models)."""
    for i in range(0, min(cl.n_eps, 2000), 97):
        kv = cl.workload(i)
        assert to_dict(from_dict(kv[1])) == kv[1], kv[0]


# -- (a) start of day -------------------------------------------------------------------------


class Sink:
    """The dataplane stand-in: counts messages by type (into a swappable Counter)."""

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    def __call__(self, msg: object) -> None:
        self.counts[type(msg).__name__] += 1


def start_of_day(cl: Cluster) -> tuple[CalcGraph, Sink, dict[str, Any]]:
    counts: Counter[str] = Counter()
    sink = Sink(counts)

    gc.collect()
    rss0 = rss_mb()
    graph = CalcGraph(LOCAL, sink)
    t0 = time.perf_counter()
    feed = feed_cpu = 0.0
    n = 0
    for key, value in cl.snapshot():
        t, c = time.perf_counter(), time.process_time()
        graph.on_update(key, value)
        feed += time.perf_counter() - t
        feed_cpu += time.process_time() - c
        n += 1
    t1, c1 = time.perf_counter(), time.process_time()
    graph.on_in_sync()
    t2, c2 = time.perf_counter(), time.process_time()
    gc.collect()
    out = {
        "keys": n,
        "feed_s": feed,
        "in_sync_flush_s": t2 - t1,
        "graph_s": feed + (t2 - t1),
        "graph_cpu_s": feed_cpu + (c2 - c1),
        "flush_cpu_s": c2 - c1,
        "wall_s_incl_generation": t2 - t0,
        "rss_growth_mb": rss_mb() - rss0,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_mb": rss0,
    }
    return graph, sink, out


def baseline_json(cl: Cluster, sample: int) -> float:
    """CPU seconds to json.loads the whole snapshot (sampled evenly, scaled)."""
    items = list(cl.infrastructure()) + list(cl.namespaces())
    step_p = max(1, cl.n_pols // sample)
    step_e = max(1, cl.n_eps // sample)
    pols = [cl.policy(i) for i in range(0, cl.n_pols, step_p)]
    eps = [cl.workload(i) for i in range(0, cl.n_eps, step_e)]
    total = 0.0
    for group, scale in ((items, 1), (pols, step_p), (eps, step_e)):
        raw = [json.dumps(v).encode() for _, v in group]
        c = time.process_time()
        for r in raw:
            json.loads(r)
        total += (time.process_time() - c) * scale
    return total


def baseline_policy_set(cl: Cluster) -> tuple[float, float]:
    """CPU seconds and RSS growth (MB) of PolicySet.from_resources on the same documents."""
    from tabby.policy import PolicySet

    gc.collect()
    rss0 = rss_mb()
    docs = [v for _, v in cl.snapshot()]
    c = time.process_time()
    ps = PolicySet.from_resources(docs)
    elapsed = time.process_time() - c
    gc.collect()
    grown = rss_mb() - rss0
    assert len(ps.endpoints) == cl.n_eps
    del ps, docs
    gc.collect()
    return elapsed, grown


# -- (b) sustained churn ----------------------------------------------------------------------


def churn(cl: Cluster, graph: CalcGraph, sink: Sink, rate: int, seconds: float,
          seed: int) -> tuple[list[float], dict[str, Any], Counter[str]]:
    rng = random.Random(seed)
    n = int(rate * seconds)
    local = [i for i in range(cl.n_eps) if cl.node_of(i) == 0]
    gens: dict[int, int] = {}
    updates: list[tuple[str, Any, str]] = []  # key, value, category
    for _ in range(n):
        r = rng.random()
        is_local = r < 0.02
        i = rng.choice(local) if is_local else rng.randrange(cl.n_eps)
        where = "local" if is_local else "remote"
        if r < 0.45:  # relabel: the pod moves to another app
            key, value = cl.workload(i, app=rng.randrange(APPS_PER_NS), gen=gens.get(i, 0))
            updates.append((key, value, f"{where} relabel"))
        elif r < 0.7:  # relabel: another role
            key, value = cl.workload(i, role=rng.choice(ROLES), gen=gens.get(i, 0))
            updates.append((key, value, f"{where} relabel"))
        else:  # pod restart: deleted, then back with a new address
            gens[i] = gens.get(i, 0) + 1
            key, value = cl.workload(i, gen=gens[i])
            updates.append((key, None, f"{where} delete"))
            updates.append((key, value, f"{where} add"))
    counts: Counter[str] = Counter()
    sink.counts = counts
    interval = 1.0 / rate
    costs: list[float] = []
    backlog_max = 0
    late_max = 0.0
    gc.collect()
    start = time.perf_counter()
    by_cat: dict[str, list[float]] = {}
    cpu: list[float] = []
    for idx, (key, value, cat) in enumerate(updates):
        due = start + idx * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
            now = time.perf_counter()
        backlog_max = max(backlog_max, int((now - start) / interval) - idx)
        late_max = max(late_max, now - due)
        t, c = time.perf_counter(), time.process_time()
        graph.on_update(key, value)
        cost = time.perf_counter() - t
        cpu.append(time.process_time() - c)
        costs.append(cost)
        by_cat.setdefault(cat, []).append(cost * 1000)
    wall = time.perf_counter() - start
    # Behind schedule when the last update was taken up (0 = it was processed on time).
    end_backlog = max(0, int((now - start) / interval) - (len(updates) - 1))
    costs_ms = sorted(c * 1000 for c in costs)

    # The same stream against the measured CPU costs, as if the agent had a core to
    # itself (wall-clock pacing above also counts time stolen by other processes).
    queued: deque[float] = deque()
    finish = 0.0
    sim_max = 0
    for idx, c in enumerate(cpu):
        arrival = idx * interval
        while queued and queued[0] <= arrival:
            queued.popleft()
        finish = max(arrival, finish) + c
        queued.append(finish)
        sim_max = max(sim_max, len(queued) - 1)
    sim_drain_ms = max(0.0, finish - (len(cpu) - 1) * interval) * 1000

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(len(xs) * q))]

    out = {
        "updates": len(updates),
        "wall_s": wall,
        "p50_ms": statistics.median(costs_ms),
        "p99_ms": pct(costs_ms, 0.99),
        "max_ms": costs_ms[-1],
        "mean_ms": statistics.fmean(costs_ms),
        "cpu_p50_ms": pct(cpu, 0.5) * 1000,
        "cpu_p99_ms": pct(cpu, 0.99) * 1000,
        "cpu_mean_ms": statistics.fmean(cpu) * 1000,
        "busy_share": sum(costs) / wall,
        "backlog_max": backlog_max,
        "backlog_end": end_backlog,
        "late_max_ms": late_max * 1000,
        "cpu_queue_max": sim_max,
        "cpu_queue_drain_ms": sim_drain_ms,
        "by_category": {cat: {"n": len(xs), "p50_ms": pct(xs, 0.5), "p99_ms": pct(xs, 0.99),
                              "max_ms": max(xs), "share_of_time": sum(xs) / sum(costs_ms)}
                        for cat, xs in sorted(by_cat.items())},
    }
    return costs_ms, out, counts


def baseline_full_ipset_pass(graph: CalcGraph, sample: int) -> float:
    """CPU seconds to re-evaluate every active IP set selector over every endpoint (scaled
    from a sample of selectors): the per-update cost without the incremental index."""
    index = graph.ipsets.index
    ids = sorted(graph.ipsets.active_sets())
    if not ids:
        return 0.0
    labels = [lab for e in index.endpoint_ids() if (lab := index.endpoint_labels(e))]
    chosen = random.Random(3).sample(ids, min(sample, len(ids)))
    c = time.process_time()
    for sid in chosen:
        fn = graph.ipsets.spec(sid).selector.matches  # type: ignore[union-attr]
        for lab in labels:
            fn(lab)
    return (time.process_time() - c) * len(ids) / len(chosen)


# -- main ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", type=int, default=250_000)
    ap.add_argument("--policies", type=int, default=10_000)
    ap.add_argument("--local", type=int, default=200)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after start of day (the start-of-day heap is never "
                         "scanned again by the cyclic GC)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cl = Cluster(args.seed, args.endpoints, args.policies, args.local)
    check_fidelity(cl)
    graph, sink, sod = start_of_day(cl)
    counts = sink.counts
    stats = graph.stats()
    t_json = baseline_json(cl, 5000)
    if args.gc_freeze:
        gc.freeze()
    costs, ch, ch_counts = churn(cl, graph, sink, args.rate, args.seconds, args.seed)
    t_full = baseline_full_ipset_pass(graph, 20)
    members = sum(len(graph.ipsets.members(sid)) for sid in graph.ipsets.active_sets())
    del graph
    gc.collect()
    t_ps, ps_mb = baseline_policy_set(cl)

    result = {
        "date": str(date.today()), "python": platform.python_version(),
        "args": vars(args), "start_of_day": sod, "stats": {**stats, "ipset_members": members},
        "messages": dict(counts), "baseline_json_s": t_json,
        "baseline_policyset_s": t_ps, "baseline_policyset_rss_mb": ps_mb,
        "churn": ch, "churn_messages": dict(ch_counts), "baseline_full_ipset_pass_s": t_full,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    g = sod["graph_s"]
    print(f"cluster: {args.endpoints:,} endpoints ({stats['local_endpoints']} local), "
          f"{args.policies:,} policies, {cl.n_ns} namespaces, {cl.n_nodes} nodes; "
          f"{sod['keys']:,} keys")
    print(f"active: {stats['active_policies']} policies, {stats['active_profiles']} profiles, "
          f"{stats['ip_sets']} IP sets with {members:,} members")
    print("messages at start of day: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("\n(a) start of day (CPU seconds; wall in brackets, inflated when the host is busy)")
    c = sod["graph_cpu_s"]
    print(f"  graph to InSync               {c:8.1f} s  [{g:.1f} s]  (flush at InSync "
          f"{sod['flush_cpu_s']:.1f} s)")
    print(f"  RSS growth / peak RSS         {sod['rss_growth_mb']:8.0f} MB / "
          f"{sod['peak_rss_mb']:.0f} MB")
    print(f"  baseline json.loads snapshot  {t_json:8.1f} s   graph = {c / t_json:.1f}x")
    print(f"  baseline PolicySet batch      {t_ps:8.1f} s   graph = {c / t_ps:.2f}x  "
          f"(its RSS growth {ps_mb:.0f} MB)")
    print(f"\n(b) churn: {ch['updates']:,} updates at {args.rate}/s for {ch['wall_s']:.1f} s")
    print(f"  per update p50 / p99 / max    {ch['p50_ms']:.3f} / {ch['p99_ms']:.3f} / "
          f"{ch['max_ms']:.1f} ms   (mean {ch['mean_ms']:.3f} ms)")
    print(f"  same, CPU time p50 / p99      {ch['cpu_p50_ms']:.3f} / {ch['cpu_p99_ms']:.3f} ms"
          f"   (mean {ch['cpu_mean_ms']:.3f} ms)")
    print(f"  busy share                    {ch['busy_share'] * 100:.1f} %")
    print(f"  backlog max / at the last one {ch['backlog_max']} / {ch['backlog_end']} updates "
          "(wall clock)")
    print(f"  backlog on CPU time alone     max {ch['cpu_queue_max']} updates, drained "
          f"{ch['cpu_queue_drain_ms']:.1f} ms after the last arrival")
    print(f"  baseline full IP set pass     {t_full * 1000:8.0f} ms CPU per update  "
          f"= {t_full * 1000 / ch['cpu_mean_ms']:,.0f}x the mean")
    for cat, st in ch["by_category"].items():
        print(f"    {cat:15s} n={st['n']:6d}  p50 {st['p50_ms']:.3f}  p99 {st['p99_ms']:.3f}  "
              f"max {st['max_ms']:.1f} ms  ({st['share_of_time'] * 100:.0f} % of the time)")
    print("  messages: " + ", ".join(f"{k} {v}" for k, v in sorted(ch_counts.items())))


if __name__ == "__main__":
    main()
