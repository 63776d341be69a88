"""tabby-ipam on its own and under the reference `ptp` plugin (Debian's
containernetworking-plugins), exec'd as a runtime would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cni_support import REFERENCE_PLUGINS, CNILab

from tabby.cni.constants import GATEWAY_V4

PTP = f"{REFERENCE_PLUGINS}/ptp"


@pytest.fixture
def lab(topology: Callable[..., Any], tmp_path: Path) -> CNILab:
    # ptp 1.1.1 (Debian 12) speaks spec <= 1.0.0.
    return CNILab.make(topology(), tmp_path, cni_version="1.0.0")


def _ipam_conf(lab: CNILab) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "tabby-ptp", "type": "ptp", "ipMasq": False,
            "mtu": 1400, "ipam": {"type": "tabby-ipam", "datastore": lab.conf["datastore"],
                                  "nodename": "n1"}}


def test_ipam_plugin_alone(lab: CNILab) -> None:
    conf = _ipam_conf(lab)
    env = lab.env("ADD", "cid-i", "")
    env["CNI_NETNS"] = "/proc/self/ns/net"  # an IPAM plugin never enters it
    res = lab.exec(env, conf, plugin="tabby-ipam")
    assert res.rc == 0, res.stdout
    assert res.out is not None and set(res.out) == {"cniVersion", "ips"}
    (ipc,) = res.out["ips"]
    assert ipc["address"].startswith("10.66.0.") and ipc["address"].endswith("/26")
    assert ipc["gateway"] == GATEWAY_V4 and "interface" not in ipc
    again = lab.exec(env, conf, plugin="tabby-ipam")  # same handle, same address
    assert again.out == res.out and len(lab.allocations()) == 1
    assert lab.allocations()[0]["handle"] == "tabby-ptp.cid-i"
    check_env = {**env, "CNI_COMMAND": "CHECK"}
    assert lab.exec(check_env, {**conf, "prevResult": res.out}, plugin="tabby-ipam").rc == 0
    for _ in range(2):
        gone = lab.exec({**env, "CNI_COMMAND": "DEL"}, conf, plugin="tabby-ipam")
        assert gone.rc == 0 and gone.stdout == ""
    assert lab.allocations() == []
    missing = lab.exec(check_env, {**conf, "prevResult": res.out}, plugin="tabby-ipam")
    assert missing.rc != 0 and missing.code == 113 and "not reserved" in missing.msg


@pytest.mark.skipif(not os.access(PTP, os.X_OK), reason=f"{PTP} not installed "
                    "(Debian package containernetworking-plugins)")
def test_under_reference_ptp(lab: CNILab) -> None:
    conf = _ipam_conf(lab)
    conts = [lab.container(f"c{i}") for i in range(2)]
    outs = []
    for i, c in enumerate(conts):
        res = lab.exec(lab.env("ADD", f"cid-p{i}", c), conf, plugin=PTP)
        assert res.rc == 0, f"{res.stdout} {res.stderr}"
        outs.append(res.out)
    addrs = [o["ips"][0]["address"] for o in outs]  # type: ignore[index]
    assert all(a.startswith("10.66.0.") and a.endswith("/26") for a in addrs)
    assert len(set(addrs)) == 2
    (eth0,) = lab.ip(conts[0], "addr", "show", "dev", "eth0")
    assert eth0["mtu"] == 1400
    assert any(a["local"] == addrs[0].split("/")[0] for a in eth0["addr_info"])
    ips = [a.split("/")[0] for a in addrs]
    # Workload to workload (ptp routes the block via the gateway), and to the node, which
    # holds the gateway address on each host veth.
    lab.echo_server(ips[1], 7102, ns=conts[1])
    lab.echo_server("0.0.0.0", 7101)
    assert lab.tcp(conts[0], GATEWAY_V4, 7101) == f"ok {ips[0]}"
    assert lab.tcp(conts[0], ips[1], 7102) == f"ok {ips[0]}"
    # ptp's CHECK calls ours.
    chk = lab.exec(lab.env("CHECK", "cid-p0", conts[0]), {**conf, "prevResult": outs[0]},
                   plugin=PTP)
    assert chk.rc == 0, chk.stdout
    for i, c in enumerate(conts):
        res = lab.exec(lab.env("DEL", f"cid-p{i}", c), {**conf, "prevResult": outs[i]},
                       plugin=PTP)
        assert res.rc == 0, res.stdout
    assert lab.allocations() == []
    assert [li["ifname"] for li in lab.ip(lab.node_ns, "link", "show") if li["ifname"] != "lo"
            and not li["ifname"].startswith(lab.topo.sid)] == []
