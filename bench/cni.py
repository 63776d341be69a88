"""CNI benchmark: ADD and DEL latency as a runtime sees it, beside the reference plugins.

    .venv/bin/python bench/cni.py [--n 100] [--parallel 8] [--ipam-n 300] [--no-etcd]

Each sample is one exec of the installed plugin (Python start-up included) by a driver that
runs inside the node namespace, as a runtime does. With the C client installed (`make
setup` builds it) two Tabby rows are measured: "tabby-agent", the client served by the
node agent's CNI server running in the node namespace (CPU = the client's plus the server's
mean CPU per call), and "tabby", the Python plugin exec'd directly (no agent running); the reference `ptp` + `host-local`
plugins (Debian's containernetworking-plugins) are measured in the same run on the same
namespaces. Runs: sequential ADDs then DELs, and the same with `--parallel` workers. For the
parallel run the plugin's log reports the IPAM compare-and-swap retries and any retry
exhaustion (an ADD failing with code 11). Last: IPAM allocations/s on sqlite and on a real
etcd (`tabby.ipam.bench.bench_allocations_detail`). Everything runs in namespaces this
script creates (prefix "tbcb-"), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REF = "/usr/lib/cni"


# --- the driver (runs inside the node namespace) -----------------------------------------


def _one(exe: str, command: str, conf: str, cid: str, ns: str, path: str) -> dict[str, Any]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{ns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": path}
    t = time.perf_counter()
    p = subprocess.Popen([exe], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    stdout = _io(p, conf)
    _, status, usage = os.wait4(p.pid, 0)  # CPU of the plugin and the `ip` it ran
    ms = (time.perf_counter() - t) * 1000
    p.returncode = rc = os.waitstatus_to_exitcode(status)
    code = None
    if rc != 0:
        try:
            code = json.loads(stdout).get("code")
        except ValueError:
            code = -1
    return {"ms": ms, "cpu": (usage.ru_utime + usage.ru_stime) * 1000, "rc": rc, "code": code,
            "err": stdout.decode()[-300:] if rc else ""}


def _io(p: subprocess.Popen[bytes], conf: str) -> bytes:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(conf.encode())
    p.stdin.close()
    out = p.stdout.read()
    p.stdout.close()
    return out


def _cpu_ms(pid: int) -> float:
    """User+system CPU of a running process, from /proc (the served runs' server side)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime, stime and the reaped children's (the `ip` commands it ran).
    return sum(int(f) for f in fields[11:15]) * 1000 / os.sysconf("SC_CLK_TCK")


def _start_server() -> subprocess.Popen[str]:
    """The node agent's CNI server, alone, in this (the node's) namespace."""
    import threading

    srv = subprocess.Popen([sys.executable, "-m", "tabby.cni.server"], stdout=subprocess.PIPE,
                           text=True)
    assert srv.stdout is not None and srv.stdout.readline().startswith("serving")
    threading.Thread(target=srv.stdout.read, daemon=True).start()  # drain its request log
    return srv


def driver(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for plugin in spec["plugins"]:
        exe, conf, path = plugin["exe"], json.dumps(plugin["conf"]), plugin["path"]
        server = _start_server() if plugin.get("served") else None
        try:
            _runs(spec, plugin, exe, conf, path, server, out)
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
    return out


def _runs(spec: dict[str, Any], plugin: dict[str, Any], exe: str, conf: str, path: str,
          server: subprocess.Popen[str] | None, out: dict[str, Any]) -> None:
        for mode, workers in (("seq", 1), ("par", spec["parallel"])):
            if mode not in plugin.get("modes", ("seq", "par")):
                continue
            cids = [f"{plugin['name']}-{mode}-{i:04d}" for i in range(len(spec["containers"]))]
            pairs = list(zip(cids, spec["containers"], strict=True))
            for command in ("ADD", "DEL"):
                t0 = time.perf_counter()
                cpu0 = _cpu_ms(server.pid) if server else 0.0
                jobs = [(exe, command, conf, cid, ns, path) for cid, ns in pairs]
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    res = list(pool.map(lambda job: _one(*job), jobs))
                wall = time.perf_counter() - t0
                if server:  # the work moved into the server: add its mean share per call
                    share = (_cpu_ms(server.pid) - cpu0) / len(res)
                    for r in res:
                        r["cpu"] += share
                out[f"{plugin['name']}/{mode}/{command}"] = {"samples": res, "wall": wall}


# --- set-up and report (runs in the root namespace, touches only namespaces it made) ------


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q / 100 * len(v) + 0.5) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="containers per run (default 100)")
    ap.add_argument("--parallel", type=int, default=8, help="workers in the parallel run")
    ap.add_argument("--ipam-n", type=int, default=300, help="allocations per IPAM run")
    ap.add_argument("--no-etcd", action="store_true", help="skip the etcd IPAM figure")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (plugin log)")
    args = ap.parse_args()

    from tabby.cni.install import install
    from tabby.datastore import open_datastore
    from tabby.datastore.client import ResourceClient
    from tabby.lab.topology import Topology
    from tabby.resources import from_dict

    tmp = Path(tempfile.mkdtemp(prefix="tabby-bench-cni-"))
    db = f"sqlite://{tmp / 'tabby.db'}"
    with open_datastore(db) as ds:
        ResourceClient(ds).create(from_dict({
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "bench-pool"}, "spec": {"cidr": "10.96.0.0/16"}}))
    bin_dir = tmp / "bin"
    log = tmp / "cni.log"
    install(bin_dir=str(bin_dir), conf_dir=str(tmp / "net.d"), datastore=db, nodename="n1",
            log_file=str(log))
    conflist = json.loads((tmp / "net.d" / "10-tabby.conflist").read_text())
    tabby_conf = {"cniVersion": "1.0.0", "name": "tabby", **conflist["plugins"][0]}
    ptp_conf = {"cniVersion": "1.0.0", "name": "ref", "type": "ptp", "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(tmp / "host-local"),
                         "ranges": [[{"subnet": "10.97.0.0/16"}]]}}
    have_ref = os.access(f"{REF}/ptp", os.X_OK) and os.access(f"{REF}/host-local", os.X_OK)
    plugins = []
    if (bin_dir / "tabby-cni.py").exists():  # the C client is installed: served, then not
        plugins.append({"name": "tabby-agent", "exe": str(bin_dir / "tabby-cni"),
                        "conf": tabby_conf, "path": f"{bin_dir}:{REF}", "served": True})
        plugins.append({"name": "tabby", "exe": str(bin_dir / "tabby-cni.py"),
                        "conf": tabby_conf, "path": f"{bin_dir}:{REF}"})
    else:
        plugins.append({"name": "tabby", "exe": str(bin_dir / "tabby-cni"), "conf": tabby_conf,
                        "path": f"{bin_dir}:{REF}"})
    venv_script = Path(sys.executable).parent / "tabby-cni"
    if venv_script.exists():  # the pip console script: full `site` start-up, for comparison
        plugins.append({"name": "tabby-console-script", "exe": str(venv_script),
                        "conf": tabby_conf, "path": f"{bin_dir}:{REF}", "modes": ["seq"]})
    if have_ref:
        plugins.append({"name": "ptp", "exe": f"{REF}/ptp", "conf": ptp_conf, "path": REF})

    topo = Topology("tbcb-" + os.urandom(2).hex(), state_dir=tmp / "topo")
    try:
        node = topo.add_node("n1")
        conts = [topo.add_namespace(f"c{i}") for i in range(args.n)]
        spec = {"plugins": plugins, "containers": conts, "parallel": args.parallel}
        proc = subprocess.run(
            ["ip", "netns", "exec", node.netns, sys.executable, __file__, "--driver"],
            input=json.dumps(spec), capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return 1
        results = json.loads(proc.stdout)
    finally:
        topo.teardown()

    print(f"CNI ADD/DEL latency, {args.n} containers per run, exec of the plugin included "
          f"(load average {os.getloadavg()[0]:.1f})\n")
    print("| plugin | run | command | p50 ms | p99 ms | max ms | CPU p50 ms | per s | failed |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    base: dict[str, float] = {}
    for key, r in results.items():
        name, mode, command = key.split("/")
        ms = [s["ms"] for s in r["samples"]]
        cpu = [s["cpu"] for s in r["samples"]]
        failed = [s for s in r["samples"] if s["rc"] != 0]
        if name == "ptp":
            base[f"{mode}/{command}"] = statistics.median(ms)
        print(f"| {name} | {'sequential' if mode == 'seq' else f'{args.parallel} parallel'} "
              f"| {command} | {statistics.median(ms):.1f} | {pct(ms, 99):.1f} | {max(ms):.1f} "
              f"| {statistics.median(cpu):.1f} | {len(ms) / r['wall']:.0f} | {len(failed)} |")
        for f in failed[:3]:
            print(f"    failure: {f['err']}", file=sys.stderr)
    for name in ("tabby-agent", "tabby"):
        if base and f"{name}/seq/ADD" in results:
            print(f"\nRatio {name}/ptp (p50): " + ", ".join(
                f"{k} {statistics.median([s['ms'] for s in results[f'{name}/{k}']['samples']]) / v:.1f}x"
                for k, v in base.items()))
    text = log.read_text() if log.exists() else ""
    for name in ("tabby-agent", "tabby"):
        if f"{name}/par/ADD" not in results:
            continue
        adds = conflicts = exhausted = 0
        for line in text.splitlines():
            m = re.search(rf"ADD {name}-par-\S+: ipam conflicts=(\d+) exhausted=(\d+)", line)
            if m:
                adds += 1
                conflicts += int(m[1])
                exhausted += int(m[2])
        code11 = sum(1 for s in results[f"{name}/par/ADD"]["samples"] if s["code"] == 11)
        print(f"\nParallel ADDs ({name}): {conflicts} IPAM compare-and-swap retries over {adds} "
              f"ADDs, {exhausted} retry exhaustions, {code11} ADDs failed with code 11")

    print("\nIPAM allocations (in-process, one handle per address, as CNI ADDs):\n")
    print("| datastore | allocations/s | releases/s | CAS retries |")
    print("|---|---:|---:|---:|")
    from tabby.ipam.bench import bench_allocations_detail

    with open_datastore(f"sqlite://{tmp / 'ipam.db'}") as ds:
        d = bench_allocations_detail(ds, args.ipam_n)
    print(f"| sqlite | {d['allocationsPerSecond']:.0f} | {d['releasesPerSecond']:.0f} | "
          f"{d['conflicts']} |")
    if not args.no_etcd:
        from tabby.datastore.etcd_server import EtcdServer, etcd_binary

        if etcd_binary() is None:
            print("| etcd | (etcd-server not installed) | | |")
        else:
            with EtcdServer() as server, open_datastore(server.url) as ds:
                d = bench_allocations_detail(ds, args.ipam_n)
            print(f"| etcd 3.4 | {d['allocationsPerSecond']:.0f} | {d['releasesPerSecond']:.0f} "
                  f"| {d['conflicts']} |")
    import shutil

    if args.keep:
        print(f"\nkept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--driver"]:
        print(json.dumps(driver(json.loads(sys.stdin.read()))))
        sys.exit(0)
    sys.exit(main())
