"""The CNI protocol pieces without root: environment, config, versions, results, naming,
the endpoint document, and the installer (into temp dirs)."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tabby.cni import spec
from tabby.cni.endpoint import Endpoint, endpoint_name
from tabby.cni.install import install
from tabby.cni.netconf import NetConf, handle_for
from tabby.cni.skel import run
from tabby.cni.spec import CNIError
from tabby.cni.wiring import container_mac, host_ifname
from tabby.resources import from_dict

BASE = {"cniVersion": "1.1.0", "name": "tabby", "type": "tabby-cni", "nodename": "node-1",
        "datastore": "sqlite:///tmp/none.db", "ipam": {"type": "tabby-ipam"}}
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def env(**kw: str | None) -> spec.Env:
    e = {**ADD_ENV, **kw}
    return spec.Env({k: v for k, v in e.items() if v is not None})


def netconf(conf: dict[str, Any] | None = None, **env_kw: str | None) -> NetConf:
    e = env(**env_kw)
    return NetConf(spec.load_config(json.dumps({**BASE, **(conf or {})}), e.command), e)


# --- environment ------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
def test_add_needs_its_variables(missing: str) -> None:
    with pytest.raises(CNIError) as e:
        env(**{missing: None})
    assert e.value.code == spec.ERR_INVALID_ENV and missing in e.value.msg


def test_del_may_omit_netns_and_version_needs_nothing() -> None:
    assert env(CNI_COMMAND="DEL", CNI_NETNS=None).netns == ""
    assert spec.Env({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert spec.Env({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}).path == ["/x"]


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"CNI_COMMAND": None}, "CNI_COMMAND"),
        ({"CNI_COMMAND": "add"}, "'add'"),
        ({"CNI_CONTAINERID": "-lead"}, "CNI_CONTAINERID"),
        ({"CNI_IFNAME": "a/b"}, "CNI_IFNAME"),
        ({"CNI_IFNAME": "x" * 16}, "CNI_IFNAME"),
        ({"CNI_ARGS": "K8S_POD_NAME=a;NOPE=1"}, "NOPE"),
        ({"CNI_ARGS": "novalue"}, "novalue"),
        ({"CNI_NETNS": "/run/netns/x\nlink del eth0"}, "CNI_NETNS"),
        ({"CNI_NETNS": "relative/path"}, "CNI_NETNS"),
        ({"CNI_NETNS": "/run/netns/x\n"}, "CNI_NETNS"),
        ({"CNI_CONTAINERID": "abc\n"}, "CNI_CONTAINERID"),
    ],
)
def test_bad_environment(kw: dict[str, str | None], words: str) -> None:
    with pytest.raises(CNIError) as e:
        env(**kw)
    assert e.value.code == spec.ERR_INVALID_ENV and words in e.value.msg


def test_cni_args() -> None:
    assert spec.parse_cni_args("IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=p") == {
        "IgnoreUnknown": "1", "FOO": "bar", "K8S_POD_NAME": "p"}
    assert spec.parse_cni_args("IgnoreUnknown=true;X=") == {"IgnoreUnknown": "true", "X": ""}


# --- config and versions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "code", "words"),
    [
        ({"cniVersion": "2.0.0"}, spec.ERR_INCOMPATIBLE_VERSION, "2.0.0"),
        ({"cniVersion": "one"}, spec.ERR_DECODE, "one"),
        ({"cniVersion": None}, spec.ERR_INVALID_CONFIG, "cniVersion"),
        ({"name": "bad name"}, spec.ERR_INVALID_CONFIG, "name"),
        ({"type": 3}, spec.ERR_INVALID_CONFIG, "type"),
    ],
)
def test_config_errors(conf: dict[str, Any], code: int, words: str) -> None:
    with pytest.raises(CNIError) as e:
        spec.load_config(json.dumps({**BASE, **conf}), "ADD")
    assert e.value.code == code and words in e.value.msg


@pytest.mark.parametrize(("command", "since"), [("CHECK", "0.4.0"), ("GC", "1.1.0"),
                                                ("STATUS", "1.1.0")])
def test_commands_need_their_spec_version(command: str, since: str) -> None:
    older = {"CHECK": "0.3.1", "GC": "1.0.0", "STATUS": "1.0.0"}[command]
    with pytest.raises(CNIError) as e:
        spec.check_version(older, command)
    assert e.value.code == spec.ERR_INCOMPATIBLE_VERSION
    if older in spec.SUPPORTED_VERSIONS:
        assert since in e.value.msg
    assert spec.check_version(since if since in spec.SUPPORTED_VERSIONS else "1.1.0", command)


def test_result_conversion() -> None:
    result = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "mac": "m", "mtu": 1400,
                                                     "sandbox": "/n"}],
              "ips": [{"address": "10.0.0.1/32", "interface": 0},
                      {"address": "fd00::1/128", "interface": 0}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1", "mtu": 1400}]}
    assert spec.convert_result(result, "1.1.0") == result
    v100 = spec.convert_result(result, "1.0.0")
    assert v100["interfaces"] == [{"name": "eth0", "mac": "m", "sandbox": "/n"}]
    assert v100["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    v040 = spec.convert_result(result, "0.4.0")
    assert [ip["version"] for ip in v040["ips"]] == ["4", "6"]
    ipam_only = spec.convert_result({"ips": []}, "1.0.0")
    assert "interfaces" not in ipam_only and "routes" not in ipam_only


# --- identity -------------------------------------------------------------------------------


def test_plain_cni_identity() -> None:
    nc = netconf()
    assert (nc.orchestrator, nc.namespace, nc.workload, nc.pod) == ("cni", "default", "c0ffee", None)
    assert nc.profiles == ["tabby"] and nc.handle == "tabby.c0ffee" and nc.endpoint == "eth0"
    assert nc.mtu == 1500 and nc.assign_v4 and not nc.assign_v6


def test_k8s_identity_and_args_labels() -> None:
    nc = netconf({"args": {"tabby": {"labels": {"app": "db"}},
                           "cni": {"labels": [{"key": "tier", "value": "back"}]}}},
                 CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=db-0;X=1")
    assert (nc.orchestrator, nc.namespace, nc.workload, nc.pod) == ("k8s", "shop", "db-0", "db-0")
    assert nc.labels == {"tier": "back", "app": "db"} and nc.profiles == ["kns.shop"]
    assert nc.attrs() == {"node": "node-1", "namespace": "shop", "network": "tabby",
                          "containerID": "c0ffee", "ifname": "eth0", "pod": "db-0"}


def test_podman_style_args_keep_cni_orchestrator() -> None:
    # podman passes K8S_POD_NAME (the container name) without a namespace.
    nc = netconf(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web")
    assert (nc.orchestrator, nc.workload, nc.namespace) == ("cni", "web", "default")


@pytest.mark.parametrize(
    ("conf", "code", "words"),
    [
        ({"mtu": True}, spec.ERR_INVALID_CONFIG, "mtu"),
        ({"mtu": 70000}, spec.ERR_INVALID_CONFIG, "mtu"),
        ({"log_level": "loud"}, spec.ERR_INVALID_CONFIG, "log_level"),
        ({"nodename": "Node_1"}, spec.ERR_INVALID_CONFIG, "nodename"),
        ({"ipam": {"type": "tabby-ipam", "assign_ipv4": "maybe"}}, spec.ERR_INVALID_CONFIG,
         "ipam.assign_ipv4"),
        ({"ipam": {"type": "tabby-ipam", "assign_ipv4": False}}, spec.ERR_INVALID_CONFIG,
         "nothing to assign"),
        ({"ipam": {"type": "tabby-ipam", "ipv4_pools": "p"}}, spec.ERR_INVALID_CONFIG,
         "ipam.ipv4_pools"),
        ({"args": {"tabby": {"nope": 1}}}, spec.ERR_UNSUPPORTED_FIELD, "args.tabby.nope"),
        ({"args": {"tabby": {"namespace": "Bad_NS"}}}, spec.ERR_INVALID_CONFIG, "Bad_NS"),
        ({"args": {"tabby": {"namespace": "shop\n"}}}, spec.ERR_INVALID_CONFIG, "shop"),
        ({"args": {"tabby": {"labels": {"k": "v" * 64}}}}, spec.ERR_INVALID_CONFIG, "label k"),
        ({"args": {"cni": {"labels": [{"key": "a"}]}}}, spec.ERR_INVALID_CONFIG,
         "args.cni.labels[0]"),
    ],
)
def test_netconf_errors_name_the_field(conf: dict[str, Any], code: int, words: str) -> None:
    with pytest.raises(CNIError) as e:
        netconf(conf)
    assert e.value.code == code and words in e.value.msg


def test_requested_addresses_and_mac_by_precedence() -> None:
    assert netconf().requested_ips == [] and netconf().requested_mac is None
    by_args = netconf(CNI_ARGS="IgnoreUnknown=1;IP=10.66.0.9, fd00::9;MAC=0A:58:0A:F4:00:05")
    assert by_args.requested_ips == ["10.66.0.9", "fd00::9"]
    assert by_args.requested_mac == "0a:58:0a:f4:00:05"
    conv = netconf({"args": {"cni": {"ips": ["10.66.0.8/24"], "mac": "02:00:00:00:00:08"}}},
                   CNI_ARGS="IP=10.66.0.9")
    assert conv.requested_ips == ["10.66.0.8"] and conv.requested_mac == "02:00:00:00:00:08"
    runtime = netconf({"runtimeConfig": {"ips": ["10.66.0.7"], "mac": "02:00:00:00:00:07"},
                       "args": {"cni": {"ips": ["10.66.0.8"]}}})
    assert runtime.requested_ips == ["10.66.0.7"] and runtime.requested_mac == "02:00:00:00:00:07"
    # An empty runtimeConfig list (a runtime that declares the capability but got no --ip)
    # falls through to the next source.
    assert netconf({"runtimeConfig": {"ips": []}}, CNI_ARGS="IP=10.66.0.9").requested_ips == [
        "10.66.0.9"]


@pytest.mark.parametrize(
    ("conf", "env_args", "words"),
    [
        ({"runtimeConfig": {"ips": ["10.66.0.300"]}}, None, "runtimeConfig.ips: expected an IP"),
        ({"runtimeConfig": {"ips": "10.66.0.3"}}, None, "runtimeConfig.ips: expected a list"),
        ({"runtimeConfig": []}, None, "runtimeConfig: expected an object"),
        ({"args": {"cni": {"ips": ["10.66.0.3", "10.66.0.3/32"]}}}, None, "listed twice"),
        ({}, "IP=ten", "CNI_ARGS IP: expected an IP address (got 'ten')"),
        ({"runtimeConfig": {"mac": "01:00:5e:00:00:01"}}, None, "multicast"),
        ({"args": {"cni": {"mac": "02:00:00:00:00"}}}, None, "args.cni.mac: expected a MAC"),
        ({}, "MAC=zz:00:00:00:00:01", "CNI_ARGS MAC"),
    ],
)
def test_requested_address_errors_name_the_field(
    conf: dict[str, Any], env_args: str | None, words: str
) -> None:
    with pytest.raises(CNIError) as e:
        netconf(conf, CNI_ARGS=env_args)
    assert e.value.code == spec.ERR_INVALID_CONFIG and words in e.value.msg


def test_installed_conflist_declares_ips_and_mac(tmp_path: Path) -> None:
    install(bin_dir=str(tmp_path / "bin"), conf_dir=str(tmp_path / "net.d"),
            datastore="sqlite:///tmp/x.db")
    conf = json.loads((tmp_path / "net.d" / "10-tabby.conflist").read_text())
    assert conf["plugins"][0]["capabilities"] == {"ips": True, "mac": True}


def test_names_and_handles() -> None:
    assert handle_for("k8s-pod-network", "abc", "eth0") == "k8s-pod-network.abc"
    assert handle_for("net", "abc", "net1") == "net.abc:net1"
    names = {host_ifname(f"c{i}", "eth0") for i in range(1000)}
    assert len(names) == 1000 and all(len(n) == 15 and n.startswith("cali") for n in names)
    assert host_ifname("c1", "eth0") != host_ifname("c1", "eth1")
    mac = container_mac("c1", "eth0")
    assert mac == container_mac("c1", "eth0") and int(mac[:2], 16) & 0x03 == 0x02
    assert endpoint_name("node-1", "k8s", "web-0", "eth0") == "node--1-k8s-web--0-eth0"


def test_endpoint_document_validates_against_the_model() -> None:
    ep = Endpoint(namespace="shop", node="node-1", orchestrator="k8s", workload="web-0",
                  endpoint="eth0", container_id="c0ffee", interface_name=host_ifname("c0ffee", "eth0"),
                  ip_networks=["10.65.0.7/32", "fd00::7/128"], mac=container_mac("c0ffee", "eth0"),
                  labels={"app": "web"}, profiles=["kns.shop"], pod="web-0")
    doc = ep.to_dict("7d2c1c44-0f4e-4a47-9a55-2b1d6c8e1f00", "2024-01-01T00:00:00Z")
    wep = from_dict(doc)
    assert wep.kind == "WorkloadEndpoint" and wep.metadata.name == ep.name
    assert ep.key == f"/tabby/v3/workloadendpoints/shop/{ep.name}" == wep.key
    assert wep.spec.ipNetworks == ["10.65.0.7/32", "fd00::7/128"]
    assert wep.metadata.labels == {"app": "web", "projectcalico.org/namespace": "shop",
                                   "projectcalico.org/orchestrator": "k8s"}


# --- the frame: results and errors on stdout ------------------------------------------------


def _run(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], stdin: str,
         handler: Any = None) -> tuple[int, Any]:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    monkeypatch.setattr(sys, "stdout", out)
    code = run(handler or (lambda e, c: {"cniVersion": c["cniVersion"], "ips": []}), environ)
    text = out.getvalue()
    return code, json.loads(text) if text.strip() else None


def test_version_command(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _run(monkeypatch, {"CNI_COMMAND": "VERSION"}, '{"cniVersion": "0.4.0"}')
    assert code == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    code, out = _run(monkeypatch, {"CNI_COMMAND": "VERSION"}, "")
    assert code == 0 and out["cniVersion"] == spec.LATEST


def test_errors_are_results(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _run(monkeypatch, {"CNI_COMMAND": "ADD"}, json.dumps({**BASE, "cniVersion": "1.0.0"}))
    assert code == 1 and out["code"] == spec.ERR_INVALID_ENV and out["cniVersion"] == "1.0.0"
    assert "CNI_CONTAINERID" in out["msg"]

    def boom(e: spec.Env, c: dict[str, Any]) -> None:
        raise RuntimeError("kaput")

    code, out = _run(monkeypatch, ADD_ENV, json.dumps(BASE), boom)
    assert code == 1 and out["code"] == spec.ERR_INTERNAL and "kaput" in out["msg"]
    assert "Traceback" in out["details"]


# --- the installer ------------------------------------------------------------------------


@pytest.mark.parametrize("use_client", [True, False], ids=["client", "python"])
def test_install_is_idempotent_and_runs_with_an_empty_environment(
    tmp_path: Path, use_client: bool
) -> None:
    from tabby.cni.client.build import built

    if use_client and built() is None:
        pytest.skip("the C client is not built (make setup builds it)")
    kw = {"bin_dir": str(tmp_path / "bin"), "conf_dir": str(tmp_path / "net.d"),
          "datastore": f"sqlite://{tmp_path}/t.db", "nodename": "node-1", "mtu": 1450,
          "use_client": use_client}
    files = 5 if use_client else 3  # client + Python plugin beside it, twice; the conflist
    first = install(**kw)  # type: ignore[arg-type]
    assert len(first.written) == files and first.unchanged == []
    again = install(**kw)  # type: ignore[arg-type]
    assert again.written == [] and len(again.unchanged) == files
    # With no agent serving (none runs in this namespace), the client execs the Python
    # plugin beside it, which answers as below.
    conf = json.loads((tmp_path / "net.d" / "10-tabby.conflist").read_text())
    assert conf["name"] == "tabby" and conf["cniVersions"] == ["1.0.0", "1.1.0"]
    (plugin,) = conf["plugins"]
    assert plugin["type"] == "tabby-cni" and plugin["mtu"] == 1450 and plugin["nodename"] == "node-1"
    assert plugin["ipam"]["type"] == "tabby-ipam"
    for exe in ("tabby-cni", "tabby-ipam"):
        path = tmp_path / "bin" / exe
        assert path.stat().st_mode & stat.S_IXUSR
        proc = subprocess.run([str(path)], input='{"cniVersion": "1.1.0"}', env={"CNI_COMMAND": "VERSION"},
                              capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)
    install(**{**kw, "mtu": 1400})  # type: ignore[arg-type]
    conf = json.loads((tmp_path / "net.d" / "10-tabby.conflist").read_text())
    assert conf["plugins"][0]["mtu"] == 1400
    assert not [p for p in os.listdir(tmp_path / "net.d") if p.startswith(".")]


def test_install_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--name"):
        install(bin_dir=str(tmp_path), conf_dir=str(tmp_path), datastore="sqlite:///x", name="a b")
    with pytest.raises(ValueError, match="--mtu"):
        install(bin_dir=str(tmp_path), conf_dir=str(tmp_path), datastore="sqlite:///x", mtu=10)


def test_cli_install(tmp_path: Path) -> None:
    from tabby.cli.main import main

    rc = main(["cni", "install", "--bin-dir", str(tmp_path / "b"), "--conf-dir",
               str(tmp_path / "c"), "--datastore", f"sqlite://{tmp_path}/x.db", "--name", "k8s-pod-network"])
    assert rc == 0
    assert (tmp_path / "c" / "10-k8s-pod-network.conflist").exists()
    assert main(["cni", "install", "--bin-dir", str(tmp_path / "b"), "--conf-dir",
                 str(tmp_path / "c"), "--datastore", "mysql://x"]) == 1


def test_identity_from_cni_args_is_checked_or_made_safe() -> None:
    nc = netconf(CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=My_Container")
    assert nc.workload == "my-container" and nc.orchestrator == "cni"
    with pytest.raises(CNIError) as e:
        netconf(CNI_ARGS="K8S_POD_NAMESPACE=Shop;K8S_POD_NAME=web")
    assert e.value.code == spec.ERR_INVALID_CONFIG and "K8S_POD_NAMESPACE" in e.value.msg
    with pytest.raises(CNIError) as e:
        netconf({"args": {"tabby": {"labels": ["a"]}}})
    assert "args.tabby.labels" in e.value.msg
