"""Tabby's fields of the network configuration, and the workload identity of an attachment.

    {
      "cniVersion": "1.1.0", "name": "tabby", "type": "tabby-cni",
      "datastore": "sqlite:///var/lib/tabby/tabby.db",   # else $TABBY_DATASTORE, else default
      "nodename": "node-1",                              # else the host name, lower-cased
      "mtu": 1450,                                       # both veth ends; default 1500
      "log_file": "/var/log/tabby/cni.log", "log_level": "info",
      "ipam": {"type": "tabby-ipam", "assign_ipv4": true, "assign_ipv6": false,
               "ipv4_pools": ["default-ipv4-ippool"], "ipv6_pools": []},
      "args": {"tabby": {"namespace": "web", "workload": "frontend-1",
                         "labels": {"app": "frontend"}, "profiles": ["kns.web"]},
               "cni": {"labels": [{"key": "tier", "value": "front"}]}}
    }

Workload labels and identity travel in the configuration's `args` (the CNI conventions'
place for per-container data from the runtime): `args.tabby` as above, and the conventions'
`args.cni.labels` list. CNI_ARGS contributes K8S_POD_NAMESPACE / K8S_POD_NAME; with both the
orchestrator is "k8s" (profiles default to ["kns.<namespace>"]), otherwise "cni" (the
workload defaults to K8S_POD_NAME or the container ID, the profile to the network name).
`args.tabby` wins over CNI_ARGS. Every endpoint also gets Calico's automatic labels
projectcalico.org/namespace and projectcalico.org/orchestrator.

A runtime may ask for given addresses and a MAC (the CNI conventions' "ips" and "mac"
capabilities, which `tabby cni install` declares): `runtimeConfig.ips` / `runtimeConfig.mac`,
else `args.cni.ips` / `args.cni.mac`, else CNI_ARGS `IP=a[,b]` / `MAC=` (what calico-ipam
and the reference static IPAM plugin read). Requested addresses replace automatic
assignment: each must lie in an enabled IP pool and be free (IPAM claims its block for this
node if nobody has, else borrows it unless strictAffinity).
"""

from __future__ import annotations

import os

from tabby.cni import spec
from tabby.cni.constants import HANDLE_SEPARATOR
from tabby.cni.endpoint import (
    EndpointError,
    check_labels,
    check_name,
    check_namespace,
    name_part,
)
from tabby.cni.log import LEVELS, Log
from tabby.cni.spec import CNIError

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TABBY_ARGS = ("labels", "namespace", "profiles", "workload")
DEFAULT_MTU = 1500


def _invalid(field: str, value: Any, why: str) -> CNIError:
    return CNIError(spec.ERR_INVALID_CONFIG, f"{field}: {why} (got {value!r})")


