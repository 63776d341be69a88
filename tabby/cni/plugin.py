"""tabby-cni: the CNI main plugin (spec 1.0.0 and 1.1.0; results also for 0.4.0).

ADD reads like its spec: parse, allocate (released again on any later failure), create and
configure the veth (removed again on any later failure), write the WorkloadEndpoint, print
the result. DEL is idempotent: a missing namespace, link, endpoint or allocation is fine.

Runs in the node's network namespace (where the runtime runs it): the host-side veth, its
route and its sysctls land there; the workload side is configured inside CNI_NETNS by an
`ip` child (see wiring.py). Imports are kept to what the command needs: every import is paid
on every container start.
"""

from __future__ import annotations

import ipaddress
import os
import sys

from tabby.cni import spec
from tabby.cni import wiring as wire
from tabby.cni.constants import GATEWAY_V4, GATEWAY_V6, HOST_VETH_MAC
from tabby.cni.endpoint import (
    Endpoint,
    delete_endpoint,
    endpoint_key,
    endpoint_name,
    list_node_endpoints,
    read_endpoint,
    write_endpoint,
)
from tabby.cni.netconf import NetConf
from tabby.cni.spec import CNIError

# `typing` costs ~3 ms per plugin exec; annotations are strings (PEP 563), so it is
# needed only by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TABBY_IPAM = "tabby-ipam"


def _dataplane_error(exc: wire.WiringError, what: str) -> CNIError:
    return CNIError(spec.ERR_DATAPLANE, f"{what}: {exc}")


def _addresses(nc: NetConf, ds: Any) -> list[str]:
    """Allocate: in-process for tabby-ipam, else exec the named IPAM plugin."""
    from tabby.cni import ipam_plugin

    if nc.ipam_type == TABBY_IPAM:
        stats: dict[str, int] = {}
        try:
            ifaces = ipam_plugin.assign(nc, ds, stats)
        finally:  # contention figures for operators (and bench/cni.py)
            nc.log.info(f"ipam conflicts={stats.get('conflicts', 0)} "
                        f"exhausted={stats.get('exhausted', 0)}")
        return [f"{i.ip}/{i.max_prefixlen}" for i in ifaces]
    from tabby.cni.delegate import delegate

    res = delegate(nc.ipam_type, "ADD", nc.raw, nc.env) or {}
    out = []
    for ip in res.get("ips") or []:
        iface = ipaddress.ip_interface(ip["address"])
        out.append(f"{iface.ip}/{iface.max_prefixlen}")
    if not out:
        raise CNIError(spec.ERR_IPAM, f"ipam plugin {nc.ipam_type}: returned no address")
    return out


def _release(nc: NetConf, ds: Any) -> None:
    if nc.ipam_type == TABBY_IPAM:
        from tabby.cni import ipam_plugin

        ipam_plugin.release(nc, ds)
    else:
        from tabby.cni.delegate import delegate

        delegate(nc.ipam_type, "DEL", nc.raw, nc.env)


def _endpoint(nc: NetConf, host_if: str, addresses: list[str], mac: str) -> Endpoint:
    return Endpoint(
        namespace=nc.namespace,
        node=nc.nodename,
        orchestrator=nc.orchestrator,
        workload=nc.workload,
        endpoint=nc.endpoint,
        container_id=nc.env.container_id,
        interface_name=host_if,
        ip_networks=addresses,
        mac=mac,
        labels=nc.labels,
        profiles=nc.profiles,
        pod=nc.pod,
    )


def _result(nc: NetConf, host_if: str, mac: str, addresses: list[str]) -> dict[str, Any]:
    env = nc.env
    ips, routes = [], []
    for cidr in addresses:
        v6 = ":" in cidr
        ips.append({"address": cidr, "gateway": GATEWAY_V6 if v6 else GATEWAY_V4, "interface": 1})
    if any(":" not in a for a in addresses):
        routes.append({"dst": "0.0.0.0/0", "gw": GATEWAY_V4})
    if any(":" in a for a in addresses):
        routes.append({"dst": "::/0", "gw": GATEWAY_V6})
    out: dict[str, Any] = {
        "cniVersion": nc.version,
        "interfaces": [
            {"name": host_if, "mac": HOST_VETH_MAC, "mtu": nc.mtu},
            {"name": env.ifname, "mac": mac, "mtu": nc.mtu, "sandbox": env.netns},
        ],
        "ips": ips,
        "routes": routes,
    }
    if isinstance(nc.raw.get("dns"), dict):
        out["dns"] = nc.raw["dns"]
    return out


