"""The ctypes libbpf loader and the tc attach helpers, against the real kernel (root)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tabby.dataplane.ipip import bpf_maps as bm
from tabby.dataplane.ipip import build as ipip_build
from tabby.dataplane.ipip import tc
from tabby.dataplane.ipip.libbpf import BpfError, BpfObject, num_possible_cpus, prog_info
from tabby.lab import netns as nsops

pytestmark = pytest.mark.root


def test_object_maps_round_trip(need_root, bpf_object: Path) -> None:
    with BpfObject(bpf_object) as obj:
        routes = obj.map(bm.MAP_ROUTES)
        assert (routes.key_size, routes.value_size, routes.max_entries) == (8, 8, 65536)
        routes.update(bm.route_key("10.65.1.0/26"), bm.route_value("172.31.0.11", "172.31.0.10"))
        routes.update(bm.route_key("10.65.1.7/32"), bm.route_value("172.31.0.12", "172.31.0.10"))
        got = {bm.decode_route_key(k): bm.decode_route_value(v) for k, v in routes.items()}
        assert got == {
            "10.65.1.0/26": ("172.31.0.11", "172.31.0.10"),
            "10.65.1.7/32": ("172.31.0.12", "172.31.0.10"),
        }
        assert routes.delete(bm.route_key("10.65.1.7/32"))
        assert not routes.delete(bm.route_key("10.65.1.7/32"))
        # A lookup is a longest-prefix match: the /26 answers for its addresses now.
        assert routes.lookup(bm.route_key("10.65.1.7/32")) == bm.route_value(
            "172.31.0.11", "172.31.0.10")
        assert routes.lookup(bm.route_key("10.66.0.1/32")) is None
        with pytest.raises(ValueError, match="key: 4 bytes for map ipip_routes"):
            routes.update(b"1234", b"12345678")

        counters = obj.map(bm.MAP_COUNTERS)
        assert counters.percpu and counters.buffer_size == 8 * num_possible_cpus()
        assert {i: bm.sum_percpu(counters.lookup(bm.counter_key(i)) or b"")
                for i in range(len(bm.COUNTERS))} == dict.fromkeys(range(len(bm.COUNTERS)), 0)
        one_each = struct.pack(f"={num_possible_cpus()}Q", *([1] * num_possible_cpus()))
        counters.update(bm.counter_key(2), one_each)
        assert bm.sum_percpu(counters.lookup(bm.counter_key(2)) or b"") == num_possible_cpus()

        pid, name, map_ids = prog_info(obj.program_fd(bm.PROG_DECAP))
        assert pid > 0 and name == bm.PROG_DECAP
        assert set(map_ids) == {obj.map(n).id for n in (bm.MAP_NODES, bm.MAP_CONFIG,
                                                         bm.MAP_COUNTERS)}
        with pytest.raises(BpfError, match="no program 'nope'"):
            obj.program_fd("nope")
    with pytest.raises(BpfError, match="closed"):
        obj.map(bm.MAP_ROUTES)


def test_verifier_refusal_is_reported(need_root, tmp_path: Path) -> None:
    if shutil.which("clang") is None:
        pytest.skip("clang not installed")
    src = tmp_path / "bad.c"
    src.write_text(
        "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n"
        'SEC("tc") int bad(struct __sk_buff *skb)\n'
        "{ unsigned char *p = (void *)(long)skb->data; return p[100]; }\n"
        'char _license[] SEC("license") = "Apache-2.0";\n'
    )
    cmd = ipip_build.compile_command(src, tmp_path / "bad.o")
    cmd.remove("-Werror")
    subprocess.run(cmd, check=True, capture_output=True)
    with pytest.raises(BpfError) as info:
        BpfObject(tmp_path / "bad.o")
    text = str(info.value)
    assert "load: Permission denied" in text and "invalid access to packet" in text
    assert "\n" not in text
    with pytest.raises(BpfError, match="not found"):
        BpfObject(tmp_path / "missing.o")


def test_attach_replace_detach(netns_prefix: str, bpf_object: Path) -> None:
    ns = f"{netns_prefix}-tc"
    nsops.add_netns(ns)
    try:
        nsops.run(ns, ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        with nsops.ipr(ns) as ipr, BpfObject(bpf_object) as a, BpfObject(bpf_object) as b:
            idx = nsops.link_index(ipr, "v0")
            # Someone else's filter on the same hook stays untouched throughout.
            tc.ensure_clsact(ipr, idx)
            ipr.tc("add-filter", "bpf", idx, 1, parent=tc.INGRESS, prio=7, protocol=0x0003,
                   fd=b.program_fd(bm.PROG_DECAP), name="someone-else", direct_action=True)
            tc.attach(ipr, idx, "ingress", a.program_fd(bm.PROG_DECAP), "decap")
            tc.attach(ipr, idx, "egress", a.program_fd(bm.PROG_ENCAP), "encap")
            ours = [f for f in tc.list_filters(ipr, idx) if f.ours]
            assert {(f.direction, f.name, f.prio) for f in ours} == {
                ("ingress", "tabby-ipip-decap", tc.TC_PRIO),
                ("egress", "tabby-ipip-encap", tc.TC_PRIO),
            }
            # Attaching again replaces in place: still one filter per hook.
            tc.attach(ipr, idx, "ingress", b.program_fd(bm.PROG_DECAP), "decap")
            assert len([f for f in tc.list_filters(ipr, idx) if f.ours]) == 2
            shown = nsops.run(ns, ["tc", "filter", "show", "dev", "v0", "ingress"]).stdout
            assert f"id {prog_info(b.program_fd(bm.PROG_DECAP))[0]} " in shown
            for f in ours:
                tc.detach(ipr, idx, f)
            tc.remove_clsact_if_empty(ipr, idx)
            left = tc.list_filters(ipr, idx)
            assert [(f.name, f.prio) for f in left] == [("someone-else", 7)]
            assert tc.has_clsact(ipr, idx)  # not ours alone: kept
    finally:
        nsops.del_netns(ns)


def test_route_batch_reports_failures_per_route(netns_prefix: str) -> None:
    from tabby.dataplane.ipip.model import RouteSpec
    from tabby.dataplane.ipip.routes import read_routes, write_batch

    ns = f"{netns_prefix}-rt"
    nsops.add_netns(ns)
    try:
        nsops.run(ns, ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
        nsops.run(ns, ["ip", "link", "set", "v0", "up"])
        nsops.run(ns, ["ip", "addr", "add", "172.31.9.1/24", "dev", "v0"])
        good = RouteSpec("10.65.1.0/26", "172.31.9.2", "v0", onlink=True, mtu=1480)
        plain = RouteSpec("10.65.2.0/26", "172.31.9.3", "v0")
        bad = RouteSpec("10.65.3.0/26", "1.2.3.4", "v0")  # gateway not on the link
        gone = RouteSpec("10.65.4.0/26", "172.31.9.4", "v0")
        errors = write_batch(ns, [("set", good), ("set", bad), ("del", gone), ("set", plain)])
        assert list(errors) == ["10.65.3.0/26"] and "invalid gateway" in errors["10.65.3.0/26"]
        with nsops.ipr(ns) as ipr:
            assert read_routes(ipr) == {good.dst: good, plain.dst: plain}
        # Someone else's route for the same destination is never deleted by ours.
        nsops.run(ns, ["ip", "route", "replace", "10.65.2.0/26", "via", "172.31.9.5",
                       "dev", "v0", "proto", "80"])
        assert write_batch(ns, [("del", plain), ("del", good)]) == {}
        with nsops.ipr(ns) as ipr:
            assert read_routes(ipr) == {}
            assert read_routes(ipr, proto=80)["10.65.2.0/26"].gateway == "172.31.9.5"
    finally:
        nsops.del_netns(ns)
