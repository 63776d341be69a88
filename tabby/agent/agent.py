"""The node agent (Felix's role): syncer -> calc graph -> dataplanes, one process per host.

    agent = Agent(AgentConfig(node_name="n1", datastore_url="sqlite:///..."))
    agent.run()            # blocks; agent.stop() from a signal handler or another thread

The loop (one thread; the syncer, BGP controller, registrar and HTTP servers have their own):

    syncer thread --(receipt time, Update | InSync | OutOfSync)--> queue
    loop: wait for an item, a retry time or a 1 s tick
          drain the queue (bounded batch), feeding each Update to the calc graph (and BGP),
          which hands its messages straight to every dataplane's cheap on_update()
          when the queue is empty (or the oldest unapplied update is > 1 s old) and the
          first InSync has been seen: apply() every dataplane that has work - many
          updates, one apply; a failing apply keeps its pending state and is retried
          with exponential backoff (0.1 s doubling to `apply_backoff_max`)

Nothing touches the kernel before the first InSync (the calc graph emits nothing before it,
and the drivers refuse to write without it). Ready = registered, datastore in sync, and the
first complete programming done with no dataplane failing. When the datastore goes away
the syncer reports OutOfSync: readiness drops, the dataplane keeps enforcing the last state,
and the syncer resyncs by difference when the store is back. SIGTERM stops the threads and
leaves the kernel state (and BIRD) in place for the next agent to adopt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tabby.agent import report
from tabby.agent.logs import ctx
from tabby.agent.metrics import AgentMetrics
from tabby.agent.node import (
    NodeRegistrar,
    NodeState,
    Underlay,
    detect_underlay,
    named_netns,
    node_ipv4,
    tunnel_from_node,
)
from tabby.datastore import Datastore, DatastoreError, open_datastore
from tabby.datastore.syncer import InSync, OutOfSync, Syncer, SyncItem, Update

log = logging.getLogger("tabby.agent")

NODES_PREFIX = "/tabby/v3/nodes/"
POOLS_PREFIX = "/tabby/v3/ippools/"
MAX_BATCH = 5000
MAX_UNAPPLIED_AGE = 1.0  # apply even while updates keep coming, at least this often
TICK = 0.25  # the loop turns at least this often (stop requests, retries)
LIVENESS_STALL = 60.0  # the loop has not turned for this long: not live
BACKOFF_INITIAL = 0.1
_STOP = object()


class AgentError(RuntimeError):
    """The agent cannot start as configured (one line, names the flag)."""


@dataclass
class AgentConfig:
    node_name: str
    datastore_url: str | None = None
    health_host: str = "127.0.0.1"
    health_port: int = 9099  # 0 = off
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9091  # 0 = off
    underlay_if: str | None = None
    bgp: bool | None = None  # None: on when BIRD is installed
    run_dir: str | None = None
    typha: str | None = None
    typha_fallback: float | None = None  # follow the datastore directly after this long
    typha_ssl_context: Any = None  # ssl.SSLContext (tabby.typha.client_context)
    typha_identity: Any = None  # tabby.typha.PeerIdentity the server must have
    as_number: int | None = None
    ip6: str = "none"  # calico/node's IP6: "autodetect" registers bgp.ipv6Address
    ipip: str = "auto"  # auto | kernel | bpf | off
    allow_host_netns: bool = False
    apply_backoff_max: float = 5.0
    stop_bgp_on_exit: bool = False
    cni_server: bool = True  # serve the exec'd tabby-cni client of this namespace


@dataclass
class DataplaneState:
    """The loop's book-keeping for one dataplane driver."""

    name: str
    driver: Any
    applies: int = 0
    failures: int = 0  # consecutive
    retry_at: float = 0.0
    applied_once: bool = False
    last_error: str | None = None
    last_seconds: float | None = None
    last_mode: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> bool:
        return bool(getattr(self.driver, "pending", False))

    def wake_at(self) -> float | None:
        fn = getattr(self.driver, "wake_at", None)
        return fn() if fn is not None else None


