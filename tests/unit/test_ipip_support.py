"""IP-in-IP pieces that need no kernel: map layouts, detection, build, API errors."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from tabby.calc.messages import InSync, IPPoolUpdate, RouteUpdate
from tabby.dataplane.ipip import ANNOTATION, IpipDataplane, IpipError, kernel_support, paths
from tabby.dataplane.ipip import bpf_maps as bm
from tabby.dataplane.ipip import build as ipip_build

# --- map layouts -------------------------------------------------------------------------


def test_route_key_layout() -> None:
    key = bm.route_key("10.65.1.9/26")  # host bits dropped
    assert key == struct.pack("=I", 26) + bytes([10, 65, 1, 0])
    assert bm.decode_route_key(key) == "10.65.1.0/26"
    assert bm.route_value("172.31.0.11", "172.31.0.10") == bytes([172, 31, 0, 11, 172, 31, 0, 10])
    assert bm.decode_route_value(bm.route_value("1.2.3.4", "5.6.7.8")) == ("1.2.3.4", "5.6.7.8")
    assert bm.decode_node_key(bm.node_key("172.31.0.11")) == "172.31.0.11"
    assert bm.config_value("172.31.0.10", bm.CFG_DECAP) == bytes([172, 31, 0, 10]) + struct.pack(
        "=I", 1)


def test_layout_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"^dst: not an IPv4 CIDR: 'fd00::/64'$"):
        bm.route_key("fd00::/64")
    with pytest.raises(ValueError, match=r"^remote: not an IPv4 address: 'x'$"):
        bm.route_value("x", "1.2.3.4")
    with pytest.raises(ValueError, match=r"^node: not an IPv4 address"):
        bm.node_key("fd00::1")


def test_percpu_sum() -> None:
    assert bm.sum_percpu(struct.pack("=3Q", 1, 2, 40)) == 43
    assert bm.sum_percpu(b"") == 0


def test_counter_names_match_the_c_enum() -> None:
    src = paths.SOURCE.read_text()
    enum = src[src.index("enum {") : src.index("C_MAX")]
    names = [line.split("=")[0].split(",")[0].strip() for line in enum.splitlines()[1:]]
    names = [n for n in names if n.startswith("C_")]
    assert len(names) == len(bm.COUNTERS)


# --- detection -----------------------------------------------------------------------------


def test_module_available_reads_modules_lists(tmp_path: Path) -> None:
    assert not kernel_support.module_available(tmp_path)
    (tmp_path / "modules.dep").write_text(
        "kernel/net/ipv4/ip_tunnel.ko:\nkernel/drivers/net/vxlan/vxlan.ko: x\n"
    )
    assert not kernel_support.module_available(tmp_path)
    (tmp_path / "modules.dep").write_text(
        "kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz kernel/net/ipv4/tunnel4.ko\n"
    )
    assert kernel_support.module_available(tmp_path)
    (tmp_path / "modules.dep").unlink()
    (tmp_path / "modules.builtin").write_text("kernel/net/ipv4/ipip.ko\n")
    assert kernel_support.module_available(tmp_path)


def test_detect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kernel_support, "SYS_MODULE", tmp_path / "ipip")
    monkeypatch.setattr(kernel_support, "module_available", lambda *a: False)
    assert kernel_support.detect() == "bpf"
    (tmp_path / "ipip").mkdir()
    assert kernel_support.detect() == "kernel"
    assert "no ipip module" in kernel_support.why_no_kernel()


# --- build ---------------------------------------------------------------------------------


def test_compile_command_and_freshness(tmp_path: Path) -> None:
    cmd = ipip_build.compile_command(Path("a.c"), Path("a.o"))
    assert cmd[-4:] == ["-c", "a.c", "-o", "a.o"]
    assert "-g" in cmd and cmd[cmd.index("-target") + 1] == "bpf"  # BTF for the maps
    src, obj = tmp_path / "x.c", tmp_path / "x.o"
    src.write_text("x")
    assert not ipip_build.up_to_date(obj, src)
    obj.write_text("o")
    os.utime(src, (1, 1))
    assert ipip_build.up_to_date(obj, src)
    os.utime(src, None)
    os.utime(obj, (1, 1))
    assert not ipip_build.up_to_date(obj, src)


def test_object_path_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.ENV_OBJECT, raising=False)
    assert paths.object_path() == paths.DEFAULT_OBJECT
    monkeypatch.setenv(paths.ENV_OBJECT, "/opt/x/ipip.o")
    assert paths.object_path() == Path("/opt/x/ipip.o")


def test_build_reports_missing_clang(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ipip_build.shutil, "which", lambda name: None)
    with pytest.raises(ipip_build.BuildError, match="clang not found"):
        ipip_build.build(tmp_path / "o.o", force=True)
    assert ipip_build.main(["--force", "--output", str(tmp_path / "o.o")]) == 1
    assert "error: clang not found" in capsys.readouterr().err


# --- the API without a kernel ------------------------------------------------------------------


@pytest.fixture
def fake_object(tmp_path: Path) -> Path:
    obj = tmp_path / "ipip.o"
    obj.write_bytes(b"\x7fELF")
    return obj


def test_constructor_errors(monkeypatch: pytest.MonkeyPatch, fake_object: Path) -> None:
    with pytest.raises(IpipError,
                       match=r"^implementation: expected auto, kernel or bpf, got 'gre'$"):
        IpipDataplane(None, "eth0", "10.0.0.1", "gre")
    with pytest.raises(IpipError, match=r"^underlay_if: invalid interface name"):
        IpipDataplane(None, "x" * 16, "10.0.0.1", "bpf", object_path=fake_object)
    with pytest.raises(IpipError, match=r"^local_ip: not an IPv4 address: 'nope'$"):
        IpipDataplane(None, "eth0", "nope", "bpf", object_path=fake_object)
    with pytest.raises(IpipError, match=r"^tunnel_address: not an IPv4 address"):
        IpipDataplane(None, "eth0", "10.0.0.1", "bpf", object_path=fake_object,
                      tunnel_address="::1")
    with pytest.raises(IpipError, match="no BPF object at .*python -m tabby.dataplane.ipip.build"):
        IpipDataplane(None, "eth0", "10.0.0.1", "bpf", object_path=fake_object.with_name("n.o"))
    monkeypatch.setattr(kernel_support, "module_loaded", lambda *a: False)
    monkeypatch.setattr(kernel_support, "module_available", lambda *a: False)
    with pytest.raises(IpipError, match=r"^implementation 'kernel': .*no ipip module.*use 'bpf'$"):
        IpipDataplane(None, "eth0", "10.0.0.1", "kernel", object_path=fake_object)
    dp = IpipDataplane(None, "eth0", "10.0.0.1", "auto", object_path=fake_object)
    assert dp.implementation == "bpf" and dp.annotations() == {ANNOTATION: "bpf"}
    with pytest.raises(IpipError, match="node_ips"):
        dp.set_peers(["not-an-ip"])


def test_no_kernel_access_before_in_sync(fake_object: Path) -> None:
    # The namespace does not exist: any kernel access would raise.
    dp = IpipDataplane("tabby-unit-no-such-netns", "eth0", "10.0.0.1", "bpf",
                       object_path=fake_object)
    dp.on_update(IPPoolUpdate("10.65.0.0/16", ipip_mode="Always"))
    dp.on_update(RouteUpdate("10.65.1.0/26", "remote-block", dst_node_ip="10.0.0.2",
                             encap="ipip"))
    assert dp.pending and dp.apply() is False
    st = dp.status()
    assert (st.implementation, st.active, st.in_sync, st.routes, st.encap_routes) == (
        "bpf", False, False, 1, 1)
    dp.on_update(InSync())
    with pytest.raises(IpipError, match="netns tabby-unit-no-such-netns: cannot open"):
        dp.apply()
    dp.close()
    with pytest.raises(IpipError, match="closed"):
        dp.apply()


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
def test_this_machine_reports_an_implementation() -> None:
    assert kernel_support.detect() in kernel_support.IMPLEMENTATIONS


def test_route_lines() -> None:
    from tabby.dataplane.ipip.model import RouteSpec
    from tabby.dataplane.ipip.routes import delete_line, route_line

    spec = RouteSpec("10.65.1.0/26", "172.31.0.11", "eth0", onlink=True, mtu=1480)
    assert route_line(spec) == (
        "route replace 10.65.1.0/26 via 172.31.0.11 dev eth0 proto 81 table main onlink mtu 1480"
    )
    assert route_line(RouteSpec("10.65.2.0/26", "172.31.0.12", "eth0"), proto=90) == (
        "route replace 10.65.2.0/26 via 172.31.0.12 dev eth0 proto 90 table main"
    )
    assert delete_line(spec) == "route del 10.65.1.0/26 proto 81 table main"