def cmd_add(nc: NetConf) -> dict[str, Any]:
    from tabby.cni.ipam_plugin import ipam_errors, open_ds

    env = nc.env
    if not os.path.exists(env.netns):
        raise CNIError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS: {env.netns} does not exist")
    host_if = wire.host_ifname(env.container_id, env.ifname)
    mac = nc.requested_mac or wire.container_mac(env.container_id, env.ifname)
    ds = open_ds(nc)
    try:
        addresses = _addresses(nc, ds)
        try:
            # A repeated ADD repairs: the old pair goes (with its peer and routes), a new one
            # comes with the same name, MAC and addresses.
            if wire.delete_host_link(host_if):
                nc.log.info(f"repair: removed existing {host_if}")
            try:
                wire.create_veth(
                    host_if=host_if, ifname=env.ifname, netns=env.netns, mac=mac,
                    mtu=nc.mtu, addresses=addresses,
                )
            except wire.WiringError as exc:
                if exc.exists:
                    raise CNIError(
                        spec.ERR_DATAPLANE,
                        f"CNI_IFNAME: an interface named {env.ifname} already exists in "
                        f"{env.netns} (not Tabby's)",
                    ) from None
                raise _dataplane_error(exc, f"veth {host_if}/{env.ifname}") from None
            write_endpoint(ds, _endpoint(nc, host_if, addresses, mac))
        except BaseException as exc:
            nc.log.error(f"ADD failed, rolling back: {exc}")
            # Best effort, each step on its own (no contextlib: an import on every ADD).
            try:
                wire.delete_host_link(host_if)
            except Exception:  # the original failure is what gets reported
                pass
            try:
                _release(nc, ds)
            except Exception:
                pass
            err = ipam_errors(exc) if isinstance(exc, Exception) else None
            if err is not None and err is not exc:
                raise err from None
            raise
    finally:
        ds.close()
    nc.log.info(f"added {addresses} on {host_if}")
    return _result(nc, host_if, mac, addresses)


def _find_endpoint(
    nc: NetConf, ds: Any, host_if: str
) -> tuple[str, tuple[dict[str, Any], int] | None] | None:
    """The attachment's endpoint key, with its (data, revision) when read by key."""
    key = endpoint_key(
        nc.namespace, endpoint_name(nc.nodename, nc.orchestrator, nc.workload, nc.endpoint)
    )
    found = read_endpoint(ds, key)
    if found is not None:
        return key, found
    # DEL may come without the ADD's args (labels/identity): find it by its interface.
    for k, data in list_node_endpoints(ds, nc.nodename):
        s = data.get("spec") or {}
        if s.get("interfaceName") == host_if and s.get("containerID") == nc.env.container_id:
            return k, None
    return None


def cmd_del(nc: NetConf) -> None:
    from tabby.cni.ipam_plugin import ipam_errors, open_ds

    env = nc.env
    host_if = wire.host_ifname(env.container_id, env.ifname)
    # Traffic stops first; then the endpoint goes; only then may the address be reused.
    try:
        if wire.delete_host_link(host_if):
            nc.log.info(f"deleted {host_if}")
    except wire.WiringError as exc:
        raise _dataplane_error(exc, f"veth {host_if}") from None
    ds = open_ds(nc)
    try:
        ep = _find_endpoint(nc, ds, host_if)
        if ep is not None and delete_endpoint(ds, ep[0], env.container_id, found=ep[1]):
            nc.log.info(f"deleted endpoint {ep[0]}")
        _release(nc, ds)
    except Exception as exc:
        err = ipam_errors(exc)
        if err is None:
            raise
        raise err from None
    finally:
        ds.close()


