"""What the agent tells the outside: health/metrics servers, per-dataplane status, gauges.

Kept apart from the loop (agent.py) so the loop reads as the recipe it is. Everything here
reads the agent's state; nothing here changes the dataplane.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from tabby.agent.health import EndpointServer, health_server, metrics_server

if TYPE_CHECKING:
    from tabby.agent.agent import Agent, DataplaneState

log = logging.getLogger(__name__)


def start_servers(agent: Agent) -> list[EndpointServer]:
    """Health on cfg.health_port, metrics on cfg.metrics_port (0 = off; the same port
    serves both when they are equal)."""
    cfg = agent.cfg
    servers: list[EndpointServer] = []
    if cfg.health_port:
        health = health_server(cfg.health_host, cfg.health_port, agent.liveness,
                               agent.readiness, agent.status)
        if cfg.metrics_port and cfg.metrics_port == cfg.health_port:
            health.routes["/metrics"] = metrics_server_route(agent)
        servers.append(health.start())
    if cfg.metrics_port and cfg.metrics_port != cfg.health_port:
        try:
            servers.append(metrics_server(cfg.metrics_host, cfg.metrics_port,
                                          lambda: render_metrics(agent)).start())
        except OSError:
            for s in servers:
                s.stop()
            raise
    return servers


def metrics_server_route(agent: Agent) -> Any:
    def route() -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(agent).encode()

    return route


def render_metrics(agent: Agent) -> str:
    m = agent.metrics
    st = agent.syncer.status if agent.syncer is not None else None
    m.in_sync.set(1 if st is not None and st.in_sync else 0)
    m.revision.set(agent.revision)
    m.applied_revision.set(agent.applied_revision)
    if st is not None:
        # Counters mirror the syncer's own totals (it owns the truth).
        _catch_up(m.resyncs, st.resyncs)
        _catch_up(m.datastore_errors, st.errors)
    m.ready.set(1 if agent.readiness()[0] else 0)
    return m.render()


def _catch_up(counter: Any, total: float) -> None:
    now = counter.value()
    if total > now:
        counter.inc(total - now)


def record_apply(agent: Agent, dp: DataplaneState, result: Any) -> None:
    """Gauges from an apply's result (nft rule/element counts, routes, VTEPs, problems)."""
    m = agent.metrics
    if dp.name == "nft":
        if getattr(result, "mode", None) in ("full", "delta"):
            m.nft_rules.set(result.rules)
            m.nft_set_elements.set(result.elements)
        problems = dp.driver.problems()
    elif dp.name == "routes":
        stats = dp.driver.stats()
        for kind, n in stats["routes"].items():
            m.routes.set(n, kind=kind)
        for (kind,) in m.routes.label_values():
            if kind not in stats["routes"]:
                m.routes.set(0, kind=kind)
        m.vteps.set(stats["vteps"])
        problems = dp.driver.problems()
    else:
        status = getattr(dp.driver, "status", None)
        problems = {str(i): e for i, e in enumerate(status().errors)} if status else {}
    m.problems.set(len(problems), dataplane=dp.name)
    if agent.calc is not None:
        stats = agent.calc.stats()
        m.ipsets.set(stats.get("ip_sets", 0))
        m.local_endpoints.set(stats.get("local_endpoints", 0))


def dataplane_status(dp: DataplaneState) -> dict[str, Any]:
    out: dict[str, Any] = {
        "applies": dp.applies,
        "failing": dp.failures,
        "last_error": dp.last_error,
        "last_mode": dp.last_mode,
        "last_seconds": round(dp.last_seconds, 6) if dp.last_seconds is not None else None,
        "pending": dp.pending,
    }
    problems = getattr(dp.driver, "problems", None)
    if callable(problems):
        out["problems"] = problems()
    stats = getattr(dp.driver, "stats", None)
    if callable(stats):
        out["stats"] = stats()
    status = getattr(dp.driver, "status", None)
    if dp.name == "ipip" and callable(status):
        s = status()
        out["implementation"] = s.implementation
        out["problems"] = {str(i): e for i, e in enumerate(s.errors)}
        out["stats"] = {"active": s.active, "routes": s.routes, "encap_routes": s.encap_routes,
                        "nodes": s.nodes, "program_ids": s.program_ids, "map_ids": s.map_ids,
                        "counters": s.counters}
    return out


def bgp_status(agent: Agent) -> dict[str, Any] | None:
    if agent.bgp is None:
        return {"enabled": False, "error": agent.bgp_error} if agent.bgp_error else None
    try:
        ctl = agent.bgp.controller_status()
    except Exception as exc:  # status must never fail the endpoint
        return {"enabled": True, "error": str(exc)}
    return {"enabled": True, "socket": agent.bgp.socket_path, **ctl}
