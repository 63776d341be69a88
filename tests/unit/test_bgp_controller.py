"""BgpController and BgpInputs without root: a fake BIRD records what the controller does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.bgp.bird import BirdError, BirdProcess, in_host_netns
from tabby.bgp.controller import BgpController, secret_dir_lookup
from tabby.bgp.inputs import BgpInputs, parse_affinity_key
from tabby.bgp.status import STATUS_FILE


def doc(kind: str, name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
    return {"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta, "spec": spec}


NODE1 = ("/tabby/v3/nodes/n1", doc("Node", "n1", {"bgp": {"ipv4Address": "10.0.0.1/24"}}))
NODE2 = ("/tabby/v3/nodes/n2", doc("Node", "n2", {"bgp": {"ipv4Address": "10.0.0.2/24"}}))
POOL = ("/tabby/v3/ippools/p", doc("IPPool", "p", {"cidr": "10.65.0.0/16"}))
BLOCK1 = ("/tabby/ipam/v2/affinities/n1/10.65.0.0-26",
          {"node": "n1", "cidr": "10.65.0.0/26", "state": "confirmed"})


class FakeBird:
    """Stands in for BirdProcess: records calls, can be told to reject or to die."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.socket = run_dir / "bird.ctl"
        self.calls: list[str] = []
        self.conf: str | None = None
        self.running = False
        self.reject: str | None = None  # check() error to return
        self.starts = 0
        self.last_exit: int | None = None

    def check(self, text: str) -> str | None:
        self.calls.append("check")
        return self.reject

    def install(self, text: str) -> None:
        self.calls.append("install")
        self.conf = text

    def installed(self) -> str | None:
        return self.conf

    def configure(self) -> str:
        self.calls.append("configure")
        return "reconfigured"

    def start(self) -> None:
        self.calls.append("start")
        self.running = True
        self.starts += 1

    def stop(self, withdraw: bool = True) -> None:
        self.calls.append(f"stop(withdraw={withdraw})")
        self.running = False

    def detach(self) -> None:
        self.calls.append("detach")

    def alive(self) -> bool:
        return self.running

    def adopt(self) -> bool:
        return False

    @property
    def pid(self) -> int | None:
        return 4242 if self.running else None

    def log_tail(self, lines: int = 5) -> str:
        return ""


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[tuple[BgpController, FakeBird]]:
    bird = FakeBird(tmp_path)
    controller = BgpController("n1", tmp_path, bird_process=bird,  # type: ignore[arg-type]
                               debounce=0.01, supervise_interval=0.05)
    yield controller, bird
    controller.stop()


def feed(controller: BgpController, *items: tuple[str, Any]) -> None:
    for key, value in items:
        controller.on_update(key, value)


def test_nothing_happens_before_in_sync(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, NODE2, POOL)
    controller.start()
    time.sleep(0.2)
    assert bird.calls == []  # no config written, BIRD not started: the snapshot is partial
    controller.on_in_sync()
    assert controller.wait_applied(5)
    assert bird.calls == ["check", "install", "start"]
    assert "Mesh_10_0_0_2" in (bird.conf or "")


def test_reload_only_when_the_text_changes(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, NODE2, POOL)
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    bird.calls.clear()
    # irrelevant: another node's affinity, block contents, policy
    feed(controller, ("/tabby/ipam/v2/affinities/n2/10.65.1.0-26", {"state": "confirmed"}),
         ("/tabby/ipam/v2/blocks/10.65.0.0-26", {"cidr": "10.65.0.0/26"}),
         ("/tabby/v3/globalnetworkpolicies/x", {"kind": "GlobalNetworkPolicy"}))
    # relevant but rendering the same text: the same node again
    feed(controller, NODE2)
    assert controller.wait_applied(5)
    time.sleep(0.1)
    assert bird.calls == []
    feed(controller, BLOCK1)
    assert controller.wait_applied(5)
    assert bird.calls == ["check", "install", "configure"]
    assert "route 10.65.0.0/26 blackhole;" in (bird.conf or "")
    assert controller.reloads == 1


