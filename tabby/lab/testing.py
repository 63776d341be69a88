"""A test bed the namespace tests of the nftables dataplane share: one node namespace with
four hand-wired workloads (w1-w4 at 10.65.0.1-4), each running a probe server on TCP 8080
and 8081 and UDP 8080. Built once per test module by the `workloads_lab` fixture
(tests/netns/conftest.py) and always torn down."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

PORT, OTHER = 8080, 8081


@dataclass
class WorkloadsLab:
    topo: Any
    node: Any
    w: dict[str, Any]  # name -> Workload

    def ns(self, name: str) -> str:
        return str(self.w[name].netns)

    def ip(self, name: str) -> str:
        return str(self.w[name].ip)


@contextmanager
def workloads_lab(prefix: str = "tw") -> Iterator[WorkloadsLab]:
    from tabby.lab.probe import ProbeServer
    from tabby.lab.topology import Topology

    topo = Topology(prefix + secrets.token_hex(2))
    try:
        node = topo.add_node("n1")
        ws = {f"w{i}": topo.add_workload(node, f"w{i}", f"10.65.0.{i}") for i in range(1, 5)}
        for wl in ws.values():
            ProbeServer.start(wl, tcp=[PORT, OTHER], udp=[PORT], topology=topo)
        yield WorkloadsLab(topo, node, ws)
    finally:
        topo.teardown()
