"""Whole labs: `tabby lab up` in each encapsulation this kernel supports, real probes equal
to `tabby policy matrix` before and after a policy set, status/env/exec, `down` (twice),
and nothing left afterwards (the `lab_name` fixture checks that too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from labtools import recorded_pids, wait_until

from tabby.cli.main import main
from tabby.lab import checks, matrix
from tabby.lab import netns as nsops
from tabby.lab.state import LabState

POLICY = Path(__file__).resolve().parents[2] / "examples" / "demo-policy.yaml"


def tabby(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def ipip_skip(encap: str) -> None:
    if encap.startswith("ipip"):
        reason = checks.ipip_unsupported_reason()
        if reason:
            pytest.skip(reason)


MODES = [
    pytest.param("none", "sqlite", False, id="none-bgp-sqlite"),
    pytest.param("vxlan", "etcd", False, id="vxlan-etcd", marks=pytest.mark.etcd),
    pytest.param("vxlan-crosssubnet", "sqlite", True, id="vxlan-crosssubnet-typha"),
    pytest.param("ipip", "sqlite", False, id="ipip"),
    pytest.param("ipip-crosssubnet", "sqlite", False, id="ipip-crosssubnet"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("encap", "datastore", "typha"), MODES)
def test_up_probe_policy_down(
    lab_name: str, labs_dir: Path, capsys: pytest.CaptureFixture[str],
    encap: str, datastore: str, typha: bool,
) -> None:  # fmt: skip
    ipip_skip(encap)
    n = ["--name", lab_name]
    rc, out, err = tabby(capsys, "lab", "up", *n, "--nodes", "3", "--encap", encap,
                         "--datastore", datastore, *(["--typha"] if typha else []))
    assert rc == 0, err
    state = LabState.load(lab_name)
    assert state.phase == "ready" and len(state.workloads) == 6
    assert all(ns.startswith(lab_name + "-") for ns in nsops.list_netns(lab_name + "-"))

    # status: every agent ready; with BGP, a full mesh of Established sessions.
    rc, out, _ = tabby(capsys, "lab", "status", *n, "-o", "json")
    assert rc == 0
    status = json.loads(out)
    assert [nd["agent"]["ready"] for nd in status["nodes"]] == [True] * 3
    if state.uses_bgp:
        for nd in status["nodes"]:
            infos = [s["info"] for s in nd["bgp"]["sessions"]]
            assert infos == ["Established"] * 2, nd
    assert all(w["probeServer"] and w["ip"] for w in status["workloads"])
    via = {nd["agent"]["datastore"] for nd in status["nodes"]}
    assert via == ({"typha"} if typha else {"direct"})
    if state.crosssubnet:
        assert {nd["subnet"] for nd in status["nodes"]} == {"172.31.0.0/24", "172.31.1.0/24"}
    mtu = {"none": 1500, "vxlan": 1450, "ipip": 1480}[encap.split("-")[0]]
    assert _link_mtu(state.workloads[0].netns, "eth0") == mtu
    # How node1 reaches the other nodes' workloads: through the mode's tunnel, except
    # (CrossSubnet) to a node on its own subnet, and directly with no encapsulation.
    kind = encap.split("-")[0]
    for other in state.nodes[1:]:
        crossing = other.subnet != state.nodes[0].subnet
        want = kind if kind != "none" and (crossing or not state.crosssubnet) else "direct"
        assert _route_kind(state, other.name) == want, other.name

    # No policy: every pair connects, and `lab probe -o json` == `policy matrix -o json`.
    probe_json, policy_json = _both(capsys, lab_name, state.datastore_url)
    assert probe_json == policy_json
    assert {v for row in probe_json.values() for v in row.values()} == {"Allow"}

    # The demo policy set: default deny in shop, frontend -> backend on 80.
    rc, _, err = tabby(capsys, "--datastore", state.datastore_url, "apply", "-f", str(POLICY))
    assert rc == 0, err
    cmp = wait_until(lambda: _agreeing(state), timeout=45)
    assert cmp, f"probe != policy matrix: {matrix.compare(state).mismatches}"
    probe_json, policy_json = _both(capsys, lab_name, state.datastore_url)
    assert probe_json == policy_json
    key = {w.name: w.key for w in state.workloads}
    assert probe_json[key["frontend-1"]][key["backend-1"]] == "Allow"
    assert probe_json[key["frontend-2"]][key["backend-1"]] == "Allow"
    assert probe_json[key["db-1"]][key["backend-1"]] == "Deny"
    assert probe_json[key["client-1"]][key["frontend-1"]] == "Deny"
    assert probe_json[key["backend-1"]][key["client-1"]] == "Allow"  # tools is open
    # The policy allows TCP 80 only: port 8080 to the backend is denied even from frontend.
    real, _ = matrix.probe(state, "tcp", 8080, timeout=0.5)
    assert real[key["frontend-1"]][key["backend-1"]] == "Deny"
    assert real == matrix.policy(state, "tcp", 8080)

    # exec passes the exit code through; env points the CLI at the lab.
    rc, _, _ = tabby(capsys, "lab", "exec", *n, "frontend-1", "--", "sh", "-c", "exit 7")
    assert rc == 7
    rc, out, _ = tabby(capsys, "lab", "env", *n)
    assert rc == 0 and f"export TABBY_DATASTORE={state.datastore_url}" in out

    # The name is taken while the lab is up.
    rc, _, err = tabby(capsys, "lab", "up", *n, "--nodes", "1")
    assert rc == 1 and "already exists" in err and "tabby lab down" in err

    pids = recorded_pids(labs_dir / lab_name)
    assert len(pids) >= 3 + 6
    rc, out, err = tabby(capsys, "lab", "down", *n)
    assert rc == 0 and "verified nothing is left" in out, err
    assert nsops.list_netns(lab_name + "-") == []
    assert not (labs_dir / lab_name).exists()
    assert [p for p, st in pids if nsops.pid_alive(p, st)] == []
    rc, out, _ = tabby(capsys, "lab", "down", *n)
    assert rc == 0 and "not up" in out


def _route_kind(state: LabState, remote: str) -> str:
    """The route node1 uses to a workload on `remote`: vxlan, ipip or direct."""
    ip = next(w.ip for w in state.workloads if w.node == remote)
    out = nsops.run(state.nodes[0].netns, ["ip", "-j", "route", "get", str(ip)]).stdout
    (route,) = json.loads(out)
    if route["dev"].startswith("vxlan"):
        return "vxlan"
    proto = nsops.run(state.nodes[0].netns, ["ip", "-j", "route", "show", "match", str(ip)])
    best = min((r for r in json.loads(proto.stdout) if r.get("type") != "blackhole"),
               key=lambda r: (-_plen(r["dst"]), r.get("metric", 0)))
    return "ipip" if best.get("protocol") == "81" else "direct"


def _plen(dst: str) -> int:
    if dst == "default":
        return 0
    return int(dst.partition("/")[2] or 32)


def _link_mtu(netns: str, ifname: str) -> int:
    out = nsops.run(netns, ["ip", "-j", "link", "show", ifname]).stdout
    return int(json.loads(out)[0]["mtu"])


def _both(capsys: pytest.CaptureFixture[str], name: str, url: str) -> tuple[Any, Any]:
    rc, out, err = tabby(capsys, "lab", "probe", "--name", name, "-o", "json")
    assert rc == 0, err
    probe_json = json.loads(out)
    rc, out, err = tabby(capsys, "--datastore", url, "policy", "matrix", "-o", "json")
    assert rc == 0, err
    return probe_json, json.loads(out)


def _agreeing(state: LabState) -> matrix.Comparison | None:
    cmp = matrix.compare(state, "tcp", 80, timeout=0.5)
    allowed, total = cmp.counts()
    return cmp if cmp.agree and allowed < total else None


def test_demo_exits_zero(
    lab_name: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tabby.lab import demo

    monkeypatch.delenv("KEEP", raising=False)
    assert demo.main(["--name", lab_name]) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    assert "probe == policy matrix for every pair" in out
    assert "Demo done" in out and "verified nothing is left" in out
    assert nsops.list_netns(lab_name + "-") == []
