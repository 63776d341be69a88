"""A real runtime: Debian's podman (CNI backend) runs two busybox containers on a Tabby
network and they talk to each other; removing them calls DEL and leaves nothing behind.

Safety: podman runs with a private configuration (never its default network, private
storage in a temp dir) and *inside a node namespace* (`nsenter --net`, so its mount
namespace - where it pins container namespaces under /run/netns - is the normal one). The
plugin therefore runs in the node namespace: the host-side veths and routes land there,
and the test checks that the root namespace's links, addresses and routes are unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cni_support import REFERENCE_PLUGINS, CNILab

NEEDED = ("podman", "runc", "busybox", "nsenter")
IMAGE = "localhost/tabby-cni-busybox:test"


def _missing() -> str | None:
    absent = [b for b in NEEDED if shutil.which(b) is None]
    if absent:
        return (f"needs {', '.join(absent)} (Debian: apt-get install podman runc "
                "busybox-static util-linux)")
    return None


def _root_state() -> dict[str, Any]:
    state: dict[str, Any] = {}
    for what in (["link"], ["addr"], ["route"], ["-6", "route"]):
        out = subprocess.run(["ip", "-j", *what, "show"], capture_output=True, text=True).stdout
        items = json.loads(out or "[]")
        for item in items:  # counters and timers change on their own
            for k in ("stats", "stats64"):
                item.pop(k, None)
            for a in item.get("addr_info", []):
                a.pop("valid_life_time", None)
                a.pop("preferred_life_time", None)
        state[" ".join(what)] = items
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        state[key] = Path("/proc/sys", key).read_text()
    return state


class Podman:
    def __init__(self, lab: CNILab, tmp: Path) -> None:
        self.lab = lab
        self.dir = tmp / "podman"
        self.dir.mkdir()
        conf_dir = Path(lab.bin_dir).parent / "net.d"
        (self.dir / "containers.conf").write_text(f"""
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
netns = "private"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{self.dir}/events.log"
tmp_dir = "{self.dir}/libpod-tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{lab.bin_dir}", "{REFERENCE_PLUGINS}"]
network_config_dir = "{conf_dir}"
default_network = "tabby"
""")
        (self.dir / "storage.conf").write_text(f"""
[storage]
driver = "vfs"
runroot = "{self.dir}/run"
graphroot = "{self.dir}/graph"
""")
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(self.dir / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(self.dir / "storage.conf"),
        }
        self.sandboxes: set[str] = set()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        argv = ["nsenter", f"--net=/run/netns/{self.lab.node_ns}", "podman", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def image(self) -> None:
        rootfs = self.dir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for d in ("tmp", "proc", "sys", "dev", "etc"):
            (rootfs / d).mkdir()
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
        for applet in ("sh", "nc", "sleep", "ip", "cat", "echo"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        tar = self.dir / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
        self("import", str(tar), IMAGE)

    def cleanup(self) -> None:
        self("rm", "-af", "-t", "0", check=False)
        self("rmi", "-af", check=False)
        for path in self.sandboxes:  # podman's own namespaces of our containers, by name
            if os.path.exists(path):
                subprocess.run(["ip", "netns", "del", os.path.basename(path)], check=False)
        # vfs storage may leave per-container shm mounts if podman died half way.
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        for line in mounts:
            target = line.split()[4]
            if target.startswith(str(self.dir) + "/"):
                subprocess.run(["umount", "-l", target], check=False)


@pytest.fixture
def podman(topology: Callable[..., Any], tmp_path: Path) -> Iterator[Podman]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    lab = CNILab.make(topology(), tmp_path, cni_version="1.0.0")
    pm = Podman(lab, tmp_path)
    probe = subprocess.run(["podman", "--version"], capture_output=True, text=True, env=pm.env)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()}")
    try:
        pm.image()
    except AssertionError as exc:
        pm.cleanup()
        pytest.skip(f"podman cannot run here: {exc}")
    try:
        yield pm
    finally:
        pm.cleanup()


def test_podman_containers_on_a_tabby_network(podman: Podman) -> None:
    lab = podman.lab
    before = _root_state()
    podman("run", "-d", "--name", "tcni-a", "--network", "tabby", IMAGE,
           "nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-a")
    # --ip / --mac-address reach the plugin as runtimeConfig (declared capabilities).
    podman("run", "-d", "--name", "tcni-b", "--network", "tabby", "--ip", "10.66.0.99",
           "--mac-address", "02:aa:00:00:00:99", IMAGE, "sleep", "600")
    info = {}
    for name in ("tcni-a", "tcni-b"):
        (data,) = json.loads(podman("inspect", name))
        podman.sandboxes.add(data["NetworkSettings"]["SandboxKey"])
        info[name] = data["NetworkSettings"]["Networks"]["tabby"]["IPAddress"]
    assert info["tcni-a"] != info["tcni-b"] == "10.66.0.99"
    macs = {d["spec"]["workload"]: d["spec"]["mac"] for d in lab.endpoints().values()}
    assert macs["tcni-b"] == "02:aa:00:00:00:99"
    assert all(ip.startswith("10.66.0.") for ip in info.values())
    assert len(lab.node_links()) == 2 and len(lab.endpoints()) == 2
    workloads = sorted(d["spec"]["workload"] for d in lab.endpoints().values())
    assert workloads == ["tcni-a", "tcni-b"]  # podman passes K8S_POD_NAME=<container name>

    got = ""
    for _ in range(20):  # the server may still be starting
        got = podman("exec", "tcni-b", "sh", "-c", f"nc -w 2 {info['tcni-a']} 8080 </dev/null",
                     check=False)
        if got:
            break
    assert got == "hello-from-a"

    podman("rm", "-f", "-t", "0", "tcni-a", "tcni-b")
    assert lab.node_links() == [] and lab.node_routes() == []
    assert lab.endpoints() == {} and lab.allocations() == []
    assert [p for p in podman.sandboxes if os.path.exists(p)] == []  # podman's netns gone
    assert _root_state() == before