def test_burst_is_coalesced(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    controller.debounce = 0.2
    feed(controller, NODE1, POOL)
    controller.on_in_sync()
    controller.start()
    for i in range(2, 30):
        controller.on_update(f"/tabby/v3/nodes/m{i}",
                             doc("Node", f"m{i}", {"bgp": {"ipv4Address": f"10.0.1.{i}/24"}}))
    assert controller.wait_applied(5)
    assert bird.calls.count("install") <= 2  # one render for the snapshot, one for the burst
    assert (bird.conf or "").count("protocol bgp Mesh_") == 28


def test_rejected_config_keeps_the_old_one(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, NODE2, POOL)
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    good = bird.conf
    bird.reject = "bird.conf:12:3 syntax error"
    feed(controller, BLOCK1)
    assert controller.wait_applied(5)
    assert bird.conf == good and bird.calls[-1] == "check"
    assert controller.last_error and "syntax error" in controller.last_error
    status = json.loads((controller.run_dir / STATUS_FILE).read_text())
    assert "old one kept" in status["last_error"]
    assert (controller.run_dir / "bird.conf.rejected").exists()


def test_dead_bird_is_restarted(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, POOL)
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    bird.running = False  # BIRD crashed
    deadline = time.monotonic() + 5
    while bird.starts < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert bird.starts == 2 and bird.running


def test_stop_withdraws_and_writes_status(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, ("/tabby/v3/bgppeers/bad", doc("BGPPeer", "bad", {"peerIP": "x"})))
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    controller.stop()
    assert bird.calls[-1] == "stop(withdraw=True)"
    status = json.loads((controller.run_dir / STATUS_FILE).read_text())
    assert status["issues"][0]["source"] == 'BGPPeer "bad"'
    assert status["bird_pid"] is None


def test_detach_leaves_bird_running(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, bird = ctl
    feed(controller, NODE1, NODE2, POOL)
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    controller.detach()
    assert controller._thread is None  # the worker is gone...
    assert bird.running and bird.calls[-1] == "detach"  # ...BIRD is not stopped
    assert not any(c.startswith("stop") for c in bird.calls)
    status = json.loads((controller.run_dir / STATUS_FILE).read_text())
    assert status["bird_pid"] == 4242  # status still names the BIRD that keeps routing
    # No more supervision: a BIRD that dies now is the next agent's to restart.
    bird.running = False
    time.sleep(0.2)
    assert bird.starts == 1


def test_bird_process_detach_keeps_the_child(tmp_path: Path) -> None:
    bird = BirdProcess(tmp_path)
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        bird._popen = child  # stands in for a started BIRD (no root, no namespace here)
        bird._log = open(tmp_path / "bird.log", "ab")
        assert bird.alive()
        bird.detach()
        assert not bird.alive() and bird.pid is None and bird._log is None
        assert child.poll() is None  # still running
    finally:
        child.kill()
        child.wait(5)


def test_status_without_bird_lists_issues(ctl: tuple[BgpController, FakeBird]) -> None:
    controller, _bird = ctl
    feed(controller, NODE1, ("/tabby/v3/bgppeers/bad", doc("BGPPeer", "bad", {"peerIP": "x"})))
    controller.on_in_sync()
    controller.start()
    assert controller.wait_applied(5)
    st = controller.status()  # the fake has no socket: BIRD "not running", issues still there
    assert not st.running
    assert st.issues[0]["message"].startswith("ignored: spec.peerIP")
    assert st.controller["bird_starts"] == 1


def test_secret_dir_lookup(tmp_path: Path) -> None:
    (tmp_path / "bgp").mkdir()
    (tmp_path / "bgp" / "tor").write_text("pa55\n")
    lookup = secret_dir_lookup(tmp_path)
    assert lookup("bgp", "tor") == "pa55"
    assert lookup("bgp", "missing") is None
    assert lookup("../etc", "passwd") is None
    assert secret_dir_lookup(None)("bgp", "tor") is None


# -- inputs ----------------------------------------------------------------------------------


def test_inputs_track_invalid_objects_until_fixed() -> None:
    inputs = BgpInputs()
    key = "/tabby/v3/bgppeers/p"
    assert inputs.apply(key, doc("BGPPeer", "p", {"peerIP": "1.2.3.999", "asNumber": 1}))
    assert "spec.peerIP" in inputs.invalid[key] and "p" not in inputs.peers
    assert inputs.apply(key, doc("BGPPeer", "p", {"peerIP": "1.2.3.4", "asNumber": 1}))
    assert key not in inputs.invalid and "p" in inputs.peers
    assert not inputs.apply(key, doc("BGPPeer", "p", {"peerIP": "1.2.3.4", "asNumber": 1}))
    assert inputs.apply(key, None) and "p" not in inputs.peers
    assert not inputs.apply(key, None)


def test_inputs_affinities() -> None:
    inputs = BgpInputs()
    key = "/tabby/ipam/v2/affinities/n%2F1/10.65.0.0-26"
    assert parse_affinity_key(key) == ("n/1", "10.65.0.0/26")
    assert parse_affinity_key("/tabby/ipam/v2/affinities/n1/garbage") is None
    assert inputs.apply(key, {"state": "pending"})
    assert inputs.own_blocks("n/1") == []
    assert inputs.apply(key, {"state": "confirmed"})
    assert inputs.own_blocks("n/1") == ["10.65.0.0/26"]
    assert inputs.apply(key, None) and inputs.affinities == {}
    assert BgpInputs.is_relevant(key, "n/1") and not BgpInputs.is_relevant(key, "n2")
    assert not BgpInputs.is_relevant("/tabby/ipam/v2/blocks/10.65.0.0-26", "n1")
    assert not BgpInputs.is_relevant("/tabby/v3/networkpolicies/default/x", "n1")


# -- BirdProcess.check with the real `bird -p` ----------------------------------------------------


@pytest.mark.skipif(shutil.which("bird") is None and not os.path.exists("/usr/sbin/bird"),
                    reason="BIRD 2 not installed (Debian package bird2)")
def test_bird_check_reports_the_line(tmp_path: Path) -> None:
    bird = BirdProcess(tmp_path)
    assert bird.check("router id 1.2.3.4;\nprotocol device {}\n") is None
    error = bird.check("router id 1.2.3.4;\nprotocol nonsense {}\n")
    assert error is not None and ":2:" in error
    assert not list(tmp_path.glob(".bird.conf.check*"))  # scratch file removed


def test_bird_process_needs_a_config(tmp_path: Path) -> None:
    with pytest.raises(BirdError, match="no configuration installed"):
        BirdProcess(tmp_path).start()


def test_installed_config_is_private(tmp_path: Path) -> None:
    bird = BirdProcess(tmp_path)
    bird.install('protocol bgp x { password "secret"; }\n')
    bird.install("router id 1.2.3.4;\n")  # replaced atomically, still private
    assert (tmp_path / "bird.conf").stat().st_mode & 0o777 == 0o600
    assert bird.installed() == "router id 1.2.3.4;\n"


@pytest.mark.skipif(not in_host_netns(), reason="runs only in the host network namespace")
def test_bird_refuses_the_host_namespace(tmp_path: Path) -> None:
    bird = BirdProcess(tmp_path, allow_host_netns=False)
    bird.install("router id 1.2.3.4;\nprotocol device {}\n")
    with pytest.raises(BirdError, match="refusing to start BIRD in the host's network namespace"):
        bird.start()
    assert not bird.alive()