class Agent:
    def __init__(self, cfg: AgentConfig, *,
                 datastore_factory: Callable[[], Datastore] | None = None) -> None:
        self.cfg = cfg
        self.metrics = AgentMetrics()
        self._factory = datastore_factory or (lambda: open_datastore(cfg.datastore_url))
        self._q: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._stop_requested = False
        self._started = time.monotonic()
        self._heartbeat = self._started
        self.underlay: Underlay | None = None
        self.node: NodeState | None = None
        self.registration_error: str | None = None
        self.synced_once = False
        self.programmed_once = False
        self.dataplanes: list[DataplaneState] = []
        self.calc: Any = None
        self.bgp: Any = None
        self.bgp_error: str | None = None
        self.ipip_error: str | None = None
        self.syncer: Any = None
        self.revision = 0  # last datastore revision handed to the calc graph
        self.applied_revision = 0  # the revision the kernel fully reflects
        self._unapplied_since: float | None = None  # receipt time of the oldest unapplied update
        self._node_ips: dict[str, str] = {}  # node -> underlay IPv4 (IPIP allowed senders)
        self._peers_dirty = False
        self._ipip: Any = None  # the IP-in-IP dataplane, made before registration
        # Without one: a previous run's IP-in-IP routes and filters, removed once (run()).
        self._stale_ipip: DataplaneState | None = None
        self._annotations: dict[str, str | None] = {}  # Node annotations we manage
        self._registrar_wake = threading.Event()
        self._registrar: threading.Thread | None = None
        self._servers: list[Any] = []

    # --- life cycle -----------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end (from any thread; signal handlers use request_stop)."""
        self._stop.set()
        self._registrar_wake.set()
        self._q.put(_STOP)

    def request_stop(self) -> None:
        """Signal-handler safe: only sets a flag (taking a lock in a handler can deadlock
        against the same thread); the main thread notices within TICK and stops."""
        self._stop_requested = True

    def _stopping(self) -> bool:
        if self._stop_requested and not self._stop.is_set():
            self.stop()
        return self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping() and time.monotonic() < end:
            self._stop.wait(min(TICK, max(0.0, end - time.monotonic())))

    def run(self) -> int:
        cfg = self.cfg
        # The machines this is developed on are shared: a lab agent must never program
        # the host itself. Outside a named namespace, only with an explicit flag.
        if not cfg.allow_host_netns and named_netns() is None:
            raise AgentError("this process is not in a named network namespace; run it "
                             "inside the node's (ip netns exec NS tabby node run ...), or "
                             "pass --allow-host-netns on a real host")
        try:
            self.underlay = detect_underlay(cfg.underlay_if)
        except Exception as exc:
            raise AgentError(str(exc)) from None
        log.info("starting", extra=ctx(underlay=self.underlay.ifname, ip=self.underlay.cidr,
                                       mtu=self.underlay.mtu))
        self._servers = report.start_servers(self)
        if cfg.cni_server:
            self._start_cni_server()
        try:
            # IPIP first: registration announces who programs IPIP routes (an annotation
            # BGP reads). Building it reads files only; nothing touches the kernel yet.
            self._ipip = self._make_ipip()
            if self._ipip is None:  # a previous run's IP-in-IP state may be left
                with contextlib.suppress(ImportError):  # (a build without IPIP made none)
                    from tabby.dataplane.ipip import remove_stale
                    self._stale_ipip = DataplaneState("stale-ipip", remove_stale)
            if not self._register_first():
                return 0
            self._build_dataplanes()
            self._start_bgp()
            self._start_syncer()
            self._registrar = threading.Thread(target=self._registrar_loop, name="registrar",
                                               daemon=True)
            self._registrar.start()
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        log.info("stopping: the dataplane stays as programmed")
        if self.syncer is not None:
            self.syncer.stop()
        if self._registrar is not None:
            self._registrar.join(5)
        if self.bgp is not None:
            if self.cfg.stop_bgp_on_exit:
                self.bgp.stop(withdraw=True)
            else:
                detach = getattr(self.bgp, "detach", None)
                if detach is not None:
                    detach()  # BIRD keeps routing; the next agent adopts it
        for dp in self.dataplanes:
            close = getattr(dp.driver, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # shutting down: report, carry on
                    log.exception("closing %s failed", dp.name)
        for server in self._servers:
            server.stop()
        self._servers = []

    # --- start-up -------------------------------------------------------------------------

    def _start_cni_server(self) -> None:
        from tabby.cni.server import CNIServer

        metrics = self.metrics

        def served(plugin: str, command: str, code: int, seconds: float) -> None:
            metrics.cni_requests.inc(plugin=plugin, command=command,
                                     result="ok" if code == 0 else "error")
            metrics.cni_seconds.observe(seconds, command=command)

        server = CNIServer(log=lambda msg: log.debug("cni: %s", msg), on_served=served)
        try:
            server.start()
        except OSError as exc:  # the client then runs the Python plugin itself: slower, correct
            log.warning("CNI server not started: %s", exc)
            return
        self._servers.append(server)

    def _register_first(self) -> bool:
        """Register this node, retrying while the datastore is unreachable. False if stopped."""
        delay = BACKOFF_INITIAL
        while not self._stopping():
            try:
                self.node = self._reconcile_node()
                self.registration_error = None
                return True
            except (DatastoreError, OSError, ValueError) as exc:
                self.registration_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot register the node yet, retrying",
                            extra=ctx(error=self.registration_error, retry_in=delay))
                self._sleep(delay)
                delay = min(delay * 2, 5.0)
        return False

    def _reconcile_node(self) -> NodeState:
        assert self.underlay is not None
        ds = self._factory()
        try:
            return NodeRegistrar(ds, self.cfg.node_name, self.underlay,
                                 as_number=self.cfg.as_number,
                                 annotations=self._annotations,
                                 ip6_autodetect=self.cfg.ip6 == "autodetect").reconcile()
        finally:
            ds.close()

    def _registrar_loop(self) -> None:
        """Re-run registration when pools or our Node change (a VXLAN pool appears, the
        tunnel address was removed...). Idempotent: no change, no write."""
        delay = BACKOFF_INITIAL
        while not self._stop.is_set():
            self._registrar_wake.wait()
            self._registrar_wake.clear()
            if self._stop.is_set():
                return
            try:
                self.node = self._reconcile_node()
                self.registration_error = None
                delay = BACKOFF_INITIAL
            except Exception as exc:  # keep the thread; try again later
                self.registration_error = f"{type(exc).__name__}: {exc}"
                log.warning("node registration failed, will retry",
                            extra=ctx(error=self.registration_error))
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                self._registrar_wake.set()

    def _build_dataplanes(self) -> None:
        from tabby.calc.graph import CalcGraph
        from tabby.dataplane.nft import NftDataplane
        from tabby.dataplane.routes import RouteDataplane

        assert self.underlay is not None and self.node is not None
        ul = self.underlay
        ipip = self._ipip
        routes = RouteDataplane(
            self.cfg.node_name, underlay_if=ul.ifname, underlay_ip=ul.ip,
            underlay_mtu=ul.mtu, program_unencapsulated=not self._bgp_wanted(),
            ipip_handled=ipip is not None, ipip_reason=self.ipip_error,
            yield_protos=(ipip.route_protocol,) if ipip is not None else ())
        routes.set_local_vtep(self.node.tunnel_ip, self.node.mac)
        # Policy first: a new workload's rules exist before its route does. IPIP before
        # routes: when a pool's encapsulation changes, a destination moves between the
        # two drivers, and the IPIP driver replaces a plain route in place and deletes
        # its own by protocol, so the handover never meets a route of the other driver.
        self.dataplanes = [DataplaneState("nft", NftDataplane())]
        if ipip is not None:
            self.dataplanes.append(DataplaneState("ipip", ipip))
        self.dataplanes.append(DataplaneState("routes", routes))
        self.calc = CalcGraph(self.cfg.node_name, self._emit)

    def _make_ipip(self) -> Any:
        try:
            from tabby.dataplane.ipip import ANNOTATION, IpipDataplane, IpipError
        except ImportError as exc:
            self.ipip_error = f"no IPIP dataplane in this build ({exc})"
            return None
        # Without our IPIP dataplane, BIRD programs IPIP routes (via tunl0, as Calico).
        self._annotations = {ANNOTATION: None}
        if self.cfg.ipip == "off":
            self.ipip_error = "IPIP is turned off (--ipip off)"
            return None
        assert self.underlay is not None
        try:
            dp = IpipDataplane(None, self.underlay.ifname, self.underlay.ip, self.cfg.ipip)
        except IpipError as exc:
            self.ipip_error = str(exc)
            log.info("IPIP unavailable", extra=ctx(reason=self.ipip_error))
            return None
        self._annotations = dict(dp.annotations())
        return dp

    def _remove_stale_ipip(self, st: DataplaneState, now: float) -> None:
        """Without an IPIP dataplane nothing owns a previous run's proto-81 routes and
        tabby-ipip filters: removed once, after the first complete sync, ahead of the routes
        driver (a block moving to a plain route finds its destination free)."""
        assert self.underlay is not None
        try:
            removed = st.driver(None, self.underlay.ifname)
        except Exception as exc:
            delay = self._failed(st, now, exc)
            log.warning("removing stale IP-in-IP state failed, retrying",
                        extra=ctx(error=st.last_error, retry_in=delay, failures=st.failures))
            return
        if removed:
            log.info("removed a previous run's IP-in-IP state", extra=ctx(
                routes=len(removed.routes), filters=removed.filters))
        self._stale_ipip = None

    def _bgp_wanted(self) -> bool:
        if self.cfg.bgp is None:
            return shutil.which("bird") is not None
        return self.cfg.bgp

    def _start_bgp(self) -> None:
        if not self._bgp_wanted():
            return
        try:
            from tabby.bgp.controller import BgpController
        except ImportError as exc:  # the hook: BGP is optional
            self.bgp_error = f"BGP controller not available: {exc}"
            log.warning(self.bgp_error)
            return
        run_dir = Path(self.cfg.run_dir) if self.cfg.run_dir else None
        self.bgp = BgpController(self.cfg.node_name, run_dir)
        self.bgp.start()

    def _start_syncer(self) -> None:
        def sink(item: SyncItem) -> None:
            self._q.put((time.monotonic(), item))

        cfg = self.cfg
        if cfg.typha:
            from tabby.typha.client import TyphaClient

            fallback: dict[str, Any] = {} if cfg.typha_fallback is None else {
                "fallback": self._factory, "fallback_after": cfg.typha_fallback}
            self.syncer = TyphaClient(cfg.typha, sink, client_name=cfg.node_name,
                                      ssl_context=cfg.typha_ssl_context,
                                      server_identity=cfg.typha_identity, **fallback)
        else:
            self.syncer = Syncer(self._factory, sink)
        self.syncer.start()

    # --- the loop -------------------------------------------------------------------------

    def run_loop(self) -> None:
        """The loop alone, on dataplanes/calc/syncer already in place (tests drive it so)."""
        self._loop()

    def _loop(self) -> None:
        while not self._stopping():
            try:
                first = self._q.get(timeout=self._timeout())
            except queue.Empty:
                first = None
            batch = [] if first is None else [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._q.get_nowait())
                except queue.Empty:
                    break
            for entry in batch:
                if entry is _STOP:
                    return
                try:
                    self._handle(*entry)
                except Exception:  # a bug in one update must not stop enforcement
                    self.metrics.calc_errors.inc()
                    log.exception("update failed", extra=ctx(item=repr(entry[1])[:200]))
            self._heartbeat = time.monotonic()
            old = (self._unapplied_since is not None
                   and self._heartbeat - self._unapplied_since > MAX_UNAPPLIED_AGE)
            if self._q.empty() or old:
                self._apply()

    def _timeout(self) -> float:
        now = time.monotonic()
        times = [now + TICK]
        for dp in self.dataplanes:
            if dp.retry_at:
                times.append(dp.retry_at)
            wake = dp.wake_at()
            if wake is not None:
                times.append(wake)
        return max(0.0, min(times) - now)

    def _handle(self, received: float, item: SyncItem) -> None:
        if isinstance(item, Update):
            value = self._decode(item)
            self.revision = max(self.revision, item.revision)
            self.metrics.updates.inc()
            if self._unapplied_since is None:
                self._unapplied_since = received
            self.calc.on_update(item.key, value)
            if self.bgp is not None:
                self.bgp.on_update(item.key, value)
            if item.key.startswith(NODES_PREFIX):
                self._node_update(item.key[len(NODES_PREFIX):], value)
            elif item.key.startswith(POOLS_PREFIX) and self.synced_once:
                self._registrar_wake.set()
        elif isinstance(item, InSync):
            self.revision = max(self.revision, item.revision)
            first = not self.synced_once
            self.calc.on_in_sync()
            if self.bgp is not None:
                self.bgp.on_in_sync()
            self.synced_once = True
            if self._unapplied_since is None:
                self._unapplied_since = received
            log.info("datastore in sync", extra=ctx(revision=item.revision, first=first))
            if first:
                self._registrar_wake.set()  # pools may have changed since registration
        elif isinstance(item, OutOfSync):
            log.warning("datastore out of sync: enforcing the last state until it is back",
                        extra=ctx(reason=item.reason))

    def _decode(self, item: Update) -> dict[str, Any] | None:
        if item.value is None:
            return None
        try:
            value = json.loads(item.value)
        except ValueError as exc:
            log.error("undecodable value, treated as deleted", extra=ctx(key=item.key,
                                                                         error=str(exc)))
            return None
        return value if isinstance(value, dict) else None

    def _node_update(self, name: str, value: dict[str, Any] | None) -> None:
        if name == self.cfg.node_name:
            tunnel_ip, mac = tunnel_from_node(value)
            for dp in self.dataplanes:
                setter = getattr(dp.driver, "set_local_vtep", None)
                if setter is not None:
                    setter(tunnel_ip, mac)
            if value is None or self._registration_drifted(value):
                self._registrar_wake.set()  # someone removed or changed our Node: fix it
        addr = node_ipv4(value)
        if self._node_ips.get(name) != addr:
            if addr is None:
                self._node_ips.pop(name, None)
            else:
                self._node_ips[name] = addr
            self._peers_dirty = True  # handed over once per batch, in _apply

    def _update_peers(self) -> None:
        """Every Node's underlay address may send us IP-in-IP (a node without blocks, or
        whose blocks we have no route for yet, still reaches our workloads)."""
        self._peers_dirty = False
        peers = sorted(set(self._node_ips.values()))
        for dp in self.dataplanes:
            set_peers = getattr(dp.driver, "set_peers", None)
            if set_peers is not None:
                set_peers(peers)

    def _registration_drifted(self, value: dict[str, Any]) -> bool:
        ul = self.underlay
        spec = value.get("spec") or {}
        if ul is None or (spec.get("bgp") or {}).get("ipv4Address") != ul.cidr:
            return True
        notes = (value.get("metadata") or {}).get("annotations") or {}
        if any(notes.get(k) != v for k, v in self._annotations.items()):
            return True
        node = self.node
        return node is not None and node.tunnel_ip is not None and \
            spec.get("ipv4VXLANTunnelAddr") != node.tunnel_ip

    def _emit(self, msg: object) -> None:
        self.metrics.messages.inc(type=type(msg).__name__)
        for dp in self.dataplanes:
            try:
                dp.driver.on_update(msg)
            except ValueError as exc:  # a malformed message must not stop the others
                log.error("dataplane refused a message", extra=ctx(
                    dataplane=dp.name, message=type(msg).__name__, error=str(exc)))
            except Exception:
                self.metrics.calc_errors.inc()
                log.exception("dataplane failed on a message", extra=ctx(
                    dataplane=dp.name, message=type(msg).__name__))

    def _apply(self) -> None:
        if not self.synced_once:
            return
        if self._peers_dirty:
            self._update_peers()
        now = time.monotonic()
        stale = self._stale_ipip
        if stale is not None and now >= stale.retry_at:
            self._remove_stale_ipip(stale, now)
        for dp in self.dataplanes:
            if now < dp.retry_at:
                continue
            wake = dp.wake_at()
            if not (dp.pending or dp.failures or not dp.applied_once
                    or (wake is not None and wake <= now)):
                continue
            self._apply_one(dp, now)
        clean = self._stale_ipip is None and all(
            dp.applied_once and not dp.failures and not dp.pending for dp in self.dataplanes)
        if clean:
            self.applied_revision = self.revision
        if clean and self._unapplied_since is not None:
            done = time.monotonic()
            self.metrics.sync_latency.observe(done - self._unapplied_since)
            self._unapplied_since = None
            if not self.programmed_once:
                self.programmed_once = True
                self.metrics.resync_seconds.set(done - self._started)
                log.info("dataplane programmed: ready", extra=ctx(
                    seconds=round(done - self._started, 3), revision=self.revision))

    def _apply_one(self, dp: DataplaneState, now: float) -> None:
        t0 = time.perf_counter()
        try:
            result = dp.driver.apply()
        except Exception as exc:
            delay = self._failed(dp, now, exc)
            self.metrics.apply_errors.inc(dataplane=dp.name)
            log.warning("dataplane apply failed; the previous state stays, retrying",
                        extra=ctx(dataplane=dp.name, error=dp.last_error, retry_in=delay,
                                  failures=dp.failures))
            return
        seconds = time.perf_counter() - t0
        mode = getattr(result, "mode", None) or ("applied" if result else "noop")
        dp.applies += 1
        dp.applied_once = True
        dp.last_seconds, dp.last_mode = seconds, mode
        if dp.failures:
            log.info("dataplane apply recovered", extra=ctx(dataplane=dp.name,
                                                             after=dp.failures))
        dp.failures, dp.last_error = 0, None
        # Still pending after a good apply (a driver that retries per-object failures
        # itself): come back later, not in a tight loop.
        dp.retry_at = now + BACKOFF_INITIAL * 5 if dp.pending else 0.0
        if mode != "noop":
            self.metrics.apply_seconds.observe(seconds, dataplane=dp.name)
            self.metrics.applies.inc(dataplane=dp.name, mode=str(mode))
            report.record_apply(self, dp, result)
            if mode in ("full", "delta") and seconds > 0.05:
                log.info("dataplane applied", extra=ctx(dataplane=dp.name, mode=mode,
                                                        seconds=round(seconds, 4)))

    def _failed(self, dp: DataplaneState, now: float, exc: Exception) -> float:
        """Count a failure, schedule the retry with backoff; returns the delay."""
        dp.failures += 1
        delay = min(self.cfg.apply_backoff_max, BACKOFF_INITIAL * 2 ** (dp.failures - 1))
        dp.retry_at = now + delay
        dp.last_error = f"{type(exc).__name__}: {exc}"
        return delay

    # --- health ---------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        stalled = time.monotonic() - self._heartbeat
        problems = []
        if stalled > LIVENESS_STALL and self.synced_once:
            problems.append(f"the main loop has not run for {stalled:.0f} s")
        if self.syncer is not None and not self.syncer.running and not self._stop.is_set():
            problems.append("the datastore syncer thread has stopped")
        return not problems, {"problems": problems}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        reasons = []
        if self.node is None:
            reasons.append("not registered" + (f": {self.registration_error}"
                                               if self.registration_error else ""))
        st = self.syncer.status if self.syncer is not None else None
        if st is None or not st.in_sync:
            why = st.last_error if st is not None and st.last_error else "first sync pending"
            reasons.append(f"datastore not in sync: {why}")
        if not self.programmed_once:
            reasons.append("dataplane not programmed yet")
        for dp in self.dataplanes:
            if dp.failures:
                reasons.append(f"{dp.name} apply failing: {dp.last_error}")
        stale = self._stale_ipip
        if stale is not None and stale.failures:
            reasons.append(f"removing stale IP-in-IP state failing: {stale.last_error}")
        return not reasons, {"reasons": reasons, "revision": self.revision,
                             "applied_revision": self.applied_revision}

    def status(self) -> dict[str, Any]:
        ready, body = self.readiness()
        st = self.syncer.status if self.syncer is not None else None
        return {
            "node": self.cfg.node_name,
            "ready": ready,
            "reasons": body["reasons"],
            "underlay": asdict(self.underlay) if self.underlay else None,
            "tunnel": {"ip": self.node.tunnel_ip, "mac": self.node.mac} if self.node else None,
            "datastore": asdict(st) if st is not None else None,
            "uptime": round(time.monotonic() - self._started, 3),
            "dataplanes": {dp.name: report.dataplane_status(dp) for dp in self.dataplanes},
            "calc": self.calc.stats() if self.calc is not None else {},
            "bgp": report.bgp_status(self),
            "ipip": self.ipip_error,
        }
