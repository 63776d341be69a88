"""BIRD supervision: a dead BIRD is restarted; an agent that dies leaves BIRD routing and
the next agent adopts it without resetting sessions."""

from __future__ import annotations

import os
import signal

import pytest

from tabby.bgp.testing import BgpLab, wait_for

pytestmark = pytest.mark.root


def _bird_pid(bgp_lab: BgpLab, node: str) -> int | None:
    pid = bgp_lab.status(node).controller.get("bird_pid")
    return int(pid) if pid else None


def test_bird_restart_and_adoption(bgp_lab: BgpLab) -> None:
    topo = bgp_lab.topo
    bgp_lab.add_pool("10.65.0.0/16")
    for name in ("n1", "n2"):
        bgp_lab.add_node(topo.add_node(name))
        bgp_lab.assign_ip(name)
        bgp_lab.start(name)
    [block1] = bgp_lab.blocks_of("n1")
    bgp_lab.wait_established("n1", 1)
    bgp_lab.wait_route("n2", block1, topo.nodes["n1"].ip)
    pid = wait_for(lambda: _bird_pid(bgp_lab, "n1"), 10, 0.05, "BIRD pid in status")

    # BIRD crashes: the controller starts a new one, the session comes back.
    os.kill(pid, signal.SIGKILL)
    new_pid = wait_for(lambda: (p := _bird_pid(bgp_lab, "n1")) != pid and p, 10, 0.05,
                       "a restarted BIRD")
    assert bgp_lab.status("n1").controller["bird_starts"] == 2
    st = bgp_lab.wait_established("n1", 1)
    bgp_lab.wait_route("n2", block1, topo.nodes["n1"].ip)

    # The agent is SIGKILLed: BIRD (its own session) keeps routing.
    bgp_lab.procs.pop("n1").popen.kill()
    assert bgp_lab.status("n1").running
    assert bgp_lab.routes("n2")[block1] == topo.nodes["n1"].ip
    # The next agent adopts it: same BIRD, same sessions.
    bgp_lab.start("n1")
    wait_for(lambda: bgp_lab.status("n1").controller.get("bird_starts") == 0, 10, 0.05,
             "the new agent's status")
    again = bgp_lab.wait_established("n1", 1)
    assert again.controller["bird_pid"] == new_pid
    assert again.peers[0].since == st.peers[0].since
    # and a clean stop withdraws n1's routes from n2
    bgp_lab.stop("n1")
    bgp_lab.wait_no_route("n2", block1)
    assert not bgp_lab.status("n1").running
