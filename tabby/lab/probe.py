"""Real TCP/UDP/ICMP connectivity checks between namespaces, batched for matrices.

Servers (`ProbeServer`) listen in destination namespaces: TCP accept, answer with the
server's name, close; UDP echo with the server's name. The client side runs one
`probe_agent.py probe` process per *source* namespace, which does all that source's probes
in parallel threads, and all sources run at once: a 6x6 matrix with 1 s timeouts takes
about one timeout, however many pairs are dropped.

A dropped TCP SYN only shows as a timeout, so keep timeouts short (0.5-1 s). Results tell
"refused" (reached, nothing listening) from "timeout" (dropped) - see `ProbeResult`.

    with ProbeServer.start(wl.netns, tcp=[8080], udp=[8080]):
        assert probe(other.netns, wl.ip, "tcp", 8080)
        grid = probe_matrix([(a, b.ip) for a in srcs for b in dsts], "tcp", 8080)
"""

from __future__ import annotations

import ipaddress
import json
import select
import subprocess
import sys
import time
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tabby.lab import netns as nsops

if TYPE_CHECKING:
    from tabby.lab.topology import Topology

AGENT = str(Path(__file__).with_name("probe_agent.py"))
# -I -S: stdlib only, no site-packages scan; the agent starts in ~20 ms.
AGENT_ARGV = [sys.executable, "-I", "-S", AGENT]
DEFAULT_PORT = 8080
DEFAULT_TIMEOUT = 1.0
PROTOCOLS = ("tcp", "udp", "icmp")
OUTCOMES = ("ok", "refused", "timeout", "unreachable", "denied", "error")


@dataclass(frozen=True)
class ProbeResult:
    """What one probe saw. `outcome` is one of OUTCOMES; `peer` is the answering probe
    server's name (None for a non-probe listener, or ICMP)."""

    src: str
    dst: str
    protocol: str
    port: int | None
    outcome: str
    detail: str = ""
    elapsed: float = 0.0
    peer: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def __str__(self) -> str:
        where = f"{self.dst}:{self.port}" if self.port is not None else self.dst
        peer = f" peer={self.peer}" if self.peer else ""
        return f"{self.src} -> {self.protocol} {where}: {self.outcome} ({self.detail}){peer}"


@dataclass(frozen=True)
class ProbeSpec:
    src: str  # source namespace
    dst: str  # destination IP
    protocol: str = "tcp"
    port: int | None = DEFAULT_PORT
    timeout: float = DEFAULT_TIMEOUT


def _src_netns(src: Any) -> str:
    ns = getattr(src, "netns", src)
    if not isinstance(ns, str):
        raise ValueError(f"src: expected a namespace name or an object with .netns, got {src!r}")
    return nsops.check_netns_name(ns)


def _dst_ip(dst: Any) -> str:
    ip = getattr(dst, "ip", dst)
    if not isinstance(ip, str):
        raise ValueError(f"dst: expected an IP or an object with .ip, got {dst!r}")
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise ValueError(f"dst: invalid IP address {ip!r}") from None


def make_spec(
    src: Any,
    dst: Any,
    protocol: str = "tcp",
    port: int | None = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
) -> ProbeSpec:
    """Validate and normalise one probe (src: netns name or Node/Workload; dst: IP or one)."""
    proto = str(protocol).lower()
    if proto not in PROTOCOLS:
        raise ValueError(f"protocol: unsupported {protocol!r} (use tcp, udp or icmp)")
    if proto == "icmp":
        port = None
    elif port is None or not 1 <= int(port) <= 65535:
        raise ValueError(f"port: {port!r} out of range 1-65535")
    if not 0 < float(timeout) <= 60:
        raise ValueError(f"timeout: {timeout!r} out of range (0, 60] seconds")
    return ProbeSpec(
        _src_netns(src), _dst_ip(dst), proto, None if port is None else int(port), float(timeout)
    )