_CHECK_CODES = {
    "interface": spec.ERR_CHECK_INTERFACE,
    "address": spec.ERR_CHECK_ADDRESS,
    "route": spec.ERR_CHECK_ROUTE,
}


def cmd_check(nc: NetConf) -> None:
    from tabby.cni import ipam_plugin

    env = nc.env
    prev = nc.raw.get("prevResult")
    if not isinstance(prev, dict) or not isinstance(prev.get("ips"), list):
        raise CNIError(spec.ERR_INVALID_CONFIG, "prevResult: missing or without ips (CHECK needs it)")
    if not os.path.exists(env.netns):
        raise CNIError(spec.ERR_UNKNOWN_CONTAINER, f"CNI_NETNS: {env.netns} does not exist")
    addresses = [str(ip.get("address", "")) for ip in prev["ips"]]
    host_if = wire.host_ifname(env.container_id, env.ifname)
    try:
        wire.check_veth(host_if=host_if, ifname=env.ifname, netns=env.netns, addresses=addresses)
    except wire.Mismatch as exc:
        raise CNIError(_CHECK_CODES[exc.kind], f"CHECK: {exc}") from None
    except wire.WiringError as exc:
        raise _dataplane_error(exc, "CHECK") from None
    ds = ipam_plugin.open_ds(nc)
    try:
        if nc.ipam_type == TABBY_IPAM:
            ipam_plugin.check(nc, ds, addresses)
        else:
            from tabby.cni.delegate import delegate

            delegate(nc.ipam_type, "CHECK", nc.raw, env)
        if _find_endpoint(nc, ds, host_if) is None:
            raise CNIError(
                spec.ERR_CHECK_RESERVATION,
                f"CHECK: WorkloadEndpoint for container {env.container_id} is missing",
            )
    finally:
        ds.close()


def cmd_gc(nc: NetConf) -> None:
    """Release this network's allocations whose attachment the runtime no longer lists, and
    remove their host links and endpoints on this node."""
    from tabby.cni import ipam_plugin

    valid = ipam_plugin.valid_attachments(nc.raw)
    ds = ipam_plugin.open_ds(nc)
    try:
        if nc.ipam_type == TABBY_IPAM:
            stale = ipam_plugin.stale_allocations(nc, ds, valid)
        else:
            from tabby.cni.delegate import delegate

            delegate(nc.ipam_type, "GC", nc.raw, nc.env)
            stale = {}
        stale_ifs = {}
        for attrs in stale.values():
            cid, ifname = attrs.get("containerID"), attrs.get("ifname") or "eth0"
            if cid and attrs.get("node", nc.nodename) == nc.nodename:
                stale_ifs[wire.host_ifname(cid, ifname)] = cid
        for host_if in stale_ifs:
            try:
                wire.delete_host_link(host_if)
            except wire.WiringError:
                pass
        for key, data in list_node_endpoints(ds, nc.nodename):
            s = data.get("spec") or {}
            owner = stale_ifs.get(s.get("interfaceName", ""))
            if owner is not None and owner == s.get("containerID"):
                delete_endpoint(ds, key, s.get("containerID"))
                nc.log.info(f"GC: deleted endpoint {key}")
        ipam_plugin.release_handles(nc, ds, list(stale))
    finally:
        ds.close()


def cmd_status(nc: NetConf) -> None:
    from tabby.cni import ipam_plugin

    ipam_plugin.status(nc)
    if nc.ipam_type != TABBY_IPAM:
        from tabby.cni.delegate import delegate

        delegate(nc.ipam_type, "STATUS", nc.raw, nc.env)


COMMANDS = {"ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check, "GC": cmd_gc, "STATUS": cmd_status}


def handle_command(env: spec.Env, conf: dict[str, Any]) -> dict[str, Any] | None:
    nc = NetConf(conf, env)
    try:
        out = COMMANDS[env.command](nc)
        nc.log.info("done")
        return out
    except CNIError as exc:
        nc.log.error(f"{exc.code}: {exc.msg}")
        raise


def main() -> int:
    from tabby.cni.skel import run_and_exit

    return run_and_exit(handle_command)


if __name__ == "__main__":
    sys.exit(main())