def _bool(value: Any, field: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # Calico's configs spell these as strings
    raise _invalid(field, value, "expected true or false")


def _str_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _invalid(field, value, "expected a list of strings")
    return list(value)


def _sources(conf: dict[str, Any], env: spec.Env, key: str, cni_arg: str) -> tuple[str, Any]:
    """(field, value) of the first of runtimeConfig.<key>, args.cni.<key>, CNI_ARGS <cni_arg>
    that is given; ("", None) when none is."""
    runtime = conf.get("runtimeConfig")
    if runtime is not None and not isinstance(runtime, dict):
        raise _invalid("runtimeConfig", runtime, "expected an object")
    args = conf.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    for field, holder in ((f"runtimeConfig.{key}", runtime), (f"args.cni.{key}", cni)):
        if isinstance(holder, dict) and holder.get(key) not in (None, [], ""):
            return field, holder[key]
    if env.args.get(cni_arg):
        return f"CNI_ARGS {cni_arg}", env.args[cni_arg]
    return "", None


def _requested_ips(conf: dict[str, Any], env: spec.Env) -> list[str]:
    field, value = _sources(conf, env, "ips", "IP")
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")] if field == "CNI_ARGS IP" else value
    items = _str_list(items, field)
    import ipaddress  # only when asked: not on every plugin exec

    out: list[str] = []
    for item in items:
        try:
            ip = str(ipaddress.ip_interface(item).ip)  # "10.0.0.5/24": the prefix is ignored
        except ValueError:
            raise _invalid(field, item, "expected an IP address") from None
        if ip in out:
            raise _invalid(field, item, "address listed twice")
        out.append(ip)
    return out


def _requested_mac(conf: dict[str, Any], env: spec.Env) -> str | None:
    field, value = _sources(conf, env, "mac", "MAC")
    if value is None:
        return None
    octets = value.split(":") if isinstance(value, str) else []
    if len(octets) != 6 or not all(len(o) == 2 and all(c in "0123456789abcdefABCDEF" for c in o)
                                   for o in octets):
        raise _invalid(field, value, "expected a MAC address like 0a:58:0a:f4:00:05")
    if int(octets[0], 16) & 1:
        raise _invalid(field, value, "a multicast MAC cannot be an interface address")
    return value.lower()


class NetConf:
    """The parsed configuration of one invocation (common to tabby-cni and tabby-ipam)."""

    def __init__(self, conf: dict[str, Any], env: spec.Env, ipam_only: bool = False) -> None:
        self.raw = conf
        self.env = env
        self.version: str = conf["cniVersion"]
        self.name: str = conf["name"]
        self.type: str = conf["type"]
        ipam = conf.get("ipam")
        if ipam is None:
            ipam = {} if ipam_only else None
        if not isinstance(ipam, dict) or (not ipam_only and not isinstance(ipam.get("type"), str)):
            raise _invalid("ipam", ipam, "expected an object with a \"type\"")
        self.ipam: dict[str, Any] = ipam
        self.ipam_type: str = ipam.get("type") or "tabby-ipam"

        # The IPAM block may override the datastore and node (for tabby-ipam under another
        # main plugin, whose top-level keys are that plugin's).
        self.datastore = ipam.get("datastore", conf.get("datastore"))
        if self.datastore is not None and not isinstance(self.datastore, str):
            raise _invalid("datastore", self.datastore, "expected a URL string")
        if self.datastore is None:  # the runtime's environment (also when served)
            self.datastore = env.environ.get("TABBY_DATASTORE") or None
        node = ipam.get("nodename", conf.get("nodename"))
        if node is None:
            node = env.environ.get("TABBY_NODENAME") or os.uname().nodename.lower()
        try:
            self.nodename = check_name(node, "nodename")
        except EndpointError as exc:
            raise CNIError(spec.ERR_INVALID_CONFIG, str(exc)) from None

        mtu = conf.get("mtu", DEFAULT_MTU)
        if isinstance(mtu, bool) or not isinstance(mtu, int) or not 68 <= mtu <= 65535:
            raise _invalid("mtu", mtu, "expected an integer 68-65535")
        self.mtu: int = mtu

        log_file = conf.get("log_file")
        if log_file is not None and not isinstance(log_file, str):
            raise _invalid("log_file", log_file, "expected a path")
        level = conf.get("log_level", "info")
        if not isinstance(level, str) or level.lower() not in LEVELS:
            raise _invalid("log_level", level, f"expected one of {', '.join(LEVELS)}")
        self.log = Log(log_file, level.lower(), f"{env.command} {env.container_id}: ")

        self.assign_v4 = _bool(ipam.get("assign_ipv4"), "ipam.assign_ipv4", True)
        self.assign_v6 = _bool(ipam.get("assign_ipv6"), "ipam.assign_ipv6", False)
        if not (self.assign_v4 or self.assign_v6):
            raise CNIError(
                spec.ERR_INVALID_CONFIG,
                "ipam: assign_ipv4 and assign_ipv6 are both false: nothing to assign",
            )
        self.v4_pools = _str_list(ipam.get("ipv4_pools"), "ipam.ipv4_pools")
        self.v6_pools = _str_list(ipam.get("ipv6_pools"), "ipam.ipv6_pools")
        self.requested_ips = _requested_ips(conf, env)
        self.requested_mac = _requested_mac(conf, env)
        self._workload_identity(conf, env)

    def _workload_identity(self, conf: dict[str, Any], env: spec.Env) -> None:
        args = conf.get("args") or {}
        if not isinstance(args, dict):
            raise _invalid("args", args, "expected an object")
        tabby = args.get("tabby") or {}
        if not isinstance(tabby, dict):
            raise _invalid("args.tabby", tabby, "expected an object")
        for key, value in tabby.items():
            if key not in TABBY_ARGS:
                raise CNIError(
                    spec.ERR_UNSUPPORTED_FIELD,
                    f"args.tabby.{key}: unsupported field (value {value!r}; "
                    f"known: {', '.join(TABBY_ARGS)})",
                )
        k8s_ns = env.args.get("K8S_POD_NAMESPACE", "")
        k8s_pod = env.args.get("K8S_POD_NAME", "")
        self.orchestrator = "k8s" if k8s_ns and k8s_pod else "cni"
        try:
            labels: dict[str, str] = {}
            cni = args["cni"] if isinstance(args.get("cni"), dict) else {}
            for i, item in enumerate(cni.get("labels") or []):
                if not isinstance(item, dict) or set(item) != {"key", "value"}:
                    raise EndpointError(
                        f"args.cni.labels[{i}]: expected {{\"key\": ..., \"value\": ...}}, "
                        f"got {item!r}"
                    )
                labels[item["key"]] = item["value"]
            labels = check_labels(labels, "args.cni.labels")
            labels.update(check_labels(tabby.get("labels") or {}, "args.tabby.labels"))
            self.labels = labels
            if tabby.get("namespace"):
                self.namespace = check_namespace(tabby["namespace"], "args.tabby.namespace")
            else:
                self.namespace = check_namespace(k8s_ns or "default", "CNI_ARGS K8S_POD_NAMESPACE")
            if tabby.get("workload"):
                self.workload = check_name(tabby["workload"], "args.tabby.workload")
            elif self.orchestrator == "k8s":
                self.workload = check_name(k8s_pod, "CNI_ARGS K8S_POD_NAME")
            else:
                # podman passes its container name here, which may hold '_' or capitals.
                self.workload = name_part(k8s_pod or env.container_id)
            self.pod = k8s_pod if self.orchestrator == "k8s" else None
            profiles = tabby.get("profiles")
            if profiles is None:
                if self.orchestrator == "k8s":
                    profiles = [f"kns.{self.namespace}"]
                else:
                    profiles = [self.name] if _valid_name(self.name) else []
            profiles = _str_list(profiles, "args.tabby.profiles")
            self.profiles = [check_name(p, "args.tabby.profiles") for p in profiles]
        except EndpointError as exc:
            raise CNIError(spec.ERR_INVALID_CONFIG, str(exc)) from None
        self.endpoint = name_part(env.ifname) if env.ifname else ""

    @property
    def handle(self) -> str:
        return handle_for(self.name, self.env.container_id, self.env.ifname)

    def attrs(self) -> dict[str, str]:
        """Allocation attributes (Calico's node/namespace/pod, plus what GC needs)."""
        out = {
            "node": self.nodename,
            "namespace": self.namespace,
            "network": self.name,
            "containerID": self.env.container_id,
            "ifname": self.env.ifname,
        }
        if self.pod:
            out["pod"] = self.pod
        return out


def handle_for(network: str, container_id: str, ifname: str) -> str:
    """'<network>.<containerID>' (Calico's convention; a second interface of the same
    container in the same network, which the spec allows, adds ':<ifname>')."""
    handle = f"{network}{HANDLE_SEPARATOR}{container_id}"
    return handle if ifname in ("", "eth0") else f"{handle}:{ifname}"


def _valid_name(text: str) -> bool:
    try:
        check_name(text, "name")
    except EndpointError:
        return False
    return True
