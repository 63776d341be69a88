"""Prometheus metrics, hand-written: counters, gauges and histograms in the text format.

No client library: the exposition format is a few lines of text per sample, and the agent
needs a dozen metrics. Every metric is thread-safe (the HTTP thread renders while the main
loop updates).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

LabelValues = tuple[str, ...]

# Seconds: from a 1 ms netlink change to a multi-second full resync.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labels):
            raise ValueError(f"metric {self.name}: labels {sorted(labels)} != {list(self.labels)}")
        return tuple(str(labels[n]) for n in self.labels)

    def _label_text(self, values: LabelValues, extra: Iterable[tuple[str, str]] = ()) -> str:
        pairs = [*zip(self.labels, values, strict=True), *extra]
        if not pairs:
            return ""
        return "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in pairs) + "}"

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError(f"metric {self.name}: a counter cannot decrease ({amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def label_values(self) -> list[LabelValues]:
        """Every label combination that has a value."""
        with self._lock:
            return list(self._values)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [*self.header(), *(f"{self.name}{self._label_text(k)} {_fmt(v)}" for k, v in items)]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # label values -> [per-bucket counts..., sum, count]
        self._data: dict[LabelValues, list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            data = self._data.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    data[i] += 1
            data[-2] += value
            data[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            data = self._data.get(self._key(labels))
            return int(data[-1]) if data else 0

    def render(self) -> list[str]:
        out = self.header()
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._data.items())
        for key, data in items:
            for i, bound in enumerate(self.buckets):
                lt = self._label_text(key, [("le", _fmt(bound))])
                out.append(f"{self.name}_bucket{lt} {_fmt(data[i])}")
            lt = self._label_text(key, [("le", "+Inf")])
            out.append(f"{self.name}_bucket{lt} {_fmt(data[-1])}")
            out.append(f"{self.name}_sum{self._label_text(key)} {_fmt(data[-2])}")
            out.append(f"{self.name}_count{self._label_text(key)} {_fmt(data[-1])}")
        return out


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> _Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name}: registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


class AgentMetrics:
    """The agent's metrics (names in Felix's spirit, with a tabby_ prefix)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.in_sync = r.gauge("tabby_datastore_in_sync",
                               "1 when the agent's view of the datastore is complete and current")
        self.revision = r.gauge("tabby_datastore_revision",
                                "Last datastore revision received by the agent")
        self.applied_revision = r.gauge(
            "tabby_dataplane_applied_revision",
            "Datastore revision that the kernel's programming fully reflects")
        self.resyncs = r.counter("tabby_datastore_resyncs_total",
                                 "Datastore resyncs after a broken watch (compaction, outage)")
        self.datastore_errors = r.counter("tabby_datastore_errors_total",
                                          "Datastore errors seen by the syncer")
        self.updates = r.counter("tabby_datastore_updates_total",
                                 "Key updates received from the datastore")
        self.messages = r.counter("tabby_calc_messages_total",
                                  "Messages emitted by the calculation graph", ["type"])
        self.calc_errors = r.counter("tabby_calc_errors_total",
                                     "Updates or messages that raised an unexpected error")
        self.sync_latency = r.histogram(
            "tabby_sync_latency_seconds",
            "From receiving a datastore update to the kernel enforcing it")
        self.resync_seconds = r.gauge(
            "tabby_resync_seconds", "Agent start (or resync start) to the dataplane in sync")
        self.apply_seconds = r.histogram("tabby_apply_seconds",
                                         "Time of one dataplane apply", ["dataplane"])
        self.apply_errors = r.counter("tabby_apply_errors_total",
                                      "Failed dataplane applies (retried with backoff)",
                                      ["dataplane"])
        self.applies = r.counter("tabby_applies_total", "Dataplane applies",
                                 ["dataplane", "mode"])
        self.nft_rules = r.gauge("tabby_nft_rules", "Rules in the agent's nftables table")
        self.nft_set_elements = r.gauge("tabby_nft_set_elements",
                                        "Set and map elements in the agent's nftables table")
        self.ipsets = r.gauge("tabby_ipsets", "IP sets the calculation graph keeps active")
        self.local_endpoints = r.gauge("tabby_local_endpoints",
                                       "Workload and host endpoints on this node")
        self.routes = r.gauge("tabby_routes", "Routes the agent programs", ["kind"])
        self.vteps = r.gauge("tabby_vxlan_vteps", "Remote VXLAN tunnel endpoints programmed")
        self.problems = r.gauge("tabby_dataplane_problems",
                                "Objects the dataplane cannot program (rejected, unsupported)",
                                ["dataplane"])
        self.ready = r.gauge("tabby_ready", "1 when the agent reports ready")
        self.cni_requests = r.counter(
            "tabby_cni_requests_total", "CNI invocations served for the exec'd tabby-cni client",
            ["plugin", "command", "result"])
        self.cni_seconds = r.histogram("tabby_cni_seconds",
                                       "Time the agent took to serve one CNI invocation",
                                       ["command"])

    def render(self) -> str:
        return self.registry.render()