def _run_source(src: str, specs: list[ProbeSpec]) -> list[ProbeResult]:
    payload = {
        "probes": [
            {"dst": s.dst, "proto": s.protocol, "port": s.port, "timeout": s.timeout} for s in specs
        ]
    }
    # TCP/UDP may take ~2x timeout (connect, then read the server's name).
    budget = 2 * max(s.timeout for s in specs) + 10
    try:
        proc = nsops.run(
            src, AGENT_ARGV + ["probe"], input=json.dumps(payload), timeout=budget, check=False
        )
        if proc.returncode != 0:
            raise nsops.NetnsError(f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
        raw = json.loads(proc.stdout)
    except (nsops.NetnsError, json.JSONDecodeError) as exc:
        return [
            ProbeResult(s.src, s.dst, s.protocol, s.port, "error", f"agent: {exc}") for s in specs
        ]
    return [
        ProbeResult(
            s.src,
            s.dst,
            s.protocol,
            s.port,
            r.get("outcome", "error"),
            r.get("detail", ""),
            float(r.get("elapsed", 0.0)),
            r.get("peer"),
        )
        for s, r in zip(specs, raw, strict=True)
    ]


def probe_batch(specs: Sequence[ProbeSpec]) -> list[ProbeResult]:
    """Run all probes concurrently (one agent process per source namespace); results in
    the order of `specs`."""
    by_src: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_src.setdefault(spec.src, []).append(i)
    results: list[ProbeResult | None] = [None] * len(specs)
    if not specs:
        return []
    with ThreadPoolExecutor(max_workers=min(len(by_src), 64)) as pool:
        futures = {
            src: pool.submit(_run_source, src, [specs[i] for i in idxs])
            for src, idxs in by_src.items()
        }
        for src, fut in futures.items():
            for i, res in zip(by_src[src], fut.result(), strict=True):
                results[i] = res
    return [r for r in results if r is not None]


def probe_detail(
    src: Any,
    dst: Any,
    protocol: str = "tcp",
    port: int | None = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
) -> ProbeResult:
    return probe_batch([make_spec(src, dst, protocol, port, timeout)])[0]


def probe(
    src: Any,
    dst: Any,
    protocol: str = "tcp",
    port: int | None = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
) -> bool:
    """True if `dst` answered from `src`'s namespace (TCP connect, UDP echo, ICMP echo)."""
    return probe_detail(src, dst, protocol, port, timeout).ok


def probe_matrix_detail(
    pairs: Iterable[tuple[Hashable, Hashable]],
    protocol: str = "tcp",
    port: int | None = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[tuple[Any, Any], ProbeResult]:
    """Probe every (src, dst) pair at once; keys are the pairs exactly as given."""
    keys = list(dict.fromkeys(pairs))
    results = probe_batch([make_spec(s, d, protocol, port, timeout) for s, d in keys])
    return dict(zip(keys, results, strict=True))


def probe_matrix(
    pairs: Iterable[tuple[Hashable, Hashable]],
    protocol: str = "tcp",
    port: int | None = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[tuple[Any, Any], bool]:
    """Like `probe_matrix_detail`, but each value is just `ok`."""
    return {k: r.ok for k, r in probe_matrix_detail(pairs, protocol, port, timeout).items()}


class ProbeServer:
    """A probe server process inside one namespace. Stop with `stop()` or a `with` block."""

    def __init__(self, proc: nsops.NsProcess, name: str, tcp: list[int], udp: list[int]):
        self.proc = proc
        self.name = name
        self.tcp = tcp
        self.udp = udp

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def netns(self) -> str:
        return self.proc.netns

    @classmethod
    def start(
        cls,
        netns: Any,
        tcp: Iterable[int] = (DEFAULT_PORT,),
        udp: Iterable[int] = (DEFAULT_PORT,),
        *,
        name: str | None = None,
        topology: Topology | None = None,
        ready_timeout: float = 5.0,
    ) -> ProbeServer:
        """Start listening in `netns` (name or Node/Workload) and wait until bound.
        With `topology`, the PID is recorded so its teardown stops the server."""
        ns = _src_netns(netns)
        tcp_ports, udp_ports = [int(p) for p in tcp], [int(p) for p in udp]
        for p in tcp_ports + udp_ports:
            if not 1 <= p <= 65535:
                raise ValueError(f"port: {p} out of range 1-65535")
        if not tcp_ports and not udp_ports:
            raise ValueError("port: a probe server needs at least one TCP or UDP port")
        name = name or getattr(netns, "name", None) or ns
        argv = AGENT_ARGV + ["serve", "--name", name, "--watch-stdin"]
        if tcp_ports:
            argv += ["--tcp", ",".join(map(str, tcp_ports))]
        if udp_ports:
            argv += ["--udp", ",".join(map(str, udp_ports))]
        # stdin stays open: the server exits when we (its parent) go away.
        kwargs: dict[str, Any] = {
            "stdin": subprocess.PIPE,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
        }
        proc = topology.spawn(ns, argv, **kwargs) if topology else nsops.spawn(ns, argv, **kwargs)
        server = cls(proc, name, tcp_ports, udp_ports)
        try:
            server._wait_ready(ready_timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            chunk = self.proc.stdout.read1(256)  # type: ignore[attr-defined]
            if not chunk:
                break
            line += chunk
        if not line.startswith(b"READY"):
            err = b""
            if not self.proc.alive() and self.proc.popen.stderr is not None:
                err = self.proc.popen.stderr.read()[-300:]
            raise nsops.NetnsError(
                f"probe server in {self.netns}: not ready: {err.decode(errors='replace').strip()}"
            )

    def stop(self) -> None:
        self.proc.terminate()

    def __enter__(self) -> ProbeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_all(
    targets: Iterable[Any],
    tcp: Iterable[int] = (DEFAULT_PORT,),
    udp: Iterable[int] = (DEFAULT_PORT,),
    *,
    topology: Topology | None = None,
) -> list[ProbeServer]:
    """Start a probe server in each target (namespace name or Node/Workload) in parallel."""
    tcp, udp = list(tcp), list(udp)
    targets = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, min(len(targets), 32))) as pool:
        futures = [pool.submit(ProbeServer.start, t, tcp, udp, topology=topology) for t in targets]
        servers, errors = [], []
        for f in futures:
            try:
                servers.append(f.result())
            except Exception as exc:
                errors.append(exc)
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers
